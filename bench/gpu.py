"""GPU figures on the reference model: forward passes/s, cross-request batching, one explanation.

    python -m bench.gpu                        # on a CUDA machine; writes bench/results/gpu.json
    python -m bench.gpu --device cpu           # smoke mode: every step, tiny and fast, on the CPU

Measured in one run:

1. passes/s (images scored per second by `Scorer.log_probs`) at forward batches of 1, 8 and 32,
   for the torch backend in bfloat16 and float16 on CUDA (float32 in smoke mode), and for the
   ONNX Runtime backend (float32 and float16 graphs) when its CUDA provider is granted;
2. one full explanation's wall time (EAGLE, `--regions` regions) on the first torch dtype;
3. cross-request batching on /v1/explain with `--clients` concurrent clients: the real server
   started twice (bench/load.py's helpers), MLLM_AUDIT_MAX_BATCH_SIZE 8 against 1.

Without CUDA (and without `--device cpu`) it prints why and exits with status 2, measuring
nothing. Smoke mode's figures only show that the code runs: they are not CPU benchmarks (see
bench/backend.py and bench/load.py for those).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.backend import images_per_second
from bench.samples import bench_samples

RESULTS = Path(__file__).resolve().parent / "results"
NO_CUDA = 2  # the exit status without CUDA: nothing was measured


def scorers_to_measure(device: str, smoke: bool) -> dict[str, Any]:
    """name -> Scorer, built lazily in the order they are measured (one model on the device at a time)."""
    from mllm_audit.models.loading import load_model
    from mllm_audit.models.scorer import Scorer

    def torch_scorer(dtype: str) -> Any:
        return lambda: Scorer(load_model(device=device, dtype=dtype))

    def onnx_scorer(precision: str) -> Any:
        def build() -> Any:
            from mllm_audit.models.onnx_backend import OnnxBackend

            loaded = load_model(device="cpu", dtype="float32")
            backend = OnnxBackend(loaded, use_cuda=not smoke, cache=None, precision=precision)
            return Scorer(loaded, backend)

        return build

    if smoke:
        return {"torch float32": torch_scorer("float32"), "onnx float32 (CPU provider)": onnx_scorer("float32")}
    wanted = {"torch bfloat16": torch_scorer("bfloat16")} if torch.cuda.is_bf16_supported() else {}
    wanted["torch float16"] = torch_scorer("float16")
    if onnx_cuda_available():
        wanted["onnx float32 (CUDA provider)"] = onnx_scorer("float32")
        wanted["onnx float16 (CUDA provider)"] = onnx_scorer("float16")
    return wanted


def onnx_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def passes_per_second(scorer: Any, batch_sizes: list[int], repeats: int) -> dict[int, float]:
    import numpy as np

    s = bench_samples(5)[0]  # a colour question
    audit = scorer.prepare(s.prompt, s.truth, s.scene.image.shape[1::-1])
    rng = np.random.default_rng(0)
    image = s.scene.image
    images = [np.where(rng.random((*image.shape[:2], 1)) < 0.5, image, 0).astype(np.uint8) for _ in range(32)]
    return {b: images_per_second(scorer, [(audit, images[i % 32]) for i in range(b)], repeats) for b in batch_sizes}


def explanation_seconds(scorer: Any, regions: int) -> dict[str, Any]:
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.explainers.request import AuditRequest

    auditor = Auditor(scorer, forward_batch_size=32)
    s = bench_samples(5)[0]  # a colour question
    auditor.run([AuditRequest(s.scene.image, s.prompt, s.truth, regions=4)])  # warm up
    start = time.perf_counter()
    [result] = auditor.run([AuditRequest(s.scene.image, s.prompt, s.truth, regions=regions)])
    wall = time.perf_counter() - start
    if isinstance(result, Exception):
        raise result
    return {"regions": regions, "wall_s": wall, "forward_passes": result.stats.forward_passes}


def batching_on_off(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    from bench.load import ServerProcess, request_bodies, run_load, warm_up

    bodies = request_bodies(16, "explain", args.load_regions, args.load_budget)
    figures: dict[str, Any] = {}
    for mode, batch in (("on", 8), ("off", 1)):
        env = {
            "MLLM_AUDIT_DEVICE": args.device,
            "MLLM_AUDIT_DTYPE": dtype,
            "MLLM_AUDIT_MAX_BATCH_SIZE": str(batch),
            "MLLM_AUDIT_WORKERS": "1",
            "MLLM_AUDIT_API_SERVERS": "1",
            "MLLM_AUDIT_LOG_LEVEL": "warning",
            "MLLM_AUDIT_MAX_QUEUE": str(max(64, args.clients * 2)),
        }
        print(f"starting the server, batching {mode} (max batch size {batch}) ...", file=sys.stderr)
        with ServerProcess(env) as server:
            warm_up(server.url, "explain", bodies, {})
            result = run_load(server.url, "explain", bodies, args.clients, args.load_seconds, f"batching {mode}", {})
        figures[mode] = result.summary()
    off = figures["off"]["throughput_rps"]
    figures["ratio_on_to_off"] = figures["on"]["throughput_rps"] / off if off else None
    return figures


def print_tables(record: dict[str, Any]) -> None:
    rates = record["passes_per_second"]
    batches = list(next(iter(rates.values())))
    print("| backend | " + " | ".join(f"passes/s, batch {b}" for b in batches) + " |")
    print("| --- |" + " --- |" * len(batches))
    for name, by_batch in rates.items():
        print(f"| {name} | " + " | ".join(f"{by_batch[b]:.0f}" for b in batches) + " |")
    for name, providers in record["onnx_providers"].items():
        print(f"{name}: ONNX Runtime granted {providers}")
    e = record["explanation"]
    print(
        f"\none EAGLE explanation ({e['backend']}, {e['regions']} regions): {e['wall_s']:.2f} s, "
        f"{e['forward_passes']} forward passes"
    )
    load = record["batching"]
    print(f"\n/v1/explain, {record['args']['clients']} clients:")
    print("| batching | requests/s | p50 ms | p95 ms | mean batch | forward passes/s | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("on", "off"):
        r = load[mode]
        print(
            f"| {mode} | {r['throughput_rps']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['mean_batch_size']} | "
            f"{r['forward_passes_per_s']} | {sum(r['errors'].values())} |"
        )
    ratio = load["ratio_on_to_off"]
    print(f"throughput ratio, batching on / off: {ratio:.2f}x" if ratio else "throughput ratio: no requests answered")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu runs the smoke mode")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per forward batch size")
    ap.add_argument("--regions", type=int, default=64, help="regions of the timed explanation")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the batching comparison")
    ap.add_argument("--load-seconds", type=float, default=20.0, help="seconds of load per mode")
    ap.add_argument("--load-regions", type=int, default=16, help="regions per /v1/explain request of the load")
    ap.add_argument("--load-budget", type=int, default=200, help="max_forward_passes per request of the load")
    ap.add_argument("--json", type=Path, help="where to write the figures (default bench/results/gpu[-cpu-smoke].json)")
    args = ap.parse_args(argv)
    smoke = args.device == "cpu"
    if not smoke and not torch.cuda.is_available():
        print(
            f"bench/gpu.py measures on CUDA, and torch {torch.__version__} sees no CUDA device here; nothing "
            "was measured. Run it on a GPU machine with a CUDA build of torch, or with --device cpu for the "
            "smoke mode.",
            file=sys.stderr,
        )
        return NO_CUDA
    if smoke:  # tiny and fast: only proves that every step runs
        args.repeats, args.regions = 1, 8
        args.clients, args.load_seconds, args.load_regions, args.load_budget = 2, 2.0, 4, 12
        torch.set_num_threads(1)

    builders = scorers_to_measure(args.device, smoke)
    rates: dict[str, dict[int, float]] = {}
    providers: dict[str, list[str]] = {}
    explanation: dict[str, Any] = {}
    for name, build in builders.items():
        scorer = build()
        rates[name] = passes_per_second(scorer, [1, 8, 32], args.repeats)
        if name.startswith("onnx"):
            providers[name] = scorer.run_model.providers
        elif not explanation:
            explanation = {"backend": name, **explanation_seconds(scorer, args.regions)}
        del scorer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    first_dtype = explanation["backend"].removeprefix("torch ")
    record = {
        "smoke": smoke,
        "machine": {
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if not smoke else "cpu",
            "torch": torch.__version__,
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "passes_per_second": rates,
        "onnx_providers": providers,
        "explanation": explanation,
        "batching": batching_on_off(args, first_dtype),
    }
    print_tables(record)
    if smoke:
        print("\nsmoke mode (--device cpu): tiny settings that exercise the code; these are not benchmark figures")
    out = args.json or RESULTS / ("gpu-cpu-smoke.json" if smoke else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
