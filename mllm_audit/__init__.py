"""MLLM Audit: which image regions made a multimodal LLM say each token, how much each token
rests on the image, and how likely each is hallucinated.

    from PIL import Image
    from mllm_audit import Auditor

    auditor = Auditor.from_pretrained()  # the bundled reference model, or a local checkpoint directory
    image = Image.open("examples/images/red-circle.png")
    result = auditor.explain(image, prompt="What color is the circle?", answer="red", regions=16)
    print(result.summary.risk_label, [(t.text, t.visual_reliance) for t in result.tokens])
    result.attributions[0].overlay(image).save("overlay.png")

Names are loaded on first use, so `import mllm_audit` stays cheap (no torch) for the
service's HTTP processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.explainers.methods import METHODS, WHITE_BOX, Explainer, register
    from mllm_audit.explainers.request import AuditInputError, AuditRequest, TokenRange
    from mllm_audit.explainers.results import (
        Attribution,
        AuditResult,
        ClaimResult,
        ContextToken,
        Diagnosis,
        MethodInfo,
        Region,
        RiskInfo,
        Stats,
        Summary,
        Target,
        TokenResult,
    )
    from mllm_audit.models.backends import load_scorer
    from mllm_audit.models.loading import REFERENCE_MODEL_DIR as REFERENCE_MODEL
    from mllm_audit.models.loading import load_model
    from mllm_audit.service.client import AsyncAuditClient, AuditClient, AuditError
    from mllm_audit.service.serialize import audit_body as serialize

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "Auditor": ("mllm_audit.explainers.audit", "Auditor"),
    "AuditRequest": ("mllm_audit.explainers.request", "AuditRequest"),
    "AuditInputError": ("mllm_audit.explainers.request", "AuditInputError"),
    "TokenRange": ("mllm_audit.explainers.request", "TokenRange"),
    "AuditResult": ("mllm_audit.explainers.results", "AuditResult"),
    "Attribution": ("mllm_audit.explainers.results", "Attribution"),
    "ClaimResult": ("mllm_audit.explainers.results", "ClaimResult"),
    "ContextToken": ("mllm_audit.explainers.results", "ContextToken"),
    "Diagnosis": ("mllm_audit.explainers.results", "Diagnosis"),
    "RiskInfo": ("mllm_audit.explainers.results", "RiskInfo"),
    "MethodInfo": ("mllm_audit.explainers.results", "MethodInfo"),
    "Region": ("mllm_audit.explainers.results", "Region"),
    "Stats": ("mllm_audit.explainers.results", "Stats"),
    "Summary": ("mllm_audit.explainers.results", "Summary"),
    "Target": ("mllm_audit.explainers.results", "Target"),
    "TokenResult": ("mllm_audit.explainers.results", "TokenResult"),
    "Explainer": ("mllm_audit.explainers.methods", "Explainer"),
    "register": ("mllm_audit.explainers.methods", "register"),
    "METHODS": ("mllm_audit.explainers.methods", "METHODS"),
    "WHITE_BOX": ("mllm_audit.explainers.methods", "WHITE_BOX"),
    "load_model": ("mllm_audit.models.loading", "load_model"),
    "load_scorer": ("mllm_audit.models.backends", "load_scorer"),
    "REFERENCE_MODEL": ("mllm_audit.models.loading", "REFERENCE_MODEL_DIR"),
    "serialize": ("mllm_audit.service.serialize", "audit_body"),
    # the HTTP client: no torch behind it
    "AuditClient": ("mllm_audit.service.client", "AuditClient"),
    "AsyncAuditClient": ("mllm_audit.service.client", "AsyncAuditClient"),
    "AuditError": ("mllm_audit.service.client", "AuditError"),
}

__all__ = [
    "METHODS",
    "REFERENCE_MODEL",
    "WHITE_BOX",
    "AsyncAuditClient",
    "Attribution",
    "AuditClient",
    "AuditError",
    "AuditInputError",
    "AuditRequest",
    "AuditResult",
    "Auditor",
    "ClaimResult",
    "ContextToken",
    "Diagnosis",
    "Explainer",
    "MethodInfo",
    "Region",
    "RiskInfo",
    "Stats",
    "Summary",
    "Target",
    "TokenRange",
    "TokenResult",
    "load_model",
    "load_scorer",
    "register",
    "serialize",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mllm_audit' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
