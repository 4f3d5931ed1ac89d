"""Typed results of an audit: what `Auditor.run` returns, before any wire format.

Arrays stay arrays here; the service turns a result into JSON (base64 PNG or float rows for
heatmaps, run-length masks, rounding) in `mllm_audit.service.serialize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from mllm_audit.explainers.heatmap_kinds import figure_caption
from mllm_audit.explainers.overlay import heatmap_figure, overlay_heatmap
from numpy.typing import NDArray
from PIL import Image

RiskLabel = Literal["low", "medium", "high", "not_visual"]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Target:
    """The answer characters [start, end) an attribution explains, and the tokens they cover."""

    start: int
    end: int
    text: str
    token_indices: list[int]


@dataclass(frozen=True)
class ContextToken:
    """A prompt or earlier answer token that fed a white-box map, with its relevance."""

    index: int  # answer-token index (source "answer") or sequence position (source "prompt")
    source: Literal["prompt", "answer"]
    text: str
    score: float


@dataclass
class TokenResult:
    """Reliance and risk of one answer token (the field order is the JSON's)."""

    index: int
    text: str
    p_full: float  # probability with the full image
    p_blank: float  # probability with the image blanked (black)
    visual_reliance: float
    language_reliance: float
    risk_score: float
    risk_label: RiskLabel
    eagle_reliance: float | None = None  # EAGLE's I_t, when an insertion curve exists
    start: int = 0  # characters [start, end) of the answer
    end: int = 0
    context: list[ContextToken] | None = None  # white-box methods: what fed this token's map


@dataclass(frozen=True)
class ClaimResult:
    """A visual claim of the answer (an object with its attributes, a count, a yes/no, a relation)."""

    index: int
    kind: Literal["object", "count", "existence", "relation"]
    start: int  # characters [start, end) of the answer
    end: int
    text: str
    token_indices: list[int]
    risk_score: float  # estimated probability that the claim is hallucinated (see RiskInfo)
    risk_label: RiskLabel
    signals: dict[str, float]  # the signals measured for it (mllm_audit.explainers.signals)
    evidence_bbox: tuple[int, int, int, int] | None = None  # the grounding's best patch, image pixels


@dataclass(frozen=True)
class RiskInfo:
    """How risk was estimated: the calibration file's id (None: uncalibrated) and the signals used."""

    calibration: str | None
    calibrated: bool  # False: a ranking score, not a probability
    signals: list[str]


@dataclass(frozen=True)
class Summary:
    risk_label: RiskLabel  # the worst label among the claims
    risk_score: float  # the highest claim risk
    visual_reliance: float
    flagged_tokens: int  # tokens labelled high
    claims: int = 0
    flagged_claims: int = 0  # claims labelled high
    expected_hallucinations: float = 0.0  # sum of the claims' risk scores


@dataclass(frozen=True)
class Region:
    """A superpixel in EAGLE's ranking; its mask is `Attribution.region_mask(region)`."""

    rank: int  # 1 = most important
    region_id: int
    score: float  # its heatmap value
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1 and y1 exclusive


@dataclass
class Attribution:
    """Which image regions made the model say one target."""

    target: Target
    image_size: tuple[int, int]  # (width, height) of the audited image
    render: Callable[[tuple[int, int]], NDArray[np.float32]] = field(repr=False)  # heatmap at (width, height)
    regions: list[Region] = field(default_factory=list)  # ranked (EAGLE); empty for white-box maps
    segments: NDArray[np.int32] | None = field(default=None, repr=False)  # region id per image pixel (EAGLE)
    insertion_auc: float | None = None
    deletion_auc: float | None = None
    insertion_curve: FloatArray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)  # [[shown, p], ...]
    deletion_curve: FloatArray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)  # [[removed, p], ...]
    forward_passes: int = 0
    search_complete: bool = True  # False when the forward-pass budget cut the search
    curve_forward_passes: int = 0  # of forward_passes, the images scored only for the curves
    context: list[ContextToken] | None = None
    heatmap_kind: str = "gain"  # what the values mean: mllm_audit.explainers.heatmap_kinds.KINDS
    flat_reason: str | None = None  # set when the map is constant (all zero included): it carries no information

    def heatmap(self, size: tuple[int, int] | None = None) -> NDArray[np.float32]:
        """float32 [height, width] in [0, 1]; size is (width, height), the image's by default."""
        return self.render(size or self.image_size)

    def region_mask(self, region: Region) -> NDArray[np.bool_]:
        if self.segments is None:
            raise ValueError("this attribution has no regions (white-box maps have none)")
        mask: NDArray[np.bool_] = self.segments == region.region_id
        return mask

    def overlay(self, image: Image.Image | NDArray[np.uint8], alpha: float = 0.6) -> Image.Image:
        """The heatmap over the image, the top region's box drawn when there is one."""
        rgb = np.asarray(Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB"))
        box = self.regions[0].bbox if self.regions else None
        return overlay_heatmap(rgb, self.heatmap((rgb.shape[1], rgb.shape[0])), box, alpha)

    def figure(self, image: Image.Image | NDArray[np.uint8], alpha: float = 0.6) -> Image.Image:
        """The overlay with a colour bar, the target text above it and the map's kind (or flatness) below."""
        rgb = np.asarray(Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB"))
        box = self.regions[0].bbox if self.regions else None
        heat = self.heatmap((rgb.shape[1], rgb.shape[0]))
        return heatmap_figure(rgb, heat, *figure_caption(self.target.text, self.heatmap_kind, self.flat_reason), box)


@dataclass(frozen=True)
class MethodInfo:
    name: str  # a method of mllm_audit.explainers.methods, or "reliance" for the cheap path
    params: dict[str, Any]


@dataclass(frozen=True)
class Stats:
    forward_passes: int  # images run through the model for this request
    model_calls: int  # batched model invocations of the run this request was part of
    compute_ms: float


@dataclass
class AuditResult:
    method: MethodInfo
    tokens: list[TokenResult]
    summary: Summary
    stats: Stats
    claims: list[ClaimResult]
    risk: RiskInfo
    attributions: list[Attribution] | None = None  # None on the cheap reliance path
    diagnosis: Diagnosis | None = None  # with correct_to only


@dataclass(frozen=True)
class Diagnosis:
    """EAGLE's correction analysis: which regions, removed, make the model prefer an alternative answer."""

    alternative: str
    ranking: list[int]  # region ids, the strongest shift towards the alternative first
    flip_area: float | None  # smallest share of the image whose removal makes it prefer the alternative
    flip_regions: int | None  # how many top regions that is
    curve: FloatArray = field(repr=False)  # [[area removed, log p(alternative) - log p(answer)], ...]
    forward_passes: int = 0
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # of the ranked regions, image pixels
