"""PPO in a run folder: load the models, resume, iterate, evaluate, checkpoint, save.

The trainer itself is train/ppo.py; this module gives it a stage folder (RUN/rl): the
manifest and fingerprint (the same rule as every stage, `train/stage.reuse_or_reset`),
checkpoint.pt (a killed run continues from the last one and ends with the same numbers),
log.jsonl and eval.jsonl (trimmed back to the checkpoint on resume), snapshots for the
frontier plot, and the merged policy in model/.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from constitutional.artifacts import StageDir, StageResult, model_identity, package_versions
from constitutional.config import results_config
from constitutional.datasource import digest
from constitutional.jsonio import sha256_json, write_atomic
from constitutional.rundir import RunDir
from constitutional.train.common import load_trainable, use_bf16
from constitutional.train.distributed import (is_main_process, per_device_batch, rank,
                                              wait_for_everyone, world_size)
from constitutional.train.ppo import STAGE, PPOConfig, PPOTrainer, RewardFn, split_prompts
from constitutional.train.stage import reuse_or_reset, save_atomically


def load_models(cfg: PPOConfig, pm_path: str | None):
    """Policy (+ LoRA), tokenizer and a value model initialized from the preference model
    (without one, from the policy with a fresh head)."""
    bf16 = use_bf16(cfg.precision)
    policy, tok = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.lora else None,
                                 bf16=bf16, seed=cfg.seed)
    value, _ = load_trainable(cfg.model, lora=cfg.lora_settings if cfg.value_lora else None,
                              bf16=bf16, seed=cfg.seed, head="score", path=pm_path)
    return policy, tok, value


def pm_reward(pm_path: str, device: str = "auto") -> RewardFn:
    from constitutional.train.pm import PreferenceModel

    pm = PreferenceModel(pm_path, device=device)
    return lambda convs, texts: pm.score(convs, texts)


def run_ppo(cfg: PPOConfig, run_dir: str | Path | RunDir,
            log: Callable[[str], None] = print, reward_fn: RewardFn | None = None,
            reward_inputs: dict | None = None) -> StageResult:
    """PPO against the preference model, or against `reward_fn`: with `reward_inputs` (what
    the fingerprint holds of it, e.g. `JudgeReward.identity()`) it replaces the preference
    model altogether; without, it is a stand-in (tests) and the PM still starts the value
    model."""
    import torch

    from constitutional.prompts_io import conversation, load_prompts

    run = RunDir.of(run_dir)
    pm_path = None if reward_inputs else cfg.reward_model or str(run.pm_model)
    ppath, rows = load_prompts(cfg.prompts, cfg.limit)
    train_rows, eval_rows = split_prompts(rows, cfg.eval_fraction, cfg.seed)
    inputs = {"prompts": digest(ppath), **(reward_inputs or {"reward_model": model_identity(
        pm_path)}), "policy": model_identity(cfg.model.name)}
    fingerprint = sha256_json({"stage": STAGE, "config": results_config(cfg),
                               "inputs": inputs})
    done = reuse_or_reset(run.rl, fingerprint, log, count_key="steps")
    if done:
        return done
    manifest = {"stage": STAGE, "status": "running", "fingerprint": fingerprint,
                "config": results_config(cfg), "inputs": inputs,
                "train_prompts": len(train_rows), "eval_prompts": len(eval_rows),
                "processes": world_size(), "versions": package_versions()}
    if is_main_process():
        run.rl.path.mkdir(parents=True, exist_ok=True)
        run.rl.write_manifest(manifest)
    torch.manual_seed(cfg.seed)
    policy, tok, value = load_models(cfg, pm_path)
    trainer = PPOTrainer(cfg, policy, tok, value, reward_fn or pm_reward(pm_path),
                         logging_dir=run.rl.path / "tensorboard")
    board = trackers(trainer.acc, cfg, run)
    t0 = time.time()
    evals = iterate(cfg, trainer, run, [conversation(r, None) for r in train_rows],
                    [conversation(r, None) for r in eval_rows], board, log)
    manifest.update(status="complete", steps=cfg.steps, seconds=time.time() - t0,
                    reward_before=evals[0]["reward"], reward_after=evals[-1]["reward"],
                    kl_after=evals[-1]["kl"], output="model")
    for tracker in trainer.acc.trackers:     # flush and close them (not end_training():
        tracker.finish()                     # it would end the process group too)
    if is_main_process():
        model = trainer.policy.merge_and_unload() if cfg.lora else trainer.policy
        save_atomically(model, tok, run.rl.model, {"stage": STAGE, "kind": "ppo"})
        run.rl.write_manifest(manifest)
        checkpoint(run.rl).unlink(missing_ok=True)
    wait_for_everyone()
    return StageResult(STAGE, run.rl.model, cfg.steps, manifest["seconds"], skipped=False)


def checkpoint(stage: StageDir) -> Path:
    return stage.path / "checkpoint.pt"


def iterate(cfg: PPOConfig, trainer: PPOTrainer, run: RunDir, convs: list, held: list,
            board: Callable[[dict, str], None], log: Callable[[str], None]) -> list[dict]:
    """PPO iterations from the last checkpoint to `cfg.steps`; returns the held-out evals.
    Each process takes its share of every global batch."""
    import torch

    stage, main = run.rl, is_main_process()
    ckpt = checkpoint(stage)
    if ckpt.is_file():
        trainer.load_state(torch.load(ckpt, weights_only=False))
        log(f"{STAGE}: resuming after iteration {trainer.step_no}")
    logs = _read_log(stage.path / "log.jsonl", trainer.step_no)
    evals = _read_log(stage.path / "eval.jsonl", trainer.step_no)
    if not evals:
        evals.append(trainer.evaluate(held, cfg.seed + 1))
        board(evals[-1], "eval")
        if main:
            _write_log(stage.path / "eval.jsonl", evals)
    per_process = per_device_batch(cfg.batch_size)
    first = rank() * per_process          # this process's share of each global batch
    while trainer.step_no < cfg.steps:
        k = trainer.step_no
        batch = [convs[(k * cfg.batch_size + i) % len(convs)]
                 for i in range(first, first + per_process)]
        # one seed for all processes: the engine draws a stream per prompt, so a prompt's
        # rollout is the same on 1 process or N
        logs.append(trainer.step(batch, seed=_step_seed(cfg.seed, k)))
        board(logs[-1], "train")
        log(f"{STAGE} step {trainer.step_no}/{cfg.steps}: reward {logs[-1]['reward']:.3f} "
            f"kl {logs[-1]['kl']:.3f}")
        if trainer.step_no % cfg.eval_every == 0 or trainer.step_no == cfg.steps:
            evals.append(trainer.evaluate(held, cfg.seed + 1))
            board(evals[-1], "eval")
            if cfg.snapshots and trainer.step_no < cfg.steps and main:
                save_snapshot(trainer.policy, trainer.tok, cfg, run.rl_snapshots,
                              trainer.step_no)
        if main and (trainer.step_no % cfg.save_every == 0 or trainer.step_no == cfg.steps):
            # logs first, then the checkpoint: a resume trims logs back to the checkpoint
            _write_log(stage.path / "log.jsonl", logs)
            _write_log(stage.path / "eval.jsonl", evals)
            tmp = ckpt.with_suffix(".tmp")
            torch.save(trainer.state(), tmp)
            tmp.replace(ckpt)
    return evals


def save_snapshot(policy, tok, cfg: PPOConfig, snapshots: Path, step: int) -> Path:
    """The policy as of `step`, by rename. A LoRA snapshot holds the adapter and a note
    naming its base by a path relative to itself, so the run folder can move."""
    from constitutional.models import ADAPTER_NOTE, resolve_model

    final = snapshots / f"step-{step:04d}"
    if cfg.lora:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        base = os.path.relpath(Path(resolve_model(cfg.model.name).path).resolve(),
                               final.resolve())
        (tmp / ADAPTER_NOTE).write_text(json.dumps({"base": base, "step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    else:
        save_atomically(policy, tok, final, {"stage": STAGE, "kind": "ppo", "step": step})
    return final


def _step_seed(seed: int, step: int) -> int:
    return random.Random(f"{seed}\x00{step}").getrandbits(62)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r["step"] <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def trackers(acc, cfg: PPOConfig, run: RunDir) -> Callable[[dict, str], None]:
    """A function that logs one row's numbers to the `report_to` trackers through
    accelerate (the main process writes; a no-op without trackers). TensorBoard events land
    in RUN/rl/tensorboard/<run name>/."""
    if not cfg.report_to:
        return lambda row, group: None
    flat = {k: v for k, v in _flat(results_config(cfg)).items()
            if isinstance(v, (int, float, str, bool))}
    acc.init_trackers(cfg.run_name or f"{run.root.name}-{STAGE}", config=flat)

    def write(row: dict, group: str) -> None:
        acc.log({f"{group}/{k}": v for k, v in row.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)},
                step=row["step"])
    return write


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
