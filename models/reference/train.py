"""Train the reference model on freshly generated scenes, within a wall-clock budget on CPU.

The committed weights come from two runs whose training loops take 39.9 minutes in all on 2 CPU cores
(plus about 7 s of start-up and saving per run; `make reference-model`):

    python -m mllm_audit.models.reference.train --out /tmp/ref-base --minutes 36 --no-patch-words
    python -m mllm_audit.models.reference.train --init /tmp/ref-base --out models/reference/weights --minutes 3.9 \
        --vision-fraction 0 --lr 5e-4 --aux-weight 0 --seed 2 --kind-weights colour=5,existence=1.5

Why it learns every question kind in the budget:
- objects span about 2x2 patches of the 6x6 token grid, and auxiliary heads ask each image
  token for the colour, shape and layout cell of the object under it, so the vision tower
  learns a dense, decodable map first (phase 1, vision only);
- the chat template puts the question before the image, and a binding head on the decoder's
  middle layer is taught which patches the question is about (deep supervision), so the
  decoder only has to read out the right patch (phase 2: language loss on the answer tokens
  plus the auxiliary losses);
- the second run sharpens colour questions (the slowest kind to bind) and adds the patch
  word loss: the LM head read at an image token names the colour and shape it shows, as in
  real MLLMs, which white-box maps (TAM) rely on.
The auxiliary heads are thrown away; the saved model is a plain LlavaForConditionalGeneration.
The learning rate follows a cosine over the elapsed fraction of the budget.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mllm_audit.models.families import Processor
from mllm_audit.models.reference import world
from mllm_audit.models.reference.build import PATCH_SIZE, build_model, build_processor
from mllm_audit.models.sequence import build_sequence, pad_batch
from numpy.typing import NDArray
from transformers import AutoProcessor, LlavaForConditionalGeneration, PreTrainedTokenizerBase

GRID = world.IMAGE_SIZE // PATCH_SIZE
KIND_WEIGHTS = {"colour": 1.0, "shape": 1.5, "position": 1.0, "count": 1.0, "existence": 1.0, "caption": 1.5}
COLOUR_IDS = {c: i + 1 for i, c in enumerate(world.COLOURS)}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(world.SHAPES)}
BINDING_LAYER = 2


def patch_labels(scene: world.Scene) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Colour, shape and layout cell (1-9; 0 = background) of the object covering most of each patch."""
    colour = np.zeros((GRID, GRID), dtype=np.int64)
    shape = np.zeros((GRID, GRID), dtype=np.int64)
    cell = np.zeros((GRID, GRID), dtype=np.int64)
    best = np.full((GRID, GRID), 0.1)  # a patch must be at least 10% object to carry its label
    for obj in scene.objects:
        cover = obj.mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).mean(axis=(1, 3))
        win = cover > best
        colour[win], shape[win], best[win] = COLOUR_IDS[obj.colour], SHAPE_IDS[obj.shape], cover[win]
        cell[win] = 1 + obj.cell[0] * 3 + obj.cell[1]
    return colour.reshape(-1), shape.reshape(-1), cell.reshape(-1)


class Batches:
    """Random training batches; prompt tokenization is cached (prompts repeat)."""

    def __init__(self, processor: Processor, seed: int, kind_weights: dict[str, float] = KIND_WEIGHTS) -> None:
        self.processor = processor
        self.np_rng = np.random.default_rng(seed)
        self.rng = random.Random(seed)
        self.kinds, self.weights = list(kind_weights), list(kind_weights.values())

    def sample(self, biased: bool = True, kind: str | None = None) -> world.Sample:
        scene = world.render_scene(self.np_rng)
        kind = kind or self.rng.choices(self.kinds, self.weights)[0]
        return world.make_sample(kind, scene, self.rng, biased=biased)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the batcher lives as long as training
    def _tokens(self, prompt: str, answer: str) -> tuple[tuple[int, ...], int]:
        seq = build_sequence(self.processor, prompt, answer, add_eos=True)
        return tuple(seq.input_ids), seq.answer_start

    def tensors(self, samples: list[world.Sample]) -> dict[str, torch.Tensor]:
        rows, starts = zip(*(self._tokens(s.prompt, s.answer) for s in samples))
        ids, mask = pad_batch([list(r) for r in rows], self.processor.tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        for row, (seq, start) in enumerate(zip(rows, starts)):
            labels[row, start : len(seq)] = ids[row, start : len(seq)]
        pixels = self.processor.image_processor([s.scene.image for s in samples], return_tensors="pt")["pixel_values"]
        colour, shape, cell = zip(*(patch_labels(s.scene) for s in samples))
        target = np.zeros((len(samples), GRID * GRID), dtype=np.float32)
        has_target = np.zeros(len(samples), dtype=np.float32)
        for row, s in enumerate(samples):
            if s.target is not None:
                cover = s.target.mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).mean(axis=(1, 3))
                target[row], has_target[row] = (cover > 0.1).reshape(-1), 1.0
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": pixels,
            "patch_colour": torch.from_numpy(np.stack(colour)),
            "patch_shape": torch.from_numpy(np.stack(shape)),
            "patch_cell": torch.from_numpy(np.stack(cell)),
            "patch_is_target": torch.from_numpy(target),
            "has_target": torch.from_numpy(has_target),
        }


class AuxHeads(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.colour = torch.nn.Linear(hidden, len(COLOUR_IDS) + 1)
        self.shape = torch.nn.Linear(hidden, len(SHAPE_IDS) + 1)
        self.cell = torch.nn.Linear(hidden, 10)
        self.binding = torch.nn.Linear(hidden, 1)  # on decoder states: "is this patch what is asked about?"

    def loss(self, feats: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c = F.cross_entropy(self.colour(feats).flatten(0, 1), batch["patch_colour"].flatten())
        s = F.cross_entropy(self.shape(feats).flatten(0, 1), batch["patch_shape"].flatten())
        p = F.cross_entropy(self.cell(feats).flatten(0, 1), batch["patch_cell"].flatten())
        return c + s + p


def image_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    # untyped on purpose: its pooler_output holds the list of per-image features, not the declared tensor
    out: Any = model.model.get_image_features(pixel_values=pixel_values)
    return torch.stack(list(out.pooler_output))


def patch_word_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Token ids of " red" ... " orange", then " circle" ... " cross" (one token each)."""
    ids: list[int] = []
    for word in list(COLOUR_IDS) + list(SHAPE_IDS):
        tokens = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        assert len(tokens) == 1, f"{word!r} is not one token"
        ids += tokens
    return torch.tensor(ids)


def patch_word_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], word_ids: torch.Tensor) -> torch.Tensor:
    """At each image position, the LM head's logit of the colour and shape words of the object
    under the patch is pushed up and every other such word's down (BCE). Real MLLMs' image
    tokens read out as the words of what they show; this gives the tiny model that property,
    which white-box maps such as TAM rely on."""
    n_colours = len(COLOUR_IDS)
    target = torch.zeros(*batch["patch_colour"].shape, len(word_ids))
    colour, shape = batch["patch_colour"], batch["patch_shape"]
    target[..., :n_colours] = F.one_hot(colour, n_colours + 1)[..., 1:].float()
    target[..., n_colours:] = F.one_hot(shape, len(SHAPE_IDS) + 1)[..., 1:].float()
    return F.binary_cross_entropy_with_logits(logits[..., word_ids], target)


def losses(
    model: LlavaForConditionalGeneration,
    heads: AuxHeads,
    batch: dict[str, torch.Tensor],
    with_language: bool,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Auxiliary (+ binding), language-model and patch-word losses of one batch."""
    feats = image_features(model, batch["pixel_values"])
    aux = heads.loss(feats, batch)
    if not with_language:
        return aux, torch.zeros(()), torch.zeros(())
    embeds = model.get_input_embeddings()(batch["input_ids"])
    is_image = batch["input_ids"] == model.config.image_token_index
    embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.to(embeds.dtype))
    out = model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"], output_hidden_states=True
    )
    # deep supervision of the binding step, halfway up the decoder
    mid = out.hidden_states[BINDING_LAYER][is_image].view(feats.shape[0], feats.shape[1], -1)
    bind = F.binary_cross_entropy_with_logits(heads.binding(mid)[..., 0], batch["patch_is_target"], reduction="none")
    bind = (bind.mean(dim=1) * batch["has_target"]).sum() / batch["has_target"].sum().clamp(min=1)
    words = torch.zeros(())
    if word_ids is not None:
        image_logits = out.logits[is_image].view(feats.shape[0], feats.shape[1], -1)
        words = patch_word_loss(image_logits, batch, word_ids)
    return aux + bind, out.loss, words


@torch.no_grad()
def teacher_forced_accuracy(
    model: LlavaForConditionalGeneration, batches: Batches, per_kind: int = 24
) -> dict[str, float]:
    """Exact match under teacher forcing with true labels: every answer token (and EOS) is the argmax."""
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() untyped
    acc: dict[str, float] = {}
    for kind in world.QUESTION_KINDS:
        samples = [batches.sample(biased=False, kind=kind) for _ in range(per_kind)]
        for s in samples:
            s.answer = s.truth
        b = batches.tensors(samples)
        logits = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"]
        ).logits
        pred = logits[:, :-1].argmax(-1)
        target = b["labels"][:, 1:]
        ok = ((pred == target) | (target == -100)).all(dim=1)
        acc[kind] = ok.float().mean().item()
    model.train()
    return acc


def train(
    out: Path,
    minutes: float,
    vision_fraction: float,
    batch_size: int,
    lr: float,
    seed: int,
    init: Path | None = None,
    aux_weight: float = 0.5,
    kind_weights: dict[str, float] | None = None,
    patch_words: bool = True,
) -> None:
    torch.manual_seed(seed)
    processor: Processor
    if init:  # continue training a saved model (its auxiliary heads were not saved: start them anew)
        processor = AutoProcessor.from_pretrained(init, local_files_only=True)  # type: ignore[no-untyped-call]
        model = LlavaForConditionalGeneration.from_pretrained(init, local_files_only=True)
    else:
        processor = build_processor()
        model = build_model(processor)
    heads = AuxHeads(model.config.get_text_config().hidden_size)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    batches = Batches(processor, seed, kind_weights or KIND_WEIGHTS)
    word_ids = patch_word_ids(processor.tokenizer) if patch_words else None
    budget = minutes * 60
    start = time.monotonic()
    step, last_report = 0, start
    model.train()
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        with_language = frac >= vision_fraction
        batch = batches.tensors([batches.sample() for _ in range(batch_size)])
        aux, lm, words = losses(model, heads, batch, with_language, word_ids)
        loss = lm + words + aux_weight * aux if with_language else aux
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if time.monotonic() - last_report > 120:
            last_report = time.monotonic()
            msg = f"step {step} {elapsed / 60:.1f} min aux {aux.item():.3f} lm {lm.item():.3f} words {words.item():.3f}"
            if with_language:
                acc = teacher_forced_accuracy(model, batches)
                msg += " " + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
            print(msg, flush=True)
    model.eval()  # type: ignore[no-untyped-call]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved to {out} after {step} steps, {(time.monotonic() - start) / 60:.1f} min", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    ap.add_argument("--minutes", type=float, default=38.0)
    ap.add_argument("--vision-fraction", type=float, default=0.08, help="share of the budget for phase 1")
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="continue from a saved model instead of a new one")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the auxiliary losses in phase 2")
    ap.add_argument("--kind-weights", default=None, help=f'e.g. "colour=3,shape=1" (default: {KIND_WEIGHTS})')
    ap.add_argument("--no-patch-words", action="store_true", help="leave out the patch word loss")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = dict(KIND_WEIGHTS)
    if args.kind_weights:
        weights.update({k: float(v) for k, v in (kv.split("=") for kv in args.kind_weights.split(","))})
    train(
        args.out,
        args.minutes,
        args.vision_fraction,
        args.batch_size,
        args.lr,
        args.seed,
        args.init,
        args.aux_weight,
        weights,
        not args.no_patch_words,
    )


if __name__ == "__main__":
    main()
