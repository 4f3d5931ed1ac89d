"""`mllm-audit audit --html`: the run as one self-contained HTML page (no script, nothing fetched).

The summary, then the cases with the highest risk first (at most MAX_CASES, picked in one pass
with a bounded heap): the image inline as a PNG data URL with each claim's evidence box drawn
over it in its label's colour (explain runs: the target's best region too), the answer with its
claims marked, and the claims' risks. Until a viewer exists, this is the visual report.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
from pathlib import Path
from typing import Any

from mllm_audit.service.results_file import read_records

MAX_CASES = 200
COLOURS = {"low": "#2e7d32", "medium": "#f9a825", "high": "#c62828", "region": "#1565c0"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222 }
table { border-collapse: collapse; width: 100% } td, th { border: 1px solid #ddd; padding: 6px; vertical-align: top }
th { background: #f4f4f4; text-align: left } .img { position: relative; display: inline-block }
.img svg { position: absolute; left: 0; top: 0 } mark.low { background: #c8e6c9 } mark.medium { background: #fff59d }
mark.high { background: #ffcdd2 } pre { background: #f8f8f8; padding: 1em }
"""


def _thumbnail(path: str | None, side: int = 192) -> tuple[str, int, int, float] | None:
    """(data URL, width, height, scale) of the image scaled to `side` pixels at most; None if unreadable."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError:
        return None
    scale = side / max(rgb.size)
    shown = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    shown.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), shown.width, shown.height, scale


def _boxes(record: dict[str, Any], scale: float) -> str:
    rects = []
    for claim in record["claims"]:
        if claim.get("evidence_bbox"):
            rects.append((claim["evidence_bbox"], COLOURS[claim["risk_label"]], claim["text"]))
    for att in record.get("attributions") or []:
        if att.get("bbox"):
            rects.append((att["bbox"], COLOURS["region"], f"region of {att['target']}"))
    out = []
    for (x0, y0, x1, y1), colour, title in rects:
        out.append(
            f'<rect x="{x0 * scale:.1f}" y="{y0 * scale:.1f}" width="{(x1 - x0) * scale:.1f}" '
            f'height="{(y1 - y0) * scale:.1f}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{html.escape(title)}</title></rect>"
        )
    return "".join(out)


def _marked_answer(record: dict[str, Any]) -> str:
    answer, parts, position = record["answer"], [], 0
    for claim in sorted(record["claims"], key=lambda c: c["start"]):
        if claim["start"] < position:
            continue
        parts.append(html.escape(answer[position : claim["start"]]))
        text = html.escape(answer[claim["start"] : claim["end"]])
        parts.append(f'<mark class="{claim["risk_label"]}" title="risk {claim["risk_score"]:.3f}">{text}</mark>')
        position = claim["end"]
    parts.append(html.escape(answer[position:]))
    return "".join(parts)


def _row(record: dict[str, Any]) -> str:
    thumb = _thumbnail(record.get("image"))
    if thumb is None:
        picture = "(no image file)"
    else:
        url, width, height, scale = thumb
        picture = (
            f'<div class="img"><img src="{url}" width="{width}" height="{height}" alt="">'
            f'<svg width="{width}" height="{height}">{_boxes(record, scale)}</svg></div>'
        )
    claims = "<br>".join(
        f"{html.escape(c['text'])}: {c['risk_label']} ({c['risk_score']:.3f})" for c in record["claims"]
    )
    summary = record["summary"]
    return (
        f"<tr><td>{html.escape(str(record['id']))}</td><td>{picture}</td>"
        f"<td><b>{html.escape(record['prompt'])}</b><br>{_marked_answer(record)}</td>"
        f"<td>{summary['risk_label']} ({summary['risk_score']:.3f})</td><td>{claims or '-'}</td></tr>"
    )


def write_report(results: Path, out: Path, summary: dict[str, Any], max_cases: int = MAX_CASES) -> None:
    from mllm_audit.service.audit_summary import render

    top: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the riskiest cases
    errors: list[dict[str, Any]] = []
    for n, record in enumerate(read_records(results)):
        if record["status"] != "ok":
            if len(errors) < max_cases:
                errors.append(record)
            continue
        item = (record["summary"]["risk_score"], -n, record)
        if len(top) < max_cases:
            heapq.heappush(top, item)
        else:
            heapq.heappushpop(top, item)
    rows = "".join(_row(record) for _, _, record in sorted(top, key=lambda t: (-t[0], -t[1])))
    error_rows = "".join(
        f"<tr><td>{html.escape(str(r['id']))}</td><td>{html.escape(r['error']['detail'])}</td></tr>" for r in errors
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MLLM Audit report: {html.escape(results.name)}</title>
<style>{STYLE}</style></head><body>
<h1>MLLM Audit report</h1><p>{html.escape(str(results))}</p>
<pre>{html.escape(render(summary))}</pre>
<h2>Cases, riskiest first ({len(top)} shown)</h2>
<p>Boxes: each claim's evidence patch in its risk label's colour; blue, an explained target's best region.</p>
<table><tr><th>id</th><th>image</th><th>prompt / answer</th><th>answer risk</th><th>claims</th></tr>{rows}</table>
<h2>Errors ({summary["errors"]})</h2>
<table><tr><th>id</th><th>reason</th></tr>{error_rows}</table>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
