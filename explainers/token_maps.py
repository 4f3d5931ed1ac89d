"""White-box token maps for an audit: TAM, MSEA, ARC and MSEA+ARC (arXiv 2506.23270 and 2509.22415).

    target_heatmaps(scorer, audit, image, variant, targets)
        -> [{"heatmap", "context", "token_context", "forward_passes", "model_calls", "peak"}]

- ``tam``: one white-box forward; per answer token, the logit lens of its class at the image
  tokens, with TAM's estimated causal inference and rank Gaussian filter (explainers/tam.py).
- ``arc``: the same forward; ECI's context terms weighted by 1 - RBO coherence (explainers/arc.py).
- ``msea``: TAM on the multi-scale views of the image, averaged (explainers/msea.py).
- ``msea+arc``: both.

Every map is brought to the image's pixels (nearest, see tam.grid_to_pixels), scaled to [0, 1] by its maximum; a
multi-token target is the mean of its tokens' maps, scaled again. ``peak`` is the
target's raw activation peak (logit units, before that scaling): it lets maps of one
answer be put on a common scale (the benchmark's Func-IoU does). ``context`` lists the
prompt and earlier answer tokens most relevant to the target (at most `context_top`, score > 0):
``index`` is the answer-token index for ``source == "answer"`` and the sequence position
for ``source == "prompt"``; ``score`` is TAM's textual relevance share r_j / sum r, or
for the ARC methods the RBO coherence rho_j in [0, 1]. ``token_context`` is the same list
for each token of the target on its own. ``forward_passes`` (images) and ``model_calls``
count the white-box forwards of the call; they are shared by all its targets.

The scorer is a `ScorerProtocol` (mllm_audit.models.scorer): ``white_box``,
``image_token_positions``, ``image_grid``, ``view_box`` and the token helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from mllm_audit.explainers import msea, tam
from mllm_audit.explainers.arc import ArcParams

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol


@dataclass(frozen=True)
class MapVariant:
    """Which of the papers' additions a map uses on top of TAM."""

    multiscale: bool = False  # MSEA: maps of several image scales, aggregated
    arc: bool = False  # ARC: context weighted by rank-biased-overlap coherence


ViewWeighting = Literal["equal", "agreement"]


@dataclass(frozen=True)
class TokenMapParams:
    scales: tuple[float, ...] = msea.DEFAULT_SCALES  # MSEA scales (single-scale methods use 1 only)
    arc: ArcParams = field(default_factory=ArcParams)  # RBO depth k and persistence p
    rank_filter: bool = True  # TAM's rank Gaussian filter on the token grid
    filter_size: int = 3
    view_weighting: ViewWeighting = "equal"  # MSEA: "agreement" weights scales by msea.agreement_weights
    views_per_forward: int = 8  # views per white_box call (each returns [seq, vocab] logits)
    context_top: int = 10


def variant_params(variant: MapVariant, params: TokenMapParams | None = None) -> dict[str, Any]:
    """The parameters a map ran with, for the response's ``method.params``."""
    params = params or TokenMapParams()
    out: dict[str, Any] = {"rank_filter": params.rank_filter, "filter_size": params.filter_size, "eci": True}
    if variant.multiscale:
        out["scales"] = list(params.scales)
        out["view_weighting"] = params.view_weighting
    if variant.arc:
        out.update({"rbo_k": params.arc.k, "rbo_p": params.arc.p, "arc_weighting": "1 - rho"})
    return out


def _context(
    layout: tam.SequenceLayout, grid_maps: dict[int, tam.TokenGridMap], token_indices: list[int], top: int
) -> list[dict[str, Any]]:
    """Context relevance of one target: mean over its tokens, positions before its first token."""
    first = layout.position(min(token_indices))
    totals: dict[int, list[float]] = {}
    for t in token_indices:
        m = grid_maps[t]
        for pos, score in zip(m.context_positions, m.context_scores):
            if pos < first:  # only what came before the target
                totals.setdefault(pos, []).append(float(score))
    ranked = sorted(((float(np.mean(v)), pos) for pos, v in totals.items()), key=lambda x: (-x[0], x[1]))
    ranked = [(score, pos) for score, pos in ranked if score > 0][:top]
    out = []
    for score, pos in ranked:
        if pos >= layout.answer_start:
            k = pos - layout.answer_start
            out.append({"index": k, "source": "answer", "text": layout.answer_texts[k], "score": round(score, 6)})
        else:
            out.append({"index": pos, "source": "prompt", "text": layout.position_texts[pos], "score": round(score, 6)})
    return out


def target_heatmaps(
    scorer: ScorerProtocol,
    audit: Audit,
    image: np.ndarray,
    variant: MapVariant,
    targets: list[list[int]],
    params: TokenMapParams | None = None,
) -> list[dict[str, Any]]:
    """One dict per target (a list of answer-token indices); see the module docstring."""
    params = params or TokenMapParams()
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    n_answer = audit.n_tokens
    for target in targets:
        if not target or any(not 0 <= t < n_answer for t in target):
            raise ValueError(f"target token indices {target} are not within the answer's {n_answer} tokens")
    layout = tam.sequence_layout(scorer, audit, image)
    tokens = sorted({int(t) for target in targets for t in target})
    scales = params.scales if variant.multiscale else (1.0,)
    arc_params = params.arc if variant.arc else None
    views = msea.make_views(image, scales)

    box = scorer.view_box((h, w))
    seen = np.zeros((h, w), dtype=np.float32)
    seen[box[1] : box[3], box[0] : box[2]] = 1.0
    stitchers = {t: msea.ScaleStitcher((h, w)) for t in tokens}
    context_maps: dict[int, tam.TokenGridMap] | None = None
    identity_seen = False
    step = max(1, params.views_per_forward)
    for start in range(0, len(views), step):
        chunk = views[start : start + step]
        outputs = scorer.white_box([(audit, v.image) for v in chunk])
        for view, out in zip(chunk, outputs):
            logits = out.logits.float().numpy() if hasattr(out.logits, "numpy") else np.asarray(out.logits)
            maps = tam.token_grid_maps(logits, layout, tokens, arc_params, params.rank_filter, params.filter_size)
            if view.scale == 1.0 and not identity_seen:  # context from the unaltered image when shown
                context_maps, identity_seen = maps, True
            elif context_maps is None:
                context_maps = maps
            for t, m in maps.items():
                stitchers[t].add(view, tam.grid_to_pixels(m.grid, (h, w), box), seen)
        del outputs

    token_heat: dict[int, np.ndarray] = {}
    token_peak: dict[int, float] = {}
    for t in tokens:
        per_scale = stitchers[t].scale_maps()
        peaks = [float(m.max()) for m in per_scale.values()]
        scaled = [tam.normalise(m) for m in per_scale.values()]
        weights = msea.agreement_weights(scaled) if params.view_weighting == "agreement" else np.ones(len(scaled))
        token_heat[t] = tam.normalise(np.tensordot(weights / weights.sum(), np.stack(scaled), axes=1))
        token_peak[t] = float(np.mean(peaks))

    results = []
    for target in targets:
        if context_maps is None:  # no view was mapped: params.scales is empty
            raise ValueError("no image views to map: the scales are empty")
        heat = tam.normalise(np.mean([token_heat[t] for t in target], axis=0)).astype(np.float32)
        results.append(
            {
                "heatmap": heat,
                "context": _context(layout, context_maps, list(target), params.context_top),
                "token_context": {t: _context(layout, context_maps, [t], params.context_top) for t in target},
                "forward_passes": len(views),
                "model_calls": -(-len(views) // step),
                "peak": float(np.mean([token_peak[t] for t in target])),
            }
        )
    return results
