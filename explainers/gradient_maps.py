"""Gradient x input maps: a white-box baseline to set beside the token maps (TAM and kin).

    gradient_heatmaps(scorer, audit, image, targets, part)
        -> [{"heatmap", "context", "token_context", "forward_passes", "model_calls", "peak"}]

Per target (answer-token indices), the gradient of the sum of its tokens' log-probabilities
(teacher-forced) with respect to the language model's input embeddings at the image tokens,
times those embeddings, summed over the hidden dimension (gradient x input, arXiv 1605.01713).
One value per image token, laid out on the family's token grid and brought to the image's
pixels exactly as the token maps are (`tam.grid_to_pixels`), then scaled to [0, 1].

``part`` says which sign counts: "positive" keeps the image tokens that raise the target's
log-probability (the default, see docs/benchmarks.md for the comparison), "abs" keeps both.
``forward_passes`` counts one forward plus one backward per target. There is no text context
(``context`` and each token's ``token_context`` are empty).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from mllm_audit.explainers import tam

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol

SignedPart = Literal["positive", "abs"]


def keep_part(values: np.ndarray, part: SignedPart) -> np.ndarray:
    """The part of signed gradient x input values a map shows."""
    kept: np.ndarray = np.abs(values) if part == "abs" else np.maximum(values, 0.0)
    return kept


def gradient_heatmaps(
    scorer: ScorerProtocol, audit: Audit, image: np.ndarray, targets: list[list[int]], part: SignedPart = "positive"
) -> list[dict[str, Any]]:
    """One dict per target; see the module docstring."""
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    layout = tam.sequence_layout(scorer, audit, image)  # checks the grid matches the image tokens
    rows, cols = layout.grid
    signed = scorer.input_gradients(audit, image, targets)  # [targets, rows * cols]
    box = scorer.view_box((h, w))
    passes = 1 + len(targets)  # the forward, then a backward per target
    results = []
    for target, values in zip(targets, signed):
        grid = keep_part(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), part).reshape(rows, cols)
        heat = tam.normalise(tam.grid_to_pixels(grid, (h, w), box)).astype(np.float32)
        results.append(
            {
                "heatmap": heat,
                "context": [],
                "token_context": {int(t): [] for t in target},
                "forward_passes": passes,
                "model_calls": 1,  # backwards reuse the one forward's graph
                "peak": float(grid.max()) if grid.size else 0.0,
            }
        )
    return results
