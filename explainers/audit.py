"""One entry point for the service: audit a batch of requests against one scorer.

Contract (the service depends on it):
    auditor = Auditor(scorer, forward_batch_size=32, risk_medium=0.35, risk_high=0.65)
    auditor.check(request)          # raises AuditInputError (-> HTTP 422) for bad input
    results = auditor.run(requests) # one dict or one Exception per request, same order

Each dict has the response fields of the API contract that do not depend on the service:
`tokens`, `summary`, `method` ({"name", "params"}), `attributions` (explain only) and
`stats` ({"forward_passes", "model_calls", "compute_ms"}).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("eagle", "eagle_greedy", "tam", "msea", "arc", "msea+arc")


class AuditInputError(ValueError):
    """The request is well-formed JSON but cannot be audited (HTTP 422)."""


@dataclass
class AuditRequest:
    image: np.ndarray  # H x W x 3 uint8
    prompt: str
    answer: str
    method: str = "eagle"
    targets: str | list[tuple[int, int]] = "answer"  # "answer", "tokens" or [start, end) char spans
    regions: int = 64
    max_forward_passes: int | None = None
    heatmap_encoding: str = "array"  # "png", "array" or "none"
    heatmap_size: tuple[int, int] | None = None  # (width, height); default the image size
    with_attributions: bool = True  # False: the cheap reliance path (/v1/reliance)
