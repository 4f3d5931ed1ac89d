"""Other model families through the generic loader and scorer: tiny randomly initialised Qwen2-VL,
Qwen2.5-VL and Idefics3 (SmolVLM) checkpoints of the real architectures, built and saved here
(with an offline tokenizer) and loaded back with `load_model`, like any local checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mllm_audit.models.loading import load_model
from mllm_audit.models.scorer import Scorer, to_pil
from mllm_audit.models.sequence import generation_prompt
from transformers import ProcessorMixin

pytestmark = pytest.mark.integration

PROMPT, ANSWER, OTHER_PROMPT, OTHER_ANSWER = (
    "Describe the image.",
    "a blue square.",
    "What colour is the circle?",
    "the circle is red.",
)

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM_TEMPLATE = (  # SmolVLM-Instruct's own template
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def family_tokenizer(special_tokens: list[str]):
    """The reference BPE tokenizer (built offline) with a family's special tokens added."""
    from mllm_audit.models.reference.build import build_tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = build_tokenizer().backend_tokenizer
    backend.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
    )


def set_processor_class(path, name: str) -> None:
    """Name the stock processor class in the saved configs, as a real checkpoint does."""
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (path / file).is_file():
            data = json.loads((path / file).read_text())
            data["processor_class"] = name
            (path / file).write_text(json.dumps(data, indent=2))


def text_config(tok, **extra) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_qwen_dir(request, tmp_path_factory):
    """Patch 4, merge 2: an image becomes (h/8) x (w/8) tokens, its aspect ratio kept."""
    import transformers
    from mllm_audit.models.families import _image_only_processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(0)
    tok = family_tokenizer(
        ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=64 * 64
    )
    # Without torchvision the stock processor cannot be built (nor loaded) here: save it through
    # the image-only subclass, then name the stock class as a real checkpoint would.
    processor = _image_only_processor(request.param)(image_processor, tok, chat_template=QWEN_TEMPLATE)
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # head_dim 16
    vision = dict(depth=2, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if request.param == "qwen2_vl":
        config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
        processor_class = "Qwen2VLProcessor"
    else:
        config_class, model_class = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=32, window_size=16, fullatt_block_indexes=[1]
        )
        processor_class = "Qwen2_5_VLProcessor"
    config = config_class(
        vision_config=vision,
        text_config=text_config(tok, rope_parameters=rope),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    path = tmp_path_factory.mktemp(request.param)
    model_class(config).save_pretrained(path)
    processor.save_pretrained(path)
    set_processor_class(path, processor_class)
    return path


def _idefics3_dir(tmp_path_factory, splitting: bool):
    """Tiles of 32 px, patch 4, pixel-shuffle 2: 4x4 tokens a tile; the longest edge goes to 64 px."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    torch.manual_seed(0)
    tok = family_tokenizer(
        ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
        + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=splitting
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=16, chat_template=SMOLVLM_TEMPLATE
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=4,
        ),
        text_config=LlamaConfig(**text_config(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    path = tmp_path_factory.mktemp("idefics3_split" if splitting else "idefics3")
    Idefics3ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_idefics3_dir(tmp_path_factory):
    return _idefics3_dir(tmp_path_factory, splitting=True)


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def plain_forward_scores(loaded, audit, image: np.ndarray) -> np.ndarray:
    """An independent path: the processor on the whole text and one image, no padding."""
    proc = loaded.processor
    text = generation_prompt(proc, audit.prompt)
    text += ("" if text[-1].isspace() else " ") + audit.answer
    inputs = proc(text=text, images=to_pil(image), return_tensors="pt")
    inputs.pop("text_replacement_offsets", None)
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits[0]
    ids = inputs["input_ids"][0]
    assert ids[-audit.n_tokens :].tolist() == audit.tokens.ids
    n = audit.n_tokens
    return torch.log_softmax(logits[-n - 1 : -1].float(), -1).gather(1, ids[-n:, None])[:, 0].double().numpy()


def check_family(
    path,
    family: str,
    size: tuple[int, int],
    other_size: tuple[int, int],
    grid: tuple[int, int],
    other_grid: tuple[int, int],
) -> None:
    loaded = load_model(path, device="cpu")
    assert loaded.family.name == family
    scorer = Scorer(loaded)
    assert scorer.keeps_some_logits, "the scores below come from the answer positions' logits alone"
    audit = scorer.prepare(PROMPT, ANSWER, size)
    images = random_images(2, size)
    scores = scorer.log_probs([(audit, img) for img in images])
    assert all(s.shape == (audit.n_tokens,) and np.isfinite(s).all() and (s <= 0).all() for s in scores)
    np.testing.assert_allclose(scores[1], plain_forward_scores(loaded, audit, images[1]), atol=1e-5)
    assert not np.allclose(scores[0], scores[1], atol=1e-6), "the image must matter"

    # another audit, of another length and image size, right-padded into the same batch
    other = scorer.prepare(OTHER_PROMPT, OTHER_ANSWER, other_size)
    other_image = random_images(1, other_size, seed=1)[0]
    assert len(other.sequence.input_ids) != len(audit.sequence.input_ids)
    mixed = scorer.log_probs([(other, other_image), (audit, images[1]), (audit, images[0])])
    np.testing.assert_allclose(mixed[1], scores[1], atol=1e-5)
    np.testing.assert_allclose(mixed[2], scores[0], atol=1e-5)
    alone = scorer.log_probs([(other, other_image)])[0]
    np.testing.assert_allclose(mixed[0], alone, atol=1e-5)

    # the token grid: rows * cols image tokens, each audit laid out for its own image size
    for a, image, expected in ((audit, images[0], grid), (other, other_image, other_grid)):
        positions = scorer.image_token_positions(a)
        assert scorer.image_grid(a, image) == expected
        assert len(positions) == expected[0] * expected[1] == len(set(positions))
        image_id = loaded.family.image_token_id(loaded.model)
        assert all(a.sequence.input_ids[p] == image_id for p in positions)
        assert max(positions) < a.sequence.answer_start

    # white-box outputs cover every real position of each row
    outs = scorer.white_box([(other, other_image), (audit, images[0])])
    assert outs[1].logits.shape[0] == len(audit.sequence.input_ids) and torch.isfinite(outs[1].logits).all()


def test_tiny_random_qwen2_vl(tiny_qwen_dir):
    # 70x40 -> 72x40 px -> 18x10 patches -> 9x5 tokens; 48x64 -> 12x16 patches -> 6x8 tokens
    check_family(tiny_qwen_dir, "qwen2_vl", (70, 40), (48, 64), (5, 9), (8, 6))


def test_tiny_random_idefics3_with_image_splitting(tiny_idefics3_dir):
    # 100x40 -> 64x26 -> 64x32 px: 1x2 tiles of 4x4 tokens (+ a global view left out of the grid)
    # 40x40 -> 64x64 px: 2x2 tiles
    check_family(tiny_idefics3_dir, "idefics3", (100, 40), (40, 40), (4, 8), (8, 8))


def test_idefics3_tiles_are_laid_out_row_major(tiny_idefics3_dir):
    scorer = Scorer(load_model(tiny_idefics3_dir, device="cpu"))
    audit = scorer.prepare(PROMPT, ANSWER, (100, 40))
    ids = audit.sequence.input_ids
    image_id = scorer.loaded.family.image_token_id(scorer.model)
    runs = [i for i, t in enumerate(ids) if t == image_id]
    tile_a, tile_b = runs[:16], runs[16:32]  # tile (0, 0) and tile (0, 1), then the global view
    grid = np.asarray(scorer.image_token_positions(audit)).reshape(4, 8)
    assert grid[:, :4].ravel().tolist() == tile_a and grid[:, 4:].ravel().tolist() == tile_b
    assert not set(runs[32:]) & set(grid.ravel().tolist())


def test_idefics3_without_image_splitting(tmp_path_factory):
    path = _idefics3_dir(tmp_path_factory, splitting=False)
    scorer = Scorer(load_model(path, device="cpu"))
    audit = scorer.prepare(PROMPT, ANSWER, (100, 40))
    image = random_images(1, (100, 40))[0]
    assert scorer.image_grid(audit, image) == (4, 4) and len(scorer.image_token_positions(audit)) == 16
    np.testing.assert_allclose(
        scorer.log_probs([(audit, image)])[0], plain_forward_scores(scorer.loaded, audit, image), atol=1e-5
    )


def test_an_image_of_another_size_is_refused_where_the_sequence_depends_on_it(tiny_qwen_dir):
    scorer = Scorer(load_model(tiny_qwen_dir, device="cpu"))
    audit = scorer.prepare(PROMPT, ANSWER, (70, 40))
    with pytest.raises(ValueError, match="prepared for 70x40"):
        scorer.log_probs([(audit, random_images(1, (40, 70))[0])])


def check_text_and_view_helpers(path) -> None:
    """What explainers ask of the scorer instead of the processor, on families with other tokens
    and processors: both show the model the whole image, whatever its shape."""
    scorer = Scorer(load_model(path, device="cpu"))
    tok = scorer.loaded.processor.tokenizer
    for text in (PROMPT, ANSWER, ""):
        assert scorer.count_tokens(text) == len(tok(text, add_special_tokens=False)["input_ids"])
    assert scorer.view_box((40, 70)) == (0, 0, 70, 40) and scorer.view_box((64, 48)) == (0, 0, 48, 64)
    audit = scorer.prepare(PROMPT, ANSWER, (70, 40))
    ids = audit.sequence.input_ids
    assert scorer.token_texts(ids) == [tok.decode([i]) for i in ids]
    assert "".join(scorer.token_texts(audit.tokens.ids)).strip() == ANSWER
    special = scorer.special_token_ids()
    assert special == frozenset(tok.all_special_ids) and tok.eos_token_id in special


def test_scorer_text_and_view_helpers_on_qwen(tiny_qwen_dir):
    check_text_and_view_helpers(tiny_qwen_dir)


def test_scorer_text_and_view_helpers_on_idefics3(tiny_idefics3_dir):
    check_text_and_view_helpers(tiny_idefics3_dir)


def test_qwen_checkpoint_names_the_stock_processor(tiny_qwen_dir):
    """The saved checkpoint names the stock processor, as a real one does; without torchvision
    the loader gives the same processor minus video support (with it, the stock one)."""
    from transformers.utils import is_torchvision_available

    stock = json.loads((tiny_qwen_dir / "processor_config.json").read_text())["processor_class"]
    assert stock in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
    processor = load_model(tiny_qwen_dir, device="cpu").processor
    assert isinstance(processor, ProcessorMixin)
    if is_torchvision_available():
        assert type(processor).__name__ == stock
    else:
        assert type(processor).__bases__[0].__name__ == stock and getattr(processor, "video_processor", None) is None
    assert processor.image_token == "<|image_pad|>" and type(processor.image_processor).__name__.startswith("Qwen2VL")


def check_white_box_maps(path) -> None:
    """Every token-map method runs: maps of the image's shape, in [0, 1], on the family's own grid."""
    from mllm_audit.explainers.audit import Auditor
    from mllm_audit.explainers.methods import get as get_method
    from mllm_audit.explainers.request import AuditRequest
    from mllm_audit.service.serialize import audit_body

    scorer = Scorer(load_model(path, device="cpu"))
    image = random_images(1, (70, 40), seed=4)[0]
    audit = scorer.prepare(PROMPT, ANSWER, (70, 40))
    for method in ("tam", "msea+arc", "grad", "attention+relevancy", "similarity"):  # each "+" runs both parts
        maps = get_method(method).heatmaps(scorer, audit, image, [[0], list(range(audit.n_tokens))])
        for m in maps:
            assert m["heatmap"].shape == (40, 70) and np.isfinite(m["heatmap"]).all()
            assert m["heatmap"].min() >= 0 and m["heatmap"].max() <= 1
    request = AuditRequest(image, PROMPT, ANSWER, method="msea+arc", targets=[(2, 6)], curves=True)
    [result] = Auditor(scorer).run([request])
    assert not isinstance(result, Exception), result
    [att] = audit_body(result)["attributions"]
    assert att["target"]["text"] == ANSWER[2:6] and isinstance(att["context"], list)
    assert att["curve_forward_passes"] == 2 * 64 and att["forward_passes"] > att["curve_forward_passes"]
    assert 0 <= att["insertion_auc"] <= 1 and len(att["insertion_curve"]) > 2


def test_white_box_maps_on_qwen(tiny_qwen_dir):
    check_white_box_maps(tiny_qwen_dir)  # the token grid depends on the image size


def test_white_box_maps_on_idefics3(tiny_idefics3_dir):
    check_white_box_maps(tiny_idefics3_dir)  # the token grid is a layout of tiles
