"""The model worker's loop: LitServe's batching, plus what crash recovery, cancellation and draining need.

LitServe collates a batch from the request queue (`get_batch_requests`), which it reads through
HoldingQueue: each request taken off goes into Shared.busy under this worker's id at once, so the
supervisor can answer it 503 if this process dies while still collecting the batch. Then, per batch:
  1. requests whose client is gone (Shared.cancelled) or whose deadline has passed are dropped:
     their API server has answered them already;
  2. while the service drains (SIGTERM) the rest are answered 503 at once: only work that had
     started before the signal runs to the end;
  3. Shared.busy keeps the batch's (response queue, uid) pairs still to be answered, so the
     supervisor can answer them 503 if this process dies before it does;
  4. decode, predict, encode (AuditAPI's hooks, which never raise), and the answers are sent.
AuditAPI.predict reads Shared.cancelled after every engine round and stops the requests in it,
and writes the forward passes of streamed requests to Shared.progress (removed here once answered).
"""

from __future__ import annotations

import time
from typing import Any

from litserve.loops.base import _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from mllm_audit.service.shared import Failure, Shared, retry_after


class HoldingQueue:
    """The request queue as LitServe's batch collation reads it: every request taken off is held."""

    def __init__(self, queue, shared: Shared, key: str):
        self.queue, self.shared, self.key = queue, shared, key
        self.taken: list[tuple[int, str]] = []

    def get(self, block: bool = True, timeout: float | None = None):
        return self._hold(self.queue.get(block=block, timeout=timeout))

    def get_nowait(self):
        return self._hold(self.queue.get_nowait())

    def _hold(self, item):
        consumer, uid = item[0], item[1]
        if uid is not None:  # not LitServe's stop sentinel
            self.taken.append((consumer, uid))
            self.shared.busy[self.key] = list(self.taken)
        return item


class AuditLoop(BatchedLoop):
    def __call__(
        self,
        lit_api,
        device,
        worker_id,
        request_queue,
        transport,
        workers_setup_status,
        callback_runner,
        lit_spec=None,
        stream=False,
    ):
        shared = lit_api.shared
        key = str(worker_id)
        # what predict asks and tells after each engine round: cancellations, and progress of streamed requests
        lit_api.cancelled_uids = lambda: set(shared.cancelled.keys())
        lit_api.report_progress = shared.progress.update
        holding = HoldingQueue(request_queue, shared, key)
        while True:
            holding.taken = []
            try:
                batch, _timed_out = self.get_batch_requests(lit_api, holding, transport)
            except _StopLoopError:
                return
            # _timed_out waited past LitServe's timeout (the request timeout): answered 504 by their API server
            if batch:
                self.run_batch(lit_api, shared, key, batch, transport)
            elif holding.taken:
                shared.busy[key] = []

    def run_batch(self, lit_api, shared: Shared, key: str, batch: list, transport) -> None:
        gone = set(shared.cancelled.keys())
        now = time.monotonic()
        live = []
        for consumer, uid, envelope in batch:
            if uid in gone or envelope.deadline < now:
                continue
            if shared.draining.is_set():
                failure = Failure(503, "the service is shutting down; retry", {"Retry-After": retry_after(1.0)})
                self.send(transport, consumer, uid, failure)
            else:
                live.append((consumer, uid, envelope))
        shared.forget(uid for _, uid, _ in batch if uid in gone)
        shared.busy[key] = [(consumer, uid) for consumer, uid, _ in live]
        if not live:
            return
        uids = [uid for _, uid, _ in live]
        for _, uid, envelope in live:
            envelope.uid = uid
        streamed = [uid for _, uid, envelope in live if envelope.body.get("stream")]
        try:
            decoded = [lit_api.decode_request(envelope) for _, _, envelope in live]
            outputs = lit_api.predict(decoded)
            answers: list[Any] = [lit_api.encode_response(output) for output in outputs]
        except Exception as exc:  # the hooks turn every error into a Failure; this is the last resort
            answers = [Failure(500, f"internal error in the model worker: {type(exc).__name__}")] * len(live)
        for uid in streamed:
            shared.progress.pop(uid, None)
        for (consumer, uid, _), answer in zip(live, answers):
            self.send(transport, consumer, uid, answer)
        shared.busy[key] = []
        shared.forget(uids)

    def send(self, transport, consumer: int, uid: str, answer: Any) -> None:
        self.put_response(transport, consumer, uid, answer, LitAPIStatus.OK, LoopResponseType.REGULAR)
