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
    # LitServe's and uvicorn's own stdlib logs: warnings and errors only, on stderr
    logging.getLogger("litserve").setLevel(max(lvl, logging.WARNING))
    logging.getLogger("uvicorn.error").setLevel(max(lvl, logging.WARNING))


def _add_process(logger, method_name, event_dict):
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def get(name: str = "mllm_audit"):
    return structlog.get_logger(name)
