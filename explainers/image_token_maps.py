"""Maps made of one value per image token (`grad` and the attention maps), brought to the image.

Each target's values are laid out on the family's token grid and brought to the image's
pixels exactly as the token maps are (`tam.grid_to_pixels`, nearest, inside the part of the
image the model sees), then scaled to [0, 1]. These maps have no text context (``context``
and each token's ``token_context`` are empty); ``peak`` is the raw grid maximum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers import tam

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol


def image_token_heatmaps(
    scorer: ScorerProtocol,
    audit: Audit,
    image: np.ndarray,
    targets: list[list[int]],
    values: np.ndarray,
    forward_passes: int,
) -> list[dict[str, Any]]:
    """One dict per target from `values` `[targets, image tokens]` (non-negative, row-major over the grid)."""
    h, w = image.shape[:2]
    rows, cols = tam.sequence_layout(scorer, audit, image).grid  # checks the grid matches the image tokens
    box = scorer.view_box((h, w))
    results = []
    for target, row in zip(targets, values):
        grid = np.maximum(np.nan_to_num(row, nan=0.0, posinf=0.0, neginf=0.0), 0.0).reshape(rows, cols)
        heat = tam.normalise(tam.grid_to_pixels(grid, (h, w), box)).astype(np.float32)
        results.append(
            {
                "heatmap": heat,
                "context": [],
                "token_context": {int(t): [] for t in target},
                "forward_passes": forward_passes,
                "model_calls": 1,  # backwards, where any, reuse the one forward's graph
                "peak": float(grid.max()) if grid.size else 0.0,
            }
        )
    return results
