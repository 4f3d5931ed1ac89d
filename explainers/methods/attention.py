"""`attention` and `relevancy`: where the language model looks when it emits a target (models/attention.py).

White-box baselines beside the token maps: they share their plan, budget check, optional
insertion / deletion curves and response, and differ only in how the maps are made and what
they cost. `attention` reads the attention probabilities of one forward; `relevancy`
weights them by their gradients and propagates them through the layers (one backward per
target). Neither reads image tokens through the LM head, so neither needs a model trained to
make that readout meaningful (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers.image_token_maps import image_token_heatmaps
from mllm_audit.explainers.methods.base import PlanContext, register
from mllm_audit.explainers.methods.token_maps import TokenMap
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.token_maps import MapVariant
from numpy.typing import NDArray

if TYPE_CHECKING:
    from mllm_audit.models.scorer import AttentionWeighting, Audit, ScorerProtocol


class AttentionMap(TokenMap):
    def __init__(self, name: str, summary: str, weighting: AttentionWeighting, layers: str):
        super().__init__(name, summary, MapVariant())
        self.weighting = weighting
        self.layers = layers  # for the response's params: which layers the map reads

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {"weighting": self.weighting, "layers": self.layers, "curves": request.curves}

    def _passes(self, n_targets: int) -> int:
        return 1 + n_targets if self.weighting == "gradient" else 1  # a backward per target

    def map_passes(self, ctx: PlanContext) -> int:
        return self._passes(len(ctx.targets))

    def heatmaps(
        self, scorer: ScorerProtocol, audit: Audit, image: NDArray[np.uint8], targets: list[list[int]]
    ) -> list[dict[str, Any]]:
        image = np.asarray(image, dtype=np.uint8)
        values = scorer.attention_maps(audit, image, targets, self.weighting)
        return image_token_heatmaps(scorer, audit, image, targets, values, self._passes(len(targets)))


register(
    AttentionMap(
        "attention",
        "attention the language model pays to the image tokens as it emits the target: one white-box forward",
        "raw",
        "upper half, mean over heads",
    )
)
register(
    AttentionMap(
        "relevancy",
        "gradient-weighted attention propagated through every layer: 1 forward + 1 backward per target",
        "gradient",
        "all",
    )
)
