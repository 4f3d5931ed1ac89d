"""The HTML report's page: text from the answers cannot end its inline data early."""

from __future__ import annotations

import json

import pytest
from mllm_audit.service.audit_summary import summarise
from mllm_audit.service.report import write_report
from mllm_audit.service.saved_responses import record_of

pytestmark = pytest.mark.unit


def test_answer_text_cannot_close_the_pages_script(tmp_path):
    nasty = "</script><script>alert(1)</script>"
    token = {"index": 0, "text": nasty, "start": 0, "end": len(nasty), "visual_reliance": 0.5}
    response = {
        "tokens": [token | {"risk_score": 0.9, "risk_label": "high"}],
        "claims": [],
        "summary": {"risk_label": "not_visual", "risk_score": 0.0, "visual_reliance": 0.5, "flagged_tokens": 1},
        "stats": {"queue_ms": 1.0, "compute_ms": 2.0},
    }
    results = tmp_path / "results.jsonl"
    lines = [record_of(response, 1), record_of({"detail": nasty}, 2)]
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert [r["status"] for r in lines] == ["ok", "error"] and lines[0]["latency_ms"] == 3.0
    write_report(results, tmp_path / "report.html", summarise(results))
    page = (tmp_path / "report.html").read_text()
    assert nasty not in page  # escaped in the table, "<\/" in the inline JSON
    data = page.split('<script type="application/json" id="report-cases">')[1].split("</script>")[0]
    assert json.loads(data)[0]["tokens"][0]["text"] == nasty
