"""Process faults over HTTP: the real server (tests.server_process) with its processes killed,
signalled and abandoned by their clients, on loopback.

`fragile_server` (2 workers, batches of 2, an 8 s drain) lives through the tests in file order:
a worker killed mid-request, a client that leaves, and at last SIGTERM with a full queue, which
ends it. A killed API server process ends tests/test_service_e2e.py's `locked_server`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServerProcess
from tests.test_service_e2e import colour_question, passes_settle, scrape, total

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def slow_explain(seed: int) -> dict:
    """Tens of seconds of EAGLE search on one CPU thread."""
    body = colour_question(seed)[2]
    return {
        **body,
        "method": "eagle_greedy",
        "regions": 64,
        "max_forward_passes": 5000,
        "heatmap": {"encoding": "none"},
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.fixture(scope="module")
def fragile_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fragile_server")
    env = {
        "MLLM_AUDIT_WORKERS": "2",
        "MLLM_AUDIT_CPU_THREADS": "1",
        "MLLM_AUDIT_MAX_BATCH_SIZE": "2",
        "MLLM_AUDIT_DRAIN_TIMEOUT": "8",
        "MLLM_AUDIT_METRICS_DIR": str(tmp / "metrics"),
    }
    with ServerProcess(env, log_path=tmp / "server.log") as server:
        yield server


def test_a_killed_worker_answers_its_request_503_and_the_service_recovers(fragile_server):
    url = fragile_server.url
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(httpx.post, url + "/v1/explain", json=slow_explain(1), timeout=120)
        workers = [line["pid"] for line in fragile_server.log_records() if line["event"] == "model_loaded"]
        time.sleep(2)
        before = {pid: cpu_seconds(pid) for pid in workers}
        time.sleep(1)
        busy = max(workers, key=lambda pid: cpu_seconds(pid) - before[pid])  # the one running the search
        os.kill(busy, signal.SIGKILL)
        killed = time.monotonic()
        response = pending.result()
    answered = time.monotonic()
    assert response.status_code == 503 and answered - killed < 2, (response.status_code, answered - killed)
    assert int(response.headers["retry-after"]) >= 1 and "died" in response.json()["detail"]
    assert answered - started < 30  # not the search's own time: it was cut short
    assert httpx.get(url + "/livez").status_code == 200
    readiness = httpx.get(url + "/readyz")
    assert readiness.status_code == 503 and "1 of 2" in readiness.text  # the restarted worker is loading

    deadline = killed + 30
    while httpx.get(url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready again within 30 s"
        time.sleep(0.3)
    assert httpx.post(url + "/v1/reliance", json=colour_question(2)[2], timeout=60).status_code == 200
    assert total(scrape(url), "mllm_audit_worker_restarts_total") == 1
    died = [line for line in fragile_server.log_records() if line["event"] == "worker_died"]
    assert [(line["pid"], line["exit_code"], line["answered_503"]) for line in died] == [(busy, -9, 1)]


def test_a_worker_killed_while_collecting_its_batch_answers_the_request_it_took_503(tmp_path):
    env = {"MLLM_AUDIT_WORKERS": "1", "MLLM_AUDIT_MAX_BATCH_SIZE": "2", "MLLM_AUDIT_BATCH_TIMEOUT": "60"}
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, ThreadPoolExecutor(1) as pool:
        # alone in the queue, the request waits in the worker for a second one to fill its batch
        pending = pool.submit(httpx.post, server.url + "/v1/reliance", json=colour_question(4)[2], timeout=30)
        time.sleep(2)
        [worker] = [line["pid"] for line in server.log_records() if line["event"] == "model_loaded"]
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        response = pending.result()
        assert response.status_code == 503 and time.monotonic() - killed < 2 and "died" in response.json()["detail"]


def test_a_client_that_leaves_frees_its_slot_and_stops_the_work(fragile_server):
    url = fragile_server.url
    before = scrape(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/explain", json=slow_explain(3), headers={"X-Request-ID": "gone"}, timeout=1.5)
    # the worker stops at its next engine round: the passes stop growing long before the search would end
    passes = passes_settle(url)
    assert len(set(passes[-4:])) == 1, f"the worker is still running it: {passes}"
    after = scrape(url)
    assert total(after, "mllm_audit_requests_cancelled_total", reason="disconnect") == 1
    assert total(after, "mllm_audit_requests_total", endpoint="/v1/explain", status="499") == 1
    explained = "mllm_audit_explanation_seconds_count"
    assert total(after, explained, method="eagle_greedy") == total(before, explained, method="eagle_greedy")
    assert [line["status"] for line in fragile_server.log_records() if line.get("request_id") == "gone"] == [499]


def test_sigterm_with_a_full_queue_answers_every_request_and_exits_0(fragile_server):
    url, proc = fragile_server.url, fragile_server.proc
    # searches of several seconds each, so that the drain is still on when the late request comes
    search = {"method": "eagle_greedy", "regions": 24, "max_forward_passes": 700, "heatmap": {"encoding": "none"}}
    bodies = [{**colour_question(10 + i)[2], **search} for i in range(12)]
    outcomes: list[object] = [None] * len(bodies)

    def post(i: int) -> None:
        try:
            outcomes[i] = httpx.post(url + "/v1/explain", json=bodies[i], timeout=60)
        except httpx.TransportError as exc:  # a dropped connection: what must not happen
            outcomes[i] = exc

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    time.sleep(2)  # two running (one batch per worker), the rest queued
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    late = httpx.post(url + "/v1/reliance", json=colour_question(30)[2], timeout=10)
    readiness = httpx.get(url + "/readyz", timeout=10)
    for thread in threads:
        thread.join(timeout=60)
    exit_code = proc.wait(timeout=60)

    assert late.status_code == 503 and int(late.headers["retry-after"]) >= 1, late.text
    assert readiness.status_code == 503 and readiness.text == "shutting down"
    statuses = [o.status_code if isinstance(o, httpx.Response) else repr(o) for o in outcomes]
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for outcome in outcomes:
        if isinstance(outcome, httpx.Response) and outcome.status_code == 503:
            assert "shutting down" in outcome.json()["detail"] and int(outcome.headers["retry-after"]) >= 1
    assert exit_code == 0
    lines = fragile_server.log_records()
    assert [line["event"] for line in lines if line["event"] in ("draining", "drained")] == ["draining", "drained"]
    assert "Traceback" not in fragile_server.log_text(), fragile_server.log_tail()
    assert fragile_server.group_gone(), "worker processes outlived the server"
