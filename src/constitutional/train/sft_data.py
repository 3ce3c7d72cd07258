"""SL-CAI training data: (red-team prompt, final revision) plus the helpfulness mix.

Rows are TRL's conversational prompt-completion shape, `{"prompt": [messages], "completion":
[{"role": "assistant", ...}]}`, so the loss falls on the assistant reply only. Revisions come
from the critique stage (flagged rows left out unless asked); helpful answers from a generate
run on helpful prompts (the paper samples 2 per prompt), drawn at a set ratio with a seed.
Either file may also be any SFT dataset a user brings (`messages`, or `prompt`/`completion`),
from any source `datasource.py` reads.
"""

from __future__ import annotations

import random
from pathlib import Path

from constitutional.errors import InputError
from constitutional.datasource import read_rows
from constitutional.prompts_io import chat


def revision_examples(path: str | Path, include_flagged: bool = False) -> list[dict]:
    """SL-CAI rows: a critique stage's output (the final revision of each kept chain), or
    any SFT dataset (see `sft_example`), such as `cai export`'s `sft` file."""
    out = []
    for line, row in read_rows(path):
        if "revision" in row:
            for key in ("messages", "ok"):
                if key not in row:
                    raise InputError("not a critique output row (run `cai critique`)",
                                     path=str(path), line=line, field=key)
            if row["ok"] or include_flagged:
                out.append(_example(row["messages"], row["revision"],
                                    f"{row['id']}#{row['sample']}", "revision"))
        else:
            out.append(sft_example(row, str(path), line, "revision"))
    return out


def helpful_examples(path: str | Path) -> list[dict]:
    """Helpful rows: a generate run's output (blank answers left out), or any SFT dataset."""
    out = []
    for line, row in read_rows(path):
        if isinstance(row.get("completion"), str) and not row["completion"].strip():
            continue
        out.append(sft_example(row, str(path), line, "helpful"))
    return out


def sft_example(row: dict, path: str, line: int, kind: str) -> dict:
    """One SFT row of the shapes TRL trains on, as our prompt-completion example:
    `messages` ending with the assistant's answer (language modelling), or `prompt` and
    `completion`, each a string or a list of messages (ours: `cai generate` rows)."""
    rid = str(row.get("id", f"line{line}")) + (f"#{row['sample']}" if "sample" in row else "")
    if "completion" in row:
        prompt = row.get("messages") if isinstance(row.get("messages"), list) and \
            not isinstance(row.get("prompt"), list) else row.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            prompt = [{"role": "user", "content": prompt}]
        prompt = chat(prompt, path, line, "prompt", last="user")
        completion = row["completion"]
        reply = completion if isinstance(completion, str) else \
            chat(completion, path, line, "completion", last="assistant")[-1]["content"]
        if not reply.strip():
            raise InputError("empty completion", path=path, line=line, field="completion")
        return _example(prompt, reply, rid, kind)
    if "messages" in row:
        msgs = chat(row["messages"], path, line, "messages", last="assistant")
        if len(msgs) < 2:
            raise InputError("expected the prompt before the answer", path=path, line=line,
                             field="messages")
        return _example(msgs[:-1], msgs[-1]["content"], rid, kind)
    raise InputError("not an SFT row: expected `messages` ending with the answer, "
                     "`prompt`/`completion`, or a critique output row", path=path, line=line,
                     field="messages")


def _example(messages: list[dict], reply: str, source_id: str, kind: str) -> dict:
    return {"prompt": messages, "completion": [{"role": "assistant", "content": reply}],
            "source": kind, "source_id": source_id}


def mix(revisions: list[dict], helpful: list[dict], helpful_per_revision: float,
        seed: int) -> list[dict]:
    """All revisions plus round(ratio x #revisions) helpful examples drawn without replacement
    (all of them when there are fewer); shuffled with the seed."""
    want = min(len(helpful), round(helpful_per_revision * len(revisions)))
    rng = random.Random(seed)
    rows = revisions + rng.sample(helpful, want)
    rng.shuffle(rows)
    return rows
