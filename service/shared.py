"""What the service's processes share beyond LitServe's queues, and the 503 they answer for each other.

LitServe's queue manager process holds it (proxies pickle into the spawned workers and survive
the fork of the API servers):

  busy       worker id -> [(response queue id, uid), ...] of the batch the worker is running, so
             the supervisor can answer them 503 when that worker dies
  cancelled  uid -> time.time() of requests whose client is gone (disconnect or deadline): the
             worker skips them if queued, and stops them at its next engine round if running
  draining   set on SIGTERM: readiness fails, new and queued requests get 503
  progress   uid -> (forward passes so far, budget or None) of running requests whose client
             asked for a stream (`stream: true`): the worker writes it, the API server reads it
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from litserve.utils import LitAPIStatus, LoopResponseType


@dataclass
class Failure:
    """One request's error, sent through the response queue instead of a body (its API server answers it)."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Shared:
    busy: Any  # DictProxy[str, list[tuple[int, str]]]
    cancelled: Any  # DictProxy[str, float]
    draining: Any  # EventProxy
    progress: Any = field(default_factory=dict)  # DictProxy[str, tuple[int, int | None]]

    @classmethod
    def create(cls, manager) -> Shared:
        return cls(busy=manager.dict(), cancelled=manager.dict(), draining=manager.Event(), progress=manager.dict())

    def cancel(self, uid: str) -> None:
        self.cancelled[uid] = time.time()

    def forget(self, uids) -> None:
        for uid in uids:
            self.cancelled.pop(uid, None)

    def prune(self, older_than: float) -> None:
        """Entries of requests that finished while their client left: nobody else removes them."""
        cutoff = time.time() - older_than
        for uid, when in list(self.cancelled.items()):
            if when < cutoff:
                self.cancelled.pop(uid, None)


def retry_after(estimate: float) -> str:
    """Whole seconds, spread over [estimate, 1.5 x estimate] so that refused clients do not all return at once."""
    seconds = max(1.0, min(60.0, estimate))
    return str(round(seconds * random.uniform(1.0, 1.5)) or 1)


def send_unavailable(transport, consumer_id: int, uid: str, detail: str, estimate: float = 1.0) -> None:
    """Answer one queued request 503 in place of the worker (its API server turns the Failure into the response)."""
    failure = Failure(503, detail, {"Retry-After": retry_after(estimate)})
    transport.send((uid, (failure, LitAPIStatus.OK, LoopResponseType.REGULAR, None)), consumer_id=consumer_id)
