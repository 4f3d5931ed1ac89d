"""White-box token maps: TAM (arXiv 2506.23270), MSEA and ARC (arXiv 2509.22415), and both.

One white-box forward per image view reads each answer token's logit at every image
position (`mllm_audit.explainers.token_maps`). Only when the request asks for `curves` does
the engine then measure each map's insertion and deletion curves (2 x 64 images per target):
by default a one-pass method costs one pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mllm_audit.explainers.engine import EngineStats, Job
from mllm_audit.explainers.faithfulness import RankingCurves, pixel_ranking_curves
from mllm_audit.explainers.heatmap_kinds import flat_reason
from mllm_audit.explainers.methods.base import Explainer, MethodResult, Plan, PlanContext, register
from mllm_audit.explainers.methods.eagle import curve_points
from mllm_audit.explainers.msea import make_views
from mllm_audit.explainers.request import AuditInputError, AuditRequest
from mllm_audit.explainers.results import Attribution, ContextToken, Target
from mllm_audit.explainers.token_maps import MapVariant, TokenMapParams, target_heatmaps, variant_params
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol

CURVE_STEPS = 64  # equal-area steps of a heatmap's insertion / deletion curves


def bilinear(heat: NDArray[np.float32], size: tuple[int, int]) -> NDArray[np.float32]:
    resized = Image.fromarray(np.asarray(heat, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


class TokenMap(Explainer):
    white_box = True

    def __init__(self, name: str, summary: str, variant: MapVariant, map_params: TokenMapParams | None = None):
        self.name = name
        self.summary = summary
        self.variant = variant
        self.map_params = map_params or TokenMapParams()  # the benchmarks try other settings

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {**variant_params(self.variant, self.map_params), "curves": request.curves}

    def heatmaps(
        self, scorer: ScorerProtocol, audit: Audit, image: NDArray[np.uint8], targets: list[list[int]]
    ) -> list[dict[str, Any]]:
        """The maps of the targets (lists of answer-token indices): see `target_heatmaps`."""
        return target_heatmaps(scorer, audit, image, self.variant, targets, self.map_params)

    def map_passes(self, ctx: PlanContext) -> int:
        """Passes the request's maps take: one forward per image view."""
        return len(make_views(ctx.image)) if self.variant.multiscale else 1

    def plan(self, ctx: PlanContext) -> Plan:
        req = ctx.request
        # the budget covers everything: full and black images (2), the maps, each target's curves if asked
        curves = len(ctx.targets) * 2 * CURVE_STEPS if req.curves else 0
        cost = 2 + self.map_passes(ctx) + curves
        if req.max_forward_passes is not None and cost > req.max_forward_passes:
            what = "maps and insertion/deletion curves" if req.curves else "maps"
            raise AuditInputError(
                f"{self.name} with {len(ctx.targets)} targets needs {cost} forward passes ({what}); "
                f"max_forward_passes is {req.max_forward_passes}: ask for fewer targets or a larger budget"
            )
        maps = self.heatmaps(ctx.scorer, ctx.audit, ctx.image, [t.token_indices for t in ctx.targets])
        jobs = (
            [
                Job(
                    ctx.audit, pixel_ranking_curves(ctx.image, m["heatmap"], t.token_indices, req.baseline, CURVE_STEPS)
                )
                for t, m in zip(ctx.targets, maps)
            ]
            if req.curves
            else []
        )
        spent = EngineStats(maps[0]["forward_passes"], maps[0]["model_calls"])  # shared by every target
        return Plan(jobs, lambda: self._finish(ctx, maps, jobs), planning_cost=spent)

    def _finish(self, ctx: PlanContext, maps: list[dict[str, Any]], jobs: list[Job]) -> MethodResult:
        h, w = ctx.request.image.shape[:2]
        curve_jobs: list[Job | None] = list(jobs) if jobs else [None] * len(maps)
        attributions = [self._attribution(t, m, j, (w, h)) for t, m, j in zip(ctx.targets, maps, curve_jobs)]
        token_context = {t: _context(c) for m in maps for t, c in m["token_context"].items()}
        return MethodResult(attributions, token_context=token_context)

    @staticmethod
    def _attribution(target: Target, maps: dict[str, Any], job: Job | None, size: tuple[int, int]) -> Attribution:
        heat = maps["heatmap"]
        attribution = Attribution(
            target=target,
            image_size=size,
            render=lambda at: bilinear(heat, at),
            forward_passes=maps["forward_passes"],
            context=_context(maps["context"]),
            heatmap_kind="activation",
            flat_reason=flat_reason(heat),
        )
        if job is not None:  # curves asked for: 2 x CURVE_STEPS images of the map's pixel ranking
            insertion_auc, deletion_auc, curves = job.result
            assert isinstance(curves, RankingCurves)
            attribution.insertion_auc, attribution.deletion_auc = insertion_auc, deletion_auc
            attribution.insertion_curve = curve_points(curves.areas, curves.insertion, target.token_indices)
            attribution.deletion_curve = curve_points(curves.areas, curves.deletion, target.token_indices)
            attribution.forward_passes += job.forward_passes
            attribution.curve_forward_passes = job.forward_passes
        return attribution


def _context(rows: list[dict[str, Any]]) -> list[ContextToken]:
    return [ContextToken(r["index"], r["source"], r["text"], r["score"]) for r in rows]


register(TokenMap("tam", "token activation map: one white-box forward", MapVariant()))
register(TokenMap("msea", "TAM over multi-scale views of the image, aggregated", MapVariant(multiscale=True)))
register(TokenMap("arc", "TAM with context weighted by activation-ranking coherence", MapVariant(arc=True)))
register(TokenMap("msea+arc", "ARC's correction inside every MSEA view", MapVariant(multiscale=True, arc=True)))
