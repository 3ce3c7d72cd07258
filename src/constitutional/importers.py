"""Read the constitution formats users already have into our `Constitution`.

- Hugging Face's open CAI recipe: one JSON object `{"constitutions": [{"critic", "revision"}],
  "system_chat": [[messages]]}`; each few-shot chat is user, assistant, critique request,
  critique, revision request, revision.
- The CAI paper's released `prompts/` folder: critique/revision requests, choice principles and
  plain and chain-of-thought few-shot comparisons, in "\\n\\nHuman: ...\\n\\nAssistant: ..." text.
The texts are read from the user's path; nothing of theirs ships with this package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from constitutional.config import field_path
from constitutional.constitution import Constitution
from constitutional.errors import InputError
from constitutional.jsonio import read_text

PAPER_FILES = {
    "critique_revision": "CritiqueRevisionInstructions.json",
    "critique_few_shot": "CritiqueRevisionFewShotPrompts.json",
    "choice": "RLMadisonInstructions.json",
    "choice_few_shot": "RLMadisonFewShotPrompts.json",
    "choice_cot": "RLMadisonPrecogFewShotPrompts.json",
}
# Speaker tags of the paper's transcripts, in the order they appear.
_TAGS = ("Human", "Assistant", "CritiqueRequest", "Critique", "RevisionRequest", "Revision")
_TURN = re.compile(r"\n\n(" + "|".join(_TAGS) + r"):")


def import_constitution(path: Path) -> Constitution:
    if path.is_dir():
        return import_paper_prompts(path)
    data = _read_json(path)
    if isinstance(data, dict) and "constitutions" in data:
        return import_open_recipe(path, data)
    if path.name in PAPER_FILES.values():
        return import_paper_prompts(path.parent)
    raise InputError("not a constitution this tool knows: expected our YAML, a JSON object "
                     "with `constitutions` (Hugging Face's open CAI recipe), or the CAI paper's "
                     "prompts folder", path=str(path))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg})", path=str(path), line=e.lineno) from None


def _validate(data: dict, path: Path) -> Constitution:
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(err["msg"].removeprefix("Value error, "), path=str(path),
                         field=field_path(tuple(err["loc"])) or None) from None


# ---------------------------------------------------------------------------------------
# Hugging Face open recipe

def import_open_recipe(path: Path, data: dict) -> Constitution:
    items = data["constitutions"]
    if not isinstance(items, list) or not items:
        raise InputError("must be a non-empty list", path=str(path), field="constitutions")
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str)
                                                 for k in ("critic", "revision")):
            raise InputError("each entry needs string `critic` and `revision`", path=str(path),
                             field=f"constitutions[{i}]")
        pairs.append({"name": f"{path.stem}-{i}", "critique": item["critic"],
                      "revision": item["revision"]})
    exemplars = []
    for i, chat in enumerate(data.get("system_chat") or []):
        roles = [m.get("role") for m in chat] if isinstance(chat, list) else []
        if len(roles) < 6 or roles[-4:] != ["user", "assistant", "user", "assistant"] or \
                roles[-5] != "assistant":
            raise InputError("expected a chat ending: assistant answer, user critique request, "
                             "assistant critique, user revision request, assistant revision",
                             path=str(path), field=f"system_chat[{i}]")
        exemplars.append({"conversation": chat[:-4], "critique_request": chat[-4]["content"],
                          "critique": chat[-3]["content"],
                          "revision_request": chat[-2]["content"],
                          "revision": chat[-1]["content"]})
    return _validate({"name": path.stem, "description": f"imported from {path.name} "
                      "(Hugging Face open CAI recipe format)", "critique_revision": pairs,
                      "exemplars": {"critique_revision": exemplars}}, path)


# ---------------------------------------------------------------------------------------
# The CAI paper's prompts folder

def import_paper_prompts(folder: Path) -> Constitution:
    files = {k: folder / f for k, f in PAPER_FILES.items() if (folder / f).is_file()}
    if "critique_revision" not in files and "choice" not in files:
        raise InputError(f"no {PAPER_FILES['critique_revision']} or {PAPER_FILES['choice']} "
                         "here", path=str(folder))
    data: dict[str, Any] = {"name": folder.resolve().name or "cai-paper",
                            "description": f"imported from {folder} (CAI paper prompt files)",
                            "exemplars": {}}
    if "critique_revision" in files:
        data["critique_revision"] = _paper_pairs(files["critique_revision"])
    if "choice" in files:
        data["choice"] = _paper_choice(files["choice"])
    if "critique_few_shot" in files:
        data["exemplars"]["critique_revision"] = _paper_critique_shots(files["critique_few_shot"])
    if "choice_few_shot" in files:
        data["exemplars"]["choice"] = _paper_choice_shots(files["choice_few_shot"])
    if "choice_cot" in files:
        data["exemplars"]["choice_cot"] = _paper_cot_shots(files["choice_cot"])
    return _validate(data, folder)


def _strip_tag(text: str, tag: str, path: Path, field: str) -> str:
    """'\\n\\nCritiqueRequest: <text>\\n\\nCritique:' -> '<text>' (tag = 'CritiqueRequest')."""
    m = re.fullmatch(rf"\s*{tag}:\s*(.*?)\s*(\n\n\w+:)?\s*", text, re.S)
    if not m or not m.group(1).strip():
        raise InputError(f"expected '{tag}: <text>'", path=str(path), field=field)
    return m.group(1)


def _paper_pairs(path: Path) -> list[dict]:
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise InputError("expected an object of {prompt, edit_request} entries", path=str(path))
    pairs = []
    for key, item in data.items():
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not isinstance(item.get("edit_request"), str):
            raise InputError("needs `prompt` (a one-string list) and `edit_request`",
                             path=str(path), field=key)
        pairs.append({"name": key,
                      "critique": _strip_tag(prompt, "CritiqueRequest", path, f"{key}.prompt"),
                      "revision": _strip_tag(item["edit_request"], "RevisionRequest", path,
                                             f"{key}.edit_request")})
    return pairs


def _paper_choice(path: Path) -> list[dict]:
    data = _read_json(path)
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InputError("expected a list of strings", path=str(path))
    # Each ends with " Options:", which our prompt template adds itself.
    return [{"name": f"choice{i}", "text": re.sub(r"\s*Options:\s*$", "", s).strip()}
            for i, s in enumerate(data)]


def _turns(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [('Human', 'a'), ('Assistant', 'b')]."""
    parts = _TURN.split("\n\n" + text.lstrip("\n"))
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _chat(turns: list[tuple[str, str]]) -> list[dict]:
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[t], "content": c} for t, c in turns]


def _paper_critique_shots(path: Path) -> list[dict]:
    data = _read_json(path)
    out = []
    for i, text in enumerate(data if isinstance(data, list) else []):
        turns = [t for t in _turns(text) if t[1] or t[0] != "Human"]  # drop the closing "Human:"
        tags = [t for t, _ in turns]
        if tags[-4:] != ["CritiqueRequest", "Critique", "RevisionRequest", "Revision"] or \
                any(t not in ("Human", "Assistant") for t in tags[:-4]) or len(tags) < 6:
            raise InputError("expected Human/Assistant turns, then CritiqueRequest, Critique, "
                             "RevisionRequest, Revision", path=str(path), field=f"[{i}]")
        out.append({"conversation": _chat(turns[:-4]), "critique_request": turns[-4][1],
                    "critique": turns[-3][1], "revision_request": turns[-2][1],
                    "revision": turns[-1][1]})
    return out


def _paper_choice_shots(path: Path) -> list[dict]:
    data = _read_json(path)
    out = []
    for i, item in enumerate(data if isinstance(data, list) else []):
        ok = isinstance(item, dict) and isinstance(item.get("prompt"), str) and \
            item.get("corrects") and item.get("incorrects")
        if not ok:
            raise InputError("needs `prompt`, `corrects` and `incorrects`", path=str(path),
                             field=f"[{i}]")
        turns = [t for t in _turns(item["prompt"]) if t[1]]     # drop the open "Assistant:"
        # The correct answer goes to (A) or (B) alternately, so the examples teach no position.
        good, bad = item["corrects"][0], item["incorrects"][0]
        options, answer = ([good, bad], "A") if i % 2 == 0 else ([bad, good], "B")
        out.append({"conversation": _chat(turns), "options": options, "answer": answer})
    return out


_COT = re.compile(
    r"following conversation between a human(?: \(H\))? and an assistant(?: \(A\))?:\s*(?P<conv>.*?)"
    r"\n\n\{\}\s*\(A\)\s*\[\[\[(?P<a>.*?)\]\]\]\s*\(B\)\s*\[\[\[(?P<b>.*?)\]\]\]\s*"
    r"Assistant:\s*Let's think step by step:\s*(?P<why>.*?)\s*(?:Therefore.*?)?\s*"
    r"Human:\s*So the answer is:\s*\((?P<ans>[AB])\)", re.S)


def _paper_cot_shots(path: Path) -> list[dict]:
    data = _read_json(path)
    out = []
    for i, item in enumerate(data if isinstance(data, list) else []):
        m = _COT.search(item.get("prompt", "")) if isinstance(item, dict) else None
        if not m:
            raise InputError("not a chain-of-thought comparison in the expected layout",
                             path=str(path), field=f"[{i}].prompt")
        conv = re.split(r"\n\n(H|A):", "\n\n" + m["conv"].strip())
        turns = [({"H": "Human", "A": "Assistant"}[conv[k]], conv[k + 1].strip())
                 for k in range(1, len(conv) - 1, 2)]
        out.append({"conversation": _chat(turns), "options": [m["a"].strip(), m["b"].strip()],
                    "answer": m["ans"], "reasoning": m["why"].strip()})
    return out
