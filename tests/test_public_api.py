"""The public Python API: every method's result serialises to a body the response models accept,
and the registry is the only list of methods (the documented example script: tests/test_examples.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from mllm_audit.service.schemas import ExplainRequest, ExplainResponse, RelianceResponse
from PIL import Image

import mllm_audit
from mllm_audit import METHODS, WHITE_BOX, AuditInputError, Auditor, serialize
from tests.conftest import held_out_sample

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auditor(reference_scorer):
    return Auditor(reference_scorer, forward_batch_size=48)


def envelope(body: dict, batch_size: int = 1) -> dict:
    """What the service adds around the auditor's fields."""
    stats = {**body["stats"], "batch_size": batch_size, "queue_ms": 0.0}
    return {"request_id": "r", "model": {"id": "m", "family": "llava"}, **body, "stats": stats}


def test_every_name_in_all_is_importable():
    for name in mllm_audit.__all__:
        assert getattr(mllm_audit, name) is not None, name
    with pytest.raises(AttributeError):
        mllm_audit.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("method", METHODS)
def test_each_method_serialises_to_the_response_model(auditor, method):
    s = held_out_sample("colour", 41)
    result = auditor.explain(s.scene.image, s.prompt, s.truth, method=method, regions=8, targets="tokens")
    assert result.method.name == method
    for encoding in ("array", "png", "none"):
        body = serialize(result, encoding, (40, 30))
        ExplainResponse.model_validate(envelope(body))
        heatmap = body["attributions"][0]["heatmap"]
        assert heatmap is None if encoding == "none" else (heatmap["width"], heatmap["height"]) == (40, 30)
    att = result.attributions[0]
    heat = att.heatmap()
    assert heat.shape == s.scene.image.shape[:2] and 0 <= heat.min() <= heat.max() <= 1
    assert (len(att.regions) > 0) == (method not in WHITE_BOX)
    for region in att.regions[:3]:
        ys, xs = np.nonzero(att.region_mask(region))
        assert region.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert att.overlay(Image.fromarray(s.scene.image)).size == (96, 96)


def test_reliance_is_the_cheap_path(auditor):
    s = held_out_sample("colour", 42)
    result = auditor.reliance(Image.fromarray(s.scene.image), s.prompt, s.truth)
    assert result.attributions is None and result.stats.forward_passes == 2
    RelianceResponse.model_validate(envelope(serialize(result)))
    with pytest.raises(AuditInputError, match="unknown method"):
        auditor.explain(s.scene.image, s.prompt, s.truth, method="gradcam")


def test_the_request_schema_lists_the_registry():
    assert ExplainRequest.model_json_schema()["properties"]["method"]["enum"] == list(METHODS)


def _string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)]


def test_a_method_name_is_written_once_in_the_code():
    """The registry is the only list: each name is a literal in its method's module alone
    (the request's default method aside)."""
    sources = [p for folder in ("service", "explainers", "models", "mllm_audit") for p in (REPO / folder).rglob("*.py")]
    for name in METHODS:
        places = [p.relative_to(REPO).as_posix() for p in sources for c in _string_constants(p) if c == name]
        owner = [p for p in places if p.startswith("explainers/methods/")]
        assert len(owner) == 1, (name, places)
        assert set(places) - set(owner) <= {"explainers/request.py"}, (name, places)
