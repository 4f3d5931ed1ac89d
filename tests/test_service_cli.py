"""`mllm-audit explain` and `reliance` run one audit in-process and print the JSON; `openapi`
prints the contract; `env` lists the settings. Run as `python -m mllm_audit.service.cli`, like the console
script `mllm-audit` (pyproject's [project.scripts]) does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mllm_audit.models.reference import world
from mllm_audit.service.config import ENV_VARS
from mllm_audit.service.openapi import contract
from mllm_audit.service.schemas import ExplainResponse, RelianceResponse
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "mllm_audit.service.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_explain_prints_json_and_writes_an_overlay(tmp_path):
    scene = world.render_scene(np.random.default_rng(70_001))
    obj = scene.objects[0]
    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    overlay = tmp_path / "overlay.png"
    result = cli(
        "explain",
        "--image",
        str(image),
        "--prompt",
        f"What color is the {obj.shape}?",
        "--answer",
        obj.colour,
        "--regions",
        "8",
        "--budget",
        "60",
        "--overlay",
        str(overlay),
        "--device",
        "cpu",
        "--cpu-threads",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    body = ExplainResponse.model_validate(json.loads(result.stdout))
    assert body.model.id == "mllm-audit-reference" and body.attributions[0].target.text == obj.colour
    assert body.stats.forward_passes <= 60
    with Image.open(overlay) as img:
        assert img.width > 96 and img.height > 96 and img.mode == "RGB"  # enlarged, with a colour bar and caption


def test_reliance_errors_and_the_contract_commands(tmp_path):
    scene = world.render_scene(np.random.default_rng(70_002))
    image = tmp_path / "scene.jpg"
    Image.fromarray(scene.image).save(image, quality=95)
    result = cli(
        "reliance",
        "--image",
        str(image),
        "--prompt",
        "Describe the image.",
        "--answer",
        "a red circle.",
        "--output",
        str(tmp_path / "out.json"),
        "--cpu-threads",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with_torch = RelianceResponse.model_validate_json((tmp_path / "out.json").read_text())
    assert with_torch.stats.forward_passes == 2
    # the same audit on the onnx backend, through the same worker code
    result = cli(
        "reliance",
        "--image",
        str(image),
        "--prompt",
        "Describe the image.",
        "--answer",
        "a red circle.",
        "--backend",
        "onnx",
        "--cpu-threads",
        "1",
        "--log-level",
        "info",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with_onnx = RelianceResponse.model_validate_json(result.stdout)
    for a, b in zip(with_onnx.tokens, with_torch.tokens):
        assert (a.text, a.risk_label) == (b.text, b.risk_label) and abs(a.p_full - b.p_full) < 1e-4
    assert '"onnx_providers": ["CPUExecutionProvider"]' in result.stderr + result.stdout

    (tmp_path / "text.png").write_bytes(b"not an image")
    bad = cli("reliance", "--image", str(tmp_path / "text.png"), "--prompt", "p", "--answer", "a")
    assert bad.returncode == 1 and "415" in bad.stderr
    # a region count over the limit is refused as a request's would be, not silently capped
    over = cli(
        "explain",
        "--image",
        str(image),
        "--prompt",
        "p",
        "--answer",
        "a",
        "--regions",
        "9",
        "--max-regions",
        "8",
        "--cpu-threads",
        "1",
    )
    assert over.returncode == 1 and "422" in over.stderr and "regions" in over.stderr
    # a bad model directory is one line naming it, not a traceback
    missing = cli(
        "reliance", "--image", str(image), "--prompt", "p", "--answer", "a", "--model", str(tmp_path / "nope")
    )
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr and "Traceback" not in missing.stderr

    assert yaml.safe_load(cli("openapi").stdout) == contract()
    listed = cli("env").stdout  # the command runs and lists every setting
    assert all(name in listed for name in ENV_VARS)
