"""Do the heatmaps carry information? EAGLE's gain view against the cumulative view.

    python -m bench.heatmaps [--n 6] [--regions 64] [--size 640x480] [--json out.json]

Samples: the first n held-out colour questions of the reference world (seed 20000, as
bench/samples.py), each scene upscaled (nearest) to --size, the size of the photo in the report
that prompted the gain view, explaining the true colour word with EAGLE (`eagle`, black baseline,
lambda1 = lambda2 = 1). One search gives both views (see `views`). Per view: the share of pixels
above 0.9 (the cumulative view's "wash") and below 0.1, the pointing game (the map's peak on the
queried object's mask), and how often the map is flat. Both checkpoints: the shipped one and the
one trained without the patch-word loss (docs/reference-model.md). Means over samples with their
standard errors.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mllm_audit.explainers.audit import Auditor
from mllm_audit.explainers.eagle import scores_from_gains, scores_from_marginal_gains
from mllm_audit.explainers.heatmap_kinds import flat_reason
from mllm_audit.models.loading import REFERENCE_MODEL_DIR, load_model
from mllm_audit.models.reference.evaluate import held_out_samples
from mllm_audit.models.scorer import Scorer
from PIL import Image

CHECKPOINTS = {
    "weights": REFERENCE_MODEL_DIR,
    "weights-no-patch-words": REFERENCE_MODEL_DIR.parent / "weights-no-patch-words",
}


def mean_se(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else 0.0


def upscale(mask_or_image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask_or_image).resize(size, Image.Resampling.NEAREST))


def views(att) -> dict[str, np.ndarray]:
    """Both views of one EAGLE attribution: with lambda1 = lambda2 = 1 and a complete search the
    objective along the ranking is insertion + 1 - deletion, so its gains (and the cumulative
    view) follow from the response's curves, without a second search."""
    ins, dele = np.asarray(att.insertion_curve), np.asarray(att.deletion_curve)
    ranking = [r.region_id for r in att.regions]
    gains = np.diff(ins[:, 1] + 1.0 - dele[:, 1])
    k = int(att.segments.max()) + 1
    order = ranking + [r for r in range(k) if r not in ranking]  # slivers lost at client pixels last
    return {
        "gain": scores_from_marginal_gains(order, gains)[att.segments],
        "cumulative": scores_from_gains(order, gains)[att.segments],
    }


def measure(auditor: Auditor, n: int, regions: int, size: tuple[int, int]) -> dict:
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    for sample in held_out_samples("colour", n, seed=20_000):
        image = upscale(sample.scene.image, size)
        mask = upscale(sample.target.mask.astype(np.uint8) * 255, size) > 0
        att = auditor.explain(image, sample.prompt, sample.truth, regions=regions).attributions[0]
        if not att.search_complete:
            continue
        maps = views(att)
        # the service's gain view is the one derived here (a check on the derivation)
        add("gain.matches_service", float(np.abs(maps["gain"] - att.heatmap()).max() < 1e-3))
        for kind, heat in maps.items():
            add(f"{kind}.above_0.9", float((heat > 0.9).mean()))
            add(f"{kind}.below_0.1", float((heat < 0.1).mean()))
            add(f"{kind}.pointing", float(mask[np.unravel_index(heat.argmax(), heat.shape)]))
            add(f"{kind}.flat", float(flat_reason(heat) is not None))
    return {key: dict(zip(("mean", "se", "n"), (*mean_se(values), len(values)))) for key, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--regions", type=int, default=64)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--json")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    report = {"n": args.n, "regions": args.regions, "size": args.size, "checkpoints": {}}
    for name, path in CHECKPOINTS.items():
        started = time.monotonic()
        auditor = Auditor(Scorer(load_model(path)), forward_batch_size=48)
        figures = measure(auditor, args.n, args.regions, size)
        report["checkpoints"][name] = figures
        seconds = time.monotonic() - started
        print(f"\n{name} ({seconds:.0f} s): mean ± standard error over {args.n} held-out colour questions")
        for key, v in figures.items():
            print(f"  {key:28s} {v['mean']:.3f} ± {v['se']:.3f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
