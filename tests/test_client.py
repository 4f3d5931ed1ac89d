"""The client's control flow against a tiny local HTTP server that answers from a script: retries
on 503 (honouring Retry-After) and on connection errors, never on a 4xx, typed validation
before sending. The client against the real service: tests/test_audit_cli.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mllm_audit.service.client import AsyncAuditClient, AuditClient, AuditError, RetryPolicy
from pydantic import ValidationError

from tests.server_process import free_port

pytestmark = pytest.mark.unit

RESPONSE = {
    "request_id": "r1",
    "model": {"id": "m", "family": "llava"},
    "method": {"name": "reliance"},
    "tokens": [],
    "claims": [],
    "risk": {"calibration": None, "calibrated": False, "signals": []},
    "summary": {"risk_label": "not_visual", "risk_score": 0.0, "visual_reliance": 0.0, "flagged_tokens": 0},
    "stats": {"forward_passes": 2, "model_calls": 1, "batch_size": 1, "queue_ms": 0.0, "compute_ms": 1.0},
}
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.02)


class Scripted:
    """A server answering each request with the next (status, headers, body) of its script."""

    def __init__(self, script):
        self.script, self.seen, self.times = list(script), [], []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                owner.seen.append((self.path, json.loads(self.rfile.read(length)), self.headers.get("Authorization")))
                owner.times.append(time.monotonic())
                status, headers, body = owner.script.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_503_is_retried_after_retry_after_and_the_answer_is_typed(scripted):
    server = scripted(
        (503, {"Retry-After": "0.3"}, {"detail": "saturated"}),
        (503, {}, {"detail": "saturated"}),
        (200, {}, RESPONSE),
    )
    with AuditClient(server.url, api_key="k", retry=FAST) as client:
        result = client.reliance(image=b"\x89PNG", prompt="p", answer="a")
    assert result.summary.risk_label == "not_visual" and result.stats.forward_passes == 2
    assert len(server.seen) == 3
    assert server.times[1] - server.times[0] >= 0.3  # waited what the service asked, not the tiny backoff
    path, body, auth = server.seen[0]
    assert path == "/v1/reliance" and auth == "Bearer k"
    assert body == {"image": "iVBORw==", "prompt": "p", "answer": "a"}  # only the fields given


def test_a_4xx_is_never_retried(scripted):
    server = scripted((422, {}, {"detail": "answer: too long", "request_id": "r9"}), (200, {}, RESPONSE))
    with AuditClient(server.url, retry=FAST) as client, pytest.raises(AuditError) as caught:
        client.reliance(image=b"x", prompt="p", answer="a")
    assert (caught.value.status, caught.value.detail, caught.value.request_id) == (422, "answer: too long", "r9")
    assert len(server.seen) == 1


def test_retries_stop_after_the_last_attempt(scripted):
    server = scripted(*[(503, {}, {"detail": "busy"})] * 4)
    with AuditClient(server.url, retry=FAST) as client, pytest.raises(AuditError) as caught:
        client.reliance(image=b"x", prompt="p", answer="a")
    assert caught.value.status == 503 and len(server.seen) == FAST.attempts


def test_connection_errors_are_retried_then_reported():
    client = AuditClient(f"http://127.0.0.1:{free_port()}", retry=FAST)  # nothing listens there
    started = time.monotonic()
    with pytest.raises(AuditError) as caught:
        client.info()
    assert caught.value.status is None and "ConnectError" in caught.value.detail
    assert time.monotonic() - started < 5


def test_the_async_client_retries_too(scripted):
    server = scripted((503, {"Retry-After": "0"}, {"detail": "busy"}), (200, {}, {**RESPONSE, "request_id": "r2"}))

    async def go():
        async with AsyncAuditClient(server.url, retry=FAST) as client:
            return await client.explain(image=b"x", prompt="p", answer="a", regions=4, attributions=[])

    with pytest.raises(ValidationError):  # "attributions" is no request field: refused before sending
        asyncio.run(go())
    assert server.seen == []

    async def ok():
        async with AsyncAuditClient(server.url, retry=FAST) as client:
            return await client.reliance(image=b"x", prompt="p", answer="a", verify=True)

    assert asyncio.run(ok()).request_id == "r2"
    assert [s[1].get("verify") for s in server.seen] == [True, True]


def test_backoff_is_capped_jittered_and_honours_retry_after():
    import random

    policy, rng = RetryPolicy(base=1.0, cap=4.0), random.Random(0)
    delays = [policy.delay(n, None, rng) for n in range(8) for _ in range(50)]
    assert min(delays) >= 0 and max(delays) <= 4.0 and len(set(delays)) > 300
    assert policy.delay(0, 7.0, rng) == 7.0


def test_the_client_imports_no_torch():
    code = "import sys, mllm_audit; from mllm_audit import AuditClient; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
