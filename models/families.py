"""Per-family details in one place: how the processor is loaded, how images become model inputs,
which token is the image placeholder, and where an image's tokens sit and the grid they form
(so white-box maps can be laid out as an image). Explainers never see these.

Families (all loaded from local Hugging Face checkpoints):

* LLaVA (`llava`): one run of image tokens, a square grid.
* Qwen2-VL / Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`): the image is resized to multiples of
  `patch_size * merge_size` (aspect ratio kept), so the token count depends on the image size;
  `pixel_values` are all images' patches concatenated and `image_grid_thw` says which are whose;
  the grid is `(h, w) / spatial_merge_size`. The model also needs `mm_token_type_ids` (1 on image
  tokens) for its multimodal rotary positions. Without torchvision, the stock processor cannot
  even be built (its required video processor is torchvision-only, and transformers' class check
  fails on the missing class), so an image-only subclass of the same processor is used: identical
  text and image processing, no video support.
* Idefics3 / SmolVLM v1 (`idefics3`): with image splitting (the checkpoint's default) an image
  becomes `rows x cols` tiles plus a downscaled global view, each `image_seq_len` tokens (a
  `side x side` grid). The white-box grid is the tiles put together, `(rows*side, cols*side)`,
  with positions reordered row-major over it; the global view's tokens still feed the model but
  are left out of the grid. Unsplit images (splitting off, or an image no larger than one tile)
  give just the global view's `side x side` grid.
* SmolVLM2 (`smolvlm`) shares the Idefics3 layout, but its processor needs torchvision (video)
  and `num2words`; it loads only where those are installed.

An unknown image-text-to-text family still works for black-box methods (square grid guess).

A family also says which part of an image its tokens see (`view_box`: LLaVA's CLIP processor
centre-crops a non-square image), and, where its forward splits into an image part and a text
part that can be run apart (LLaVA), computes each part (`image_features`, `text_logits`): the
ONNX backend exports those two parts as graphs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

import torch
from mllm_audit.models.pixel_lookup import PixelLookup
from PIL import Image

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, PreTrainedModel

# A transformers processor (ProcessorMixin): its tokenizer and image processor are attributes set at
# run time from the checkpoint, which its type does not declare, so it is used untyped.
Processor: TypeAlias = Any
# The image processor's output as a dict: tensors (pixel_values, image_grid_thw, ...) and, for
# Idefics3 with return_row_col_info, nested lists of tile rows and columns.
ImageInputs: TypeAlias = dict[str, Any]
Box: TypeAlias = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive


@dataclass(frozen=True)
class ImageLayout:
    """Where one image's tokens sit in a sequence, row-major over its (rows, cols) token grid."""

    positions: tuple[int, ...]
    grid: tuple[int, int]


def _runs(input_ids: list[int], token_id: int) -> list[list[int]]:
    """Maximal runs of consecutive positions holding `token_id`."""
    runs: list[list[int]] = []
    for i, t in enumerate(input_ids):
        if t != token_id:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _size_fields(size: object) -> dict[str, Any]:
    """An image processor's `size` / `crop_size` as a dict of its set fields: transformers 5 keeps
    them as a `SizeDict` (a dataclass, None where unset), older processors as a dict."""
    if isinstance(size, Mapping):
        return dict(size)
    if is_dataclass(size) and not isinstance(size, type):
        return {k: v for k, v in asdict(size).items() if v is not None}
    return {}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    size_dependent: ClassVar[bool] = False  # whether the image token sequence depends on the image size
    # whether the forward splits into `image_features` and `text_logits` (the ONNX backend exports the two)
    separable_forward: ClassVar[bool] = False

    # ------------------------------------------------------------------ loading
    def load_processor(self, path: str | os.PathLike[str], trust_remote_code: bool = False) -> Processor:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # transformers leaves it untyped
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )

    # ------------------------------------------------------------------ inputs
    def image_token_id(self, model: PreTrainedModel) -> int:
        cfg = model.config
        for attr in ("image_token_id", "image_token_index"):
            if getattr(cfg, attr, None) is not None:
                return int(getattr(cfg, attr))
        raise ValueError(f"{self.name}: the model config names no image token")

    def image_inputs(self, processor: Processor, images: list[Image.Image]) -> ImageInputs:
        """The image processor's output for one image per sequence (PIL images, batch order)."""
        return dict(processor.image_processor(images=images, return_tensors="pt"))

    def model_inputs(
        self, model: PreTrainedModel, processor: Processor, images: list[Image.Image], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Everything the forward takes besides `input_ids` / `attention_mask`, one image per row."""
        return self.image_inputs(processor, images)

    def pixel_lookup(self, processor: Processor) -> PixelLookup | None:
        """The processor as a table for images at its output size, where the forward takes nothing
        else from the image (models/pixel_lookup.py); None: always run the processor."""
        return None

    # ------------------------------------------------------------------ layout
    def image_grid(self, model: PreTrainedModel, image_inputs: ImageInputs, n_image_tokens: int) -> tuple[int, int]:
        """(rows, cols) of one image's tokens as they appear in the sequence."""
        side = math.isqrt(n_image_tokens)
        if side * side != n_image_tokens:
            raise ValueError(f"{self.name}: {n_image_tokens} image tokens do not form a square grid")
        return side, side

    def image_token_positions(
        self, model: PreTrainedModel, input_ids: list[int], image_inputs: ImageInputs
    ) -> list[int]:
        """Sequence positions of the image's grid tokens, row-major over `image_grid`."""
        image_id = self.image_token_id(model)
        return [i for i, t in enumerate(input_ids) if t == image_id]

    def image_layout(
        self, model: PreTrainedModel, processor: Processor, input_ids: list[int], image: Image.Image
    ) -> ImageLayout:
        """Positions and grid of `image`'s tokens in a sequence built for an image of its size."""
        inputs = self.image_inputs(processor, [image])
        positions = self.image_token_positions(model, input_ids, inputs)
        grid = self.image_grid(model, inputs, len(positions))
        return ImageLayout(tuple(positions), (int(grid[0]), int(grid[1])))

    def view_box(self, processor: Processor, image_shape: tuple[int, int]) -> Box:
        """The box (x0, y0, x1, y1) of an image of `image_shape` (height, width) that its tokens cover.

        An image processor that resizes the shortest edge and then centre-crops (CLIP's, so LLaVA's)
        shows the model only the central part of a non-square image: pixels outside the box get
        no token. Any other processor is taken to show the whole image.
        """
        h, w = image_shape
        image_processor = processor.image_processor
        size = _size_fields(getattr(image_processor, "size", None))
        crop = _size_fields(getattr(image_processor, "crop_size", None))
        if not getattr(image_processor, "do_center_crop", False) or not crop:
            return 0, 0, w, h
        short = size.get("shortest_edge")
        scale = short / min(h, w) if short else 1.0
        crop_h, crop_w = crop.get("height", h * scale), crop.get("width", w * scale)
        # the crop, measured back in the original image's pixels
        ch, cw = min(h, crop_h / scale), min(w, crop_w / scale)
        y0, x0 = int(round((h - ch) / 2)), int(round((w - cw) / 2))
        return x0, y0, x0 + int(round(cw)), y0 + int(round(ch))

    def language_model(self, model: PreTrainedModel) -> torch.nn.Module:
        """The decoder the forward hands its merged text and image embeddings to (`inputs_embeds`):
        where gradient maps take their gradients. Every family here names it the transformers way."""
        decoder: torch.nn.Module = model.get_decoder()  # type: ignore[no-untyped-call]  # untyped in transformers
        return decoder

    # ------------------------------------------------------------------ a forward in two parts
    def image_features(self, model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features `[images, tokens, d]`, as the model writes them into its image
        tokens' embeddings (families with `separable_forward`)."""
        raise NotImplementedError(f"{self.name}: the forward is not split into image features and text logits")

    def text_logits(
        self, model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Logits `[batch, positions, vocab]` of the language model on embeddings with the image
        features already in place, at `positions` of every row (families with `separable_forward`)."""
        raise NotImplementedError(f"{self.name}: the forward is not split into image features and text logits")


# ---------------------------------------------------------------------------- LLaVA


@dataclass(frozen=True)
class LlavaFamily(Family):
    """One run of image tokens filled with the projected features of a CLIP-style vision tower."""

    separable_forward: ClassVar[bool] = True

    def pixel_lookup(self, processor: Processor) -> PixelLookup | None:
        return PixelLookup.probe(processor.image_processor)  # pixel_values are all the forward takes

    def image_features(self, model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower's configured hidden layer(s) (`vision_feature_layer`), without the CLS
        token under the "default" `vision_feature_select_strategy`, through the projector: what
        `LlavaModel.get_image_features` computes, with no per-image split, so that an export
        keeps a dynamic batch."""
        llava = cast("LlavaForConditionalGeneration", model)
        cfg = llava.config
        out = llava.model.vision_tower(pixel_values, output_hidden_states=True)
        layers = cfg.vision_feature_layer
        chosen = [out.hidden_states[layers]] if isinstance(layers, int) else [out.hidden_states[i] for i in layers]
        if cfg.vision_feature_select_strategy == "default":  # drop the CLS token
            chosen = [hidden[:, 1:] for hidden in chosen]
        hidden = chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)
        features: torch.Tensor = llava.model.multi_modal_projector(hidden)
        return features

    def text_logits(
        self, model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        llava = cast("LlavaForConditionalGeneration", model)
        out = llava.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        logits: torch.Tensor = llava.lm_head(out.last_hidden_state[:, positions])
        return logits


# ---------------------------------------------------------------------------- Qwen2-VL


@cache
def _image_only_processor(model_type: str) -> type[Any]:
    """The family's processor class without its (torchvision-only) video processor."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

    base: type[Any] = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor

    class ImageOnlyProcessor(base):  # type: ignore[misc]  # a base chosen at run time
        # A processor loads, checks and saves the sub-processors named in its __init__ signature,
        # so leaving `video_processor` out of it is all it takes: the stock __init__ still runs
        # (with video_processor=None, which ProcessorMixin then ignores) and text and image
        # processing are the stock ones.
        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"{base.__name__}ImageOnly"
    return ImageOnlyProcessor


@dataclass(frozen=True)
class Qwen2VLFamily(Family):
    size_dependent: ClassVar[bool] = True

    def load_processor(self, path: str | os.PathLike[str], trust_remote_code: bool = False) -> Processor:
        from transformers.utils.import_utils import is_torchvision_available

        if is_torchvision_available() or trust_remote_code:
            return super().load_processor(path, trust_remote_code)
        model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
        return _image_only_processor(model_type).from_pretrained(path, local_files_only=True)

    def model_inputs(
        self, model: PreTrainedModel, processor: Processor, images: list[Image.Image], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        inputs = self.image_inputs(processor, images)
        # 1 on image tokens: the model's multimodal rotary positions need it (0 text, 1 image)
        inputs["mm_token_type_ids"] = (input_ids == self.image_token_id(model)).to(torch.int32)
        return inputs

    def image_grid(self, model: PreTrainedModel, image_inputs: ImageInputs, n_image_tokens: int) -> tuple[int, int]:
        # image_grid_thw holds (t, h, w) in vision patches; tokens merge spatial_merge_size² patches
        _t, h, w = (int(v) for v in image_inputs["image_grid_thw"][0])
        merge = int(getattr(model.config.vision_config, "spatial_merge_size", 2))
        return h // merge, w // merge

    def view_box(self, processor: Processor, image_shape: tuple[int, int]) -> Box:
        # the whole image is resized to multiples of patch_size * merge_size: every pixel is seen
        h, w = image_shape
        return 0, 0, w, h


# ---------------------------------------------------------------------------- Idefics3


@dataclass(frozen=True)
class Idefics3Family(Family):
    size_dependent: ClassVar[bool] = True

    def image_inputs(self, processor: Processor, images: list[Image.Image]) -> ImageInputs:
        # nested: one list of images per sequence, so tiles are padded per row, not across rows
        out = processor.image_processor(images=[[im] for im in images], return_tensors="pt", return_row_col_info=True)
        return dict(out)

    def model_inputs(
        self, model: PreTrainedModel, processor: Processor, images: list[Image.Image], input_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        inputs = self.image_inputs(processor, images)
        inputs.pop("rows", None)
        inputs.pop("cols", None)
        return inputs

    @staticmethod
    def _tiles(image_inputs: ImageInputs) -> tuple[int, int]:
        rows, cols = image_inputs.get("rows", [[0]]), image_inputs.get("cols", [[0]])
        return int(rows[0][0]), int(cols[0][0])

    def image_token_positions(
        self, model: PreTrainedModel, input_ids: list[int], image_inputs: ImageInputs
    ) -> list[int]:
        runs = _runs(input_ids, self.image_token_id(model))
        rows, cols = self._tiles(image_inputs)
        if rows * cols == 0:
            if len(runs) != 1:
                raise ValueError(f"{self.name}: expected one run of image tokens, found {len(runs)}")
            return runs[0]
        if len(runs) != rows * cols + 1 or len({len(r) for r in runs}) != 1:
            raise ValueError(
                f"{self.name}: expected {rows}x{cols} tiles and a global view of equal "
                f"length, found runs of {[len(r) for r in runs]} image tokens"
            )
        side = math.isqrt(len(runs[0]))
        if side * side != len(runs[0]):
            raise ValueError(f"{self.name}: a tile of {len(runs[0])} image tokens is not a square grid")
        # tile (r, c) is run r*cols + c, its tokens row-major over side x side; the last run is
        # the global view, which is not part of the tiled grid
        positions: list[int] = []
        for r in range(rows):
            for y in range(side):
                for c in range(cols):
                    run = runs[r * cols + c]
                    positions.extend(run[y * side : (y + 1) * side])
        return positions

    def image_grid(self, model: PreTrainedModel, image_inputs: ImageInputs, n_image_tokens: int) -> tuple[int, int]:
        rows, cols = self._tiles(image_inputs)
        tiles = max(rows, 1) * max(cols, 1)
        side = math.isqrt(n_image_tokens // tiles)
        if side * side * tiles != n_image_tokens:
            raise ValueError(f"{self.name}: {n_image_tokens} image tokens do not form {tiles} square tiles")
        return max(rows, 1) * side, max(cols, 1) * side

    def view_box(self, processor: Processor, image_shape: tuple[int, int]) -> Box:
        # the whole image is resized (longest edge) and split into tiles: every pixel is seen
        h, w = image_shape
        return 0, 0, w, h


FAMILIES: tuple[Family, ...] = (
    LlavaFamily("llava", ("llava",)),
    Qwen2VLFamily("qwen2_vl", ("qwen2_vl", "qwen2_5_vl")),
    Idefics3Family("idefics3", ("idefics3", "smolvlm")),
)


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    # An unknown image-text-to-text family still works for black-box methods (square grid guess).
    return Family(model_type, (model_type,))
