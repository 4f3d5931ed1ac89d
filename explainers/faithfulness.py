"""Faithfulness and localisation metrics (insertion and deletion AUC as in EAGLE, arXiv 2509.22496; pointing game).

Insertion / deletion: the mean target-token probability as the attributed pixels are
revealed on the baseline (insertion, higher is better) or removed from the image
(deletion, lower is better), against the revealed area fraction, area under the curve by
the trapezoid rule. Region rankings (EAGLE) get their curves from the search itself;
pixel heatmaps (TAM, MSEA) go through `pixel_ranking_curves`, 64 equal-area steps, so
every method is scored on the same axis.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
from mllm_audit.explainers.masking import ImageLike, MaskedImage, resolve_baseline
from numpy.typing import NDArray
from PIL import Image


def auc(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray) -> float:
    """Trapezoid area under y(x); x must be non-decreasing. Fewer than two points: 0."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D of equal length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return 0.0
    if np.any(np.diff(x) < 0):
        raise ValueError("xs must be non-decreasing")
    return float(np.trapezoid(y, x))


def _target_mean(curve: np.ndarray, token_indices: Sequence[int] | None) -> np.ndarray:
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim == 1:
        return curve
    idx = slice(None) if token_indices is None else list(token_indices)
    mean: NDArray[np.float64] = curve[:, idx].mean(axis=1)
    return mean


def insertion_deletion_from_ranking(
    areas: np.ndarray, insertion: np.ndarray, deletion: np.ndarray, token_indices: Sequence[int] | None = None
) -> tuple[float, float]:
    """(insertion AUC, deletion AUC) from curves already measured along a ranking.

    ``insertion`` / ``deletion`` are probabilities [n_points, n_tokens] (or [n_points] for
    one already-averaged curve) at revealed-area fractions ``areas``; the target tokens'
    probabilities are averaged before integrating, as in the paper.
    """
    return (auc(areas, _target_mean(insertion, token_indices)), auc(areas, _target_mean(deletion, token_indices)))


@dataclass
class RankingCurves:
    areas: np.ndarray  # [steps + 1] revealed fraction of the image, 0 .. 1
    insertion: np.ndarray  # [steps + 1, T] probabilities, row 0 = baseline image
    deletion: np.ndarray  # [steps + 1, T] probabilities, row 0 = full image
    token_indices: list[int]


def aucs_within_end_points(curves: RankingCurves) -> tuple[float, float]:
    """Insertion AUC with the curve capped at the whole image's probability, deletion AUC with it
    floored at the blank image's: the AUCs without the masked images on which the model is surer
    of the answer than on the whole image, or less sure than on a blank one (the benches print both)."""
    insertion = _target_mean(curves.insertion, curves.token_indices)  # ends at the whole image
    deletion = _target_mean(curves.deletion, curves.token_indices)  # ends at the blank image
    capped, floored = np.minimum(insertion, insertion[-1]), np.maximum(deletion, deletion[-1])
    return auc(curves.areas, capped), auc(curves.areas, floored)


def _fit_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != shape:  # scored in image pixels: bring the map to the image size
        heat = np.asarray(Image.fromarray(heat).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return heat


def pixel_ranking_curves(
    image: np.ndarray,
    heatmap: np.ndarray,
    token_indices: Sequence[int] | None = None,
    baseline: str | np.ndarray = "black",
    steps: int = 64,
) -> Generator[list[ImageLike], np.ndarray, tuple[float, float, RankingCurves]]:
    """Insertion / deletion of a pixel heatmap, as an engine generator (see engine.py).

    Pixels are ranked by heatmap value, highest first (ties in row-major order, so the
    result is deterministic). Step i of ``steps`` reveals the top round(i * H*W / steps)
    pixels. ONE yield: ``[full, baseline, insertion 1..steps-1, deletion 1..steps-1]``,
    i.e. 2 * steps images (the end points are shared). Returns
    ``(insertion_auc, deletion_auc, RankingCurves)``.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    base = resolve_baseline(image, baseline)
    heat = _fit_heatmap(heatmap, (h, w))
    order = np.argsort(-heat.ravel(), kind="stable")
    rank = np.empty(h * w, dtype=np.int64)
    rank[order] = np.arange(h * w)
    rank = rank.reshape(h, w)
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64)

    inner = range(1, steps)
    images: list[ImageLike] = [image, base]
    images += [MaskedImage(image, base, rank < counts[i]) for i in inner]
    images += [MaskedImage(image, base, rank >= counts[i]) for i in inner]
    received = np.asarray((yield images), dtype=np.float64)
    if received.ndim != 2 or received.shape[0] != len(images):
        raise ValueError(f"expected log-probs of shape [{len(images)}, n_tokens], got {received.shape}")
    probs = np.exp(received)
    full, blank = probs[0], probs[1]
    middle_ins, middle_del = probs[2 : steps + 1], probs[steps + 1 :]
    insertion = np.vstack([blank, middle_ins, full])
    deletion = np.vstack([full, middle_del, blank])
    tokens = list(range(probs.shape[1])) if token_indices is None else [int(t) for t in token_indices]
    areas = counts / float(h * w)
    ins_auc, del_auc = insertion_deletion_from_ranking(areas, insertion, deletion, tokens)
    return ins_auc, del_auc, RankingCurves(areas, insertion, deletion, tokens)


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Boolean [h, w] mask of a box [x0, y0, x1, y1] (x1, y1 exclusive), clipped to the image."""
    h, w = shape
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    mask = np.zeros((h, w), dtype=bool)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = True
    return mask


def pointing_game(heatmap: np.ndarray, mask_or_box: np.ndarray | Sequence[float]) -> bool:
    """Hit when the map's maximum value is reached anywhere inside the object.

    EAGLE's rule, kept as is so figures compare: ``(map * mask).max() == map.max()``.
    ``mask_or_box`` is a boolean mask of the map's shape or a box [x0, y0, x1, y1] in the
    map's pixels. Note the rule counts a flat map whose maximum is 0 as a hit.
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    target = np.asarray(mask_or_box)
    if target.ndim == 1 and target.size == 4:
        mask = box_mask(target.tolist(), heat.shape)
    else:
        mask = target.astype(bool)
        if mask.shape != heat.shape:
            raise ValueError(f"mask shape {mask.shape} does not match heatmap {heat.shape}")
    if not mask.any():
        return False
    return bool((heat * mask).max() == heat.max())
