"""Shared fixtures: the bundled reference model and a tiny random LLaVA saved to disk."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from mllm_audit.models.loading import load_model
from mllm_audit.models.reference import world
from mllm_audit.models.scorer import Scorer


@pytest.fixture(scope="session")
def reference():
    torch.set_num_threads(2)
    return load_model()


@pytest.fixture(scope="session")
def reference_scorer(reference):
    return Scorer(reference)


def held_out_scene(seed: int) -> world.Scene:
    return world.render_scene(np.random.default_rng(50_000 + seed))


def held_out_sample(kind: str, seed: int) -> world.Sample:
    return world.make_sample(kind, held_out_scene(seed), random.Random(seed), biased=False)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A randomly initialised LLaVA of another shape (56 px, patch 14) saved in HF format."""
    from mllm_audit.models.reference.build import CHAT_TEMPLATE, build_tokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tok = build_tokenizer()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
        vision_feature_layer=-2,
    )
    model = LlavaForConditionalGeneration(config)
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
