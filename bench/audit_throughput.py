"""Does `mllm-audit audit --concurrency 8` keep the service as busy as bench/load.py's clients?

    python bench/audit_throughput.py [--cases 1000] [--duration 20] [--concurrency 8]

One server (tests.server_process.ServerProcess, as bench/load.py starts it: one API server, one
worker, batching on), measured in one run: first bench/load.py's closed-loop clients on
/v1/reliance for --duration seconds, then `mllm-audit audit` (in this process, through
service.cli.main, --url to the same server) over --cases reference scenes written as JSONL. Prints
both throughputs and their ratio, and the growth of this process's peak memory over the audit.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.load import request_bodies, run_load, warm_up  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402


def write_cases(folder: Path, n: int) -> Path:
    from mllm_audit.models.reference import world

    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / "cases.jsonl").open("w") as fh:
        for i in range(n):
            scene = world.render_scene(np.random.default_rng(95_000 + i))
            obj = scene.objects[i % len(scene.objects)]
            Image.fromarray(scene.image).save(folder / "images" / f"{i}.png")
            case = {"id": str(i), "image": f"images/{i}.png", "prompt": f"What color is the {obj.shape}?"}
            fh.write(json.dumps(case | {"answer": obj.colour}) + "\n")
    return folder / "cases.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of bench/load.py load")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    from mllm_audit.service import cli

    env = {
        "MLLM_AUDIT_MAX_BATCH_SIZE": "8",
        "MLLM_AUDIT_WORKERS": "1",
        "MLLM_AUDIT_API_SERVERS": "1",
        "MLLM_AUDIT_LOG_LEVEL": "warning",
        "MLLM_AUDIT_MAX_QUEUE": "64",
    }
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(env) as server:
        data = write_cases(Path(tmp), args.cases)
        bodies = request_bodies(16, "reliance", 8, None)
        warm_up(server.url, "reliance", bodies, {})
        load = run_load(server.url, "reliance", bodies, args.concurrency, args.duration, "load.py", {})
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        status = cli.main(
            ["audit", str(data), "--out", f"{tmp}/results.jsonl", "--url", server.url]
            + ["--concurrency", str(args.concurrency), "--quiet"]
        )
        seconds = time.monotonic() - started
        rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    audit_rate = args.cases / seconds
    print(f"bench/load.py, {args.concurrency} clients, /v1/reliance: {load.throughput:.2f} req/s ({load.ok} ok)")
    print(f"mllm-audit audit --concurrency {args.concurrency}: {audit_rate:.2f} cases/s", end=" ")
    print(f"({args.cases} in {seconds:.1f} s)")
    print(f"ratio audit / load.py: {audit_rate / load.throughput:.2f}")
    print(f"peak memory growth of this process over the audit: {rss_growth:.1f} MiB")
    return status


if __name__ == "__main__":
    sys.exit(main())
