"""The ASGI middleware in front of every route of an API server process.

In order, for each HTTP request:
  0. headers over MAX_HEADER_BYTES together: 431 (the protocol refuses them while incomplete);
  1. request id: X-Request-ID when the client sent a sane one, else a new one; echoed in the
     response header and in the body of every audit response and every JSON error;
  2. API key (service.auth), 401 without it;
  3. for the audit endpoints: Content-Type (415; JSON, or a multipart/form-data upload that
     service.multipart turns into the JSON body), 503 while the service drains (SIGTERM), body
     size (413, from Content-Length and while reading) and pace (408 when it stalls), then the
     queue bound: past MLLM_AUDIT_MAX_QUEUE requests in flight across all API server processes
     (a counter in shared memory) the answer is 503 with a Retry-After estimated from the queue
     and recent latency, with jitter;
  4. after the response: mllm_audit_requests_total / _request_latency_seconds and one JSON log
     line with the timings, forward passes and risk summary the handler left in scope["state"].
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

from mllm_audit.service import auth, logs, metrics
from mllm_audit.service.config import Settings
from mllm_audit.service.http_protocol import MAX_HEADER_BYTES
from mllm_audit.service.multipart import FormError, form_to_json
from mllm_audit.service.shared import retry_after
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse

AUDIT_PATHS = ("/v1/explain", "/v1/reliance")
COUNTED = {"/v1/explain", "/v1/reliance", "/info", "/health", "/livez", "/readyz"}
QUIET = {"/health", "/livez", "/readyz", "/metrics", "/metrics/", "/favicon.ico"}  # logged at debug level only
NOT_COUNTED = {"/metrics", "/metrics/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def endpoint_label(path: str) -> str:
    return path if path in COUNTED else "other"


def request_id_from(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id", "").strip()
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class AuditMiddleware:
    def __init__(self, app, settings: Settings, inflight=None, server=None):
        self.app = app
        self.settings = settings
        self.inflight = inflight  # multiprocessing.Value("i") shared by the API server processes
        self.server = server  # the AuditServer: its Shared state says when the service drains
        self.latency_ewma = 1.0  # seconds of a recent audit request, for Retry-After
        self.log = logs.get("mllm_audit.http")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = request_id_from(headers)
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, started=start, log={})
        outcome = {"status": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        holding = False
        try:
            if sum(len(k) + len(v) for k, v in scope.get("headers", [])) > MAX_HEADER_BYTES:
                detail = f"request headers are larger than {MAX_HEADER_BYTES} bytes"
                await self._error(scope, receive, send_with_id, 431, detail)
                return
            if auth.needs_key(path, self.settings) and not auth.key_matches(
                auth.presented_key(headers), self.settings.api_key
            ):
                await self._error(
                    scope,
                    receive,
                    send_with_id,
                    401,
                    "missing or invalid API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            if path in AUDIT_PATHS and scope["method"] == "POST":
                refusal = self._check_headers(headers)
                if refusal:
                    await self._error(scope, receive, send_with_id, *refusal)
                    return
                if self._draining():
                    retry = retry_after(1.0)
                    detail = f"the service is shutting down; retry after {retry} s (another replica will answer)"
                    await self._error(scope, receive, send_with_id, 503, detail, {"Retry-After": retry})
                    return
                try:
                    body = await self._read_body(receive)
                except TimeoutError:
                    detail = f"the request body stalled for {self.settings.body_timeout:g} s"
                    await self._error(scope, receive, send_with_id, 408, detail, {"Connection": "close"})
                    return
                if body is None:
                    await self._error(
                        scope,
                        receive,
                        send_with_id,
                        413,
                        f"request body is larger than {self.settings.max_payload_bytes} bytes",
                    )
                    return
                if _media(headers) == "multipart/form-data":  # an upload form: the same request as JSON
                    try:
                        body = form_to_json(body, headers["content-type"])
                    except FormError as exc:
                        await self._error(scope, receive, send_with_id, 400, str(exc))
                        return
                    _as_json(scope, len(body))
                holding = self._acquire()
                if not holding:
                    retry = retry_after(self._wait_estimate())
                    await self._error(
                        scope,
                        receive,
                        send_with_id,
                        503,
                        "the service is saturated "
                        f"({self.settings.max_queue} requests in flight); retry after {retry} s",
                        {"Retry-After": retry},
                    )
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        except Exception:
            outcome["status"] = 500
            raise
        finally:
            if holding:
                self._release()
            self._account(scope, path, outcome["status"], time.monotonic() - start, state)

    # ------------------------------------------------------------------ limits
    def _check_headers(self, headers: dict[str, str]):
        media = _media(headers)
        if not media:
            return 415, "Content-Type must be application/json (or multipart/form-data); the request has none"
        if media not in ("application/json", "multipart/form-data") and not media.endswith("+json"):
            return 415, f"Content-Type must be application/json or multipart/form-data, got {_prefix(media)!r}"
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "Content-Length is not a number"
            if size > self.settings.max_payload_bytes:
                return 413, f"request body is {size} bytes; the limit is {self.settings.max_payload_bytes}"
        return None

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (chunked uploads included)."""
        chunks, size = [], 0
        while True:  # a client that stops sending mid-body must not hold the connection
            message = await asyncio.wait_for(receive(), self.settings.body_timeout)
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_payload_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _draining(self) -> bool:
        shared = getattr(self.server, "shared", None)
        return shared is not None and shared.draining.is_set()

    def _wait_estimate(self) -> float:
        """Seconds until a slot frees: the requests in flight, served max_batch_size x workers at a time."""
        in_flight = self.inflight.value if self.inflight is not None else 1
        at_once = self.settings.max_batch_size * self.settings.workers
        return self.latency_ewma * max(1.0, in_flight / at_once)

    def _acquire(self) -> bool:
        if self.inflight is None:
            return True
        with self.inflight.get_lock():
            if self.inflight.value >= self.settings.max_queue:
                return False
            self.inflight.value += 1
            return True

    def _release(self) -> None:
        if self.inflight is not None:
            with self.inflight.get_lock():
                self.inflight.value -= 1

    @staticmethod
    async def _error(scope, receive, send, status: int, detail: str, headers: dict | None = None):
        await error_response(scope, status, detail, headers)(scope, receive, send)

    # ------------------------------------------------------------------ metrics and the log line
    def _account(self, scope, path: str, status: int, seconds: float, state: dict) -> None:
        endpoint = endpoint_label(path)
        if path in AUDIT_PATHS and status == 200:
            self.latency_ewma = 0.8 * self.latency_ewma + 0.2 * seconds
        if path not in NOT_COUNTED:
            m = metrics.registry_metrics()
            m.requests.labels(endpoint=endpoint, status=str(status)).inc()
            m.latency.labels(endpoint=endpoint).observe(seconds)
        fields = {
            "request_id": state.get("request_id"),
            "endpoint": endpoint,
            "method": scope["method"],
            "path": _prefix(path, 200) if endpoint == "other" else None,
            "status": status,
            "latency_ms": round(seconds * 1000, 2),
        }
        fields.update(state.get("log") or {})
        fields = {k: v for k, v in fields.items() if v is not None}
        if path in QUIET:  # a probe's 503 is a state (loading, draining), not an error
            (self.log.debug if status < 400 else self.log.info)("request", **fields)
        elif status >= 500:
            self.log.error("request", **fields)
        else:
            self.log.info("request", **fields)


def error_response(scope, status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """The service's JSON error, `{"detail", "request_id"}`; the detail also goes to the log line."""
    state = scope.setdefault("state", {})
    state.setdefault("log", {})["detail"] = detail
    return JSONResponse({"detail": detail, "request_id": state.get("request_id")}, status_code=status, headers=headers)


def _media(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _as_json(scope, length: int) -> None:
    """The request's headers as those of the JSON body it has become."""
    kept = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
    scope["headers"] = [*kept, (b"content-type", b"application/json"), (b"content-length", str(length).encode())]


def _prefix(text: str, limit: int = 64) -> str:
    """At most `limit` characters of a client-supplied value, for error bodies and logs."""
    return text if len(text) <= limit else text[:limit] + "..."


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
