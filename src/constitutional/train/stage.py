"""A training stage in a run folder: fingerprint, manifest, resume, final model by rename.

Shared by SL-CAI fine-tuning and the preference model. The stage folder holds train.jsonl
(the exact rows trained on), checkpoints/ (Trainer checkpoints: a restarted run with the same
config and data continues from the latest), log_history.json, and model/ (an ordinary Hugging
Face folder that appears by atomic rename, so its presence means the stage finished).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from constitutional.artifacts import StageDir, StageResult, package_versions
from constitutional.jsonio import sha256_json, write_json_atomic, write_jsonl_atomic

# train(rows, stage_dir, final_dir, log) -> the Trainer's log history
TrainFn = Callable[[list[dict], Path, Path, Callable[[str], None]], list[dict]]


def run_training_stage(name: str, config: dict, inputs: dict[str, str],
                       build_rows: Callable[[], list[dict]], train: TrainFn,
                       run_dir: str | Path, log: Callable[[str], None] = print,
                       summarize: Callable[[list[dict]], dict] | None = None) -> StageResult:
    stage = StageDir(run_dir, name)
    final = stage.path / "model"
    fingerprint = sha256_json({"stage": name, "config": config, "inputs": inputs})
    done = reuse_or_reset(stage, fingerprint, log)
    if done:
        return done
    rows = build_rows()
    stage.path.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(stage.path / "train.jsonl", rows)
    manifest = {"stage": name, "status": "running", "fingerprint": fingerprint,
                "config": config, "inputs": inputs, "rows": len(rows),
                "versions": package_versions()}
    stage.write_manifest(manifest)
    t0 = time.time()
    history = train(rows, stage.path, final, log)
    write_json_atomic(stage.path / "log_history.json", history)
    manifest.update(status="complete", seconds=time.time() - t0, output="model",
                    final_loss=next((h["train_loss"] for h in reversed(history)
                                     if "train_loss" in h), None),
                    **(summarize(history) if summarize else {}))
    stage.write_manifest(manifest)
    return StageResult(name, final, len(rows), manifest["seconds"], skipped=False)


def reuse_or_reset(stage: StageDir, fingerprint: str, log: Callable[[str], None],
                   count_key: str = "rows") -> StageResult | None:
    """The finished result if the stage completed with this fingerprint; otherwise None,
    after clearing a stage left by another config or other inputs (a stage with the same
    fingerprint is kept, so its checkpoints resume)."""
    final = stage.path / "model"
    m = stage.manifest()
    if m and m.get("fingerprint") == fingerprint and m.get("status") == "complete" and \
            final.is_dir():
        return StageResult(stage.name, final, m.get(count_key, 0), 0.0, skipped=True)
    if m and m.get("fingerprint") != fingerprint:
        log(f"{stage.name}: config or inputs changed since the last run; training from scratch")
        shutil.rmtree(stage.path)
    return None


def train_and_save(trainer, checkpoints: Path, final: Path, lora: bool, note: dict,
                   log: Callable[[str], None]) -> list[dict]:
    """Run a TRL/Trainer trainer (from its latest checkpoint if there is one), merge LoRA
    adapters, save the model to `final` by rename; return the log history."""
    resume = any(checkpoints.glob("checkpoint-*"))
    if resume:
        log(f"{note.get('stage', 'train')}: resuming from the latest checkpoint in {checkpoints}")
    trainer.train(resume_from_checkpoint=resume or None)
    model = trainer.model.merge_and_unload() if lora else trainer.model
    save_atomically(model, trainer.processing_class, final, {**note, "lora_merged": lora})
    return trainer.state.log_history


def save_atomically(model, tok, final: Path, note: dict) -> None:
    """Save a model folder (safetensors + tokenizer) to `final` by rename."""
    import json

    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "cai_train.json").write_text(json.dumps(note))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
