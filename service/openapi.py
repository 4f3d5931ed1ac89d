"""The OpenAPI document the service serves, as YAML: `python -m mllm_audit.service.openapi > openapi.yaml`.

openapi.yaml at the repository root is the contract; tests/test_service_units.py fails when
it differs from what the app generates, and tests/test_service_e2e.py when it differs from
what a running server serves at /openapi.json. The document does not depend on the settings
or the model (no weights are loaded to build it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "openapi.yaml"


def document() -> dict[str, Any]:
    from mllm_audit.service.config import Settings
    from mllm_audit.service.server import build_server

    return build_server(Settings(), check_model=False).app.openapi()


def document_yaml() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


def contract() -> dict[str, Any]:
    return yaml.safe_load(CONTRACT.read_text())


if __name__ == "__main__":
    sys.stdout.write(document_yaml())
