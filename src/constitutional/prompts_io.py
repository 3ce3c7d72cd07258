"""Prompt sets: rows with a `prompt` (a string, or TRL's list of messages) or a `messages` chat.

A prompt set is any source `datasource.py` reads (JSONL, parquet, a saved dataset, a hub id).
A `messages` chat that ends with a user turn is the prompt. A row of an SFT or
prompt-completion dataset is read as its prompt: `prompt` (a `completion` beside it is
ignored), else `messages` up to its last user turn (the assistant replies after it are the
dataset's answers, not part of the prompt).

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

from constitutional.datasource import Source, read_rows, source
from constitutional.errors import InputError

BUNDLED = {"redteam": "redteam_prompts.jsonl", "helpful": "helpful_prompts.jsonl",
           "redteam_eval": "redteam_eval_prompts.jsonl",
           "helpful_eval": "helpful_eval_prompts.jsonl", "mc_sample": "mc_sample.jsonl"}
ROLES = {"system", "user", "assistant"}


@dataclass
class PromptRow:
    id: str
    messages: list[dict[str, str]]     # the conversation to answer (ends with a user turn)
    source: dict[str, Any]             # the input row as given
    line: int = 0                      # its line (or row) in the source

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def name_row(e: Exception, rows: "list[PromptRow]", source) -> Exception:
    """A ContextLengthError (an error about the prompt at `e.index` of a call over `rows`)
    as the error naming that row's file, line and id; any other error as it is."""
    index = getattr(e, "index", None)
    if index is None or not 0 <= index < len(rows):
        return e
    row = rows[index]
    return InputError(e.reason, path=str(source), line=row.line, field=f"id {row.id}")


def conversation(row: PromptRow, system_prompt: str | None,
                 user_template: str | None = None) -> list[dict[str, str]]:
    """The row's conversation, with the system prompt first unless the row brings its own,
    and its last user turn put into `user_template` ({prompt}) when one is given."""
    messages = row.messages
    if user_template:
        last = {"role": "user", "content": user_template.replace("{prompt}", row.text)}
        messages = messages[:-1] + [last]
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + messages
    return messages


def resolve_prompts_path(spec: str) -> Path:
    return bundled_data_path(spec, BUNDLED, "prompt set")


def prompts_source(spec: str) -> Source:
    """The source a prompt spec names (`bundled:` sets resolved to their packaged file)."""
    return source(resolve_prompts_path(spec))


def bundled_data_path(spec: str, table: dict[str, str], kind: str) -> Path:
    """`bundled:<key>` -> the packaged file `data/<table[key]>`; anything else is a path."""
    if spec.startswith("bundled:"):
        key = spec.split(":", 1)[1]
        if key not in table:
            raise InputError(f"unknown bundled {kind} '{key}' (have: {', '.join(table)})")
        return Path(str(resources.files("constitutional") / "data" / table[key]))
    return Path(spec)


def load_prompts(spec: str, limit: int | None = None) -> tuple[Source, list[PromptRow]]:
    """The prompt set's source (hash it with `datasource.digest`) and its rows."""
    path = prompts_source(spec)
    rows: list[PromptRow] = []
    seen: set[str] = set()
    for lineno, obj in read_rows(path):
        rid = str(obj.get("id", f"line-{lineno}"))
        if rid in seen:
            raise InputError(f"duplicate id {rid!r}", path=str(path), line=lineno, field="id")
        seen.add(rid)
        rows.append(PromptRow(rid, _messages(obj, str(path), lineno), obj, lineno))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise InputError("no prompts in file", path=str(path))
    return path, rows


def _messages(obj: dict[str, Any], path: str, line: int) -> list[dict[str, str]]:
    msgs = obj.get("messages")
    ends_with_user = isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and \
        msgs[-1].get("role") == "user"
    if "prompt" in obj and not ends_with_user:
        prompt = obj["prompt"]
        if isinstance(prompt, list):
            return chat(prompt, path, line, "prompt", last="user")
        if not isinstance(prompt, str):
            raise InputError(f"must be a string or a list of messages, got "
                             f"{type(prompt).__name__}", path=path, line=line, field="prompt")
        if not prompt.strip():
            raise InputError("empty prompt", path=path, line=line, field="prompt")
        return [{"role": "user", "content": prompt}]
    if "messages" in obj:
        msgs = obj["messages"]
        if isinstance(msgs, list):      # an SFT row: the conversation before its answers
            while msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
                msgs = msgs[:-1]
        return chat(msgs, path, line, "messages", last="user")
    raise InputError("missing field (each row needs `prompt`, or `messages`)", path=path,
                     line=line, field="prompt")


def chat(msgs: Any, path: str, line: int, field: str,
         last: str | None = None) -> list[dict[str, str]]:
    """A list of {role, content} messages, checked (the one check of every reader's chats):
    `last` names the role the chat must end with, in a non-empty turn."""
    if not isinstance(msgs, list) or not msgs:
        raise InputError("must be a non-empty list of {role, content} messages", path=path,
                         line=line, field=field)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or \
                not isinstance(m.get("content"), str):
            raise InputError("each message needs a role (system/user/assistant) and a "
                             "string content, as {role, content}", path=path, line=line,
                             field=f"{field}[{i}]")
    if last and (msgs[-1]["role"] != last or not msgs[-1]["content"].strip()):
        raise InputError(f"the last message must be a non-empty {last} turn", path=path,
                         line=line, field=field)
    return [{"role": m["role"], "content": m["content"]} for m in msgs]
