"""Where a fast EAGLE search loses to plain greedy: variants of lazy greedy that are not methods.

    python -m bench.search_study [--n 12] [--models ref,npw]

Each variant runs on the frontier's samples and protocol (bench/faithfulness.py --frontier:
12 held-out samples, 64 regions, every map re-scored on the pixel axis), unlimited budget:

- `neighbours`: a singleton scan (every region kept alone and removed alone, 2 images each),
  then lazy greedy (arXiv 2509.22496's objective) whose every step measures, in one batch,
  the 3 regions with the best estimates *and* every region adjacent to the last pick
  (neighbouring superpixels are where gains interact: parts of one object); it stops once
  F(S) is within 2% of F(all regions) and ranks the rest by their latest estimates.
- `+ sweep`: then grows S through its neighbours (all of them measured each step) while
  the best one still gains more than 0.2% of the objective's span (at most 8 steps); this
  sweep is now part of `eagle_lazy`.
- `+ sweep, tail re-scan`: then measures every remaining region once at the final S and ranks
  the tail by that.
- `greedy head`: every remaining region measured at every step (plain greedy's steps) until
  F(S) >= F(all regions), the rest ranked by the singleton scan: a perfect head, a cheap tail.

Plain greedy and the shipped searches are in the frontier table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
from mllm_audit.explainers.eagle import Search, _Budget, _finish, _start, _SubsetScores
from mllm_audit.explainers.eagle_lazy import keep_order_in_tail, neighbour_sweep
from mllm_audit.explainers.regions import region_adjacency

from bench.faithfulness import frontier

VARIANTS: dict[str, dict[str, Any]] = {
    "neighbours": {},
    "+ sweep": {"sweep": 8},
    "+ sweep, tail re-scan": {"sweep": 8, "tail_rescan": True},
    "greedy head": {"probes": 64, "neighbours": False, "flat": 0.0},
}


def variant_search(
    image: np.ndarray,
    masks: np.ndarray,
    token_indices: Sequence[int],
    probes: int = 3,
    neighbours: bool = True,
    flat: float = 0.02,
    sweep: int = 0,
    tail_rescan: bool = False,
) -> Search:
    ev = _SubsetScores(image, masks, "black")
    tokens = yield from _start(ev, token_indices)

    def value(regions: Sequence[int] | range) -> float:
        return ev.value(regions, tokens, 1.0, 1.0)

    def measure(selected: list[int], candidates: list[int]) -> Search:
        yield from ev.evaluate(key for v in candidates for key in (ev.keep([*selected, v]), ev.remove([*selected, v])))
        base = value(selected)
        fresh = {v: value([*selected, v]) - base for v in candidates}
        estimate.update(fresh)
        return fresh

    empty, full = value(()), value(range(ev.k))
    estimate: dict[int, float] = {}
    yield from measure([], list(range(ev.k)))
    assert ev.owner is not None  # superpixels partition the image
    touching = region_adjacency(ev.owner)
    selected, remaining = [], list(range(ev.k))

    def by_estimate(regions: list[int]) -> list[int]:
        return sorted(regions, key=lambda v: (-estimate[v], v))

    def best_of(fresh: dict[int, float]) -> int:
        return max(fresh, key=lambda v: (fresh[v], -v))

    while remaining and not (selected and value(selected) >= full - flat * abs(full - empty)):
        candidates = by_estimate(remaining)[:probes]
        if neighbours and selected:
            candidates += [v for v in sorted(touching[selected[-1]]) if v in remaining and v not in candidates]
        fresh = yield from measure(selected, candidates)
        best = best_of(fresh)
        selected.append(best)
        remaining.remove(best)
    estimate.update((yield from neighbour_sweep(ev, value, selected, remaining, sweep, best_of, _Budget(None))))
    if tail_rescan and remaining:
        yield from measure(selected, remaining)
    ranking = selected + by_estimate(remaining)
    result = yield from _finish(ev, "study", ranking, tokens, 1.0, 1.0, _Budget(None), True, curves=False)
    keep_order_in_tail(result, ranking)  # as eagle_lazy: keep the order where gains tie
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--models", default="ref,npw")
    args = ap.parse_args()

    def make_search(name: str, image: np.ndarray, masks: np.ndarray, tokens: list[int], budget: int | None) -> Search:
        return variant_search(image, masks, tokens, **VARIANTS[name])

    frontier(args.n, 64, args.models.split(","), 32, list(VARIANTS), make_search=make_search, budgets=(None,))


if __name__ == "__main__":
    main()
