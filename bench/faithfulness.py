"""Faithfulness and localisation of attributions on held-out reference-world samples.

    python -m bench.faithfulness [--n 100] [--regions 64]
        [--methods eagle,eagle_greedy,random,centre,tam,msea,arc,msea+arc]

Samples: object words (answers to colour and shape questions, target = the answer) and
whole captions (target = the caption), on scenes the model never saw. Every method's
heatmap is scored on the same axis: pixels ranked by the heatmap, 64 equal-area steps,
black baseline (insertion AUC higher is better, deletion lower). EAGLE's own region-order
AUCs go to the --json file only. Pointing game (mask and box) uses the object the question is about
(any object for captions), hit when the map's maximum is reached inside it.

The white-box token maps (tam, msea, arc, msea+arc) are scored on the same samples and axes
by bench/token_maps.py, per word (with TAM's Obj-IoU / Func-IoU / F1-IoU); see its docstring.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mllm_audit.explainers import eagle
from mllm_audit.explainers.engine import Job, run_jobs
from mllm_audit.explainers.faithfulness import pixel_ranking_curves, pointing_game
from mllm_audit.explainers.regions import region_masks, superpixel_regions
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer

from bench import token_maps
from bench.samples import bench_samples, target_masks

BASELINES = ("random", "centre")


def baseline_heatmap(kind: str, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":  # a random region ranking
        scores = rng.permutation(labels.max() + 1) / max(labels.max(), 1)
        return scores[labels].astype(np.float32)
    h, w = labels.shape  # centre prior: closer to the centre ranks higher
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot((yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5)
    return (1 - d / d.max()).astype(np.float32)


def run(n: int, regions: int, methods: list[str], batch_size: int, model_dir: str | None) -> dict:
    loaded = load_model(model_dir)
    scorer = Scorer(loaded)
    samples = bench_samples(n)
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for i, s in enumerate(samples):
        audit = scorer.prepare(s.prompt, s.answer, (s.scene.image.shape[1], s.scene.image.shape[0]))
        tokens = list(range(audit.n_tokens))
        labels = superpixel_regions(s.scene.image, regions)
        masks = region_masks(labels)
        mask, boxes = target_masks(s)
        for m in methods:
            start = time.perf_counter()
            passes, extra = 0, {}
            if m in ("eagle", "eagle_greedy"):
                search = (
                    eagle.greedy_search(s.scene.image, masks, tokens)
                    if m == "eagle_greedy"
                    else eagle.fast_search(s.scene.image, masks, tokens)
                )
                job = Job(audit, search)
                run_jobs([job], scorer.log_probs, batch_size)
                if job.error:
                    raise job.error
                heat = eagle.heatmap_from_regions(labels, job.result.region_scores)
                passes = job.forward_passes
                extra = {
                    "region_insertion_auc": job.result.insertion_auc(),
                    "region_deletion_auc": job.result.deletion_auc(),
                }
            else:
                heat = baseline_heatmap(m, labels, rng)
            seconds = time.perf_counter() - start
            curve_job = Job(audit, pixel_ranking_curves(s.scene.image, heat, tokens))
            run_jobs([curve_job], scorer.log_probs, batch_size)
            if curve_job.error:
                raise curve_job.error
            ins, dele, _ = curve_job.result
            rows[m].append(
                {
                    "kind": s.kind,
                    "insertion_auc": ins,
                    "deletion_auc": dele,
                    "pointing_mask": pointing_game(heat, mask),
                    "pointing_box": pointing_game(heat, boxes),
                    "forward_passes": passes,
                    "seconds": seconds,
                    **extra,
                }
            )
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(samples)} samples", flush=True)
    return summarise(rows)


def summarise(rows: dict[str, list[dict]]) -> dict:
    table = {}
    for m, rs in rows.items():
        objects = [r for r in rs if r["kind"] != "caption"]
        table[m] = {
            "insertion_auc": float(np.mean([r["insertion_auc"] for r in rs])),
            "deletion_auc": float(np.mean([r["deletion_auc"] for r in rs])),
            "pointing_mask_objects": float(np.mean([r["pointing_mask"] for r in objects])),
            "pointing_box_objects": float(np.mean([r["pointing_box"] for r in objects])),
            "pointing_mask_all": float(np.mean([r["pointing_mask"] for r in rs])),
            "forward_passes": float(np.mean([r["forward_passes"] for r in rs])),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
        }
        if "region_insertion_auc" in rs[0]:
            table[m]["region_insertion_auc"] = float(np.mean([r["region_insertion_auc"] for r in rs]))
            table[m]["region_deletion_auc"] = float(np.mean([r["region_deletion_auc"] for r in rs]))
    return table


def print_table(table: dict) -> None:
    cols = [
        "insertion_auc",
        "deletion_auc",
        "pointing_mask_objects",
        "pointing_box_objects",
        "pointing_mask_all",
        "forward_passes",
        "seconds",
    ]
    print(
        "| method | ins AUC ↑ | del AUC ↓ | PG mask (objects) | PG box (objects) | PG mask (all) | passes | s / expl. |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, r in table.items():
        print(
            f"| {m} | "
            + " | ".join(f"{r[c]:.3f}" if c not in ("forward_passes",) else f"{r[c]:.0f}" for c in cols)
            + " |"
        )


BLACK_BOX = ("eagle", "eagle_greedy", *BASELINES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--regions", type=int, default=64)
    ap.add_argument("--methods", default=",".join(BLACK_BOX + token_maps.METHODS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    ap.add_argument("--json", default=None, help="also write the tables as JSON here")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(BLACK_BOX) - set(token_maps.METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; use {', '.join(BLACK_BOX + token_maps.METHODS)}")
    black = [m for m in methods if m in BLACK_BOX]
    white = [m for m in methods if m in token_maps.METHODS]
    tables = {}
    if black:
        start = time.perf_counter()
        tables["region_methods"] = run(args.n, args.regions, black, args.batch_size, args.model)
        print(f"\n{args.n} samples, {args.regions} regions, {time.perf_counter() - start:.0f} s\n")
        print_table(tables["region_methods"])
    if white:
        start = time.perf_counter()
        tables["token_maps"] = token_maps.evaluate_token_maps(
            load_model(args.model), bench_samples(args.n), white, progress=True
        )
        print(f"\n{args.n} samples, white-box token maps, {time.perf_counter() - start:.0f} s\n")
        token_maps.print_table(tables["token_maps"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(tables, fh, indent=2)


if __name__ == "__main__":
    main()
