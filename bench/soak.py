"""Soak test over loopback: mixed traffic for a long, bounded time; memory growth, errors and tail latency.

    python bench/soak.py                                  # 10 minutes, the bundled reference model
    python bench/soak.py --minutes 2 --json bench/results/soak.json

It starts the real server (tests.server_process.ServerProcess: `mllm-audit serve`, one API server,
one worker) and runs closed-loop clients that each pick, per request: a reliance audit (55%),
an EAGLE explanation with a PNG heatmap (25%), a TAM map (10%), a client that gives up after
0.3 s on a long explanation (5%: cancellation), or bytes that are not an image (5%: a 415 that
must stay a 415). Every 10 s it adds up the resident memory (RSS) of every process of the server.

Reported: requests by outcome, errors (any 5xx or dropped connection; the 415s and the
abandoned requests are expected), p50/p99 latency per kind, and RSS growth per 1,000 requests:
the slope of a least-squares line of total RSS against requests answered, fitted after the
first fifth of the run (model loading and allocator warm-up), with its standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.load import request_bodies  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

KINDS = (("reliance", 0.55), ("explain", 0.25), ("tam", 0.10), ("abandoned", 0.05), ("bad_image", 0.05))
EXPECTED = {"bad_image": {"415"}, "abandoned": {"ReadTimeout"}}  # outcomes that are not errors


def group_rss_mb(group: int) -> float:
    """Resident memory of every process in the server's process group (its own session)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # pgrp
                total += int(fields[21]) * page  # rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def bodies_by_kind(regions: int, budget: int) -> dict[str, list[dict]]:
    reliance = request_bodies(16, "reliance", regions, budget)
    explain = [{**b, "heatmap": {"encoding": "png"}} for b in request_bodies(16, "explain", regions, budget)]
    tam = [{**b, "method": "tam", "heatmap": {"encoding": "png"}} for b in reliance]
    heavy = [{**b, "method": "eagle_greedy", "regions": 32, "max_forward_passes": 2000} for b in explain]
    bad = [{**b, "image": "bm90IGFuIGltYWdl"} for b in reliance[:2]]  # base64 of "not an image"
    return {"reliance": reliance, "explain": explain, "tam": tam, "abandoned": heavy, "bad_image": bad}


def soak(url: str, group: int, minutes: float, clients: int, regions: int, budget: int) -> dict:
    bodies = bodies_by_kind(regions, budget)
    outcomes: dict[str, dict[str, int]] = {kind: {} for kind, _ in KINDS}
    latencies: dict[str, list[float]] = {kind: [] for kind, _ in KINDS}
    answered = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + minutes * 60

    def client(index: int) -> None:
        rng = random.Random(index)
        names, weights = zip(*KINDS)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                kind = rng.choices(names, weights)[0]
                path = "/v1/reliance" if kind in ("reliance", "bad_image") else "/v1/explain"
                sent = time.monotonic()
                try:
                    r = http.post(path, json=rng.choice(bodies[kind]), timeout=0.3 if kind == "abandoned" else 120)
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[kind][outcome] = outcomes[kind].get(outcome, 0) + 1
                    answered[0] += 1
                    if outcome == "200":
                        latencies[kind].append((time.monotonic() - sent) * 1000)

    samples = [(0, group_rss_mb(group))]
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    while time.monotonic() < stop_at:
        time.sleep(min(10.0, max(0.0, stop_at - time.monotonic())))
        with lock:
            samples.append((answered[0], group_rss_mb(group)))
        print(f"  {answered[0]:6d} requests, RSS {samples[-1][1]:8.1f} MiB", file=sys.stderr, flush=True)
    for thread in threads:
        thread.join()

    fitted = samples[len(samples) // 5 :]
    x = np.array([n for n, _ in fitted], dtype=float)
    y = np.array([mb for _, mb in fitted])
    slope, stderr = _slope(x, y)
    errors = {
        kind: {o: n for o, n in counts.items() if o != "200" and o not in EXPECTED.get(kind, set())}
        for kind, counts in outcomes.items()
    }
    return {
        "minutes": minutes,
        "clients": clients,
        "requests": answered[0],
        "outcomes": outcomes,
        "errors": {kind: e for kind, e in errors.items() if e},
        "latency_ms": {
            kind: {"p50": _pct(ms, 50), "p99": _pct(ms, 99), "n": len(ms)} for kind, ms in latencies.items() if ms
        },
        "rss_mib": {"start": round(samples[0][1], 1), "fitted_from": round(fitted[0][1], 1), "end": round(y[-1], 1)},
        "rss_growth_mib_per_1000_requests": {"slope": round(slope * 1000, 2), "stderr": round(stderr * 1000, 2)},
        "samples": samples,
    }


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    design = np.vstack([x, np.ones_like(x)]).T
    coef, residuals, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    sigma2 = float(residuals[0]) / dof if residuals.size else 0.0
    return float(coef[0]), float(np.sqrt(sigma2 / np.sum((x - x.mean()) ** 2)))


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent closed-loop clients")
    parser.add_argument("--regions", type=int, default=8, help="regions per EAGLE explanation")
    parser.add_argument("--budget", type=int, default=60, help="max_forward_passes per EAGLE explanation")
    parser.add_argument("--cpu-threads", type=int, default=0, help="MLLM_AUDIT_CPU_THREADS")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    env = {"MLLM_AUDIT_MAX_BATCH_SIZE": "8"}
    if args.cpu_threads:
        env["MLLM_AUDIT_CPU_THREADS"] = str(args.cpu_threads)
    with ServerProcess(env) as server:
        assert server.proc is not None
        figures = soak(server.url, server.proc.pid, args.minutes, args.clients, args.regions, args.budget)
        figures["server_log_tracebacks"] = server.log_text().count("Traceback")
    report = {k: v for k, v in figures.items() if k != "samples"}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["errors"] or figures["server_log_tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main())
