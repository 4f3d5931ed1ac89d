"""EAGLE's efficient search as its published code runs it (method `eagle_fast_published`).

EAGLE (arXiv 2509.22496) speeds its plain greedy up with a stale re-ranking window, a
periodic full re-rank and a bottom-up ranking of the worst candidates. The paper states the
idea; the published code fixes the details, which this module follows:

* A **full re-rank** (step 0 and every `u` steps) measures every remaining region v at the
  current set S (F(S + {v})) and sorts them, best first: that is the *order*. Its best
  region is selected; its worst goes to the tail (the bottom of the ranking).
* Between re-ranks the order is **never re-sorted**: the top-down candidates are the first
  `s` regions of the order still remaining (a window that slides down the order as regions
  are placed), and the best of them, measured at S, is selected.
* The **bottom-up** candidates are the last `p` regions of the order still remaining (outside
  the window); the one whose removal from M = selected + remaining keeps F highest (the least
  needed) goes to the tail, in front of the ones already there.
* The search **stops once p or fewer regions remain**; they keep their place in the order.

Settings: s = 6 (window), p = 4 (bottom-up candidates), u = 15 (re-rank period), the values
the project's earlier reading used; they are parameters, so other settings can be compared.
The default search (`eagle`, `mllm_audit.explainers.eagle.fast_search`) is the project's own
variant of these ideas (candidates by their latest measured gains); `bench/faithfulness.py`
compares them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mllm_audit.explainers.eagle import Search, _Budget, _finish, _start, _SubsetScores

PUBLISHED_S = 6
PUBLISHED_P = 4
PUBLISHED_U = 15


def published_fast_search(
    image: np.ndarray,
    masks: np.ndarray,
    token_indices: Sequence[int] | None = None,
    baseline: str | np.ndarray = "black",
    lam1: float = 1.0,
    lam2: float = 1.0,
    s: int = PUBLISHED_S,
    p: int = PUBLISHED_P,
    u: int = PUBLISHED_U,
    max_forward_passes: int | None = None,
    curves: bool = True,
) -> Search:
    """The published efficient search (module docstring). Ties go to the earlier place in the order.

    A budget that cannot pay for the next step stops the search; the rest keep their place
    in the last order (regions never measured, at a budget below the first re-rank, go by id).
    """
    if s < 1 or p < 0 or u < 1:
        raise ValueError("need s >= 1, p >= 0, u >= 1")
    ev = _SubsetScores(image, masks, baseline)
    budget = _Budget(max_forward_passes)
    tokens = yield from _start(ev, token_indices)

    def value(regions: Sequence[int] | frozenset[int]) -> float:
        return ev.value(regions, tokens, lam1, lam2)

    selected: list[int] = []
    tail: list[int] = []  # worst first
    remaining = list(range(ev.k))
    order: list[int] = []  # the last full re-rank, best first
    complete = True
    step = 0
    while len(remaining) > max(p, 1):
        live = [v for v in order if v in remaining]
        rerank = step % u == 0
        top = list(remaining) if rerank else live[:s]
        bottom = [] if rerank else [v for v in live if v not in top][-p:] if p else []
        universe = frozenset(selected) | frozenset(remaining)
        wanted = [key for v in top for key in (ev.keep([*selected, v]), ev.remove([*selected, v]))]
        wanted += [key for v in bottom for key in (ev.keep(universe - {v}), ev.remove(universe - {v}))]
        if not budget.allows(ev.passes, len(ev.missing(wanted))):
            complete = False
            break
        yield from ev.evaluate(wanted)
        values = [value([*selected, v]) for v in top]
        if rerank:
            # stable sort: equal values keep ascending id order
            order = [top[i] for i in sorted(range(len(top)), key=lambda i: -values[i])]
            selected.append(order[0])
            remaining.remove(order[0])
            if len(order) > 1:
                tail.append(order[-1])
                remaining.remove(order[-1])
        else:
            best = top[int(np.argmax(values))]
            selected.append(best)
            remaining.remove(best)
            if bottom:
                kept = [value(universe - {v}) for v in bottom]
                worst = bottom[int(np.argmax(kept))]
                tail.append(worst)
                remaining.remove(worst)
        step += 1
    middle = [v for v in order if v in remaining] + sorted(v for v in remaining if v not in order)
    ranking = selected + middle + tail[::-1]
    return (yield from _finish(ev, "published", ranking, tokens, lam1, lam2, budget, complete, curves))
