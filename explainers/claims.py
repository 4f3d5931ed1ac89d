"""Group an answer's tokens into the visual claims it makes.

A claim is a maximal run of content words (`reliance.is_visual_claim`) that no function word
or punctuation interrupts: "a red circle and a blue square." makes two object claims, "red
circle" and "blue square", so an attribute is judged together with the object it is bound
to. Words are Unicode word characters, so the rule reads any script; the function-word list
is English, and in another language a claim may take in its articles ("un cercle rouge").

Kinds: `existence` (the yes or no that starts an answer), `count` (a number word or digit in the run),
`relation` (a spatial word: left, above, ...), otherwise `object`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from mllm_audit.explainers.reliance import is_visual_claim

ClaimKind = Literal["object", "count", "existence", "relation"]
CLAIM_KINDS: tuple[ClaimKind, ...] = get_args(ClaimKind)

WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")  # a word (hyphenated or with an apostrophe), or a mark
YES_NO = frozenset({"yes", "no"})
NUMBER_WORDS = frozenset(
    {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "several",
        "many",
        "few",
    }
)
RELATION_WORDS = frozenset(
    {
        "left",
        "right",
        "top",
        "bottom",
        "above",
        "below",
        "under",
        "over",
        "behind",
        "front",
        "next",
        "near",
        "beside",
        "between",
        "middle",
        "centre",
        "center",
        "inside",
        "outside",
        "upper",
        "lower",
        "corner",
    }
)


@dataclass(frozen=True)
class Claim:
    index: int
    kind: ClaimKind
    start: int  # characters [start, end) of the answer
    end: int
    text: str
    token_indices: list[int]


def _kind(words: list[str]) -> ClaimKind:
    lowered = [w.lower() for w in words]
    if any(w in NUMBER_WORDS or w.isdigit() for w in lowered):
        return "count"
    if any(w in RELATION_WORDS for w in lowered):
        return "relation"
    return "object"


def group_claims(answer: str, spans: Sequence[tuple[int, int]]) -> list[Claim]:
    """The claims of `answer`; `spans` are its tokens' character spans (token i covers spans[i])."""
    matches = list(WORD.finditer(answer))
    words = [m for m in matches if m.group()[0].isalnum() or m.group()[0] == "_"]
    runs: list[list[re.Match[str]]] = [[]]
    for match in matches:
        answers_yes_no = match is (words[0] if words else None) and match.group().lower() in YES_NO
        if answers_yes_no:  # "Yes, ..." / "No." : the answer to a yes/no question, a claim of its own
            runs += [[match], []]
        elif is_visual_claim(match.group()):
            runs[-1].append(match)
        elif runs[-1]:
            runs.append([])
    claims: list[Claim] = []
    for run in runs:
        if not run:
            continue
        start, end = run[0].start(), run[-1].end()
        tokens = [i for i, (s, e) in enumerate(spans) if s < end and e > start]
        if not tokens:
            continue
        existence = len(run) == 1 and run[0] is words[0] and run[0].group().lower() in YES_NO
        kind: ClaimKind = "existence" if existence else _kind([m.group() for m in run])
        claims.append(Claim(len(claims), kind, start, end, answer[start:end], tokens))
    return claims
