"""The HTTP/1.1 protocol of the API servers: uvicorn's h11 one, with a deadline on request headers.

uvicorn has no header read timeout: a client that sends a request's headers a byte at a time
(slow loris) holds its connection for as long as it likes, and httptools, uvicorn's faster
parser, has no cap on the size of the headers either. h11 caps them (h11_max_incomplete_event_size)
and this class closes a connection whose request headers are not complete `header_timeout`
seconds after it opened or after its previous response. Body pauses are the middleware's
(MLLM_AUDIT_BODY_TIMEOUT).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024  # headers still incomplete past this: 400 (h11); complete but larger: 431 (middleware)


class GuardedH11Protocol(H11Protocol):
    header_timeout = 10.0  # seconds; `with_header_timeout` makes a class with the service's setting

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # the next request on this connection gets the same time for its headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _headers_overdue(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # headers still incomplete
            self.transport.close()


def with_header_timeout(seconds: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": seconds})
