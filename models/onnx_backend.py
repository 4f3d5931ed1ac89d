"""ONNX Runtime backend for the scorer (LLaVA family), chosen with MLLM_AUDIT_BACKEND=onnx.

At start-up the loaded model is exported to two ONNX graphs, both with a dynamic batch:

* vision: `pixel_values [images, 3, H, W]` -> projected image features `[images, tokens, d]`
  (vision tower, the configured hidden layer and feature selection, the projector);
* language: `inputs_embeds [batch, seq, d]`, `attention_mask` -> `logits [batch, seq, vocab]`.

Between them the text embeddings are looked up and each image's features written into its
image-token positions, as LlavaForConditionalGeneration does. Exporting the whole model as one
graph does not work: its per-image split of the features freezes the batch size at export.

ONNX Runtime silently falls back to the CPU provider when CUDA is asked for but its libraries
are missing, so `providers` holds what the sessions really use, and the worker logs it.
The model is loaded on the CPU in float32 for the export (the reference model and small
checkpoints; a model of several GB exceeds what one ONNX file holds without external data).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from mllm_audit.models.loading import LoadedModel

ONNX_FAMILIES = ("llava",)
OPSET = 17


class _Vision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        cfg = self.model.config
        out = self.model.model.vision_tower(pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":  # drop the CLS token
            hidden = hidden[:, 1:]
        return self.model.model.multi_modal_projector(hidden)


class _Language(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds, attention_mask):
        out = self.model.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        )
        return self.model.lm_head(out.last_hidden_state)


class OnnxLlava:
    """The loaded LLaVA model's forward, run by ONNX Runtime."""

    def __init__(self, loaded: LoadedModel, use_cuda: bool = False, directory: Path | None = None):
        import onnxruntime as ort

        if loaded.family.name not in ONNX_FAMILIES:
            raise ValueError(
                f"the onnx backend supports the {', '.join(ONNX_FAMILIES)} family; "
                f"{loaded.model_id} is {loaded.family.name}: use MLLM_AUDIT_BACKEND=torch"
            )
        if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
            raise ValueError("the onnx backend exports a model loaded on the CPU in float32")
        model = loaded.model
        self.image_token_id = loaded.family.image_token_id(model)
        self.embeddings = model.get_input_embeddings().weight.detach().numpy()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="mllm-audit-onnx-")
        directory = Path(directory or self._tmp.name)
        vision_file, language_file = self._export(model, directory)
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the worker's share of the cores
        # idle threads that spin waiting for work take cores from the rest of the worker: with
        # spinning on, batches of 8 and 32 ran 1.3-1.8x slower on 2 cores (bench/backend.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.vision = ort.InferenceSession(str(vision_file), options, providers=wanted)
        self.language = ort.InferenceSession(str(language_file), options, providers=wanted)
        self.providers = self.language.get_providers()  # what ORT granted, not what was asked for
        self.requested = wanted

    def _export(self, model, directory: Path) -> tuple[Path, Path]:
        cfg = model.config
        side = cfg.vision_config.image_size
        pixels = torch.zeros(2, 3, side, side)
        with torch.inference_mode():
            n_features = _Vision(model)(pixels).shape[1]
        embeds = torch.zeros(2, n_features + 4, cfg.text_config.hidden_size)
        mask = torch.ones(2, n_features + 4, dtype=torch.long)
        vision_file, language_file = directory / "vision.onnx", directory / "language.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Vision(model),
                (pixels,),
                str(vision_file),
                input_names=["pixel_values"],
                output_names=["features"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
            )
            torch.onnx.export(
                _Language(model),
                (embeds, mask),
                str(language_file),
                input_names=["inputs_embeds", "attention_mask"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={
                    "inputs_embeds": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch", 1: "sequence"},
                },
            )
        return vision_file, language_file

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor, **_
    ) -> SimpleNamespace:
        """The model's output (`.logits`) for a right-padded batch, one image per row."""
        ids = input_ids.cpu().numpy()
        features = self.vision.run(None, {"pixel_values": pixel_values.float().cpu().numpy()})[0]
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
                "inputs_embeds": embeds.astype(np.float32, copy=False),
                "attention_mask": attention_mask.cpu().numpy().astype(np.int64, copy=False),
            },
        )[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))
