"""`mllm-audit audit`: audit every case of a data set and stream the results to a JSONL file.

    mllm-audit audit DATA --out results.jsonl [--url URL | --model DIR] [--concurrency 8] [--resume]
        [--endpoint reliance|explain] [--verify] [--html report.html] [--summary summary.json]

DATA is a JSONL file (one case a line: image path relative to the file, prompt, answer, optional
id and labelled claims, the format of docs/risk.md), a directory of such files, or a Hugging Face
`datasets` directory written by save_to_disk (--image-column, --prompt-column, --answer-column).
Each case gets one line in --out as soon as it is done; an interrupted run continues with
--resume, which tries the cases that failed again. A case that cannot be audited (a malformed
line, a missing image, a request the service refuses) gets a line with its error, and the run
goes on. At the end a summary is printed:
estimated hallucination rate with its 95 % interval, claims and tokens by risk label, the most
flagged claims, latency percentiles, and precision and recall where labels were given.

Exit status: 0 every case audited, 1 some cases have errors, 2 the run could not start (bad
arguments, --out exists without --resume, service unreachable, model missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mllm_audit.service.audit_backend import add_backend_arguments, make_backend
from mllm_audit.service.cases import AuditCase, Columns, count_cases, read_cases
from mllm_audit.service.client import AuditError, encode_image
from mllm_audit.service.results_file import ResultsWriter

HELP = "audit every case of a JSONL file or data set; results streamed to JSONL, then a summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="JSONL file, directory of JSONL files, or save_to_disk directory")
    parser.add_argument("--out", type=Path, required=True, help="results file (JSONL, one line per case)")
    parser.add_argument("--resume", action="store_true", help="continue the run whose results are in --out")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (in-process: batch size)")
    parser.add_argument("--endpoint", choices=("reliance", "explain"), default="reliance")
    parser.add_argument("--verify", action="store_true", help="ask a yes/no question per object claim")
    parser.add_argument("--method", default=None, help="explain: the attribution method")
    parser.add_argument("--regions", type=int, default=None, help="explain: superpixel regions")
    parser.add_argument("--budget", type=int, default=None, help="explain: max forward passes per case")
    parser.add_argument("--image-column", default="image", help="data set: the image column")
    parser.add_argument("--prompt-column", default="prompt", help="data set: the prompt column")
    parser.add_argument("--answer-column", default="answer", help="data set: the answer column")
    parser.add_argument("--id-column", default="id", help="data set: the id column (default: the row number)")
    parser.add_argument("--split", default=None, help="data set: the split of a DatasetDict directory")
    parser.add_argument("--limit", type=int, default=None, help="audit only the first N cases")
    parser.add_argument("--summary", type=Path, default=None, help="also write the summary here as JSON")
    parser.add_argument("--html", type=Path, default=None, help="also write a self-contained HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_arguments(parser)


# ------------------------------------------------------------------------------ progress


class Progress:
    """One bar on stderr, redrawn in place on a terminal; elsewhere (CI logs) a line every 10 s."""

    def __init__(self, total: int | None, already: int, enabled: bool = True):
        self.total, self.already, self.enabled = total, already, enabled
        self.done = self.errors = 0
        self.started = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, error: bool) -> None:
        self.done += 1
        self.errors += error
        now = time.monotonic()
        if self.enabled and now - self.last >= (0.2 if self.tty else 10.0):
            self.last = now
            self.draw(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        count = self.already + self.done
        errors = f", {self.errors} error{'s' * (self.errors != 1)}" if self.errors else ""
        if not self.total:
            return f"audit: {count} cases, {rate:.2f}/s{errors}"
        share = min(count / self.total, 1.0)
        left = max(self.total - count, 0)
        eta = left / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        bar = "#" * int(share * 24) + "-" * (24 - int(share * 24))
        return f"audit [{bar}] {share:4.0%} {count}/{self.total} cases, {rate:.2f}/s, ETA {eta_text}{errors}"

    def draw(self, final: bool) -> None:
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + self.line(), end=end, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the run


def request_body(case: AuditCase, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"image": encode_image(case.image_data()), "prompt": case.prompt, "answer": case.answer}
    if args.verify:
        body["verify"] = True
    if args.endpoint == "explain":
        body["heatmap"] = {"encoding": "none"}
        for key, value in (("method", args.method), ("regions", args.regions), ("max_forward_passes", args.budget)):
            if value is not None:
                body[key] = value
    return body


def base_record(case: AuditCase) -> dict[str, Any]:
    return {
        "id": case.id,
        "source": case.source,
        "image": str(case.image_path) if case.image_path else None,
        "prompt": case.prompt,
        "answer": case.answer,
        "labels": None
        if case.claims is None
        else [{"start": c.start, "end": c.end, "hallucinated": c.hallucinated} for c in case.claims],
    }


def error_record(case: AuditCase, status: int | None, detail: str, stage: str = "input") -> dict[str, Any]:
    """stage: "input" (the case could not be read) or "request" (the audit was refused or failed)."""
    error = {"stage": stage, "status": status, "detail": detail}
    return {**base_record(case), "status": "error", "error": error}


def ok_record(case: AuditCase, body: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    record = {
        **base_record(case),
        "status": "ok",
        "latency_ms": round(latency_ms, 1),
        "request_id": body.get("request_id"),
        "model": (body.get("model") or {}).get("id"),
        "summary": body["summary"],
        "risk": body["risk"],
        "claims": [
            {
                k: c.get(k)
                for k in ("index", "kind", "text", "start", "end", "risk_score", "risk_label", "evidence_bbox")
            }
            for c in body["claims"]
        ],
        "tokens": [
            {k: t.get(k) for k in ("index", "text", "start", "end", "visual_reliance", "risk_score", "risk_label")}
            for t in body["tokens"]
        ],
    }
    if "attributions" in body:  # explain: each target's best region, enough for the report
        record["attributions"] = [
            {
                "target": a["target"]["text"],
                "bbox": a["regions"][0]["bbox"] if a.get("regions") else None,
                "insertion_auc": a.get("insertion_auc"),
            }
            for a in body["attributions"]
        ]
    return record


async def audit_cases(
    backend: Any, cases: Iterator[AuditCase], writer: ResultsWriter, progress: Progress, args: argparse.Namespace
) -> None:
    """Keep `backend.slots` workers busy, each sending `backend.batch` cases at a time; one line per case."""
    queue: asyncio.Queue[AuditCase | None] = asyncio.Queue(maxsize=backend.slots * backend.batch * 2)
    seen: set[str] = set()  # ids met in this pass over the data

    def record(line: dict[str, Any]) -> None:
        writer.write(line)
        progress.update(line["status"] != "ok")

    async def produce() -> None:
        for case in cases:
            if case.id in seen:
                record(error_record(case, None, f"{case.source}: duplicate id {case.id!r}; ids must be unique"))
                continue
            seen.add(case.id)
            if case.id in writer.done:
                continue  # audited by the run this one resumes
            if case.error:
                record(error_record(case, None, case.error))
                continue
            await queue.put(case)
        for _ in range(backend.slots):
            await queue.put(None)

    async def work() -> None:
        finished = False
        while not finished:
            batch: list[AuditCase] = []
            while len(batch) < backend.batch:
                case = await queue.get()
                if case is None:
                    finished = True
                    break
                batch.append(case)
                if queue.empty():
                    break  # send what there is rather than wait for a full batch
            requests, ready = [], []
            for case in batch:
                try:
                    requests.append((args.endpoint, request_body(case, args)))
                    ready.append(case)
                except OSError as exc:  # the image went away since the line was read
                    record(error_record(case, None, f"{case.source}: image unreadable ({exc})"))
            if not requests:
                continue
            sent = time.monotonic()
            outcomes = await backend.run(requests)
            latency = (time.monotonic() - sent) * 1000
            for case, outcome in zip(ready, outcomes):
                if isinstance(outcome, AuditError):
                    record(error_record(case, outcome.status, outcome.detail, "request"))
                else:
                    record(ok_record(case, outcome, latency))

    await asyncio.gather(produce(), *(work() for _ in range(backend.slots)))


def limited(cases: Iterator[AuditCase], limit: int | None) -> Iterator[AuditCase]:
    for i, case in enumerate(cases):
        if limit is not None and i >= limit:
            return
        yield case


async def _run(args: argparse.Namespace, settings: Any, writer: ResultsWriter) -> int:
    columns = Columns(args.image_column, args.prompt_column, args.answer_column, args.id_column)
    total = count_cases(args.data, columns, args.split)
    if args.limit is not None:
        total = min(total, args.limit)
    backend = make_backend(args, settings, args.concurrency)
    try:
        try:
            model = await backend.start()
        except AuditError as exc:
            where = args.url or "the model"
            print(f"mllm-audit audit: cannot start: {where}: {exc.detail}", file=sys.stderr)
            return 2
        print(f"mllm-audit audit: {total} cases, model {model['id']}", file=sys.stderr)
        progress = Progress(total, len(writer.done), enabled=not args.quiet)
        cases = limited(read_cases(args.data, columns, args.split), args.limit)
        await audit_cases(backend, cases, writer, progress, args)
        if not args.quiet:
            progress.draw(final=True)
    finally:
        await backend.close()
    return 0


def main(args: argparse.Namespace, settings: Any) -> int:
    from mllm_audit.service.audit_summary import render, summarise

    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    if not args.data.exists():
        raise ValueError(f"{args.data}: no such file or directory")
    writer = ResultsWriter(args.out, args.resume)  # refuses an existing --out without --resume
    try:
        status = asyncio.run(_run(args, settings, writer))
    finally:
        writer.close()
    if status:
        return status
    summary = summarise(args.out)
    print(render(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if args.html:
        from mllm_audit.service.report import write_report

        write_report(args.out, args.html, summary)
        print(f"report written to {args.html}", file=sys.stderr)
    return 1 if summary["errors"] else 0
