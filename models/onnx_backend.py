"""ONNX Runtime backend for the scorer, chosen with MLLM_AUDIT_BACKEND=onnx.

It runs families whose forward splits into an image part and a text part (`separable_forward`
in models/families.py: LLaVA). At start-up the loaded model's two parts, as its family computes
them, are exported to two ONNX graphs, both with a dynamic batch:

* vision: `pixel_values [images, 3, H, W]` -> image features `[images, tokens, d]`
  (`Family.image_features`; for LLaVA the vision tower's configured hidden layer and feature
  selection, then the projector);
* language: `inputs_embeds [batch, seq, d]`, `attention_mask`, `positions [n]` ->
  `logits [batch, n, vocab]` at those positions of every row (`Family.text_logits`): scoring
  needs the answer's few positions, and the logits come back to the host.

Between them the text embeddings are looked up and each image's features written into its
image-token positions, as the model's own forward does. Exporting the whole model as one
graph does not work: LLaVA's per-image split of the features freezes the batch size at export.

ONNX Runtime silently falls back to the CPU provider when CUDA is asked for but its libraries
are missing, so `providers` holds what the sessions really use, and the worker logs it.
The model is loaded on the CPU in float32 for the export (the reference model and small
checkpoints; a model of several GB exceeds what one ONNX file holds without external data).

With a cache directory (models/onnx_cache.py) the graphs are exported once per model revision
and export settings, and later starts load them (`exported` says which happened). `precision`
"float16" converts the exported float32 graphs to float16, inputs and outputs included, for the
CUDA provider only: ONNX Runtime's CPU provider lacks float16 kernels for much of the graph.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mllm_audit.models.families import FAMILIES, Family
from mllm_audit.models.loading import LoadedModel
from mllm_audit.models.onnx_cache import GRAPH_FILES, cached_graphs, export_settings
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ONNX_FAMILIES = tuple(f.name for f in FAMILIES if f.separable_forward)
OPSET = 17
PRECISIONS = {"float32": np.float32, "float16": np.float16}
log = logging.getLogger(__name__)


class _Vision(torch.nn.Module):
    def __init__(self, family: Family, model: PreTrainedModel) -> None:
        super().__init__()
        self.family = family
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.family.image_features(self.model, pixel_values)


class _Language(torch.nn.Module):
    def __init__(self, family: Family, model: PreTrainedModel) -> None:
        super().__init__()
        self.family = family
        self.model = model

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return self.family.text_logits(self.model, inputs_embeds, attention_mask, positions)


class OnnxBackend:
    """The loaded model's forward, run by ONNX Runtime (families with a separable forward)."""

    def __init__(
        self,
        loaded: LoadedModel,
        use_cuda: bool = False,
        cache: Path | None = None,
        precision: str = "float32",
    ) -> None:
        """`cache`: the directory of exported graphs (None: export into a temporary directory)."""
        import onnxruntime as ort

        if not loaded.family.separable_forward:
            raise ValueError(
                f"the onnx backend supports the {', '.join(ONNX_FAMILIES)} family; "
                f"{loaded.model_id} is {loaded.family.name}: use MLLM_AUDIT_BACKEND=torch"
            )
        if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
            raise ValueError("the onnx backend exports a model loaded on the CPU in float32")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown onnx precision {precision!r}; use {' or '.join(PRECISIONS)}")
        if precision == "float16" and not use_cuda:
            raise ValueError("the onnx backend runs float16 on the CUDA provider only; use float32 on the CPU")
        self.family = loaded.family
        self.precision = precision
        self.float_type = PRECISIONS[precision]
        model = loaded.model
        self.image_token_id = self.family.image_token_id(model)
        weight = model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        self.embeddings: NDArray[np.floating[Any]] = weight.detach().numpy().astype(self.float_type, copy=False)

        def export(directory: Path) -> None:
            self._export(loaded, directory)
            if precision == "float16":
                _convert_to_float16(directory)

        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mllm-audit-onnx-")
            self.graphs = Path(self._tmp.name)
            export(self.graphs)
            self.exported = True
        else:
            found = cached_graphs(cache, loaded.path, export_settings(OPSET, precision), export)
            self.graphs, self.exported = found.directory, found.exported
        log.info("onnx graphs %s: %s", "exported" if self.exported else "loaded from the cache", self.graphs)
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the worker's share of the cores
        # idle threads that spin waiting for work take cores from the rest of the worker: with
        # spinning on, batches of 8 and 32 ran 1.3-1.8x slower on 2 cores (bench/backend.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        vision_file, language_file = (self.graphs / name for name in GRAPH_FILES)
        self.vision = ort.InferenceSession(str(vision_file), options, providers=wanted)
        self.language = ort.InferenceSession(str(language_file), options, providers=wanted)
        self.providers: list[str] = self.language.get_providers()  # what ORT granted, not what was asked for
        self.requested = wanted
        if precision == "float16" and self.providers[0] != "CUDAExecutionProvider":
            raise RuntimeError(
                f"float16 onnx graphs need the CUDA provider, but ONNX Runtime granted {self.providers} "
                "(are onnxruntime-gpu and its CUDA libraries installed?); use float32"
            )

    def _export(self, loaded: LoadedModel, directory: Path) -> None:
        model = loaded.model
        # two images of the processor's pixel shape, for the export to trace
        probe = Image.new("RGB", (224, 224))
        pixels = torch.zeros_like(self.family.image_inputs(loaded.processor, [probe, probe])["pixel_values"])
        vision, language = _Vision(self.family, model), _Language(self.family, model)
        with torch.inference_mode():
            n_features = vision(pixels).shape[1]
        embeds = torch.zeros(2, n_features + 4, self.embeddings.shape[1])
        mask = torch.ones(2, n_features + 4, dtype=torch.long)
        positions = torch.tensor([n_features, n_features + 2])
        vision_file, language_file = (directory / name for name in GRAPH_FILES)
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
            warnings.simplefilter("ignore")
            torch.onnx.export(
                vision,
                (pixels,),
                str(vision_file),
                input_names=["pixel_values"],
                output_names=["features"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
            )
            torch.onnx.export(
                language,
                (embeds, mask, positions),
                str(language_file),
                input_names=["inputs_embeds", "attention_mask", "positions"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={
                    "inputs_embeds": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "positions": {0: "kept"},
                    "logits": {0: "batch", 1: "kept"},
                },
            )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        logits_to_keep: torch.Tensor | None = None,
        **_: Any,
    ) -> SimpleNamespace:
        """The model's output (`.logits`) for a right-padded batch, one image per row; with
        `logits_to_keep` (positions) only at those positions, as the transformers forward."""
        ids = input_ids.cpu().numpy()
        pixels = pixel_values.cpu().numpy().astype(self.float_type, copy=False)
        features = self.vision.run(None, {"pixel_values": pixels})[0]
        embeds = self.embeddings[ids]
        is_image = ids == self.image_token_id
        if is_image.sum() != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"{is_image.sum()} image tokens in the batch but {features.shape[0]} images of "
                f"{features.shape[1]} features"
            )
        embeds[is_image] = features.reshape(-1, features.shape[-1])
        logits = self.language.run(
            None,
            {
                "inputs_embeds": embeds,
                "attention_mask": attention_mask.cpu().numpy().astype(np.int64, copy=False),
                "positions": np.arange(ids.shape[1]) if logits_to_keep is None else logits_to_keep.cpu().numpy(),
            },
        )[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def _convert_to_float16(directory: Path) -> None:
    """Rewrite both graphs in float16, their inputs and outputs too (half the bytes to move)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for name in GRAPH_FILES:
        graph = onnx.load(str(directory / name))
        onnx.save(convert_float_to_float16(graph, keep_io_types=False), str(directory / name))
