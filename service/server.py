"""Server assembly: a LitServer with the service's routes, middleware and error format.

`AuditServer` is LitServe's server (worker processes, dynamic batching, request queues,
transport) with the HTTP surface replaced by the service's:

  POST /v1/explain, POST /v1/reliance  both feed the one AuditAPI queue (QUEUE_PATH in mllm_audit.service.api)
  GET  /livez      200 while this API server reaches the queue manager and the main process
  GET  /readyz     200 when every model worker is ready and the service is not draining (/health: the same)
  GET  /info       model, methods, limits and configuration (no secrets)
  GET  /metrics    Prometheus metrics of every process of the service (/metrics/ too)
  GET  /docs, /redoc  Swagger UI and ReDoc from bundled assets (mllm_audit.service.docs_routes); /openapi.json
  GET  /ui         the audit viewer (mllm_audit.service.ui_routes)

The endpoint handler replaces LitServe's RegularRequestHandler: it waits for the worker at
most until the request's deadline (504 after it) or until the client disconnects (the worker
then skips or stops the request: Shared.cancelled), and it turns a worker's per-request
`Failure` into that request's error response. The process model (supervision, drain on
SIGTERM) is mllm_audit.service.supervisor's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import pickle
import threading
import time
import uuid
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from mllm_audit.service import logs, metrics
from mllm_audit.service.api import PROGRESS_INTERVAL_S, QUEUE_PATH, AuditAPI, Envelope, Failure
from mllm_audit.service.config import ENV_VARS, Settings, env_name
from mllm_audit.service.docs_routes import add_docs_routes
from mllm_audit.service.http_protocol import MAX_HEADER_BYTES, with_header_timeout
from mllm_audit.service.images import FORMATS
from mllm_audit.service.middleware import AuditMiddleware, error_response
from mllm_audit.service.schemas import (
    METHODS,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    InfoResponse,
    RelianceRequest,
    RelianceResponse,
)
from mllm_audit.service.shared import Shared
from mllm_audit.service.supervisor import Supervisor
from mllm_audit.service.ui_routes import add_ui_routes
from starlette.exceptions import HTTPException as StarletteHTTPException

TITLE = "MLLM Audit"
EXAMPLES = Path(__file__).resolve().parent / "examples"  # recorded answers shown in the OpenAPI document
DESCRIPTION = (
    "Audits a multimodal LLM's answer: which image regions made the model say each answer token "
    "(attribution masks), how much each token rests on the image versus the language prior "
    "(visual reliance), and a hallucination-risk label per token and per answer.\n\n"
    'Errors are JSON `{"detail": "...", "request_id": "..."}`: 400/408/413/415/422 for bad input, '
    "401 without the API key (when one is configured), 503 with `Retry-After` when saturated, draining "
    "or after a worker crash, 504 on timeout."
)


def version() -> str:
    try:
        return metadata.version("mllm-audit")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


AUDIT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Bad input: body not JSON, image not base64, or image data truncated or corrupt"),
    401: _error("Missing or invalid API key (only when the service has one)"),
    413: _error("Body larger than MLLM_AUDIT_MAX_PAYLOAD_BYTES or image over MLLM_AUDIT_MAX_IMAGE_PIXELS"),
    415: _error(
        "Content-Type neither JSON nor multipart/form-data, bytes that are not an image, or an image format "
        "the service does not decode"
    ),
    408: _error("The request body stalled for MLLM_AUDIT_BODY_TIMEOUT seconds"),
    422: _error(
        "Valid JSON that cannot be audited: wrong types, missing fields, unknown method, "
        "limits (tokens, regions, budget, image smaller than 8x8, response larger than "
        "MLLM_AUDIT_MAX_RESPONSE_BYTES), target spans outside the answer"
    ),
    500: _error("Internal error while auditing (the log has the request id)"),
    501: _error("The method is not available in this build"),
    503: _error(
        "Saturated (MLLM_AUDIT_MAX_QUEUE requests in flight), shutting down, or the model worker running "
        "the request died: retry after Retry-After seconds"
    ),
    504: _error("Not answered within MLLM_AUDIT_REQUEST_TIMEOUT seconds"),
}
AUDIT_ERRORS[503]["headers"] = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
}
REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "the request id (the client's X-Request-ID when it sent one), also in the body",
        "schema": {"type": "string"},
    }
}
# One server-sent event of a `stream: true` answer (OpenAPI 3.1: the schema describes each event)
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "result", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'progress: {"forward_passes", "budget"}; result: the ExplainResponse; '
            'error: {"status", "detail", "request_id"}',
        },
    },
}
SECURITY: dict[str, Any] = {"security": [{}, {"BearerAuth": []}, {"ApiKeyAuth": []}]}
# The same request as an upload form (mllm_audit.service.multipart): Swagger UI's "Try it out" shows a file picker
UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt", "answer"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "the image file"},
                        "prompt": {"type": "string"},
                        "answer": {"type": "string"},
                    },
                    "additionalProperties": {
                        "type": "string",
                        "description": "any other field of the JSON body, as JSON text: regions=16, "
                        'heatmap={"encoding": "png"}',
                    },
                }
            }
        }
    }
}


def response_example(endpoint: str) -> dict[str, Any]:
    """A real answer of the bundled model, recorded with the CLI on examples/images/red-circle.png:

    mllm-audit reliance --image examples/images/red-circle.png --prompt "Describe the image." \
        --answer "a red circle and a blue square." --output service/examples/reliance.json
    mllm-audit explain --image examples/images/red-circle.png --prompt "What color is the circle?" \
        --answer red --regions 16 --heatmap png --output service/examples/explain.json
    """
    example: dict[str, Any] = json.loads((EXAMPLES / f"{endpoint}.json").read_text())
    return example


def model_block(settings: Settings) -> dict[str, Any]:
    """Model id, family and revision from the model directory alone (no weights loaded)."""
    from mllm_audit.models.families import family_of
    from mllm_audit.models.loading import REFERENCE_MODEL_DIR, check_model_dir, model_id_for

    path = (Path(settings.model) if settings.model else REFERENCE_MODEL_DIR).expanduser().resolve()
    config = check_model_dir(path)
    revision_file = path / "REVISION"
    return {
        "id": model_id_for(path, settings.model_id),
        "family": family_of(config["model_type"]).name,
        "revision": revision_file.read_text().strip() if revision_file.is_file() else None,
    }


def accelerator_of(device: str) -> tuple[str, Any]:
    if device == "cpu":
        return "cpu", "auto"
    if device.startswith("cuda"):
        return "cuda", 1 if ":" in device else "auto"
    return "auto", "auto"


class AuditHandler:
    """Puts a validated request on the worker queue and waits for its answer until the deadline."""

    def __init__(self, server: AuditServer):
        self.server = server

    async def handle(self, kind: str, body: RelianceRequest, request: Request) -> Response:
        server, settings = self.server, self.server.settings
        state = request.scope.setdefault("state", {})
        request_id = state.get("request_id") or uuid.uuid4().hex
        started = state.get("started") or time.monotonic()
        deadline = started + settings.request_timeout
        envelope = Envelope(
            kind, request_id, started, deadline, body.model_dump(mode="json"), frozenset(body.model_fields_set)
        )
        if settings.debug:
            state.setdefault("log", {}).update(prompt=body.prompt, answer=body.answer)

        uid = uuid.uuid4().hex
        event = asyncio.Event()
        server.response_buffer[uid] = ResponseBufferItem(event)  # registered before the worker can answer
        if getattr(body, "stream", False):
            try:
                self.enqueue(uid, envelope)
            except BaseException:
                server.response_buffer.pop(uid, None)
                raise
            events = stream_events(self, uid, event, deadline, state)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            self.enqueue(uid, envelope)
            gone = await _answer_or_gone(event, request, deadline)
            if gone:  # the worker skips it, or stops it at its next engine round
                self.cancel(uid, gone)
                if gone == "deadline":
                    raise HTTPException(504, f"request timed out after {settings.request_timeout:g} s")
                return Response(status_code=499)  # nobody reads it; the log line and metrics say 499
            answer = server.response_buffer[uid].response
        finally:
            server.response_buffer.pop(uid, None)
        return Response(content=self.body_of(answer, state), media_type="application/json")

    def enqueue(self, uid: str, envelope: Envelope) -> None:
        queue = self.server._get_request_queue(QUEUE_PATH)
        queue.put((self.server.app.response_queue_id, uid, time.monotonic(), envelope))

    def cancel(self, uid: str, reason: str) -> None:
        if self.server.shared is not None:
            self.server.shared.cancel(uid)
        metrics.registry_metrics().cancelled.labels(reason=reason).inc()

    def body_of(self, answer, state: dict) -> bytes:
        """The worker's answer as the response's JSON; raises the HTTPException of an error."""
        response, status = answer
        if status == LitAPIStatus.ERROR:
            raise _worker_error(response)
        if isinstance(response, Failure):  # http_error answers it and logs the detail
            raise HTTPException(response.status, response.detail, headers=response.headers or None)
        data, log_fields = response
        state.setdefault("log", {}).update(log_fields)
        return data

    def progress(self, uid: str) -> tuple[int, int | None] | None:
        shared = self.server.shared
        return shared.progress.get(uid) if shared is not None else None


async def _answer_or_gone(event: asyncio.Event, request: Request, deadline: float) -> str | None:
    """None once the worker has answered; "disconnect" if the client left first, "deadline" if time ran out."""
    answered = asyncio.ensure_future(event.wait())
    left = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {answered, left}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        answered.cancel()
        left.cancel()
    if answered in done:
        return None
    return "disconnect" if left in done else "deadline"


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: only http.disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream_events(handler: AuditHandler, uid: str, event: asyncio.Event, deadline: float, state: dict):
    """Server-sent events of a `stream: true` request: progress while it waits, then its result or error.

    A client that leaves makes the next write fail and closes this generator: the request is cancelled
    as on the plain path (the worker skips it, or stops it at its next engine round).
    """
    finished = False
    server = handler.server
    try:
        passes, budget = 0, None
        while not event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                finished = True
                handler.cancel(uid, "deadline")
                detail = f"request timed out after {server.settings.request_timeout:g} s"
                yield sse_error(state, 504, detail)
                return
            try:
                await asyncio.wait_for(event.wait(), timeout=min(PROGRESS_INTERVAL_S, left))
            except TimeoutError:
                passes, budget = handler.progress(uid) or (passes, budget)
                yield sse("progress", {"forward_passes": passes, "budget": budget})
        finished = True
        try:
            data = handler.body_of(server.response_buffer[uid].response, state)
        except HTTPException as exc:
            yield sse_error(state, exc.status_code, str(exc.detail))
            return
        # the last rounds may fall between two polls: a closing progress event with the final count fills the bar
        final = max(passes, state["log"].get("forward_passes") or 0)
        yield sse("progress", {"forward_passes": final, "budget": budget})
        yield b"event: result\ndata: " + data + b"\n\n"
    finally:
        server.response_buffer.pop(uid, None)
        if server.shared is not None:  # the worker removes it; not if it died mid-request
            server.shared.progress.pop(uid, None)
        if not finished:
            handler.cancel(uid, "disconnect")


def sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_error(state: dict, status: int, detail: str) -> bytes:
    """The error event; the HTTP status was 200 already, so the log line carries the audit's own."""
    state.setdefault("log", {}).update(detail=detail, stream_status=status)
    return sse("error", {"status": status, "detail": detail, "request_id": state.get("request_id")})


def _worker_error(response) -> HTTPException:
    """LitServe's own errors: 504 for a request that waited in the queue too long, else 500."""
    if isinstance(response, bytes):
        try:
            response = pickle.loads(response)
        except Exception:
            response = None
    if isinstance(response, StarletteHTTPException):
        return HTTPException(response.status_code, str(response.detail))
    return HTTPException(500, "internal error in the model worker; see the service logs")


class AuditServer(ls.LitServer):
    def __init__(self, settings: Settings, model: dict[str, Any] | None = None, risk: dict[str, Any] | None = None):
        self.settings = settings
        self.model = model or {"id": settings.model_id or "model", "family": "unknown", "revision": None}
        # /info's risk block (mllm_audit.service.calibrate.risk_block): the calibration the workers load
        self.risk = risk or {"calibration": None, "calibrated": False, "models": []}
        # In-flight requests of all API server processes: created here, shared by the forked ones.
        self.inflight = mp.Value("i", 0)
        self.main_pid = os.getpid()
        self.audit_api = AuditAPI(settings)
        self.shared: Shared | None = None  # created with LitServe's manager, in run()
        self.supervisor: Supervisor | None = None
        self.drain_started = threading.Event()
        accelerator, devices = accelerator_of(settings.device)
        super().__init__(
            self.audit_api,
            accelerator=accelerator,
            devices=devices,
            workers_per_device=settings.workers,
            timeout=settings.request_timeout,
            middlewares=[(AuditMiddleware, {"settings": settings, "inflight": self.inflight, "server": self})],
        )
        app = self.app
        app.router.redirect_slashes = False  # Starlette builds those redirects from the client's Host header
        app.title, app.version, app.description = TITLE, version(), DESCRIPTION
        app.openapi = self._openapi
        app.add_exception_handler(RequestValidationError, validation_error)
        app.add_exception_handler(StarletteHTTPException, http_error)
        app.add_exception_handler(Exception, internal_error)

    # LitServer.__init__ calls this: the service's routes instead of LitServe's defaults.
    def register_endpoints(self) -> None:
        app: FastAPI = self.app
        handler = AuditHandler(self)

        @app.post(
            "/v1/explain",
            response_model=ExplainResponse,
            responses=AUDIT_ERRORS,
            tags=["audit"],
            summary="Attribution masks, reliance and risk of answer tokens",
            response_description="The audit",
            openapi_extra={**SECURITY, **UPLOAD_FORM},
        )
        async def explain(body: ExplainRequest, request: Request):
            return await handler.handle("explain", body, request)

        @app.post(
            "/v1/reliance",
            response_model=RelianceResponse,
            responses=AUDIT_ERRORS,
            tags=["audit"],
            summary="Visual reliance and hallucination risk per answer token (cheap path)",
            response_description="The reliance audit",
            openapi_extra={**SECURITY, **UPLOAD_FORM},
        )
        async def reliance(body: RelianceRequest, request: Request):
            return await handler.handle("reliance", body, request)

        for route in app.routes:  # the request id header and a real answer on every documented audit response
            if isinstance(route, APIRoute) and route.path in ("/v1/explain", "/v1/reliance"):
                content: dict[str, Any] = {
                    "application/json": {"example": response_example(route.path.rsplit("/", 1)[-1])}
                }
                if route.path == "/v1/explain":  # with `stream: true` (see ExplainRequest.stream)
                    content["text/event-stream"] = {"schema": SSE_EVENT}
                route.responses = {**route.responses, 200: {"headers": REQUEST_ID_HEADER, "content": content}}

        def probe(path: str, summary: str, not_ok: str, check):
            @app.get(
                path,
                response_class=PlainTextResponse,
                tags=["service"],
                summary=summary,
                responses={
                    200: {"content": {"text/plain": {"schema": {"type": "string", "enum": ["ok"]}}}},
                    401: _error("Missing or invalid API key (only with MLLM_AUDIT_PROTECT_HEALTH)"),
                    503: {"description": not_ok, "content": {"text/plain": {"schema": {"type": "string"}}}},
                },
            )
            async def answer():
                problem = check()
                return PlainTextResponse(problem or "ok", status_code=503 if problem else 200)

        probe(
            "/livez",
            "Liveness: 200 while this API server can reach the queue and the main process",
            "The queue manager or the main process is gone: restart the service",
            self.liveness_problem,
        )
        probe(
            "/readyz",
            "Readiness: 200 when every model worker is ready and the service is not shutting down",
            "A worker is loading or restarting, or the service is draining",
            self.readiness_problem,
        )
        probe(
            "/health",
            "Same as /readyz",
            "A worker is loading or restarting, or the service is draining",
            self.readiness_problem,
        )

        @app.get(
            "/info",
            response_model=InfoResponse,
            tags=["service"],
            openapi_extra=SECURITY,
            summary="Model, methods, limits and configuration (no secrets)",
            responses={401: _error("Missing or invalid API key (only when the service has one)")},
        )
        async def info():
            return self.info()

        async def prometheus_metrics():
            data, content_type = metrics.render_latest()
            return Response(content=data, media_type=content_type)

        for path in ("/metrics", "/metrics/"):  # both served: no redirect
            app.add_api_route(path, prometheus_metrics, methods=["GET"], include_in_schema=False)
        add_ui_routes(app)
        add_docs_routes(app, TITLE)

    def liveness_problem(self) -> str | None:
        if os.getppid() != self.main_pid and os.getpid() != self.main_pid:
            return "the main process is gone"
        try:
            if self.shared is not None:
                self.shared.draining.is_set()  # a round trip to the queue manager
        except Exception:
            return "the queue manager is unreachable"
        return None

    def readiness_problem(self) -> str | None:
        status = getattr(self, "workers_setup_status", None)  # set by LitServer.run()
        try:
            if self.shared is not None and self.shared.draining.is_set():
                return "shutting down"
            states = dict(status) if status else {}
        except Exception:
            return "the queue manager is unreachable"
        ready = sum(v == WorkerSetupStatus.READY for v in states.values())
        if not states or ready < len(states):
            return f"model workers ready: {ready} of {len(states)}"
        return None

    # ------------------------------------------------------------------ processes (LitServer.run calls these)
    def _init_manager(self, num_api_servers: int):
        logs.configure(self.settings.log_level)  # LitServer.run has just put its plain-text log handler back
        manager = super()._init_manager(num_api_servers)
        self.shared = Shared.create(manager)
        self.audit_api.shared = self.shared  # pickled into every worker it spawns
        return manager

    def _start_worker_monitoring(self, manager, uvicorn_workers) -> None:
        self.supervisor = Supervisor(self, manager, uvicorn_workers)
        self.supervisor.start()

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        if self.supervisor is not None:  # processes stop now on purpose: no restart, no failure
            self.supervisor.stopping.set()
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)

    def drain(self) -> bool:
        """Start the SIGTERM drain (mllm_audit.service.supervisor); False when it cannot (not serving yet, or draining).

        Called from a signal handler: no queue-manager call here (the interrupted main thread may
        be in one on the same connection); the drain thread makes them.
        """
        if self.supervisor is None or self.drain_started.is_set():
            return False
        self.drain_started.set()
        threading.Thread(target=self.supervisor.drain, name="mllm-audit-drain", daemon=True).start()
        return True

    def info(self) -> dict[str, Any]:
        s = self.settings
        config = {env_name(k): v for k, v in asdict(s).items() if k != "api_key"}
        config[env_name("api_key")] = "(set)" if s.api_key else ""
        return {
            "service": {"name": "mllm-audit", "version": version()},
            "model": self.model,
            "methods": list(METHODS),
            "endpoints": ["/v1/explain", "/v1/reliance"],
            "risk": self.risk,
            "limits": {
                "max_payload_bytes": s.max_payload_bytes,
                "max_image_pixels": s.max_image_pixels,
                "max_heatmap_pixels": s.max_heatmap_pixels,
                "image_formats": list(FORMATS),
                "max_prompt_tokens": s.max_prompt_tokens,
                "max_answer_tokens": s.max_answer_tokens,
                "regions": {"min": 2, "max": s.max_regions},
                "max_forward_passes": s.max_forward_passes,
                "request_timeout_s": s.request_timeout,
                "max_queue": s.max_queue,
            },
            "batching": {
                "max_batch_size": s.max_batch_size,
                "batch_timeout_s": s.batch_timeout,
                "forward_batch_size": s.forward_batch_size,
                "workers": s.workers,
                "api_servers": s.api_servers,
            },
            "config": {name: config[name] for name in ENV_VARS},
        }

    def _openapi(self) -> dict[str, Any]:
        app = self.app
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "BearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the API key, when MLLM_AUDIT_API_KEY is set",
                },
                "ApiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "the API key, when MLLM_AUDIT_API_KEY is set",
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    def serve(self) -> None:
        s = self.settings
        self.run(
            host=s.host,
            port=s.port,
            num_api_servers=s.api_servers,
            log_level=_uvicorn_level(s.log_level),
            generate_client_file=False,
            access_log=False,
            http=with_header_timeout(s.header_timeout),
            log_config=None,  # uvicorn's records go to the root logger: JSON lines (service.logs)
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )


def _uvicorn_level(level: str) -> str:
    return "warning" if level in ("info", "debug") else level


# ------------------------------------------------------------------------------ error bodies


def _location(loc) -> str:
    # field names and list indices; pydantic's union-member tags ("literal['answer','tokens']") left out
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request.scope, 400, "request body is not valid JSON")
    seen, parts = set(), []
    for e in errors:  # messages only: the input values (a prompt, an image) stay out of the answer and logs
        text = f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return error_response(request.scope, 422, "; ".join(parts[:10]) or "invalid request")


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(request.scope, exc.status_code, detail, getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request.scope, 500, "internal server error")


def build_server(settings: Settings, check_model: bool = True) -> AuditServer:
    """The server for these settings; with check_model, a bad model directory or calibration file fails here, early."""
    if not check_model:
        return AuditServer(settings)
    from mllm_audit.service.calibrate import risk_block, service_calibration

    model = model_block(settings)
    return AuditServer(settings, model, risk_block(service_calibration(settings, model["id"], model["family"])))
