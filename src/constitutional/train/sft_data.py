"""SL-CAI training data: (red-team prompt, final revision) plus the helpfulness mix.

Rows are TRL's conversational prompt-completion shape, `{"prompt": [messages], "completion":
[{"role": "assistant", ...}]}`, so the loss falls on the assistant reply only. Revisions come
from the critique stage (flagged rows left out unless asked); helpful answers from a generate
run on helpful prompts (the paper samples 2 per prompt), drawn at a set ratio with a seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from constitutional.errors import InputError
from constitutional.jsonio import read_jsonl


def revision_examples(path: str | Path, include_flagged: bool = False) -> list[dict]:
    out = []
    for line, row in read_jsonl(Path(path)):
        for key in ("messages", "revision", "ok"):
            if key not in row:
                raise InputError("not a critique output row (run `cai critique`)",
                                 path=str(path), line=line, field=key)
        if row["ok"] or include_flagged:
            out.append(_example(row["messages"], row["revision"], f"{row['id']}#{row['sample']}",
                                "revision"))
    return out


def helpful_examples(path: str | Path) -> list[dict]:
    out = []
    for line, row in read_jsonl(Path(path)):
        if "completion" not in row:
            raise InputError("not a generate output row (run `cai generate`)", path=str(path),
                             line=line, field="completion")
        if not row["completion"].strip():
            continue
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        out.append(_example(messages, row["completion"], f"{row['id']}#{row['sample']}",
                            "helpful"))
    return out


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
