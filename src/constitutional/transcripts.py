"""Transcripts of the critique -> revision loop, and how they become model prompts.

A transcript is a list of (tag, text) turns with the CAI paper's tags: Human, Assistant,
CritiqueRequest, Critique, RevisionRequest, Revision. It renders two ways:
- `chat`: requests become user turns and the model's critiques and revisions assistant turns,
  so an instruction-tuned model sees an ordinary conversation (its chat template applies);
- `text`: the paper's own "\\n\\nHuman: ...\\n\\nCritiqueRequest: ...\\n\\nCritique:" layout,
  for pretrained models without a chat template.
Few-shot exemplars are transcripts too, put before the conversation.
"""

from __future__ import annotations

from typing import Literal, Sequence

from constitutional.constitution import CritiqueExemplar

Turn = tuple[str, str]
Format = Literal["chat", "text"]
USER_TAGS = {"Human", "CritiqueRequest", "RevisionRequest"}
# Where a small model runs on into a turn it should not write, cut there.
DEFAULT_STOPS = ["\nHuman:", "\nUser:", "\nCritiqueRequest:", "\nRevisionRequest:"]


def from_messages(messages: Sequence[dict]) -> list[Turn]:
    """A prompt chat (system turns dropped: they go in front of everything) -> turns."""
    tags = {"user": "Human", "assistant": "Assistant"}
    return [(tags[m["role"]], m["content"]) for m in messages if m["role"] in tags]


def exemplar_turns(ex: CritiqueExemplar, with_critique: bool = True) -> list[Turn]:
    turns = from_messages([m.model_dump() for m in ex.conversation])
    if with_critique:
        turns += [("CritiqueRequest", ex.critique_request), ("Critique", ex.critique)]
    return turns + [("RevisionRequest", ex.revision_request), ("Revision", ex.revision)]


def render(shots: Sequence[list[Turn]], turns: list[Turn], fmt: Format,
           system_prompt: str | None = None):
    """The prompt that asks the model for the next turn after `turns` (which ends with a
    request or a Human turn). chat -> a message list; text -> a string ending in 'Tag:'."""
    all_turns = [t for shot in shots for t in shot] + turns
    if fmt == "chat":
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return msgs + [{"role": "user" if tag in USER_TAGS else "assistant", "content": text}
                       for tag, text in all_turns]
    head = f"{system_prompt}\n" if system_prompt else ""
    body = "".join(f"\n\n{tag}: {text}" for tag, text in all_turns)
    return head + body + f"\n\n{_reply_tag(turns[-1][0])}:"


def _reply_tag(last: str) -> str:
    return {"Human": "Assistant", "CritiqueRequest": "Critique",
            "RevisionRequest": "Revision"}[last]


def clean_reply(text: str, tag: str) -> str:
    """Strip whitespace and a leading 'Revision:'-style label a model may echo."""
    text = text.strip()
    for label in (f"{tag}:", f"**{tag}:**", f"{tag.lower()}:"):
        if text.startswith(label):
            return text[len(label):].strip()
    return text
