"""structlog JSON logs: one line per event on stdout, in every process of the service.

What is logged per request (service.middleware): request_id, endpoint, status, timings,
forward passes and the risk summary. Image bytes are never logged; prompts and answers only
when MLLM_AUDIT_DEBUG is on.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", stream=None) -> None:
    lvl = LEVELS.get(level.lower(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_process,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # one write per line (message and newline together): processes sharing stdout never
        # splice their lines, which print()'s two writes did on an unbuffered stdout
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Everything else becomes JSON lines too: other libraries' stdlib logs (LitServe's and
    # uvicorn's warnings and errors) and Python warnings (pydantic's, torch's...).
    root = logging.getLogger()
    root.handlers[:] = [_JSONLines()]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    litserve = logging.getLogger("litserve")  # LitServe puts a plain-text handler here at import and in run()
    litserve.handlers.clear()
    litserve.propagate = True
    litserve.setLevel(max(lvl, logging.WARNING))
    logging.getLogger("uvicorn.error").setLevel(max(lvl, logging.WARNING))


class _JSONLines(logging.Handler):
    """A stdlib log record as one of the service's JSON lines, with the library's logger name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            get(record.name).log(record.levelno, record.getMessage(), logger=record.name, exc_info=record.exc_info)
        except Exception:
            self.handleError(record)


def _add_process(logger, method_name, event_dict):
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def get(name: str = "mllm_audit"):
    return structlog.get_logger(name)
