"""Files of answer pairs: ours, and the two public formats of human-labelled comparisons.

Every loader returns `Comparison`s: a conversation (ending with the human turn), two answers
`a` and `b`, and, where a human said so, which is better (`better` = 0 for a, 1 for b).

Accepted rows (JSONL, one object per line):
- ours (`cai pairs`): `messages` or `prompt`, `response_a`, `response_b`;
- HHH style: `prompt`, `better`, `worse` (the CAI paper's HHH evaluation);
- Anthropic HH: `chosen`/`rejected` full transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."),
  or `prompt` (the transcript up to the final "Assistant:") with `chosen`/`rejected` replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from constitutional.errors import InputError
from constitutional.jsonio import read_jsonl

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


def _conversation(obj: dict, path: str, line: int) -> tuple[Turn, ...]:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs):
            raise InputError("expected a list of {role, content} messages", path=path,
                             line=line, field="messages")
        conv = tuple((m["role"], m["content"]) for m in msgs if m["role"] != "system")
    else:
        prompt = _text(obj, "prompt", path, line)
        conv = tuple(parse_hh(prompt if prompt.startswith("\n") else "\n\n" + prompt)) \
            if "Human:" in prompt else (("user", prompt),)
        conv = tuple(t for t in conv if t[1] or t[0] == "user")
        if conv and conv[-1] == ("assistant", ""):
            conv = conv[:-1]
    if not conv or conv[-1][0] != "user":
        raise InputError("the conversation must end with a human turn", path=path, line=line,
                         field="messages" if "messages" in obj else "prompt")
    return conv


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


def load_comparisons(path: str | Path) -> tuple[list[Comparison], int]:
    """The comparisons of a file, and how many rows were skipped as flagged (`ok: false`)."""
    path = str(path)
    out: list[Comparison] = []
    skipped = 0
    for line, obj in read_jsonl(path):
        if obj.get("ok") is False:
            skipped += 1
            continue
        rid = str(obj.get("id", f"line{line}"))
        if "response_a" in obj:
            out.append(Comparison(rid, _conversation(obj, path, line),
                                  _text(obj, "response_a", path, line),
                                  _text(obj, "response_b", path, line)))
        elif "better" in obj:
            out.append(Comparison(rid, _conversation(obj, path, line),
                                  _text(obj, "better", path, line),
                                  _text(obj, "worse", path, line), better=0))
        elif "chosen" in obj and "prompt" in obj:
            out.append(Comparison(rid, _conversation(obj, path, line),
                                  _text(obj, "chosen", path, line),
                                  _text(obj, "rejected", path, line), better=0))
        elif "chosen" in obj:
            conv, a, b = _from_transcripts(obj, path, line)
            out.append(Comparison(rid, conv, a, b, better=0))
        else:
            raise InputError("not a comparison row: expected response_a/response_b, "
                             "prompt/better/worse, or chosen/rejected", path=path, line=line)
    if not out:
        raise InputError("no comparisons in the file" + (f" ({skipped} flagged rows skipped)"
                         if skipped else ""), path=path)
    return out, skipped
