"""Shared fixtures (the bundled reference model, a tiny random LLaVA saved to disk) and the rule
that every test is of exactly one kind, a marker registered in pyproject.toml:

  unit         no model, or a cheap call of a small one; in-process
  integration  real models in-process (explainers, model families, ONNX); no server process
  e2e          runs the product in child processes: the server, the CLI, the example scripts
  deploy       the Dockerfile, the Helm chart and the wheel, checked offline

`slow` (quality checks of the methods, far costlier than the rest) can be added to any kind.
`make test` runs everything; `make test-fast` leaves out e2e, deploy and slow.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from mllm_audit.models.loading import load_model
from mllm_audit.models.reference import world
from mllm_audit.models.scorer import Scorer

KINDS = ("unit", "integration", "e2e", "deploy")


@pytest.hookimpl(tryfirst=True)  # before -m deselects: an unmarked test is an error whatever the selection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        kinds = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
        if len(kinds) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(kinds) or 'no kind'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one of the markers {', '.join(KINDS)} (tests/conftest.py):\n" + "\n".join(wrong)
        )


# One torch thread in the test process: the models here are small, and on shared cores torch's
# worker threads spin waiting for each other (the tiny models' tests took 5x the CPU with two).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference():
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
