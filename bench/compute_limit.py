"""How close is an explanation to compute-bound? Wall time against forward passes x forward time.

    python -m bench.compute_limit [--n 4] [--regions 64] [--methods eagle,eagle_greedy] [--threads 2]
                                  [--device cpu] [--json bench/results/compute_limit.json]

In one run, on the reference model and `--n` held-out scenes (bench/samples.py):

1. the model's forward time per image, at forward batches of 1, 8 and 32 (the forward call
   alone, as the scorer makes it; the best of them is the engine's best batch size);
2. each explanation's wall time, its forward passes, and `compute` = passes x that best
   per-image forward time (the better of batches 8 and 32, measured again just before the
   explanation on its own sequence: a CPU's speed drifts within a run); `ratio` = wall /
   compute (the target is <= 1.1);
3. how much of the gap is the forward itself, run at the smaller batches the search makes
   (`mean batch`, `forward / compute`), and where the rest goes: the phases of
   bench/phase_timer.py (image preparation, masking, the search's Python, batching, log-prob
   readout, the engine, the rest of the audit);
4. what preparing a batch of 32 masked copies of one image costs per image, at the reference
   model's 96 px and LLaVA-1.5's 336 px, on `--device`: composing the pixels, then reading the
   processor's lookup table for each copy, against the scorer's way (explainers/masking.py's
   `MaskedImage`: the image and the baseline read off the table once, then composed).

Prints a table per method and writes every figure as JSON. On a shared 2-core machine the
figures move from run to run; compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.masking import MaskedImage
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.models.loading import load_model
from mllm_audit.models.pixel_lookup import PixelLookup
from mllm_audit.models.scorer import Scorer

from bench.phase_timer import PhaseTimer, breakdown
from bench.samples import bench_samples

RESULTS = Path(__file__).resolve().parent / "results"


def forward_seconds_per_image(scorer: Scorer, s: Any, batch_sizes: list[int], repeats: int) -> dict[int, float]:
    """The forward call's seconds per image at each batch size (masked copies of the sample's scene,
    its prompt and answer: a caption's longer sequence costs more than a one-word answer's)."""
    audit = scorer.prepare(s.prompt, s.truth, s.scene.image.shape[1::-1])
    rng = np.random.default_rng(0)
    images = [np.where(rng.random((*s.scene.image.shape[:2], 1)) < 0.5, s.scene.image, 0).astype(np.uint8)]
    images *= max(batch_sizes)
    timer = PhaseTimer(scorer)
    per_image = {}
    with timer.active():
        for batch in batch_sizes:
            pairs = [(audit, image) for image in images[:batch]]
            scorer.log_probs(pairs)  # warm up this shape
            timer.reset()
            for _ in range(repeats):
                scorer.log_probs(pairs)
            per_image[batch] = timer.seconds["forward"] / (repeats * batch)
    return per_image


def masked_batch_ms_per_image(side: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Step 4 of the module docstring: ms per image, best of `repeats`, for each way."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    lookup = PixelLookup.probe(processor)
    assert lookup is not None
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    region = np.kron(rng.integers(0, 64, (8, 8)), np.ones((side // 8 + 1, side // 8 + 1), dtype=np.int64))[:side, :side]
    black = np.zeros_like(image)  # one baseline for all copies, as a search has
    batch = [MaskedImage(image, black, np.isin(region, rng.choice(64, 32, replace=False))) for _ in range(32)]

    def best_ms(prepare: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            prepare()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times) * 1000 / len(batch)

    return {
        "composed, then prepared": best_ms(lambda: lookup.pixel_values([np.asarray(m) for m in batch], device)),
        "prepared, then composed": best_ms(lambda: lookup.pixel_values(batch, device)),
    }


def explain_timed(auditor: Auditor, timer: PhaseTimer, sample: Any, method: str, regions: int) -> dict[str, Any]:
    request = AuditRequest(sample.scene.image, sample.prompt, sample.truth, method=method, regions=regions)
    timer.reset()
    start = time.perf_counter()
    [result] = auditor.run([request])
    wall = time.perf_counter() - start
    if isinstance(result, Exception):
        raise result
    return {
        "wall_s": wall,
        "passes": result.stats.forward_passes,
        "forward_calls": timer.calls["forward"],
        "phases_s": breakdown(timer.seconds, wall),
    }


def summarise(method: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(r["wall_s"] for r in runs)
    passes = sum(r["passes"] for r in runs)
    compute = sum(r["compute_s"] for r in runs)
    phases = {name: sum(r["phases_s"][name] for r in runs) for name in runs[0]["phases_s"]}
    forward = phases["forward"]
    return {
        "method": method,
        "explanations": len(runs),
        "wall_s_per_explanation": wall / len(runs),
        "passes_per_explanation": passes / len(runs),
        "compute_s_per_explanation": compute / len(runs),
        "ratio_wall_to_compute": wall / compute,
        # the forward at the batch sizes the search really made, against the best batch's
        "mean_forward_batch": passes / sum(r["forward_calls"] for r in runs),
        "forward_s_per_explanation": forward / len(runs),
        "ratio_forward_to_compute": forward / compute,
        "phase_share_of_wall": {name: seconds / wall for name, seconds in phases.items()},
        "runs": runs,
    }


def print_masking(masking: dict[int, dict[str, float]]) -> None:
    ways = list(next(iter(masking.values())))
    print("| 32 masked copies, ms per image | " + " | ".join(f"{side} px" for side in masking) + " |")
    print("| --- |" + " --- |" * len(masking))
    for way in ways:
        print(f"| {way} | " + " | ".join(f"{masking[side][way]:.2f}" for side in masking) + " |")


def print_tables(forward: dict[int, float], summaries: list[dict[str, Any]]) -> None:
    print("| forward batch | ms per image (forward call only) |")
    print("| --- | --- |")
    for batch, seconds in forward.items():
        print(f"| {batch} | {seconds * 1000:.2f} |")
    print()
    print(
        "| method | wall s / expl. | passes | compute s | wall / compute | mean batch | forward s | forward / compute |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in summaries:
        print(
            f"| {s['method']} | {s['wall_s_per_explanation']:.3f} | {s['passes_per_explanation']:.0f} | "
            f"{s['compute_s_per_explanation']:.3f} | {s['ratio_wall_to_compute']:.2f}x | "
            f"{s['mean_forward_batch']:.1f} | {s['forward_s_per_explanation']:.3f} | "
            f"{s['ratio_forward_to_compute']:.2f}x |"
        )
    print()
    names = list(summaries[0]["phase_share_of_wall"])
    print("| share of wall | " + " | ".join(s["method"] for s in summaries) + " |")
    print("| --- |" + " --- |" * len(summaries))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{s['phase_share_of_wall'][name]:.1%}" for s in summaries) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="held-out scenes per method")
    ap.add_argument("--regions", type=int, default=64)
    ap.add_argument("--methods", default="eagle,eagle_greedy")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--forward-batch-size", type=int, default=32, help="the engine's batch size")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per forward batch size")
    ap.add_argument("--json", type=Path, default=RESULTS / "compute_limit.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(device=args.device, dtype=args.dtype)
    scorer = Scorer(loaded)
    samples = bench_samples(args.n)
    forward = forward_seconds_per_image(scorer, samples[0], [1, 8, 32], args.repeats)
    best_batch = min(forward, key=lambda b: forward[b])
    auditor = Auditor(scorer, forward_batch_size=args.forward_batch_size)
    timer = PhaseTimer(scorer)
    summaries = []
    with timer.active():
        explain_timed(auditor, timer, samples[0], "eagle", 8)  # warm up
        for method in args.methods.split(","):
            runs = []
            for s in samples:
                per_image = min(forward_seconds_per_image(scorer, s, [8, 32], args.repeats).values())
                run = explain_timed(auditor, timer, s, method, args.regions)
                runs.append(run | {"compute_s": run["passes"] * per_image})
            summaries.append(summarise(method, runs))
    print(
        f"{loaded.device} {str(loaded.dtype).removeprefix('torch.')}, {args.threads} torch threads, "
        f"{args.n} scenes, {args.regions} regions; best forward batch {best_batch}\n"
    )
    print_tables(forward, summaries)
    masking = {side: masked_batch_ms_per_image(side, loaded.device, args.repeats) for side in (96, 336)}
    print()
    print_masking(masking)
    if loaded.device.type == "cpu":
        print(
            "\nMeasured on CPU: forward and Python overhead share the same cores, and on a shared "
            "machine every figure moves by 10% or more from run to run."
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {"platform": platform.platform(), "device": str(loaded.device), "torch": torch.__version__},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "forward_s_per_image": forward,
        "best_forward_batch": best_batch,
        "methods": summaries,
        "masked_batch_ms_per_image": masking,
    }
    args.json.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
