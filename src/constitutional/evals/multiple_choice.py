"""Multiple-choice benchmarks scored by the log-likelihood of each choice (no generation).

Formats read (the first one that fits each file):
- TruthfulQA MC1 style: {"question", "choices": [...], "correct_index"};
- the CAI paper's released multiple-choice evals: {"prompt", "corrects": [...],
  "incorrects": [...]}, where any of the correct answers counts (the prompt is an HH
  transcript ending with "Assistant:", or a plain question);
- HHH pairs: {"prompt", "better", "worse"} (or any comparison row `cai label` reads
  with a human label): the question is the conversation, the choices the two answers;
- BIG-bench JSON (`hhh_alignment/*/task.json`): {"examples": [{"input", "target_scores"}]}.

Each question's choices are scored by `score_choices` in one forward pass: the log-probability
of each choice as the continuation of "Q: <question>\\nA:" (or of the HH transcript and
"Assistant:"), over the tokens that tell the choices apart. A question counts as right when
a correct choice has the highest log-likelihood; `accuracy_norm` divides each one by the
choice's length in characters first (longer answers are not penalized for their length), as
the usual harnesses report both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from constitutional.errors import InputError
from constitutional.evals.metrics import bootstrap_ci
from constitutional.feedback import conversation_text
from constitutional.jsonio import read_text
from constitutional.datasource import read_rows


@dataclass(frozen=True)
class MCItem:
    id: str
    prompt: str             # the text the choices continue
    choices: tuple[str, ...]
    correct: int                       # a correct choice (the first one)
    corrects: tuple[int, ...] = ()     # every correct choice (empty: just `correct`)

    @property
    def right(self) -> tuple[int, ...]:
        return self.corrects or (self.correct,)


def load_mc(path: str | Path) -> list[MCItem]:
    """The questions of a benchmark file (JSONL, a BIG-bench task JSON, or any dataset source
    `datasource.py` reads)."""
    if Path(path).suffix == ".json" and Path(path).is_file() and _is_bigbench(Path(path)):
        return _bigbench(Path(path))
    items = []
    for line, obj in read_rows(path):
        if "corrects" in obj or "incorrects" in obj:
            items.append(_released(obj, str(path), line))
        elif "choices" in obj or "question" in obj:
            items.append(_truthfulqa(obj, str(path), line))
        else:
            items.append(_comparison(obj, str(path), line))
    if not items:
        raise InputError("no questions in the file", path=str(path))
    return items


def _truthfulqa(obj: dict, path: str, line: int) -> MCItem:
    q, choices, k = obj.get("question"), obj.get("choices"), obj.get("correct_index")
    if not isinstance(q, str) or not q.strip():
        raise InputError("missing or empty", path=path, line=line, field="question")
    if not isinstance(choices, list) or len(choices) < 2 or not all(
            isinstance(c, str) and c.strip() for c in choices):
        raise InputError("expected a list of at least two non-empty strings", path=path,
                         line=line, field="choices")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(choices):
        raise InputError(f"expected an index into choices (0..{len(choices) - 1})", path=path,
                         line=line, field="correct_index")
    return MCItem(str(obj.get("id", f"line{line}")), f"Q: {q.strip()}\nA:",
                  tuple(c.strip() for c in choices), k)


def _released(obj: dict, path: str, line: int) -> MCItem:
    from constitutional.comparisons import _conversation

    lists = {}
    for key in ("corrects", "incorrects"):
        v = obj.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(c, str) and c.strip()
                                                       for c in v):
            raise InputError("expected a non-empty list of non-empty strings", path=path,
                             line=line, field=key)
        lists[key] = [c.strip() for c in v]
    prompt = obj.get("prompt")
    if isinstance(prompt, str) and "Human:" not in prompt and prompt.strip():
        text = f"Q: {prompt.strip()}\nA:"
    else:
        text = conversation_text(_conversation(obj, path, line)) + "\n\nAssistant:"
    choices = tuple(lists["corrects"] + lists["incorrects"])
    return MCItem(str(obj.get("id", f"line{line}")), text, choices, 0,
                  tuple(range(len(lists["corrects"]))))


def _comparison(obj: dict, path: str, line: int) -> MCItem:
    from constitutional.comparisons import comparison

    if "better" not in obj and "chosen" not in obj:
        raise InputError("not a multiple-choice row: expected question/choices/correct_index, "
                         "prompt/corrects/incorrects or prompt/better/worse", path=path,
                         line=line)
    c = comparison(obj, path, line)
    return MCItem(str(obj.get("id", f"line{line}")),
                  conversation_text(c.conversation) + "\n\nAssistant:", (c.a, c.b), 0)


def _is_bigbench(path: Path) -> bool:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict)


def _bigbench(path: Path) -> list[MCItem]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", path=str(path), line=e.lineno) from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise InputError("expected a BIG-bench task with a non-empty `examples` list",
                         path=str(path), field="examples")
    items = []
    for n, ex in enumerate(examples):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or len(scores) < 2 or not isinstance(
                ex.get("input"), str):
            raise InputError("expected `input` and `target_scores` with two or more answers",
                             path=str(path), field=f"examples[{n}]")
        choices = tuple(scores)
        best = max(range(len(choices)), key=lambda i: scores[choices[i]])
        prompt = ex["input"].strip()
        prompt = prompt if "Assistant:" in prompt[-40:] else f"{prompt}\n\nAssistant:"
        items.append(MCItem(f"ex{n}", prompt, tuple(c.strip() for c in choices), best))
    return items


def score(backend, items: list[MCItem]) -> list[dict]:
    lps = backend.score_choices([it.prompt for it in items],
                                [[" " + c for c in it.choices] for it in items])
    rows = []
    for it, lp in zip(items, lps):
        pred = max(range(len(lp)), key=lambda i: lp[i])
        norm = [x / max(1, len(c)) for x, c in zip(lp, it.choices)]
        pred_norm = max(range(len(norm)), key=lambda i: norm[i])
        rows.append({"id": it.id, "logprobs": [round(x, 5) for x in lp], "correct": it.correct,
                     "corrects": list(it.right), "pred": pred, "pred_norm": pred_norm})
    return rows


def summarize(rows: list[dict]) -> dict:
    right = [set(r.get("corrects") or [r["correct"]]) for r in rows]
    acc = [float(r["pred"] in ok) for r, ok in zip(rows, right)]
    acc_n = [float(r["pred_norm"] in ok) for r, ok in zip(rows, right)]
    chance = sum(len(ok) / len(r["logprobs"]) for r, ok in zip(rows, right)) / max(1, len(rows))
    return {"n": len(rows), "accuracy": sum(acc) / len(acc), "ci95": list(bootstrap_ci(acc)),
            "accuracy_norm": sum(acc_n) / len(acc_n), "ci95_norm": list(bootstrap_ci(acc_n)),
            "chance": chance}
