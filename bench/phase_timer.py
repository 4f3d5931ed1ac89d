"""Wall time per phase of an explanation, from timers wrapped around the engine's and scorer's steps.

`PhaseTimer` wraps, while it is active, the functions each phase runs in (nothing in the product
changes; the wrappers go when the `with` block ends) and sums their time.perf_counter() spans.
Timed functions nest, so `breakdown` turns the sums into exclusive phases that add up to the
wall time:

* forward: the model's forward call (`Scorer.run_model`; on CUDA synchronised, so the kernels count);
* image preparation: numpy -> PIL and the processor's resize / crop / normalise (`model_inputs`),
  or the processor's lookup table for images at its output size (`PixelLookup.pixel_values`,
  which also composes masked images from their image's and baseline's prepared values);
* batching: right-padding the token ids into a batch and moving the inputs to the device;
* log-prob readout: log-softmax and gather of the answer tokens after the forward;
* masking: the masked images' masks (EAGLE's `_SubsetScores.render`; composing them is preparation);
* search: the explainer's own Python between two rounds (EAGLE's bookkeeping), masking excluded;
* engine: queueing, chunking and handing scores back (`run_jobs` less scoring and the explainers);
* outside the engine: the rest of the audit (regions, the risk readout's bookkeeping, heatmaps).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from mllm_audit.explainers import audit as audit_module
from mllm_audit.explainers import eagle, engine
from mllm_audit.models import scorer as scorer_module
from mllm_audit.models.pixel_lookup import PixelLookup
from mllm_audit.models.scorer import Scorer


class PhaseTimer:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._sync = scorer.loaded.device.type == "cuda"

    def _timed(self, name: str, fn: Callable[..., Any], sync: bool = False) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                if sync:
                    torch.cuda.synchronize()
                return out
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return wrapper

    @contextmanager
    def active(self) -> Iterator[PhaseTimer]:
        family_type = type(self.scorer.loaded.family)
        patches: list[tuple[Any, str, Callable[..., Any]]] = [
            (audit_module, "run_jobs", self._timed("run_jobs", audit_module.run_jobs)),  # the auditor's name for it
            (engine, "_advance", self._timed("advance", engine._advance)),
            (eagle._SubsetScores, "render", self._timed("masking", eagle._SubsetScores.render)),
            (audit_module.Auditor, "_score", self._timed("score", audit_module.Auditor._score)),
            (Scorer, "log_probs", self._timed("log_probs", Scorer.log_probs)),
            (Scorer, "readout", self._timed("readout", Scorer.readout)),
            (Scorer, "model_outputs", self._timed("scorer_forward", Scorer.model_outputs)),
            (scorer_module, "to_pil", self._timed("prepare", scorer_module.to_pil)),
            (family_type, "model_inputs", self._timed("prepare", family_type.model_inputs)),
            (PixelLookup, "pixel_values", self._timed("prepare", PixelLookup.pixel_values)),
            (self.scorer, "run_model", self._timed("forward", self.scorer.run_model, sync=self._sync)),
        ]
        saved = [(owner, name, owner.__dict__.get(name, _ABSENT)) for owner, name, _ in patches]
        for owner, name, wrapper in patches:
            setattr(owner, name, wrapper)
        try:
            yield self
        finally:
            for owner, name, before in reversed(saved):
                if before is _ABSENT:
                    delattr(owner, name)  # inherited, or the instance's own attribute added above
                else:
                    setattr(owner, name, before)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


_ABSENT = object()


def breakdown(seconds: dict[str, float], wall: float) -> dict[str, float]:
    """Exclusive seconds per phase (the module docstring's list), summing to `wall`."""
    s = defaultdict(float, seconds)
    phases = {
        "forward": s["forward"],
        "image preparation": s["prepare"],
        # padding and device moves in the scorer, plus the auditor's pairing around log_probs
        "batching": s["scorer_forward"] - s["forward"] - s["prepare"] + s["score"] - s["log_probs"],
        "log-prob readout": s["log_probs"] + s["readout"] - s["scorer_forward"],
        "masking": s["masking"],
        "search": s["advance"] - s["masking"],
        "engine": s["run_jobs"] - s["score"] - s["advance"],
    }
    phases["outside the engine"] = wall - sum(phases.values())
    return phases
