"""The batching engine on scripted scores: batching never changes results, errors stay local."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mllm_audit.explainers.eagle import fast_search, greedy_search
from mllm_audit.explainers.engine import Job, run_jobs

from tests.test_eagle import drive, make_audit, toy_logp

pytestmark = pytest.mark.unit


class CountingScorer:
    """ScoreFn over toy audits that records every call's batch size."""

    def __init__(self, fail_for=None, drop_row: bool = False):
        self.calls: list[int] = []
        self.fail_for = fail_for
        self.drop_row = drop_row

    def __call__(self, pairs):
        self.calls.append(len(pairs))
        if self.fail_for is not None and any(a is self.fail_for for a, _ in pairs):
            raise RuntimeError("scorer failed on this audit")
        out = [toy_logp(a, img) for a, img in pairs]
        return out[:-1] if self.drop_row else out


def two_jobs():
    a = make_audit(rows=3, cols=4, seed=1)
    b = make_audit(rows=4, cols=4, seed=2, n_tokens=3)
    return (
        a,
        b,
        [
            Job(a, greedy_search(a.image, a.masks, token_indices=[0])),
            Job(b, fast_search(b.image, b.masks, token_indices=[1, 2])),
        ],
    )


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batching_does_not_change_results(batch_size):
    a, b, jobs = two_jobs()
    alone_a, n_a, _ = drive(greedy_search(a.image, a.masks, token_indices=[0]), a)
    alone_b, n_b, _ = drive(fast_search(b.image, b.masks, token_indices=[1, 2]), b)
    scorer = CountingScorer()
    stats = run_jobs(jobs, scorer, batch_size=batch_size)
    for job, alone, n in ((jobs[0], alone_a, n_a), (jobs[1], alone_b, n_b)):
        assert job.error is None
        assert job.result.ranking == alone.ranking
        assert np.array_equal(job.result.insertion, alone.insertion)
        assert np.array_equal(job.result.deletion, alone.deletion)
        assert job.forward_passes == n == job.result.forward_passes
    assert stats.forward_passes == n_a + n_b == sum(scorer.calls)
    assert stats.model_calls == len(scorer.calls)
    assert max(scorer.calls) <= batch_size
    if batch_size == 1:
        assert stats.model_calls == stats.forward_passes


def test_jobs_share_batches():
    _a, _b, jobs = two_jobs()
    scorer = CountingScorer()
    per_round: list[tuple[int, int]] = []
    stats = run_jobs(
        jobs, scorer, batch_size=64, on_round=lambda st: per_round.append((st.forward_passes, st.model_calls))
    )
    assert scorer.calls[0] == 4  # both jobs' [full, baseline] in one call
    # every round packs all pending images of both jobs: ceil(images / batch) calls, no more
    previous = (0, 0)
    for passes, calls in per_round:
        assert calls - previous[1] == math.ceil((passes - previous[0]) / 64)
        previous = (passes, calls)
    assert stats.model_calls < stats.forward_passes / 4


def test_a_failing_explainer_fails_alone():
    a = make_audit(rows=3, cols=3, seed=1)

    def broken():
        yield [a.image]
        raise RuntimeError("explainer bug")

    good = Job(a, greedy_search(a.image, a.masks, token_indices=[0]))
    bad = Job(a, broken())
    run_jobs([bad, good], CountingScorer(), batch_size=3)
    assert isinstance(bad.error, RuntimeError) and bad.result is None
    assert good.error is None and sorted(good.result.ranking) == list(range(9))


def test_an_explainer_yielding_nothing_is_an_error():
    a = make_audit(rows=2, cols=2)

    def empty():
        yield []

    job = Job(a, empty())
    run_jobs([job], CountingScorer())
    assert isinstance(job.error, TypeError)


def test_a_scorer_failure_fails_only_that_audit():
    a = make_audit(rows=3, cols=3, seed=1)
    b = make_audit(rows=3, cols=3, seed=2)
    jobs = [Job(a, greedy_search(a.image, a.masks)), Job(b, greedy_search(b.image, b.masks))]
    run_jobs(jobs, CountingScorer(fail_for=a), batch_size=8)
    assert isinstance(jobs[0].error, RuntimeError)
    assert jobs[1].error is None and sorted(jobs[1].result.ranking) == list(range(9))


def test_a_scorer_returning_too_few_rows_fails_jobs_not_the_engine():
    a = make_audit(rows=2, cols=2)
    job = Job(a, greedy_search(a.image, a.masks))
    run_jobs([job], CountingScorer(drop_row=True), batch_size=4)
    assert isinstance(job.error, RuntimeError) and "results" in str(job.error)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        run_jobs([], CountingScorer(), batch_size=0)
