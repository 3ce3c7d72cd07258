"""Training under `accelerate launch`: 2 CPU processes over gloo, with the shipped DDP config,
give what one process gives (same global batch, same steps, same losses), and the run folder
is written once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cai, write_jsonl
from test_pipeline import recipe
from test_sft import critique_rows

ROOT = Path(__file__).resolve().parents[1]
DDP = ROOT / "configs/accelerate/ddp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml -m constitutional.cli`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
           "--config_file", str(DDP), "--num_processes", str(processes),
           "--main_process_port", str(free_port()), "-m", "constitutional.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def losses(stage: Path) -> list[float]:
    return [h["loss"] for h in json.loads((stage / "log_history.json").read_text())
            if "loss" in h]


def tensors(model: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


def max_weight_gap(a: Path, b: Path) -> float:
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    return max((ta[k].float() - tb[k].float()).abs().max().item() for k in ta)


@pytest.mark.parametrize("lora", [False, True])
def test_sft_on_two_processes_matches_one(tmp_path, tiny_llama, lora):
    write_jsonl(tmp_path / "rev.jsonl", critique_rows(16, flagged=()))
    args = ["train-sft", "--revisions", "rev.jsonl", "--model", str(tiny_llama),
            "--max-steps", "4", "--batch-size", "4", "logging_steps=1", "save_steps=2",
            "max_length=128"]
    # full: fp32, so the only difference is the order of float sums; LoRA: the default
    # precision (bf16 autocast where the CPU has it) and the adapter merge after gathering
    args += ["--lora", "--lr", "1e-2"] if lora else ["--full", "--lr", "1e-3",
                                                     "precision=fp32"]
    one = run_cai(args + ["--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = launch(args + ["--out", "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = tmp_path / "one/sl_model", tmp_path / "two/sl_model"
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 4       # batch_size is global: 2 x 2 per process, same steps
    tol = 1e-2 if lora else 1e-5
    assert all(abs(x - y) <= tol * abs(x) for x, y in zip(la, lb)), (la, lb)
    assert max_weight_gap(a / "model", b / "model") <= (1e-2 if lora else 1e-5)
    if lora:    # and training did move the merged weights
        assert max_weight_gap(a / "model", tiny_llama) > 1e-2
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "complete"
    assert json.loads((b / "model/cai_train.json").read_text())["lora_merged"] is lora
    assert sorted(p.name for p in b.iterdir()) == ["checkpoints", "log_history.json",
                                                   "manifest.json", "model", "train.jsonl"]
    assert not (b / "model/training_args.bin").exists()
    assert two.stdout.count("SL-CAI model:") == 1          # the main process reports
    again = launch(args + ["--out", "two"], tmp_path)      # a finished stage is reused
    assert again.returncode == 0 and "reused" in again.stdout


def test_pm_and_dpo_stages_of_a_recipe_on_two_processes(tmp_path, tiny_llama):
    args = recipe(tmp_path, tiny_llama, method="dpo")
    r = run_cai(args + ["--out", "one", "--until", "label"], tmp_path)
    assert r.returncode == 0, r.stderr
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    # 16 pairs in batches of 4 for both stages: no partial last batch, which accelerate
    # would even out across processes by repeating pairs (see train/distributed.py)
    tail = ["--from", "pm", "--until", "rl", "rl.dpo.logging_steps=1", "pm.logging_steps=1",
            "pm.eval_fraction=0"]
    r = run_cai(args + ["--out", "one"] + tail, tmp_path)
    assert r.returncode == 0, r.stderr
    r2 = launch(args + ["--out", "two"] + tail, tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    for stage in ("pm", "rl"):
        la, lb = losses(tmp_path / "one" / stage), losses(tmp_path / "two" / stage)
        assert la and len(la) == len(lb), stage
        assert all(abs(x - y) <= 1e-4 * max(abs(x), 1e-3) for x, y in zip(la, lb)), \
            (stage, la, lb)
        assert max_weight_gap(tmp_path / "one" / stage / "model",
                              tmp_path / "two" / stage / "model") <= 1e-4, stage
    from constitutional.train.pm import PreferenceModel

    conv = [[{"role": "user", "content": "Bad question 3?"}]] * 2
    answers = ["A kind answer.", "Go away."]
    sa = PreferenceModel(tmp_path / "one/pm/model").score(conv, answers)
    sb = PreferenceModel(tmp_path / "two/pm/model").score(conv, answers)
    assert all(abs(x - y) < 1e-4 for x, y in zip(sa, sb)), (sa, sb)
    # generation stages are refused under several processes, before anything runs
    bad = launch(args + ["--out", "three", "--until", "label"], tmp_path)
    assert bad.returncode != 0 and bad.stderr.count("runs only pm and rl") == 1, bad.stderr
    assert not (tmp_path / "three/critique").exists()


def test_per_process_batch_split(monkeypatch):
    import torch

    from constitutional.errors import InputError
    from constitutional.train.distributed import per_device_batch, trainer_device_args

    assert per_device_batch(8) == 8
    assert trainer_device_args()["use_cpu"] is (not torch.cuda.is_available())
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert per_device_batch(8) == 2
    assert trainer_device_args()["ddp_find_unused_parameters"] is False
    if not torch.cuda.is_available():
        assert trainer_device_args()["ddp_backend"] == "gloo"
    with pytest.raises(InputError) as e:
        per_device_batch(6, "pm.batch_size")
    assert e.value.field == "pm.batch_size" and "multiple of 4" in str(e.value)
    assert "pm.batch_size 6 does not split over 4" in str(e.value)


def test_ppo_on_two_processes_matches_one(tmp_path, tiny_llama):
    """PPO's own loop under DDP. Rollouts are seeded per prompt, so each process samples
    what one process samples for the same prompts; with one minibatch per epoch two processes
    must then reproduce one process: that checks the gradient averaging, the whole-batch
    advantage whitening, the gathered figures and the held-out evaluation split over the
    processes."""
    args = recipe(tmp_path, tiny_llama, method="ppo")
    r = run_cai(args + ["--out", "one", "--until", "pm"], tmp_path)
    assert r.returncode == 0, r.stderr
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    tail = ["--from", "rl", "--until", "rl", "rl.ppo.mini_batch_size=4"]
    # the 1-process run also writes TensorBoard events (read back below)
    r = run_cai(args + ["--out", "one", "rl.ppo.report_to=[tensorboard]"] + tail, tmp_path)
    assert r.returncode == 0, r.stderr
    r2 = launch(args + ["--out", "two"] + tail, tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]

    def rows(run, name):
        return [json.loads(x) for x in (tmp_path / run / "rl" / name).read_text().splitlines()]
    for name, keys in (("log.jsonl", ("reward", "kl", "entropy", "pg_loss", "value_loss")),
                       ("eval.jsonl", ("reward", "kl"))):
        a, b = rows("one", name), rows("two", name)
        assert [x["step"] for x in a] == [x["step"] for x in b] and len(a) >= 3, name
        for x, y in zip(a, b):
            for k in keys:
                assert abs(x[k] - y[k]) <= 1e-4 * max(1.0, abs(x[k])), (name, k, x, y)
    assert [s["answer"] for s in rows("one", "eval.jsonl")[-1]["samples"]] == \
        [s["answer"] for s in rows("two", "eval.jsonl")[-1]["samples"]]
    one, two = tmp_path / "one/rl/model", tmp_path / "two/rl/model"
    assert max_weight_gap(one, two) <= 1e-5
    assert max_weight_gap(two, tmp_path / "two/sl_model/model") > 1e-4   # it did train
    m = json.loads((tmp_path / "two/rl/manifest.json").read_text())
    assert m["status"] == "complete" and m["processes"] == 2
    assert (tmp_path / "two/rl/snapshots/step-0002").is_dir()
    assert not (tmp_path / "two/rl/checkpoint.pt").exists()
    assert r2.stdout.count("RL (PPO):") == 1
    again = launch(args + ["--out", "two"] + tail, tmp_path)
    assert again.returncode == 0 and "reused" in again.stdout, again.stderr[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # accelerate's TensorBoard tracker: RUN/rl/tensorboard/<run name>/
    board = EventAccumulator(str(tmp_path / "one/rl/tensorboard/one-rl"))
    board.Reload()
    assert [(e.step, round(e.value, 5)) for e in board.Scalars("train/reward")] == \
        [(x["step"], round(x["reward"], 5)) for x in rows("one", "log.jsonl")]
    assert [e.step for e in board.Scalars("eval/kl")] == [0, 2, 4]
    assert {"train/kl", "train/entropy", "train/clip_frac", "train/value_loss"} <= \
        set(board.Tags()["scalars"])
    assert not (tmp_path / "two/rl/tensorboard").exists()
