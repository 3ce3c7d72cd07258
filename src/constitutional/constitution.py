"""Constitutions: the principles and few-shot exemplars that stand in for human labels.

One type, three sources (`load_constitution` tells them apart):
- our YAML format (`bundled:harmless` ships with the package, see constitutions/harmless.yaml);
- the JSON constitution of Hugging Face's open CAI recipe (`{"constitutions", "system_chat"}`);
- the prompt folder released with the CAI paper (CritiqueRevisionInstructions.json, ...).
The last two are read by `importers.py`. Validation errors name the file, the line and the
field path (`critique_revision[3].revision`).
"""

from __future__ import annotations

import hashlib
import random
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from constitutional.config import StrictModel, load_yaml, validation_error
from constitutional.errors import InputError

BUNDLED = {"harmless": "harmless.yaml", "self_align": "self_align.yaml"}


def _nonblank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


Text = Annotated[str, AfterValidator(_nonblank)]


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class CritiqueRevisionPrinciple(StrictModel):
    name: Text = Field(description="Short label recorded in every row that used this pair.")
    critique: Text = Field(description="Critique request: asks the model to find what is wrong "
                           "with its last response.")
    revision: Text = Field(description="The matching revision request: asks the model to "
                           "rewrite its response to fix that.")


class ChoicePrinciple(StrictModel):
    name: Text
    text: Text = Field(description="The question put to the feedback model, e.g. 'Which of "
                       "these assistant responses is less harmful? ...'.")


class CritiqueExemplar(StrictModel):
    """A worked critique -> revision transcript, shown before the real conversation."""
    conversation: list[Message] = Field(min_length=2, description="The exchange being "
                                        "critiqued; it ends with the assistant's response.")
    critique_request: Text
    critique: Text
    revision_request: Text
    revision: Text

    @model_validator(mode="after")
    def _ends_with_assistant(self):
        if self.conversation[-1].role != "assistant":
            raise ValueError("conversation must end with the assistant's response")
        return self


class ChoiceExemplar(StrictModel):
    """A worked multiple-choice judgement; with `reasoning` it is a chain-of-thought example."""
    conversation: list[Message] = Field(min_length=1)
    principle: str | None = Field(None, description="The principle asked about (None: the "
                                  "principle of the question it is shown with).")
    options: list[Text] = Field(min_length=2, max_length=2)
    answer: Literal["A", "B"]
    reasoning: str | None = None


class Exemplars(StrictModel):
    critique_revision: list[CritiqueExemplar] = Field(default_factory=list)
    choice: list[ChoiceExemplar] = Field(default_factory=list)
    choice_cot: list[ChoiceExemplar] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cot_has_reasoning(self):
        for i, ex in enumerate(self.choice_cot):
            if not (ex.reasoning or "").strip():
                raise ValueError(f"choice_cot[{i}] needs `reasoning`")
        return self


class SelfAlignPrinciple(StrictModel):
    name: Text = Field(description="Short label the internal thoughts cite, e.g. 'candor'.")
    text: Text


class SelfAlignExemplar(StrictModel):
    """A worked example: the assistant names the principles that apply, then answers."""
    user: Text
    thoughts: Text = Field(description="Internal thoughts: which principles apply and why.")
    answer: Text


class SelfAlign(StrictModel):
    """SELF-ALIGN's principle-driven prompt: preamble, principles, exemplars, and the prompt
    that asks the engraved model for thorough answers (verbose cloning)."""
    assistant: Text = Field("Watson", description="The assistant's name in the prompt.")
    preamble: Text
    principles: list[SelfAlignPrinciple] = Field(min_length=1)
    exemplars: list[SelfAlignExemplar] = Field(min_length=1)
    verbose_prompt: Text = Field(description="Put before each instruction for verbose "
                                 "cloning; never in the training prompts.")


class Constitution(StrictModel):
    name: Text
    version: str = "1"
    description: str = ""
    critique_revision: list[CritiqueRevisionPrinciple] = Field(default_factory=list)
    choice: list[ChoicePrinciple] = Field(default_factory=list)
    exemplars: Exemplars = Field(default_factory=Exemplars)
    self_align: SelfAlign | None = Field(None, description="SELF-ALIGN's principles and "
                                         "exemplars.")

    @model_validator(mode="after")
    def _has_principles(self):
        if not self.critique_revision and not self.choice and not self.self_align:
            raise ValueError("a constitution needs principles: `critique_revision` pairs, "
                             "`choice` principles or a `self_align` section")
        for kind in ("critique_revision", "choice"):
            names = [p.name for p in getattr(self, kind)]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup:
                raise ValueError(f"{kind}: principle name {dup!r} is used twice")
        return self

    def require(self, kind: Literal["critique_revision", "choice", "self_align"],
                source: str = "") -> None:
        if not getattr(self, kind):
            raise InputError(f"constitution '{self.name}' has no `{kind}` principles, which "
                             "this stage needs", path=source or None)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def draw_principles(n_principles: int, rounds: int, seed: int, key: str) -> list[int]:
    """Which principle each round uses: a fresh one each round (no repeats until all are used).

    Seeded by (seed, key) alone, so a row's draw does not depend on batching, order or resume.
    """
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    out: list[int] = []
    while len(out) < rounds:
        order = list(range(n_principles))
        rng.shuffle(order)
        out.extend(order)
    return out[:rounds]


def resolve_constitution_path(spec: str) -> Path:
    if spec.startswith("bundled:"):
        key = spec.split(":", 1)[1]
        if key not in BUNDLED:
            raise InputError(f"unknown bundled constitution '{key}' (have: "
                             f"{', '.join(BUNDLED)})")
        return Path(str(resources.files("constitutional") / "constitutions" / BUNDLED[key]))
    return Path(spec)


def load_constitution(spec: str | Path) -> tuple[Path, Constitution]:
    """Our YAML, the open recipe's JSON, or the CAI paper's prompt folder (or one of its files)."""
    path = resolve_constitution_path(str(spec))
    if not path.exists():
        raise InputError("constitution not found", path=str(path))
    if path.is_dir() or path.suffix == ".json":
        from constitutional.importers import import_constitution
        return path, import_constitution(path)
    data = load_yaml(path)
    try:
        return path, Constitution.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, str(path)) from None


def to_yaml(c: Constitution) -> str:
    import yaml

    data = c.model_dump(mode="json", exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
