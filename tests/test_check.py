"""`mllm-audit check`: the shipped suite passes on the bundled model and writes JUnit XML a JUnit
parser reads; the negative control (the same suite, the vision tower zeroed) fails with exit 1
naming what broke; a bad suite or an unreachable service is exit 2 before any request."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml
from mllm_audit.service import cli
from mllm_audit.service.suite import Check, Report, junit_xml

from tests.server_process import free_port

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "examples" / "suite.yaml"


@pytest.mark.e2e
def test_the_example_suite_passes_on_the_bundled_model(tmp_path):
    junit, report = tmp_path / "check.xml", tmp_path / "check.json"
    run = subprocess.run(
        [sys.executable, "-m", "mllm_audit.service.cli", "check", str(SUITE), "--model", "models/reference/weights"]
        + ["--junit", str(junit), "--json", str(report), "--log-level", "warning"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    xml = JUnitXml.fromfile(str(junit))
    assert xml.tests >= 10 and xml.failures == 0 and xml.errors == 0
    names = {case.name for suite in xml for case in suite}
    assert "word 'red' attribution peak in box [0, 0, 48, 48]" in names
    data = json.loads(report.read_text())
    assert data["passed"] and data["model"]["id"] == "mllm-audit-reference"
    assert "co-occurrence-bias" in run.stdout and "FAIL" not in run.stdout


@pytest.fixture(scope="module")
def zeroed_vision_tower(tmp_path_factory):
    """The reference model with every vision tower weight zeroed: it cannot see the image."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("zeroed") / "weights"
    shutil.copytree(REPO / "models" / "reference" / "weights", out)
    weights = load_file(out / "model.safetensors")
    save_file(
        {k: v.zero_() if k.startswith("vision_tower.") else v for k, v in weights.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    return out


@pytest.mark.integration
def test_negative_control_the_suite_fails_on_a_blind_model(zeroed_vision_tower, tmp_path, capsys):
    junit = tmp_path / "check.xml"
    # --model-id: the shipped calibration is the reference model's; the blind copy keeps using it
    status = cli.main(
        ["check", str(SUITE), "--model", str(zeroed_vision_tower), "--model-id", "mllm-audit-reference"]
        + ["--junit", str(junit), "--log-level", "warning"]
    )
    err = capsys.readouterr().err
    assert status == 1, err
    assert "case colour-of-the-circle: expected word 'red' visual reliance at least" in err
    assert "case co-occurrence-bias: expected claim 'blue square' risk at least high" in err
    assert "case two-objects: expected word 'green' attribution peak in box" in err
    failed = {
        (case.classname, case.name)
        for suite in JUnitXml.fromfile(str(junit))
        for case in suite
        if any(isinstance(r, Failure) for r in case.result)
    }
    assert ("reference-model.where-is-the-cross", "word 'left' visual reliance at least 0.5") in failed
    assert len(failed) >= 4


BAD_SUITES = {
    "unknown key": (
        "cases:\n  - id: a\n    image: images/red-circle.png\n    prompt: p\n    answer: red\n"
        "    expect:\n      - answer_risk_at_most: low\n        colour: red\n",
        "line 8",
    ),
    "wrong type": (
        "cases:\n  - id: a\n    image: images/red-circle.png\n    prompt: p\n    answer: red\n"
        "    expect:\n      - word: red\n        reliance_at_least: high\n",
        "line 8",
    ),
    "unknown expectation": (
        "cases:\n  - id: a\n    image: images/red-circle.png\n    prompt: p\n    answer: red\n"
        "    expect:\n      - risk_below: low\n",
        "line 7",
    ),
    "missing image": (
        "cases:\n  - id: a\n    image: images/nope.png\n    prompt: p\n    answer: red\n"
        "    expect:\n      - answer_risk_at_most: low\n",
        "images/nope.png not found",
    ),
    "word not in the answer": (
        "cases:\n  - id: a\n    image: images/red-circle.png\n    prompt: p\n    answer: red\n"
        "    expect:\n      - word: blue\n        reliance_at_least: 0.5\n",
        "'blue' is not in",
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", BAD_SUITES)
def test_a_bad_suite_is_exit_2_naming_the_line_before_any_request(name, tmp_path, capsys):
    text, named = BAD_SUITES[name]
    shutil.copytree(REPO / "examples" / "images", tmp_path / "images")
    (tmp_path / "suite.yaml").write_text(text)
    # nothing listens on the port: a request would be a connection error, not this message
    status = cli.main(["check", str(tmp_path / "suite.yaml"), "--url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert status == 2 and "bad suite" in err and named in err, err


@pytest.mark.unit
def test_an_unreachable_service_is_exit_2(capsys):
    status = cli.main(["check", str(SUITE), "--url", f"http://127.0.0.1:{free_port()}", "--retries", "1"])
    err = capsys.readouterr().err
    assert status == 2 and "cannot run" in err and "ConnectError" in err


@pytest.mark.unit
def test_a_missing_model_is_exit_2(tmp_path, capsys):
    status = cli.main(["check", str(SUITE), "--model", str(tmp_path / "no-model")])
    assert status == 2, capsys.readouterr().err


@pytest.mark.unit
def test_junit_xml_counts_failures_and_errors(tmp_path):
    report = Report("s", {"id": "m"})
    report.checks = [
        Check("a", "ok one", passed=True, measured="0.9"),
        Check("a", "broken", passed=False, measured="0.1", message="case a: expected broken"),
        Check("gates", "rate", error="gates: could not run"),
    ]
    path = tmp_path / "r.xml"
    path.write_bytes(junit_xml(report))
    xml = JUnitXml.fromfile(str(path))
    assert (xml.tests, xml.failures, xml.errors) == (3, 1, 1)
    results = {case.name: case.result for suite in xml for case in suite}
    assert results["ok one"] == [] and isinstance(results["broken"][0], Failure)
    assert isinstance(results["rate"][0], Error) and report.exit_code == 2
