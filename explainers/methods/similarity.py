"""`similarity`: GLSim-style patch similarity (arXiv 2508.19972) as a map.

GLSim scores an object word by how similar its hidden state is to the image tokens' (the
"local" half of its score). As a map, each image token's value is the cosine similarity of
its last hidden state with the target tokens' own, shifted so that the least similar token
is 0 (a cosine may be negative; the shift keeps the order). One white-box forward. It is
a yardstick: on the reference checkpoints it does not localise (docs/benchmarks.md).
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
    from mllm_audit.models.scorer import Audit, ScorerProtocol


class SimilarityMap(TokenMap):
    def __init__(self) -> None:
        super().__init__(
            "similarity",
            "GLSim-style cosine similarity of each image token's last hidden state with the target's: one forward",
            MapVariant(),
        )

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {"layer": "last", "measure": "cosine, shifted to a minimum of 0", "curves": request.curves}

    def map_passes(self, ctx: PlanContext) -> int:
        return 1

    def heatmaps(
        self, scorer: ScorerProtocol, audit: Audit, image: NDArray[np.uint8], targets: list[list[int]]
    ) -> list[dict[str, Any]]:
        image = np.asarray(image, dtype=np.uint8)
        cosine = scorer.hidden_similarity(audit, image, targets)
        return image_token_heatmaps(scorer, audit, image, targets, cosine - cosine.min(axis=1, keepdims=True), 1)


register(SimilarityMap())
