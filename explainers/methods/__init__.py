"""Attribution methods: one module per family of methods, each registering its explainers.

Adding a method is adding a module here that calls `register(...)`; every module of this
package is imported below, in name order, so the registry (and the API's method list) is
complete once this package is imported.
"""

from __future__ import annotations

import importlib
import pkgutil

from mllm_audit.explainers.methods.base import Explainer, MethodResult, Plan, PlanContext, register, registered

__all__ = ["METHODS", "WHITE_BOX", "Explainer", "MethodResult", "Plan", "PlanContext", "get", "register", "registered"]

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

METHODS: tuple[str, ...] = tuple(registered())
WHITE_BOX: tuple[str, ...] = tuple(name for name, e in registered().items() if e.white_box)


def get(name: str) -> Explainer:
    try:
        return registered()[name]
    except KeyError:
        from mllm_audit.explainers.request import AuditInputError

        raise AuditInputError(f"unknown method {name!r}; use one of {', '.join(METHODS)}") from None
