"""The end-of-run summary of `mllm-audit audit`, computed in one pass over the results file.

The estimated hallucination rate is the mean calibrated risk over all claims (the expected share
of hallucinated claims, comparable with CHAIR_i for captions). Its 95 % interval is a normal
approximation with two parts of variance: which cases were drawn (the ratio estimator's variance
over cases) and whether each claim is in fact hallucinated given its probability (sum of
p (1 - p), the Poisson-binomial variance). Uncalibrated risk scores rank claims but are not
probabilities; the summary says so.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from mllm_audit.service.calibrate import LabelledClaim, match_claims
from mllm_audit.service.results_file import read_records

LABELS = ("low", "medium", "high", "not_visual")
TOP_CLAIMS = 10


class _Claim:
    """What calibrate.match_claims reads of a computed claim."""

    def __init__(self, body: dict[str, Any]):
        self.index, self.start, self.end = body["index"], body["start"], body["end"]


def rate_interval(cases: list[tuple[int, float, float]]) -> tuple[float, float, float] | None:
    """(rate, low, high) from each case's (claims, sum of risks, sum of p (1 - p)); None without claims."""
    claims = sum(n for n, _, _ in cases)
    if not claims:
        return None
    rate = sum(s for _, s, _ in cases) / claims
    m = len(cases)
    sampling = m / (m - 1) * sum((s - rate * n) ** 2 for n, s, _ in cases) / claims**2 if m > 1 else 0.0
    outcome = sum(v for _, _, v in cases) / claims**2
    half = 1.96 * math.sqrt(sampling + outcome)
    return rate, max(0.0, rate - half), min(1.0, rate + half)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def summarise(path: Path) -> dict[str, Any]:
    per_case: list[tuple[int, float, float]] = []  # three numbers a case: flat enough for millions
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    claim_labels: Counter[str] = Counter()
    token_labels: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    said: Counter[str] = Counter()
    # labels: true/false positives at each threshold
    confusion: dict[str, Counter[str]] = {name: Counter() for name in ("medium", "high")}
    labelled_cases = 0
    calibrated: bool | None = None
    total = 0
    for record in read_records(path):
        total += 1
        if record["status"] != "ok":
            error = record["error"]
            errors[error["stage"] if error["stage"] == "input" else str(error["status"] or "unreachable")] += 1
            continue
        if calibrated is None:
            calibrated = bool(record.get("risk", {}).get("calibrated"))
        latencies.append(record["latency_ms"])
        claims = record["claims"]
        per_case.append(
            (
                len(claims),
                sum(c["risk_score"] for c in claims),
                sum(c["risk_score"] * (1 - c["risk_score"]) for c in claims),
            )
        )
        for c in claims:
            claim_labels[c["risk_label"]] += 1
            text = c["text"].lower()
            said[text] += 1
            if c["risk_label"] in ("medium", "high"):
                flagged[text] += 1
        for t in record["tokens"]:
            token_labels[t["risk_label"]] += 1
        if record.get("labels") is not None:
            labelled_cases += 1
            labelled = [LabelledClaim(x["start"], x["end"], x["hallucinated"]) for x in record["labels"]]
            truth, _ = match_claims(labelled, [_Claim(c) for c in claims])
            for c in claims:
                if c["index"] not in truth:
                    continue
                for name, at in (("medium", ("medium", "high")), ("high", ("high",))):
                    key = ("t" if truth[c["index"]] else "f") + ("p" if c["risk_label"] in at else "n")
                    confusion[name][key] += 1

    interval = rate_interval(per_case)
    summary: dict[str, Any] = {
        "cases": total,
        "audited": len(per_case),
        "errors": sum(errors.values()),
        "errors_by_status": dict(errors),  # "input": unreadable case; a status; "unreachable"
        "claims": sum(n for n, _, _ in per_case),
        "hallucination_rate": None
        if interval is None
        else {"estimate": round(interval[0], 4), "ci95": [round(interval[1], 4), round(interval[2], 4)]},
        "calibrated": calibrated,
        "claims_by_label": {label: claim_labels[label] for label in LABELS[:3]},
        "tokens_by_label": {label: token_labels[label] for label in LABELS},
        "most_flagged_claims": [
            {"text": text, "flagged": n, "seen": said[text]} for text, n in flagged.most_common(TOP_CLAIMS)
        ],
        "latency_ms": {f"p{q}": _round(_percentile(latencies, q)) for q in (50, 90, 95, 99)},
    }
    if labelled_cases:
        summary["labels"] = {"cases": labelled_cases} | {
            name: {
                "precision": _ratio(c["tp"], c["tp"] + c["fp"]),
                "recall": _ratio(c["tp"], c["tp"] + c["fn"]),
                "hallucinated": c["tp"] + c["fn"],
                "flagged": c["tp"] + c["fp"],
            }
            for name, c in confusion.items()
        }
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def render(summary: dict[str, Any]) -> str:
    """The summary as the lines the command prints."""
    lines = [
        f"cases: {summary['cases']} ({summary['audited']} audited, {summary['errors']} errors"
        + (f": {', '.join(f'{n} x {s}' for s, n in summary['errors_by_status'].items())}" if summary["errors"] else "")
        + ")"
    ]
    rate = summary["hallucination_rate"]
    if rate is None:
        lines.append("estimated hallucination rate: n/a (no claims)")
    else:
        note = "" if summary["calibrated"] else " (uncalibrated risk: a ranking, not a probability)"
        lines.append(
            f"estimated hallucination rate: {rate['estimate']:.4f}, 95 % interval "
            f"[{rate['ci95'][0]:.4f}, {rate['ci95'][1]:.4f}] over {summary['claims']} claims{note}"
        )
    lines.append("claims by risk: " + ", ".join(f"{k} {v}" for k, v in summary["claims_by_label"].items()))
    lines.append("tokens by risk: " + ", ".join(f"{k} {v}" for k, v in summary["tokens_by_label"].items()))
    if summary["most_flagged_claims"]:
        lines.append("most flagged claims (medium or high / seen):")
        lines += [f"  {c['flagged']:>6} / {c['seen']:<6} {c['text']}" for c in summary["most_flagged_claims"]]
    lat = summary["latency_ms"]
    lines.append("latency ms: " + ", ".join(f"{k} {v}" for k, v in lat.items()))
    if "labels" in summary:
        lab = summary["labels"]
        for name in ("medium", "high"):
            p, r = lab[name]["precision"], lab[name]["recall"]
            lines.append(
                f"labels ({lab['cases']} cases), flagged {name}+: precision {p if p is not None else 'n/a'}, "
                f"recall {r if r is not None else 'n/a'} ({lab[name]['hallucinated']} hallucinated claims)"
            )
    return "\n".join(lines)
