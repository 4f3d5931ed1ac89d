"""A typed Python client of the HTTP API (httpx), sync and async.

    from mllm_audit import AuditClient

    with AuditClient("http://127.0.0.1:8000", api_key="...") as client:
        result = client.reliance(image="examples/images/red-circle.png",
                                 prompt="Describe the image.", answer="a red circle and a blue square.")
        print(result.summary.risk_label, [(c.text, c.risk_label) for c in result.claims])

Requests and responses are the service's own pydantic models (mllm_audit.service.schemas), so a
misspelt option fails here, before anything is sent. A 503 (the service is saturated or its model
ran out of memory) and a connection error are retried with exponential backoff and full jitter,
waiting at least the Retry-After the service asks for; a 4xx is the caller's mistake and is never
retried. Anything else that is not 200 raises AuditError with the status and the service's detail.

It imports neither torch nor the model code: a CI job or a notebook can use it without them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from mllm_audit.service.schemas import (
    ExplainRequest,
    ExplainResponse,
    InfoResponse,
    RelianceRequest,
    RelianceResponse,
)
from pydantic import BaseModel

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({503})
ResponseT = TypeVar("ResponseT", bound=BaseModel)


class AuditError(Exception):
    """The service answered with an error (status >= 400), or could not be reached (status None)."""

    def __init__(self, status: int | None, detail: str, request_id: str | None = None):
        self.status = status
        self.detail = detail
        self.request_id = request_id
        super().__init__(f"{status or 'unreachable'}: {detail}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: attempt n waits uniform(0, min(cap, base * 2**n)) seconds,
    and at least the Retry-After the service sent."""

    attempts: int = 5  # tries in all, the first included
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(backoff, retry_after or 0.0)


def encode_image(image: str | Path | bytes | Any) -> str:
    """base64 of an image file's bytes, of raw bytes, or of a PIL image (as PNG); a str that is
    not a file is taken to be base64 (or a data URL) already."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    if isinstance(image, Path) or (isinstance(image, str) and _is_file(image)):
        return base64.b64encode(Path(image).read_bytes()).decode()
    if isinstance(image, str):
        return image
    if hasattr(image, "save"):  # a PIL image; PIL itself is not imported here
        import io

        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()
    raise TypeError(f"cannot send {type(image).__name__} as an image (a path, bytes, base64 or a PIL image)")


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).is_file()
    except OSError:  # a base64 string is no file name (too long a component, say)
        return False


def build_request(model: type[RelianceRequest], request: RelianceRequest | None, fields: dict[str, Any]) -> Any:
    """The validated request model from a model instance or from keyword fields (image: any encode_image input)."""
    if request is not None:
        if fields:
            raise TypeError("pass a request model or keyword fields, not both")
        return request
    if "image" in fields:
        fields["image"] = encode_image(fields["image"])
    return model.model_validate(fields)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _error_of(response: httpx.Response) -> AuditError:
    try:
        body = response.json()
        detail, request_id = str(body.get("detail", body)), body.get("request_id")
    except ValueError:
        detail, request_id = response.text[:500], None
    return AuditError(response.status_code, detail, request_id or response.headers.get("X-Request-ID"))


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 300.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
    ):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # an explanation can take minutes on a CPU: the read timeout is the long one
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)

    def _decide(self, attempt: int, response: httpx.Response | None, exc: Exception | None) -> float | None:
        """Seconds to wait before the next try, or None: do not retry."""
        if attempt + 1 >= self.retry.attempts:
            return None
        if exc is not None:
            return self.retry.delay(attempt, None, self._rng)
        assert response is not None
        if response.status_code in RETRY_STATUSES:
            return self.retry.delay(attempt, _retry_after(response), self._rng)
        return None

    @staticmethod
    def _answer(response: httpx.Response | None, exc: Exception | None) -> Any:
        """The 200 answer's JSON, or AuditError."""
        if exc is not None:
            raise AuditError(None, f"{type(exc).__name__}: {exc}") from exc
        assert response is not None
        if response.status_code != 200:
            raise _error_of(response)
        return response.json()


class AuditClient(_Base):
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, **kwargs: Any):
        super().__init__(url, api_key, **kwargs)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout)

    def _send(self, method: str, path: str, model: type[ResponseT], body: BaseModel | None = None) -> ResponseT:
        content = body.model_dump_json(exclude_unset=True) if body is not None else None
        return model.model_validate(self._request(method, path, content))

    def _request(self, method: str, path: str, content: str | None) -> Any:
        headers = {"Content-Type": "application/json"} if content is not None else {}
        attempt = 0
        while True:
            response, exc = None, None
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as error:  # refused, reset, timed out: the request may not have run
                exc = error
            wait = self._decide(attempt, response, exc)
            if wait is None:
                return self._answer(response, exc)
            time.sleep(wait)
            attempt += 1

    def reliance(self, request: RelianceRequest | None = None, **fields: Any) -> RelianceResponse:
        """POST /v1/reliance: reliance and risk per token and claim (two forward passes)."""
        return self._send("POST", "/v1/reliance", RelianceResponse, build_request(RelianceRequest, request, fields))

    def explain(self, request: ExplainRequest | None = None, **fields: Any) -> ExplainResponse:
        """POST /v1/explain: attribution masks and heatmaps, plus everything reliance gives."""
        return self._send("POST", "/v1/explain", ExplainResponse, build_request(ExplainRequest, request, fields))

    def info(self) -> InfoResponse:
        """GET /info: the model, the limits, the risk calibration."""
        return self._send("GET", "/info", InfoResponse)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAuditClient(_Base):
    """asyncio client: the same methods, awaited. Use as an async context manager, or await aclose()."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, max_connections: int = 64, **kwargs: Any):
        super().__init__(url, api_key, **kwargs)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout, limits=limits)

    async def _send(self, method: str, path: str, model: type[ResponseT], body: BaseModel | None = None) -> ResponseT:
        content = body.model_dump_json(exclude_unset=True) if body is not None else None
        return model.model_validate(await self._request(method, path, content))

    async def _request(self, method: str, path: str, content: str | None) -> Any:
        headers = {"Content-Type": "application/json"} if content is not None else {}
        attempt = 0
        while True:
            response, exc = None, None
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as error:
                exc = error
            wait = self._decide(attempt, response, exc)
            if wait is None:
                return self._answer(response, exc)
            await asyncio.sleep(wait)
            attempt += 1

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a body built by the caller, with the same retries; the answer as plain JSON.

        For bulk tools that store the answer as it came (`mllm-audit audit`): no validation of the
        answer by the response models, which on a small CPU costs a tenth of the service's time.
        """
        answer: dict[str, Any] = await self._request("POST", path, json.dumps(body))
        return answer

    async def reliance(self, request: RelianceRequest | None = None, **fields: Any) -> RelianceResponse:
        return await self._send(
            "POST", "/v1/reliance", RelianceResponse, build_request(RelianceRequest, request, fields)
        )

    async def explain(self, request: ExplainRequest | None = None, **fields: Any) -> ExplainResponse:
        return await self._send("POST", "/v1/explain", ExplainResponse, build_request(ExplainRequest, request, fields))

    async def info(self) -> InfoResponse:
        return await self._send("GET", "/info", InfoResponse)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
