"""The service's parts in-process, without starting a server: image decoding, schemas, settings
and CLI flags, auth, the middleware's limits, the OpenAPI contract, and the worker hooks of
AuditAPI inside LitServe's real batched loop (one bad request never fails its batch)."""

from __future__ import annotations

import base64
import io
import multiprocessing as mp
import queue
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from litserve.utils import LitAPIStatus
from mllm_audit.explainers.results import (
    AuditResult,
    ClaimResult,
    MethodInfo,
    RiskInfo,
    Stats,
    Summary,
    TokenResult,
)
from mllm_audit.service import auth, cli
from mllm_audit.service.api import AuditAPI, Decoded, Envelope, Failure
from mllm_audit.service.config import ENV_VARS, Settings
from mllm_audit.service.images import ImageError, decode_base64, decode_image
from mllm_audit.service.middleware import AuditMiddleware, request_id_from
from mllm_audit.service.schemas import (
    EXPLAIN_EXAMPLE,
    ExplainRequest,
    ExplainResponse,
    HeatmapOptions,
    RelianceRequest,
    RelianceResponse,
)
from PIL import Image
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

pytestmark = pytest.mark.unit


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by a tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


SCENE = np.zeros((24, 32, 3), dtype=np.uint8)
SCENE[4:12, 8:20] = (220, 40, 40)


# ----------------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_supported_formats_decode_to_rgb(fmt):
    arr = decode_image(b64(encode(Image.fromarray(SCENE), fmt)), max_pixels=10_000)
    assert arr.shape == (24, 32, 3) and arr.dtype == np.uint8
    if fmt in ("PNG", "BMP", "WEBP"):
        assert np.abs(arr.astype(int) - SCENE).max() <= (2 if fmt != "WEBP" else 60)


def test_data_url_line_breaks_and_missing_padding_are_accepted():
    raw = encode(Image.fromarray(SCENE))
    text = b64(raw)
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    for variant in (f"data:image/png;base64,{text}", wrapped, text.rstrip("=")):
        assert decode_base64(variant) == raw


def test_alpha_is_composited_on_white_and_grey_becomes_rgb():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)  # fully transparent
    arr = decode_image(b64(encode(Image.fromarray(rgba, "RGBA"))), 1000)
    assert (arr == 255).all()
    grey = decode_image(b64(encode(Image.fromarray(np.full((10, 10), 7, np.uint8), "L"))), 1000)
    assert grey.shape == (10, 10, 3) and (grey == 7).all()


@pytest.mark.parametrize(
    "data, status, words",
    [
        ("not base64 at all!!", 400, "base64"),
        ("", 400, "empty"),
        ("   ", 400, "empty"),
        ("data:image/png,rawtext", 400, "base64"),
        ("data:nonsense", 400, "data URL"),
        (b64(b"hello, these are not image bytes"), 415, "not an image"),
        (b64(encode(Image.fromarray(SCENE), "TIFF")), 415, "TIFF"),
        (b64(encode(Image.fromarray(SCENE))[:60]), 400, "truncated"),
        (b64(png_header_only(100_000, 100_000)), 413, "pixels"),
        (b64(png_header_only(2000, 2000)), 413, "4000000"),
    ],
)
def test_bad_images_get_the_right_status(data, status, words):
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.status == status
    assert words.lower() in info.value.detail.lower()


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    # 30000 x 30000 RGB would need 2.7 GB decoded; the refusal must come from the header alone:
    # Pillow decodes pixels only in ImageFile.load, so a spy on it sees every decode.
    from PIL import ImageFile

    decoded = []
    load = ImageFile.ImageFile.load

    def spy(self):
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    decode_image(b64(encode(Image.fromarray(SCENE))), max_pixels=16_000_000)
    assert (32, 24) in decoded  # the spy sees a decode when there is one
    decoded.clear()
    # over Pillow's own bomb limit, and under it but over the service's limit
    for width, height in ((30_000, 30_000), (8_000, 8_000)):
        with pytest.raises(ImageError) as info:
            decode_image(b64(png_header_only(width, height)), max_pixels=16_000_000)
        assert info.value.status == 413
    assert decoded == []


# ----------------------------------------------------------------------------------- schemas


def test_requests_are_strict_and_forbid_unknown_fields():
    ok = dict(EXPLAIN_EXAMPLE)
    assert ExplainRequest.model_validate(ok).regions == 4
    assert RelianceRequest.model_validate({"image": "x", "prompt": "p", "answer": "a"}).answer == "a"
    for bad in (
        {"regions": "8"},
        {"regions": 1},
        {"method": "gradcam"},
        {"targets": []},
        {"targets": [{"start": 3, "end": 3}]},
        {"targets": "words"},
        {"unknown": 1},
        {"heatmap": {"encoding": "jpeg"}},
        {"max_forward_passes": 1},
        {"answer": ""},
        {"prompt": 5},
    ):
        with pytest.raises(ValidationError):
            ExplainRequest.model_validate({**ok, **bad})
    with pytest.raises(ValidationError):  # attribution options are not part of a reliance request
        RelianceRequest.model_validate({"image": "x", "prompt": "p", "answer": "a", "method": "eagle"})


def test_response_models_accept_the_contract_and_extra_fields():
    token = {
        "index": 0,
        "text": "red",
        "start": 0,
        "end": 3,
        "p_full": 0.98,
        "p_blank": 0.21,
        "visual_reliance": 0.83,
        "language_reliance": 0.17,
        "risk_score": 0.05,
        "risk_label": "low",
    }
    body = {
        "request_id": "r",
        "model": {"id": "m", "family": "llava", "revision": None},
        "method": {"name": "eagle", "params": {}},
        "tokens": [token],
        "claims": [
            {
                "index": 0,
                "kind": "object",
                "start": 0,
                "end": 3,
                "text": "red",
                "token_indices": [0],
                "risk_score": 0.05,
                "risk_label": "low",
                "signals": {"confidence": -0.02},
            }
        ],
        "risk": {"calibration": None, "calibrated": False, "signals": ["confidence"]},
        "summary": {"risk_label": "low", "risk_score": 0.05, "visual_reliance": 0.8, "flagged_tokens": 0},
        "stats": {"forward_passes": 180, "model_calls": 12, "batch_size": 3, "queue_ms": 2.0, "compute_ms": 410.0},
        "attributions": [
            {
                "target": {"start": 0, "end": 3, "text": "red", "token_indices": [0]},
                "regions": [
                    {
                        "rank": 1,
                        "score": 1.0,
                        "bbox": [0, 0, 4, 4],
                        "mask": {"encoding": "rle", "size": [4, 4], "order": "row-major", "counts": [0, 16]},
                    }
                ],
                "heatmap": {"width": 2, "height": 1, "encoding": "array", "data": [[0.5, 1.0]]},
                "insertion_auc": 0.7,
                "deletion_auc": 0.1,
                "forward_passes": 180,
                "new_field": 1,
            }
        ],
    }
    assert ExplainResponse.model_validate(body).attributions[0].forward_passes == 180
    assert RelianceResponse.model_validate(body).stats.batch_size == 3


# ----------------------------------------------------------------------------------- settings, CLI


def test_cli_flags_override_environment(monkeypatch):
    monkeypatch.setenv("MLLM_AUDIT_PORT", "9100")
    monkeypatch.setenv("MLLM_AUDIT_MAX_BATCH_SIZE", "4")
    args = cli.build_parser().parse_args(["serve", "--max-batch-size", "2", "--debug"])
    settings = cli._settings(args, cli.SERVE_FLAGS)
    assert (settings.port, settings.max_batch_size, settings.debug) == (9100, 2, True)
    assert set(cli.SERVE_FLAGS) <= {name.removeprefix("MLLM_AUDIT_").lower() for name in ENV_VARS}


def test_cli_rejects_bad_settings_with_a_message(capsys):
    assert cli.main(["serve", "--max-batch-size", "0"]) == 2
    assert "MLLM_AUDIT_MAX_BATCH_SIZE" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/nonexistent/model"]) == 2
    assert "/nonexistent/model" in capsys.readouterr().err
    for flag, value in (("--device", "gpu"), ("--dtype", "half"), ("--log-level", "warn")):
        assert cli.main(["serve", flag, value]) == 2
        assert f"got {value!r}" in capsys.readouterr().err


def test_checked_setting_names_are_the_ones_the_code_knows():
    from mllm_audit.models.loading import DTYPES
    from mllm_audit.service.config import DTYPE_NAMES, LOG_LEVELS
    from mllm_audit.service.logs import LEVELS

    assert set(DTYPE_NAMES) == {"auto", *DTYPES} and set(LOG_LEVELS) == set(LEVELS)


def test_the_bundled_model_has_one_id_whichever_way_it_is_named(tmp_path):
    from mllm_audit.models.loading import REFERENCE_MODEL_DIR, REFERENCE_MODEL_ID, model_id_for
    from mllm_audit.service.server import model_block

    by_default = model_block(Settings())
    by_path = model_block(Settings(model=str(REFERENCE_MODEL_DIR)))
    assert by_default["id"] == by_path["id"] == REFERENCE_MODEL_ID == model_id_for(REFERENCE_MODEL_DIR)
    assert model_block(Settings(model=str(REFERENCE_MODEL_DIR), model_id="mine"))["id"] == "mine"
    assert model_id_for(tmp_path / "llava-1.5-7b-hf") == "llava-1.5-7b-hf"


# ----------------------------------------------------------------------------------- auth


def test_a_non_ascii_api_key_matches_the_bytes_the_client_sent():
    key = "clé-секрет"
    as_received = key.encode("utf-8").decode("latin-1")  # how the ASGI headers arrive
    assert auth.key_matches(as_received, key) and not auth.key_matches(as_received[:-1], key)


def test_api_key_sources_and_open_paths():
    assert auth.presented_key({"authorization": "Bearer s3cret"}) == "s3cret"
    assert auth.presented_key({"authorization": "bearer  s3cret "}) == "s3cret"
    assert auth.presented_key({"x-api-key": "s3cret"}) == "s3cret"
    assert auth.presented_key({"authorization": "Basic abc"}) is None
    assert auth.key_matches("s3cret", "s3cret") and not auth.key_matches("s3cre", "s3cret")
    on = Settings(api_key="k")
    assert auth.needs_key("/v1/explain", on) and auth.needs_key("/info", on)
    assert not auth.needs_key("/health", on) and not auth.needs_key("/metrics/", on)
    assert not auth.needs_key("/openapi.json", on)
    assert auth.needs_key("/health", Settings(api_key="k", protect_health=True))
    assert auth.needs_key("/metrics/", Settings(api_key="k", protect_metrics=True))
    assert not auth.needs_key("/v1/explain", Settings())


# ----------------------------------------------------------------------------------- middleware


def middleware_client(settings: Settings, inflight=None) -> TestClient:
    async def echo(request):
        body = await request.body()
        return JSONResponse({"bytes": len(body), "request_id": request.scope["state"]["request_id"]})

    app = Starlette(routes=[Route("/v1/explain", echo, methods=["POST"]), Route("/health", echo)])
    app.add_middleware(AuditMiddleware, settings=settings, inflight=inflight)
    return TestClient(app)


def test_middleware_request_id_auth_and_body_limits():
    client = middleware_client(Settings(api_key="k", max_payload_bytes=100))
    r = client.post("/v1/explain", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
    r = client.post(
        "/v1/explain",
        content=b"{}",
        headers={"X-API-Key": "k", "X-Request-ID": "abc-1", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1" and r.json()["request_id"] == "abc-1"
    assert client.get("/health").status_code == 200  # open without the key
    json_with_key = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    r = client.post("/v1/explain", content=b"x" * 101, headers=json_with_key)
    assert r.status_code == 413 and "100" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b"x" * 30

    r = client.post("/v1/explain", content=chunks(), headers=json_with_key)
    assert r.status_code == 413
    r = client.post(
        "/v1/explain",
        content=b"a=b",
        headers={"Authorization": "Bearer k", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert request_id_from({"x-request-id": "bad id with spaces"}) != "bad id with spaces"


def test_middleware_refuses_without_echoing_client_headers():
    client = middleware_client(Settings())
    r = client.post("/v1/explain", content=b"{}")  # no Content-Type at all
    assert r.status_code == 415 and "none" in r.json()["detail"]
    huge = "text/" + "x" * 10_000  # under the 16 KiB header cap, so it reaches the Content-Type check
    r = client.post("/v1/explain", content=b"{}", headers={"Content-Type": huge})
    assert r.status_code == 415 and len(r.text) < 400 and "xxxx..." in r.json()["detail"]


def test_middleware_answers_408_when_the_body_stalls():
    import asyncio

    from mllm_audit.service.middleware import AuditMiddleware

    async def never_called(scope, receive, send):
        raise AssertionError("the app must not see a stalled request")

    async def stalled_receive():
        await asyncio.sleep(3600)

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/explain",
        "headers": [(b"content-type", b"application/json")],
    }
    middleware = AuditMiddleware(never_called, Settings(body_timeout=0.2))
    asyncio.run(asyncio.wait_for(middleware(scope, stalled_receive, send), 5))
    assert sent[0]["status"] == 408 and b"stalled" in sent[1]["body"]


def test_middleware_answers_503_with_retry_after_when_saturated():
    inflight = mp.Value("i", 0)
    client = middleware_client(Settings(max_queue=2), inflight)
    assert client.post("/v1/explain", json={}).status_code == 200
    assert inflight.value == 0  # released after the response
    inflight.value = 2  # two requests in flight in (any) API server process
    r = client.post("/v1/explain", json={})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "saturated" in r.json()["detail"]
    assert client.get("/health").status_code == 200  # only the audit endpoints queue
    inflight.value = 1
    assert client.post("/v1/explain", json={}).status_code == 200


# ----------------------------------------------------------------------------------- OpenAPI


def test_openapi_yaml_is_what_the_app_serves():
    from mllm_audit.service.openapi import contract, document

    assert document() == contract(), "openapi.yaml is stale: run `python -m mllm_audit.service.openapi > openapi.yaml`"
    paths = contract()["paths"]
    assert {"/v1/explain", "/v1/reliance", "/health", "/info"} <= set(paths)
    for path in ("/v1/explain", "/v1/reliance"):
        assert {"200", "400", "413", "415", "422", "503", "504"} <= set(paths[path]["post"]["responses"])


# ----------------------------------------------------------------------------------- AuditAPI hooks


class _WordCounter:  # counts words as tokens: enough for the limits the service checks
    def count_tokens(self, text):
        return len(text.split())


class StubAuditor:
    """Auditor stand-in: 'bad' answers fail the check, 'boom' answers fail inside run."""

    def __init__(self, slow: float = 0.0):
        self.slow = slow
        self.batches: list[int] = []
        self.scorer = _WordCounter()

    def check(self, req):
        from mllm_audit.explainers.request import AuditInputError

        if req.answer == "bad":
            raise AuditInputError("answer is bad")

    def run(self, requests, on_progress=None, checked=False, abandoned=None):
        from mllm_audit.explainers.request import RequestAbandoned

        self.batches.append(len(requests))
        if self.slow:
            from mllm_audit.explainers.engine import EngineStats

            time.sleep(self.slow)
            on_progress(EngineStats(forward_passes=4, model_calls=1))
        gone = abandoned() if abandoned else set()
        out = []
        for n, req in enumerate(requests):
            if n in gone:
                out.append(RequestAbandoned(f"request {n} was abandoned"))
                continue
            if req.answer == "boom":
                out.append(RuntimeError("scorer exploded"))
                continue
            token = TokenResult(0, req.answer, 0.9, 0.1, 0.8, 0.2, 0.05, "low", start=0, end=len(req.answer))
            claim = ClaimResult(0, "object", 0, len(req.answer), req.answer, [0], 0.05, "low", {"confidence": -0.1})
            out.append(
                AuditResult(
                    method=MethodInfo("reliance", {}),
                    tokens=[token],
                    summary=Summary("low", 0.05, 0.8, 0, claims=1),
                    stats=Stats(forward_passes=2, model_calls=1, compute_ms=1.0),
                    claims=[claim],
                    risk=RiskInfo(None, False, ["confidence"]),
                )
            )
        return out


def stub_api(**settings) -> AuditAPI:
    api = AuditAPI(Settings(**settings))
    api.auditor = StubAuditor()
    api.model_block = {"id": "stub", "family": "llava", "revision": None}
    return api


def envelope(answer: str, image: str | None = None, kind: str = "reliance", timeout: float = 30.0) -> Envelope:
    """What the API server puts on the queue: the validated body with every default filled in."""
    now = time.monotonic()
    image = image if image is not None else b64(encode(Image.fromarray(SCENE)))
    model = ExplainRequest if kind == "explain" else RelianceRequest
    body = model.model_construct(image=image, prompt="What?", answer=answer)
    return Envelope(kind, f"id-{answer}", now, now + timeout, body.model_dump(mode="json"))


def test_bad_requests_stay_their_own_inside_a_batch():
    api = stub_api()
    items = [
        api.decode_request(e)
        for e in (envelope("red"), envelope("bad"), envelope("x", image="!!"), envelope("boom"), envelope("blue"))
    ]
    assert [type(i).__name__ for i in items] == ["Decoded", "Failure", "Failure", "Decoded", "Decoded"]
    outputs = [api.encode_response(o) for o in api.predict(items)]
    assert api.auditor.batches == [3]  # the three decodable requests audited together
    assert isinstance(outputs[1], Failure) and outputs[1].status == 422
    assert isinstance(outputs[2], Failure) and outputs[2].status == 400
    assert isinstance(outputs[3], Failure) and outputs[3].status == 500 and "id-boom" in outputs[3].detail
    for i, answer in ((0, "red"), (4, "blue")):
        data, log = outputs[i]
        body = RelianceResponse.model_validate_json(data)
        assert body.request_id == f"id-{answer}" and body.stats.batch_size == 5
        assert log["forward_passes"] == 2 and log["risk_label"] == "low"


def test_requests_past_their_deadline_stop_the_computation():
    api = stub_api()
    api.auditor = StubAuditor(slow=0.05)
    item = api.decode_request(envelope("red", timeout=0.01))
    assert isinstance(item, Decoded)
    out = api.predict([item])[0]
    assert isinstance(out, Failure) and out.status == 504


def test_explain_limits_from_the_settings_are_422():
    api = stub_api(max_forward_passes=100)
    env = envelope("red", kind="explain")
    env.body.update(
        targets="answer",
        method="eagle",
        regions=8,
        max_forward_passes=500,
        heatmap={"encoding": "array", "width": None, "height": None},
    )
    failure = api.decode_request(env)
    assert isinstance(failure, Failure) and failure.status == 422 and "100" in failure.detail
    env.body.update(max_forward_passes=None, heatmap={"encoding": "array", "width": 20000, "height": None})
    failure = api.decode_request(env)
    assert isinstance(failure, Failure) and failure.status == 422 and "heatmap" in failure.detail
    env.body.update(heatmap={"encoding": "array", "width": 64, "height": None})
    decoded = api.decode_request(env)
    assert decoded.heatmap_size == (64, 48) and decoded.request.max_forward_passes == 100
    # by default the heatmap has the image's size, scaled down to fit the limit
    env.body.update(heatmap={"encoding": "array", "width": None, "height": None})
    assert api.decode_request(env).heatmap_size is None
    small = stub_api(max_heatmap_pixels=300, default_heatmap_pixels=300, max_forward_passes=100)
    assert small.decode_request(env).heatmap_size == (20, 15)  # the 32x24 scene in 300 pixels
    env.body.update(heatmap={"encoding": "array", "width": 21, "height": None})
    failure = small.decode_request(env)
    assert isinstance(failure, Failure) and failure.status == 422 and "300" in failure.detail
    api = stub_api(max_regions=16)
    env.body.update(regions=64)  # the default, not asked for: capped at the service's limit
    assert api.decode_request(env).request.regions == 16
    env.explicit = frozenset({"regions"})  # asked for explicitly: over the limit is a 422
    env.body.update(regions=17)
    api.auditor = None
    from mllm_audit.explainers.audit import Auditor

    api.auditor = Auditor(_WordCounter(), max_regions=16)
    failure = api.decode_request(env)
    assert isinstance(failure, Failure) and failure.status == 422 and "between 2 and 16" in failure.detail


class _Transport:
    def __init__(self):
        self.sent = []

    def send(self, item, consumer_id):
        self.sent.append(item)


def run_loop(api, items, shared=None, answers: int | None = None):
    """AuditLoop in a thread over a plain queue until `answers` answers (default: one per item) were sent."""
    from litserve.callbacks import CallbackRunner
    from mllm_audit.service.shared import Shared
    from mllm_audit.service.worker_loop import AuditLoop

    api.shared = shared or Shared(busy={}, cancelled={}, draining=threading.Event())
    api.request_timeout = 30
    api.pre_setup()
    requests = queue.Queue()
    for item in items:
        requests.put(item)
    transport = _Transport()
    args = (api, "cpu", 0, requests, transport, {}, CallbackRunner())
    loop = threading.Thread(target=AuditLoop(), args=args)
    loop.start()
    deadline = time.monotonic() + 20
    while len(transport.sent) < (len(items) if answers is None else answers) and time.monotonic() < deadline:
        time.sleep(0.02)
    requests.put((None, None, None, None))  # LitServe's sentinel: the loop returns
    loop.join(timeout=10)
    return {uid: data for uid, (data, status, *_rest) in transport.sent if status == LitAPIStatus.OK}


def test_the_worker_loop_answers_each_request_on_its_own():
    """LitServe 0.2.19's BatchedLoop fails a whole batch when a hook raises; AuditAPI's hooks
    never raise, so a bad request travels as a Failure and the others in its batch succeed."""
    api = stub_api(max_batch_size=8, batch_timeout=0.2)
    now = time.monotonic()
    answers = run_loop(api, [(0, f"uid-{answer}", now, envelope(answer)) for answer in ("red", "bad", "boom", "blue")])
    assert set(answers) == {"uid-red", "uid-bad", "uid-boom", "uid-blue"}
    assert answers["uid-bad"].status == 422 and answers["uid-boom"].status == 500
    assert RelianceResponse.model_validate_json(answers["uid-red"][0]).stats.batch_size == 4
    assert api.auditor.batches == [3]


def test_the_worker_loop_skips_cancelled_requests_and_refuses_while_draining():
    from mllm_audit.service.shared import Shared

    shared = Shared(busy={}, cancelled={"uid-gone": time.time()}, draining=threading.Event())
    api = stub_api(max_batch_size=8, batch_timeout=0.2)
    now = time.monotonic()
    expired = envelope("late")
    expired.deadline = now - 1
    items = [(0, "uid-gone", now, envelope("red")), (0, "uid-late", now, expired), (0, "uid-ok", now, envelope("blue"))]
    answers = run_loop(api, items, shared, answers=1)
    assert set(answers) == {"uid-ok"} and api.auditor.batches == [1]  # the client of the others has gone
    assert shared.cancelled == {} and shared.busy == {"0": []}  # forgotten once skipped; nothing held after
    shared.draining.set()
    answers = run_loop(stub_api(), [(0, "uid-queued", now, envelope("red"))], shared)
    assert answers["uid-queued"].status == 503 and int(answers["uid-queued"].headers["Retry-After"]) >= 1


def test_the_worker_loop_stops_the_requests_whose_clients_have_gone():
    from mllm_audit.service.shared import Shared

    class LeftWhileRunning(StubAuditor):  # the first client leaves once the worker runs its request
        def run(self, requests, **kwargs):
            shared.cancel("uid-left")
            return super().run(requests, **kwargs)

    shared = Shared(busy={}, cancelled={}, draining=threading.Event())
    api = stub_api(max_batch_size=2, batch_timeout=0.5)
    api.auditor = LeftWhileRunning(slow=0.1)
    now = time.monotonic()
    answers = run_loop(api, [(0, "uid-left", now, envelope("red")), (0, "uid-stays", now, envelope("blue"))], shared)
    assert api.auditor.batches == [2]
    assert answers["uid-left"].status == 499  # sent, though nobody reads it
    assert RelianceResponse.model_validate_json(answers["uid-stays"][0]).tokens[0].text == "blue"


def test_a_request_whose_client_leaves_while_the_worker_collects_its_batch_is_held_then_not_run():
    from mllm_audit.service.shared import Shared

    class Busy(dict):  # the first client leaves as soon as the worker has taken its request off the queue
        def __init__(self):
            super().__init__()
            self.writes: list[list] = []

        def __setitem__(self, key, held):
            super().__setitem__(key, held)
            self.writes.append(list(held))
            if held:
                shared.cancel("uid-left")

    busy = Busy()
    shared = Shared(busy=busy, cancelled={}, draining=threading.Event())
    api = stub_api(max_batch_size=2, batch_timeout=0.5)
    now = time.monotonic()
    items = [(0, "uid-left", now, envelope("red")), (0, "uid-stays", now, envelope("blue"))]
    answers = run_loop(api, items, shared, answers=1)
    assert busy.writes[0] == [(0, "uid-left")]  # held from the moment it was taken, before the batch was full
    assert api.auditor.batches == [1] and set(answers) == {"uid-stays"}
    assert busy["0"] == []


def test_the_worker_loop_reports_progress_of_streamed_requests_only_while_they_run():
    from mllm_audit.service.shared import Shared

    class Progress(dict):  # keeps every write: the entries themselves are removed once answered
        def __init__(self):
            super().__init__()
            self.writes: list[dict] = []

        def update(self, entries):
            self.writes.append(dict(entries))
            super().update(entries)

    shared = Shared(busy={}, cancelled={}, draining=threading.Event(), progress=Progress())
    api = stub_api(max_batch_size=2, batch_timeout=0.5)
    api.auditor = StubAuditor(slow=0.05)
    streamed = envelope("red")
    streamed.body["stream"] = True
    now = time.monotonic()
    answers = run_loop(api, [(0, "uid-streamed", now, streamed), (0, "uid-plain", now, envelope("blue"))], shared)
    assert set(answers) == {"uid-streamed", "uid-plain"} and api.auditor.batches == [2]
    # the stub's one engine round: 4 passes; a reliance-only batch has no budget
    assert shared.progress.writes == [{"uid-streamed": (4, None)}]
    assert dict(shared.progress) == {}


def test_the_progress_budget_sums_the_searches_of_a_batch():
    from mllm_audit.explainers.request import AuditRequest
    from mllm_audit.service.api import batch_budget

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    search = AuditRequest(image, "p", "a", max_forward_passes=100)
    cheap = AuditRequest(image, "p", "a", with_attributions=False)
    assert batch_budget([search, cheap, search]) == 203  # and a readout pass per request
    assert batch_budget([cheap]) is None
    assert batch_budget([AuditRequest(image, "p", "a", max_forward_passes=None)]) is None


def test_mixed_batch_on_the_reference_model_matches_single_requests(reference_scorer):
    """Real model: an explain and a reliance request share forward batches with bad neighbours
    and get the same tokens as when each runs alone."""
    from mllm_audit.explainers.audit import Auditor

    api = AuditAPI(Settings(max_regions=16, max_forward_passes=400))
    api.auditor = Auditor(reference_scorer, forward_batch_size=16, max_regions=16)
    api.model_block = {"id": "reference", "family": "llava", "revision": None}
    from mllm_audit.models.reference import world

    scene = world.render_scene(np.random.default_rng(50_007))
    obj = scene.objects[0]
    image = b64(encode(Image.fromarray(scene.image)))
    now = time.monotonic()
    body = {"image": image, "prompt": f"What color is the {obj.shape}?", "answer": obj.colour}
    explain = Envelope(
        "explain",
        "e",
        now,
        now + 60,
        ExplainRequest.model_construct(**body, regions=8, heatmap=HeatmapOptions(encoding="none")).model_dump(
            mode="json"
        ),
    )
    reliance = Envelope("reliance", "r", now, now + 60, dict(body))
    outside = Envelope("explain", "o", now, now + 60, {**explain.body, "targets": [{"start": 0, "end": 99}]})

    def run(envelopes):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # robust to other processes on the cores (many times slower otherwise)
        try:
            return [api.encode_response(o) for o in api.predict([api.decode_request(e) for e in envelopes])]
        finally:
            torch.set_num_threads(threads)

    together = run([explain, outside, reliance])
    alone = [run([explain])[0], run([reliance])[0]]
    assert isinstance(together[1], Failure) and together[1].status == 422 and "outside" in together[1].detail
    ExplainResponse.model_validate_json(together[0][0])
    for mixed, single in zip((together[0], together[2]), alone):
        a, b = RelianceResponse.model_validate_json(mixed[0]), RelianceResponse.model_validate_json(single[0])
        assert a.stats.batch_size == 3 and b.stats.batch_size == 1
        assert [t.text for t in a.tokens] == [t.text for t in b.tokens]
        for ta, tb in zip(a.tokens, b.tokens):
            assert ta.p_full == pytest.approx(tb.p_full, abs=1e-5)
            assert ta.p_blank == pytest.approx(tb.p_blank, abs=1e-5)
            assert ta.risk_label == tb.risk_label


def test_the_docs_hold_the_current_settings_table():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert cli.env_table() in page, "docs/configuration.md's settings table is stale: paste `mllm-audit env --markdown`"
