"""SELF-ALIGN in a run folder, stage by stage:

    self_instruct/     instructions written round by round from seed tasks (shard per round)
    redteam_topics/    topics brainstormed per adversarial type
    redteam/           one instruction per (type, topic)
    instructions/      both sets screened together (filters, ROUGE-L dedup), counts by reason
    self_align/        the principle-driven answers (the base model's, or the feedback
                       model's when `feedback` is set): thoughts, answer, flags
    engrave/           principle engraving: fine-tune on (instruction, answer), no principles
    verbose_answers/   the engraved model (or the feedback model) answers under the verbose
                       prompt
    verbose/           verbose cloning: fine-tune on those answers without the prompt
    selfalign_samples/ held-out instructions answered by the engraved and the final model

The base model is loaded once for the generation stages and released before training. With a
`feedback` model (a recipe's roles set it), the 16 principles and 5 exemplars are read by a
model that can follow them, and the policy is engraved and cloned from its answers: a 135M
model cannot apply that prompt in context.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

from pydantic import Field

from constitutional.artifacts import (StageDir, StageResult, model_identity,
                                      package_versions, read_output, run_model_stage)
from constitutional.backends import BackendCache
from constitutional.backends.base import Sampling
from constitutional.config import ModelConfig, SamplingConfig, StrictModel, results_config
from constitutional.jsonio import sha256_json, write_jsonl_atomic
from constitutional.rundir import RunDir
from constitutional.selfalign import instructions as ins
from constitutional.selfalign import principled as pr
from constitutional.train.sft import SFTTrainConfig



class SelfInstructConfig(StrictModel):
    seed_tasks: str = Field("bundled:seed_tasks", description="Self-instruct seed tasks "
                            "(JSONL with `instruction`); bundled:seed_tasks is 16 of ours.")
    target: int = Field(64, ge=1, description="Instructions to keep.")
    max_rounds: int = Field(20, ge=1, description="Stop after this many rounds regardless.")
    requests: int = Field(16, ge=1, description="Prompts per round.")
    examples: int = Field(8, ge=1, description="Example instructions listed per prompt.")
    machine_examples: int = Field(2, ge=0, description="Of them, machine-written (the rest "
                                  "seeds), as Self-Instruct's 6 + 2.")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="Drop a new instruction "
                                   "whose ROUGE-L F with a kept one is above this.")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=1.0, top_p=0.95, max_tokens=128, stop=["\n\n\n"]))


class RedTeamConfig(StrictModel):
    types: str = Field("bundled:redteam_types", description="Adversarial instruction types "
                       "(YAML list of name/description/example); ours has 20.")
    topics_per_type: int = Field(4, ge=1)
    limit_types: int | None = Field(None, ge=1, description="Use only the first N types.")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=1.0, top_p=0.95, max_tokens=64))


class SelfAlignConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model: "
                               "writes the instructions and the principle-driven answers, "
                               "and is fine-tuned.")
    feedback: ModelConfig | None = Field(None, description="Writes the principle-driven "
                                         "and the verbose answers; None: the base model "
                                         "itself (the paper's self-alignment).")
    constitution: str = Field("bundled:self_align", description="A constitution with a "
                              "`self_align` section (principles, exemplars, verbose prompt).")
    self_instruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    redteam: RedTeamConfig = Field(default_factory=RedTeamConfig)
    answer_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=0.95, max_tokens=160), description="Principle-driven answers "
        "(the paper decodes at 0.7).")
    engrave: SFTTrainConfig = Field(default_factory=SFTTrainConfig, description="Principle "
                                    "engraving (the model is the base model).")
    verbose: SFTTrainConfig = Field(default_factory=SFTTrainConfig, description="Verbose "
                                    "cloning; trains the engraved model further.")
    verbose_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(
        temperature=0.7, top_p=0.95, max_tokens=192))
    held_out: int = Field(4, ge=0, description="Instructions kept out of training, answered "
                          "by each model for the report.")
    chunk_size: int = Field(32, ge=1)
    seed: int = 0


def _constitution(cfg: SelfAlignConfig):
    from constitutional.constitution import load_constitution

    path, c = load_constitution(cfg.constitution)
    c.require("self_align", str(path))
    return c.self_align


# -- instructions -----------------------------------------------------------------------------

def run_self_instruct(cfg: SelfAlignConfig, run_dir: Path, get_backend,
                      log: Callable[[str], None] = print) -> StageResult:
    """Rounds until `target` instructions are kept; one shard per round, resumable."""
    from constitutional.selfalign.dedup import RougeIndex

    si = cfg.self_instruct
    seeds = ins.load_seed_tasks(si.seed_tasks)
    stage = RunDir.of(run_dir).self_instruct
    fp = sha256_json({"config": results_config(si), "seeds": seeds,
                      "model": model_identity(cfg.model.name), "seed": cfg.seed})
    done = stage.reuse_or_reset(fp, log)
    if done:
        return StageResult(stage.name, stage.output, done["rows"], 0.0, True)
    stage.shards.mkdir(parents=True, exist_ok=True)
    stage.write_manifest({"stage": stage.name, "status": "running", "fingerprint": fp})
    index, counts, kept = RougeIndex(si.rouge_threshold), {}, []
    for s in seeds:
        index.add(s)
    done = sorted(stage.shards.glob("*.jsonl"))
    for shard in done:                        # replay finished rounds: same state as before
        for row in read_output(shard):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            if row["status"] == "kept":
                index.add(row["instruction"])
                kept.append(row)
    t0, r = time.time(), len(done)
    while len(kept) < si.target and r < si.max_rounds:
        rows = _self_instruct_round(si, cfg.seed, r, seeds, [k["instruction"] for k in kept],
                                    get_backend(), index, counts)
        write_jsonl_atomic(stage.shards / f"{r:05d}.jsonl", rows)
        kept += [x for x in rows if x["status"] == "kept"]
        log(f"self_instruct round {r + 1}: {len(kept)}/{si.target} kept")
        r += 1
    out = [{"id": f"si-{i:05d}", "instruction": k["instruction"], "source": "self_instruct"}
           for i, k in enumerate(kept[:si.target])]
    write_jsonl_atomic(stage.output, out)
    stage.write_manifest({"stage": stage.name, "status": "complete", "fingerprint": fp,
                          "rows": len(out), "rounds": r, "counts": counts,
                          "exact_rouge_pairs": index.exact_scored, "seconds": time.time() - t0,
                          "versions": package_versions()})
    return StageResult(stage.name, stage.output, len(out), time.time() - t0, False)


def _self_instruct_round(si, seed, r, seeds, new, backend, index, counts) -> list[dict]:
    rng = random.Random(f"{seed}\x00round\x00{r}")
    examples = [ins.sample_examples(seeds, new, si.examples, si.machine_examples, rng)
                for _ in range(si.requests)]
    sampling = Sampling.from_config(si.sampling)
    sampling = Sampling(**{**sampling.__dict__, "seed": rng.getrandbits(31)})
    outs = backend.generate([ins.list_prompt(ex) for ex in examples], sampling)
    rows = []
    for ex, (c,) in zip(examples, outs):
        parsed = ins.parse_list(c.text, len(ex) + 1)
        rows += [{"round": r, "instruction": t, "status": s}
                 for t, s in ins.screen(parsed, index, counts)]
    return rows


def run_redteam(cfg: SelfAlignConfig, run_dir: Path, get_backend,
                log: Callable[[str], None] = print) -> list[StageResult]:
    rt = cfg.redteam
    types = ins.load_redteam_types(rt.types)[:rt.limit_types]
    sampling = Sampling.from_config(rt.sampling)
    model = model_identity(cfg.model.name)

    def topics(backend, chunk, advance):
        outs = backend.generate([ins.topics_prompt(t, rt.topics_per_type) for t in chunk],
                                sampling, progress=advance)
        return [{"type": t["name"], "topics": _unique_topics(ins.parse_list(c.text, 1),
                                                             rt.topics_per_type)}
                for t, (c,) in zip(chunk, outs)]

    res_topics = run_model_stage(
        RunDir.of(run_dir).redteam_topics, config=results_config(rt),
        inputs={"types": sha256_json(types), "model": model}, items=types,
        chunk_size=cfg.chunk_size, get_backend=get_backend, work=topics, total=len(types),
        unit="types", log=log)
    by_name = {t["name"]: t for t in types}
    pairs = [(row["type"], topic) for row in read_output(res_topics.output)
             for topic in row["topics"]]

    def questions(backend, chunk, advance):
        outs = backend.generate([ins.question_prompt(by_name[n], tp) for n, tp in chunk],
                                sampling, progress=advance)
        return [{"type": n, "topic": tp, "instruction": ins.first_line(c.text)}
                for (n, tp), (c,) in zip(chunk, outs)]

    res_q = run_model_stage(
        RunDir.of(run_dir).redteam, config=results_config(rt),
        inputs={"topics": sha256_json(pairs), "model": model}, items=pairs,
        chunk_size=cfg.chunk_size, get_backend=get_backend, work=questions, total=len(pairs),
        unit="instructions", log=log)
    return [res_topics, res_q]


def _unique_topics(items: list[str], n: int) -> list[str]:
    """Topics with case/punctuation duplicates removed, at most n."""
    seen, out = set(), []
    for t in items:
        key = " ".join(t.lower().strip(" .\"'").split())
        if key and key not in seen and len(key) <= 80:
            seen.add(key)
            out.append(t.strip(" .\"'"))
    return out[:n]


def merge_instructions(cfg: SelfAlignConfig, run_dir: Path) -> StageResult:
    """Self-instruct's kept instructions plus the red-team ones, screened against them."""
    from constitutional.selfalign.dedup import RougeIndex

    run = RunDir.of(run_dir)
    si = read_output(run.self_instruct.output)
    rt_path = run.redteam.output
    rt = read_output(rt_path) if rt_path.is_file() else []
    index, counts = RougeIndex(cfg.self_instruct.rouge_threshold), {}
    for row in si:
        index.add(row["instruction"])
    rows = list(si)
    screened = ins.screen([r["instruction"] for r in rt], index, counts)
    for r, (text, status) in zip(rt, screened):
        if status == "kept":
            rows.append({"id": f"rt-{len(rows):05d}", "instruction": text, "source": "redteam",
                         "type": r["type"], "topic": r["topic"]})
    stage = run.instructions
    write_jsonl_atomic(stage.output, rows)
    stage.write_manifest({"stage": stage.name, "status": "complete", "rows": len(rows),
                          "self_instruct": len(si), "redteam_kept": counts.get("kept", 0),
                          "redteam_counts": counts})
    return StageResult(stage.name, stage.output, len(rows), 0.0, False)



# -- principle-driven self-alignment ---------------------------------------------------------

def run_principled(cfg: SelfAlignConfig, run_dir: Path, get_backend,
                   log: Callable[[str], None] = print) -> StageResult:
    sa = _constitution(cfg)
    run = RunDir.of(run_dir)
    rows = read_output(run.instructions.output)
    sampling = Sampling.from_config(cfg.answer_sampling)
    stops = tuple(sampling.stop) + pr.turn_stops(sa)
    sampling = Sampling(**{**sampling.__dict__, "stop": stops})
    leaks = pr.prompt_ngrams(sa)

    def work(backend, chunk, advance):
        outs = backend.generate([pr.principled_prompt(sa, r["instruction"]) for r in chunk],
                                sampling, progress=advance)
        out = []
        for r, (c,) in zip(chunk, outs):
            thoughts, answer, ran_on = pr.parse(sa, c.text)
            reason = pr.drop_reason(answer, ran_on, c.finish_reason, leaks)
            out.append({**r, "thoughts": thoughts, "answer": answer or "",
                        "principles": pr.cited_principles(sa, thoughts),
                        "drop": reason, "ok": reason is None, "raw": c.text})
        return out

    return run_model_stage(
        run.self_align, config={"sampling": results_config(cfg.answer_sampling),
                                "stops": list(stops), "self_align": results_config(sa)},
        inputs={"instructions": sha256_json(rows),
                "model": model_identity((cfg.feedback or cfg.model).name)},
        items=rows, chunk_size=cfg.chunk_size, get_backend=get_backend, work=work,
        total=len(rows), unit="answers", log=log)


# -- engraving and verbose cloning -----------------------------------------------------------

def split_held_out(rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """The last n instructions are held out of training (for the before/after samples)."""
    return (rows[:-n], rows[-n:]) if n else (rows, [])


def engraving_rows(rows: list[dict]) -> list[dict]:
    """(instruction -> answer) with the principles, exemplars and thoughts pruned away."""
    return [{"prompt": [{"role": "user", "content": r["instruction"]}],
             "completion": [{"role": "assistant", "content": r["answer"]}],
             "source": r["source"], "source_id": r["id"]} for r in rows if r["ok"]]


def verbose_rows(rows: list[dict]) -> list[dict]:
    """Context distillation: the verbose answer, trained without the verbose prompt."""
    return [{"prompt": [{"role": "user", "content": r["instruction"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}],
             "source": "verbose", "source_id": r["id"]}
            for r in rows if r["completion"].strip() and r["finish_reason"] != "length"]


def run_finetune(stage: StageDir, sft: SFTTrainConfig, base: str, rows_fn, inputs: dict,
                 log) -> StageResult:
    from constitutional.train.sft import train
    from constitutional.train.stage import run_training_stage

    cfg = sft.model_copy(update={"model": sft.model.model_copy(update={"name": base})})
    return run_training_stage(
        stage, results_config(cfg), {**inputs, "base": model_identity(base)}, rows_fn,
        lambda rows, st, lg: train(cfg, rows, st.checkpoints, st.model, lg), log)


def run_answers(stage: StageDir, model_cfg: ModelConfig, rows: list[dict], system: str | None,
                sampling_cfg: SamplingConfig, get_backend, log) -> StageResult:
    """A model answers instructions as plain chat turns (with an optional system prompt)."""
    sampling = Sampling.from_config(sampling_cfg)

    def chat(r):
        msgs = [{"role": "user", "content": r["instruction"]}]
        return ([{"role": "system", "content": system}] if system else []) + msgs

    def work(backend, chunk, advance):
        outs = backend.generate([chat(r) for r in chunk], sampling, progress=advance)
        return [{"id": r["id"], "instruction": r["instruction"], "source": r["source"],
                 "completion": c.text, "finish_reason": c.finish_reason}
                for r, (c,) in zip(chunk, outs)]

    return run_model_stage(
        stage, config={"sampling": results_config(sampling_cfg),
                                         "system": system},
        inputs={"rows": sha256_json(rows), "model": model_identity(model_cfg.name)},
        items=rows, chunk_size=64, get_backend=get_backend, work=work, total=len(rows),
        unit="answers", log=log)


def run_self_align_stage(name: str, cfg: SelfAlignConfig, run_dir: Path,
                         backends: BackendCache, log) -> list[StageResult]:
    """One recipe stage of SELF-ALIGN (`cai run` calls these in order with one cache, so the
    base model is loaded once for the three generation stages; training releases it)."""
    run_dir = RunDir.of(run_dir)
    base = backends.loader(cfg.model)

    if name == "self-instruct":
        return [run_self_instruct(cfg, run_dir, base, log)]
    if name == "redteam":
        out = run_redteam(cfg, run_dir, base, log)
        return out + [merge_instructions(cfg, run_dir)]
    if name == "self-align":
        if not run_dir.instructions.output.is_file():
            merge_instructions(cfg, run_dir)
        writer = backends.loader(cfg.feedback) if cfg.feedback else base
        return [run_principled(cfg, run_dir, writer, log)]
    backends.release(cfg.model)   # free the base model before fine-tuning
    return _train_stage(name, cfg, run_dir, backends, log)


def _train_stage(name, cfg, run_dir, backends: BackendCache, log) -> list[StageResult]:
    from constitutional.jsonio import sha256_file

    sa = _constitution(cfg)
    answers = read_output(run_dir.self_align.output)
    train_rows, held = split_held_out(answers, cfg.held_out)
    engraved = run_dir.engraved_model
    ecfg = cfg.model.model_copy(update={"name": str(engraved)})
    # loaded once: engraving's samples, then (next stage) the verbose answers
    engraved_backend = backends.loader(ecfg)

    if name == "engrave":
        res = run_finetune(run_dir.engraved, cfg.engrave, cfg.model.name,
                           lambda: engraving_rows(train_rows),
                           {"answers": sha256_file(run_dir.self_align.output)}, log)
        return [res] + _samples("engrave", ecfg, held, cfg, run_dir, engraved_backend, log)
    writer = cfg.feedback or ecfg         # the paper: the engraved model under the prompt
    gen = run_answers(run_dir.verbose_answers, writer, train_rows, sa.verbose_prompt,
                      cfg.verbose_sampling, backends.loader(writer), log)
    backends.release(ecfg)
    res = run_finetune(run_dir.verbose, cfg.verbose, str(engraved),
                       lambda: verbose_rows(read_output(gen.output)),
                       {"answers": sha256_file(gen.output)}, log)
    vcfg = cfg.model.model_copy(update={"name": str(run_dir.verbose_model)})
    return [gen, res] + _samples("verbose", vcfg, held, cfg, run_dir,
                                 backends.loader(vcfg), log)


def _samples(tag: str, mcfg: ModelConfig, held: list[dict], cfg, run_dir, get_backend,
             log) -> list[StageResult]:
    """The held-out instructions answered by a trained model, without any principles."""
    if not held:
        return []
    return [run_answers(RunDir.of(run_dir).selfalign_samples(tag), mcfg, held, None,
                        cfg.answer_sampling, get_backend, log)]


# -- the recipe stages ------------------------------------------------------------------------

class SelfAlignSection(StrictModel):
    """The recipe section every SELF-ALIGN stage reads."""
    selfalign: SelfAlignConfig = Field(default_factory=SelfAlignConfig, description="SELF-ALIGN"
                                       " (stages self-instruct ... verbose).")


def recipe_stage(name: str, doc: str):
    """`run(cfg, run, models)` of the SELF-ALIGN recipe stage `name`. The stages share one
    model cache (`models.shared`), so the base model is loaded once for the three that
    generate."""
    def run(cfg, run, models) -> list[StageResult]:
        return run_self_align_stage(name, cfg.selfalign, run, models.shared, run.log)

    run.__doc__ = doc
    return run
