"""Faithfulness and localisation of attributions on held-out reference-world samples.

    python -m bench.faithfulness [--n 100] [--regions 64]
        [--methods eagle,eagle_greedy,random,centre,tam,msea,arc,msea+arc]
    python -m bench.faithfulness --frontier --n 6 [--models ref,npw]

--frontier: the budget frontier of the fast searches (`eagle`, the default; `eagle_lazy`;
`eagle_fast_published`) at max_forward_passes 32, 64, 128, 256, 512 and unlimited, against plain
greedy (unlimited) and a random order, on the same samples and every checkpoint named, in one run
(`--searches` runs a subset: the figures are deterministic, only the timings are not).
A budget below a method's floor is what the service answers 422 to; the table says so. Each row
also gives its change from the search's budget before (mean paired differences ± s.e.). A second
table gives the same AUCs within the image's end points (insertion capped at the whole image's
probability, deletion floored at the blank image's: explainers.faithfulness.aucs_within_end_points);
the other tables are followed by one too.

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
from mllm_audit.explainers.faithfulness import aucs_within_end_points, pixel_ranking_curves, pointing_game
from mllm_audit.explainers.methods import get as get_method
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
            if m in ("eagle", "eagle_greedy", "eagle_fast_published", "eagle_lazy"):
                search = search_for(m, s.scene.image, masks, tokens, None)
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
            ins, dele, curves = curve_job.result
            ins_within, dele_within = aucs_within_end_points(curves)
            rows[m].append(
                {
                    "kind": s.kind,
                    "insertion_auc": ins,
                    "deletion_auc": dele,
                    "insertion_within": ins_within,
                    "deletion_within": dele_within,
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
            "insertion_within": float(np.mean([r["insertion_within"] for r in rs])),
            "deletion_within": float(np.mean([r["deletion_within"] for r in rs])),
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
    token_maps.print_within(table)


BLACK_BOX = ("eagle", "eagle_greedy", "eagle_fast_published", "eagle_lazy", *BASELINES)
FRONTIER_BUDGETS = (32, 64, 128, 256, 512, None)
FRONTIER_SEARCHES = ("eagle", "eagle_lazy", "eagle_fast_published")
CHECKPOINTS = {"ref": None, "npw": "models/reference/weights-no-patch-words"}


def search_for(method: str, image: np.ndarray, masks: np.ndarray, tokens: list[int], budget: int | None):
    """The service's search for an EAGLE method (curves only where the search scored them), or None below
    its floor: the registered method's own search and floor, with the service's default options."""
    explainer = get_method(method)
    if budget is not None and budget < explainer.minimum_passes(masks.shape[0]):
        return None
    options = {"baseline": "black", "lam1": 1.0, "lam2": 1.0, "max_forward_passes": budget, "curves": False}
    return explainer.search(image, masks, tokens, **options)


def frontier(
    n: int,
    regions: int,
    checkpoints: list[str],
    batch_size: int,
    searches: list[str],
    make_search=search_for,
    budgets: tuple[int | None, ...] = FRONTIER_BUDGETS,
) -> dict:
    """Per checkpoint: {row name: {insertion_auc, deletion_auc, pointing, forward_passes, refused}}.
    `make_search` and `budgets`: bench/search_study.py runs searches that are not methods."""
    samples = bench_samples(n)
    rows = [(m, None) for m in ("eagle_greedy", "random") if m in searches]
    rows += [(m, b) for m in searches if m not in ("eagle_greedy", "random") for b in budgets]
    out = {}
    for name in checkpoints:
        scorer = Scorer(load_model(CHECKPOINTS.get(name, name)))
        rng = np.random.default_rng(0)
        got: dict[str, list[dict]] = {}
        for done, s in enumerate(samples, start=1):
            audit = scorer.prepare(s.prompt, s.answer, (s.scene.image.shape[1], s.scene.image.shape[0]))
            tokens = list(range(audit.n_tokens))
            labels = superpixel_regions(s.scene.image, regions)
            masks = region_masks(labels)
            mask, _ = target_masks(s)
            for method, budget in rows:
                key = f"{method} @ {budget or 'unlimited'}" if method != "random" else "random order"
                passes = 0
                if method == "random":
                    heat = baseline_heatmap("random", labels, rng)
                else:
                    search = make_search(method, s.scene.image, masks, tokens, budget)
                    if search is None:
                        got.setdefault(key, []).append({"refused": True})
                        continue
                    job = Job(audit, search)
                    run_jobs([job], scorer.log_probs, batch_size)
                    if job.error:
                        raise job.error
                    heat, passes = eagle.heatmap_from_regions(labels, job.result.region_scores), job.forward_passes
                curve_job = Job(audit, pixel_ranking_curves(s.scene.image, heat, tokens))
                run_jobs([curve_job], scorer.log_probs, batch_size)
                ins, dele, curves = curve_job.result
                ins_within, dele_within = aucs_within_end_points(curves)
                got.setdefault(key, []).append(
                    {
                        "insertion_auc": ins,
                        "deletion_auc": dele,
                        "insertion_within": ins_within,
                        "deletion_within": dele_within,
                        "pointing": pointing_game(heat, mask),
                        "passes": passes,
                    }
                )
            print(f"  {name}: sample {done}/{len(samples)}", flush=True)
        out[name] = {key: _frontier_row(rs) for key, rs in got.items()}
        _add_budget_steps(out[name], got)
        print_frontier({name: out[name]})
    return out


def sem(x: np.ndarray) -> float:
    """The standard error of the mean of `x` (0 for fewer than two values)."""
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def _add_budget_steps(table: dict, got: dict[str, list[dict]]) -> None:
    """Each budget's change from the search's budget before it, as mean paired differences over the
    samples ± their standard errors: does quality rise with the budget, beyond the samples' noise?"""
    previous: dict[str, list[dict]] = {}
    for key, rs in got.items():
        method = key.split(" @ ")[0]
        before = previous.get(method)
        previous[method] = rs
        if before is None or any(r.get("refused") for r in rs + before):
            continue
        for auc in ("insertion_auc", "deletion_auc"):
            step = np.array([r[auc] for r in rs]) - np.array([r[auc] for r in before])
            table[key][f"{auc}_step"] = (float(step.mean()), sem(step))


def _frontier_row(rs: list[dict]) -> dict:
    if any(r.get("refused") for r in rs):
        return {"refused": True}
    ins = np.array([r["insertion_auc"] for r in rs])
    dele = np.array([r["deletion_auc"] for r in rs])
    return {
        "insertion_auc": float(ins.mean()),
        "insertion_sem": sem(ins),
        "deletion_auc": float(dele.mean()),
        "deletion_sem": sem(dele),
        "insertion_within": float(np.mean([r["insertion_within"] for r in rs])),
        "deletion_within": float(np.mean([r["deletion_within"] for r in rs])),
        "pointing": float(np.mean([r["pointing"] for r in rs])),
        "forward_passes": float(np.mean([r["passes"] for r in rs])),
    }


def print_frontier(table: dict, greedy_key: str = "eagle_greedy @ unlimited") -> None:
    for name, rows in table.items():
        greedy = rows.get(greedy_key, {}).get("forward_passes")
        print(f"\n{name}: insertion and deletion AUC (± s.e.m.), pointing game (mask, all samples), passes\n")
        print(
            "| search @ budget | ins AUC ↑ | del AUC ↓ | PG | passes | greedy's passes / passes "
            "| ins, del change from the budget before (paired) |"
        )
        print("|---|---|---|---|---|---|---|")
        for key, r in rows.items():
            if r.get("refused"):
                print(f"| {key} | 422: below the floor | | | | | |")
                continue
            # greedy absent from this run (--searches) or a search that scored nothing: no ratio
            ratio = f"{greedy / r['forward_passes']:.1f}×" if greedy and r["forward_passes"] else "–"
            steps = [r.get(f"{auc}_step") for auc in ("insertion_auc", "deletion_auc")]
            change = ", ".join(f"{m:+.3f} ± {e:.3f}" for m, e in steps) if steps[0] else ""
            print(
                f"| {key} | {r['insertion_auc']:.3f} ± {r['insertion_sem']:.3f} | "
                f"{r['deletion_auc']:.3f} ± {r['deletion_sem']:.3f} | "
                f"{r['pointing']:.2f} | {r['forward_passes']:.0f} | {ratio} | {change} |"
            )
        token_maps.print_within(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--regions", type=int, default=64)
    ap.add_argument("--methods", default=",".join(BLACK_BOX + token_maps.METHODS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    ap.add_argument("--json", default=None, help="also write the tables as JSON here")
    ap.add_argument("--frontier", action="store_true", help="the budget frontier of the fast searches (see above)")
    ap.add_argument("--models", default="ref,npw", help="--frontier: checkpoints (ref, npw or directories)")
    ap.add_argument(
        "--searches",
        default=",".join(("eagle_greedy", "random", *FRONTIER_SEARCHES)),
        help="--frontier: rows to run (eagle_greedy, random and the fast searches)",
    )
    ap.add_argument(
        "--budgets",
        default=",".join(str(b or "unlimited") for b in FRONTIER_BUDGETS),
        help="--frontier: max_forward_passes of the fast searches' rows (a number or unlimited)",
    )
    args = ap.parse_args()
    if args.frontier:
        start = time.perf_counter()
        models = [m for m in args.models.split(",") if m]
        budgets = tuple(None if b == "unlimited" else int(b) for b in args.budgets.split(","))
        table = frontier(args.n, args.regions, models, args.batch_size, args.searches.split(","), budgets=budgets)
        print(f"\n{args.n} samples per checkpoint, {args.regions} regions, {time.perf_counter() - start:.0f} s")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(table, fh, indent=2)
        return
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
