"""The HTML report of an audit: one self-contained page (images, styles and scripts inlined, nothing fetched).

The summary, a table of the shown cases that sorts by any column when its header is clicked, and
per case the image with its overlays and the answer coloured by risk, drawn in the browser by the
viewer's own code (ui/render.js, ui/viewer.css, the colour table) so the report and /ui look the
same. The page is bounded for large runs: at most MAX_CASES audited cases, the riskiest (picked in
one pass with a bounded heap), and at most MAX_CASES errors; the page says how many it leaves out.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
from pathlib import Path
from typing import Any

from mllm_audit.service.results_file import read_records

MAX_CASES = 200
# the page is a file: it may load nothing, and run only its own inline scripts and styles
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
THUMBNAIL_SIDE = 192  # pixels: 200 cases stay a few MB
REPORT_STYLE = """
table.cases { border-collapse: collapse; width: 100% }
.cases td, .cases th { border: 1px solid #ddd; padding: 4px 6px }
.cases th button { font: inherit; font-weight: 700; background: none; border: 0; cursor: pointer; padding: 0 }
.cases th[aria-sort=ascending] button::after { content: " \\25B2" }
.cases th[aria-sort=descending] button::after { content: " \\25BC" }
.case { border-top: 1px solid #bbb; margin-top: 1em }
.case canvas { image-rendering: pixelated; border: 1px solid #999 }
pre { background: #f8f8f8; padding: 1em; white-space: pre-wrap }
"""


def _thumbnail(path: str | None, side: int = THUMBNAIL_SIDE) -> tuple[str, float] | None:
    """(PNG data URL, scale) of the image shrunk to `side` pixels at most; None if unreadable."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError:
        return None
    scale = min(1.0, side / max(rgb.size))
    shown = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    shown.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), scale


def _scaled(box: list[int] | None, scale: float) -> list[float] | None:
    return None if box is None else [round(v * scale, 1) for v in box]


def case_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the page script draws for one audited case (boxes in thumbnail pixels)."""
    thumb = _thumbnail(record.get("image"))
    scale = thumb[1] if thumb else 1.0
    claims = sorted(record["claims"], key=lambda c: -c["risk_score"])  # the riskiest claim's box is drawn first
    attributions = record.get("attributions") or []
    heatmap = next((a["heatmap"] for a in attributions if a.get("heatmap")), None)  # the first map only: size
    return {
        "id": str(record["id"]),
        "prompt": record.get("prompt") or "",
        "image": thumb[0] if thumb else None,
        "tokens": record["tokens"],
        "claims": [{**c, "evidence_bbox": _scaled(c.get("evidence_bbox"), scale)} for c in claims],
        "regions": [_scaled(a["bbox"], scale) for a in attributions if a.get("bbox")],
        "targets": [a["target"] for a in attributions],
        "heatmap": heatmap,
        "summary": record["summary"],
    }


def _row(n: int, record: dict[str, Any]) -> str:
    """One table row; data-sort holds what each column sorts by (numbers for the numeric columns)."""
    ident = html.escape(str(record["id"]))
    if record["status"] != "ok":
        error = html.escape(record["error"]["detail"])
        return (
            f'<tr><td data-sort="{ident}">{ident}</td><td data-sort="-1">error</td><td data-sort="-1">-</td>'
            f'<td data-sort="-1">-</td><td data-sort="{error}">{error}</td></tr>'
        )
    summary = record["summary"]
    latency = record.get("latency_ms")
    return (
        f'<tr><td data-sort="{ident}"><a href="#case-{n}">{ident}</a></td>'
        f'<td data-sort="{summary["risk_score"]}" class="risk-{summary["risk_label"]}">'
        f"{summary['risk_label']} ({summary['risk_score']:.3f})</td>"
        f'<td data-sort="{summary.get("expected_hallucinations", 0.0)}">'
        f"{summary.get('expected_hallucinations', 0.0):.3f}</td>"
        f'<td data-sort="{-1 if latency is None else latency}">{"-" if latency is None else f"{latency:.0f} ms"}</td>'
        '<td data-sort=""></td></tr>'
    )


def _script(name: str) -> str:
    from mllm_audit.service.ui_routes import asset

    return asset(name).decode()


def _inline_json(value: Any) -> str:
    """JSON safe inside a <script> element: no "</" can end it early."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def write_report(
    results: Path, out: Path, summary: dict[str, Any], max_cases: int = MAX_CASES, source: Path | None = None
) -> None:
    """The report of the results file `results`; `source`: the file to name in the page (default `results`)."""
    from mllm_audit.service.audit_summary import render
    from mllm_audit.service.ui_routes import colormap_script

    top: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the riskiest cases
    errors: list[dict[str, Any]] = []
    audited = failed = 0
    for n, record in enumerate(read_records(results)):
        if record["status"] != "ok":
            failed += 1
            if len(errors) < max_cases:
                errors.append(record)
            continue
        audited += 1
        item = (record["summary"]["risk_score"], -n, record)
        if len(top) < max_cases:
            heapq.heappush(top, item)
        else:
            heapq.heappushpop(top, item)
    source = source or results
    shown = [record for _, _, record in sorted(top, key=lambda t: (-t[0], -t[1]))]
    rows = "".join(_row(n, r) for n, r in enumerate(shown)) + "".join(_row(-1, r) for r in errors)
    cases = [case_view(r) for r in shown]
    headers = "".join(
        f'<th scope="col" aria-sort="none" data-type="{kind}"><button type="button">{name}</button></th>'
        for name, kind in (
            ("id", "text"),
            ("risk", "number"),
            ("estimated risk", "number"),
            ("latency", "number"),
            ("error", "text"),
        )
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MLLM Audit report: {html.escape(source.name)}</title>
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<style>{_script("viewer.css")}{REPORT_STYLE}</style></head><body>
<h1>MLLM Audit report</h1><p>{html.escape(str(source))}</p>
<pre>{html.escape(render(summary))}</pre>
<h2>Cases</h2>
<p id="shown-note">Shown: the {len(shown)} riskiest of {audited} audited cases and {len(errors)} of {failed} errors
(at most {max_cases} of each, to keep this page small); every case is in {html.escape(source.name)}.
Click a column's header to sort by it; click again to reverse. Estimated risk: the sum of the claims'
risk scores (the expected number of hallucinated claims when the risk is calibrated).</p>
<table class="cases" id="cases-table"><thead><tr>{headers}</tr></thead><tbody>{rows}</tbody></table>
<h2>Audited cases, riskiest first</h2>
<p>Each image is drawn as the viewer draws it: the heat map where the results hold one, the riskiest
claim's evidence box solid, the other claims' boxes and the explained targets' best regions dashed.
The answer is coloured by risk: <span class="legend" id="risk-legend"></span></p>
<div id="case-list"></div>
<script type="application/json" id="report-cases">{_inline_json(cases)}</script>
<script>{colormap_script().decode()}</script>
<script>{_script("render.js")}</script>
<script>{_script("report.js")}</script>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
