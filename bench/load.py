"""Load test over loopback: N concurrent clients for a bounded time against /v1/reliance and
/v1/explain; throughput, p50/p95/p99 latency and errors, and the throughput ratio of dynamic
batching on (MLLM_AUDIT_MAX_BATCH_SIZE > 1) versus off (= 1), measured in the same run.

    python bench/load.py                                # both modes, the bundled reference model
    python bench/load.py --clients 16 --duration 20 --regions 8 --json bench/results/load.json
    python bench/load.py --url http://127.0.0.1:8000    # one running server, no comparison

Without --url it starts the real server twice (tests.server_process.ServerProcess, the tests'
helper: the same `mllm-audit serve` a user runs), once per mode, with one API server and one
worker, so the only difference is batching. Each client is closed-loop: it sends its next
request as soon as the previous one is answered. Requests are colour questions about rendered
reference scenes.

Run it from a checkout (`python bench/load.py` from the repository root, or `make load`): the
helper is imported from the repository's tests/ package, which this script puts on sys.path
itself, so neither an installed `tests` package nor PYTHONPATH is needed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.server_process import ServerProcess  # noqa: E402


@dataclass
class Result:
    mode: str
    endpoint: str
    clients: int
    seconds: float
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    batch_sizes: list[int] = field(default_factory=list, repr=False)
    forward_passes: int = 0

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "endpoint": self.endpoint,
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "ok": self.ok,
            "errors": self.errors,
            "throughput_rps": round(self.throughput, 3),
            "p50_ms": round(self.percentile(50), 1),
            "p95_ms": round(self.percentile(95), 1),
            "p99_ms": round(self.percentile(99), 1),
            "mean_batch_size": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else None,
            "forward_passes_per_s": round(self.forward_passes / self.seconds, 1) if self.seconds else 0.0,
        }


def request_bodies(n: int, endpoint: str, regions: int, budget: int | None) -> list[dict]:
    from mllm_audit.models.reference import world

    bodies = []
    for seed in range(n):
        scene = world.render_scene(np.random.default_rng(90_000 + seed))
        obj = random.Random(seed).choice(scene.objects)
        buf = io.BytesIO()
        Image.fromarray(scene.image).save(buf, format="PNG")
        body = {
            "image": base64.b64encode(buf.getvalue()).decode(),
            "prompt": f"What color is the {obj.shape}?",
            "answer": obj.colour,
        }
        if endpoint == "explain":
            body.update(regions=regions, max_forward_passes=budget, heatmap={"encoding": "none"})
        bodies.append(body)
    return bodies


def run_load(
    url: str, endpoint: str, bodies: list[dict], clients: int, duration: float, mode: str, headers: dict[str, str]
) -> Result:
    result = Result(mode, endpoint, clients, duration)
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + duration

    def client(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=url, headers=headers, timeout=max(60.0, duration * 4)) as http:
            while time.monotonic() < stop_at:
                body = rng.choice(bodies)
                sent = time.monotonic()
                try:
                    r = http.post(f"/v1/{endpoint}", json=body)
                    status = str(r.status_code)
                    data = r.json() if r.status_code == 200 else None
                except httpx.HTTPError as exc:
                    status, data = type(exc).__name__, None
                elapsed = (time.monotonic() - sent) * 1000
                with lock:
                    if data is not None:
                        result.ok += 1
                        result.latencies_ms.append(elapsed)
                        result.batch_sizes.append(data["stats"]["batch_size"])
                        result.forward_passes += data["stats"]["forward_passes"]
                    else:
                        result.errors[status] = result.errors.get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # requests still running at stop_at finish and count: the time is until the last answer
    result.seconds = time.monotonic() - start
    return result


def warm_up(url: str, endpoint: str, bodies: list[dict], headers: dict[str, str]) -> None:
    for body in bodies[:2]:
        httpx.post(f"{url}/v1/{endpoint}", json=body, headers=headers, timeout=120)


def print_table(results: list[Result]) -> None:
    cols = (
        "mode",
        "endpoint",
        "clients",
        "ok",
        "errors",
        "throughput_rps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "mean_batch_size",
        "forward_passes_per_s",
    )
    rows = [
        [
            str(r.summary()[c]) if c != "errors" else (",".join(f"{k}:{v}" for k, v in r.errors.items()) or "0")
            for c in cols
        ]
        for r in results
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="measure this running server only (no batching comparison)")
    parser.add_argument("--api-key", default="", help="API key for --url")
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint and mode")
    parser.add_argument("--endpoints", default="reliance,explain", help="comma-separated: reliance, explain")
    parser.add_argument("--regions", type=int, default=8, help="regions per explain request")
    parser.add_argument("--budget", type=int, default=60, help="max_forward_passes per explain request")
    parser.add_argument("--max-batch-size", type=int, default=8, help="MLLM_AUDIT_MAX_BATCH_SIZE of the 'on' mode")
    parser.add_argument("--batch-timeout", type=float, default=0.05, help="MLLM_AUDIT_BATCH_TIMEOUT of both modes")
    parser.add_argument("--model", default="", help="model directory (default: the bundled reference model)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="MLLM_AUDIT_CPU_THREADS of both modes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    bodies = {e: request_bodies(16, e, args.regions, args.budget) for e in endpoints}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    results: list[Result] = []
    if args.url:
        for endpoint in endpoints:
            warm_up(args.url, endpoint, bodies[endpoint], headers)
            results.append(
                run_load(args.url, endpoint, bodies[endpoint], args.clients, args.duration, "server", headers)
            )
    else:
        for mode, batch in (("batching on", args.max_batch_size), ("batching off", 1)):
            env = {
                "MLLM_AUDIT_MAX_BATCH_SIZE": str(batch),
                "MLLM_AUDIT_BATCH_TIMEOUT": str(args.batch_timeout),
                "MLLM_AUDIT_WORKERS": "1",
                "MLLM_AUDIT_API_SERVERS": "1",
                "MLLM_AUDIT_LOG_LEVEL": "warning",
                "MLLM_AUDIT_MAX_QUEUE": str(max(64, args.clients * 2)),
                "MLLM_AUDIT_MODEL": args.model,
                "MLLM_AUDIT_CPU_THREADS": str(args.cpu_threads),
            }
            print(f"starting the server ({mode}: max_batch_size={batch}) ...", file=sys.stderr)
            with ServerProcess(env) as server:
                for endpoint in endpoints:
                    warm_up(server.url, endpoint, bodies[endpoint], headers)
                    results.append(
                        run_load(server.url, endpoint, bodies[endpoint], args.clients, args.duration, mode, headers)
                    )
                    print(f"  {endpoint}: {results[-1].throughput:.2f} req/s", file=sys.stderr)

    print_table(results)
    ratios = {}
    if not args.url:
        for endpoint in endpoints:
            on = next(r for r in results if r.mode == "batching on" and r.endpoint == endpoint)
            off = next(r for r in results if r.mode == "batching off" and r.endpoint == endpoint)
            ratios[endpoint] = round(on.throughput / off.throughput, 2) if off.throughput else None
            print(f"throughput ratio, batching on / off, /v1/{endpoint}: {ratios[endpoint]}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "results": [r.summary() for r in results],
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    return 0 if all(not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
