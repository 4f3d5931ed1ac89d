"""Teacher-forced sequences: chat-templated prompt with the image, then the given answer.

One function builds the token sequence for training and for scoring, so the scorer reads
the model exactly as it was trained to be read. The answer's tokens are those the tokenizer
gives it after the generation prompt, appended to the processor's prompt tokens; every answer
token keeps its character span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from mllm_audit.models.families import Processor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class AnswerTokens:
    ids: list[int]
    spans: list[tuple[int, int]]  # [start, end) character span in the answer text
    texts: list[str]  # the answer's characters under each span


@dataclass(frozen=True)
class TokenizedSequence:
    """Token ids of `prompt + answer` for one audit, as the model reads them under teacher forcing.

    The prompt's image placeholder tokens stand where the image's features go at the forward.
    """

    input_ids: list[int]
    answer_start: int  # index of the first answer token in input_ids
    answer: AnswerTokens


# Temporary alias of the old name (it shadowed collections.abc.Sequence); callers move to TokenizedSequence.


def generation_prompt(processor: Processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text: str = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def answer_separator(prompt_text: str) -> str:
    """A generation prompt ending in a space or newline is continued directly, else after a space."""
    return "" if not prompt_text or prompt_text[-1].isspace() else " "


def tokenize_answer(tokenizer: PreTrainedTokenizerBase, answer: str, prompt_text: str) -> AnswerTokens:
    """The answer's tokens as they follow `prompt_text`, with their character spans in the answer.

    Prompt and answer are tokenized as one text and the prompt's own tokens dropped, so the
    tokenizer's word-start convention (GPT-2's "Ġ", SentencePiece's "▁") comes out as the model
    generates it: the answer tokenized alone after a space gets a stray "▁" token from Llama's
    legacy tokenizer (LLaVA-1.5). Where a token merges across the boundary (the prompt's tokens
    are then not a prefix of the whole), the answer is tokenized alone after the separator.
    """
    separator = answer_separator(prompt_text)
    head = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
    enc = tokenizer(prompt_text + separator + answer, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(prompt_text) + len(separator)
    if enc["input_ids"][: len(head)] != head:
        enc, head, shift = (
            tokenizer(separator + answer, add_special_tokens=False, return_offsets_mapping=True),
            [],
            len(separator),
        )
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    texts: list[str] = []
    for tid, (start, end) in zip(enc["input_ids"][len(head) :], enc["offset_mapping"][len(head) :]):
        start, end = min(max(start - shift, 0), len(answer)), min(max(end - shift, 0), len(answer))
        while start < end and answer[start].isspace():  # a span names the token's text, not the space before it
            start += 1
        ids.append(int(tid))
        spans.append((start, end))
        texts.append(answer[start:end])
    return AnswerTokens(ids, spans, texts)


def build_sequence(
    processor: Processor, prompt: str, answer: str, image_size: tuple[int, int] | None = None, add_eos: bool = False
) -> TokenizedSequence:
    """`image_size` (width, height) matters for families whose image token count depends on it."""
    from PIL import Image

    text = generation_prompt(processor, prompt)
    probe = Image.new("RGB", image_size or (224, 224))
    prompt_ids: list[int] = processor(text=text, images=probe, return_tensors="pt")["input_ids"][0].tolist()
    tokens = tokenize_answer(processor.tokenizer, answer, text)
    ids = prompt_ids + tokens.ids
    if add_eos:
        ids = ids + [processor.tokenizer.eos_token_id]
    return TokenizedSequence(ids, len(prompt_ids), tokens)


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: real tokens keep their positions, so padding never changes their scores."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
