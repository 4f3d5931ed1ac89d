"""Where EAGLE's lead over a one-pass map lies: in the object, or in the rest of the image.

    python -m bench.map_lead [--n 60] [--model npw]
        [--maps attention+relevancy,relevancy,attention,tam] [--json out.json]

Samples: the question answers (colour and shape words) among bench/samples.py's n held-out
samples; each map is scored for all the answer's tokens on the pixel axis of
bench/faithfulness.py (64 equal-area steps, black baseline), plain and within the image's end
points. The object is the one the question asks about; its regions are the SLIC superpixels
`eagle` ranks (64) that lie more than half inside the object's mask (at least the one most inside).

Rows: `eagle` (the default search) and each white-box map, then region orders that splice the
two, built from `eagle`'s ranking and the first map averaged over each region:

- object first, then the rest, each part in `eagle`'s order or in the map's;
- object first, then the rest in the map's order but the scene's other objects last (regions
  more than a fifth inside another object's mask);
- object first, then the rest by a prior that needs no forward pass: nearest to the object
  first, or closest in mean colour to the object first.

EAGLE's lead is the mean paired difference of insertion - deletion AUC (EAGLE's minus the
row's) over the answers, with its standard error.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mllm_audit.explainers import eagle
from mllm_audit.explainers.engine import Job, run_jobs
from mllm_audit.explainers.faithfulness import aucs_within_end_points, pixel_ranking_curves, pointing_game
from mllm_audit.explainers.methods import WHITE_BOX
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.explainers.regions import region_masks, superpixel_regions
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer
from numpy.typing import NDArray

from bench.faithfulness import CHECKPOINTS, search_for, sem
from bench.samples import bench_samples


def rank_heatmap(order: list[int], labels: NDArray[np.int32]) -> NDArray[np.float32]:
    """A heatmap that ranks the regions in `order` (first = hottest), one distinct value each."""
    values = np.zeros(len(order))
    values[order] = np.linspace(1.0, 0.0, len(order))
    return values[labels].astype(np.float32)


def spliced_orders(
    image: np.ndarray,
    masks: np.ndarray,
    object_mask: np.ndarray,
    others_mask: np.ndarray,
    eagle_scores: np.ndarray,
    map_scores: np.ndarray,
) -> dict[str, list[int]]:
    """Region orders that put the object's regions first (see the module docstring)."""
    k = masks.shape[0]
    area = masks.reshape(k, -1).sum(axis=1).astype(np.float64)
    share = (masks & object_mask).reshape(k, -1).sum(axis=1) / np.maximum(area, 1.0)
    other = (masks & others_mask).reshape(k, -1).sum(axis=1) / np.maximum(area, 1.0) > 0.2
    inside = share > 0.5
    inside[np.argmax(share)] = True  # an object smaller than half of every region keeps its best one
    by_eagle = [int(r) for r in np.argsort(-eagle_scores, kind="stable")]
    by_map = [int(r) for r in np.argsort(-map_scores, kind="stable")]
    obj = [r for r in by_eagle if inside[r]]
    ys, xs = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]]
    centre = np.stack([(masks * ys).reshape(k, -1).sum(1), (masks * xs).reshape(k, -1).sum(1)], 1) / area[:, None]
    colour = np.stack([image[m].mean(axis=0) for m in masks])
    distance = np.linalg.norm(centre - np.average(centre[obj], axis=0, weights=area[obj]), axis=1)
    colour_gap = np.linalg.norm(colour - np.average(colour[obj], axis=0, weights=area[obj]), axis=1)

    def rest(order: list[int]) -> list[int]:
        return [r for r in order if not inside[r]]

    return {
        "object, then rest: both in eagle's order": obj + rest(by_eagle),
        "object in the map's order, rest in eagle's": [r for r in by_map if inside[r]] + rest(by_eagle),
        "object in eagle's order, rest in the map's": obj + rest(by_map),
        "object, rest in the map's order, other objects last": obj + sorted(rest(by_map), key=lambda r: other[r]),
        "object, then rest nearest first": obj + sorted(rest(by_eagle), key=lambda r: distance[r]),
        "object, then rest closest in colour first": obj + sorted(rest(by_eagle), key=lambda r: colour_gap[r]),
    }


def run(n: int, model_dir: str | None, maps: list[str], batch_size: int = 32) -> dict[str, list[tuple]]:
    """Per row: (insertion, deletion, insertion within, deletion within, pointing) per answer."""
    scorer = Scorer(load_model(model_dir))
    explainers = {m: get_method(m) for m in maps}
    rows: dict[str, list[tuple]] = {}
    samples = [s for s in bench_samples(n) if s.kind != "caption"]
    for i, s in enumerate(samples):
        image = s.scene.image
        audit = scorer.prepare(s.prompt, s.answer, (image.shape[1], image.shape[0]))
        tokens = list(range(audit.n_tokens))
        labels = superpixel_regions(image, 64)
        masks = region_masks(labels)
        job = Job(audit, search_for("eagle", image, masks, tokens, None))
        run_jobs([job], scorer.log_probs, batch_size)
        if job.error:
            raise job.error
        heatmaps = {"eagle": eagle.heatmap_from_regions(labels, job.result.region_scores)}
        for m, explainer in explainers.items():
            heatmaps[m] = explainer.heatmaps(scorer, audit, image, [tokens])[0]["heatmap"]
        first = heatmaps[maps[0]].astype(np.float64)
        map_scores = np.array([first[mask].mean() for mask in masks])
        others = np.zeros(image.shape[:2], dtype=bool)
        for o in s.scene.objects:
            if o is not s.target:
                others |= o.mask
        orders = spliced_orders(image, masks, s.target.mask, others, job.result.region_scores, map_scores)
        heatmaps.update({name: rank_heatmap(order, labels) for name, order in orders.items()})
        jobs = {name: Job(audit, pixel_ranking_curves(image, heat, tokens)) for name, heat in heatmaps.items()}
        run_jobs(list(jobs.values()), scorer.log_probs, batch_size)
        for name, curve_job in jobs.items():
            if curve_job.error:
                raise curve_job.error
            ins, dele, curves = curve_job.result
            rows.setdefault(name, []).append(
                (ins, dele, *aucs_within_end_points(curves), pointing_game(heatmaps[name], s.target.mask))
            )
        if (i + 1) % 8 == 0:
            print(f"  {i + 1}/{len(samples)} answers", flush=True)
    return rows


def summarise(rows: dict[str, list[tuple]]) -> dict[str, dict[str, float]]:
    reference = np.array(rows["eagle"])
    table = {}
    for name, r in rows.items():
        a = np.array(r)
        lead = (reference[:, 0] - reference[:, 1]) - (a[:, 0] - a[:, 1])
        lead_within = (reference[:, 2] - reference[:, 3]) - (a[:, 2] - a[:, 3])
        table[name] = {
            "insertion_auc": float(a[:, 0].mean()),
            "deletion_auc": float(a[:, 1].mean()),
            "lead": float(lead.mean()),
            "lead_se": sem(lead),
            "within": float((a[:, 2] - a[:, 3]).mean()),
            "lead_within": float(lead_within.mean()),
            "lead_within_se": sem(lead_within),
            "pointing_mask": float(a[:, 4].mean()),
            "answers": len(a),
        }
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| order | ins AUC ↑ | del AUC ↓ | ins − del | EAGLE's lead | within: ins − del | lead within | PG mask |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        lines.append(
            f"| {name} | {r['insertion_auc']:.3f} | {r['deletion_auc']:.3f} | "
            f"{r['insertion_auc'] - r['deletion_auc']:.3f} | {r['lead']:.3f} ± {r['lead_se']:.3f} | "
            f"{r['within']:.3f} | {r['lead_within']:.3f} ± {r['lead_within_se']:.3f} | {r['pointing_mask']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="held-out samples; the question answers among them are used")
    ap.add_argument("--model", default="npw", help="checkpoint: npw, ref (the bundled one) or a model directory")
    ap.add_argument(
        "--maps", default="attention+relevancy,relevancy,attention,tam", help="white-box maps; the first is spliced"
    )
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    maps = [m for m in args.maps.split(",") if m]
    unknown = set(maps) - set(WHITE_BOX)
    if not maps or unknown:
        ap.error(f"--maps takes one or more of {', '.join(WHITE_BOX)}")
    start = time.perf_counter()
    table = summarise(run(args.n, CHECKPOINTS.get(args.model, args.model), maps))
    print(f"\n{table['eagle']['answers']} answers of {args.n} samples, {time.perf_counter() - start:.0f} s in all\n")
    print(format_table(table))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)
    return table


if __name__ == "__main__":
    main()
