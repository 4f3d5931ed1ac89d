"""The HTTP contract: pydantic v2 models of every request and response body.

Field names are the API contract v1 and are fixed: clients, dashboards and CI
checks depend on them. Responses allow extra fields (new fields may be added, none renamed);
requests forbid unknown fields so a misspelt option fails with 422 instead of being ignored.

The bounds written here are static so that openapi.yaml does not depend on the deployment;
the configured limits (service.config: MLLM_AUDIT_MAX_REGIONS, ..._MAX_FORWARD_PASSES,
token counts, payload and pixel sizes) are checked by the service and answered 413/422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mllm_audit.explainers.heatmap_kinds import KINDS
from mllm_audit.explainers.methods import METHODS, registered
from mllm_audit.explainers.request import DEFAULT_METHOD
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

# the registry of methods is the only list of them
Method = Literal[METHODS]  # type: ignore[valid-type]
RiskLabel = Literal["low", "medium", "high", "not_visual"]
HEATMAP_KINDS = tuple(KINDS)

# Hard bounds of the schema; the service's own limits (config) may be lower, never higher.
MAX_TEXT_CHARS = 100_000
MAX_REGIONS_SCHEMA = 4096
MAX_FORWARD_PASSES_SCHEMA = 10_000_000
MAX_HEATMAP_SIDE = 8192
MAX_TARGET_SPANS = 64

# A 32x32 grey PNG with a red square: the example in /docs and the schema (schemathesis sends it).
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAPklEQVR42mOsqKhgoCVgYqAxGLVg1ALKAQsuiZQNG0gyaE5A"
    "wGgcjFowasGoBaMWDMP6AFf5PhoHoxYMQwsAEkMF6BJwl5QAAAAASUVORK5CYII="
)
RELIANCE_EXAMPLE: dict[str, Any] = {"image": EXAMPLE_IMAGE, "prompt": "What color is the square?", "answer": "red"}
EXPLAIN_EXAMPLE: dict[str, Any] = {
    **RELIANCE_EXAMPLE,
    "targets": "answer",
    "method": DEFAULT_METHOD,
    "regions": 4,
    "max_forward_passes": 16,
    "heatmap": {"encoding": "none"},
}


def _valid_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


class _Request(BaseModel):
    # strict: "8" is not an integer and 1 is not a string, as openapi.yaml says
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------- requests


class Span(_Request):
    """Characters [start, end) of the answer."""

    start: int = Field(ge=0, description="first character of the span in the answer")
    end: int = Field(ge=1, description="one past the last character of the span")

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end <= self.start:
            raise ValueError(f"span end ({self.end}) must be greater than its start ({self.start})")
        return self


class TokenSpan(_Request):
    """Answer tokens [token_start, token_end), indexed as the response's `tokens` (and /v1/reliance's)."""

    token_start: int = Field(ge=0, description="first answer token of the target")
    token_end: int = Field(ge=1, description="one past the last answer token of the target")

    @model_validator(mode="after")
    def _ordered(self) -> TokenSpan:
        if self.token_end <= self.token_start:
            raise ValueError(f"token_end ({self.token_end}) must be greater than token_start ({self.token_start})")
        return self


def _span_kind(value: Any) -> str:
    """Which span a target item is, so a bad item is told what is wrong with it, not with both kinds.
    (The tags are bracketed: error locations leave such union-member names out.)"""
    # a dict when validating, a model when serialising (model_dump)
    tokens = isinstance(value, TokenSpan) or (
        isinstance(value, dict) and ("token_start" in value or "token_end" in value)
    )
    return "[token span]" if tokens else "[character span]"


TargetSpan = Annotated[
    Annotated[Span, Tag("[character span]")] | Annotated[TokenSpan, Tag("[token span]")], Discriminator(_span_kind)
]
SpanList = Annotated[list[TargetSpan], Field(min_length=1, max_length=MAX_TARGET_SPANS)]


class HeatmapOptions(_Request):
    encoding: Literal["png", "array", "none"] = Field(
        "array", description="png: a base64 8-bit grayscale PNG; array: rows of floats in [0, 1]; none: no heatmap"
    )
    width: int | None = Field(None, ge=1, le=MAX_HEATMAP_SIDE, description="heatmap width (default: the image width)")
    height: int | None = Field(
        None, ge=1, le=MAX_HEATMAP_SIDE, description="heatmap height (default: the image height)"
    )
    kind: Literal[HEATMAP_KINDS] | None = Field(  # type: ignore[valid-type]
        None,
        description="what the values show (null: the method's default): "
        + "; ".join(f"{k}: {v}" for k, v in KINDS.items())
        + ". EAGLE methods: gain (default) or cumulative; white-box methods: activation",
    )


class RelianceRequest(_Request):
    """Per-token visual reliance and hallucination risk of an answer (the cheap path)."""

    model_config = ConfigDict(json_schema_extra={"examples": [RELIANCE_EXAMPLE]})

    image: str = Field(
        min_length=1,
        description="the image as base64 or as a data URL (data:image/png;base64,...); PNG, JPEG, WebP, GIF or BMP",
    )
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the prompt the model answered")
    answer: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the answer the model generated")

    verify: bool = Field(
        False,
        description="also ask the model a yes/no question about each object claim "
        "(one forward pass per claim); its answer becomes the claim's `verification` signal",
    )

    check_text = field_validator("prompt", "answer")(_valid_text)


class ExplainRequest(RelianceRequest):
    """Attribution masks, reliance and risk for selected answer tokens."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXPLAIN_EXAMPLE]})

    targets: Literal["answer", "tokens"] | SpanList = Field(
        "answer",
        description='"answer": one attribution for the whole answer; "tokens": one per answer token; '
        "or a list of targets, each a character span {start, end} of the answer or a "
        "token span {token_start, token_end}; a span covering several tokens is one target",
    )
    method: Method = Field(
        DEFAULT_METHOD,
        description="; ".join(f"{name}: {e.summary}" for name, e in registered().items()),
    )
    regions: int = Field(
        64,
        ge=2,
        le=MAX_REGIONS_SCHEMA,
        description="superpixel regions the image is cut into; the service's limit "
        "(GET /info) may be lower, and an omitted value never exceeds it",
    )
    max_forward_passes: int | None = Field(
        None,
        ge=2,
        le=MAX_FORWARD_PASSES_SCHEMA,
        description="budget of images run through the model for this request (null: the service's limit)",
    )
    curves: bool = Field(
        False,
        description="measure every point of the insertion and deletion curves (and AUCs) even where it costs "
        "forward passes: 2 x 64 more per target for a white-box map (off, it costs its one pass); for EAGLE, the "
        "ranking's prefixes its search did not score (off, its curves keep the points it scored, end points "
        "included). Each attribution's `curve_forward_passes` says what the curves cost",
    )
    heatmap: HeatmapOptions = Field(default_factory=HeatmapOptions)  # type: ignore[arg-type]
    baseline: Literal["black", "blur", "mean"] = Field(
        "black",
        description="what removed image regions become in the masked images (insertion / deletion "
        "and EAGLE's search); p_blank is always the black image",
    )
    lambda1: float = Field(1.0, ge=0, le=1000, description="EAGLE: weight of insight (sufficiency), p_t(keep S)")
    lambda2: float = Field(1.0, ge=0, le=1000, description="EAGLE: weight of necessity, 1 - p_t(remove S); not both 0")
    correct_to: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="diagnosis: an alternative answer; the response's `diagnosis` ranks the regions whose "
        "removal moves the model from the answer to it, and the smallest share of the image that does",
    )

    stream: bool = Field(
        False,
        description="answer as server-sent events (text/event-stream): `progress` events "
        '`{"forward_passes", "budget"}` about every 0.5 s while the audit waits or runs and once with the final count, '
        "then one `result` event "
        "with this response's JSON, or one `error` event `{status, detail, request_id}`",
    )

    check_correct_to = field_validator("correct_to")(lambda v: v if v is None else _valid_text(v))


# --------------------------------------------------------------------------------- responses


class ModelBlock(_Response):
    id: str
    family: str
    revision: str | None = None


class MethodBlock(_Response):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ContextToken(_Response):
    index: int = Field(description="answer-token index (source answer) or sequence position (source prompt)")
    source: Literal["prompt", "answer"]
    text: str
    score: float = Field(description="TAM's textual relevance share, or ARC's rank-biased-overlap coherence")


class TokenResult(_Response):
    index: int
    text: str
    start: int
    end: int
    p_full: float = Field(description="probability of the token with the full image")
    p_blank: float = Field(description="probability with the image blanked (black)")
    visual_reliance: float
    language_reliance: float
    risk_score: float
    risk_label: RiskLabel
    eagle_reliance: float | None = Field(
        default=None,
        description="EAGLE's I_t = AUC(c_t) - min c_t over the token's insertion curve c_t "
        "(eagle methods on /v1/explain only)",
    )
    context: list[ContextToken] | None = Field(
        default=None,
        description="white-box methods: the prompt and earlier answer tokens most relevant to "
        "this token, with scores (tokens inside a target only)",
    )


class Summary(_Response):
    risk_label: RiskLabel = Field(description="the worst label among the claims (not_visual: no claim)")
    risk_score: float = Field(description="the highest claim risk")
    visual_reliance: float
    flagged_tokens: int = Field(description="tokens labelled high")
    claims: int = 0
    flagged_claims: int = Field(0, description="claims labelled high")
    expected_hallucinations: float = Field(0.0, description="sum of the claims' risk scores")


class Claim(_Response):
    index: int
    kind: Literal["object", "count", "existence", "relation"]
    start: int
    end: int
    text: str
    token_indices: list[int]
    risk_score: float = Field(description="estimated probability that the claim is hallucinated (see `risk`)")
    risk_label: Literal["low", "medium", "high"]
    signals: dict[str, float] = Field(
        description="what was measured: confidence, entropy, grounding (white-box families), verification (verify)"
    )
    evidence_bbox: list[int] | None = Field(
        None, description="[x0, y0, x1, y1]: the image patch that best supports the whole claim (grounding)"
    )


class RiskBlock(_Response):
    calibration: str | None = Field(description="id of the calibration file in use; null: uncalibrated")
    calibrated: bool = Field(description="false: risk scores rank claims but are not probabilities")
    signals: list[str] = Field(description="the signals the risk scores of this response rest on")


class DiagnosisRegion(_Response):
    rank: int
    region_id: int
    bbox: list[int]


class Diagnosis(_Response):
    alternative: str
    flip_area: float | None = Field(
        description="smallest share of the image whose removal makes the model "
        "prefer the alternative; null when removing every region does not"
    )
    flip_regions: int | None
    regions: list[DiagnosisRegion] = Field(description="regions by the shift their removal causes, strongest first")
    curve: list[list[float]] = Field(
        description="[[share of the image removed, log p(alternative) - log p(answer)], ...]"
    )
    forward_passes: int


class Stats(_Response):
    forward_passes: int = Field(description="images run through the model for this request")
    model_calls: int = Field(description="batched model invocations of the batch this request ran in")
    batch_size: int = Field(description="requests batched together with this one (itself included)")
    queue_ms: float = Field(description="time from arrival to a model worker taking the request")
    compute_ms: float = Field(description="time the batch spent auditing")


class Target(_Response):
    start: int
    end: int
    text: str
    token_indices: list[int]


class Mask(_Response):
    encoding: Literal["rle"]
    size: list[int] = Field(description="[height, width]")
    order: str = Field(description="row-major: counts run along rows; runs alternate 0s and 1s, 0s first")
    counts: list[int]


class Region(_Response):
    rank: int
    score: float
    bbox: list[int] = Field(description="[x0, y0, x1, y1] in image pixels, x1 and y1 exclusive")
    mask: Mask


class Heatmap(_Response):
    width: int
    height: int
    encoding: Literal["png", "array"]
    data: str | list[list[float]] = Field(description="base64 PNG, or rows of floats in [0, 1]")
    kind: Literal[HEATMAP_KINDS] = Field(  # type: ignore[valid-type]
        "gain", description="what the values mean: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items())
    )
    flat: bool = Field(False, description="true: every value is the same (all zero included): the map shows nothing")
    flat_reason: str | None = Field(None, description="why the map is flat, in words; null when it is not")


class Attribution(_Response):
    target: Target
    regions: list[Region] = Field(description="ranked regions (EAGLE); empty for white-box maps")
    heatmap: Heatmap | None = None
    insertion_auc: float | None = None
    deletion_auc: float | None = None
    insertion_curve: list[list[float]] = Field(
        default_factory=list, description="[[share of the image shown, mean target probability], ...]"
    )
    deletion_curve: list[list[float]] = Field(
        default_factory=list, description="[[share of the image removed, mean target probability], ...]"
    )
    search_complete: bool = Field(default=True, description="false when the forward-pass budget cut the search")
    curve_forward_passes: int = Field(
        default=0, description="of forward_passes, the images scored only for the insertion and deletion curves"
    )
    context: list[ContextToken] | None = Field(
        default=None, description="white-box methods: the prompt and earlier answer tokens most relevant to the target"
    )
    forward_passes: int


class RelianceResponse(_Response):
    request_id: str
    model: ModelBlock
    method: MethodBlock
    tokens: list[TokenResult]
    claims: list[Claim]
    risk: RiskBlock
    summary: Summary
    stats: Stats


class ExplainResponse(RelianceResponse):
    attributions: list[Attribution]
    diagnosis: Diagnosis | None = None


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in words")
    request_id: str | None = Field(None, description="the request id, also in the X-Request-ID header")


class RiskModelInfo(_Response):
    signals: list[str] = Field(description="the signals this model of the calibration scores a claim from")
    kinds: list[str] = Field(default_factory=list, description="the kinds of claim it scores; empty: every kind")
    medium: float = Field(description="risk score from which a claim is labelled medium")
    high: float = Field(description="risk score from which a claim is labelled high")
    measured: dict[str, Any] = Field(
        description="its held-out figures when it was fitted: AUROC, AUPRC, precision and recall at each label"
    )


class RiskCalibrationInfo(_Response):
    calibration: str | None = Field(description="id of the risk calibration in use; null: uncalibrated")
    calibrated: bool = Field(description="false: risk scores rank claims but are not probabilities")
    models: list[RiskModelInfo] = Field(description="a claim is scored by the model with the most signals measured")


class InfoResponse(_Response):
    service: dict[str, Any]
    model: ModelBlock
    methods: list[str]
    endpoints: list[str]
    risk: RiskCalibrationInfo
    limits: dict[str, Any]
    batching: dict[str, Any]
    config: dict[str, Any]
