"""Drive many black-box explainers at once and pack their images into shared forward batches.

An explainer is a generator: it yields a list of images (H x W x 3 uint8 arrays, or
`MaskedImage`s: explainers/masking.py) to score
for its audit, receives an array `[len(images), answer_tokens]` of log-probabilities back,
and finally returns its result. The engine never looks inside; explainers never see the
model. Every pending image of every job goes into one queue, cut into batches of
`batch_size` (the best size for the device), so concurrent audits share forward passes.
A job whose explainer raises gets its own error; the other jobs go on.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mllm_audit.explainers.masking import ImageLike

# A job's work: yields images to score, receives their log-probs, returns its result.
ScoringGenerator = Generator[Sequence[ImageLike], np.ndarray, Any]
# Scores (audit, image) pairs from any mix of audits: one log-prob array per pair.
ScoreFn = Callable[[list[tuple[Any, ImageLike]]], list[np.ndarray]]


@dataclass
class Job:
    audit: Any  # opaque to the engine: handed to the score function with each image
    explainer: ScoringGenerator
    forward_passes: int = 0  # images scored for this job
    result: Any = None
    error: BaseException | None = None
    _pending: Sequence[ImageLike] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self._pending is None

    @property
    def pending(self) -> Sequence[ImageLike]:
        """The images the job waits on; only while it is not done."""
        if self._pending is None:
            raise RuntimeError("the job is done: it waits on no images")
        return self._pending


@dataclass
class EngineStats:
    forward_passes: int = 0  # images scored, whatever the batching
    model_calls: int = 0  # batched invocations of the score function


def _advance(job: Job, scores: np.ndarray | None) -> None:
    try:
        pending = next(job.explainer) if scores is None else job.explainer.send(scores)
        if not isinstance(pending, list) or not pending:
            raise TypeError("an explainer must yield a non-empty list of images")
        job._pending = pending
    except StopIteration as stop:
        job.result, job._pending = stop.value, None
    except Exception as exc:
        job.error, job._pending = exc, None


def _score_checked(score: ScoreFn, pairs: list[tuple[Any, ImageLike]]) -> list[np.ndarray]:
    # A score function that drops or adds rows would otherwise surface later as a
    # KeyError outside any try and take every job down.
    out = list(score(pairs))
    if len(out) != len(pairs):
        raise RuntimeError(f"score function returned {len(out)} results for {len(pairs)} images")
    return out


def _fail(job: Job, exc: BaseException) -> None:
    job.error, job._pending = exc, None
    try:
        job.explainer.close()
    except Exception:
        pass


def cancel(job: Job, reason: BaseException) -> None:
    """Stop a job between rounds: it is done, with `reason` as its error, and scores no more images."""
    if not job.done:
        _fail(job, reason)


def _score_isolated(
    score: ScoreFn, items: list[tuple[Job, int, ImageLike]], stats: EngineStats
) -> dict[tuple[int, int], np.ndarray]:
    """After a failed shared batch, score job by job so only the culprit fails."""
    results: dict[tuple[int, int], np.ndarray] = {}
    for job in {id(j): j for j, _, _ in items}.values():
        if job.done:  # already failed in an earlier chunk of this round
            continue
        mine = [(j, i, img) for j, i, img in items if j is job]
        try:
            out = _score_checked(score, [(job.audit, img) for _, _, img in mine])
            stats.model_calls += 1
            results.update({(id(job), i): r for (_, i, _), r in zip(mine, out)})
        except Exception as exc:
            _fail(job, exc)
    return results


def run_jobs(
    jobs: list[Job], score: ScoreFn, batch_size: int = 32, on_round: Callable[[EngineStats], None] | None = None
) -> EngineStats:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stats = EngineStats()
    for job in jobs:
        _advance(job, None)
    while active := [j for j in jobs if not j.done]:
        queue = [(job, i, img) for job in active for i, img in enumerate(job.pending)]
        results: dict[tuple[int, int], np.ndarray] = {}
        for start in range(0, len(queue), batch_size):
            chunk = queue[start : start + batch_size]
            try:
                out = _score_checked(score, [(job.audit, img) for job, _, img in chunk])
                stats.model_calls += 1
                results.update({(id(job), i): r for (job, i, _), r in zip(chunk, out)})
            except Exception:
                results.update(_score_isolated(score, chunk, stats))
        for job in active:
            if job.done:  # failed while scoring
                continue
            n = len(job.pending)
            job.forward_passes += n
            stats.forward_passes += n
            try:  # rows of unequal length (a scorer bug) fail this job only
                scores = np.stack([np.asarray(results[(id(job), i)]) for i in range(n)])
            except Exception as exc:
                _fail(job, exc)
                continue
            _advance(job, scores)
        if on_round:
            on_round(stats)
    return stats
