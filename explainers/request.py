"""What an audit is asked to do, independent of HTTP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_METHOD = "eagle"  # the method a request gets when it names none
MIN_IMAGE_SIDE = 8  # pixels; the service checks it from the image header, before decoding


class AuditInputError(ValueError):
    """The request is well-formed but cannot be audited (HTTP 422)."""


class RequestAbandoned(Exception):
    """Nobody waits for this request's result any more (its client left): its work was stopped."""


@dataclass(frozen=True)
class TokenRange:
    """Answer tokens [start, end) as one target (indices as the result's `tokens`)."""

    start: int
    end: int


CharSpan = tuple[int, int]  # answer characters [start, end)


@dataclass
class AuditRequest:
    image: NDArray[np.uint8]  # H x W x 3
    prompt: str
    answer: str
    method: str = DEFAULT_METHOD  # a name of mllm_audit.explainers.methods
    # "answer", "tokens", or a list of targets: character spans or TokenRanges
    targets: str | list[CharSpan | TokenRange] = "answer"
    regions: int = 64
    max_forward_passes: int | None = None
    curves: bool = False  # every insertion / deletion curve point, even where it costs forward passes
    with_attributions: bool = True  # False: the cheap reliance path (2 forward passes)
    baseline: str = "black"  # what removed regions become (black, blur or mean colour)
    lambda1: float = 1.0  # EAGLE: weight of insight, p_t(keep S)
    lambda2: float = 1.0  # EAGLE: weight of necessity, 1 - p_t(remove S)
    verify: bool = False  # ask the model a yes/no question about each claim (one pass per claim)
    correct_to: str | None = None  # diagnosis: which regions make the model prefer this answer instead
    heatmap_kind: str | None = None  # what the map's values are (explainers.heatmap_kinds); None: the method's default
