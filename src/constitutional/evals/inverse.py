"""`cai constitution infer`: an inverse constitution, the principles that explain preference data
(after Inverse Constitutional AI, Findeis et al. 2024).

The pairs, each with a known preference, are split by id into held-in and held-out. Then:

1. propose: the feedback model is shown each held-in pair with the preferred answer named
   and asked for one general rule, "Choose the response that ...", that explains the
   preference (a resumable generation step, `infer_proposals/`);
2. merge: rules that say nearly the same thing are merged by ROUGE-L F1 on their content
   words (a cheap similarity; `merge_threshold`; results.json counts the groups at other
   thresholds too); the `max_candidates` proposed most often (ties: the shorter) go on;
3. test: the labeler labels held-in pairs under each candidate alone, in both orders, exactly
   as `cai constitution evaluate` does (`infer_tests/`); a candidate's reconstruction accuracy
   is how often its pick is the known preference;
4. select: the `keep` candidates with the highest reconstruction accuracy (those above chance)
   become the inferred constitution's choice principles, each with a critique/revision pair
   built from it, so `cai critique`, `cai label` and `cai run` can use it;
5. check: the held-out pairs are labelled as `cai label` labels them (`label.principles` per
   pair, both orders) under the inferred constitution, under `label.constitution` (the
   default) and under no principle at all (the bare question "Which response is better?"),
   each step resumable (`infer_heldout/<which>/`); their accuracies with intervals.

Every model call goes through the run's backend, so it is in RUN/calls.jsonl.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Sequence

from pydantic import Field, field_validator

from constitutional.config import NOT_RESULTS, ModelConfig, SamplingConfig, StrictModel
from constitutional.labeling import LabelConfig
from constitutional.models import DEFAULT_FEEDBACK_MODEL

STEM = "Choose the response that"
NO_PRINCIPLE = "Which of these responses is better?"
# Phrases of the proposal request that the 1.5B model read back as its "rule" (5 of its first
# 48 proposals were "would apply to other conversations too").
ECHO = re.compile(r"other conversations|careful reader|general rule|mention A or B|"
                  r"this conversation", re.IGNORECASE)
MERGE_CURVE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)   # thresholds whose group counts are reported


class InferConfig(StrictModel):
    """Settings of `cai constitution infer`."""
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        name=DEFAULT_FEEDBACK_MODEL), description="The feedback model: proposes and labels.")
    label: LabelConfig = Field(default_factory=lambda: LabelConfig(
        prompt_format="chat", layout="answers_first", principles=4),
                               description="How pairs are labelled when candidates are tested "
                               "and on the held-out check; its constitution is the default "
                               "the inferred one is compared with. Its model is `model`.")
    held_out: float = Field(0.5, gt=0, lt=1, description="Share of the pairs held out for "
                            "the check (split by id).")
    propose_pairs: int | None = Field(None, ge=1, description="Held-in pairs shown to the "
                                      "proposer (None: all).")
    test_pairs: int | None = Field(None, ge=1, description="Held-in pairs each candidate is "
                                   "tested on (None: all).")
    check_pairs: int | None = Field(None, ge=1, description="Held-out pairs of the check "
                                    "(None: all).")
    proposal: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(n=1, temperature=0.7, max_tokens=40,
                                               stop=["\n"]),
        description="Sampling of the proposals (n: rules per pair).")
    merge_threshold: float = Field(0.5, gt=0, lt=1, description="ROUGE-L F1 above which two "
                                   "rules are one.")
    max_candidates: int = Field(16, ge=1, description="Candidates tested (the most often "
                                "proposed after merging).")
    keep: int = Field(5, ge=1, description="Principles kept in the inferred constitution.")
    min_words: int = Field(3, ge=1, description="Shorter rules are dropped.")
    max_words: int = Field(30, ge=1, description="Longer rules are dropped.")
    seed: int = Field(0, description="Seeds the split and which answer is shown first.")
    log_calls: bool = Field(True, description="Every model call in RUN/calls.jsonl.",
                            json_schema_extra=NOT_RESULTS)

    @field_validator("model", mode="before")
    @classmethod
    def _feedback_model_by_default(cls, v):
        # `model: {backend: fake}` (or `model.dtype=...`) keeps the feedback model's name
        if isinstance(v, dict) and "name" not in v:
            v = {"name": DEFAULT_FEEDBACK_MODEL, **v}
        return v


# -- split and propose --------------------------------------------------------------------

def is_held_out(pair_id: str, fraction: float, seed: int = 0) -> bool:
    h = hashlib.sha256(f"{seed}\x00held-out\x00{pair_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2 ** 64 < fraction


PROPOSAL = ("Here is a conversation between a human and an assistant, and two possible next "
            "responses from the assistant.\n\n{conversation}\n\nResponse A: {a}\n\n"
            "Response B: {b}\n\nA careful reader preferred Response {preferred}. Write one "
            "short, general rule that explains this preference and would apply to other "
            "conversations too. Do not mention A or B or this conversation's topic. Start with "
            "\"{stem}\".")


def proposal_prompt(pair) -> list[dict]:
    """Show the pair (as `shown` oriented it) with the preferred answer named."""
    from constitutional.feedback import conversation_text

    text = PROPOSAL.format(conversation=conversation_text(pair.conversation), a=pair.a.strip(),
                           b=pair.b.strip(), preferred="A" if pair.better == 0 else "B",
                           stem=STEM)
    return [{"role": "user", "content": text}]


def clean_rule(text: str, min_words: int, max_words: int) -> str | None:
    """The clause after "Choose the response that", one sentence, or None when the text is
    not such a rule (or names a letter, or is too short or long)."""
    m = re.search(re.escape(STEM), text, flags=re.IGNORECASE)
    if not m:
        return None
    rest = text[m.end():].strip()
    if rest[:1] in "\"'\u201c" or rest.lower().startswith(("says", "if ")):
        return None           # a quote of an answer, or the answer itself, not a rule
    clause = re.split(r"[.!?][\"'\u201d]?(?:\s|$)|\n", rest, maxsplit=1)[0]
    clause = clause.strip().strip('"').rstrip(".!?").strip()
    words = clause.split()
    if not (min_words <= len(words) <= max_words):
        return None
    if re.search(r"\b(?i:response|option|answer) [AB]\b|\([AB]\)", clause):
        return None
    if ECHO.search(clause):
        return None           # the request read back
    return clause


# -- merge --------------------------------------------------------------------------------

# Function words: with them "is honest and direct" and "is warm and caring" share half their
# words (ROUGE-L 0.5) and short rules that say different things merge.
STOP_WORDS = frozenset("a an the and or of to in on by for with as at is are be been it its "
                       "that this which".split())


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in STOP_WORDS]


def content(text: str) -> str:
    return " ".join(_words(text))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts' lower-cased content words (Google's `rouge_score`, as the
    self-instruct dedup uses)."""
    from rouge_score import rouge_scorer

    x, y = content(a), content(b)
    if not x or not y:
        return 0.0
    return rouge_scorer.RougeScorer(["rougeL"]).score(x, y)["rougeL"].fmeasure


def merge(rules: Sequence[str], threshold: float) -> list[dict]:
    """Group each rule with the first earlier group whose first rule it matches at ROUGE-L
    F1 above `threshold` (on content words, through the self-instruct dedup's index); groups
    by how many rules they hold, then shorter first, then first appearance. Each: {"text",
    "support", "members"}."""
    from constitutional.selfalign.dedup import RougeIndex

    index, groups = RougeIndex(threshold), []
    for rule in rules:
        key = content(rule)
        hit = index.near_duplicate(key) if key else None
        if hit is not None:
            groups[hit[0]]["members"].append(rule)
            continue
        index.add(key)
        groups.append({"text": rule, "members": [rule]})
    for g in groups:
        g["support"] = len(g["members"])
    # most rules are proposed once: ties go to the shorter rule (a long one is usually
    # about one conversation: "... leaving the sheets of paper with the answer notes out")
    order = sorted(range(len(groups)), key=lambda i: (-groups[i]["support"],
                                                      len(groups[i]["text"].split()), i))
    return [groups[i] for i in order]


# -- the constitution ---------------------------------------------------------------------

def principle(name: str, clause: str):
    from constitutional.constitution import ChoicePrinciple

    return ChoicePrinciple(name=name, text=f"{STEM} {clause}.")


def inferred_constitution(kept: list[dict], source: str):
    """The kept candidates as a constitution: a choice principle each, and a critique and
    revision request built from it."""
    from constitutional.constitution import Constitution, CritiqueRevisionPrinciple

    choice = [principle(k["name"], k["text"]) for k in kept]
    pairs = [CritiqueRevisionPrinciple(
        name=k["name"],
        critique=f"Critique the assistant's last response against this rule: a good response "
                 f"is one that {k['text']}. Point out where it falls short.",
        revision=f"Please rewrite the assistant's response so that it is one that "
                 f"{k['text']}.") for k in kept]
    return Constitution(name="inferred", version="1", description=(
        f"Inferred from the preferences in {source} (`cai constitution infer`): the "
        f"{len(kept)} proposed rules that best reconstruct the held-in preferences."),
        critique_revision=pairs, choice=choice)


def candidate_constitution(candidates: list[dict]):
    from constitutional.constitution import Constitution

    return Constitution(name="candidates", choice=[principle(c["name"], c["text"])
                                                   for c in candidates])


def no_principle_constitution():
    from constitutional.constitution import ChoicePrinciple, Constitution

    return Constitution(name="no-principle", choice=[ChoicePrinciple(name="no-principle",
                                                                     text=NO_PRINCIPLE)])


# -- the run ------------------------------------------------------------------------------

def load_preferences(spec: str) -> list:
    """The pairs of a source; each must say which answer is preferred."""
    from constitutional.comparisons import comparison
    from constitutional.datasource import read_rows
    from constitutional.errors import InputError

    out = []
    for line, obj in read_rows(spec):
        if obj.get("ok") is False:
            continue
        c = comparison(obj, spec, line)
        if c.better is None:
            raise InputError("no preference: give chosen/rejected or better/worse",
                             path=spec, line=line, field="chosen")
        out.append(c)
    if not out:
        raise InputError("no pairs in the file", path=spec)
    return out


def propose(cfg: InferConfig, pairs: list, run, inputs: dict, get_backend, log) -> list[str]:
    """Step 1: the proposals, cleaned to rules (in pair order)."""
    from constitutional.artifacts import model_identity, read_output, run_model_stage
    from constitutional.backends.base import Sampling

    sampling = Sampling.from_config(cfg.proposal)

    def work(backend, chunk, advance):
        outs = backend.generate([proposal_prompt(p) for p in chunk], sampling)
        advance(len(chunk))
        return [{"id": p.id, "proposals": [c.text for c in cs]} for p, cs in zip(chunk, outs)]

    result = run_model_stage(
        run.infer_proposals, config={"proposal": cfg.proposal.model_dump(mode="json"),
                                     "prompt": PROPOSAL},
        inputs={**inputs, "model": model_identity(cfg.model.name)}, items=pairs,
        chunk_size=cfg.label.chunk_size, get_backend=get_backend, work=work,
        total=len(pairs), unit="pairs", log=log)
    rows = read_output(result.output)
    return [r for row in rows for t in row["proposals"]
            if (r := clean_rule(t, cfg.min_words, cfg.max_words))]


def infer_constitution(cfg: InferConfig, data: str, run, get_backend, log=print) -> dict:
    """All five steps (module docstring) in `run`; writes RUN/constitution_infer/
    results.json and constitution.yaml, and returns the results."""
    from constitutional.constitution import load_constitution, to_yaml
    from constitutional.datasource import digest
    from constitutional.errors import InputError
    from constitutional.evals.feedback_accuracy import shown, summarize
    from constitutional.evals.principles import label_under_each, per_principle
    from constitutional.jsonio import write_atomic, write_json_atomic

    pairs = shown(load_preferences(data), cfg.seed)
    held_in = [p for p in pairs if not is_held_out(p.id, cfg.held_out, cfg.seed)]
    held_out = [p for p in pairs if is_held_out(p.id, cfg.held_out, cfg.seed)][:cfg.check_pairs]
    if not held_in or not held_out:
        raise InputError(f"{len(pairs)} pairs split into {len(held_in)} held-in and "
                         f"{len(held_out)} held-out: both need pairs", path=data)
    label_cfg = cfg.label.model_copy(update={"model": cfg.model})
    get_backend = functools.cache(get_backend)      # one loaded model for all five steps
    _, default = load_constitution(label_cfg.constitution)
    default.require("choice", label_cfg.constitution)
    inputs = {"pairs": digest(data), "split": [cfg.held_out, cfg.seed]}

    rules = propose(cfg, held_in[:cfg.propose_pairs], run, inputs, get_backend, log)
    groups = merge(rules, cfg.merge_threshold)
    if not groups:
        raise InputError("the feedback model proposed no usable rule (none of the form "
                         f"\"{STEM} ...\" with {cfg.min_words}-{cfg.max_words} words): see "
                         f"{run.infer_proposals.output}")
    candidates = [{"name": f"rule-{i + 1:02d}", **g}
                  for i, g in enumerate(groups[:cfg.max_candidates])]
    log(f"infer: {len(rules)} rules proposed, {len(groups)} after merging at ROUGE-L "
        f"> {cfg.merge_threshold}; testing {len(candidates)}")

    tested = held_in[:cfg.test_pairs]
    rows = label_under_each(run.infer_tests, label_cfg, candidate_constitution(candidates),
                            tested, inputs, get_backend, log)
    by_name = {t["principle"]: t for t in per_principle(rows, [c["name"] for c in candidates])}
    for c in candidates:
        t = by_name[c["name"]]
        c.update(accuracy=t["accuracy"], ci95=t["ci95"], position_consistency=t[
            "position_consistency"], n=t["n"])
    ranked = sorted(candidates, key=lambda c: (-c["accuracy"], -c["support"], c["name"]))
    above = [c for c in ranked if c["accuracy"] > 0.5]
    kept = (above or ranked)[:cfg.keep]
    if not above:
        log("infer: no candidate reconstructs the held-in preferences above chance; "
            "keeping the best anyway")
    inferred = inferred_constitution(kept, data)
    folder = run.constitution_infer
    write_atomic(folder / "constitution.yaml", to_yaml(inferred))

    checks = {}
    for which, c in (("inferred", inferred), ("default", default),
                     ("no principle", no_principle_constitution())):
        rows = label_under_each(run.infer_heldout(which), label_cfg, c, held_out, inputs,
                                get_backend, log, every=False)
        s = summarize(rows, 0.0)                 # feedback-accuracy's own figures
        checks[which] = {"n": s["n"], "accuracy": s["accuracy"], "ci95": s["ci95"],
                         "order_disagreement": s["order_disagreement"],
                         "constitution": f"{c.name} v{c.version}",
                         "principles": len(c.choice)}
    results = {"data": str(data), "model": cfg.model.name, "pairs": len(pairs),
               "held_in": len(held_in), "held_out": len(held_out),
               "proposed_from": len(held_in[:cfg.propose_pairs]), "rules": len(rules),
               "merged": len(groups), "merge_threshold": cfg.merge_threshold,
               "merge_curve": {str(t): len(merge(rules, t)) for t in MERGE_CURVE},
               "tested_on": len(tested), "candidates": ranked,
               "kept": [c["name"] for c in kept], "above_chance": bool(above),
               "principles_per_pair": label_cfg.principles, "held_out_check": checks,
               "constitution": str(folder / "constitution.yaml")}
    write_json_atomic(folder / "results.json", results)
    return results
