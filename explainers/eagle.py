"""EAGLE: rank image regions by greedy subset selection on a black-box objective.

Model-agnostic (EAGLE, arXiv 2509.22496). Each search is a generator that follows the engine
protocol (explainers/engine.py):

* it yields a non-empty ``list`` of H x W x 3 uint8 images to score,
* it receives ``np.ndarray [len(images), n_answer_tokens]`` of log-probabilities
  (every answer token, teacher-forced), one row per image in the order yielded,
* it returns an :class:`EagleResult` (``StopIteration.value``).

The first yield is always ``[full image, baseline image]`` (p_full and p_blank for
every token, and the end points of the curves). Each search step is ONE yield holding
all candidate images of the step, so the engine can pack them into shared batches.

Images are identified by the set of regions they keep. When the masks partition the
image (superpixels do), "remove S" is the same image as "keep all regions but S", so
the two share one cache entry and no image is ever scored twice; this is also why the
full image and the baseline are reused for the last greedy step.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from mllm_audit.explainers.masking import ImageLike, MaskedImage, resolve_baseline
from mllm_audit.explainers.regions import labels_at
from numpy.typing import NDArray

_Key = tuple[str, frozenset[int]]  # ("keep" | "remove", region set)
Search = Generator[list[ImageLike], np.ndarray, "EagleResult"]


# ---------------------------------------------------------------- objective and result


def objective(
    keep_logp: np.ndarray,
    remove_logp: np.ndarray,
    lam1: float = 1.0,
    lam2: float = 1.0,
    token_indices: Sequence[int] | None = None,
) -> np.ndarray | float:
    """F = mean over the selected tokens of lam1 * p(keep) + lam2 * (1 - p(remove)).

    Inputs are log-probabilities ``[..., n_tokens]``; raw probabilities enter F as in the
    paper (insight = sufficiency of the kept set, necessity = loss when it is removed).
    Returns a float for one image pair, else an array of the leading shape.
    """
    keep = np.exp(np.asarray(keep_logp, dtype=np.float64))
    remove = np.exp(np.asarray(remove_logp, dtype=np.float64))
    if token_indices is not None:
        idx = list(token_indices)
        keep, remove = keep[..., idx], remove[..., idx]
    value = (lam1 * keep + lam2 * (1.0 - remove)).mean(axis=-1)
    return float(value) if np.ndim(value) == 0 else value


@dataclass
class EagleResult:
    """A full region ranking with the curves it implies.

    Curves are sampled at prefix sizes ``prefix_sizes`` (0..K when nothing was cut by the
    forward-pass budget); row i of ``insertion`` is p_t(keep S_k) and of ``deletion`` is
    p_t(remove S_k) for k = prefix_sizes[i], for every answer token t (probabilities).
    """

    search: str  # "greedy", "fast", "lazy" or "published"
    ranking: list[int]  # region ids, most important first
    gains: np.ndarray  # [K] marginal gain of F at each rank (rank 1 first)
    region_scores: np.ndarray  # [K] heatmap value per region id, top region 1, last 0
    prefix_sizes: np.ndarray  # [n] k of each curve point; 0 always, K unless the budget is gone
    areas: np.ndarray  # [n] fraction of the image area kept in S_k
    insertion: np.ndarray  # [n, T] p_t(keep S_k); row 0 = baseline image, last = full image
    deletion: np.ndarray  # [n, T] p_t(remove S_k); row 0 = full image, last = baseline image
    objective: np.ndarray  # [n] F(S_k) over the target tokens
    p_full: np.ndarray  # [T]
    p_blank: np.ndarray  # [T] baseline image
    token_indices: list[int]  # target tokens the ranking explains
    forward_passes: int  # images this search scored, curves included
    search_complete: bool  # False when the budget stopped the search early
    curve_forward_passes: int = 0  # of forward_passes, the images scored only to complete the curves

    @property
    def gain_scores(self) -> np.ndarray:
        """[K] the "gain" heatmap value per region id (see `scores_from_marginal_gains`)."""
        return scores_from_marginal_gains(self.ranking, self.gains)

    def _auc(self, curve: np.ndarray, tokens: Sequence[int] | None) -> float:
        idx = self.token_indices if tokens is None else list(tokens)
        return float(np.trapezoid(curve[:, idx].mean(axis=1), self.areas))

    def insertion_auc(self, tokens: Sequence[int] | None = None) -> float:
        """AUC of the mean target-token probability as regions are revealed (higher = better)."""
        return self._auc(self.insertion, tokens)

    def deletion_auc(self, tokens: Sequence[int] | None = None) -> float:
        """AUC of the mean target-token probability as regions are removed (lower = better)."""
        return self._auc(self.deletion, tokens)


# ---------------------------------------------------------------- scoring subsets of regions


def _check_scores(scores: np.ndarray, n: int, n_tokens: int | None) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"expected log-probs of shape [{n}, n_tokens], got {arr.shape}")
    if n_tokens is not None and arr.shape[1] != n_tokens:
        raise ValueError(f"expected {n_tokens} answer tokens, got {arr.shape[1]}")
    return arr


class _SubsetScores:
    """Renders "keep S" / "remove S" images and remembers their scores."""

    def __init__(self, image: np.ndarray, masks: np.ndarray, baseline: str | np.ndarray):
        self.image = np.asarray(image, dtype=np.uint8)
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != self.image.shape[:2] or masks.shape[0] < 1:
            raise ValueError(f"masks must be bool [K>=1, H, W] matching the image, got {masks.shape}")
        self.masks = masks
        self.k = masks.shape[0]
        self.baseline = resolve_baseline(self.image, baseline)
        cover = masks.sum(axis=0)
        self.partition = bool((cover == 1).all())
        # With a partition a region-id map turns any set into a mask in O(H*W).
        self.owner = masks.argmax(axis=0) if self.partition else None
        self.everything = frozenset(range(self.k))
        self.scores: dict[_Key, np.ndarray] = {}
        self.n_tokens: int | None = None
        self.passes = 0

    def keep(self, regions: Iterable[int]) -> _Key:
        return ("keep", frozenset(regions))

    def remove(self, regions: Iterable[int]) -> _Key:
        regions = frozenset(regions)
        return ("keep", self.everything - regions) if self.partition else ("remove", regions)

    def union(self, regions: frozenset[int]) -> np.ndarray:
        if self.owner is not None:
            lut = np.zeros(self.k, dtype=bool)
            lut[list(regions)] = True
            kept: NDArray[np.bool_] = lut[self.owner]
            return kept
        if not regions:
            return np.zeros(self.masks.shape[1:], dtype=bool)
        return np.asarray(self.masks[sorted(regions)].any(axis=0), dtype=np.bool_)

    def render(self, key: _Key) -> MaskedImage:
        mode, regions = key
        kept = self.union(regions)
        return MaskedImage(self.image, self.baseline, kept if mode == "keep" else ~kept)

    def missing(self, keys: Iterable[_Key]) -> list[_Key]:
        return list(dict.fromkeys(k for k in keys if k not in self.scores))

    def evaluate(self, keys: Iterable[_Key]) -> Generator[list[ImageLike], np.ndarray, None]:
        """Score every key not yet known, in one yield (nothing is yielded if all are known)."""
        todo = self.missing(keys)
        if not todo:
            return
        received = yield [self.render(k) for k in todo]
        rows = _check_scores(received, len(todo), self.n_tokens)
        self.n_tokens = rows.shape[1]
        self.scores.update(zip(todo, rows))
        self.passes += len(todo)

    def logp(self, key: _Key) -> np.ndarray:
        return self.scores[key]

    def value(self, regions: Iterable[int], tokens: list[int], lam1: float, lam2: float) -> float:
        regions = frozenset(regions)
        # one image pair: objective gives a float
        return float(objective(self.scores[self.keep(regions)], self.scores[self.remove(regions)], lam1, lam2, tokens))

    def area(self, regions: Iterable[int]) -> float:
        return float(self.union(frozenset(regions)).mean())


class _Budget:
    def __init__(self, max_forward_passes: int | None):
        if max_forward_passes is not None and max_forward_passes < 2:
            raise ValueError("max_forward_passes must be at least 2 (full and baseline images)")
        self.limit = max_forward_passes

    def allows(self, used: int, extra: int) -> bool:
        return self.limit is None or used + extra <= self.limit

    def left(self, used: int) -> int | None:
        return None if self.limit is None else max(0, self.limit - used)


def _resolve_tokens(token_indices: Sequence[int] | None, n_tokens: int) -> list[int]:
    if token_indices is None:
        return list(range(n_tokens))
    tokens = [int(t) for t in token_indices]
    if not tokens or any(t < 0 or t >= n_tokens for t in tokens):
        raise ValueError(f"token_indices {tokens} out of range for {n_tokens} answer tokens")
    return tokens


def _start(ev: _SubsetScores, token_indices: Sequence[int] | None) -> Generator[list[ImageLike], np.ndarray, list[int]]:
    """First yield: [full image, baseline image]; returns the resolved target tokens."""
    yield from ev.evaluate([ev.remove(()), ev.keep(())])
    assert ev.n_tokens is not None  # set by the first scores
    return _resolve_tokens(token_indices, ev.n_tokens)


# ---------------------------------------------------------------- from ranking to result


def scores_from_gains(ranking: Sequence[int], gains: np.ndarray) -> np.ndarray:
    """The "cumulative" heatmap value per region id, from the marginal gains along the ranking.

    Rank k gets sum_{j>k} |gain_j| / sum_{j>1} |gain_j|: the share of the gains still to
    come (top 1, last 0). When every later gain is zero the ranking is all we know, so the
    values fall back to a linear ramp over the ranks (top 1, last 0).
    """
    k = len(ranking)
    absg = np.abs(np.asarray(gains, dtype=np.float64))
    from_here = np.cumsum(absg[::-1])[::-1]  # from_here[i] = sum of |gain| at ranks i+1..K
    after = np.concatenate((from_here[1:], [0.0]))  # sum over ranks strictly after rank i+1
    by_rank = np.linspace(1.0, 0.0, k) if after[0] <= 0 else after / after[0]
    out = np.zeros(k, dtype=np.float64)
    out[list(ranking)] = by_rank
    return out


def scores_from_marginal_gains(ranking: Sequence[int], gains: np.ndarray) -> np.ndarray:
    """Heatmap value per region id: its marginal gain at its rank over the largest gain.

    A region that lowered the objective (negative gain) gets 0; so does every region when no
    gain is positive (the map is then flat, and flagged as such by the service).
    """
    g = np.clip(np.asarray(gains, dtype=np.float64), 0.0, None)
    peak = g.max() if g.size else 0.0
    out = np.zeros(len(ranking), dtype=np.float64)
    if peak > 0:
        out[list(ranking)] = g / peak
    return out


def _spread(candidates: list[int], count: int) -> list[int]:
    """`count` items of `candidates` spread evenly (used to sample curve points on a budget)."""
    if count <= 0:
        return []
    if count >= len(candidates):
        return candidates
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, count)).astype(int))
    return [candidates[i] for i in picks]


def _finish(
    ev: _SubsetScores,
    search: str,
    ranking: list[int],
    tokens: list[int],
    lam1: float,
    lam2: float,
    budget: _Budget,
    complete: bool,
    curves: bool = True,
) -> Search:
    """Curves along the final ranking, scoring the prefix sets the search did not visit.

    Missing prefixes are scored in one extra yield (only with ``curves``; without, the curves
    keep the points the search already scored, end points included). If the budget cannot pay
    for all of them, an evenly spread subset is scored. F is interpolated linearly in k
    between known points for the gains (the curves then have fewer points).
    """
    searched = ev.passes
    k = len(ranking)
    prefixes = [frozenset(ranking[:i]) for i in range(k + 1)]

    def keys(i: int) -> list[_Key]:
        return [ev.keep(prefixes[i]), ev.remove(prefixes[i])]

    missing = [i for i in range(k + 1) if ev.missing(keys(i))] if curves else []
    if missing:
        left = budget.left(ev.passes)
        chosen = missing
        if left is not None and len(ev.missing(k_ for i in missing for k_ in keys(i))) > left:
            # The end point k = K comes first (free when masks partition the image).
            rest = [i for i in missing if i != k]
            chosen = ([k] if k in missing and left >= 2 else []) + _spread(rest, left // 2 - (k in missing))
        yield from ev.evaluate(k_ for i in chosen for k_ in keys(i))
    points = np.array([i for i in range(k + 1) if not ev.missing(keys(i))], dtype=np.int64)

    insertion = np.exp(np.stack([ev.logp(ev.keep(prefixes[i])) for i in points]))
    deletion = np.exp(np.stack([ev.logp(ev.remove(prefixes[i])) for i in points]))
    f_known = np.array([ev.value(prefixes[i], tokens, lam1, lam2) for i in points])
    f_all = np.interp(np.arange(k + 1), points, f_known)
    gains = np.diff(f_all)
    if ev.partition:  # areas of disjoint regions add up
        region_area = ev.masks.reshape(k, -1).mean(axis=1)
        cumulative = np.concatenate(([0.0], np.cumsum(region_area[ranking])))
        areas = np.clip(cumulative[points], 0.0, 1.0)
    else:
        areas = np.array([ev.area(prefixes[i]) for i in points])
    return EagleResult(
        search=search,
        ranking=list(ranking),
        gains=gains,
        region_scores=scores_from_gains(ranking, gains),
        prefix_sizes=points,
        areas=areas,
        insertion=insertion,
        deletion=deletion,
        objective=f_known,
        p_full=np.exp(ev.logp(ev.remove(()))),
        p_blank=np.exp(ev.logp(ev.keep(()))),
        token_indices=tokens,
        forward_passes=ev.passes,
        search_complete=complete,
        curve_forward_passes=ev.passes - searched,
    )


def _order_by_estimate(regions: Iterable[int], estimate: dict[int, float]) -> list[int]:
    """Best estimated gain first; never-measured regions last; ties by region id."""
    return sorted(regions, key=lambda v: (-estimate.get(v, -np.inf), v))


def _take_best(
    ev: _SubsetScores,
    selected: list[int],
    remaining: list[int],
    candidates: list[int],
    estimate: dict[int, float],
    tokens: list[int],
    lam1: float,
    lam2: float,
) -> int:
    """One top-down greedy step on images already scored: each candidate's gain F(S+{v}) - F(S)
    goes into `estimate`, and the best (ties: the earliest candidate) moves from `remaining` to
    `selected`. Returns it."""
    base = ev.value(selected, tokens, lam1, lam2)
    values = [ev.value([*selected, v], tokens, lam1, lam2) for v in candidates]
    estimate.update({v: val - base for v, val in zip(candidates, values)})
    best = candidates[int(np.argmax(values))]
    selected.append(best)
    remaining.remove(best)
    return best


# ---------------------------------------------------------------- the searches


def greedy_search(
    image: np.ndarray,
    masks: np.ndarray,
    token_indices: Sequence[int] | None = None,
    baseline: str | np.ndarray = "black",
    lam1: float = 1.0,
    lam2: float = 1.0,
    max_forward_passes: int | None = None,
) -> Search:
    """The published plain greedy: at every step try every remaining region, keep the argmax.

    Yields ``[full, baseline]`` first, then one list per step with, for each remaining
    region v in ascending id order, the images keep S+{v} and remove S+{v} (images
    already scored are left out, and a step with nothing new yields nothing). Ties go to
    the lowest region id.

    Cost: the paper's ``K(K+1)`` counts every candidate image, one pass each. We score
    each distinct image once; when the masks partition the image, the last step (keep
    all = full, remove all = baseline) and the step with two regions left (its four
    images are step 1's "remove {w}" and "keep {w}") are free, so the total with full
    and baseline included is ``K(K+1) - 4`` for K >= 3 (``2 + sum_{r=3..K} 2r``).

    Budget: when the next step would exceed ``max_forward_passes``, the search stops and
    the remaining regions are appended in order of the gain they showed at the last step
    that measured them (the step just before the stop; ids break ties). Whatever budget is
    left then pays for the curve points of that tail (see ``_finish``).
    """
    ev = _SubsetScores(image, masks, baseline)
    budget = _Budget(max_forward_passes)
    tokens = yield from _start(ev, token_indices)
    selected: list[int] = []
    remaining = list(range(ev.k))
    estimate: dict[int, float] = {}
    complete = True
    while remaining:
        step = [key for v in remaining for key in (ev.keep([*selected, v]), ev.remove([*selected, v]))]
        if not budget.allows(ev.passes, len(ev.missing(step))):
            complete = False
            break
        yield from ev.evaluate(step)
        _take_best(ev, selected, remaining, remaining, estimate, tokens, lam1, lam2)
    ranking = selected + _order_by_estimate(remaining, estimate)
    return (yield from _finish(ev, "greedy", ranking, tokens, lam1, lam2, budget, complete))


def fast_search(
    image: np.ndarray,
    masks: np.ndarray,
    token_indices: Sequence[int] | None = None,
    baseline: str | np.ndarray = "black",
    lam1: float = 1.0,
    lam2: float = 1.0,
    s: int = 6,
    p: int = 4,
    u: int = 15,
    max_forward_passes: int | None = None,
    curves: bool = True,
) -> Search:
    """EAGLE's faster search: lazy top-down greedy plus a bottom-up ranking that meets it.

    Our reading of EAGLE's (arXiv 2509.22496) faster search (the paper gives the idea, not every detail):

    * State: ``selected`` (ranked from the top), ``tail`` (ranked from the bottom, worst
      first), ``remaining`` (the middle), and for each region an *estimate*: its
      marginal gain F(S+{v}) - F(S) from the last step that measured it.
    * Top-down, step i: if ``i % u == 0`` every remaining region is re-measured (a full
      re-rank, always at step 0); otherwise only the ``s`` regions with the best (stale)
      estimates are. The best freshly measured region is appended to ``selected``.
    * Bottom-up, every step after the first: the ``p`` remaining regions with the worst
      estimates (outside the top-down candidates, except at a full re-rank, when all
      are candidates) are tried for removal from the universe M = selected + remaining:
      F(M - {v}) is measured and the region whose removal keeps F highest (the least
      needed) is put in front of ``tail``. It never takes the region top-down just took.
    * Both halves are scored in ONE yield per step; each step places up to two regions,
      until the two rankings meet; a single last region is placed without scoring.
    * Final ranking: selected + tail (best to worst). Each top-down step scores the
      prefix S_k and each bottom-up step the prefix M - {v}, so most curve points come
      free; missing ones are scored in one extra yield at the end and counted.

    Cost at K regions: about 2K (step 0) + 2(s+p) per step afterwards, plus a full
    re-rank every u steps: 556 passes at K = 48 (780 at K = 64) with (s, p, u) = (6, 4, 15),
    against K(K+1) = 2352 for plain greedy. The budget rule is greedy's: the middle is
    ordered by the latest estimates.
    """
    if s < 1 or p < 0 or u < 1:
        raise ValueError("need s >= 1, p >= 0, u >= 1")
    ev = _SubsetScores(image, masks, baseline)
    budget = _Budget(max_forward_passes)
    tokens = yield from _start(ev, token_indices)
    selected: list[int] = []
    tail: list[int] = []  # worst first
    remaining = list(range(ev.k))
    estimate: dict[int, float] = {}
    complete = True
    step = 0
    while remaining:
        if len(remaining) == 1:
            selected.append(remaining.pop())
            break
        order = _order_by_estimate(remaining, estimate)
        rerank = step % u == 0
        top = list(remaining) if rerank else order[:s]
        pool = order if rerank else [v for v in order if v not in top]
        bottom = pool[-p:] if (step > 0 and p > 0) else []
        universe = frozenset(selected) | frozenset(remaining)
        wanted = [key for v in top for key in (ev.keep([*selected, v]), ev.remove([*selected, v]))]
        wanted += [key for v in bottom for key in (ev.keep(universe - {v}), ev.remove(universe - {v}))]
        if not budget.allows(ev.passes, len(ev.missing(wanted))):
            complete = False
            break
        yield from ev.evaluate(wanted)
        best = _take_best(ev, selected, remaining, top, estimate, tokens, lam1, lam2)

        # Removing a region that top-down did not take leaves M unchanged, so the scores
        # of M - {v} measured above are still the right ones.
        options = [v for v in bottom if v != best]
        if options:
            kept = [ev.value(universe - {v}, tokens, lam1, lam2) for v in options]
            worst = options[int(np.argmax(kept))]
            tail.append(worst)
            remaining.remove(worst)
        step += 1
    ranking = selected + _order_by_estimate(remaining, estimate) + tail[::-1]
    return (yield from _finish(ev, "fast", ranking, tokens, lam1, lam2, budget, complete, curves))


# ---------------------------------------------------------------- heatmap


def heatmap_from_regions(
    labels: np.ndarray, region_scores: np.ndarray, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Paint each region with its score: float32 [h, w] in [0, 1]; size is (width, height).

    The label map is resized with nearest-neighbour so regions stay flat (a bilinear
    resize would invent scores along region borders).
    """
    labels = np.asarray(labels)
    scores = np.asarray(region_scores, dtype=np.float32)
    if size is not None:
        width, height = int(size[0]), int(size[1])
        if (height, width) != labels.shape:
            labels = labels_at(labels, (width, height))
    painted: NDArray[np.float32] = scores[labels]
    return np.clip(painted, 0.0, 1.0).astype(np.float32)
