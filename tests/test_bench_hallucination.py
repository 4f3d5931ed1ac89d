"""bench.hallucination end to end on a handful of answers: it runs and its tables have every row."""

from __future__ import annotations

import json

import pytest
from mllm_audit.explainers.calibration import Calibration, fit_model

from bench import hallucination

pytestmark = pytest.mark.integration


def calibration_file(tmp_path, signal_sets):
    """A calibration over the given signal sets, fitted on made-up rows (the bench only applies it)."""
    rows = [
        {"confidence": -0.1 * i, "entropy": 0.05 * i, "grounding": -0.2 * i, "verification": 3.0 - 0.5 * i}
        for i in range(12)
    ]
    labels = [int(i >= 9) for i in range(12)]
    models = tuple(fit_model(signals, rows, labels) for signals in signal_sets)
    path = tmp_path / "calibration.json"
    Calibration("test", "mllm-audit-reference", "logistic", models).save(path)
    return path


def test_tables_have_every_row(tmp_path):
    sets = [tuple(sorted(allowed)) for allowed, _ in hallucination.SETTINGS.values()]
    path = calibration_file(tmp_path, sets)
    out = tmp_path / "bench.json"
    report = hallucination.main(
        ["--n-captions", "6", "--n-existence", "3", "--n-count", "3", "--bootstrap", "10", "--check", "1"]
        + ["--calibration", str(path), "--json", str(out)]
    )
    table = report["table"]
    for name in ("caption objects", "caption: binding", "caption: co-occurrence", "caption: other"):
        assert f"| {name} |" in table
    for kind in ("all negatives", "random", "popular", "adversarial"):
        assert f'| existence "yes": {kind} |' in table
    assert "| count answers |" in table
    for setting in hallucination.SETTINGS:
        assert f"| {setting} (" in table  # the ranking table names each setting's model
        assert f"| {setting} | " in table  # the thresholds and the forward-passes tables
    assert report["fitted_by_bench"] == []  # the file has a model for every setting
    assert report["service_risk_gap"] < 1e-4  # the bench scores claims as the auditor does (signals rounded)
    check = report["agreement"]
    assert check["max_signal_gap_tam"] < 1e-6 and check["max_risk_gap_tam"] < 1e-6
    assert report["forward_passes"]["caption"]["plain"] == 2
    saved = json.loads(out.read_text())
    assert set(saved["slices"]) == set(report["slices"])
    assert len(report["counts"]["existence_questions"]) == 4  # positives and three kinds of negatives
