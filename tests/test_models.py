"""Model layer: loading local checkpoints, answer spans, and the teacher-forced scorer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from mllm_audit.models.loading import REFERENCE_MODEL_DIR, ModelLoadError, choose_device, choose_dtype, load_model
from mllm_audit.models.scorer import Scorer, ScorerProtocol, to_pil
from mllm_audit.models.sequence import generation_prompt, tokenize_answer

from tests.conftest import held_out_sample

pytestmark = pytest.mark.integration


def test_reference_model_loads_through_the_generic_path(reference):
    assert reference.family.name == "llava"
    assert type(reference.model).__name__ == "LlavaForConditionalGeneration"
    assert reference.device.type == "cpu" and reference.dtype == torch.float32
    size = sum(f.stat().st_size for f in REFERENCE_MODEL_DIR.glob("*.safetensors"))
    assert size <= 20 * 1024 * 1024


def test_answer_tokens_carry_exact_character_spans(reference_scorer):
    answer = "a red circle, a blue square and a green cross."
    audit = reference_scorer.prepare("Describe the image.", answer, (96, 96))
    spans = audit.tokens.spans
    assert all(answer[s:e] == t for (s, e), t in zip(spans, audit.tokens.texts))
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    covered = {i for s, e in spans for i in range(s, e)}
    assert covered == {i for i, ch in enumerate(answer) if not ch.isspace()}


@pytest.mark.parametrize("kind", ["colour", "caption"])
def test_scorer_equals_greedy_generate_step_scores(reference, reference_scorer, kind):
    sample = held_out_sample(kind, seed=3)
    proc = reference.processor
    inputs = proc(text=generation_prompt(proc, sample.prompt), images=to_pil(sample.scene.image), return_tensors="pt")
    with torch.inference_mode():
        out = reference.model.generate(
            **inputs, do_sample=False, max_new_tokens=24, output_logits=True, return_dict_in_generate=True
        )
    new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    eos = proc.tokenizer.eos_token_id
    n = new.index(eos) if eos in new else len(new)
    assert n > 0
    step_lp = torch.stack([torch.log_softmax(out.logits[i][0].float(), -1)[new[i]] for i in range(n)]).numpy()
    answer = proc.tokenizer.decode(new[:n], skip_special_tokens=True).strip()
    audit = reference_scorer.prepare(sample.prompt, answer, (96, 96))
    assert audit.tokens.ids == new[:n]
    scored = reference_scorer.log_probs([(audit, sample.scene.image)])[0]
    np.testing.assert_allclose(scored, step_lp, atol=1e-4)


def test_padding_with_other_audits_never_changes_scores(reference_scorer, monkeypatch):
    a = held_out_sample("colour", seed=5)
    b = held_out_sample("caption", seed=6)
    audit_a = reference_scorer.prepare(a.prompt, a.truth, (96, 96))
    audit_b = reference_scorer.prepare(b.prompt, b.truth, (96, 96))
    alone = reference_scorer.log_probs([(audit_a, a.scene.image)])[0]
    black = np.zeros_like(a.scene.image)
    mixed = reference_scorer.log_probs([(audit_b, b.scene.image), (audit_a, a.scene.image), (audit_a, black)])
    assert mixed[1].shape == (audit_a.n_tokens,) and mixed[0].shape == (audit_b.n_tokens,)
    np.testing.assert_allclose(mixed[1], alone, atol=1e-5)
    assert not np.allclose(mixed[2], alone, atol=1e-3), "the image must matter"
    # the batch projected only its answer positions onto the vocabulary; every position gives the same
    assert reference_scorer.keeps_some_logits
    monkeypatch.setattr(reference_scorer, "keeps_some_logits", False)
    full = reference_scorer.log_probs([(audit_b, b.scene.image), (audit_a, a.scene.image), (audit_a, black)])
    for got, want in zip(mixed, full):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_tiny_random_llava_scores_like_a_plain_forward(tiny_llava_dir):
    loaded = load_model(tiny_llava_dir)
    scorer = Scorer(loaded)
    assert loaded.family.name == "llava" and scorer.keeps_some_logits
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(40, 70, 3), dtype=np.uint8) for _ in range(3)]
    audit = scorer.prepare("Describe the image.", "a blue square.", (70, 40))
    scores = scorer.score_images(audit, images)
    assert scores.shape == (3, audit.n_tokens) and np.isfinite(scores).all() and (scores <= 0).all()
    # an independent path: the processor on the whole text, one image, no padding
    proc = loaded.processor
    text = generation_prompt(proc, audit.prompt) + " " + audit.answer
    inputs = proc(text=text, images=to_pil(images[1]), return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits[0]
    ids = inputs["input_ids"][0]
    n = audit.n_tokens
    expected = torch.log_softmax(logits[-n - 1 : -1], -1).gather(1, ids[-n:, None])[:, 0].numpy()
    np.testing.assert_allclose(scores[1], expected, atol=1e-5)
    assert scorer.image_grid(audit, images[0]) == (4, 4)


def test_scorer_counts_and_decodes_tokens_without_the_processor(reference, reference_scorer):
    tok = reference.processor.tokenizer
    for text in ("What color is the circle?", "a red circle, a blue square and a green cross.", ""):
        assert reference_scorer.count_tokens(text) == len(tok(text, add_special_tokens=False)["input_ids"])
    special = reference_scorer.special_token_ids()
    assert special == frozenset(tok.all_special_ids)
    assert {tok.pad_token_id, tok.eos_token_id, reference.family.image_token_id(reference.model)} <= special
    audit = reference_scorer.prepare("Describe the image.", "a red circle.", (96, 96))
    texts = reference_scorer.token_texts(audit.tokens.ids)
    assert texts == [tok.decode([i]) for i in audit.tokens.ids]
    assert "".join(texts).strip() == "a red circle." and reference_scorer.token_texts([]) == []


def test_view_box_is_what_the_llava_processor_keeps_of_the_image(reference, reference_scorer):
    """Shortest edge to 96 px, then the central 96x96: the box is that crop in the image's pixels.
    Checked against the processor itself: an image whose grey level grows with the column (row)
    index shows, at the processed image's first and last column (row), the box's edges."""
    assert reference_scorer.view_box((96, 96)) == (0, 0, 96, 96)
    assert reference_scorer.view_box((60, 100)) == (20, 0, 80, 60)  # the central square of a wide image
    assert reference_scorer.view_box((200, 100)) == (0, 50, 100, 150)  # and of a tall one
    image_processor = reference.processor.image_processor
    mean, std = image_processor.image_mean[0], image_processor.image_std[0]
    for h, w in ((60, 100), (200, 100), (50, 50), (90, 37)):
        x0, y0, x1, y1 = reference_scorer.view_box((h, w))
        for axis, (lo, hi) in ((1, (x0, x1)), (0, (y0, y1))):
            n = w if axis == 1 else h
            step = min(2.0, 255 / (n - 1))  # grey levels per pixel
            ramp = np.round(np.arange(n) * step)
            grey = np.broadcast_to(ramp[None, :] if axis == 1 else ramp[:, None], (h, w))
            image = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
            pixels = image_processor(images=[to_pil(image)], return_tensors="pt")["pixel_values"][0, 0].numpy()
            seen = (pixels * std + mean) * 255 / step  # back to pixel indices
            line = seen[0] if axis == 1 else seen[:, 0]
            assert abs(line[0] - lo) <= 1.5 and abs(line[-1] - (hi - 1)) <= 1.5, (h, w, axis, line[[0, -1]])


def test_scorer_has_every_method_of_the_protocol():
    methods = {name for name in vars(ScorerProtocol) if not name.startswith("_")}
    assert methods == {
        "prepare",
        "log_probs",
        "white_box",
        "image_token_positions",
        "image_grid",
        "readout",
        "token_ids",
        "count_tokens",
        "special_token_ids",
        "token_texts",
        "view_box",
        "input_gradients",
        "attention_maps",
        "hidden_similarity",
    }
    assert all(callable(getattr(Scorer, name)) for name in methods)


def test_device_and_dtype_are_chosen_automatically_and_overridable(tiny_llava_dir, monkeypatch):
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_dtype("auto", torch.device("cuda")) == torch.float16  # GPUs without bf16 get fp16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_dtype("int8", torch.device("cpu"))
    loaded = load_model(tiny_llava_dir, device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    audit = Scorer(loaded).prepare("Describe the image.", "a red circle.", (56, 56))
    scores = Scorer(loaded).score_images(audit, [np.zeros((56, 56, 3), dtype=np.uint8)])
    assert scores.shape == (1, audit.n_tokens) and np.isfinite(scores).all()


def test_missing_or_malformed_model_dirs_fail_with_the_path(tmp_path, tiny_llava_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llava_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=str(broken)):
        load_model(broken)
    (broken / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(ModelLoadError, match="model_type"):
        load_model(broken)
    shutil.copy(tiny_llava_dir / "config.json", broken / "config.json")
    for f in broken.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(broken)


def llama_legacy_tokenizer():
    """A SentencePiece-style BPE tokenizer used as Llama-2's tokenizer.json uses it (LLaVA-1.5):
    no pre-tokenizer, a normalizer that prepends "▁" and turns spaces into "▁"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["USER: <image>\nWhat color is the circle? ASSISTANT: red", "a red circle and a blue square."] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")  # no merges across words
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<image>"])
    )
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_answer_tokens_are_those_that_follow_the_prompt_with_sentencepiece_spaces():
    tok = llama_legacy_tokenizer()
    prompt = "USER: <image>\nWhat color is the circle? ASSISTANT:"
    answer = "red circle and a blue square."
    tokens = tokenize_answer(tok, answer, prompt)
    whole = tok(prompt + " " + answer, add_special_tokens=False)["input_ids"]
    assert tokens.ids == whole[-len(tokens.ids) :]  # what the model reads after the prompt, no stray "▁"
    assert tok.convert_ids_to_tokens(tokens.ids)[0] == "▁red"
    assert tokens.texts[:2] == ["red", "circle"] and tokens.spans[:2] == [(0, 3), (4, 10)]
    assert all(answer[s:e] == t and t and not t[0].isspace() for (s, e), t in zip(tokens.spans, tokens.texts))
    # the same answer tokenized alone after a space: Llama's legacy tokenizer adds a "▁" of its own
    alone = tok(" " + answer, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0] == "▁" and alone[1:] == tokens.ids
