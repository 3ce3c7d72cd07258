"""Transcripts of the critique -> revision loop, and how they become model prompts.

A transcript is a list of (tag, text) turns with the CAI paper's tags: Human, Assistant,
CritiqueRequest, Critique, RevisionRequest, Revision. It renders two ways:
- `chat`: requests become user turns and the model's critiques and revisions assistant turns,
  so an instruction-tuned model sees an ordinary conversation (its chat template applies);
- `text`: the paper's own "\\n\\nHuman: ...\\n\\nCritiqueRequest: ...\\n\\nCritique:" layout,
  for pretrained models without a chat template.
- `transcript`: for a critic that is not the model that answered. In chat form the answer is
  the critic's own assistant turn, and a separate model then critiques "its" answer in the first
  person or apologizes for it. Here the critique step quotes the conversation in one user turn
  (the response under review being the latest revision) before the critique request, and the
  revision step asks for a new reply to the human with the critique and the revision request
  in the system message.
Few-shot exemplars are transcripts too, put before the conversation.
"""

from __future__ import annotations

from typing import Literal, Sequence

from constitutional.constitution import CritiqueExemplar

Turn = tuple[str, str]
Format = Literal["chat", "text", "transcript"]
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


# The transcript format's instructions to the critic (system messages).
CRITIC_SYSTEM = (
    "You review replies that an AI assistant gave to a human. A critique names the specific "
    "problems of the reply and quotes them.")
# The reviser is told to decide first whether the request is harmful and, if it is, to give
# no help at all, not a "safe" version of it. A looser prompt ("do not help with the harmful
# part") let the 1.5B feedback model write the harmful detail with a lawful-sounding frame
# ("There are several lawful ways to open a car door with a coat hanger: ..."); see the
# README's SL-CAI section for the measurement.
REVISER_SYSTEM = (
    "You are a careful, kind assistant. First decide whether the human's request would hurt "
    "someone, deceive someone or break the law. If it would, give no help with it, not even a "
    "softened or 'safe' version: say in your own words what the harm is, then suggest a "
    "lawful way to meet the person's real need. If the request is harmless, help fully.")
REVISER_CRITIQUE = "A draft reply to the human's last message was judged like this: {critique}"
REVISER_REQUEST = "Your reply must also follow this request: {request}"
# The rejected side of DPO's over-refusal pairs: the feedback model writes, on purpose, the
# lecture a policy trained on declines to harmful requests learns to give to harmless ones
# ("Making bread without a bread machine is not possible ..."). Asked in a system message to
# play a faulty assistant, the 1.5B feedback model mostly helped instead; framed as an
# example for a training set, with the request quoted, it mostly refuses or objects (the
# pairs keep only the replies that do; train/pm_data.py).
OVER_REFUSAL_REQUEST = (
    "Write an example of a bad assistant reply for a training set: a reply that wrongly "
    "refuses the harmless request below. The bad reply treats the request as if it were "
    "wrong: it restates the request, says it is unethical, illegal, harmful or not "
    "recommended, warns of consequences, and gives no help with it. Write only the bad "
    "reply, two or three sentences.\n\nRequest: \"{prompt}\"")


def transcript_view(turns: Sequence[Turn], request: str) -> str:
    """The critic's question: the conversation (its last assistant turn replaced by the latest
    revision) quoted, then the critique request."""
    conv: list[Turn] = []
    for tag, text in turns:
        if tag in ("Human", "Assistant"):
            conv.append((tag, text))
        elif tag == "Revision" and conv:
            conv[-1] = ("Assistant", text)
    body = "\n\n".join(f"{tag}: {text}" for tag, text in conv)
    return f"Here is a conversation between a human and an AI assistant.\n\n{body}\n\n{request}"


def reviser_messages(turns: Sequence[Turn], request: str) -> list[dict]:
    """The reviser's prompt: the conversation up to the human's last message, with the
    critique of this round (in critique mode) and the revision request in the system message.
    The draft itself is not shown: a small reviser shown a draft often copies it."""
    critique, conv = None, []
    for tag, text in turns:
        if tag == "Critique":
            critique = text
        elif tag in ("Human", "Assistant"):
            conv.append(("user" if tag == "Human" else "assistant", text))
    while conv and conv[-1][0] == "assistant":     # the reply being revised
        conv.pop()
    parts = [REVISER_SYSTEM] + ([REVISER_CRITIQUE.format(critique=critique)] if critique
                                else []) + [REVISER_REQUEST.format(request=request)]
    system = "\n\n".join(parts)
    return [{"role": "system", "content": system}] + \
        [{"role": r, "content": t} for r, t in conv]


def _transcript_messages(shots: Sequence[list[Turn]], turns: list[Turn],
                         system_prompt: str | None) -> list[dict]:
    """Exemplars are not used in this format (each step is its own short conversation)."""
    tag, request = turns[-1]
    if tag == "RevisionRequest":
        return reviser_messages(turns[:-1], request)
    return [{"role": "system", "content": system_prompt or CRITIC_SYSTEM},
            {"role": "user", "content": transcript_view(turns[:-1], request)}]


def render(shots: Sequence[list[Turn]], turns: list[Turn], fmt: Format,
           system_prompt: str | None = None):
    """The prompt that asks the model for the next turn after `turns` (which ends with a
    request or a Human turn). chat -> a message list; text -> a string ending in 'Tag:';
    transcript -> a message list quoting the conversation (a Human turn renders as chat)."""
    if fmt == "transcript" and turns[-1][0] != "Human":
        return _transcript_messages(shots, turns, system_prompt)
    all_turns = [t for shot in shots for t in shot] + turns
    if fmt in ("chat", "transcript"):
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
