"""Files of answer pairs: ours, and the two public formats of human-labelled comparisons.

Every loader returns `Comparison`s: a conversation (ending with the human turn), two answers
`a` and `b`, and, where a human said so, which is better (`better` = 0 for a, 1 for b).

Accepted rows, from any source `datasource.py` reads (JSONL, parquet, a saved dataset, a hub id):
- ours (`cai pairs`): `messages` or `prompt`, `response_a`, `response_b`;
- HHH style: `prompt`, `better`, `worse` (the CAI paper's HHH evaluation);
- Anthropic HH: `chosen`/`rejected` full transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."),
  or `prompt` (the transcript up to the final "Assistant:") with `chosen`/`rejected` replies;
- TRL's preference shapes: `prompt`/`chosen`/`rejected` as strings (standard), `prompt` as
  messages with `chosen`/`rejected` as one assistant message each (conversational), or
  `chosen`/`rejected` as whole chats that differ only in the last reply (implicit prompt; a
  text `prompt` beside them, as in Hugging Face's CAI datasets, is ignored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from constitutional.errors import InputError
from constitutional.prompts_io import chat

Turn = tuple[str, str]
_TAG = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


@dataclass(frozen=True)
class Comparison:
    id: str
    conversation: tuple[Turn, ...]     # (role, text), the last turn is the human's
    a: str
    b: str
    better: int | None = None          # 0: a is better, 1: b is better, None: unlabelled


def parse_hh(text: str) -> list[Turn]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [("user", "hi"), ("assistant", "hello")]."""
    parts = _TAG.split(text)
    if len(parts) < 3 or parts[0].strip():
        return []
    roles = {"Human": "user", "Assistant": "assistant"}
    return [(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _text(obj: dict, key: str, path: str, line: int) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise InputError("missing or empty" if not isinstance(v, str) or not v
                         else "blank text", path=path, line=line, field=key)
    return v.strip()


def _messages(value, path: str, line: int, field: str) -> tuple[Turn, ...]:
    """A list of {role, content} messages as turns, system messages left out."""
    return tuple((m["role"], m["content"]) for m in chat(value, path, line, field)
                 if m["role"] != "system")


def _conversation(obj: dict, path: str, line: int) -> tuple[Turn, ...]:
    """The conversation the answers reply to: `messages`, or `prompt` as messages, as an HH
    transcript or as one human turn."""
    key = "prompt" if isinstance(obj.get("prompt"), list) else \
        "messages" if "messages" in obj else "prompt"
    if key == "messages" or isinstance(obj.get("prompt"), list):
        conv = _messages(obj[key], path, line, key)
    else:
        prompt = _text(obj, "prompt", path, line)
        conv = tuple(parse_hh(prompt if prompt.startswith("\n") else "\n\n" + prompt)) \
            if "Human:" in prompt else (("user", prompt),)
        conv = tuple(t for t in conv if t[1] or t[0] == "user")
        if conv and conv[-1] == ("assistant", ""):
            conv = conv[:-1]
    if not conv or conv[-1][0] != "user":
        raise InputError("the conversation must end with a human turn", path=path, line=line,
                         field=key)
    return conv


def _reply(obj: dict, key: str, path: str, line: int) -> str:
    """A reply given as a string or as TRL's `[{"role": "assistant", "content": ...}]`."""
    v = obj.get(key)
    if isinstance(v, list):
        turns = _messages(v, path, line, key)
        if len(turns) != 1 or turns[0][0] != "assistant" or not turns[0][1].strip():
            raise InputError("expected one non-empty assistant message", path=path, line=line,
                             field=key)
        return turns[0][1].strip()
    return _text(obj, key, path, line)


def _from_chats(obj: dict, path: str, line: int) -> tuple[tuple[Turn, ...], str, str]:
    """TRL's implicit-prompt conversational rows: `chosen` and `rejected` are whole chats that
    share everything but the final assistant reply."""
    chosen, rejected = (_messages(obj.get(k), path, line, k) for k in ("chosen", "rejected"))
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if len(turns) < 2 or turns[-1][0] != "assistant" or not turns[-1][1].strip():
            raise InputError("expected a chat ending with a non-empty assistant reply",
                             path=path, line=line, field=key)
    if chosen[:-1] != rejected[:-1]:
        raise InputError("chosen and rejected chats differ before the final reply",
                         path=path, line=line, field="rejected")
    if chosen[-2][0] != "user":
        raise InputError("the conversation must end with a human turn", path=path, line=line,
                         field="chosen")
    return chosen[:-1], chosen[-1][1].strip(), rejected[-1][1].strip()


def _from_transcripts(obj: dict, path: str, line: int) -> tuple[tuple[Turn, ...], str, str]:
    chosen, rejected = (parse_hh(_text(obj, k, path, line)) for k in ("chosen", "rejected"))
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if len(turns) < 2 or turns[-1][0] != "assistant":
            raise InputError("not an HH transcript ending with an Assistant turn", path=path,
                             line=line, field=key)
    if chosen[:-1] != rejected[:-1]:
        raise InputError("chosen and rejected transcripts differ before the final reply",
                         path=path, line=line, field="rejected")
    return tuple(chosen[:-1]), chosen[-1][1], rejected[-1][1]


def comparison(obj: dict, path: str, line: int) -> Comparison:
    """One row of any accepted shape as a Comparison; a bad row raises InputError."""
    rid = str(obj.get("id", f"line{line}"))
    if "response_a" in obj:
        return Comparison(rid, _conversation(obj, path, line),
                          _text(obj, "response_a", path, line),
                          _text(obj, "response_b", path, line))
    if "better" in obj:
        return Comparison(rid, _conversation(obj, path, line), _text(obj, "better", path, line),
                          _text(obj, "worse", path, line), better=0)
    if "chosen" not in obj:
        raise InputError("not a comparison row: expected response_a/response_b, "
                         "prompt/better/worse, or chosen/rejected", path=path, line=line)
    explicit = "prompt" in obj and (isinstance(obj["prompt"], list) or
                                    not isinstance(obj.get("chosen"), list))
    if explicit:        # TRL's explicit prompt, as text or as messages; HH's split rows
        conv = _conversation(obj, path, line)
        return Comparison(rid, conv, _reply(obj, "chosen", path, line),
                          _reply(obj, "rejected", path, line), better=0)
    if isinstance(obj["chosen"], list):     # whole chats (a text `prompt` beside them is a copy)
        conv, a, b = _from_chats(obj, path, line)
    else:
        conv, a, b = _from_transcripts(obj, path, line)
    return Comparison(rid, conv, a, b, better=0)


def load_comparisons(path: str | Path) -> tuple[list[Comparison], int]:
    """The comparisons of a source (a file, a dataset: see datasource.py), and how many rows
    were skipped as flagged (`ok: false`)."""
    from constitutional.datasource import read_rows

    path = str(path)
    out: list[Comparison] = []
    skipped = 0
    for line, obj in read_rows(path):
        if obj.get("ok") is False:
            skipped += 1
            continue
        out.append(comparison(obj, path, line))
    if not out:
        raise InputError("no comparisons in the file" + (f" ({skipped} flagged rows skipped)"
                         if skipped else ""), path=path)
    return out, skipped


def preference_example(conversation, a: str, b: str, p: float, source: str,
                       source_id: str) -> dict:
    """A pair as TRL's conversational preference row plus the soft label: `prompt` as
    messages, `chosen` / `rejected` one assistant message each, oriented so that `margin`,
    the probability that `chosen` is better, is >= 0.5."""
    if p < 0.5:
        a, b, p = b, a, 1.0 - p
    msgs = [{"role": r, "content": t} for r, t in conversation]
    return {"prompt": msgs, "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": b}], "margin": float(p),
            "source": source, "source_id": source_id}


def revision_pair(row: dict) -> dict:
    """A critique row's pair by construction: the final revision chosen over the policy's
    original answer, as a hard label (p = 1)."""
    conversation = [(m["role"], m["content"]) for m in row["messages"]]
    return preference_example(conversation, row["revision"], row["initial_response"], 1.0,
                              "revision", f"{row['id']}#{row['sample']}")
