"""A training stage in a run folder: fingerprint, manifest, resume, final model by rename.

Shared by SL-CAI fine-tuning and the preference model. The stage folder holds train.jsonl
(the exact rows trained on), checkpoints/ (Trainer checkpoints: a restarted run with the same
config and data continues from the latest), log_history.json, and model/ (an ordinary Hugging
Face folder that appears by atomic rename, so its presence means the stage finished).

Under `accelerate launch` every process runs the stage; the main process alone clears,
writes and saves, and the others wait for it at barriers (see train/distributed.py).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from constitutional.artifacts import StageDir, StageResult, package_versions
from constitutional.jsonio import sha256_json, write_json_atomic, write_jsonl_atomic
from constitutional.train.distributed import is_main_process, wait_for_everyone, world_size

# train(rows, stage, log) -> the Trainer's log history; it writes stage.model at the end
TrainFn = Callable[[list[dict], StageDir, Callable[[str], None]], list[dict]]


def run_training_stage(stage: StageDir, config: dict, inputs: dict[str, str],
                       build_rows: Callable[[], list[dict]], train: TrainFn,
                       log: Callable[[str], None] = print,
                       summarize: Callable[[list[dict]], dict] | None = None) -> StageResult:
    """`stage`: the folder the run folder (RunDir) gives this training step."""
    name, final = stage.name, stage.model
    fingerprint = sha256_json({"stage": name, "config": config, "inputs": inputs})
    done = reuse_or_reset(stage, fingerprint, log)
    if done:
        return done
    rows = build_rows()                 # deterministic: every process builds the same rows
    manifest = {"stage": name, "status": "running", "fingerprint": fingerprint,
                "config": config, "inputs": inputs, "rows": len(rows),
                "processes": world_size(), "versions": package_versions()}
    if is_main_process():
        stage.path.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(stage.path / "train.jsonl", rows)
        stage.write_manifest(manifest)
    t0 = time.time()
    history = train(rows, stage, log)
    manifest.update(status="complete", seconds=time.time() - t0, output="model",
                    final_loss=next((h["train_loss"] for h in reversed(history)
                                     if "train_loss" in h), None),
                    **(summarize(history) if summarize else {}))
    if is_main_process():
        write_json_atomic(stage.path / "log_history.json", history)
        stage.write_manifest(manifest)
    wait_for_everyone()
    return StageResult(name, final, len(rows), manifest["seconds"], skipped=False)


def finished(stage: StageDir, fingerprint: str, count_key: str = "rows") -> StageResult | None:
    """The stage's result if it completed with this fingerprint and its model is there."""
    if stage.is_complete(fingerprint, result=stage.model):
        m = stage.manifest() or {}
        return StageResult(stage.name, stage.model, m.get(count_key, 0), 0.0, skipped=True)
    return None


def reuse_or_reset(stage: StageDir, fingerprint: str, log: Callable[[str], None],
                   count_key: str = "rows") -> StageResult | None:
    """The finished result if the stage completed with this fingerprint; otherwise None,
    after clearing a stage left by another config or other inputs (a stage with the same
    fingerprint is kept, so its checkpoints resume). Under several processes the main one
    clears and the others wait, then all see the same folder."""
    if is_main_process():
        stage.reuse_or_reset(fingerprint, log, result=stage.model)
    wait_for_everyone()
    return finished(stage, fingerprint, count_key)


def train_and_save(trainer, checkpoints: Path, final: Path, lora: bool, note: dict,
                   log: Callable[[str], None]) -> list[dict]:
    """Run a TRL/Trainer trainer (from its latest checkpoint if there is one), merge LoRA
    adapters, save the model to `final` by rename; return the log history."""
    if is_main_process():
        set_aside_partial_checkpoints(checkpoints, log)
    wait_for_everyone()
    resume = any(checkpoints.glob("checkpoint-*"))
    if resume:
        log(f"{note.get('stage', 'train')}: resuming from the latest checkpoint in {checkpoints}")
    trainer.train(resume_from_checkpoint=resume or None)
    note = {**note, "lora_merged": lora}
    if world_size() > 1:
        save_from_processes(trainer, final, lora, note)
    else:
        model = trainer.model.merge_and_unload() if lora else trainer.model
        save_atomically(model, trainer.processing_class, final, note)
    return trainer.state.log_history


# What a Trainer checkpoint must hold for a resume to read it. Transformers writes the weights,
# the optimizer, scheduler and RNG states, then trainer_state.json last, not atomically.
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json",
           "pytorch_model.bin")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it is complete)."""
    import json

    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        step = json.loads(state.read_text()).get("global_step")
    except ValueError:
        return "trainer_state.json is cut short"
    if f"checkpoint-{step}" != folder.name:
        return f"trainer_state.json says step {step}"
    if not any((folder / w).is_file() for w in WEIGHTS) and \
            not any(folder.glob("global_step*")):          # DeepSpeed keeps its own layout
        return "no weights"
    return None


def set_aside_partial_checkpoints(checkpoints: Path, log: Callable[[str], None]) -> None:
    """Rename every checkpoint a kill left half-written to partial-checkpoint-N (which the
    Trainer does not look at), so the run resumes from the last complete one, or from the
    start when there is none."""
    for folder in sorted(checkpoints.glob("checkpoint-*")):
        problem = checkpoint_problem(folder)
        if problem is None:
            continue
        aside = folder.with_name("partial-" + folder.name)
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        log(f"{folder}: incomplete ({problem}), probably cut by a kill; set aside as "
            f"{aside.name}")


def save_from_processes(trainer, final: Path, lora: bool, note: dict) -> None:
    """Save a model trained by several processes. Trainer.save_model is collective: it
    gathers DDP, FSDP or DeepSpeed ZeRO-3 weights into one folder on the main process (for
    LoRA, the adapters); the main process then merges adapters into their base and renames
    the folder into place."""
    import json

    gathered = final.with_name(final.name + ".gathered")
    if is_main_process():
        shutil.rmtree(gathered, ignore_errors=True)
    wait_for_everyone()
    trainer.save_model(str(gathered))
    if is_main_process():
        (gathered / "training_args.bin").unlink(missing_ok=True)   # a pickle; not for users
        if lora:
            merged = merge_saved_adapters(gathered, trainer.model)
            save_atomically(merged, trainer.processing_class, final, note)
            shutil.rmtree(gathered)
        else:
            (gathered / "cai_train.json").write_text(json.dumps(note))
            shutil.rmtree(final, ignore_errors=True)
            gathered.rename(final)
    wait_for_everyone()


def merge_saved_adapters(folder: Path, trained):
    """Load the base named in a saved LoRA adapter (in the dtype it was trained in), apply the
    adapter, merge it in. The trained model's pad_token_id is kept (the preference model sets
    it on its base, and batched scoring needs it)."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftConfig

    extra = {"dtype": trained.get_base_model().dtype}
    if PeftConfig.from_pretrained(str(folder)).task_type == "SEQ_CLS":
        cls, extra["num_labels"] = AutoPeftModelForSequenceClassification, \
            trained.config.num_labels
    else:
        cls = AutoPeftModelForCausalLM
    merged = cls.from_pretrained(str(folder), **extra).merge_and_unload()
    merged.config.pad_token_id = trained.config.pad_token_id
    return merged


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
