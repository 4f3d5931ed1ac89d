"""Prometheus metrics, summed over every process of the service (multiprocess mode).

The service runs several processes: the main one, the HTTP API servers (forked) and the
model workers (spawned). Each writes its samples to files in PROMETHEUS_MULTIPROC_DIR and
`GET /metrics/` adds them up. prometheus_client picks its storage when it is first imported,
so `configure()` must run before anything imports it: `mllm_audit.service.cli` calls it first thing,
and the child processes inherit the variable.

Where each metric is counted:
  main:        worker_restarts_total
  API server:  requests_total{endpoint,status}, request_latency_seconds{endpoint},
               requests_cancelled_total{reason} (disconnect: status 499 in requests_total; deadline: 504)
  worker:      queue_wait_seconds, batch_size, forward_passes_total, images_scored_total,
               explanation_seconds{method}, tokens_total{risk_label}, answers_total{risk_label},
               claims_total{risk_label}, claim_risk (its _sum: the claims' summed risk scores),
               model_info{model_id,family,revision}
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "mllm_audit_"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
RISK_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 0.99)


def configure(metrics_dir: str = "", clear: bool = True) -> Path:
    """Point prometheus_client at a multiprocess directory (a fresh temporary one when empty)."""
    if "prometheus_client" in sys.modules and os.environ.get(ENV) is None:
        raise RuntimeError(
            "prometheus_client was imported before the metrics directory was set; "
            "call mllm_audit.service.metrics.configure() first"
        )
    if metrics_dir:
        path = Path(metrics_dir)
        path.mkdir(parents=True, exist_ok=True)
        if clear:  # samples of a previous run would be added to this one's
            for entry in path.iterdir():
                if entry.is_file() and entry.suffix == ".db":
                    entry.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="mllm-audit-metrics-"))
        owner, made = os.getpid(), path

        def remove() -> None:  # only the process that made it removes it (forked children run atexit too)
            if os.getpid() == owner:
                shutil.rmtree(made, ignore_errors=True)

        atexit.register(remove)
    os.environ[ENV] = str(path)
    return path


def multiprocess_dir() -> str | None:
    return os.environ.get(ENV)


@cache
def registry_metrics():
    """The metric objects, created on first use (after configure())."""
    from prometheus_client import Counter, Gauge, Histogram

    class Metrics:
        requests = Counter(
            PREFIX + "requests_total", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"]
        )
        latency = Histogram(
            PREFIX + "request_latency_seconds", "End-to-end request latency", ["endpoint"], buckets=LATENCY_BUCKETS
        )
        queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "Time from arrival until a model worker takes the request",
            buckets=QUEUE_BUCKETS,
        )
        batch_size = Histogram(
            PREFIX + "batch_size", "Requests LitServe batched together (one sample per batch)", buckets=BATCH_BUCKETS
        )
        forward_passes = Counter(
            PREFIX + "forward_passes_total", "Images run through the model (one masked image = one pass)"
        )
        images_scored = Counter(PREFIX + "images_scored_total", "Client images audited (one per successful request)")
        explanation = Histogram(
            PREFIX + "explanation_seconds",
            "Time spent auditing, by method (reliance for /v1/reliance)",
            ["method"],
            buckets=LATENCY_BUCKETS,
        )
        tokens = Counter(PREFIX + "tokens_total", "Audited answer tokens by risk label", ["risk_label"])
        answers = Counter(PREFIX + "answers_total", "Audited answers by summary risk label", ["risk_label"])
        claims = Counter(PREFIX + "claims_total", "Audited claims by risk label", ["risk_label"])
        # with a calibration, a claim's risk score estimates its probability of being hallucinated:
        # rate(claim_risk_sum) / rate(claims_total) is the estimated hallucination rate of the claims
        claim_risk = Histogram(PREFIX + "claim_risk", "Risk scores of the audited claims", buckets=RISK_BUCKETS)
        cancelled = Counter(
            PREFIX + "requests_cancelled_total",
            "Audit requests given up before their answer: the client disconnected or the deadline passed",
            ["reason"],
        )
        worker_restarts = Counter(PREFIX + "worker_restarts_total", "Model workers restarted after they died")
        model_info = Gauge(
            PREFIX + "model_info",
            "The model served (value 1)",
            ["model_id", "family", "revision"],
            multiprocess_mode="livemax",
        )  # a dead worker's model drops out

    return Metrics


def render_latest() -> tuple[bytes, str]:
    """The exposition text of every process's samples, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:  # in-process use (unit tests without configure()): this process's metrics only
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
