"""Teacher-forced scoring: one forward pass gives every answer token's log-probability.

`Scorer.log_probs` takes (audit, image) pairs, possibly from different audits, runs them as
one right-padded batch and returns, per pair, the log-probability of each answer token
(`[answer_tokens]`). Images of one audit share a sequence; different audits may differ in
length, and right padding keeps every real token's position and score unchanged.

Family specifics (how images become model inputs, where an image's tokens sit and the grid they
form) live in models/families.py. Each audit's sequence and image-token layout are built for
its image size in `prepare`; where a family's token sequence depends on the size (Qwen2-VL,
Idefics3), an image of another size is refused rather than scored against the wrong sequence.

`ScorerProtocol` is what explainers may ask of a scorer: scores and white-box logits, the image
tokens' layout, token counts and texts, and the part of an image the model sees. They never see
the Hugging Face processor or the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from mllm_audit.explainers.masking import ImageLike, MaskedImage
from mllm_audit.models.attention import attention_to_image, eager_attention, relevancy, upper_layers
from mllm_audit.models.families import Box, ImageLayout
from mllm_audit.models.gradients import capture_input_embeds, embedding_attributions
from mllm_audit.models.loading import LoadedModel
from mllm_audit.models.sequence import AnswerTokens, TokenizedSequence, build_sequence, pad_batch
from mllm_audit.models.similarity import patch_similarity
from numpy.typing import NDArray
from PIL import Image


@dataclass(frozen=True)
class Audit:
    """A prompt and answer prepared for scoring against images of one size."""

    prompt: str
    answer: str
    image_size: tuple[int, int]  # (width, height)
    sequence: TokenizedSequence = field(repr=False)
    layout: ImageLayout | None = field(default=None, repr=False)  # image tokens of an image of image_size

    @property
    def tokens(self) -> AnswerTokens:
        return self.sequence.answer

    @property
    def n_tokens(self) -> int:
        return len(self.sequence.answer.ids)


@dataclass
class WhiteBoxOutput:
    """Per pair: the logits at every position (TAM reads token activations off them)."""

    logits: torch.Tensor  # [seq, vocab]


@dataclass(frozen=True)
class AttentionReadout:
    """Per target, one value per image token (`Scorer.attention_maps`)."""

    attention: NDArray[np.float64]  # [targets, image tokens]: upper-half attention of the emitting positions
    relevancy: NDArray[np.float64] | None  # [targets, image tokens]: propagated gradient-weighted attention


@dataclass(frozen=True)
class Readout:
    """What one forward pass of the full image says about the answer (risk signals)."""

    log_probs: NDArray[np.float64]  # [answer tokens]
    entropy: NDArray[np.float64]  # [answer tokens], nats
    # [image tokens, answer tokens]: each answer token's log-probability read at each image token
    # with the LM head (logit lens); None when the family's image tokens are unknown
    patch_log_probs: NDArray[np.float64] | None
    grid: tuple[int, int] | None  # (rows, cols) of the image tokens
    # [image tokens, phrase tokens]: the same readout of a phrase the caller asked about (the
    # object a yes/no question names); None when none was asked for or the grid is unknown
    phrase_patch_log_probs: NDArray[np.float64] | None = None


class ScorerProtocol(Protocol):
    """What explainers use of a scorer (`Scorer` is the one implementation)."""

    def prepare(self, prompt: str, answer: str, image_size: tuple[int, int]) -> Audit:
        """The audit's token sequence for images of `image_size` (width, height)."""
        ...

    def log_probs(self, pairs: Sequence[tuple[Audit, ImageLike]]) -> list[NDArray[np.float64]]:
        """Log-probability of every answer token, `[answer_tokens]` per (audit, image) pair."""
        ...

    def white_box(self, pairs: Sequence[tuple[Audit, ImageLike]]) -> list[WhiteBoxOutput]:
        """Full-vocabulary logits at every real position, per (audit, image) pair."""
        ...

    def input_gradients(self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        """`[targets, image tokens]`: gradient x input of each target's summed log-probability at the
        language model's input embeddings of the image tokens (row-major over `image_grid`), signed."""
        ...

    def attention_maps(
        self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]], with_relevancy: bool = False
    ) -> AttentionReadout:
        """How much the positions emitting each target attend to each image token (row-major over
        `image_grid`): raw attention, and gradient-weighted relevancy when asked."""
        ...

    def hidden_similarity(
        self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]:
        """`[targets, image tokens]`: cosine similarity of each image token's last hidden state with the
        mean of the target tokens' own (row-major over `image_grid`), in [-1, 1]."""
        ...

    def image_token_positions(self, audit: Audit) -> list[int]:
        """Sequence positions of the image's tokens, row-major over `image_grid`."""
        ...

    def image_grid(self, audit: Audit, image: ImageLike) -> tuple[int, int]:
        """(rows, cols) of the image's tokens."""
        ...

    def readout(
        self, pairs: Sequence[tuple[Audit, ImageLike]], phrases: Sequence[Sequence[int]] | None = None
    ) -> list[Readout]:
        """Answer-token log-probabilities, entropies and patch readouts, one forward per pair;
        `phrases`: per pair, token ids whose patch readout to add (may be empty)."""
        ...

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` on its own, without special tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is on its own, without special tokens."""
        ...

    def special_token_ids(self) -> frozenset[int]:
        """The tokenizer's special token ids (BOS, EOS, padding, the image placeholder, ...)."""
        ...

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id, decoded on its own."""
        ...

    def view_box(self, image_shape: tuple[int, int]) -> Box:
        """The box (x0, y0, x1, y1) of an image of `image_shape` (height, width) that its tokens cover."""
        ...


def answer_positions(audit: Audit) -> range:
    """The positions whose logits predict the answer's tokens (token t is predicted one earlier)."""
    start = audit.sequence.answer_start
    return range(start - 1, start - 1 + audit.n_tokens)


def chosen_log_probs(answer_logits: torch.Tensor, audit: Audit) -> torch.Tensor:
    """`[answer tokens]`: each answer token's log-probability from its position's logits `[n, vocab]`."""
    log_p = torch.log_softmax(answer_logits.float(), dim=-1)
    return log_p.gather(1, torch.tensor(audit.tokens.ids, device=answer_logits.device)[:, None])[:, 0]


def answer_log_probs(logits: torch.Tensor, audit: Audit) -> torch.Tensor:
    """`[answer tokens]`: each answer token's log-probability from one sequence's logits `[seq, vocab]`."""
    positions = answer_positions(audit)
    return chosen_log_probs(logits[positions.start : positions.stop], audit)


def to_pil(image: ImageLike | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


class Scorer:
    def __init__(self, loaded: LoadedModel, backend: Callable[..., Any] | None = None) -> None:
        """`backend` runs the model's forward instead of torch (models.onnx_backend.OnnxBackend)."""
        self.loaded = loaded
        self.model = loaded.model
        self.run_model: Callable[..., Any] = backend or loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.pad_id = self._pad_id()
        self.pixel_lookup = loaded.family.pixel_lookup(self.processor)
        # the answer's scores need the vocabulary projection at a few positions, not at every one
        forward = backend or loaded.model.forward
        self.keeps_some_logits = "logits_to_keep" in inspect.signature(forward).parameters

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def prepare(self, prompt: str, answer: str, image_size: tuple[int, int]) -> Audit:
        """The audit's sequence for images of `image_size` (width, height): some families' image
        token count and layout depend on it, so each audit is built for its own size."""
        size = (int(image_size[0]), int(image_size[1]))
        seq = build_sequence(self.processor, prompt, answer, image_size=size)
        layout: ImageLayout | None
        try:
            layout = self.loaded.family.image_layout(self.model, self.processor, seq.input_ids, Image.new("RGB", size))
        except ValueError:
            layout = None  # no known grid (an unknown family): fine for black-box methods, white-box raises
        return Audit(prompt, answer, size, seq, layout)

    def _forward(self, pairs: Sequence[tuple[Audit, ImageLike]]) -> torch.Tensor:
        """Logits `[batch, seq, vocab]` of the right-padded batch."""
        logits: torch.Tensor = self.model_outputs(pairs).logits
        return logits

    def model_outputs(self, pairs: Sequence[tuple[Audit, ImageLike]], **options: Any) -> Any:
        """The model's output on the right-padded batch; `options` go to the forward (output_attentions)."""
        ids, mask = pad_batch([a.sequence.input_ids for a, _ in pairs], self.pad_id)
        arrays = [img for _, img in pairs if isinstance(img, (np.ndarray, MaskedImage))]
        if self.pixel_lookup is not None and len(arrays) == len(pairs) and self.pixel_lookup.applies(arrays):
            # the processor's numbers, at once, composed on the device
            inputs = {"pixel_values": self.pixel_lookup.pixel_values(arrays, self.loaded.device)}
        else:
            images = [to_pil(img) for _, img in pairs]
            for (audit, _), image in zip(pairs, images):
                self._check_size(audit, image)
            inputs = self.loaded.family.model_inputs(self.model, self.processor, images, ids)
        dev, dt = self.loaded.device, self.loaded.dtype
        inputs = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
        return self.run_model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False, **inputs, **options)

    @torch.inference_mode()
    def log_probs(self, pairs: Sequence[tuple[Audit, ImageLike]]) -> list[NDArray[np.float64]]:
        """Log-probability of every answer token, one float64 array `[answer_tokens]` per pair."""
        if not pairs:
            return []
        rows = [list(answer_positions(audit)) for audit, _ in pairs]
        if self.keeps_some_logits:
            # Only the answer positions (their union over the batch) go through the vocabulary
            # projection: every position's would be [batch, sequence, vocabulary], gigabytes for a
            # real model at batch 32.
            wanted = sorted({p for row in rows for p in row})
            column = {p: i for i, p in enumerate(wanted)}
            keep = torch.tensor(wanted, device=self.loaded.device)
            logits = self.model_outputs(pairs, logits_to_keep=keep).logits
            rows = [[column[p] for p in row] for row in rows]
        else:
            logits = self._forward(pairs)
        return [
            chosen_log_probs(logits[i, row], audit).double().cpu().numpy()
            for i, ((audit, _), row) in enumerate(zip(pairs, rows))
        ]

    @torch.inference_mode()
    def readout(
        self, pairs: Sequence[tuple[Audit, ImageLike]], phrases: Sequence[Sequence[int]] | None = None
    ) -> list[Readout]:
        """Answer-token log-probabilities, entropies and patch readouts, one forward per pair;
        `phrases`: per pair, token ids whose patch readout to add (may be empty)."""
        if not pairs:
            return []
        all_logits = self._forward(pairs)
        results = []
        for row, (audit, image) in enumerate(pairs):
            answer = answer_positions(audit)
            log_p = torch.log_softmax(all_logits[row, answer.start : answer.stop].float(), dim=-1)
            targets = torch.tensor(audit.tokens.ids, device=log_p.device)
            entropy = -(log_p.exp() * log_p).sum(dim=-1)
            patches, grid, phrase = None, None, None
            if audit.layout is not None:
                layout = self._layout(audit, image)
                positions = torch.tensor(list(layout.positions), device=log_p.device)
                readout = torch.log_softmax(all_logits[row, positions].float(), dim=-1)
                patches, grid = readout[:, targets].double().cpu().numpy(), layout.grid
                if phrases is not None and len(phrases[row]):
                    wanted = torch.tensor(list(phrases[row]), device=log_p.device)
                    phrase = readout[:, wanted].double().cpu().numpy()
            chosen = log_p.gather(1, targets[:, None])[:, 0]
            results.append(
                Readout(chosen.double().cpu().numpy(), entropy.double().cpu().numpy(), patches, grid, phrase)
            )
        return results

    def score_images(self, audit: Audit, images: Sequence[ImageLike]) -> NDArray[np.float64]:
        """One audit against a batch of images: log-probabilities `[images, answer_tokens]`."""
        return np.stack(self.log_probs([(audit, image) for image in images]))

    @torch.inference_mode()
    def white_box(self, pairs: Sequence[tuple[Audit, ImageLike]]) -> list[WhiteBoxOutput]:
        """Full-vocabulary logits at every real position, for white-box token maps."""
        logits = self._forward(pairs)
        return [
            WhiteBoxOutput(logits[row, : len(audit.sequence.input_ids)].float().cpu())
            for row, (audit, _) in enumerate(pairs)
        ]

    def input_gradients(self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        """`[targets, image tokens]`: gradient x input of each target's summed log-probability at the
        language model's input embeddings of the image tokens, signed. One forward with grad (the
        service otherwise runs without), then one backward per target from that graph."""
        self._check_white_box_targets(audit, targets, "gradients")
        layout = self._layout(audit, image)
        language_model = self.loaded.family.language_model(self.model)
        with torch.enable_grad(), capture_input_embeds(language_model) as leaves:
            chosen = answer_log_probs(self._forward([(audit, image)])[0], audit)
            sums = [chosen[list(target)].sum() for target in targets]
            if len(leaves) != 1:
                raise ValueError(f"the language model ran {len(leaves)} times in one forward; expected once")
            return embedding_attributions(sums, leaves[0], layout.positions)

    def attention_maps(
        self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]], with_relevancy: bool = False
    ) -> AttentionReadout:
        """Per target, how much the positions that emit its tokens attend to each image token:
        the attention probabilities of the language model's upper half of layers, averaged over
        heads (one forward), and with `with_relevancy` the gradient-weighted attention propagated
        through every layer too (that forward with grad, then a backward per target)."""
        self._check_white_box_targets(audit, targets, "attention maps")
        positions = list(self._layout(audit, image).positions)
        start = audit.sequence.answer_start
        rows = [[start + t - 1 for t in target] for target in targets]  # each token is emitted one position earlier
        # a leaf at the input embeddings gives the backward a graph even where no parameter requires grad
        language_model = self.loaded.family.language_model(self.model)
        capture = capture_input_embeds(language_model) if with_relevancy else nullcontext()
        with eager_attention(self.model), torch.set_grad_enabled(with_relevancy), capture:
            out = self.model_outputs([(audit, image)], output_attentions=True)
            if not out.attentions:
                raise ValueError(f"{self.loaded.family.name}: the model returned no attention probabilities")
            attentions = torch.stack([a[0].detach() for a in out.attentions])  # [layers, heads, seq, seq]
            layers = upper_layers(len(attentions))
            attention = np.stack(
                [attention_to_image(attentions, r, positions, layers).double().cpu().numpy() for r in rows]
            )
            if not with_relevancy:
                return AttentionReadout(attention, None)
            chosen = answer_log_probs(out.logits[0], audit)
            maps = []
            for i, (target, r) in enumerate(zip(targets, rows)):
                last = i == len(targets) - 1
                grads = torch.autograd.grad(chosen[list(target)].sum(), out.attentions, retain_graph=not last)
                weights = torch.stack([g[0] for g in grads])
                maps.append(relevancy(attentions, weights, r, positions).double().cpu().numpy())
            return AttentionReadout(attention, np.stack(maps))

    @torch.inference_mode()
    def hidden_similarity(
        self, audit: Audit, image: ImageLike, targets: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]:
        """`[targets, image tokens]`: cosine similarity of each image token's last hidden state with the
        mean of the target tokens' own (the states at the positions that hold them), in [-1, 1]. One forward."""
        self._check_white_box_targets(audit, targets, "hidden-state similarities")
        positions = list(self._layout(audit, image).positions)
        start = audit.sequence.answer_start
        last = self.model_outputs([(audit, image)], output_hidden_states=True).hidden_states[-1][0]
        rows = [patch_similarity(last, positions, [start + t for t in target]) for target in targets]
        return torch.stack(rows).double().cpu().numpy()

    def _check_white_box_targets(self, audit: Audit, targets: Sequence[Sequence[int]], what: str) -> None:
        if self.run_model is not self.model:
            raise ValueError(f"{what} need the torch model: this scorer runs another backend")
        n = audit.n_tokens
        for target in targets:
            if not target or any(not 0 <= t < n for t in target):
                raise ValueError(f"target token indices {list(target)} are not within the answer's {n} tokens")

    def _check_size(self, audit: Audit, image: Image.Image) -> None:
        if image.size != audit.image_size and self.loaded.family.size_dependent:
            raise ValueError(
                f"an image of {image.size[0]}x{image.size[1]} used with an audit prepared for "
                f"{audit.image_size[0]}x{audit.image_size[1]} (its image tokens depend on the size)"
            )

    def _layout(self, audit: Audit, image: ImageLike | Image.Image | None = None) -> ImageLayout:
        probe = Image.new("RGB", audit.image_size)
        if image is not None:
            probe = to_pil(image)
            self._check_size(audit, probe)
        if audit.layout is not None and probe.size == audit.image_size:
            return audit.layout
        return self.loaded.family.image_layout(self.model, self.processor, audit.sequence.input_ids, probe)

    def image_token_positions(self, audit: Audit) -> list[int]:
        """Sequence positions of the image's tokens, row-major over `image_grid`."""
        return list(self._layout(audit).positions)

    def image_grid(self, audit: Audit, image: ImageLike) -> tuple[int, int]:
        """(rows, cols) of the image's tokens; rows * cols == len(image_token_positions(audit))."""
        return self._layout(audit, image).grid

    # ------------------------------------------------------------------ text and view, without the processor
    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` on its own, without special tokens."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is on its own, without special tokens (what request limits count)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def special_token_ids(self) -> frozenset[int]:
        """The tokenizer's special token ids (BOS, EOS, padding, the image placeholder, ...)."""
        return frozenset(int(i) for i in (getattr(self.tokenizer, "all_special_ids", None) or []))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id decoded on its own (a word piece keeps its leading space)."""
        return [str(self.tokenizer.decode([int(i)])) for i in ids]

    def view_box(self, image_shape: tuple[int, int]) -> Box:
        """The box (x0, y0, x1, y1) of an image of `image_shape` (height, width) that its tokens
        cover: all of it, except where the family's processor crops (LLaVA centre-crops a
        non-square image to its central square)."""
        h, w = image_shape
        return self.loaded.family.view_box(self.processor, (int(h), int(w)))


if TYPE_CHECKING:

    def _is_a_scorer_protocol(scorer: Scorer) -> ScorerProtocol:
        return scorer  # mypy checks that Scorer has every method of ScorerProtocol, with its signature
