"""The signals a claim's hallucination risk is estimated from.

- `confidence`: mean log-probability of the claim's tokens with the full image (teacher forced);
- `entropy`: mean entropy of the model's next-token distribution at those tokens;
- `grounding` (families whose image tokens have a known grid): the best single image patch's
  support for the whole claim, read off the last layer with the LM head (logit lens): for each
  patch the lowest log-probability of any of the claim's tokens, maximised over patches. A
  binding error ("purple triangle" where the purple object is a square) finds no patch that
  reads as both words at once (GLSim, arXiv 2508.19972, uses a related patch similarity);
- `verification` (optional, one extra pass per claim): the model asked a yes/no question about
  the claim, log p(yes) - log(1 - p(yes)).

The image-versus-black contrast stays a reliance output (`visual_reliance`), not a risk signal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

SIGNALS = ("confidence", "entropy", "grounding", "verification")
# +1: a higher value means a likelier hallucination; -1: a less likely one
DIRECTION = {"confidence": -1, "entropy": 1, "grounding": -1, "verification": -1}
# a yes/no answer is its own verification; a count or a relation makes no "Is there a ...?" question
VERIFIED_KINDS = ("object",)

FloatArray = NDArray[np.float64]


def confidence(log_probs: FloatArray, tokens: Sequence[int]) -> float:
    return float(np.mean(log_probs[list(tokens)]))


def entropy(entropies: FloatArray, tokens: Sequence[int]) -> float:
    return float(np.mean(entropies[list(tokens)]))


def grounding(patch_log_probs: FloatArray, tokens: Sequence[int]) -> tuple[float, int]:
    """(support of the best patch, its index): patch_log_probs is [patches, answer tokens]."""
    support = patch_log_probs[:, list(tokens)].min(axis=1)
    best = int(np.argmax(support))
    return float(support[best]), best


def verification(log_p_yes: float) -> float:
    p = min(float(np.exp(log_p_yes)), 1.0 - 1e-12)
    return float(log_p_yes - np.log1p(-p))


def patch_box(
    index: int, grid: tuple[int, int], view: tuple[int, int, int, int], scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of image token `index` (row-major over `grid`) in the client's image.

    `view` is the part of the working image the grid covers, `scale` the client-over-working size (x, y).
    """
    rows, cols = grid
    r, c = divmod(index, cols)
    x0, y0, x1, y1 = view
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    sx, sy = scale
    return (
        int(np.floor((x0 + c * cw) * sx)),
        int(np.floor((y0 + r * ch) * sy)),
        int(np.ceil((x0 + (c + 1) * cw) * sx)),
        int(np.ceil((y0 + (r + 1) * ch) * sy)),
    )
