"""The scorer on torch against the ONNX Runtime backend, measured in one run on the reference model.

    python -m bench.backend [--n 10] [--regions 32] [--threads 2] [--repeats 5]

Prints images scored per second for forward batches of 1, 8 and 32 images, and seconds per
EAGLE explanation (the fast search, `--regions` regions, the whole answer as the target) on
`--n` held-out samples, for both backends, with onnx's speed-up over torch; the largest difference
of their log-probabilities; and the ONNX Runtime providers in use.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.request import AuditRequest
from mllm_audit.models.loading import load_model
from mllm_audit.models.onnx_backend import OnnxBackend
from mllm_audit.models.scorer import Scorer

from bench.samples import bench_samples


def images_per_second(scorer: Scorer, pairs: list, repeats: int) -> float:
    scorer.log_probs(pairs)  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        scorer.log_probs(pairs)
    return repeats * len(pairs) / (time.perf_counter() - start)


def seconds_per_explanation(scorer: Scorer, samples, regions: int) -> float:
    auditor = Auditor(scorer, forward_batch_size=32)
    start = time.perf_counter()
    for s in samples:
        [out] = auditor.run([AuditRequest(s.scene.image, s.prompt, s.truth, regions=regions)])
        assert not isinstance(out, Exception), out
    return (time.perf_counter() - start) / len(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--regions", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model()
    scorers = {"torch": Scorer(loaded), "onnx": Scorer(loaded, OnnxBackend(loaded))}
    print(f"ONNX Runtime providers: {scorers['onnx'].run_model.providers}; {args.threads} threads")

    samples = bench_samples(args.n)
    s = samples[0]
    audit = scorers["torch"].prepare(s.prompt, s.truth, (96, 96))
    rng = np.random.default_rng(0)
    images = [np.where(rng.random((96, 96, 1)) < 0.5, s.scene.image, 0).astype(np.uint8) for _ in range(32)]
    diff = max(
        np.abs(a - b).max()
        for a, b in zip(
            scorers["torch"].log_probs([(audit, i) for i in images]),
            scorers["onnx"].log_probs([(audit, i) for i in images]),
        )
    )
    print(f"largest |log-prob difference| over 32 masked images: {diff:.2e}\n")

    print("| measure | torch | onnx | onnx speed-up |")
    print("| --- | --- | --- | --- |")
    for batch in (1, 8, 32):
        pairs = [(audit, i) for i in images[:batch]]
        rates = {name: images_per_second(sc, pairs, args.repeats) for name, sc in scorers.items()}
        print(
            f"| images/s, batches of {batch} | {rates['torch']:.0f} | {rates['onnx']:.0f} | "
            f"{rates['onnx'] / rates['torch']:.2f}x |"
        )
    times = {name: seconds_per_explanation(sc, samples, args.regions) for name, sc in scorers.items()}
    print(
        f"| s / EAGLE explanation ({args.regions} regions, n = {args.n}) | {times['torch']:.2f} | "
        f"{times['onnx']:.2f} | {times['torch'] / times['onnx']:.2f}x |"
    )


if __name__ == "__main__":
    main()
