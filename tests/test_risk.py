"""Claim-level risk: claims grouped from an answer, the calibration file (fit, save, load, refuse),
the service refusing a bad file before its workers start, and `calibrate` on a labelled file
that `mllm_audit.models.reference.labelled` writes.

Each test carries its own kind: the file mixes unit, integration and e2e tests."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mllm_audit.explainers import calibration
from mllm_audit.explainers.calibration import CalibrationError, fit_model
from mllm_audit.explainers.claims import group_claims
from mllm_audit.models.loading import REFERENCE_MODEL_ID
from mllm_audit.service.calibrate import computable_signals, match_claims, parse_case, risk_block, split_cases

REPO = Path(__file__).resolve().parents[1]


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def kinds_and_texts(answer: str, spans=None) -> list[tuple[str, str]]:
    return [(c.kind, c.text) for c in group_claims(answer, spans or word_spans(answer))]


# ------------------------------------------------------------------------------ claims


@pytest.mark.unit
def test_attributes_bind_to_their_objects():
    assert kinds_and_texts("a red circle and a blue square.") == [("object", "red circle"), ("object", "blue square")]
    assert kinds_and_texts("a red circle, a green cross and a blue square.") == [
        ("object", "red circle"),
        ("object", "green cross"),
        ("object", "blue square"),
    ]


@pytest.mark.unit
def test_counts_yes_no_and_relations():
    assert kinds_and_texts("There are two circles.") == [("count", "two circles")]
    assert kinds_and_texts("3 squares") == [("count", "3 squares")]
    assert kinds_and_texts("Yes, there is a red circle.") == [("existence", "Yes"), ("object", "red circle")]
    assert kinds_and_texts("no") == [("existence", "no")]
    assert kinds_and_texts("No.") == [("existence", "No")]
    # a yes later in the answer is no answer to a yes/no question
    assert ("existence", "yes") not in kinds_and_texts("the sign says yes")
    assert ("relation", "left") in kinds_and_texts("The circle is on the left of the square.")


@pytest.mark.unit
def test_a_word_split_into_tokens_is_one_member_of_its_claim():
    answer = "a purple triangle."
    # tokens: "a", " pur", "ple", " tri", "angle", "."
    spans = [(0, 1), (1, 5), (5, 8), (8, 12), (12, 17), (17, 18)]
    [claim] = group_claims(answer, spans)
    assert (claim.kind, claim.text, claim.start, claim.end) == ("object", "purple triangle", 2, 17)
    assert claim.token_indices == [1, 2, 3, 4]


@pytest.mark.unit
def test_non_english_words_are_read_as_words():
    answer = "Un cercle rouge, un carré bleu."
    # "carré" split inside the word, after its non-ASCII letter's first byte as a byte-level BPE might
    spans = [(0, 2), (2, 9), (9, 15), (15, 16), (16, 19), (19, 23), (23, 25), (25, 30), (30, 31)]
    claims = group_claims(answer, spans)
    assert [c.text for c in claims] == ["Un cercle rouge", "un carré bleu"]  # the articles are not English ones
    assert claims[1].token_indices == [4, 5, 6, 7]
    assert [c.text for c in group_claims("赤い円と青い四角。", [(0, 3), (3, 8), (8, 9)])] == ["赤い円と青い四角"]


# ------------------------------------------------------------------------------ calibration file


def synthetic(n: int = 3000, seed: int = 0):
    """Claims whose confidence and entropy tell hallucinated (1) from correct (0), with noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    rows = [
        {"confidence": float(rng.normal(-0.2 - 1.5 * y, 0.5)), "entropy": float(rng.normal(0.4 + 1.0 * y, 0.4))}
        for y in labels
    ]
    return rows, labels


def saved(tmp_path: Path, models, model_id: str = REFERENCE_MODEL_ID, **fields) -> Path:
    cal = calibration.Calibration(calibration.calibration_id(models, model_id), model_id, "logistic", tuple(models))
    path = tmp_path / "risk_calibration.json"
    path.write_text(json.dumps({**cal.to_json(), **fields}))
    return path


@pytest.mark.unit
def test_calibration_round_trip_and_thresholds(tmp_path):
    rows, labels = synthetic()
    model = fit_model(("confidence", "entropy"), rows, labels, medium_rate=0.05, high_rate=0.01)
    assert model.weights[0] < 0 < model.weights[1]  # less confident, more uncertain: likelier hallucinated
    probs = np.array([model.probability(r) for r in rows])
    correct = probs[labels == 0]
    assert abs((correct >= model.medium).mean() - 0.05) < 0.005
    assert abs((correct >= model.high).mean() - 0.01) < 0.003
    assert calibration.auroc(probs, labels.astype(float)) > 0.95
    # calibrated: the mean probability matches the hallucination rate
    assert abs(probs.mean() - labels.mean()) < 0.01

    path = saved(tmp_path, [model])
    loaded = calibration.load(path, model_id=REFERENCE_MODEL_ID, computable={"confidence", "entropy"})
    [again] = loaded.models
    assert [again.probability(r) for r in rows[:50]] == pytest.approx(probs[:50].tolist(), rel=1e-12)
    assert (again.medium, again.high) == (model.medium, model.high)
    assert loaded.model_for({"confidence", "entropy", "verification"}) == again
    assert loaded.model_for({"confidence"}) is None
    block = risk_block(loaded)
    assert block["calibrated"] and block["models"][0]["signals"] == ["confidence", "entropy"]


@pytest.mark.unit
def test_metrics_on_known_rankings():
    labels = np.array([1, 1, 0, 0, 0], dtype=float)
    assert calibration.auroc(np.array([0.9, 0.8, 0.3, 0.2, 0.1]), labels) == 1.0
    assert calibration.auroc(np.full(5, 0.5), labels) == 0.5
    assert calibration.auprc(np.array([0.9, 0.1, 0.8, 0.2, 0.3]), labels) == pytest.approx((1 + 2 / 5) / 2)
    scores = np.array([0.9, 0.4, 0.5, 0.2, 0.1])
    assert calibration.false_flags_at_recall(scores, labels, recall=0.9) == pytest.approx(1 / 3)
    point = calibration.operating_point(scores, labels, 0.45)
    assert point == {"recall": 0.5, "false_flag_rate": pytest.approx(1 / 3), "precision": 0.5}


def unknown_signal(raw):
    raw["models"][0]["signals"][1] = "vibes"


def other_model(raw):
    raw["model_id"] = "llava-1.5-7b"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("break_it", "computable", "expected"),
    [
        ("not json", None, "not readable JSON"),
        ({"format": "something/1"}, None, "not a calibration file"),
        (other_model, None, "is for model 'llava-1.5-7b'"),
        (unknown_signal, None, "unknown signals ['vibes']"),
        (None, computable_signals("an-unknown-family"), "needs ['grounding']"),
        (lambda raw: raw["models"][0].update(high=0.01, medium=0.5), None, "thresholds"),
        (lambda raw: raw["models"][0].update(scale=[1.0, 0.0, 1.0]), None, "scales positive"),
        (lambda raw: raw["models"][0].pop("weights"), None, "malformed"),
    ],
)
def test_unusable_calibration_files_are_refused_naming_the_file(tmp_path, break_it, computable, expected):
    rows, labels = synthetic(400)
    for r in rows:
        r["grounding"] = r["confidence"] * 0.5
    path = saved(tmp_path, [fit_model(("confidence", "entropy", "grounding"), rows, labels)])
    if break_it == "not json":
        path.write_text("{not json")
    elif isinstance(break_it, dict):
        path.write_text(json.dumps(break_it))
    elif break_it is not None:
        raw = json.loads(path.read_text())
        break_it(raw)
        path.write_text(json.dumps(raw))
    with pytest.raises(CalibrationError) as caught:
        calibration.load(path, model_id=REFERENCE_MODEL_ID, computable=computable)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.unit
def test_computable_signals_follow_the_family():
    assert computable_signals("llava") == {"confidence", "entropy", "grounding", "verification"}
    assert "grounding" not in computable_signals("an-unknown-family")


# ------------------------------------------------------------------------------ the labelled file


@pytest.mark.unit
def test_labelled_lines_parse_and_match_by_overlap(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    answer = "a red circle and a blue square."
    line = {
        "id": "x",
        "image": "a.png",
        "prompt": "Describe the image.",
        "answer": answer,
        "claims": [{"text": "red circle", "hallucinated": False}, {"start": 21, "end": 27, "hallucinated": True}],
    }
    case = parse_case(json.dumps(line), 1, tmp_path, need_labels=True)
    assert [(c.start, c.end, c.hallucinated) for c in case.claims] == [(2, 12, False), (21, 27, True)]
    computed = group_claims(answer, word_spans(answer))
    labels, unmatched = match_claims([*case.claims, type(case.claims[0])(13, 16, True)], computed)
    assert labels == {0: False, 1: True} and [(c.start, c.end) for c in unmatched] == [(13, 16)]
    for broken, message in (
        ({**line, "image": "missing.png"}, "missing.png not found"),
        ({**line, "claims": [{"text": "green cross", "hallucinated": True}]}, "'green cross' not in the answer"),
        ({**line, "claims": [{"start": 5, "end": 99, "hallucinated": True}]}, "inside the answer"),
        ({**line, "claims": [{"start": 2, "end": 5}]}, "hallucinated"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_case(json.dumps(broken), 3, tmp_path, need_labels=True)
    fit, held = split_cases(10, 0.3)
    assert len(held) == 3 and sorted(fit + held) == list(range(10)) and split_cases(10, 0.3) == (fit, held)


@pytest.mark.integration
def test_calibrate_a_small_labelled_file_for_the_auditor(tmp_path, reference_scorer, capsys):
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.models.reference import labelled
    from mllm_audit.service import cli
    from mllm_audit.service.calibrate import calibrate
    from PIL import Image

    data = tmp_path / "data"
    assert labelled.main(["--out", str(data), "--captions", "4", "--existence", "4", "--seed", "80000"]) == 0
    lines = (data / labelled.FILE_NAME).read_text().splitlines()
    cases = [json.loads(line) for line in lines]
    assert {c["kind"] for c in cases} == {"caption", "existence"} and all((data / c["image"]).is_file() for c in cases)
    # the pipeline is under test, not the model (which seldom errs on 8 cases): both classes in every split
    for i, c in enumerate(cases):
        c["claims"][0]["hallucinated"] = i % 2 == 0
    bad = ["{not json", json.dumps({**cases[0], "image": "images/none.png"})]
    (data / labelled.FILE_NAME).write_text("\n".join([json.dumps(c) for c in cases] + bad) + "\n")

    out = tmp_path / "risk_calibration.json"
    argv = ["calibrate", "--labelled", str(data / labelled.FILE_NAME), "--out", str(out), "--holdout", "0.25"]
    args = cli.build_parser().parse_args([*argv, "--bootstrap", "20", "--device", "cpu"])
    assert calibrate(args, cli._settings(args, cli.CALIBRATE_FLAGS)) == 0
    printed = capsys.readouterr()
    assert f"line {len(cases) + 1}: not JSON" in printed.err and f"line {len(cases) + 2}: image" in printed.err
    assert "8/8 cases" in printed.err and "AUROC" in printed.out

    loaded = calibration.load(out, model_id=REFERENCE_MODEL_ID, computable=computable_signals("llava"))
    pooled = [m.signals for m in loaded.models if not m.kinds]  # too few cases for a model per kind of claim
    assert pooled == [
        ("confidence", "entropy", "grounding"),
        ("confidence", "entropy", "grounding", "verification"),
        ("confidence", "entropy"),
        ("confidence", "entropy", "verification"),
    ]
    assert all("fit_claims" in m.measured for m in loaded.models)
    auditor = Auditor(reference_scorer, calibration=loaded)
    image = np.asarray(Image.open(data / cases[0]["image"]).convert("RGB"))
    result = auditor.explain(image, cases[0]["prompt"], cases[0]["answer"], with_attributions=False, verify=True)
    assert result.risk.calibration == loaded.id and result.risk.calibrated
    assert "verification" in result.risk.signals
    assert all(c.risk_label in ("low", "medium", "high") for c in result.claims)

    (data / "bad.jsonl").write_text("{not json\n")
    args = cli.build_parser().parse_args(["calibrate", "--labelled", str(data / "bad.jsonl"), "--out", str(out)])
    assert calibrate(args, cli._settings(args, cli.CALIBRATE_FLAGS)) == 2


# ------------------------------------------------------------------------------ the service


@pytest.mark.unit
def test_claims_are_counted_with_their_summed_risk():
    from mllm_audit.service import metrics
    from mllm_audit.service.api import AuditAPI, Envelope
    from mllm_audit.service.config import Settings
    from prometheus_client import REGISTRY

    if metrics.multiprocess_dir():
        pytest.skip("counts of this process only without a multiprocess directory")

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("mllm_audit_claims_total", risk_label="high"), value("mllm_audit_claim_risk_sum")
    body = {
        "stats": {"compute_ms": 1.0},
        "tokens": [],
        "summary": {"risk_label": "high"},
        "claims": [{"risk_label": "high", "risk_score": 0.75}, {"risk_label": "low", "risk_score": 0.05}],
    }
    AuditAPI(Settings())._count(body, Envelope("reliance", "r", 0.0, 1.0, {}))
    assert value("mllm_audit_claims_total", risk_label="high") == before[0] + 1
    assert value("mllm_audit_claim_risk_sum") == pytest.approx(before[1] + 0.8)


@pytest.mark.unit
def test_the_shipped_calibration_is_served_and_shown_by_info(tmp_path):
    from mllm_audit.models.loading import REFERENCE_MODEL_DIR
    from mllm_audit.service.calibrate import CALIBRATION_FILE, service_calibration
    from mllm_audit.service.config import Settings
    from mllm_audit.service.schemas import InfoResponse
    from mllm_audit.service.server import build_server

    shipped = service_calibration(Settings(), REFERENCE_MODEL_ID, "llava")
    assert shipped is not None and shipped.kind == "logistic"
    assert shipped.id == calibration.load(REFERENCE_MODEL_DIR / CALIBRATION_FILE).id
    pooled = {m.signals for m in shipped.models if not m.kinds}
    assert ("confidence", "entropy") in pooled  # every claim has a model, grounded or not
    assert ("confidence", "entropy", "grounding", "verification") in pooled
    assert {k for m in shipped.models for k in m.kinds} == {"existence", "object", "count", "relation"}
    assert all(m.measured["auroc"]["value"] > 0.5 for m in shipped.models)
    info = InfoResponse.model_validate(build_server(Settings()).info())
    assert info.risk.calibration == shipped.id and info.risk.calibrated
    assert len(info.risk.models) == len(shipped.models)
    off = InfoResponse.model_validate(build_server(Settings(risk_calibration="none")).info())
    assert off.risk.calibration is None and not off.risk.calibrated and off.risk.models == []
    missing = tmp_path / "nothing.json"
    with pytest.raises(CalibrationError, match=re.escape(f"{missing}: no such file")):
        build_server(Settings(risk_calibration=str(missing)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_the_service_refuses_to_start_with_a_bad_calibration(tmp_path):
    """A file for another model id: the check needs the served model's id, read off its directory.
    (Every other problem of a file takes the same path: see the load tests above.)"""
    rows, labels = synthetic(400)
    path = saved(tmp_path, [fit_model(("confidence", "entropy"), rows, labels)], model_id="another")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLLM_AUDIT_RISK_CALIBRATION": str(path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "mllm_audit.service.cli", "serve", "--port", str(free_port()), "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # it must fail before any worker loads the model
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and f"not the served '{REFERENCE_MODEL_ID}'" in lines[0]


@pytest.mark.unit
def test_a_model_of_the_claims_kind_is_preferred():
    rows = [{"confidence": float(x), "entropy": float(x) / 2} for x in np.linspace(-2, 0, 40)]
    labels = [int(r["confidence"] < -1.5) for r in rows]
    pooled = calibration.fit_model(("confidence", "entropy"), rows, labels)
    existence = calibration.fit_model(("confidence", "entropy"), rows, labels, kinds=("existence",))
    verified = calibration.fit_model(
        ("confidence", "entropy", "verification"), [{**r, "verification": 1.0} for r in rows], labels
    )
    cal = calibration.Calibration("c", "m", "logistic", (pooled, existence, verified))
    assert cal.model_for({"confidence", "entropy"}, "existence") is existence
    assert cal.model_for({"confidence", "entropy"}, "object") is pooled
    assert cal.model_for({"confidence", "entropy", "verification"}, "existence") is verified  # more signals first
