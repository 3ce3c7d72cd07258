"""Tracking in every trainer (report_to, run_name) and TRL arguments passed through (issue 18).

SFT, the preference model and DPO run a few steps on a tiny model with TensorBoard on, and
their event files are read back; PPO's (through accelerate's trackers) are read back in
test_distributed.py. `trainer_args` reaches the TRL config and its refusals are one-line errors.
"""

from __future__ import annotations

import pytest
from conftest import write_jsonl
from test_pm import toy_labels
from test_sft import critique_rows

from constitutional.errors import InputError

pytest.importorskip("tensorboard")


def scalars(folder):
    """{tag: [(step, value)]} of every event file under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_sft_pm_and_dpo_write_tensorboard_events_that_match_their_logs(tmp_path, tiny_llama):
    import json

    from constitutional.train.dpo import DPOTrainConfig, run_dpo
    from constitutional.train.pm import PMTrainConfig, run_pm
    from constitutional.train.sft import SFTTrainConfig, run_sft

    common = dict(model={"name": str(tiny_llama)}, precision="fp32", report_to=["tensorboard"],
                  logging_steps=1, max_steps=3, batch_size=4)
    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(8, flagged=()))
    labels = toy_labels(tmp_path / "labels.jsonl", n=16)
    run = tmp_path / "run"
    run_sft(SFTTrainConfig(revisions=str(rev), max_length=64, **common), run, log=lambda m: None)
    run_pm(PMTrainConfig(labels=str(labels), eval_fraction=0.0, **common), run,
           log=lambda m: None)
    run_dpo(DPOTrainConfig(labels=str(labels), max_length=64, **common), run,
            log=lambda m: None)
    for stage in ("sl_model", "pm", "rl"):
        board = scalars(run / stage / "tensorboard")
        history = json.loads((run / stage / "log_history.json").read_text())
        logged = [(h["step"], h["loss"]) for h in history if "loss" in h]
        assert len(logged) == 3, stage
        assert [s for s, _ in board["train/loss"]] == [s for s, _ in logged], stage
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(board["train/loss"], logged))
    assert "train/rewards/margins" in scalars(run / "rl/tensorboard")
    # no tracker asked: no events
    run_sft(SFTTrainConfig(revisions=str(rev), max_length=64,
                           **{**common, "report_to": [], "max_steps": 1}), tmp_path / "quiet",
            log=lambda m: None)
    assert not (tmp_path / "quiet/sl_model/tensorboard").exists()


def test_a_tracker_that_is_not_installed_is_refused_when_the_config_is_read(monkeypatch):
    import importlib.util

    from pydantic import ValidationError

    from constitutional.train.ppo import PPOConfig
    from constitutional.train.sft import SFTTrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    for cls in (SFTTrainConfig, PPOConfig):
        with pytest.raises(ValidationError, match=r"wandb not installed \(pip install wandb\)"):
            cls(report_to=["wandb"])
        with pytest.raises(ValidationError):
            cls(report_to=["no-such-tracker"])
        assert cls(report_to=["tensorboard"]).report_to == ["tensorboard"]


def test_trainer_args_reach_the_trl_config_and_refusals_are_one_line(tmp_path):
    from trl import DPOConfig, SFTConfig

    from constitutional.train.common import trl_config
    from constitutional.train.dpo import DPOTrainConfig
    from constitutional.train.sft import SFTTrainConfig

    stage = tmp_path / "run" / "sl_model"
    cfg = SFTTrainConfig(trainer_args={"weight_decay": 0.1, "lr_scheduler_type": "cosine",
                                       "save_total_limit": 5}, report_to=["tensorboard"])
    args = trl_config(SFTConfig, cfg, stage, output_dir=str(stage / "checkpoints"),
                      learning_rate=cfg.lr(), use_cpu=True)
    assert args.weight_decay == 0.1 and args.lr_scheduler_type.value == "cosine"
    assert args.save_total_limit == 5                   # a default of ours, overridable
    assert args.report_to == ["tensorboard"] and args.run_name == "run-sl_model"
    assert args.learning_rate == cfg.lr() and args.seed == cfg.seed
    refused = [({"learning_rate": 1.0}, "trainer_args.learning_rate: set it as "
                "`learning_rate` instead"),
               ({"output_dir": "x"}, "trainer_args.output_dir: set by the run folder"),
               ({"no_such_arg": 1}, "trainer_args.no_such_arg: not an argument of SFTConfig"),
               ({"lr_scheduler_type": "bogus"}, "trainer_args: SFTConfig refused the "
                "arguments: ")]
    for extra, message in refused:
        bad = SFTTrainConfig(trainer_args=extra)
        with pytest.raises(InputError) as e:
            trl_config(SFTConfig, bad, stage, output_dir="o", learning_rate=bad.lr(),
                       use_cpu=True)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    # a field of one trainer: DPO's beta is set as `beta`
    with pytest.raises(InputError, match="set it as `beta` instead"):
        dpo = DPOTrainConfig(trainer_args={"beta": 0.5})
        trl_config(DPOConfig, dpo, stage, output_dir="o", beta=dpo.beta, use_cpu=True)


def test_trainer_args_change_the_training(tmp_path, tiny_llama):
    """A constant schedule keeps the learning rate that the default linear decay lowers."""
    import json

    from constitutional.train.sft import SFTTrainConfig, run_sft

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(8, flagged=()))
    rates = {}
    for name, extra in (("linear", {}), ("constant", {"lr_scheduler_type": "constant"})):
        cfg = SFTTrainConfig(model={"name": str(tiny_llama)}, revisions=str(rev),
                             precision="fp32", logging_steps=1, max_steps=3, batch_size=4,
                             max_length=64, trainer_args=extra)
        run_sft(cfg, tmp_path / name, log=lambda m: None)
        history = json.loads((tmp_path / name / "sl_model/log_history.json").read_text())
        rates[name] = [h["learning_rate"] for h in history if "learning_rate" in h]
    assert len(set(rates["constant"])) == 1 and rates["linear"][-1] < rates["linear"][0]
