"""The `eagle_lazy` search: coarse-to-fine lazy greedy that stops once the objective is flat.

Same objective and engine protocol as `mllm_audit.explainers.eagle` (EAGLE, arXiv 2509.22496);
a different way to approximate its plain greedy with far fewer scored images:

1. **Coarse scan.** The K regions are merged into about `groups` spatially compact groups
   (k-means on region centroids). Each group is scored alone (keep it, remove it): 2 images
   per group. This is the floor of the budget: with it the search already has a ranking
   (each region estimated at its group's gain shared by area), so every budget from
   `minimum_passes` up gives a usable map.
2. **Fine scan.** Each region is scored alone (2 images each), the regions of the best groups
   first: its gain F({v}) - F(none) becomes its estimate. A budget too small for all of them
   scans the leading groups; the others keep their share of their group's gain.
3. **Lazy greedy over regions.** A step re-measures the best-estimated region at the current
   set S (2 images); it is taken as soon as its fresh gain is at least every other region's
   estimate (the lazy rule), else the next one is measured, at most `probes` per step, and the
   best fresh one is taken. Fresh gains become the new estimates.
4. **Flat stop.** Once F(S) is within `flat` of F(all regions) (relative to the span
   F(all) - F(none)), the greedy steps stop.
5. **Sweep through the neighbours.** Then, for at most `sweep` steps, every region touching S
   is measured at S (one batch) and the best is taken while it still gains more than
   `SWEEP_GAIN` of the span. The flat stop can come before every part of the object is in S;
   a part left for the tail sits wherever its gain alone put it, and one left at the bottom
   of the ranking is the last thing on the image at the end of the deletion curve (measured
   in docs/benchmarks.md, "Where the fast searches lose to greedy"). The rest of the ranking
   follows the bounds.

A forward-pass budget stops steps 2 and 3 early the same way (the tail follows the bounds). Each
accepted step scores the prefix S_k, so the curves' points up to the stop come free; the rest
are scored only when curves are asked for (see `_finish`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import numpy as np
from mllm_audit.explainers.eagle import EagleResult, Search, _Budget, _finish, _start, _SubsetScores
from mllm_audit.explainers.masking import ImageLike
from mllm_audit.explainers.regions import region_adjacency
from numpy.typing import NDArray

DEFAULT_GROUPS = 8
DEFAULT_PROBES = 3
DEFAULT_FLAT = 0.02
DEFAULT_SWEEP = 8
SWEEP_GAIN = 0.002  # share of F(all) - F(none) a neighbour must still gain to be taken
TAIL_RAMP = 0.1  # share of the heatmap value that follows the rank alone (orders the flat tail)


def group_count(k: int, groups: int = DEFAULT_GROUPS) -> int:
    """Groups the coarse scan uses for K regions (never more than K)."""
    return max(1, min(groups, k))


def minimum_passes(k: int, groups: int = DEFAULT_GROUPS) -> int:
    """The smallest budget that finishes the coarse scan: full + baseline + 2 images per group."""
    return 2 + 2 * group_count(k, groups)


def region_groups(masks: NDArray[np.bool_], n_groups: int) -> list[list[int]]:
    """Merge regions into about n_groups compact groups: area-weighted k-means on centroids.

    Deterministic: the seeds are the farthest-point sequence from the largest region.
    """
    k = masks.shape[0]
    n_groups = max(1, min(n_groups, k))
    ys, xs = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]]
    area = masks.reshape(k, -1).sum(axis=1).astype(np.float64)
    safe = np.maximum(area, 1.0)
    cy = (masks * ys).reshape(k, -1).sum(axis=1) / safe / masks.shape[1]
    cx = (masks * xs).reshape(k, -1).sum(axis=1) / safe / masks.shape[2]
    points = np.column_stack([cy, cx])
    seeds = [int(np.argmax(area))]
    dist = np.linalg.norm(points - points[seeds[0]], axis=1)
    while len(seeds) < n_groups:
        seeds.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[seeds[-1]], axis=1))
    centres = points[seeds]
    assign = np.zeros(k, dtype=np.int64)
    for _ in range(20):
        assign = np.argmin(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        for g in range(n_groups):
            member = assign == g
            if member.any():
                centres[g] = np.average(points[member], axis=0, weights=safe[member])
    return [sorted(int(v) for v in np.flatnonzero(assign == g)) for g in range(n_groups) if (assign == g).any()]


def lazy_search(
    image: np.ndarray,
    masks: np.ndarray,
    token_indices: Sequence[int] | None = None,
    baseline: str | np.ndarray = "black",
    lam1: float = 1.0,
    lam2: float = 1.0,
    groups: int = DEFAULT_GROUPS,
    probes: int = DEFAULT_PROBES,
    flat: float = DEFAULT_FLAT,
    sweep: int = DEFAULT_SWEEP,
    max_forward_passes: int | None = None,
    curves: bool = False,
) -> Search:
    """Coarse scan, then lazy greedy over regions until the objective is flat (module docstring).

    Raises ValueError when ``max_forward_passes`` is below ``minimum_passes`` (the caller
    should check first and tell the client the minimum).
    """
    if probes < 1 or not 0.0 <= flat < 1.0:
        raise ValueError("need probes >= 1 and 0 <= flat < 1")
    ev = _SubsetScores(image, masks, baseline)
    floor = minimum_passes(ev.k, groups)
    if max_forward_passes is not None and max_forward_passes < floor:
        raise ValueError(f"max_forward_passes {max_forward_passes} is below the minimum {floor} for {ev.k} regions")
    budget = _Budget(max_forward_passes)
    tokens = yield from _start(ev, token_indices)
    clusters = region_groups(ev.masks, group_count(ev.k, groups))
    yield from ev.evaluate(key for g in clusters for key in (ev.keep(g), ev.remove(g)))

    def value(regions: Sequence[int] | frozenset[int]) -> float:
        return ev.value(regions, tokens, lam1, lam2)

    empty, full = value(()), value(range(ev.k))
    area = ev.masks.reshape(ev.k, -1).sum(axis=1)
    # estimates start at the group's gain shared by area (comparable with a region's own gain);
    # ties: larger regions first, then ids
    share = {v: float(area[v]) / max(float(area[g].sum()), 1.0) for g in clusters for v in g}
    bound = {v: (value(g) - empty) * share[v] for g in clusters for v in g}
    prior = {v: (-float(area[v]), v) for v in range(ev.k)}

    def by_bound(regions: list[int]) -> list[int]:
        return sorted(regions, key=lambda v: (-bound[v], prior[v]))

    def best_of(fresh: dict[int, float]) -> int:
        """The region with the largest fresh gain; ties: the larger region, then the lower id."""
        return max(fresh, key=lambda v: (fresh[v], -prior[v][0], -v))

    # fine scan, leading groups first, as far as the budget goes
    leading = sorted(range(len(clusters)), key=lambda g: -(value(clusters[g]) - empty))
    singles = [v for g in leading for v in sorted(clusters[g], key=lambda v: prior[v])]
    left = budget.left(ev.passes)
    if left is not None:
        singles = singles[: left // 2]
    yield from ev.evaluate(key for v in singles for key in (ev.keep([v]), ev.remove([v])))
    bound.update({v: value([v]) - empty for v in singles})

    selected: list[int] = []
    remaining = list(range(ev.k))
    complete = True
    target = full - flat * abs(full - empty)
    while remaining and not (selected and value(selected) >= target):
        base = value(selected)
        order = by_bound(remaining)
        fresh: dict[int, float] = {}
        for v in order[:probes]:
            wanted = [ev.keep([*selected, v]), ev.remove([*selected, v])]
            if not budget.allows(ev.passes, len(ev.missing(wanted))):
                complete = False
                break  # the best region measured so far still counts
            yield from ev.evaluate(wanted)
            fresh[v] = value([*selected, v]) - base
            bound[v] = fresh[v]
            others = [bound[w] for w in remaining if w not in fresh]
            if not others or fresh[v] >= max(others):
                break
        if fresh:
            best = best_of(fresh)
            selected.append(best)
            remaining.remove(best)
        if not complete:
            break
    if complete:
        fresh = yield from neighbour_sweep(ev, value, selected, remaining, sweep, best_of, budget)
        bound.update(fresh)
    ranking = selected + by_bound(remaining)
    result = yield from _finish(ev, "lazy", ranking, tokens, lam1, lam2, budget, complete, curves)
    keep_order_in_tail(result, ranking)
    return result


def neighbour_sweep(
    ev: _SubsetScores,
    value: Callable[[Sequence[int]], float],
    selected: list[int],
    remaining: list[int],
    steps: int,
    best_of: Callable[[dict[int, float]], int],
    budget: _Budget,
) -> Generator[list[ImageLike], np.ndarray, dict[int, float]]:
    """Step 5 of the module docstring: grow `selected` (moving regions out of `remaining`, in
    place) through the regions touching it; returns every fresh gain it measured."""
    touching = region_adjacency(ev.owner) if ev.owner is not None else []  # masks that partition the image
    measured: dict[int, float] = {}
    full, empty = value(range(ev.k)), value(())
    for _ in range(steps if touching else 0):
        base = value(selected)
        near = sorted({w for v in selected for w in touching[v]} & set(remaining))
        wanted = [key for v in near for key in (ev.keep([*selected, v]), ev.remove([*selected, v]))]
        if not near or not budget.allows(ev.passes, len(ev.missing(wanted))):
            break
        yield from ev.evaluate(wanted)
        fresh = {v: value([*selected, v]) - base for v in near}
        measured.update(fresh)
        best = best_of(fresh)
        if fresh[best] <= SWEEP_GAIN * abs(full - empty):
            break
        selected.append(best)
        remaining.remove(best)
    return measured


def keep_order_in_tail(result: EagleResult, ranking: list[int]) -> None:
    """Past the flat stop the measured gains are ~0, so the tail's heatmap values would tie and a
    pixel ranking would read it in raster order; a small ramp keeps the search's order there."""
    k = len(ranking)
    ramp = np.zeros(k)
    ramp[ranking] = np.linspace(1.0, 0.0, k)
    result.region_scores = (1.0 - TAIL_RAMP) * result.region_scores + TAIL_RAMP * ramp
