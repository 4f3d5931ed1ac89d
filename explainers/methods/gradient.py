"""`grad`: gradient x input at the language model's image-token embeddings (explainers/gradient_maps.py).

A white-box baseline beside the token maps: it shares their plan, budget check, optional
insertion / deletion curves and response, and differs only in how the maps are made and
what they cost (one forward plus one backward per target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers.gradient_maps import SignedPart, gradient_heatmaps
from mllm_audit.explainers.methods.base import PlanContext, register
from mllm_audit.explainers.methods.token_maps import TokenMap
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.token_maps import MapVariant
from numpy.typing import NDArray

if TYPE_CHECKING:
    from mllm_audit.models.scorer import Audit, ScorerProtocol


class GradientMap(TokenMap):
    def __init__(self, name: str, summary: str, part: SignedPart):
        super().__init__(name, summary, MapVariant())
        self.part = part

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {"attribution": "gradient x input", "part": self.part, "curves": request.curves}

    def map_passes(self, ctx: PlanContext) -> int:
        return 1 + len(ctx.targets)  # the forward, then a backward per target

    def heatmaps(
        self, scorer: ScorerProtocol, audit: Audit, image: NDArray[np.uint8], targets: list[list[int]]
    ) -> list[dict[str, Any]]:
        return gradient_heatmaps(scorer, audit, image, targets, self.part)


# the positive part: |grad x input| pointed worse where TAM fails (docs/benchmarks.md)
register(
    GradientMap("grad", "gradient x input at the image-token embeddings: 1 forward + 1 backward per target", "positive")
)
