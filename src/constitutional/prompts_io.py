"""Prompt files: JSONL rows with a `prompt` string (or a `messages` chat), validated per line.

`bundled:redteam` and `bundled:helpful` name the example prompts shipped with the package
(written for this project); `bundled:redteam_eval` and `bundled:helpful_eval` are held-out
prompts that no training stage of the shipped recipes uses, for the evaluation, and
`bundled:mc_sample` a small TruthfulQA-style multiple-choice set of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from constitutional.errors import InputError
from constitutional.jsonio import read_jsonl

BUNDLED = {"redteam": "redteam_prompts.jsonl", "helpful": "helpful_prompts.jsonl",
           "redteam_eval": "redteam_eval_prompts.jsonl",
           "helpful_eval": "helpful_eval_prompts.jsonl", "mc_sample": "mc_sample.jsonl"}
ROLES = {"system", "user", "assistant"}


@dataclass
class PromptRow:
    id: str
    messages: list[dict[str, str]]     # the conversation to answer (ends with a user turn)
    source: dict[str, Any]             # the input row as given

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def conversation(row: PromptRow, system_prompt: str | None) -> list[dict[str, str]]:
    """The row's conversation, with the system prompt first unless the row brings its own."""
    if system_prompt and row.messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + row.messages
    return row.messages


def resolve_prompts_path(spec: str) -> Path:
    return bundled_data_path(spec, BUNDLED, "prompt set")


def bundled_data_path(spec: str, table: dict[str, str], kind: str) -> Path:
    """`bundled:<key>` -> the packaged file `data/<table[key]>`; anything else is a path."""
    if spec.startswith("bundled:"):
        key = spec.split(":", 1)[1]
        if key not in table:
            raise InputError(f"unknown bundled {kind} '{key}' (have: {', '.join(table)})")
        return Path(str(resources.files("constitutional") / "data" / table[key]))
    return Path(spec)


def load_prompts(spec: str, limit: int | None = None) -> tuple[Path, list[PromptRow]]:
    path = resolve_prompts_path(spec)
    rows: list[PromptRow] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl(path):
        rid = str(obj.get("id", f"line-{lineno}"))
        if rid in seen:
            raise InputError(f"duplicate id {rid!r}", path=str(path), line=lineno, field="id")
        seen.add(rid)
        rows.append(PromptRow(rid, _messages(obj, str(path), lineno), obj))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputError("no prompts in file", path=str(path))
    return path, rows


def _messages(obj: dict[str, Any], path: str, line: int) -> list[dict[str, str]]:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("must be a non-empty list", path=path, line=line, field="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or \
                    not isinstance(m.get("content"), str):
                raise InputError("each message needs a role (system/user/assistant) and a "
                                 "string content", path=path, line=line, field=f"messages[{i}]")
        if msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
            raise InputError("the last message must be a non-empty user turn", path=path,
                             line=line, field="messages")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" not in obj:
        raise InputError("missing field (each row needs `prompt`, or `messages`)", path=path,
                         line=line, field="prompt")
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise InputError(f"must be a string, got {type(prompt).__name__}", path=path,
                         line=line, field="prompt")
    if not prompt.strip():
        raise InputError("empty prompt", path=path, line=line, field="prompt")
    return [{"role": "user", "content": prompt}]
