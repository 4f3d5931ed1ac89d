"""Where `mllm-audit audit` and `mllm-audit check` send their requests: a running service (--url,
through AsyncAuditClient) or the model in this process (--model, through the service worker's own
AuditAPI: decode_request, predict over a batch, encode_response, as `mllm-audit explain` does).

Both take a list of (endpoint, request body) and give, per request, the parsed response body
(a dict) or an AuditError; a batch never fails as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import Any

from mllm_audit.service.client import AsyncAuditClient, AuditError, RetryPolicy

Outcome = dict[str, Any] | AuditError


class HttpBackend:
    """One request per slot; the service batches concurrent requests itself."""

    batch = 1

    def __init__(self, url: str, api_key: str | None, concurrency: int, timeout: float, retries: int = 4):
        self.slots = concurrency
        retry = RetryPolicy(attempts=retries + 1)
        self.client = AsyncAuditClient(url, api_key=api_key, timeout=timeout, max_connections=concurrency, retry=retry)

    async def start(self) -> dict[str, Any]:
        """GET /info: fails fast (AuditError, status None) when the service cannot be reached."""
        info = await self.client.info()
        return {"id": info.model.id, "family": info.model.family, "risk": info.risk.model_dump()}

    async def run(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for endpoint, body in requests:
            try:
                outcomes.append(await self.client.post_json(f"/v1/{endpoint}", body))
            except AuditError as exc:
                outcomes.append(exc)
        return outcomes

    async def close(self) -> None:
        await self.client.aclose()


class InProcessBackend:
    """The model loaded here; a slot runs `batch` requests through one predict call, as a worker would."""

    slots = 1

    def __init__(self, settings: Any, concurrency: int):
        self.settings = settings
        self.batch = concurrency
        self.api: Any = None

    async def start(self) -> dict[str, Any]:
        await asyncio.to_thread(self._load)
        from mllm_audit.service.calibrate import risk_block

        block = self.api.model_block
        return {"id": block["id"], "family": block["family"], "risk": risk_block(self.api.auditor.calibration)}

    def _load(self) -> None:
        import torch
        from mllm_audit.models.loading import ModelLoadError, choose_device
        from mllm_audit.service import logs
        from mllm_audit.service.api import AuditAPI, cpu_threads

        logs.configure(self.settings.log_level, stream=sys.stderr)
        api = AuditAPI(self.settings)
        api.configure_logs = False
        try:
            api.setup(str(choose_device(self.settings.device)))
        except ModelLoadError as exc:
            raise AuditError(None, f"model: {exc}") from None
        torch.set_num_threads(cpu_threads(self.settings))
        self.api = api

    async def run(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        return await asyncio.to_thread(self._run, requests)

    def _run(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        from mllm_audit.service.api import Envelope, Failure
        from mllm_audit.service.client import encode_image
        from mllm_audit.service.schemas import ExplainRequest, RelianceRequest

        outcomes: list[Outcome | None] = [None] * len(requests)
        decoded, places = [], []
        for i, (endpoint, body) in enumerate(requests):
            model = ExplainRequest if endpoint == "explain" else RelianceRequest
            try:
                validated = model.model_validate({**body, "image": encode_image(body["image"])})
            except ValueError as exc:
                outcomes[i] = AuditError(422, str(exc))
                continue
            envelope = Envelope(
                endpoint,
                f"local-{i}",
                time.monotonic(),
                math.inf,  # in-process there is no client to time out
                validated.model_dump(mode="json"),
                frozenset(validated.model_fields_set),
            )
            decoded.append(self.api.decode_request(envelope))
            places.append(i)
        if decoded:
            for i, output in zip(places, self.api.predict(decoded)):
                encoded = self.api.encode_response(output)
                if isinstance(encoded, Failure):
                    outcomes[i] = AuditError(encoded.status, encoded.detail)
                else:
                    outcomes[i] = json.loads(encoded[0])
        return [o if o is not None else AuditError(500, "no outcome") for o in outcomes]

    async def close(self) -> None:
        pass


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--url / --model and their companions, shared by audit and check."""
    parser.add_argument("--url", default=None, help="a running service (default: the model in this process, --model)")
    parser.add_argument("--api-key", default=None, help="the service's API key (env MLLM_AUDIT_API_KEY)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one answer")
    parser.add_argument("--retries", type=int, default=4, help="retries of a request on 503 or a connection error")


def make_backend(args: argparse.Namespace, settings: Any, concurrency: int) -> HttpBackend | InProcessBackend:
    import os

    if args.url:
        if settings.model:
            raise ValueError("give --url (a running service) or --model (in this process), not both")
        key = args.api_key or os.environ.get("MLLM_AUDIT_API_KEY") or None
        return HttpBackend(args.url, key, concurrency, args.timeout, args.retries)
    return InProcessBackend(settings, concurrency)


async def run_all(backend: HttpBackend | InProcessBackend, requests: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
    """Every request, `backend.batch` at a time on `backend.slots` slots; outcomes in request order."""
    chunks = [requests[i : i + backend.batch] for i in range(0, len(requests), backend.batch)]
    slots = asyncio.Semaphore(backend.slots)

    async def one(chunk: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        async with slots:
            return await backend.run(chunk)

    done = await asyncio.gather(*(one(c) for c in chunks))
    return [outcome for chunk in done for outcome in chunk]
