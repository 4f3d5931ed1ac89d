"""EAGLE (arXiv 2509.22496): black-box region attribution by greedy subset selection.

`eagle` is the faster search (stale re-ranking window, periodic full re-rank, bottom-up
ranking of the worst candidates; see `mllm_audit.explainers.eagle.fast_search`), `eagle_greedy`
the published plain greedy, kept as the reference, `eagle_fast_published` the paper's efficient
search as its published code runs it (`mllm_audit.explainers.eagle_published`), and `eagle_lazy`
a coarse-to-fine lazy greedy for small budgets (`mllm_audit.explainers.eagle_lazy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from mllm_audit.explainers import eagle, eagle_lazy, eagle_published
from mllm_audit.explainers.engine import Job
from mllm_audit.explainers.heatmap_kinds import EAGLE_KINDS, flat_reason
from mllm_audit.explainers.methods.base import Explainer, FloatArray, MethodResult, Plan, PlanContext, register
from mllm_audit.explainers.regions import labels_at, region_bbox, region_masks, superpixel_regions
from mllm_audit.explainers.request import AuditInputError, AuditRequest
from mllm_audit.explainers.results import Attribution, Region, Target
from numpy.typing import NDArray


@dataclass(frozen=True)
class LazySearch:
    """`eagle_lazy`'s settings (`mllm_audit.explainers.eagle_lazy`)."""

    groups: int = eagle_lazy.DEFAULT_GROUPS  # coarse regions scanned first
    probes: int = eagle_lazy.DEFAULT_PROBES  # regions re-measured per step at most
    flat: float = eagle_lazy.DEFAULT_FLAT  # stop once F(S) is this close to F(all), relative
    sweep: int = eagle_lazy.DEFAULT_SWEEP  # steps through the neighbours of S after the flat stop


@dataclass(frozen=True)
class WindowedSearch:
    """The settings of the faster search (`mllm_audit.explainers.eagle.fast_search`) and of the
    published efficient one (`mllm_audit.explainers.eagle_published`)."""

    s: int  # re-ranking window
    p: int  # bottom-up candidates
    u: int  # full re-rank period


FAST_SEARCH = WindowedSearch(s=6, p=4, u=15)
LAZY_SEARCH = LazySearch()
PUBLISHED_SEARCH = WindowedSearch(eagle_published.PUBLISHED_S, eagle_published.PUBLISHED_P, eagle_published.PUBLISHED_U)


def curve_points(areas: FloatArray, probs: FloatArray, token_indices: Sequence[int]) -> FloatArray:
    """[[area, mean target probability], ...] for plotting."""
    return np.column_stack([areas, probs[:, list(token_indices)].mean(axis=1)])


class _Eagle(Explainer):
    white_box = False
    heatmap_kinds = EAGLE_KINDS
    settings: Any = None  # the search's settings (a dataclass), passed to it and reported in params
    search_function: Callable[..., eagle.Search]

    def params(self, request: AuditRequest) -> dict[str, Any]:
        return {
            "regions": request.regions,
            "lambda1": request.lambda1,
            "lambda2": request.lambda2,
            "max_forward_passes": request.max_forward_passes,
            "curves": request.curves,
            **(asdict(self.settings) if self.settings is not None else {}),
        }

    def minimum_passes(self, k: int) -> int:
        """The smallest per-target budget that yields a usable ranking: the first scan of every region."""
        return 2 + 2 * k

    def search(
        self, image: NDArray[np.uint8], masks: NDArray[np.bool_], tokens: list[int], **options: Any
    ) -> eagle.Search:
        return self.search_function(image, masks, tokens, **options, **asdict(self.settings))

    def plan(self, ctx: PlanContext) -> Plan:
        req = ctx.request
        labels = superpixel_regions(ctx.image, req.regions)
        masks = region_masks(labels)
        n_targets = len(ctx.targets)
        budget = None if req.max_forward_passes is None else req.max_forward_passes // n_targets
        floor = self.minimum_passes(masks.shape[0])
        if budget is not None and budget < floor:  # below it the ranking would be no better than region ids
            raise AuditInputError(
                f"max_forward_passes {req.max_forward_passes} is too small for {self.name} with "
                f"{masks.shape[0]} regions and {n_targets} target(s): it needs at least {floor * n_targets} "
                f"({floor} per target, for a first pass over the regions); ask for fewer regions or a larger budget"
            )
        options = {
            "baseline": req.baseline,
            "lam1": req.lambda1,
            "lam2": req.lambda2,
            "max_forward_passes": budget,
            "curves": req.curves,
        }
        jobs = [Job(ctx.audit, self.search(ctx.image, masks, t.token_indices, **options)) for t in ctx.targets]
        return Plan(jobs, lambda: self._finish(ctx, labels, jobs), measures_contrast=req.baseline == "black")

    def _finish(self, ctx: PlanContext, labels: NDArray[np.int32], jobs: list[Job]) -> MethodResult:
        h, w = ctx.request.image.shape[:2]
        results: list[eagle.EagleResult] = [j.result for j in jobs]
        # one label map at the client's pixels, shared by every target's regions
        segments = labels_at(labels, (w, h))
        kind = self.heatmap_kind(ctx.request)
        attributions = [self._attribution(t, r, labels, segments, (w, h), kind) for t, r in zip(ctx.targets, results)]
        # each token's insertion curve comes from the ranking of the first target that holds it
        owner = {t: r for target, r in reversed(list(zip(ctx.targets, results))) for t in target.token_indices}
        first = results[0]
        curves = {}
        for t in range(ctx.audit.n_tokens):
            curve = owner.get(t, first)
            curves[t] = (curve.areas, curve.insertion[:, [t]])
        return MethodResult(attributions, contrast=(first.p_full, first.p_blank), token_curves=curves)

    @staticmethod
    def _attribution(
        target: Target,
        result: eagle.EagleResult,
        labels: NDArray[np.int32],
        segments: NDArray[np.int32],
        size: tuple[int, int],
        kind: str,
    ) -> Attribution:
        scores = result.gain_scores if kind == "gain" else result.region_scores
        regions = []
        for rank, region in enumerate(result.ranking, start=1):
            mask = segments == region
            if not mask.any():  # a sliver lost when mapping back to client pixels
                continue
            x0, y0, x1, y1 = region_bbox(mask)
            regions.append(Region(rank, int(region), float(scores[region]), (x0, y0, x1, y1)))
        return Attribution(
            target=target,
            image_size=size,
            render=lambda at: eagle.heatmap_from_regions(labels, scores, at),  # regions stay flat at any size
            regions=regions,
            segments=segments,
            insertion_auc=result.insertion_auc(),
            deletion_auc=result.deletion_auc(),
            insertion_curve=curve_points(result.areas, result.insertion, target.token_indices),
            deletion_curve=curve_points(result.areas, result.deletion, target.token_indices),
            forward_passes=result.forward_passes,
            search_complete=result.search_complete,
            curve_forward_passes=result.curve_forward_passes,
            heatmap_kind=kind,
            flat_reason=flat_reason(scores),
        )


class EagleFast(_Eagle):
    name = "eagle"
    summary = "EAGLE's faster greedy search over superpixels (default)"
    settings = FAST_SEARCH
    search_function = staticmethod(eagle.fast_search)


class EagleLazy(_Eagle):
    name = "eagle_lazy"
    summary = "coarse-to-fine lazy greedy over superpixels, stopped once the objective is flat; from 18 passes"
    settings = LAZY_SEARCH
    search_function = staticmethod(eagle_lazy.lazy_search)

    def minimum_passes(self, k: int) -> int:
        return eagle_lazy.minimum_passes(k, LAZY_SEARCH.groups)


class EagleFastPublished(_Eagle):
    name = "eagle_fast_published"
    summary = "EAGLE's efficient search as published: stale window, periodic re-rank, bottom-up tail"
    settings = PUBLISHED_SEARCH
    search_function = staticmethod(eagle_published.published_fast_search)


class EagleGreedy(_Eagle):
    name = "eagle_greedy"
    summary = "the published plain greedy search, K(K+1) images"

    def search(
        self, image: NDArray[np.uint8], masks: NDArray[np.bool_], tokens: list[int], **options: Any
    ) -> eagle.Search:
        options.pop("curves")  # every prefix of the ranking is scored by the search itself
        return eagle.greedy_search(image, masks, tokens, **options)


register(EagleFast())
register(EagleGreedy())
register(EagleFastPublished())
register(EagleLazy())
