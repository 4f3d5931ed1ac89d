"""The wire format of an audit: a typed AuditResult as the JSON body's fields.

Heatmaps become float rows or a base64 8-bit PNG at the size asked for, region masks
run-length codes; the shape is `mllm_audit.service.schemas`' response models (the tests
validate every body against them).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict
from typing import Any

import numpy as np
from mllm_audit.explainers.regions import rle_encode
from mllm_audit.explainers.results import Attribution, AuditResult, ClaimResult, Diagnosis, TokenResult
from numpy.typing import NDArray
from PIL import Image

HEATMAP_ENCODINGS = ("array", "png", "none")


def encode_heatmap(heat: NDArray[np.float32], encoding: str) -> dict[str, Any] | None:
    """float32 [height, width] in [0, 1] as the response's `heatmap` (None for encoding "none")."""
    if encoding == "none":
        return None
    height, width = heat.shape
    data = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if encoding == "array":
        # rounded as float64: a float32's 0.1234 would print as 0.12340000271797180 (16 bytes a pixel, not 7)
        rows = np.round(data.astype(np.float64), 4).tolist()
        return {"width": width, "height": height, "encoding": "array", "data": rows}
    if encoding != "png":
        raise ValueError(f"unknown heatmap encoding {encoding!r}; use one of {', '.join(HEATMAP_ENCODINGS)}")
    buf = io.BytesIO()
    Image.fromarray(np.round(data * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return {"width": width, "height": height, "encoding": "png", "data": base64.b64encode(buf.getvalue()).decode()}


# JSON bytes per heatmap pixel: "0.1234," as an array; deflate's worst case in base64 as a png
_HEATMAP_BYTES_PER_PIXEL = {"array": 7.0, "png": 1.4, "none": 0.0}
_BYTES_PER_TOKEN = 1_000  # a token's and its claim's fields, generously


def estimated_bytes(
    targets: int, heatmap: tuple[int, int], encoding: str, image: tuple[int, int], regions: int, tokens: int
) -> int:
    """An upper estimate of a response body's size, from the request alone (before any compute).

    `heatmap` and `image` are (width, height); `regions` is the ranked regions per target (0 for
    white-box maps). A region's run-length mask has two runs per image row it spans, and about
    sqrt(regions) regions share a row; doubled for irregular superpixels.
    """
    width, height = heatmap
    per_heatmap = _HEATMAP_BYTES_PER_PIXEL[encoding] * width * height + 2 * height
    digits = len(str(image[0] * image[1])) + 1
    per_masks = 2 * 2 * image[1] * math.sqrt(regions) * digits if regions else 0
    per_curves = 2 * 30 * (max(regions, 64) + 1)  # insertion and deletion: a point per region or map step
    return int(targets * (per_heatmap + per_masks + per_curves + 1_000) + tokens * _BYTES_PER_TOKEN + 4_000)


def _curve(points: NDArray[np.float64]) -> list[list[float]]:
    return [[round(float(area), 5), round(float(p), 6)] for area, p in points]


def attribution_body(attribution: Attribution, encoding: str, size: tuple[int, int] | None) -> dict[str, Any]:
    a = attribution
    body: dict[str, Any] = {
        "target": asdict(a.target),
        "regions": [
            {
                "rank": r.rank,
                "region_id": r.region_id,
                "score": round(r.score, 6),
                "bbox": list(r.bbox),
                "mask": rle_encode(a.region_mask(r)),
            }
            for r in a.regions
        ],
        "heatmap": None if encoding == "none" else _heatmap(a, encoding, size),
        "insertion_auc": a.insertion_auc,
        "deletion_auc": a.deletion_auc,
        "insertion_curve": _curve(a.insertion_curve),
        "deletion_curve": _curve(a.deletion_curve),
        "forward_passes": a.forward_passes,
        "search_complete": a.search_complete,
        "curve_forward_passes": a.curve_forward_passes,
    }
    if a.context is not None:
        body["context"] = [asdict(c) for c in a.context]
    return body


def _heatmap(attribution: Attribution, encoding: str, size: tuple[int, int] | None) -> dict[str, Any] | None:
    body = encode_heatmap(attribution.heatmap(size), encoding)
    if body is not None:
        reason = attribution.flat_reason
        body.update(kind=attribution.heatmap_kind, flat=reason is not None, flat_reason=reason)
    return body


def token_body(token: TokenResult) -> dict[str, Any]:
    body = asdict(token)
    if token.context is None:
        del body["context"]
    return body


def audit_body(
    result: AuditResult, heatmap_encoding: str = "array", heatmap_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The fields `method`, `tokens`, `summary`, `stats` and, for explanations, `attributions`.

    `heatmap_size` is (width, height), the image's by default.
    """
    body: dict[str, Any] = {
        "method": asdict(result.method),
        "tokens": [token_body(t) for t in result.tokens],
        "claims": [claim_body(c) for c in result.claims],
        "risk": asdict(result.risk),
        "summary": asdict(result.summary),
        "stats": asdict(result.stats),
    }
    if result.attributions is not None:
        body["attributions"] = [attribution_body(a, heatmap_encoding, heatmap_size) for a in result.attributions]
    if result.diagnosis is not None:
        body["diagnosis"] = diagnosis_body(result.diagnosis)
    return body


def claim_body(claim: ClaimResult) -> dict[str, Any]:
    body = asdict(claim)
    body["risk_score"] = round(claim.risk_score, 6)
    body["evidence_bbox"] = list(claim.evidence_bbox) if claim.evidence_bbox else None
    return body


def diagnosis_body(diagnosis: Diagnosis) -> dict[str, Any]:
    return {
        "alternative": diagnosis.alternative,
        "flip_area": None if diagnosis.flip_area is None else round(diagnosis.flip_area, 5),
        "flip_regions": diagnosis.flip_regions,
        "regions": [
            {"rank": rank, "region_id": region, "bbox": list(box)}
            for rank, (region, box) in enumerate(zip(diagnosis.ranking, diagnosis.boxes), start=1)
        ],
        "curve": [[round(float(a), 5), round(float(m), 6)] for a, m in diagnosis.curve],
        "forward_passes": diagnosis.forward_passes,
    }
