"""Which internal readout localises: a pointing-game study of one-pass map designs on both checkpoints.

    python -m bench.map_readouts [--n 100] [--models ref,npw]

The choices behind the white-box maps, measured on the held-out samples of
bench/samples.py (object words only, the map's maximum inside the object's mask), on the
bundled checkpoint (`ref`, trained with the patch-word loss) and the one trained without it
(`npw`). Every readout is raw: one value per image token, no ECI, no rank filter, no
multi-scale views, so that only the readout differs.

- `lens Lk`: TAM's readout, the target's logit read at each image token through the LM head
  (logit lens) after layer k (k = the last layer is TAM's own choice).
- `similarity Lk`: GLSim-style patch similarity (arXiv 2508.19972): the cosine similarity of
  each image token's hidden state with the target token's, after layer k.
- `attention Lk`: the attention the position that emits the target pays to each image token
  in layer k, mean over heads; `attention upper` / `all` average the upper half / all layers
  (`upper` is the `attention` method).
- `TAM`: the `tam` method's map (the last layer's readout, ECI for the later words of a
  caption, the 3x3 rank Gaussian filter), and the same with a 5x5 filter or none.
- `rollout`: attention rollout (Abnar & Zuidema, arXiv 2005.00928): residual-mixed, row-normalised
  attention multiplied through the layers.
- `grad x attention upper`: ReLU(dA * A) averaged over heads and the upper half of layers,
  without propagation; `relevancy`: the same weighting propagated through all layers (the
  `relevancy` method); `attention x relevancy`: the product of the two, each scaled to a
  maximum of 1 (both come from the same forward).

And how the answer's earlier words are removed from a caption word's map (TAM's estimated
causal inference, ECI, and ARC's weighting of it; arXiv 2509.22415), on the object words of
captions that follow other words (the only words where ECI or ARC change anything): ECI off
(the last layer's readout and the rank filter), TAM's ECI (every earlier word removed), and
ARC's rank-biased-overlap weighting at several ranking depths k and persistences p.

Pointing game only: it needs no extra forward passes, so every variant is measured on
many words in seconds; insertion / deletion of the shipped methods are in bench/token_maps.py.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch
from mllm_audit.explainers import tam
from mllm_audit.explainers.arc import ArcParams
from mllm_audit.explainers.faithfulness import pointing_game
from mllm_audit.explainers.methods.attention import unit_scale
from mllm_audit.models.attention import attention_to_image, eager_attention, relevancy, upper_layers
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer

from bench.faithfulness import CHECKPOINTS
from bench.samples import bench_samples
from bench.token_maps import word_targets


def rollout(attentions: torch.Tensor, rows: list[int], columns: list[int]) -> torch.Tensor:
    seq = attentions.shape[-1]
    eye = torch.eye(seq)
    mixed = 0.5 * attentions.float().mean(dim=1) + 0.5 * eye  # the residual stream carries half
    mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    rolled = eye
    for layer in mixed:
        rolled = layer @ rolled
    return rolled[rows][:, columns].mean(dim=0)


def readouts(scorer: Scorer, sample, audit, toks: list[int]) -> dict[str, np.ndarray]:
    """Every variant's raw values at the image tokens for one target (see the module docstring)."""
    model = scorer.model
    positions = scorer.image_token_positions(audit)
    start = audit.sequence.answer_start
    rows, own = [start + t - 1 for t in toks], [start + t for t in toks]
    classes = [audit.tokens.ids[t] for t in toks]
    with eager_attention(model), torch.enable_grad():
        out = scorer.model_outputs([(audit, sample.scene.image)], output_attentions=True, output_hidden_states=True)
        n = audit.n_tokens
        log_p = torch.log_softmax(out.logits[0, start - 1 : start - 1 + n].float(), dim=-1)
        chosen = log_p.gather(1, torch.tensor(audit.tokens.ids)[:, None])[:, 0][toks].sum()
        grads = torch.autograd.grad(chosen, out.attentions, allow_unused=False)
    attentions = torch.stack([a[0].detach() for a in out.attentions])
    gradients = torch.stack([g[0] for g in grads])
    n_layers = len(attentions)
    values: dict[str, torch.Tensor] = {}
    norm, head = scorer.loaded.family.language_model(model).norm, model.get_output_embeddings()
    with torch.no_grad():
        hidden = [h[0].detach() for h in out.hidden_states]
        for k, h in enumerate(hidden):
            readout = h if k == n_layers else norm(h)  # the last hidden state is already normalised
            values[f"lens L{k}"] = head(readout[positions])[:, classes].sum(dim=-1)
        for k, h in enumerate(hidden):
            cosine = torch.nn.functional.cosine_similarity(h[positions], h[own].mean(0)[None], dim=-1)
            values[f"similarity L{k}"] = cosine
        for k in range(n_layers):
            values[f"attention L{k + 1}"] = attention_to_image(attentions, rows, positions, [k])
        values["attention upper"] = attention_to_image(attentions, rows, positions, upper_layers(n_layers))
        values["attention all"] = attention_to_image(attentions, rows, positions, range(n_layers))
        values["rollout"] = rollout(attentions, rows, positions)
        weighted = (gradients * attentions).clamp_min(0)
        values["grad x attention upper"] = attention_to_image(weighted, rows, positions, upper_layers(n_layers))
        values["relevancy"] = relevancy(attentions, gradients, rows, positions)
    result = {name: v.double().cpu().numpy() for name, v in values.items()}
    result["attention x relevancy"] = unit_scale(result["attention upper"]) * unit_scale(result["relevancy"])
    # TAM itself on the same forward: the last layer's readout with ECI (captions' later words), and
    # its rank Gaussian filter at two sizes or none
    logits = out.logits[0].detach().float().cpu().numpy()
    layout = tam.sequence_layout(scorer, audit, sample.scene.image)
    for name, use_filter, size in (("TAM", True, 3), ("TAM, filter 5x5", True, 5), ("TAM, no rank filter", False, 3)):
        result[name] = word_map(
            tam.token_grid_maps(logits, layout, toks, use_filter=use_filter, filter_size=size), toks
        )
    return result | context_readouts(logits, layout, toks)


def word_map(maps: dict[int, tam.TokenGridMap], toks: list[int]) -> np.ndarray:
    """A word's map from its tokens' maps: the mean of each scaled to its peak, as the method does."""
    return np.mean([tam.normalise(maps[t].grid).ravel() for t in toks], axis=0)


# ARC's relevance settings: the default, then one knob at a time
ARC_SETTINGS = {
    "ARC k=50, p=0.9 (default)": ArcParams(),
    "ARC k=5": ArcParams(k=5),
    "ARC k=20": ArcParams(k=20),
    "ARC k=200": ArcParams(k=200),
    "ARC p=0.5": ArcParams(p=0.5),
    "ARC p=0.98": ArcParams(p=0.98),
}


def context_readouts(logits: np.ndarray, layout: tam.SequenceLayout, toks: list[int]) -> dict[str, np.ndarray]:
    """The ECI and ARC variants of one word's map; empty unless earlier words of the answer precede it."""
    if not any(layout.word_of[k] != layout.word_of[toks[0]] for k in range(toks[0])):
        return {}
    rows, cols = layout.grid
    raw = [np.maximum(logits[layout.image_positions, layout.answer_ids[t]], 0.0).reshape(rows, cols) for t in toks]
    out = {"ECI off": np.mean([tam.normalise(tam.rank_gaussian_filter(r)).ravel() for r in raw], axis=0)}
    out["TAM's ECI (every earlier word removed)"] = word_map(tam.token_grid_maps(logits, layout, toks), toks)
    for name, params in ARC_SETTINGS.items():
        out[name] = word_map(tam.token_grid_maps(logits, layout, toks, arc_params=params), toks)
    return out


COUNT_ROWS = ("object words", "caption words after other words")


def pointing_rates(model_dir: str | None, n: int) -> dict[str, float]:
    scorer = Scorer(load_model(model_dir))
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample in bench_samples(n):
        image = sample.scene.image
        audit = scorer.prepare(sample.prompt, sample.truth, (image.shape[1], image.shape[0]))
        objects, _ = word_targets(sample, audit)
        grid, box = scorer.image_grid(audit, image), scorer.view_box(image.shape[:2])
        for toks, obj in objects:
            for name, v in readouts(scorer, sample, audit, toks).items():
                shifted = (v - v.min()).reshape(grid)  # similarities and logits may be negative
                heat = tam.grid_to_pixels(shifted, image.shape[:2], box)
                hits[name].append(pointing_game(heat, obj.mask))
    counts = dict(zip(COUNT_ROWS, (float(len(hits["rollout"])), float(len(hits["ECI off"])))))
    return {name: float(np.mean(h)) for name, h in hits.items()} | counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="held-out samples (40%% colour, 40%% shape, 20%% captions)")
    ap.add_argument("--models", default="ref,npw", help="checkpoints: ref, npw or directories")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    start = time.perf_counter()
    table = {name: pointing_rates(CHECKPOINTS.get(name, name), args.n) for name in names}
    print(f"\n{args.n} samples, {time.perf_counter() - start:.0f} s in all\n")
    print("| readout | " + " | ".join(f"PG mask {name}" for name in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for variant in table[names[0]]:
        cells = [
            f"{table[name][variant]:.0f}" if variant in COUNT_ROWS else f"{table[name][variant]:.3f}" for name in names
        ]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
