"""`mllm-audit audit` and the typed client against one real server (module-scoped), and in-process
over 200 generated captions: errors recorded per case, resume after a kill, a save_to_disk data
set, the summary's rate interval against the measured CHAIR rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mllm_audit.service import cli
from mllm_audit.service.client import AuditClient, AuditError
from mllm_audit.service.report import write_report
from mllm_audit.service.results_file import audited_ids

from tests.server_process import ServerProcess

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "images"
GOOD = [
    ("red-circle.png", "What color is the circle?", "red"),
    ("red-circle.png", "Describe the image.", "a red circle and a blue square."),
    ("red-circle-green-triangle.png", "Describe the image.", "a red circle and a green triangle."),
    ("three-shapes.png", "Where is the green cross?", "left"),
]


@pytest.fixture(scope="module")
def server():
    env = {"MLLM_AUDIT_LOG_LEVEL": "warning", "MLLM_AUDIT_MAX_BATCH_SIZE": "8", "MLLM_AUDIT_WORKERS": "1"}
    with ServerProcess(env) as running:
        yield running


def write_cases(path: Path, n: int, extra_lines: list[str] = ()) -> list[str]:
    """n good cases (the example images, absolute paths) plus the given raw lines; their ids."""
    ids = []
    with path.open("w") as fh:
        for i in range(n):
            image, prompt, answer = GOOD[i % len(GOOD)]
            ids.append(f"case-{i}")
            labels = [{"text": "blue square", "hallucinated": True}] if "blue" in answer else None
            line = {"id": ids[-1], "image": str(IMAGES / image), "prompt": prompt, "answer": answer}
            fh.write(json.dumps(line | ({"claims": labels} if labels else {})) + "\n")
        for text in extra_lines:
            fh.write(text + "\n")
    return ids


def audit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mllm_audit.service.cli", "audit", *args, "--log-level", "warning"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.e2e
def test_the_client_gets_typed_answers_from_the_service(server):
    with AuditClient(server.url) as client:
        info = client.info()
        result = client.reliance(image=IMAGES / "red-circle.png", prompt=GOOD[1][1], answer=GOOD[1][2])
        explained = client.explain(
            image=str(IMAGES / "red-circle.png"),
            prompt=GOOD[0][1],
            answer="red",
            regions=8,
            heatmap={"encoding": "none"},
        )
        with pytest.raises(AuditError) as refused:
            client.reliance(image="bm90IGFuIGltYWdl", prompt="p", answer="a")  # base64 of "not an image"
    assert info.model.id == "mllm-audit-reference"
    square = next(c for c in result.claims if c.text == "blue square")
    assert square.risk_label == "high" and result.summary.flagged_claims == 1
    assert explained.attributions[0].regions and explained.attributions[0].target.text == "red"
    assert 400 <= refused.value.status < 500 and refused.value.detail


@pytest.mark.e2e
def test_audit_records_bad_cases_and_goes_on(server, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a PNG")
    refused = json.dumps({"id": "refused", "image": str(tmp_path / "broken.png"), "prompt": "p", "answer": "a"})
    missing = json.dumps({"id": "missing", "image": "nope.png", "prompt": "p", "answer": "a"})
    ids = write_cases(tmp_path / "cases.jsonl", 8, ['{"id": "malformed", "image": ', missing, refused])
    out, html, summary = tmp_path / "results.jsonl", tmp_path / "report.html", tmp_path / "summary.json"
    run = audit(
        str(tmp_path / "cases.jsonl"),
        "--out",
        str(out),
        "--url",
        server.url,
        "--concurrency",
        "4",
        "--html",
        str(html),
        "--summary",
        str(summary),
    )
    assert run.returncode == 1, run.stderr  # some cases have errors
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {*ids, "missing", "refused", "cases:9"}  # the malformed line: file stem and line
    assert (
        records["missing"]["error"]["stage"] == "input"
        and "nope.png not found" in records["missing"]["error"]["detail"]
    )
    assert records["refused"]["error"]["stage"] == "request" and 400 <= records["refused"]["error"]["status"] < 500
    assert "not JSON" in records["cases:9"]["error"]["detail"]
    assert all(records[i]["status"] == "ok" for i in ids)
    data = json.loads(summary.read_text())
    assert (data["cases"], data["audited"], data["errors"]) == (11, 8, 3)
    assert data["claims_by_label"]["high"] == 2 and data["most_flagged_claims"][0]["text"] == "blue square"
    assert data["labels"]["high"]["recall"] == 1.0  # both labelled blue squares are flagged high
    assert "estimated hallucination rate" in run.stdout and "audit [" in run.stderr and "ETA" in run.stderr
    page = html.read_text()
    assert page.count('"image":"data:image/png;base64,') == 8 and "nope.png not found" in page
    assert "window.MLLMRender" in page and "viewer.css" not in page and "<script src" not in page  # all inlined
    assert "the 8 riskiest of 8 audited cases and 3 of 3 errors" in page
    # a large run's page is capped, and says so; `mllm-audit report` reads the results file as well
    write_report(out, tmp_path / "capped.html", data, max_cases=2)
    capped = (tmp_path / "capped.html").read_text()
    assert (
        capped.count('"image":"data:image/png;base64,') == 2
        and "the 2 riskiest of 8 audited cases and 2 of 3" in capped
    )
    assert cli.main(["report", str(out), "--html", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text().count('"image":"data:image/png;base64,') == 8
    # the same --out again without --resume: refused, the file untouched
    before = out.read_bytes()
    again = audit(str(tmp_path / "cases.jsonl"), "--out", str(out), "--url", server.url)
    assert again.returncode == 2 and "--resume" in again.stderr and out.read_bytes() == before


@pytest.mark.e2e
def test_an_interrupted_audit_resumed_has_one_line_per_case(server, tmp_path):
    ids = write_cases(tmp_path / "cases.jsonl", 24)
    out = tmp_path / "results.jsonl"
    args = [sys.executable, "-m", "mllm_audit.service.cli", "audit", str(tmp_path / "cases.jsonl"), "--out", str(out)]
    proc = subprocess.Popen(
        args + ["--url", server.url, "--concurrency", "1", "--quiet"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = out.read_text().count("\n")
    assert 3 <= done_before < len(ids)
    with out.open("a") as fh:  # a case that failed (tried again), then what a crash mid-write leaves
        fh.write('{"id": "case-22", "status": "error", "error": {"stage": "request", "status": 503}}\n')
        fh.write('{"id": "case-23", "status": "ok", "cla')
    run = audit(str(tmp_path / "cases.jsonl"), "--out", str(out), "--url", server.url, "--resume")
    assert run.returncode == 0, run.stderr
    lines = out.read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)
    assert Counter(json.loads(line)["status"] for line in lines) == {"ok": 24}


@pytest.mark.e2e
def test_audit_reads_a_save_to_disk_data_set(server, tmp_path):
    import datasets
    from PIL import Image

    rows = {
        "picture": [Image.open(IMAGES / image).convert("RGB") for image, _, _ in GOOD],
        "question": [prompt for _, prompt, _ in GOOD],
        "response": [answer for _, _, answer in GOOD],
        "id": [f"row-{i}" for i in range(len(GOOD))],
    }
    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "question": datasets.Value("string"),
            "response": datasets.Value("string"),
            "id": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "results.jsonl"
    run = audit(
        str(tmp_path / "ds"),
        "--out",
        str(out),
        "--url",
        server.url,
        "--image-column",
        "picture",
        "--prompt-column",
        "question",
        "--answer-column",
        "response",
    )
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"row-{i}" for i in range(4)]
    by_id = {r["id"]: r for r in records}
    assert by_id["row-1"]["answer"] == GOOD[1][2]
    assert [c["risk_label"] for c in by_id["row-1"]["claims"]] == ["low", "high"]  # the same audit as from a file


@pytest.mark.unit
def test_out_that_exists_is_refused_without_resume(tmp_path, capsys):
    write_cases(tmp_path / "cases.jsonl", 1)
    (tmp_path / "results.jsonl").write_text("keep me\n")
    status = cli.main(["audit", str(tmp_path / "cases.jsonl"), "--out", str(tmp_path / "results.jsonl")])
    assert status == 2 and "--resume" in capsys.readouterr().err
    assert (tmp_path / "results.jsonl").read_text() == "keep me\n"


@pytest.mark.integration
def test_the_rate_interval_contains_the_measured_chair_rate(reference, tmp_path, capsys):
    """200 held-out captions answered by the reference model, audited in-process: the estimated
    hallucination rate's 95 % interval contains CHAIR_i measured against the scenes' truth."""
    from mllm_audit.models.reference import world
    from mllm_audit.models.reference.evaluate import caption_scores, generate_answers, held_out_samples
    from PIL import Image

    samples = held_out_samples("caption", 200, seed=81_000)
    answers = generate_answers(reference, samples)
    chair_i = caption_scores(samples, answers)["chair_i"]
    (tmp_path / "images").mkdir()
    with (tmp_path / "captions.jsonl").open("w") as fh:
        for i, (sample, answer) in enumerate(zip(samples, answers)):
            Image.fromarray(sample.scene.image).save(tmp_path / "images" / f"{i}.png")
            fh.write(json.dumps({"id": str(i), "image": f"images/{i}.png", "prompt": sample.prompt, "answer": answer}))
            fh.write("\n")
    assert world.QUESTION_KINDS and 0 < chair_i < 0.2
    status = cli.main(
        [
            "audit",
            str(tmp_path / "captions.jsonl"),
            "--out",
            str(tmp_path / "r.jsonl"),
            "--summary",
            str(tmp_path / "s.json"),
            "--concurrency",
            "16",
            "--quiet",
            "--log-level",
            "warning",
        ]
    )
    assert status == 0, capsys.readouterr().err
    rate = json.loads((tmp_path / "s.json").read_text())["hallucination_rate"]
    low, high = rate["ci95"]
    assert low <= chair_i <= high, (rate, chair_i)
    assert high - low < 0.1  # an interval that says something


@pytest.mark.unit
def test_resuming_drops_error_lines_and_a_cut_short_last_line(tmp_path):
    out = tmp_path / "results.jsonl"
    a, c = '{"id": "a", "status": "ok"}\n', '{"id": "c", "status": "ok"}\n'
    out.write_text(a + '{"id": "b", "status": "error", "error": {}}\n' + c + '{"id": "d"')
    assert audited_ids(out) == {"a", "c"}
    assert out.read_text() == a + c
    assert audited_ids(out) == {"a", "c"} and not list(tmp_path.glob("*.resume"))
