"""`mllm-audit report`: a JSONL of saved /v1/* responses (or an audit's results) as the HTML report.

Each line is one of: a results line of `mllm-audit audit` (kept as it is); a /v1/reliance or
/v1/explain response body, to which the caller may add "id", "image" (a file path: the picture
in the report), "prompt" and "answer"; or an error body ({"detail": ...}). Responses become results
lines, so the summary and the report are those of an audit run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mllm_audit.service.results_file import ResultsFileError, read_records

HELP = "write the HTML report of a JSONL of saved /v1/* responses or of an audit's results"


def record_of(line: dict[str, Any], number: int) -> dict[str, Any]:
    """A results line (service.audit_run's shape) from one saved line; `number` names unnamed lines."""
    if "status" in line:
        return line
    ident = str(line.get("id") or line.get("request_id") or f"line {number}")
    base = {"id": ident, "image": line.get("image"), "prompt": line.get("prompt", ""), "answer": line.get("answer")}
    if "tokens" not in line or "summary" not in line:
        detail = str(line.get("detail", "not a /v1/reliance or /v1/explain response"))
        return {
            **base,
            "labels": None,
            "status": "error",
            "error": {"stage": "request", "status": None, "detail": detail},
        }
    stats = line.get("stats") or {}
    record = {
        **base,
        "labels": None,
        "status": "ok",
        "latency_ms": round(stats.get("queue_ms", 0.0) + stats.get("compute_ms", 0.0), 1),
        "request_id": line.get("request_id"),
        "model": (line.get("model") or {}).get("id"),
        "summary": line["summary"],
        "risk": line.get("risk", {}),
        "claims": line.get("claims", []),
        "tokens": line["tokens"],
    }
    if "attributions" in line:  # the best region of each target, and the maps the response holds
        record["attributions"] = [
            {
                "target": a["target"]["text"],
                "bbox": a["regions"][0]["bbox"] if a.get("regions") else None,
                "insertion_auc": a.get("insertion_auc"),
                "heatmap": a.get("heatmap") if (a.get("heatmap") or {}).get("encoding") in ("png", "array") else None,
            }
            for a in line["attributions"]
        ]
    return record


def add_arguments(parser: Any) -> None:
    parser.add_argument("results", type=Path, help="JSONL: saved /v1/* responses, or the --out of an audit")
    parser.add_argument("--html", type=Path, required=True, help="the report to write")


def main(args: Any) -> int:
    from mllm_audit.service.audit_summary import render, summarise
    from mllm_audit.service.report import write_report

    if not args.results.exists():
        raise ValueError(f"{args.results}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / args.results.name
        with records.open("w") as out:
            try:
                for number, line in enumerate(read_records(args.results), start=1):
                    out.write(json.dumps(record_of(line, number)) + "\n")
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ResultsFileError(f"{args.results}: not a JSONL of responses or results ({exc})") from None
        summary = summarise(records)
        print(render(summary))
        write_report(records, args.html, summary, source=args.results)
    print(f"report written to {args.html}")
    return 0
