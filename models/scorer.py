"""Teacher-forced scoring: one forward pass gives every answer token's log-probability.

`Scorer.log_probs` takes (audit, image) pairs, possibly from different audits, runs them as
one right-padded batch and returns, per pair, the log-probability of each answer token
(`[answer_tokens]`). Images of one audit share a sequence; different audits may differ in
length, and right padding keeps every real token's position and score unchanged.

Family specifics (how images become model inputs, where an image's tokens sit and the grid they
form) live in models/families.py. Each audit's sequence and image-token layout are built for
its image size in `prepare`; where a family's token sequence depends on the size (Qwen2-VL,
Idefics3), an image of another size is refused rather than scored against the wrong sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from mllm_audit.models.families import ImageLayout
from mllm_audit.models.loading import LoadedModel
from mllm_audit.models.sequence import AnswerTokens, Sequence, build_sequence, pad_batch
from PIL import Image


@dataclass(frozen=True)
class Audit:
    """A prompt and answer prepared for scoring against images of one size."""

    prompt: str
    answer: str
    image_size: tuple[int, int]  # (width, height)
    sequence: Sequence = field(repr=False)
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


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


class Scorer:
    def __init__(self, loaded: LoadedModel, backend=None):
        """`backend` runs the model's forward instead of torch (models.onnx_backend.OnnxLlava)."""
        self.loaded = loaded
        self.model = loaded.model
        self.run_model = backend or loaded.model
        self.processor = loaded.processor
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        tok = self.processor.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def prepare(self, prompt: str, answer: str, image_size: tuple[int, int]) -> Audit:
        """The audit's sequence for images of `image_size` (width, height): some families' image
        token count and layout depend on it, so each audit is built for its own size."""
        size = (int(image_size[0]), int(image_size[1]))
        seq = build_sequence(self.processor, prompt, answer, image_size=size)
        try:
            layout = self.loaded.family.image_layout(self.model, self.processor, seq.input_ids, Image.new("RGB", size))
        except ValueError:
            layout = None  # no known grid (an unknown family): fine for black-box methods, white-box raises
        return Audit(prompt, answer, size, seq, layout)

    def _forward(self, pairs: list[tuple[Audit, np.ndarray]]):
        ids, mask = pad_batch([a.sequence.input_ids for a, _ in pairs], self.pad_id)
        images = [to_pil(img) for _, img in pairs]
        for (audit, _), image in zip(pairs, images):
            self._check_size(audit, image)
        inputs = self.loaded.family.model_inputs(self.model, self.processor, images, ids)
        dev, dt = self.loaded.device, self.loaded.dtype
        inputs = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
        return self.run_model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False, **inputs)

    @torch.inference_mode()
    def log_probs(self, pairs: list[tuple[Audit, np.ndarray]]) -> list[np.ndarray]:
        """Log-probability of every answer token, one float64 array `[answer_tokens]` per pair."""
        if not pairs:
            return []
        out = self._forward(pairs)
        results = []
        for row, (audit, _) in enumerate(pairs):
            start, n = audit.sequence.answer_start, audit.n_tokens
            logits = out.logits[row, start - 1 : start - 1 + n].float()
            targets = torch.tensor(audit.tokens.ids, device=logits.device)
            lp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            results.append(lp.double().cpu().numpy())
        return results

    def score_images(self, audit: Audit, images: list[np.ndarray]) -> np.ndarray:
        """One audit against a batch of images: log-probabilities `[images, answer_tokens]`."""
        return np.stack(self.log_probs([(audit, image) for image in images]))

    @torch.inference_mode()
    def white_box(self, pairs: list[tuple[Audit, np.ndarray]]) -> list[WhiteBoxOutput]:
        """Full-vocabulary logits at every real position, for white-box token maps."""
        out = self._forward(pairs)
        return [
            WhiteBoxOutput(out.logits[row, : len(audit.sequence.input_ids)].float().cpu())
            for row, (audit, _) in enumerate(pairs)
        ]

    def _check_size(self, audit: Audit, image: Image.Image) -> None:
        if image.size != audit.image_size and self.loaded.family.size_dependent:
            raise ValueError(
                f"an image of {image.size[0]}x{image.size[1]} used with an audit prepared for "
                f"{audit.image_size[0]}x{audit.image_size[1]} (its image tokens depend on the size)"
            )

    def _layout(self, audit: Audit, image: np.ndarray | Image.Image | None = None) -> ImageLayout:
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

    def image_grid(self, audit: Audit, image: np.ndarray) -> tuple[int, int]:
        """(rows, cols) of the image's tokens; rows * cols == len(image_token_positions(audit))."""
        return self._layout(audit, image).grid
