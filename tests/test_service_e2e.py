"""End to end over HTTP: the real server (LitServe, worker processes, the bundled reference
model) started as a subprocess on 127.0.0.1, called with httpx.

Two servers are started once each:
  `open_server`   no API key, one API server and one worker, batching on (8 requests, 0.25 s):
                  audits, batching, the bad-input matrix, logs, the OpenAPI contract, schemathesis;
  `locked_server` an API key, 2 API servers and 2 workers, a queue bound of 3, a 6 s timeout and
                  debug logs: auth, metrics summed over processes, 503 with Retry-After, 504, and at last
                  an API server process killed (the service exits 1).
Region counts and budgets stay small so the whole file runs in a couple of minutes on a CPU.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from mllm_audit.explainers.regions import rle_decode
from mllm_audit.models.reference import world
from mllm_audit.service.client import AuditClient
from mllm_audit.service.openapi import CONTRACT, contract
from mllm_audit.service.schemas import ExplainResponse, RelianceResponse
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ServerProcess

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
KEY = "s3cret-key"
LIMITS = {
    "MLLM_AUDIT_MAX_PAYLOAD_BYTES": "1000000",
    "MLLM_AUDIT_MAX_IMAGE_PIXELS": "1000000",
    "MLLM_AUDIT_MAX_PROMPT_TOKENS": "64",
    "MLLM_AUDIT_MAX_ANSWER_TOKENS": "24",
    "MLLM_AUDIT_MAX_REGIONS": "32",
    "MLLM_AUDIT_MAX_FORWARD_PASSES": "200",
}


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("open_server")
    # one torch thread: the test process and schemathesis share the cores, and torch with more threads
    # than free cores is many times slower (MLLM_AUDIT_CPU_THREADS)
    env = {
        **LIMITS,
        "MLLM_AUDIT_MAX_BATCH_SIZE": "8",
        "MLLM_AUDIT_BATCH_TIMEOUT": "0.25",
        "MLLM_AUDIT_CPU_THREADS": "1",
        "MLLM_AUDIT_HEADER_TIMEOUT": "2",
        "MLLM_AUDIT_METRICS_DIR": str(tmp / "metrics"),
    }
    with ServerProcess(env, log_path=tmp / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("locked_server")
    env = {
        "MLLM_AUDIT_API_KEY": KEY,
        "MLLM_AUDIT_PROTECT_METRICS": "true",
        "MLLM_AUDIT_API_SERVERS": "2",
        "MLLM_AUDIT_WORKERS": "2",
        "MLLM_AUDIT_MAX_QUEUE": "3",
        "MLLM_AUDIT_REQUEST_TIMEOUT": "6",
        "MLLM_AUDIT_MAX_BATCH_SIZE": "4",
        "MLLM_AUDIT_BATCH_TIMEOUT": "0.05",
        "MLLM_AUDIT_MAX_FORWARD_PASSES": "5000",
        "MLLM_AUDIT_MAX_REGIONS": "64",
        "MLLM_AUDIT_DEBUG": "true",
    }
    with ServerProcess(env, log_path=tmp / "server.log") as server:
        yield server


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def colour_question(seed: int) -> tuple[world.Scene, world.SceneObject, dict]:
    scene = world.render_scene(np.random.default_rng(60_000 + seed))
    obj = random.Random(seed).choice(scene.objects)
    body = {"image": png_b64(scene.image), "prompt": f"What color is the {obj.shape}?", "answer": obj.colour}
    return scene, obj, body


def scrape(url: str, headers: dict | None = None) -> dict[tuple, float]:
    """Samples of /metrics/ as {(name, sorted label items): value}."""
    r = httpx.get(url + "/metrics/", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def passes_settle(url: str, headers: dict | None = None, timeout: float = 60) -> list[float]:
    """Forward passes scraped each second until four scrapes agree (the worker has stopped)."""
    passes = [total(scrape(url, headers), "mllm_audit_forward_passes_total")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (len(passes) >= 4 and len(set(passes[-4:])) == 1):
        time.sleep(1)
        passes.append(total(scrape(url, headers), "mllm_audit_forward_passes_total"))
    return passes


def total(samples: dict, name: str, **labels) -> float:
    return sum(
        v
        for (n, items), v in samples.items()
        if n == name and all(dict(items).get(k) == str(want) for k, want in labels.items())
    )


# ------------------------------------------------------------------------------- the open server


def test_health_info_docs_and_the_served_contract(open_server):
    url = open_server.url
    assert httpx.get(url + "/health").text == "ok"
    info = httpx.get(url + "/info").json()
    assert info["model"] == {"id": "mllm-audit-reference", "family": "llava", "revision": info["model"]["revision"]}
    assert set(info["methods"]) >= {"eagle", "eagle_greedy", "tam", "msea", "arc", "msea+arc"}
    assert info["limits"]["max_payload_bytes"] == 1_000_000 and info["limits"]["regions"]["max"] == 32
    assert info["config"]["MLLM_AUDIT_API_KEY"] == ""
    assert httpx.get(url + "/docs").status_code == 200
    served = httpx.get(url + "/openapi.json").json()
    assert served == contract(), f"{CONTRACT.name} differs from the served schema: regenerate it"


def test_audits_of_a_known_scene(open_server):
    _scene, obj, body = colour_question(1)
    c = httpx.Client(base_url=open_server.url, timeout=120)
    r = c.post("/v1/reliance", json=body, headers={"X-Request-ID": "known-scene-1"})
    assert r.status_code == 200, r.text
    reliance = RelianceResponse.model_validate(r.json())
    assert r.headers["x-request-id"] == reliance.request_id == "known-scene-1"
    assert reliance.model.id == "mllm-audit-reference" and reliance.model.family == "llava"
    assert "".join(t.text for t in reliance.tokens).strip() == obj.colour
    assert reliance.stats.forward_passes == 2 and "attributions" not in r.json()

    with AuditClient(open_server.url, timeout=120) as client:  # the typed client: the service's own models
        data_url = "data:image/png;base64," + body["image"]
        explain = client.explain(**{**body, "image": data_url}, regions=16, heatmap={"encoding": "array"})
    assert explain.method.name == "eagle" and explain.method.params["regions"] == 16
    (attribution,) = explain.attributions
    assert attribution.target.text == obj.colour
    assert explain.stats.forward_passes == attribution.forward_passes + 1  # and the risk readout's pass
    assert 2 <= len(attribution.regions) <= 32 and [g.rank for g in attribution.regions] == sorted(
        g.rank for g in attribution.regions
    )
    heat = np.asarray(attribution.heatmap.data)
    assert heat.shape == (96, 96) and heat.min() >= 0 and heat.max() <= 1
    union = np.zeros((96, 96), dtype=int)
    for region in attribution.regions:
        mask = rle_decode(region.mask.model_dump())
        x0, y0, x1, y1 = region.bbox
        assert mask.shape == (96, 96) and mask.any() and not mask[:y0].any() and not mask[y1:].any()
        assert not mask[:, :x0].any() and not mask[:, x1:].any()
        union += mask
    assert union.max() == 1  # regions do not overlap

    png = c.post("/v1/explain", json={**body, "regions": 8, "heatmap": {"encoding": "png", "width": 48}}).json()
    heatmap = png["attributions"][0]["heatmap"]
    assert (heatmap["width"], heatmap["height"]) == (48, 48)
    assert Image.open(io.BytesIO(base64.b64decode(heatmap["data"]))).size == (48, 48)


def test_an_image_file_can_be_uploaded_as_a_form(open_server):
    """What curl -F and Swagger UI's "Try it out" send: the same audit as the JSON body's."""
    _scene, _obj, body = colour_question(4)
    png = base64.b64decode(body["image"])
    fields = {"prompt": body["prompt"], "answer": body["answer"], "regions": "8", "heatmap": '{"encoding": "none"}'}
    r = httpx.post(open_server.url + "/v1/explain", data=fields, files={"image": ("scene.png", png)}, timeout=120)
    assert r.status_code == 200, r.text
    uploaded = ExplainResponse.model_validate(r.json())
    as_json = {**body, "regions": 8, "heatmap": {"encoding": "none"}}
    direct = ExplainResponse.model_validate(
        httpx.post(open_server.url + "/v1/explain", json=as_json, timeout=120).json()
    )
    assert [t.text for t in uploaded.tokens] == [t.text for t in direct.tokens]
    assert [g.region_id for g in uploaded.attributions[0].regions] == [
        g.region_id for g in direct.attributions[0].regions
    ]
    r = httpx.post(open_server.url + "/v1/reliance", data={"prompt": "p"}, files={"image": ("x.png", b"not an image")})
    assert r.status_code == 422 and "answer" in r.json()["detail"]


def test_top_region_lies_on_the_named_object(open_server):
    """The region that makes the trained reference model say the colour is the one that holds the
    object the question names (scenes whose answer the model knows; it knows ~99.6% of them)."""
    c = httpx.Client(base_url=open_server.url, timeout=120)
    hits, asked = 0, 0
    for seed in range(2, 6):
        _scene, obj, body = colour_question(seed)
        tokens = c.post("/v1/reliance", json=body).json()["tokens"]
        if min(t["p_full"] for t in tokens) < 0.5:
            continue  # this model does not know the answer: nothing to localise
        asked += 1
        explain = c.post("/v1/explain", json={**body, "regions": 16, "heatmap": {"encoding": "none"}}).json()
        masks = [rle_decode(region["mask"]) for region in explain["attributions"][0]["regions"]]
        on_object = [(mask & obj.mask).sum() for mask in masks]
        # the top region covers most of the object, and no lower-ranked region covers more of it
        hits += bool(on_object[0] >= 0.8 * obj.mask.sum() and on_object[0] == max(on_object))
    assert asked >= 3 and hits == asked


def test_concurrent_requests_are_batched_and_match_single_results(open_server):
    url = open_server.url
    bodies = [colour_question(seed)[2] for seed in range(10, 14)]
    bad = {**bodies[0], "image": base64.b64encode(b"definitely not an image").decode()}
    with httpx.Client(base_url=url, timeout=120) as c:
        alone = [c.post("/v1/reliance", json=b).json() for b in bodies]
    before = scrape(url)

    def post(body):
        with httpx.Client(base_url=url, timeout=120) as client:
            return client.post("/v1/reliance", json=body)

    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        responses = list(pool.map(post, [*bodies, bad]))
    *good, rejected = responses
    assert rejected.status_code == 415 and "not an image" in rejected.json()["detail"]
    batched = [r.json() for r in good]
    assert all(r.status_code == 200 for r in good)
    assert max(b["stats"]["batch_size"] for b in batched) > 1, [b["stats"] for b in batched]
    for single, together in zip(alone, batched):
        assert [t["text"] for t in single["tokens"]] == [t["text"] for t in together["tokens"]]
        for ts, tt in zip(single["tokens"], together["tokens"]):
            assert tt["p_full"] == pytest.approx(ts["p_full"], abs=1e-5)
            assert tt["p_blank"] == pytest.approx(ts["p_blank"], abs=1e-5)
            assert tt["risk_label"] == ts["risk_label"]
        assert together["summary"]["risk_label"] == single["summary"]["risk_label"]
    after = scrape(url)
    batches = total(after, "mllm_audit_batch_size_count") - total(before, "mllm_audit_batch_size_count")
    requests = total(after, "mllm_audit_batch_size_sum") - total(before, "mllm_audit_batch_size_sum")
    assert requests == len(bodies) + 1 and batches < requests  # batch-size metric above 1 on average

    # explain requests share forward batches too, with the same answer as alone
    pair = [{**b, "regions": 8, "heatmap": {"encoding": "none"}} for b in bodies[:2]]
    with httpx.Client(base_url=url, timeout=120) as c:
        single = [c.post("/v1/explain", json=b).json() for b in pair]
    with ThreadPoolExecutor(2) as pool:
        together = [r.json() for r in pool.map(lambda b: httpx.post(url + "/v1/explain", json=b, timeout=120), pair)]
    for s, t in zip(single, together):
        assert t["stats"]["forward_passes"] == s["stats"]["forward_passes"]
        assert t["tokens"][0]["p_full"] == pytest.approx(s["tokens"][0]["p_full"], abs=1e-5)
        assert t["attributions"][0]["insertion_auc"] == pytest.approx(s["attributions"][0]["insertion_auc"], abs=1e-4)


def _truncated_png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()


def _huge_png_header() -> str:
    from tests.test_service_units import png_header_only

    return base64.b64encode(png_header_only(50_000, 50_000)).decode()


def _tiff() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buf, "TIFF")
    return base64.b64encode(buf.getvalue()).decode()


BASE = {"prompt": "What color is the circle?", "answer": "red"}
BAD_INPUTS = {
    "invalid base64": ("/v1/explain", {"image": "%%% not base64 %%%"}, 400, "base64"),
    "non-image bytes": ("/v1/reliance", {"image": base64.b64encode(b"GIF? no, plain text").decode()}, 415, "image"),
    "unsupported format": ("/v1/explain", {"image": _tiff()}, 415, "TIFF"),
    "truncated png": ("/v1/explain", {"image": _truncated_png()}, 400, "truncated"),
    "huge dimensions": ("/v1/explain", {"image": _huge_png_header()}, 413, "pixels"),
    "empty answer": ("/v1/explain", {"answer": ""}, 422, "answer"),
    "blank answer": ("/v1/reliance", {"answer": "   "}, 422, "empty"),
    "over-long answer": ("/v1/reliance", {"answer": " ".join(["red"] * 40)}, 422, "limit is 24"),
    "over-long prompt": ("/v1/explain", {"prompt": "What color? " * 40}, 422, "limit is 64"),
    "wrong type": ("/v1/explain", {"regions": "sixteen"}, 422, "regions"),
    "wrong type prompt": ("/v1/reliance", {"prompt": 42}, 422, "prompt"),
    "missing field": ("/v1/explain", {"prompt": None}, 422, "prompt"),
    "unknown method": ("/v1/explain", {"method": "gradcam"}, 422, "method"),
    "unknown field": ("/v1/reliance", {"method": "eagle"}, 422, "method"),
    "too many regions": ("/v1/explain", {"regions": 33}, 422, "between 2 and 32"),
    "too few regions": ("/v1/explain", {"regions": 1}, 422, "regions"),
    "budget over the limit": ("/v1/explain", {"max_forward_passes": 201}, 422, "limit is 200"),
    "budget too small": ("/v1/explain", {"max_forward_passes": 1}, 422, "max_forward_passes"),
    "span outside the answer": ("/v1/explain", {"targets": [{"start": 0, "end": 10}]}, 422, "outside"),
    "reversed span": ("/v1/explain", {"targets": [{"start": 2, "end": 1}]}, 422, "greater than"),
    "token span outside the answer": ("/v1/explain", {"targets": [{"token_start": 0, "token_end": 9}]}, 422, "outside"),
    "unknown baseline": ("/v1/explain", {"baseline": "white"}, 422, "baseline"),
    "unknown targets": ("/v1/explain", {"targets": "words"}, 422, "targets"),
    "oversize payload": ("/v1/reliance", {"image": "A" * 1_100_000}, 413, "limit"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_a_json_detail(open_server, case):
    path, change, status, words = BAD_INPUTS[case]
    image = png_b64(world.render_scene(np.random.default_rng(5)).image)
    body = {"image": image, **BASE, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(open_server.url + path, json=body, headers={"X-Request-ID": f"bad-{len(case)}"}, timeout=60)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words.lower() in detail.lower(), detail
    assert r.json()["request_id"] == r.headers["x-request-id"] == f"bad-{len(case)}"
    assert httpx.get(open_server.url + "/health").text == "ok"  # nothing a request sends takes the server down


def sse_events(lines) -> list[tuple[str, dict]]:
    """(event, JSON data) of a text/event-stream, in order."""
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_a_streamed_explanation_reports_progress_then_its_result(open_server):
    _scene, _obj, body = colour_question(3)
    slow = {**body, "method": "eagle_greedy", "regions": 32, "stream": True}
    with httpx.stream("POST", open_server.url + "/v1/explain", json=slow, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    names = [name for name, _ in events]
    assert names[-1] == "result" and set(names[:-1]) == {"progress"}, names
    progress = [data for name, data in events if name == "progress"]
    assert len(progress) >= 2
    passes = [p["forward_passes"] for p in progress]
    assert passes == sorted(passes) and passes[-1] > passes[0], passes
    # the budget: the service's limit (200) plus the risk readout's pass
    assert all(p["budget"] == 201 for p in progress if p["forward_passes"]), progress
    result = ExplainResponse.model_validate(events[-1][1])
    assert result.method.name == "eagle_greedy" and result.stats.forward_passes == passes[-1]  # the closing event

    refused = {**body, "max_forward_passes": 300, "stream": True}  # over the service's limit: the worker's 422
    with httpx.stream("POST", open_server.url + "/v1/explain", json=refused, timeout=60) as r:
        events = sse_events(r.iter_lines())
        request_id = r.headers["x-request-id"]
    name, error = events[-1]
    assert name == "error" and error["status"] == 422 and "max_forward_passes" in error["detail"]
    assert error["request_id"] == request_id

    before = scrape(open_server.url)
    with httpx.stream("POST", open_server.url + "/v1/explain", json=slow, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))  # the client leaves at the first event
    # queued behind the abandoned search, so answered once the worker has stopped it
    assert httpx.post(open_server.url + "/v1/reliance", json=body, timeout=60).status_code == 200
    after = scrape(open_server.url)
    cancelled = "mllm_audit_requests_cancelled_total"
    assert total(after, cancelled, reason="disconnect") == total(before, cancelled, reason="disconnect") + 1
    spent = total(after, "mllm_audit_forward_passes_total") - total(before, "mllm_audit_forward_passes_total") - 2
    assert spent < result.stats.forward_passes  # stopped before the end, as without stream


def test_white_box_maps_over_http(open_server):
    """tam and msea+arc through the service: the same attribution schema as EAGLE, context per
    token, and every forward pass (maps included) counted in the response and the metrics."""
    url = open_server.url
    _scene, obj, body = colour_question(70)
    body = {**body, "answer": f"the {obj.shape} is {obj.colour}."}
    start = body["answer"].index(obj.colour)
    for method, map_passes, curves in (("tam", 1, False), ("msea+arc", 15, True)):
        before = scrape(url)
        r = httpx.post(
            url + "/v1/explain",
            json={
                **body,
                "method": method,
                "curves": curves,  # off by default: a one-pass method then costs its one pass
                "heatmap": {"encoding": "array"},
                "targets": [{"start": start, "end": start + len(obj.colour)}],
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        explain = ExplainResponse.model_validate(r.json())
        assert explain.method.name == method
        (attribution,) = explain.attributions
        assert attribution.target.text == obj.colour and attribution.regions == []
        heat = np.asarray(attribution.heatmap.data)
        assert heat.shape == (96, 96) and np.isfinite(heat).all() and heat.max() > 0
        curve_passes = 2 * 64 if curves else 0  # the map, then 64-step curves when asked for
        assert (attribution.forward_passes, attribution.curve_forward_passes) == (
            map_passes + curve_passes,
            curve_passes,
        )
        if curves:
            assert 0 <= attribution.deletion_auc < attribution.insertion_auc <= 1
        else:
            assert attribution.insertion_auc is None and attribution.insertion_curve == []
        assert explain.stats.forward_passes == attribution.forward_passes + 2  # and the readout and black images
        targeted = [t for t in explain.tokens if t.index in attribution.target.token_indices]
        assert targeted and all(t.context for t in targeted)
        assert all(c.index < t.index for t in targeted for c in t.context if c.source == "answer")
        if method == "msea+arc":  # ARC keeps coherent earlier answer words ("the <shape> is") as context
            assert any(c.source == "answer" for t in targeted for c in t.context)
        counted = total(scrape(url), "mllm_audit_forward_passes_total")
        assert counted - total(before, "mllm_audit_forward_passes_total") == explain.stats.forward_passes
        if method == "tam":  # the map's peak is on the object whose colour is named
            assert (heat * obj.mask).max() == heat.max()


def test_malformed_bodies_and_the_server_stays_healthy(open_server):
    url = open_server.url
    r = httpx.post(url + "/v1/explain", content=b'{"image": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    r = httpx.post(url + "/v1/explain", content=b"image=abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(url + "/v1/reliance", json=[1, 2, 3])
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    assert httpx.get(url + "/nope").status_code == 404
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.post(url + "/v1/reliance", json=colour_question(0)[2], timeout=60)
    assert r.status_code == 200, r.text


def test_slow_clients_hosts_and_runaway_responses_are_bounded(open_server):
    url = open_server.url
    # headers sent slower than MLLM_AUDIT_HEADER_TIMEOUT (2 s here): the connection is closed
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=10) as loris:
        loris.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n")
        opened = time.monotonic()
        assert loris.recv(100) == b"" and time.monotonic() - opened < 6
    r = httpx.get(url + "/info", headers={"X-Padding": "x" * 20_000})  # headers over 16 KiB
    assert r.status_code == 431 and "16384" in r.json()["detail"]
    # no redirect is ever built from the client's Host header
    for path in ("/metrics", "/metrics/"):
        r = httpx.get(url + path, headers={"Host": "evil.example"})
        assert r.status_code == 200 and "location" not in r.headers and "mllm_audit_requests_total" in r.text
    r = httpx.post(url + "/v1/explain/", json={}, headers={"Host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers
    # one small request asking for ~300 MB of heatmaps: refused before any forward pass
    before = total(scrape(url), "mllm_audit_forward_passes_total")
    body = {
        **colour_question(5)[2],
        "method": "tam",
        "targets": "tokens",
        "answer": "a red circle and a blue square on the left",
        "heatmap": {"encoding": "array", "width": 2048, "height": 2048},
    }
    r = httpx.post(url + "/v1/explain", json=body, timeout=60)
    assert r.status_code == 422 and "MLLM_AUDIT_MAX_RESPONSE_BYTES" in r.json()["detail"], r.text
    assert re.search(r"about \d+\.\d MB .*the limit is 64\.0 MB", r.json()["detail"])
    assert total(scrape(url), "mllm_audit_forward_passes_total") == before


def test_logs_are_json_lines_without_prompts_or_images(open_server):
    marker = "What color is the square?"
    _, _, body = colour_question(20)
    body["prompt"] = marker
    r = httpx.post(open_server.url + "/v1/reliance", json=body, headers={"X-Request-ID": "log-check-7"}, timeout=60)
    assert r.status_code == 200
    time.sleep(0.3)
    lines = open_server.log_records()
    mine = [line for line in lines if line.get("request_id") == "log-check-7"]
    assert len(mine) == 1
    (line,) = mine
    assert line["event"] == "request" and line["endpoint"] == "/v1/reliance" and line["status"] == 200
    for field in (
        "latency_ms",
        "queue_ms",
        "compute_ms",
        "forward_passes",
        "batch_size",
        "risk_label",
        "risk_score",
        "flagged_tokens",
        "timestamp",
        "level",
    ):
        assert field in line, field
    text = open_server.log_text()
    assert marker not in text and body["image"][:40] not in text
    assert "iVBORw0KGgo" not in text  # no PNG in base64, ever
    assert any(line.get("status") == 415 and line.get("detail") for line in lines)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(open_server, tmp_path):
    """Property-based run of openapi.yaml against the live server, bounded in examples and time.
    Positive cases include the schema's example image, so real audits are checked too."""
    st = Path(sys.executable).parent / "st"
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
        "response_schema_conformance,negative_data_rejection"
    )
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            str(CONTRACT),
            "--url",
            open_server.url,
            "--checks",
            checks,
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "7",
            "--workers",  # one: with two threads, hypothesis's ast.parse can crash CPython 3.11 ("AST constructor
            "1",  # recursion depth mismatch"), a failure of the fuzzer, not of the service
            "--no-shrink",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\d+ generated, \d+ passed", output), output[-3000:]
    assert httpx.get(open_server.url + "/health").status_code == 200


# ------------------------------------------------------------------------------- the locked server


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_api_key_is_required_where_configured(locked_server):
    url = locked_server.url
    body = colour_question(30)[2]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/reliance", json=body, headers=headers, timeout=60)
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    for headers in (AUTH, {"X-API-Key": KEY}):
        assert httpx.post(url + "/v1/reliance", json=body, headers=headers, timeout=60).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # probes carry no key
    assert httpx.get(url + "/metrics/").status_code == 401  # MLLM_AUDIT_PROTECT_METRICS=true
    assert httpx.get(url + "/metrics/", headers=AUTH).status_code == 200
    assert httpx.get(url + "/info").status_code == 401
    info = httpx.get(url + "/info", headers={"X-API-Key": KEY}).json()
    assert info["config"]["MLLM_AUDIT_API_KEY"] == "(set)" and KEY not in json.dumps(info)
    assert httpx.get(url + "/openapi.json").status_code == 200


def test_metrics_add_up_over_api_servers_and_workers(locked_server):
    url = locked_server.url
    before = scrape(url, AUTH)
    bodies = [colour_question(seed)[2] for seed in range(40, 48)]
    jobs = (
        [("/v1/reliance", b) for b in bodies[:6]]
        + [("/v1/explain", {**b, "regions": 8, "heatmap": {"encoding": "none"}}) for b in bodies[6:]]
        + [("/v1/explain", {**bodies[0], "method": "nope"})]
    )

    def post(job):
        path, body = job
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:  # a new connection each
            return path, client.post(path, json=body)

    results = []
    for i in range(0, len(jobs), 3):  # three at a time: within the queue bound, spread over processes
        with ThreadPoolExecutor(3) as pool:
            results += list(pool.map(post, jobs[i : i + 3]))
    ok = [r.json() for _, r in results if r.status_code == 200]
    assert len(ok) == 8 and [r.status_code for _, r in results].count(422) == 1
    after = scrape(url, AUTH)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("mllm_audit_requests_total", endpoint="/v1/reliance", status="200") == 6
    assert delta("mllm_audit_requests_total", endpoint="/v1/explain", status="200") == 2
    assert delta("mllm_audit_requests_total", endpoint="/v1/explain", status="422") == 1
    assert delta("mllm_audit_request_latency_seconds_count", endpoint="/v1/reliance") == 6
    assert delta("mllm_audit_images_scored_total") == 8
    assert delta("mllm_audit_answers_total") == 8
    assert delta("mllm_audit_tokens_total") == sum(len(r["tokens"]) for r in ok)
    assert delta("mllm_audit_forward_passes_total") == sum(r["stats"]["forward_passes"] for r in ok)
    assert delta("mllm_audit_explanation_seconds_count", method="reliance") == 6
    assert delta("mllm_audit_explanation_seconds_count", method="eagle") == 2
    assert delta("mllm_audit_queue_wait_seconds_count") == 8  # the unknown method never reached a worker
    assert total(after, "mllm_audit_model_info", model_id="mllm-audit-reference", family="llava") == 1

    # the samples came from several processes: 2 API servers and 2 workers write their own files
    lines = locked_server.log_records()
    workers = {line["pid"] for line in lines if line.get("event") == "model_loaded"}
    assert len(workers) == 2
    # the kernel spreads the connections of this file's tests over both API servers
    api_servers = {line["pid"] for line in lines if line.get("event") == "request"}
    assert len(api_servers) == 2 and not api_servers & workers, api_servers
    # debug on: the log lines name the prompt and answer, never the image
    logged = {(line.get("prompt"), line.get("answer")) for line in lines if line.get("status") == 200}
    assert all((b["prompt"], b["answer"]) in logged for b in bodies)
    assert bodies[0]["image"][:40] not in locked_server.log_text()


def test_saturation_is_answered_503_with_retry_after(locked_server):
    url = locked_server.url
    bodies = [
        {**colour_question(seed)[2], "regions": 8, "max_forward_passes": 60, "heatmap": {"encoding": "none"}}
        for seed in range(50, 58)
    ]

    def post(body):
        return httpx.post(url + "/v1/explain", json=body, headers=AUTH, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503, 504} and 503 in statuses and 200 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "saturated" in r.json()["detail"]
    assert httpx.get(url + "/health").status_code == 200


def test_a_request_past_the_timeout_is_answered_504(locked_server):
    url = locked_server.url
    body = {
        **colour_question(60)[2],
        "method": "eagle_greedy",
        "regions": 64,
        "max_forward_passes": 5000,
        "heatmap": {"encoding": "none"},
    }
    before = scrape(url, AUTH)
    r = httpx.post(url + "/v1/explain", json=body, headers={**AUTH, "X-Request-ID": "past-deadline"}, timeout=60)
    # answered by the API server at its deadline: only its wait names the configured timeout (the
    # worker's own 504 says "request timed out", LitServe's queue timeout says something else)
    assert r.status_code == 504 and r.json()["detail"] == "request timed out after 6 s", r.text

    # the worker gave up on it too: its forward passes stop growing (unchanged over 3 s of scrapes)
    # before the search is done, so the audit is never completed (nor counted as an explanation)
    passes = passes_settle(url, AUTH, timeout=120)
    assert len(passes) >= 4 and len(set(passes[-4:])) == 1, f"the worker is still running it: {passes}"
    after = scrape(url, AUTH)
    assert total(after, "mllm_audit_forward_passes_total") > total(before, "mllm_audit_forward_passes_total")
    explained = "mllm_audit_explanation_seconds_count"
    assert total(after, explained, method="eagle_greedy") == total(before, explained, method="eagle_greedy")
    # its log line (written after the answer was sent; the scrapes above took seconds)
    lines = locked_server.log_records()
    assert [line["status"] for line in lines if line.get("request_id") == "past-deadline"] == [504]
    # and the service goes on answering
    r = httpx.post(url + "/v1/reliance", json=colour_question(61)[2], headers=AUTH, timeout=60)
    assert r.status_code == 200


def test_a_killed_api_server_stops_the_service_with_exit_1(locked_server):
    """Last of the module: it ends `locked_server`. No silent outage: the orchestrator sees the exit."""
    url, proc = locked_server.url, locked_server.proc
    assert httpx.get(url + "/livez").status_code == 200
    assert httpx.get(url + "/info", headers=AUTH).status_code == 200  # its log line names an API server's pid

    def api_servers() -> set[int]:
        lines = locked_server.log_records()
        return {line["pid"] for line in lines if line.get("endpoint") == "/info"}

    deadline = time.monotonic() + 10
    while not api_servers():
        assert time.monotonic() < deadline, locked_server.log_tail()
        time.sleep(0.1)
    victim = min(api_servers())
    assert victim != proc.pid
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=15) == 1
    assert locked_server.group_gone(), "processes outlived the failed service"
    with pytest.raises(httpx.TransportError):  # nobody holds the port: liveness fails, nothing half-answers
        httpx.get(url + "/livez", timeout=5)
    lines = locked_server.log_records()
    failed = [line for line in lines if line["event"] == "service_failed"]
    assert len(failed) == 1 and str(victim) in failed[0]["reason"]
