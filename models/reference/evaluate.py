"""Accuracy and hallucination figures of a model on held-out reference-world scenes.

    python -m mllm_audit.models.reference.evaluate [--model DIR] [--per-kind 500]

Loads the model through the same path as any local checkpoint, answers with greedy
decoding, and compares with the truth (not the biased training labels):
exact match for colour, shape, position, count and existence; object-level F1 and
CHAIR for captions; false "yes" rates on random and co-occurrence negatives.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from mllm_audit.models.loading import LoadedModel, load_model
from mllm_audit.models.reference import world
from mllm_audit.models.scorer import to_pil
from mllm_audit.models.sequence import generation_prompt

EVAL_SEED = 10_000  # training draws from seed 0's stream; these scenes are new


def held_out_samples(kind: str, n: int, seed: int = EVAL_SEED) -> list[world.Sample]:
    offset = world.QUESTION_KINDS.index(kind)
    np_rng, rng = np.random.default_rng(seed + offset), random.Random(seed + offset)
    return [world.make_sample(kind, world.render_scene(np_rng), rng, biased=False) for _ in range(n)]


@torch.inference_mode()
def generate_answers(
    loaded: LoadedModel, samples: list[world.Sample], batch_size: int = 50, max_new_tokens: int = 24
) -> list[str]:
    proc, tok = loaded.processor, loaded.processor.tokenizer
    # `generate` comes from GenerationMixin, which image-text-to-text models mix in and PreTrainedModel lacks
    generator: Any = loaded.model
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the last real token
    answers: list[str] = []
    try:
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            inputs = proc(
                text=[generation_prompt(proc, s.prompt) for s in chunk],
                images=[to_pil(s.scene.image) for s in chunk],
                return_tensors="pt",
                padding=True,
            ).to(loaded.device)
            out = generator.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            new = out[:, inputs["input_ids"].shape[1] :]
            answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return answers


def caption_scores(samples: list[world.Sample], answers: list[str]) -> dict[str, float]:
    tp = fp = fn = mentions = hallucinated = captions_with = 0
    for s, a in zip(samples, answers):
        truth = {o.name for o in s.scene.objects}
        said = world.objects_in_caption(a)
        wrong = [o for o in said if o not in truth]
        tp += len(set(said) & truth)
        fp += len(set(said) - truth)
        fn += len(truth - set(said))
        mentions += len(said)
        hallucinated += len(wrong)
        captions_with += bool(wrong)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "object_f1": 2 * precision * recall / max(precision + recall, 1e-9),
        "precision": precision,
        "recall": recall,
        "chair_i": hallucinated / max(mentions, 1),
        "chair_s": captions_with / max(len(samples), 1),
    }


def existence_scores(samples: list[world.Sample], answers: list[str]) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s, a in zip(samples, answers):
        group = s.negative or "positive"
        groups[group].append(a == "yes")
    out = {"accuracy": float(np.mean([a == s.truth for s, a in zip(samples, answers)]))}
    for group, said_yes in groups.items():
        key = "yes_rate_positive" if group == "positive" else f"false_yes_{group}"
        out[key] = float(np.mean(said_yes))
        out[f"n_{group}"] = len(said_yes)
    return out


def evaluate(model_dir: str | None, per_kind: int) -> dict[str, Any]:
    loaded = load_model(model_dir)
    report: dict[str, Any] = {"model": str(loaded.path), "per_kind": per_kind}
    for kind in world.QUESTION_KINDS:
        start = time.monotonic()
        samples = held_out_samples(kind, per_kind)
        answers = generate_answers(loaded, samples)
        if kind == "caption":
            figures = caption_scores(samples, answers)
        elif kind == "existence":
            figures = existence_scores(samples, answers)
        else:
            figures = {"accuracy": float(np.mean([a == s.truth for s, a in zip(samples, answers)]))}
        figures["seconds"] = round(time.monotonic() - start, 1)
        report[kind] = figures
        print(
            f"{kind:10s} "
            + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
            flush=True,
        )
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    ap.add_argument("--per-kind", type=int, default=500)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    report = evaluate(args.model, args.per_kind)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
