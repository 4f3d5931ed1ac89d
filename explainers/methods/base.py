"""The one interface every attribution method implements, and the registry of methods.

A method plans engine jobs for one request (its images get batched with every other
request's by `mllm_audit.explainers.engine`) and, once the engine has run them, turns
their results into typed attributions. The registry is the only list of methods: the
service's request schema, `/info` and the docs derive theirs from it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from mllm_audit.explainers.engine import EngineStats, Job
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.explainers.results import Attribution, ContextToken, Target
from numpy.typing import NDArray

if TYPE_CHECKING:  # the scorer module imports torch; explainers do not need it at run time
    from mllm_audit.models.scorer import Audit, ScorerProtocol

FloatArray = NDArray[np.float64]


@dataclass
class PlanContext:
    """What a method gets to plan one request."""

    request: AuditRequest
    scorer: ScorerProtocol
    audit: Audit  # the scorer's prepared sequence for this request
    image: NDArray[np.uint8]  # the working image (downscaled when large)
    targets: list[Target]


@dataclass
class MethodResult:
    attributions: list[Attribution]
    # (p_full, p_blank) per answer token, when the method measured them (saves the auditor 2 passes)
    contrast: tuple[FloatArray, FloatArray] | None = None
    # per answer token: (areas, insertion column [n, 1]) of the curve its EAGLE reliance is read from
    token_curves: dict[int, tuple[FloatArray, FloatArray]] | None = None
    token_context: dict[int, list[ContextToken]] = field(default_factory=dict)


@dataclass
class Plan:
    jobs: list[Job]  # run by the engine, batched with other requests' jobs
    finish: Callable[[], MethodResult]  # called once the jobs are done
    measures_contrast: bool = False  # finish() returns contrast: no separate full/black job needed
    planning_cost: EngineStats = field(default_factory=EngineStats)  # forwards spent while planning


class Explainer(ABC):
    name: str  # the request's `method`
    white_box: ClassVar[bool] = False  # needs the model's hidden states, not just output probabilities
    summary: str  # one line for the API docs
    heatmap_kinds: ClassVar[tuple[str, ...]] = ("activation",)  # what its maps can show; the first is the default

    def heatmap_kind(self, request: AuditRequest) -> str:
        return request.heatmap_kind or self.heatmap_kinds[0]

    @abstractmethod
    def params(self, request: AuditRequest) -> dict[str, Any]:
        """The parameters the method runs with, for the response's `method.params`."""

    @abstractmethod
    def plan(self, ctx: PlanContext) -> Plan:
        """The request's jobs; raise AuditInputError for what only the method can check (its budget)."""


_REGISTRY: dict[str, Explainer] = {}


def register(explainer: Explainer) -> Explainer:
    if explainer.name in _REGISTRY:
        raise ValueError(f"method {explainer.name!r} is registered twice")
    _REGISTRY[explainer.name] = explainer
    return explainer


def registered() -> dict[str, Explainer]:
    return dict(_REGISTRY)
