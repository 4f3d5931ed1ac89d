"""White-box token maps (TAM, MSEA, ARC, MSEA+ARC) on held-out reference-world samples.

    python -m bench.token_maps [--n 100] [--methods tam,msea,arc,msea+arc] [--json out.json]
        [--view-weighting agreement]

Samples: the same held-out samples as bench/faithfulness.py (40% colour answers, 40% shape
answers, 20% captions), explaining the true answer. In a caption every colour and shape word
is an object word about the object it names, and "a" / "and" are function words.

Per object word (one map per word, explained with the method's white-box forwards):
- insertion / deletion AUC: pixels ranked by the map, 64 equal-area steps, black baseline
  (explainers.faithfulness.pixel_ranking_curves driven by the engine with scorer.log_probs);
- pointing game on the object's mask and on its box ((map * mask).max() == map.max());
- Obj-IoU: the Otsu-binarised map against the object's mask.
A second table gives insertion / deletion within the image's end points (insertion capped at
the whole image's probability, deletion floored at the blank image's).
Per function word, Func-IoU: the word names nothing, so the map should activate nothing;
scored as the IoU of the map's inactive pixels with the whole image (1 - activated share).
Binarisation, our reading of TAM's protocol: all maps of one answer are put on a common
scale (each map times its raw peak, over the answer's largest peak; see token_maps' "peak")
and one Otsu threshold is taken over all of them, so a function word whose activation is
weak next to the object words' stays dark. F1-IoU is the harmonic mean of mean Obj-IoU and
mean Func-IoU. Latency: wall time of one target_heatmaps call (all the answer's maps) and
per map; forward passes are the white-box forwards of that call (the insertion / deletion
images are scoring, not explanation, and are not counted).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from mllm_audit.explainers.engine import Job, run_jobs
from mllm_audit.explainers.faithfulness import aucs_within_end_points, box_mask, pixel_ranking_curves, pointing_game
from mllm_audit.explainers.methods import WHITE_BOX as METHODS
from mllm_audit.explainers.methods import Explainer
from mllm_audit.explainers.methods import get as get_method
from mllm_audit.explainers.methods.token_maps import TokenMap
from mllm_audit.explainers.tam import words_of_tokens
from mllm_audit.models.loading import load_model
from mllm_audit.models.reference import world
from mllm_audit.models.scorer import Scorer
from skimage.filters import threshold_otsu

from bench.samples import bench_samples

FUNCTION_WORDS = ("a", "an", "and", "the", "of", "is")


def word_targets(sample: world.Sample, audit) -> tuple[list[tuple[list[int], world.SceneObject]], list[list[int]]]:
    """(object words with their object, function words) as lists of answer-token indices."""
    answer = sample.truth
    words = [m.group(0).lower() for m in re.finditer(r"\w+|[^\w\s]", answer)]
    word_of = words_of_tokens(answer, list(audit.tokens.spans))
    tokens_of: dict[int, list[int]] = {}
    for t, w in enumerate(word_of):
        if w >= 0:
            tokens_of.setdefault(w, []).append(t)
    objects, functions = [], []
    for w, toks in sorted(tokens_of.items()):
        word = words[w]
        if sample.kind in ("colour", "shape"):
            objects.append((toks, sample.target))
            continue
        obj = None
        if word in world.COLOURS and w + 1 < len(words) and words[w + 1] in world.SHAPES:
            obj = sample.scene.find(word, words[w + 1])
        elif word in world.SHAPES and w > 0 and words[w - 1] in world.COLOURS:
            obj = sample.scene.find(words[w - 1], word)
        if obj is not None:
            objects.append((toks, obj))
        elif word in FUNCTION_WORDS:
            functions.append(toks)
    return objects, functions


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def binarise_answer(maps: list[dict]) -> list[np.ndarray]:
    """One Otsu threshold over all maps of one answer on a common scale (see the module docstring)."""
    peaks = np.array([max(m["peak"], 0.0) for m in maps])
    top = peaks.max() if len(peaks) else 0.0
    if top <= 0:
        return [np.zeros_like(m["heatmap"], dtype=bool) for m in maps]
    common = [m["heatmap"].astype(np.float64) * (p / top) for m, p in zip(maps, peaks)]
    pooled = np.concatenate([c.ravel() for c in common])
    if pooled.max() <= pooled.min():
        return [c > 0 for c in common]
    thr = threshold_otsu(pooled)
    return [c > thr for c in common]


def evaluate_token_maps(
    loaded_model,
    samples: list[world.Sample],
    methods: Iterable[str] | dict[str, Explainer] = METHODS,
    batch_size: int = 32,
    steps: int = 64,
    progress: bool = False,
) -> dict:
    """Per method: faithfulness, localisation, Obj/Func/F1-IoU and latency on ``samples`` (module docstring)."""
    scorer = Scorer(loaded_model)
    explainers = methods if isinstance(methods, dict) else {m: get_method(m) for m in methods}
    rows: dict[str, dict[str, list]] = {
        m: {
            "ins": [],
            "del": [],
            "ins_within": [],
            "del_within": [],
            "pg_mask": [],
            "pg_box": [],
            "obj_iou": [],
            "func_iou": [],
            "ms_call": [],
            "ms_map": [],
            "passes": [],
            "pg_mask_qa": [],
            "pg_mask_caption": [],
        }
        for m in explainers
    }
    for i, s in enumerate(samples):
        image = s.scene.image
        audit = scorer.prepare(s.prompt, s.truth, (image.shape[1], image.shape[0]))
        objects, functions = word_targets(s, audit)
        targets = [toks for toks, _ in objects] + functions
        if not targets:
            continue
        jobs: list[tuple[str, Job]] = []
        for m in explainers:
            start = time.perf_counter()
            maps = explainers[m].heatmaps(scorer, audit, image, targets)
            ms = (time.perf_counter() - start) * 1000
            r = rows[m]
            r["ms_call"].append(ms)
            r["ms_map"].append(ms / len(targets))
            r["passes"].append(maps[0]["forward_passes"])
            binary = binarise_answer(maps)
            for (toks, obj), mp, b in zip(objects, maps, binary):
                hit = pointing_game(mp["heatmap"], obj.mask)
                r["pg_mask"].append(hit)
                r["pg_mask_caption" if s.kind == "caption" else "pg_mask_qa"].append(hit)
                r["pg_box"].append(pointing_game(mp["heatmap"], box_mask(obj.bbox, image.shape[:2])))
                r["obj_iou"].append(_iou(b, obj.mask))
                jobs.append((m, Job(audit, pixel_ranking_curves(image, mp["heatmap"], toks, steps=steps))))
            for b in binary[len(objects) :]:
                r["func_iou"].append(float((~b).mean()))  # IoU(inactive pixels, whole image)
        run_jobs([j for _, j in jobs], scorer.log_probs, batch_size)
        for m, job in jobs:
            if job.error is not None:
                raise job.error
            ins, dele, curves = job.result
            rows[m]["ins"].append(ins)
            rows[m]["del"].append(dele)
            ins_within, dele_within = aucs_within_end_points(curves)
            rows[m]["ins_within"].append(ins_within)
            rows[m]["del_within"].append(dele_within)
        if progress and (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(samples)} samples", flush=True)
    return {m: _summary(r) for m, r in rows.items()}


def _mean(xs) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _summary(r: dict[str, list]) -> dict:
    obj, func = _mean(r["obj_iou"]), _mean(r["func_iou"])
    f1 = 2 * obj * func / (obj + func) if obj is not None and func is not None and obj + func > 0 else None
    return {
        "insertion_auc": _mean(r["ins"]),
        "deletion_auc": _mean(r["del"]),
        "insertion_within": _mean(r["ins_within"]),
        "deletion_within": _mean(r["del_within"]),
        "pointing_mask": _mean(r["pg_mask"]),
        "pointing_box": _mean(r["pg_box"]),
        "pointing_mask_qa": _mean(r["pg_mask_qa"]),
        "pointing_mask_caption": _mean(r["pg_mask_caption"]),
        "obj_iou": obj,
        "func_iou": func,
        "f1_iou": f1,
        "ms_per_call": _mean(r["ms_call"]),
        "ms_per_map": _mean(r["ms_map"]),
        "forward_passes": _mean(r["passes"]),
        "object_maps": len(r["obj_iou"]),
        "function_maps": len(r["func_iou"]),
    }


COLUMNS = [
    ("insertion_auc", "ins AUC ↑"),
    ("deletion_auc", "del AUC ↓"),
    ("pointing_mask", "PG mask"),
    ("pointing_box", "PG box"),
    ("pointing_mask_qa", "PG mask (QA)"),
    ("pointing_mask_caption", "PG mask (captions)"),
    ("obj_iou", "Obj-IoU"),
    ("func_iou", "Func-IoU"),
    ("f1_iou", "F1-IoU"),
    ("forward_passes", "passes"),
    ("ms_per_call", "ms / call"),
    ("ms_per_map", "ms / map"),
]


def print_table(table: dict) -> None:
    print("| method | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for m, r in table.items():
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            cells.append(
                "–"
                if v is None
                else f"{v:.0f}"
                if key in ("forward_passes",)
                else f"{v:.1f}"
                if key.startswith("ms")
                else f"{v:.3f}"
            )
        print(f"| {m} | " + " | ".join(cells) + " |")
    print_within(table)


def print_within(table: dict) -> None:
    """The AUCs within the image's end points (insertion <= whole image, deletion >= blank image);
    bench/faithfulness.py prints its tables' with it too."""
    print("\nWithin the image's end points:\n")
    print("| method | ins AUC ↑ | del AUC ↓ | ins − del |")
    print("|---|---|---|---|")
    for m, r in table.items():
        if r.get("insertion_within") is not None:
            ins, dele = r["insertion_within"], r["deletion_within"]
            print(f"| {m} | {ins:.3f} | {dele:.3f} | {ins - dele:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--n", type=int, default=100, help="held-out samples (40%% colour, 40%% shape answers, 20%% captions)"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-size", type=int, default=32, help="forward batch for the insertion / deletion images")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    ap.add_argument(
        "--view-weighting",
        choices=["equal", "agreement"],
        default="equal",
        help="how msea and msea+arc weight their scales (equal: the methods' default)",
    )
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; use {', '.join(METHODS)}")
    start = time.perf_counter()
    explainers = {m: get_method(m) for m in methods}
    for m, e in explainers.items():
        if isinstance(e, TokenMap) and e.variant.multiscale and args.view_weighting != "equal":
            settings = replace(e.map_params, view_weighting=args.view_weighting)
            explainers[m] = TokenMap(e.name, e.summary, e.variant, settings)
    table = evaluate_token_maps(
        load_model(args.model), bench_samples(args.n), explainers, args.batch_size, args.steps, progress=True
    )
    print(f"\n{args.n} samples, {time.perf_counter() - start:.0f} s in all\n")
    print_table(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)


if __name__ == "__main__":
    main()
