"""Optional API key: `Authorization: Bearer KEY` or `X-API-Key: KEY`, on when configured."""

from __future__ import annotations

import hmac

from mllm_audit.service.config import Settings

# Always open: the API's own description. The probes and /metrics are open unless protected.
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PROBE_PATHS = ("/health", "/livez", "/readyz")


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a client sent, from Authorization (Bearer) or X-API-Key; headers lower-cased."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def key_matches(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    # headers arrive decoded as latin-1 (one char per byte): back to the bytes the client sent
    return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode("utf-8"))


def needs_key(path: str, settings: Settings) -> bool:
    if not settings.api_key:
        return False
    if path in OPEN_PATHS or path == "/ui" or path.startswith(("/ui/", "/docs/assets/")):  # static files, no data
        return False
    if path in PROBE_PATHS:
        return settings.protect_health
    if path in ("/metrics", "/metrics/"):
        return settings.protect_metrics
    return True
