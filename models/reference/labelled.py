"""Labelled claims from the reference world: the data `mllm-audit calibrate` fits risk on.

    python -m mllm_audit.models.reference.labelled --out DIR [--captions 1000] [--existence 600]
        [--seed 40000] [--model DIR]

The model answers held-out scenes greedily, and every claim of its answer is labelled
against the scene:

- captions ("Describe the image."): each object claim ("red circle") is hallucinated iff no
  object of that colour and shape is in the scene;
- existence questions, POPE-style (arXiv 2305.10355): half ask about an object that is there,
  the others about an absent one drawn at random, from the objects most frequent in the
  world (popular), or from the usual partners of the objects present (adversarial: the
  co-occurrence bias of `world.CO_OCCURRENCE`); the "yes" or "no" is hallucinated iff wrong.

Writes `DIR/labelled.jsonl` (one case a line, the format of docs/risk.md) and the images as
PNG under `DIR/images/`. Scenes come from the random streams seeded `BASE + k`, with k the
question kind's index in `world.QUESTION_KINDS` (4 existence, 5 caption; 6 for the pool the
popular objects are counted in), as `evaluate.held_out_samples` draws them. Seeds in use
elsewhere: training 0, `evaluate` 10 000, `bench.samples` 20 000, `bench.hallucination` 30 000
(each + 0..5); the shipped calibration uses 40 000 (the default), the tests 80 000.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from mllm_audit.explainers.claims import Claim, group_claims
from mllm_audit.models.reference import world
from mllm_audit.models.reference.evaluate import generate_answers, held_out_samples
from PIL import Image

DEFAULT_SEED = 40_000
FILE_NAME = "labelled.jsonl"
NEGATIVES = ("random", "popular", "adversarial")
POPULAR_POOL = 2000  # scenes the popular objects are counted in
POPULAR_TOP = 3  # a popular negative is one of the 3 most frequent objects absent from the scene


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words as spans: claims are grouped by words, whatever the tokenizer."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def caption_claim_label(claim: Claim, scene: world.Scene) -> bool | None:
    """Whether an object claim of a caption is hallucinated; None when it names no colour or shape."""
    words = [w.lower() for w in re.findall(r"\w+", claim.text)]
    colours = [w for w in words if w in world.COLOURS]
    shapes = [w for w in words if w in world.SHAPES]
    if not colours and not shapes:
        return None
    if len(colours) > 1 or len(shapes) > 1:  # "red blue circle": no single object is both
        return True
    return scene.find(colours[0] if colours else None, shapes[0] if shapes else None) is None


def label_caption(answer: str, scene: world.Scene) -> list[dict[str, Any]]:
    out = []
    for claim in group_claims(answer, word_spans(answer)):
        hallucinated = caption_claim_label(claim, scene)
        if hallucinated is not None:
            out.append({"start": claim.start, "end": claim.end, "text": claim.text, "hallucinated": hallucinated})
    return out


def label_existence(answer: str, truth: str) -> list[dict[str, Any]] | None:
    """The answer's yes/no claim, hallucinated iff it differs from the truth; None for another answer."""
    claims = [c for c in group_claims(answer, word_spans(answer)) if c.kind == "existence"]
    if not claims:
        return None
    said = claims[0].text.lower()
    return [{"start": claims[0].start, "end": claims[0].end, "text": claims[0].text, "hallucinated": said != truth}]


def popular_objects(seed: int) -> list[tuple[str, str]]:
    """Every (colour, shape), the most frequent in the world's scenes first (POPE's popular setting)."""
    rng = np.random.default_rng(seed)
    counts: Counter[tuple[str, str]] = Counter()
    for _ in range(POPULAR_POOL):
        counts.update((o.colour, o.shape) for o in world.render_scene(rng).objects)
    every = [(c, s) for c in world.COLOURS for s in world.SHAPES]
    return sorted(every, key=lambda k: (-counts[k], k))


def existence_samples(n: int, seed: int) -> list[world.Sample]:
    """`n` existence questions: positives and random, popular and adversarial negatives in turn."""
    offset = world.QUESTION_KINDS.index("existence")
    np_rng, rng = np.random.default_rng(seed + offset), random.Random(seed + offset)
    popular = popular_objects(seed + len(world.QUESTION_KINDS))
    samples = []
    for i in range(n):
        scene = world.render_scene(np_rng)
        if i % 2 == 0:
            obj = rng.choice(scene.objects)
            samples.append(world.Sample("existence", f"Is there a {obj.name}?", "yes", "yes", scene, obj))
            continue
        negative = NEGATIVES[(i // 2) % len(NEGATIVES)]
        if negative == "adversarial":
            while not world.absent_partners(scene):  # a scene with a trigger whose partner is absent
                scene = world.render_scene(np_rng)
            colour, shape = rng.choice(world.absent_partners(scene))
        elif negative == "popular":
            colour, shape = rng.choice([k for k in popular if not scene.has(*k)][:POPULAR_TOP])
        else:
            colour, shape = rng.choice([(c, s) for c in world.COLOURS for s in world.SHAPES if not scene.has(c, s)])
        prompt = f"Is there a {colour} {shape}?"
        samples.append(world.Sample("existence", prompt, "no", "no", scene, negative=negative))
    return samples


def write_labelled(
    out: Path, captions: int, existence: int, seed: int = DEFAULT_SEED, model: str | None = None
) -> dict[str, int]:
    """Generate, label and write the file; returns counts of cases and claims."""
    from mllm_audit.models.loading import load_model

    loaded = load_model(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    cases: list[dict[str, Any]] = []
    skipped = 0
    started = time.monotonic()
    for kind, samples in (
        ("caption", held_out_samples("caption", captions, seed=seed) if captions else []),
        ("existence", existence_samples(existence, seed) if existence else []),
    ):
        answers = generate_answers(loaded, samples)
        for i, (sample, answer) in enumerate(zip(samples, answers)):
            if kind == "caption":
                claims: list[dict[str, Any]] | None = label_caption(answer, sample.scene)
            else:
                claims = label_existence(answer, sample.truth)
            if not claims:  # an answer with nothing to judge (an empty caption, neither yes nor no)
                skipped += 1
                continue
            case_id = f"{kind}-{i:05d}"
            image = Path("images") / f"{case_id}.png"
            Image.fromarray(sample.scene.image).save(out / image)
            cases.append(
                {
                    "id": case_id,
                    "image": image.as_posix(),
                    "prompt": sample.prompt,
                    "answer": answer,
                    "claims": claims,
                    "kind": kind,
                    "negative": sample.negative,
                }
            )
        print(f"{kind}: {len(samples)} answered in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    with (out / FILE_NAME).open("w") as fh:
        for case in cases:
            fh.write(json.dumps(case) + "\n")
    claims_all = [c for case in cases for c in case["claims"]]
    return {
        "cases": len(cases),
        "skipped": skipped,
        "claims": len(claims_all),
        "hallucinated": sum(bool(c["hallucinated"]) for c in claims_all),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help=f"directory for {FILE_NAME} and images/")
    ap.add_argument("--captions", type=int, default=1000, help="captioned scenes")
    ap.add_argument("--existence", type=int, default=600, help="existence questions (half with a yes answer)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="base of the scene streams' seeds")
    ap.add_argument("--model", default=None, help="model directory (default: the bundled reference model)")
    args = ap.parse_args(argv)
    counts = write_labelled(args.out, args.captions, args.existence, args.seed, args.model)
    print(
        f"{args.out / FILE_NAME}: {counts['cases']} cases "
        f"({counts['skipped']} answers with nothing to judge left out), "
        f"{counts['claims']} claims, {counts['hallucinated']} hallucinated"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
