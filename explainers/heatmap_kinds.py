"""What a heatmap's values mean (its kind), and when a map carries no information (flat).

EAGLE ranks regions and measures the objective's marginal gain at each rank; its map can
show those gains ("gain", the default, as EAGLE's own visualisation, arXiv 2509.22496) or
the share of the gains still to come ("cumulative", which saturates: on a 640x480 photo with
64 regions most of the image sat above 0.9). White-box maps (TAM, MSEA, ARC) are normalised
activations ("activation").
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

KINDS: dict[str, str] = {
    "gain": "each region's marginal gain of EAGLE's objective at its rank, divided by the largest gain "
    "(negative gains are 0)",
    "cumulative": "each region's share of EAGLE's gains still to come at its rank: the top region 1, the last 0",
    "activation": "the target's white-box activation at each position, divided by its peak",
}
EAGLE_KINDS = ("gain", "cumulative")  # the first is the default
WHITE_BOX_KINDS = ("activation",)

_SPREAD = 1e-6  # max - min under this: nothing tells one pixel from another


def flat_reason(values: NDArray[np.floating] | list[float]) -> str | None:
    """Why a map carries no information (every value equal), or None when it does."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return "empty map: nothing was computed"
    low, high = float(arr.min()), float(arr.max())
    if high - low >= _SPREAD:
        return None
    if high < _SPREAD:
        return "every value is 0: no image position raised the target's score"
    return f"every value is {high:.3g}: the method could not tell image positions apart"


def figure_caption(target: str, kind: str, reason: str | None) -> tuple[str, str]:
    """(title, note) of a heatmap figure: the target's text, and what its colours mean or why it shows nothing."""
    title = f"target: {target!r}"
    if reason is not None:
        return title, f"FLAT MAP ({kind}): {reason}"
    return title, f"{kind}: {CAPTIONS.get(kind, kind)}, 0 to 1"


CAPTIONS = {  # short forms of KINDS for figure captions
    "gain": "EAGLE's marginal gain over the largest (box: top region)",
    "cumulative": "share of EAGLE's gains still to come (box: top region)",
    "activation": "white-box activation over its peak",
}
