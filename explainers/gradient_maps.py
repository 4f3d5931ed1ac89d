"""Gradient x input maps: a white-box baseline to set beside the token maps (TAM and kin).

    gradient_heatmaps(scorer, audit, image, targets, part)
        -> [{"heatmap", "context", "token_context", "forward_passes", "model_calls", "peak"}]

Per target (answer-token indices), the gradient of the sum of its tokens' log-probabilities
(teacher-forced) with respect to the language model's input embeddings at the image tokens,
times those embeddings, summed over the hidden dimension (gradient x input, arXiv 1605.01713).
One value per image token, brought to the image's pixels by `image_token_heatmaps`.

``part`` says which sign counts: "positive" keeps the image tokens that raise the target's
log-probability (the default, see docs/benchmarks.md for the comparison), "abs" keeps both.
``forward_passes`` counts one forward plus one backward per target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from mllm_audit.explainers.image_token_maps import image_token_heatmaps

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
    signed = scorer.input_gradients(audit, image, targets)  # [targets, image tokens]
    kept = keep_part(np.nan_to_num(signed, nan=0.0, posinf=0.0, neginf=0.0), part)
    return image_token_heatmaps(scorer, audit, image, targets, kept, 1 + len(targets))  # a forward, a backward each
