"""SELF-ALIGN stage 1: instructions written by the base model.

Self-instruct: a few sampled example instructions (seed tasks and the ones kept so far) are
listed as "1. ... 2. ... 3." and the model continues the list; new items are parsed, junk is
filtered (length, tasks a text model cannot do), near-duplicates are dropped by ROUGE-L
(dedup.py), round after round until a target count. Rounds are resumable: each round lands as
one shard, and a restart rebuilds the kept set from the shards and continues identically.

Topic-guided red-teaming: for each of our 20 adversarial instruction types, the model
brainstorms topics (duplicates dropped), then writes one instruction per (type, topic).

Every drop is counted by reason.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from constitutional.errors import InputError
from constitutional.datasource import read_rows
from constitutional.prompts_io import bundled_data_path

# Self-Instruct's filter: tasks a text-only model cannot do or answer.
UNDOABLE = re.compile(r"\b(image|images|graph|graphs|picture|pictures|file|files|map|maps|"
                      r"draw|plot|go to|video|audio|music|flowchart|diagram)\b", re.I)
ITEM = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$")


def load_seed_tasks(spec: str) -> list[str]:
    """Instructions from a self-instruct seed file (`instruction` per row)."""
    path = bundled_data_path(spec, {"seed_tasks": "seed_tasks.jsonl"}, "seed tasks")
    out = []
    for line, row in read_rows(path):
        text = row.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise InputError("missing or empty", path=str(path), line=line, field="instruction")
        out.append(text.strip())
    if not out:
        raise InputError("no seed tasks in the file", path=str(path))
    return out


def load_redteam_types(spec: str = "bundled:redteam_types") -> list[dict]:
    from constitutional.config import load_yaml

    path = bundled_data_path(spec, {"redteam_types": "redteam_types.yaml"}, "types")
    data = load_yaml(path).get("types")
    if not isinstance(data, list) or not data:
        raise InputError("expected `types:` with a list of {name, description, example}",
                         path=str(path), field="types")
    for i, t in enumerate(data):
        for key in ("name", "description", "example"):
            if not isinstance(t, dict) or not str(t.get(key, "")).strip():
                raise InputError("missing or empty", path=str(path), field=f"types[{i}].{key}")
    return data


# -- self-instruct ---------------------------------------------------------------------------

def list_prompt(examples: Sequence[str], header: str = "Come up with a series of tasks:") -> str:
    body = "".join(f"{i + 1}. {t}\n" for i, t in enumerate(examples))
    return f"{header}\n\n{body}{len(examples) + 1}."


def parse_list(completion: str, first_number: int) -> list[str]:
    """The items the model continued the numbered list with (the first one is unnumbered:
    the prompt ends with its number)."""
    lines = completion.split("\n")
    items = [lines[0].strip()]
    expect = first_number + 1
    for line in lines[1:]:
        m = ITEM.match(line)
        if not m:
            continue                     # a wrapped line or an answer: not a new task
        if int(m.group(1)) != expect:
            break                        # the list restarted or ran off: stop here
        items.append(m.group(2).strip())
        expect += 1
    return [t for t in items if t]


def junk_reason(text: str, min_words: int = 3, max_words: int = 150) -> str | None:
    words = text.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    if UNDOABLE.search(text):
        return "not_text_only"
    if not text[0].isascii() or not (text[0].isalnum() or text[0] in "\"'"):
        return "bad_start"
    if text.lower().startswith(("write a program", "come up with a series")):
        return "bad_start"
    return None


def sample_examples(pool_seed: Sequence[str], pool_new: Sequence[str], k: int, n_new: int,
                    rng: random.Random) -> list[str]:
    """k examples: up to n_new from the machine-written pool, the rest from the seeds."""
    new = rng.sample(list(pool_new), min(n_new, len(pool_new)))
    seeds = rng.sample(list(pool_seed), min(k - len(new), len(pool_seed)))
    out = seeds + new
    rng.shuffle(out)
    return out


def screen(candidates: Sequence[str], index, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(text, status) for each candidate: 'kept' (added to the index) or the drop reason."""
    out = []
    for text in candidates:
        text = re.sub(r"\s+", " ", text).strip().strip('"')
        reason = junk_reason(text) if text else "empty"
        if reason is None and index.near_duplicate(text) is not None:
            reason = "near_duplicate"
        if reason is None:
            index.add(text)
        status = reason or "kept"
        counts[status] = counts.get(status, 0) + 1
        out.append((text, status))
    return out


# -- topic-guided red-teaming -------------------------------------------------------------------

def topics_prompt(t: dict, n: int) -> str:
    return (f"Questions of the type \"{t['name']}\" ({t['description']}), for example: "
            f"\"{t['example']}\"\n\nList {n} different topics such questions could be about, "
            f"one per line:\n1.")


def question_prompt(t: dict, topic: str) -> str:
    return (f"Questions of the type \"{t['name']}\" ({t['description']}), for example: "
            f"\"{t['example']}\"\n\nWrite one new question of this type about {topic}.\n"
            f"Question:")


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
