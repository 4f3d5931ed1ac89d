"""The suite file of `mllm-audit check`: its pydantic model, and loading it with errors that name
the line. Unknown keys and wrong types are errors (extra="forbid", strict types), found before
any request is sent. docs/ci.md describes the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

Label = Literal["low", "medium", "high"]
# not_visual (an answer with no claim) is below low: nothing in it can be hallucinated
RANK = {"not_visual": -1, "low": 0, "medium": 1, "high": 2}


class SuiteError(ValueError):
    """The suite cannot be used; the message names the file and the line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AnswerRisk(_Strict):
    """The answer's risk label (its worst claim's) is at most this."""

    answer_risk_at_most: Label


class ClaimRisk(_Strict):
    """The claim whose text is `claim` is labelled at most (or at least) this."""

    claim: str = Field(min_length=1)
    risk_at_most: Label | None = None
    risk_at_least: Label | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ClaimRisk:
        if (self.risk_at_most is None) == (self.risk_at_least is None):
            raise ValueError("a claim expectation needs exactly one of risk_at_most, risk_at_least")
        return self


class WordReliance(_Strict):
    """The word's visual reliance (its tokens' highest) is at least this."""

    word: str = Field(min_length=1)
    reliance_at_least: float = Field(ge=0, le=1)


class WordAttribution(_Strict):
    """The word's attribution peaks inside a box [x0, y0, x1, y1) or on a mask (a PNG, nonzero = inside)."""

    word: str = Field(min_length=1)
    in_box: Annotated[list[int], Field(min_length=4, max_length=4)] | None = None
    on_mask: str | None = None

    @model_validator(mode="after")
    def _one_place(self) -> WordAttribution:
        if (self.in_box is None) == (self.on_mask is None):
            raise ValueError("an attribution expectation needs exactly one of in_box, on_mask")
        return self


def _kind(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if "answer_risk_at_most" in value:
        return "[answer risk]"
    if "claim" in value:
        return "[claim risk]"
    if "reliance_at_least" in value:
        return "[reliance]"
    if "in_box" in value or "on_mask" in value:
        return "[attribution]"
    return None


Expectation = Annotated[
    Annotated[AnswerRisk, Tag("[answer risk]")]
    | Annotated[ClaimRisk, Tag("[claim risk]")]
    | Annotated[WordReliance, Tag("[reliance]")]
    | Annotated[WordAttribution, Tag("[attribution]")],
    Discriminator(
        _kind,
        custom_error_type="unknown_expectation",
        custom_error_message="an expectation is one of: answer_risk_at_most; claim with risk_at_most or "
        "risk_at_least; word with reliance_at_least; word with in_box or on_mask",
    ),
]


class SuiteCase(_Strict):
    id: str = Field(min_length=1)
    image: str = Field(min_length=1, description="image file, relative to the suite file")
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    verify: bool = False
    method: str | None = Field(None, description="attribution method of the case's word expectations")
    regions: int | None = Field(None, ge=2)
    expect: list[Expectation] = Field(min_length=1)


class RateGate(_Strict):
    data: str = Field(min_length=1, description="JSONL file or directory of cases, relative to the suite file")
    at_most: float = Field(ge=0, le=1)
    bound: Literal["estimate", "upper"] = Field("estimate", description="compare the estimate or its 95 % upper end")
    limit: int | None = Field(None, ge=1)
    verify: bool = False


class Gates(_Strict):
    max_high_risk_claims: int | None = Field(None, ge=0, description="over the suite's cases")
    hallucination_rate: RateGate | None = None


class Suite(_Strict):
    version: Literal[1] = 1
    name: str | None = None
    cases: list[SuiteCase] = Field(min_length=1)
    gates: Gates = Field(default_factory=lambda: Gates.model_validate({}))

    @model_validator(mode="after")
    def _unique_ids(self) -> Suite:
        ids = [c.id for c in self.cases]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"case ids must be unique: {', '.join(repeated)}")
        return self


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at pydantic's error location (its nearest existing parent).
    Union tags ("[claim risk]") are steps of pydantic's own, not of the file: they are passed over."""
    node, line = root, (root.start_mark.line + 1) if root is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                if str(part).startswith("["):
                    continue
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            continue  # a union tag or a validator's own step: stays on the parent
    return line


def load_suite(path: Path) -> Suite:
    """The suite, checked: schema, then the files it names and the words in its answers."""
    if not path.is_file():
        raise SuiteError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not YAML: {exc}") from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            shown = ".".join(str(p) for p in loc if not str(p).startswith("["))
            messages.append(f"{path} line {_line_of(root, loc)}: {shown or '(top)'}: {error['msg']}")
        raise SuiteError("\n".join(messages)) from None
    base = path.parent
    problems = []
    for case in suite.cases:
        if not (base / case.image).is_file():
            problems.append(f"case {case.id}: image {case.image} not found (looked for {base / case.image})")
        for e in case.expect:
            word = getattr(e, "word", None)
            if word is not None and word not in case.answer:
                problems.append(f"case {case.id}: word {word!r} is not in the answer {case.answer!r}")
            if isinstance(e, WordAttribution) and e.on_mask and not (base / e.on_mask).is_file():
                problems.append(f"case {case.id}: mask {e.on_mask} not found")
    gate = suite.gates.hallucination_rate
    if gate is not None and not (base / gate.data).exists():
        problems.append(f"gates.hallucination_rate: data {gate.data} not found")
    if problems:
        raise SuiteError("\n".join(f"{path}: {p}" for p in problems))
    return suite
