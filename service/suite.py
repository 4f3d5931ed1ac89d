"""`mllm-audit check`: run a suite of expectations against a model, for gating a release in CI.

    mllm-audit check SUITE.yaml [--url URL | --model DIR] [--junit report.xml] [--json report.json]

Each case of the suite (docs/ci.md) is one image, prompt and answer with expectations about its
audit: the answer's risk label at most X, a claim's risk at most (or at least) X, a word's visual
reliance at least X, a word's attribution peaking inside a box or on a mask. Suite-level gates:
no more than N high-risk claims over the cases, and an estimated hallucination rate at most X
over a data set. A case is one /v1/reliance request, or one /v1/explain request when it has
attribution expectations.

Prints a table, writes JUnit XML (one test case per expectation: CI systems show it natively)
and JSON. Exit status: 0 every expectation holds, 1 one failed (the message names the case and
the expectation), 2 the check could not run (bad suite, service unreachable, model missing, a
request refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mllm_audit.service.audit_backend import add_backend_arguments, make_backend, run_all
from mllm_audit.service.client import AuditError
from mllm_audit.service.suite_model import (
    RANK,
    AnswerRisk,
    ClaimRisk,
    Suite,
    SuiteCase,
    SuiteError,
    WordAttribution,
    WordReliance,
    load_suite,
)

HELP = "check a suite of expectations (YAML) against a model; JUnit XML and JSON; exit 0/1/2"
HEATMAP_SIDE = 128  # heatmaps come back at most this wide: the peak needs no finer grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", type=Path, help="the suite file (YAML, docs/ci.md)")
    parser.add_argument("--junit", type=Path, default=None, help="write JUnit XML here")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (in-process: batch size)")
    add_backend_arguments(parser)


@dataclass
class Check:
    case: str  # a case id, or "gates"
    name: str  # the expectation in words
    passed: bool = False
    measured: str = ""
    message: str = ""
    error: str | None = None  # the check could not be evaluated
    seconds: float = 0.0


@dataclass
class Report:
    suite: str
    model: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if any(c.error for c in self.checks):
            return 2
        return 0 if all(c.passed for c in self.checks) else 1


# ------------------------------------------------------------------------------ expectations


def describe(e: Any) -> str:
    if isinstance(e, AnswerRisk):
        return f"answer risk at most {e.answer_risk_at_most}"
    if isinstance(e, ClaimRisk):
        bound = f"at most {e.risk_at_most}" if e.risk_at_most else f"at least {e.risk_at_least}"
        return f"claim {e.claim!r} risk {bound}"
    if isinstance(e, WordReliance):
        return f"word {e.word!r} visual reliance at least {e.reliance_at_least}"
    where = f"in box {e.in_box}" if e.in_box else f"on mask {e.on_mask}"
    return f"word {e.word!r} attribution peak {where}"


def word_span(case: SuiteCase, word: str) -> tuple[int, int]:
    start = case.answer.find(word)
    return start, start + len(word)


def evaluate(e: Any, case: SuiteCase, body: dict[str, Any], base: Path) -> tuple[bool, str, str]:
    """(passed, measured, why it failed)."""
    if isinstance(e, AnswerRisk):
        label = body["summary"]["risk_label"]
        score = body["summary"]["risk_score"]
        return RANK[label] <= RANK[e.answer_risk_at_most], f"{label} ({score:.3f})", f"the answer is {label}"
    if isinstance(e, ClaimRisk):
        found = [c for c in body["claims"] if c["text"].lower() == e.claim.lower()]
        if not found:
            said = ", ".join(repr(c["text"]) for c in body["claims"]) or "none"
            return False, "no such claim", f"the answer makes no claim {e.claim!r} (its claims: {said})"
        claim = max(found, key=lambda c: c["risk_score"])
        measured = f"{claim['risk_label']} ({claim['risk_score']:.3f})"
        if e.risk_at_most:
            return RANK[claim["risk_label"]] <= RANK[e.risk_at_most], measured, f"labelled {claim['risk_label']}"
        assert e.risk_at_least is not None
        return RANK[claim["risk_label"]] >= RANK[e.risk_at_least], measured, f"labelled {claim['risk_label']}"
    start, end = word_span(case, e.word)
    if isinstance(e, WordReliance):
        tokens = [t for t in body["tokens"] if t["start"] < end and start < t["end"]]
        if not tokens:
            return False, "no token", f"no answer token covers {e.word!r}"
        reliance = max(t["visual_reliance"] for t in tokens)
        return reliance >= e.reliance_at_least, f"{reliance:.3f}", f"reliance {reliance:.3f} < {e.reliance_at_least}"
    return attribution_peak(e, case, body, base, start, end)


def attribution_peak(
    e: WordAttribution, case: SuiteCase, body: dict[str, Any], base: Path, start: int, end: int
) -> tuple[bool, str, str]:
    import numpy as np
    from PIL import Image

    match = [a for a in body["attributions"] if a["target"]["start"] == start and a["target"]["end"] == end]
    if not match or not match[0].get("heatmap"):
        return False, "no heatmap", f"no attribution came back for {e.word!r}"
    heat = np.asarray(match[0]["heatmap"]["data"], dtype=np.float32)
    if float(heat.max() - heat.min()) < 1e-6:  # argmax of a flat map is its first cell: no peak to judge
        return False, "flat heatmap", f"the attribution of {e.word!r} is flat: it points nowhere"
    with Image.open(base / case.image) as img:
        width, height = img.size
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    # the heatmap cell's centre in image pixels
    px, py = int((x + 0.5) * width / heat.shape[1]), int((y + 0.5) * height / heat.shape[0])
    measured = f"peak at ({px}, {py})"
    if e.in_box:
        x0, y0, x1, y1 = e.in_box
        return x0 <= px < x1 and y0 <= py < y1, measured, f"the peak ({px}, {py}) is outside {e.in_box}"
    assert e.on_mask is not None
    with Image.open(base / e.on_mask) as mask_img:
        mask = np.asarray(mask_img.convert("L").resize((width, height), Image.Resampling.NEAREST)) > 0
    return bool(mask[py, px]), measured, f"the peak ({px}, {py}) is off the mask"


def case_request(case: SuiteCase, base: Path) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"image": (base / case.image).read_bytes(), "prompt": case.prompt, "answer": case.answer}
    if case.verify:
        body["verify"] = True
    words = [e.word for e in case.expect if isinstance(e, WordAttribution)]
    if not words:
        return "reliance", body
    spans = sorted({word_span(case, w) for w in words})
    body["targets"] = [{"start": s, "end": t} for s, t in spans]
    body["heatmap"] = {"encoding": "array", "width": HEATMAP_SIDE, "height": HEATMAP_SIDE}
    if case.method:
        body["method"] = case.method
    if case.regions:
        body["regions"] = case.regions
    return "explain", body


# ------------------------------------------------------------------------------ running


async def run_suite(suite: Suite, base: Path, backend: Any, report: Report) -> None:
    started = time.monotonic()
    outcomes = await run_all(backend, [case_request(c, base) for c in suite.cases])
    seconds = (time.monotonic() - started) / max(len(suite.cases), 1)
    high_claims = 0
    for case, outcome in zip(suite.cases, outcomes):
        for e in case.expect:
            check = Check(case.id, describe(e), seconds=seconds)
            if isinstance(outcome, AuditError):
                check.error = f"case {case.id}: the request failed: {outcome}"
            else:
                check.passed, check.measured, why = evaluate(e, case, outcome, base)
                if not check.passed:
                    check.message = f"case {case.id}: expected {check.name}: {why}"
            report.checks.append(check)
        if not isinstance(outcome, AuditError):
            high_claims += sum(c["risk_label"] == "high" for c in outcome["claims"])
    gates = suite.gates
    if gates.max_high_risk_claims is not None:
        limit = gates.max_high_risk_claims
        check = Check("gates", f"at most {limit} high-risk claims over the cases", high_claims <= limit)
        check.measured = str(high_claims)
        if not check.passed:
            check.message = f"gates: expected at most {limit} high-risk claims, found {high_claims}"
        report.checks.append(check)
    if gates.hallucination_rate is not None:
        report.checks.append(await rate_gate(gates.hallucination_rate, base, backend))


async def rate_gate(gate: Any, base: Path, backend: Any) -> Check:
    """The estimated hallucination rate over a data set (reliance path), a window of cases at a time."""
    from mllm_audit.service.audit_summary import rate_interval
    from mllm_audit.service.cases import read_cases

    started = time.monotonic()
    name = f"estimated hallucination rate ({gate.bound}) at most {gate.at_most} over {gate.data}"
    check = Check("gates", name)
    per_case: list[tuple[int, float, float]] = []
    errors: list[str] = []
    window: list[Any] = []

    async def flush() -> None:
        requests = [("reliance", {"image": c.image_data(), "prompt": c.prompt, "answer": c.answer}) for c in window]
        if gate.verify:
            for _, body in requests:
                body["verify"] = True
        for case, outcome in zip(window, await run_all(backend, requests)):
            if isinstance(outcome, AuditError):
                errors.append(f"{case.source}: {outcome}")
                continue
            risks = [c["risk_score"] for c in outcome["claims"]]
            per_case.append((len(risks), sum(risks), sum(p * (1 - p) for p in risks)))
        window.clear()

    for i, case in enumerate(read_cases(base / gate.data)):
        if gate.limit is not None and i >= gate.limit:
            break
        if case.error:
            errors.append(case.error)
            continue
        window.append(case)
        if len(window) >= 64:
            await flush()
    if window:
        await flush()
    check.seconds = time.monotonic() - started
    if errors:
        check.error = f"gates: {len(errors)} case(s) of {gate.data} could not be audited; first: {errors[0]}"
        return check
    interval = rate_interval(per_case)
    if interval is None:
        check.error = f"gates: no claim in {gate.data}: no rate to check"
        return check
    rate, low, high = interval
    value = rate if gate.bound == "estimate" else high
    check.passed = value <= gate.at_most
    check.measured = f"{rate:.4f} [{low:.4f}, {high:.4f}] over {len(per_case)} cases"
    if not check.passed:
        check.message = f"gates: expected {name}: the {gate.bound} is {value:.4f}"
    return check


# ------------------------------------------------------------------------------ reports


def junit_xml(report: Report) -> bytes:
    """JUnit XML as GitHub Actions, GitLab and Jenkins read it: one testcase per expectation."""
    failures = sum(not c.passed and not c.error for c in report.checks)
    errors = sum(bool(c.error) for c in report.checks)
    counts = {"tests": str(len(report.checks)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": "mllm-audit check", "time": f"{report.seconds:.3f}", **counts})
    attributes = {
        "name": report.suite,
        "skipped": "0",
        "time": f"{report.seconds:.3f}",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname(),
        **counts,
    }
    suite = ET.SubElement(root, "testsuite", attributes)
    props = ET.SubElement(suite, "properties")
    for key in ("id", "family"):
        if report.model.get(key):
            ET.SubElement(props, "property", name=f"model.{key}", value=str(report.model[key]))
    for check in report.checks:
        case = ET.SubElement(
            suite, "testcase", classname=f"{report.suite}.{check.case}", name=check.name, time=f"{check.seconds:.3f}"
        )
        if check.error:
            ET.SubElement(case, "error", message=check.error, type="error").text = check.error
        elif not check.passed:
            node = ET.SubElement(case, "failure", message=check.message, type="expectation")
            node.text = f"{check.message}\nmeasured: {check.measured}"
        elif check.measured:
            ET.SubElement(case, "system-out").text = f"measured: {check.measured}"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def table(report: Report) -> str:
    rows = [("case", "expectation", "measured", "result")]
    for c in report.checks:
        rows.append((c.case, c.name, c.measured, "ERROR" if c.error else ("pass" if c.passed else "FAIL")))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(4)]
    return "\n".join("  ".join(v[:60].ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def json_report(report: Report) -> dict[str, Any]:
    return {
        "suite": report.suite,
        "model": report.model,
        "passed": report.exit_code == 0,
        "exit_code": report.exit_code,
        "seconds": round(report.seconds, 3),
        "checks": [asdict(c) for c in report.checks],
    }


def main(args: argparse.Namespace, settings: Any) -> int:
    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        print(f"mllm-audit check: bad suite:\n{exc}", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    report = Report(suite.name or args.suite.stem)
    status = asyncio.run(_run(args, settings, suite, report))
    if status:
        return status
    print(table(report))
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_bytes(junit_xml(report))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(json_report(report), indent=2) + "\n")
    broken = [c for c in report.checks if c.error or not c.passed]
    for c in broken:
        print(f"mllm-audit check: {'ERROR' if c.error else 'FAILED'}: {c.error or c.message}", file=sys.stderr)
    passed = sum(c.passed for c in report.checks)
    print(f"{passed}/{len(report.checks)} expectations hold ({report.seconds:.1f} s)", file=sys.stderr)
    return report.exit_code


async def _run(args: argparse.Namespace, settings: Any, suite: Suite, report: Report) -> int:
    started = time.monotonic()
    backend = make_backend(args, settings, args.concurrency)
    try:
        try:
            report.model = await backend.start()
        except AuditError as exc:
            print(f"mllm-audit check: cannot run: {args.url or 'the model'}: {exc.detail}", file=sys.stderr)
            return 2
        await run_suite(suite, args.suite.parent, backend, report)
    finally:
        await backend.close()
    report.seconds = time.monotonic() - started
    return 0
