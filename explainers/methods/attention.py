"""`attention`, `relevancy` and both: where the language model looks as it emits a target (models/attention.py).

White-box baselines beside the token maps: they share their plan, budget check, optional
insertion / deletion curves and response, and differ only in how the maps are made and what
they cost. `attention` reads the attention probabilities of one forward; `relevancy` weights
them by their gradients and propagates them through the layers (one backward per target);
`attention+relevancy` is their product, each scaled to a maximum of 1 (the relevancy forward
already has the attention). None reads image tokens through the LM head, so none needs a
model trained to make that readout meaningful (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers.image_token_maps import image_token_heatmaps
from mllm_audit.explainers.methods.base import PlanContext, register
from mllm_audit.explainers.methods.token_maps import TokenMap
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.token_maps import MapVariant
from numpy.typing import NDArray

if TYPE_CHECKING:
    from mllm_audit.models.scorer import AttentionReadout, Audit, ScorerProtocol

FloatArray = NDArray[np.float64]


def unit_scale(values: FloatArray) -> FloatArray:
    """Each row's positive part over its maximum (an all-zero row stays zero)."""
    kept = np.maximum(np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    peak = kept.max(axis=-1, keepdims=True)
    scaled: FloatArray = np.divide(kept, peak, out=np.zeros_like(kept), where=peak > 0)
    return scaled


class AttentionMap(TokenMap):
    def __init__(
        self, name: str, summary: str, combine: Callable[[AttentionReadout], FloatArray], params: dict[str, Any]
    ):
        super().__init__(name, summary, MapVariant())
        self.combine = combine
        self.response_params = params  # for the response's method.params
        self.needs_gradients = params["gradient_weighted"]

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {**self.response_params, "curves": request.curves}

    def _passes(self, n_targets: int) -> int:
        return 1 + n_targets if self.needs_gradients else 1  # a backward per target

    def map_passes(self, ctx: PlanContext) -> int:
        return self._passes(len(ctx.targets))

    def heatmaps(
        self, scorer: ScorerProtocol, audit: Audit, image: NDArray[np.uint8], targets: list[list[int]]
    ) -> list[dict[str, Any]]:
        image = np.asarray(image, dtype=np.uint8)
        values = self.combine(scorer.attention_maps(audit, image, targets, with_relevancy=self.needs_gradients))
        return image_token_heatmaps(scorer, audit, image, targets, values, self._passes(len(targets)))


def _relevancy(readout: AttentionReadout) -> FloatArray:
    assert readout.relevancy is not None  # asked for
    return readout.relevancy


UPPER = "upper half of the language model's layers, mean over heads"
register(
    AttentionMap(
        "attention",
        "attention the language model pays to the image tokens as it emits the target: one white-box forward",
        lambda readout: readout.attention,
        {"attention_layers": UPPER, "gradient_weighted": False},
    )
)
register(
    AttentionMap(
        "relevancy",
        "gradient-weighted attention propagated through every layer: 1 forward + 1 backward per target",
        _relevancy,
        {"attention_layers": "all", "gradient_weighted": True},
    )
)
register(
    AttentionMap(
        "attention+relevancy",
        "the product of the attention and relevancy maps: relevancy's cost, the best pointing of the two",
        lambda readout: unit_scale(readout.attention) * unit_scale(_relevancy(readout)),
        {"attention_layers": UPPER, "gradient_weighted": True, "combination": "product of maps scaled to 1"},
    )
)
