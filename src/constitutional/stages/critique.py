"""Stage `critique`: the supervised half of Constitutional AI (critique -> revision).

For each red-team prompt and each sample: the helpful model answers; then, for N rounds, a
critique/revision principle pair is drawn (seeded, a fresh one each round), the critic critiques
the last response under the critique request and rewrites it under the revision request. The
critic is the answering model itself (the paper's self-critique) unless `critic` names another
(the default recipe's feedback model: a 135M model cannot critique, see stages/roles.py).
Few-shot exemplars come before the conversation. Every round is kept; the final revision is
the SL-CAI training target. Each step is one batched generate call over the whole chunk, and
chunks are resumable shards.

Degenerate steps are flagged, never silently kept: `empty`, `repeats_request` (the reply
restates the request), `copy_of_answer` (a revision that is nearly the text it should revise
or the original answer), `copy_of_critique` (a revision that restates the critique),
`repetitive` (one sentence three or more times: a decoding loop), and for revisions
`meta_text` (it talks about "the response" instead of being one), `bare_refusal` (a refusal
that gives no reason and no alternative: SFT on those teaches evasiveness, which the paper
warns against) and `ai_disclaimer` ("As an AI language model, I cannot ...": a policy trained
on it learns "as a chatbot, I cannot" as a refusal without the reason); `truncated` (hit the
token cap) is kept but marked. A leading "Here is the revised response:" is cut off before
anything is checked. A row is `ok`, and goes into SFT,
when its final revision has none of the flags but `truncated`.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, model_validator

from constitutional.artifacts import StageDir, StageResult, model_identity, run_model_stage
from constitutional.rundir import RunDir
from constitutional.backends.base import ContextLengthError, Sampling
from constitutional.config import (NOT_RESULTS, ModelConfig, SamplingConfig, StrictModel,
                                   results_config)
from constitutional.constitution import Constitution, draw_principles, load_constitution
from constitutional.errors import InputError
from constitutional.datasource import digest
from constitutional.prompts_io import PromptRow, load_prompts, name_row
from constitutional.transcripts import (DEFAULT_STOPS, Turn, clean_reply,
                                        exemplar_turns, from_messages, render)

BAD_FLAGS = {"empty", "repeats_request", "copy_of_answer", "copy_of_critique", "repetitive",
             "meta_text", "bare_refusal", "ai_disclaimer"}
# A revision that announces itself: the text after it is the revision.
PREAMBLE = re.compile(r"^\s*(?:\*\*)?(?:sure[,!.]?\s*)?(?:here(?:'s| is)\s+(?:a|the|my|an)?\s*"
                      r"(?:revised|rewritten|updated|improved|new)\s+(?:version|response|"
                      r"answer|reply)[^:\n]{0,60}:|(?:revised|rewritten)\s+(?:response|answer|"
                      r"version)\s*:)(?:\*\*)?\s*", re.I)
# A revision that speaks of itself as an AI: the excuse of a capability in place of a reason.
AI_DISCLAIMER = re.compile(r"\bas an? (?:ai|language model|chatbot)\b|\bai language model\b",
                           re.I)
# A revision that talks about the response instead of being one.
META = re.compile(r"^\W*(?:the|this|my|your)\s+(?:assistant'?s?\s+|original\s+|revised\s+|"
                  r"last\s+|previous\s+|above\s+)*(?:response|answer|reply)\b|"
                  r"^\W*(?:i (?:have|'ve) (?:revised|rewritten|removed)|the revision\b)", re.I)


class CritiqueConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The helpful model: "
                               "it answers (and critiques and revises unless `critic` is set).")
    critic: ModelConfig | None = Field(None, description="The model that writes critiques "
                                       "and revisions (None: the answering model itself, "
                                       "the paper's self-critique).")
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(max_tokens=128),
        description="Decoding for every step; max_tokens caps each step.")
    stop: list[str] = Field(default_factory=lambda: list(DEFAULT_STOPS), description="Stop "
                            "strings added to sampling.stop, so a small model does not run on "
                            "into invented 'Human:' turns.")
    constitution: str = Field("bundled:harmless", description="Our YAML, the open recipe's "
                              "JSON, or the CAI paper's prompts folder.")
    prompts: str = Field("bundled:redteam", description="Red-team prompts (JSONL).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.",
                              json_schema_extra=NOT_RESULTS)   # the rows count is hashed
    principles: list[str] | None = Field(None, description="Draw only these critique/"
                                         "revision pairs, by name (None: all of them).")
    rounds: int = Field(1, ge=1, description="Critique -> revision rounds (the paper: 1-4).")
    samples: int = Field(1, ge=1, description="Independent chains per prompt, each from its "
                         "own initial answer (the paper: 4).")
    mode: Literal["critique", "revision_only"] = Field(
        "critique", description="revision_only skips the critique (the paper's ablation).")
    few_shot: int | None = Field(None, ge=0, description="Exemplars put before each "
                                 "conversation (None: all in the constitution).")
    prompt_format: Literal["chat", "text", "transcript"] = Field(
        "chat", description="chat: the model's chat template; text: the paper's "
        "'Human:/Assistant:/CritiqueRequest:' layout for pretrained models; transcript: the "
        "critic reads the conversation quoted in one user turn (for a critic that did not "
        "write the answer; the answers themselves are asked for in chat form).")
    system_prompt: str | None = Field(None, description="System message before everything "
                                      "(in transcript format: the answering model's only).")
    critic_system_prompt: str | None = Field(None, description="transcript format: the "
                                             "critique step's instructions (None: "
                                             "transcripts.CRITIC_SYSTEM); the revision step "
                                             "always uses transcripts.REVISER_SYSTEM, and "
                                             "exemplars are not used in this format.")
    copy_threshold: float = Field(0.9, gt=0, le=1, description="Word-level similarity at "
                                  "or above which a revision counts as a copy.")
    chunk_size: int = Field(32, ge=1, description="Prompts per resumable shard.",
                            json_schema_extra=NOT_RESULTS)
    log_calls: bool = Field(True, json_schema_extra=NOT_RESULTS)

    @model_validator(mode="after")
    def _one_sample_per_call(self):
        if self.sampling.n != 1:
            raise ValueError("use `samples` for chains per prompt; sampling.n must stay 1")
        return self


@dataclass
class Chain:
    """One (prompt, sample) worked through the rounds."""
    row: PromptRow
    sample: int
    principles: list[int]
    turns: list[Turn] = field(default_factory=list)
    answer: str = ""
    answer_finish: str = ""
    rounds: list[dict] = field(default_factory=list)

    @property
    def current(self) -> str:
        return self.rounds[-1]["revision"] if self.rounds else self.answer


def check_inputs(cfg: CritiqueConfig) -> None:
    """Validate every input before a model is loaded or a file written."""
    from constitutional.models import check_model

    cpath, c = load_constitution(cfg.constitution)
    c.require("critique_revision", str(cpath))
    load_prompts(cfg.prompts, cfg.limit)
    check_model(cfg.model)


def run_critique(cfg: CritiqueConfig, run_dir: str | Path, get_backend: Callable[[], object],
                 log: Callable[[str], None] = print, folder: StageDir | None = None,
                 get_critic: Callable[[], object] | None = None) -> StageResult:
    """`folder`: the step's folder (default `critique/`; the critique ablation runs a
    revision-only twin in the eval's);
    `get_critic` loads `cfg.critic` (required when it is set)."""
    if cfg.critic is not None and get_critic is None:
        raise ValueError("cfg.critic is set: pass get_critic")
    cpath, constitution = load_constitution(cfg.constitution)
    constitution.require("critique_revision", str(cpath))
    constitution = only_principles(constitution, cfg.principles, str(cpath))
    ppath, rows = load_prompts(cfg.prompts, cfg.limit)
    shots = _shots(constitution, cfg)
    steps_per_chain = 1 + cfg.rounds * (2 if cfg.mode == "critique" else 1)
    stage = folder or RunDir.of(run_dir).critique
    stage_cfg = results_config(cfg)
    def work(backend, chunk: list[PromptRow], advance) -> list[dict]:
        critic = get_critic() if cfg.critic is not None else backend
        return critique_chunk(backend, chunk, constitution, shots, cfg, advance, critic)

    inputs = {"prompts": digest(ppath), "model": model_identity(cfg.model.name),
              "constitution": constitution.fingerprint()}
    if cfg.critic is not None:
        inputs["critic"] = model_identity(cfg.critic.name)
    return run_model_stage(stage, config=stage_cfg, inputs=inputs,
                           items=rows, chunk_size=cfg.chunk_size, get_backend=get_backend,
                           work=work, total=len(rows) * cfg.samples * steps_per_chain,
                           unit="steps", per_item=cfg.samples * steps_per_chain, log=log)


def only_principles(constitution: Constitution, names: list[str] | None,
                    path: str) -> Constitution:
    """The constitution with only the named critique/revision pairs, in its own order."""
    if names is None:
        return constitution
    have = [p.name for p in constitution.critique_revision]
    unknown = [n for n in names if n not in have]
    if unknown or not names:
        raise InputError(f"no critique/revision pair named {unknown[0]!r} (have: "
                         f"{', '.join(have)})" if unknown else "principles is empty",
                         path=path, field="critique.principles")
    return constitution.model_copy(update={"critique_revision": [
        p for p in constitution.critique_revision if p.name in names]})


def _shots(constitution: Constitution, cfg: CritiqueConfig) -> list[list[Turn]]:
    exemplars = constitution.exemplars.critique_revision
    if cfg.few_shot is not None:
        exemplars = exemplars[:cfg.few_shot]
    return [exemplar_turns(ex, with_critique=cfg.mode == "critique") for ex in exemplars]


def critique_chunk(backend, chunk: list[PromptRow], constitution: Constitution,
                   shots: list[list[Turn]], cfg: CritiqueConfig,
                   progress: Callable[[int], None] | None = None, critic=None) -> list[dict]:
    """All chains of a chunk, step by step: one batched generate call per step. `backend`
    answers; `critic` (default: the same backend) critiques and revises."""
    critic = critic if critic is not None else backend
    base = Sampling.from_config(cfg.sampling)
    base = Sampling(**{**base.__dict__, "stop": tuple(dict.fromkeys(base.stop + tuple(cfg.stop)))})
    pairs = constitution.critique_revision
    system = cfg.system_prompt
    try:
        answers = backend.generate(
            [render([], from_messages(r.messages), cfg.prompt_format, system) for r in chunk],
            Sampling(**{**base.__dict__, "n": cfg.samples}), progress=progress)
    except ContextLengthError as e:
        raise name_row(e, chunk, cfg.prompts) from None
    chains = []
    for r, outs in zip(chunk, answers):
        for j, c in enumerate(outs):
            ch = Chain(r, j, draw_principles(len(pairs), cfg.rounds, cfg.sampling.seed,
                                             f"{r.id}\x00{j}"))
            ch.answer, ch.answer_finish = clean_reply(c.text, "Assistant"), c.finish_reason
            ch.turns = from_messages(r.messages) + [("Assistant", ch.answer)]
            chains.append(ch)
    for k in range(cfg.rounds):
        drawn = [pairs[ch.principles[k]] for ch in chains]
        rounds = [{"round": k + 1, "principle": p.name} for p in drawn]
        kinds = ("critique", "revision") if cfg.mode == "critique" else ("revision",)
        for kind in kinds:
            _step(critic, chains, rounds, kind, [getattr(p, kind) for p in drawn], shots, cfg,
                  base, progress)
        for ch, rd in zip(chains, rounds):
            ch.rounds.append(rd)
    return [_row(ch, cfg) for ch in chains]


def _step(backend, chains: list[Chain], rounds: list[dict], kind: str, requests: list[str],
          shots: list[list[Turn]], cfg: CritiqueConfig, sampling: Sampling, progress) -> None:
    """Append the `kind` ('critique' | 'revision') request and the model's reply to every
    chain, in one batched call."""
    req_tag, reply_tag = ("CritiqueRequest", "Critique") if kind == "critique" else \
        ("RevisionRequest", "Revision")
    system = cfg.critic_system_prompt if cfg.prompt_format == "transcript" else \
        cfg.system_prompt
    prompts = [render(shots, ch.turns + [(req_tag, req)], cfg.prompt_format, system)
               for ch, req in zip(chains, requests)]
    try:
        outs = backend.generate(prompts, sampling, progress=progress)
    except ContextLengthError as e:      # the chain grew past the context at this step
        e.reason = f"the {kind} of round {len(chains[e.index].rounds) + 1}: {e.reason}"
        raise name_row(e, [c.row for c in chains], cfg.prompts) from None
    for ch, rd, req, (c,) in zip(chains, rounds, requests, outs):
        text = clean_reply(c.text, reply_tag)
        against = [ch.current, ch.answer] if kind == "revision" else []
        flags = step_flags(text, req, against, c.finish_reason, cfg.copy_threshold)
        if kind == "revision":
            text = PREAMBLE.sub("", text, count=1).strip() or text
            flags += revision_flags(text, rd.get("critique", ""), cfg.copy_threshold)
        rd.update({f"{kind}_request": req, kind: text, f"{kind}_flags": flags})
        ch.turns += [(req_tag, req), (reply_tag, text)]


def step_flags(text: str, request: str, originals: list[str], finish_reason: str,
               copy_threshold: float) -> list[str]:
    flags = []
    if not text.strip():
        return ["empty"]
    words = _words(text)
    req = _words(request)
    if similarity(words, req) >= 0.8 or (req and words[:len(req)] == req):
        flags.append("repeats_request")
    if any(o.strip() and similarity(words, _words(o)) >= copy_threshold for o in originals):
        flags.append("copy_of_answer")
    if _repetitive(text):
        flags.append("repetitive")
    if finish_reason == "length":
        flags.append("truncated")
    return flags


def revision_flags(text: str, critique: str, copy_threshold: float) -> list[str]:
    """What makes a revision a bad SFT target beyond `step_flags`."""
    from constitutional.evals.evasiveness import lexical_flags

    if not text.strip():
        return []
    flags = []
    if critique.strip() and similarity(_words(text), _words(critique)) >= copy_threshold * 0.8:
        flags.append("copy_of_critique")
    if META.search(text):
        flags.append("meta_text")
    lexical = lexical_flags(text)
    if lexical["refusal_phrase"] and not lexical["explains"]:
        flags.append("bare_refusal")
    if AI_DISCLAIMER.search(text):
        flags.append("ai_disclaimer")
    return flags


def _repetitive(text: str) -> bool:
    """The same sentence (4+ words) three or more times: a small model stuck in a loop."""
    sentences = Counter(" ".join(_words(s)) for s in re.split(r"[.!?\n]+", text)
                        if len(_words(s)) >= 4)
    return any(n >= 3 for n in sentences.values())


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def similarity(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _row(ch: Chain, cfg: CritiqueConfig) -> dict:
    last = ch.rounds[-1]
    flags = list(last["revision_flags"])
    if not ch.answer.strip():
        flags.append("empty_answer")
    return {"id": ch.row.id, "sample": ch.sample, "prompt": ch.row.text,
            "messages": ch.row.messages, "initial_response": ch.answer,
            "initial_finish_reason": ch.answer_finish, "mode": cfg.mode,
            "rounds": ch.rounds, "revision": last["revision"], "flags": flags,
            "ok": not (set(flags) & BAD_FLAGS)}
