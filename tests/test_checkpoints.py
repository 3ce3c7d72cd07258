"""Checkpoints that survive a kill at any moment (issue 19): a checkpoint a kill left half
written is set aside with one line, and the restart ends with the weights of an unbroken run.

The kill is made where it hurts: the run stops after its second checkpoint, and the test then
breaks that checkpoint the way a kill while saving leaves it (trainer_state.json, written last,
missing or cut short), as the kill drill found in `pm/checkpoints/checkpoint-1/`.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import write_jsonl
from test_pm import toy_labels
from test_sft import critique_rows, weights


class StopAt(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def sft_stage(tmp_path, tiny_llama):
    from constitutional.train import sft

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(8, flagged=()))
    cfg = sft.SFTTrainConfig(model={"name": str(tiny_llama)}, revisions=str(rev),
                             precision="fp32", batch_size=4, logging_steps=1, save_steps=2,
                             max_length=128, lora=False, max_steps=6, learning_rate=1e-3)
    return sft, "make_trainer", lambda run, log: sft.run_sft(cfg, run, log=log), "sl_model"


def pm_stage(tmp_path, tiny_llama):
    from constitutional.train import pm

    labels = toy_labels(tmp_path / "labels.jsonl", n=32)
    cfg = pm.PMTrainConfig(model={"name": str(tiny_llama)}, labels=str(labels), max_steps=6,
                           learning_rate=2e-3, batch_size=4, eval_fraction=0.0,
                           precision="fp32", logging_steps=1, save_steps=2)
    return pm, "make_trainer", lambda run, log: pm.run_pm(cfg, run, log=log), "pm"


@pytest.mark.parametrize("stage", [sft_stage, pm_stage], ids=["sft", "pm"])
@pytest.mark.parametrize("damage", ["no trainer_state.json", "trainer_state.json cut short"])
def test_a_checkpoint_cut_by_a_kill_is_set_aside_and_the_run_resumes(tmp_path, tiny_llama,
                                                                     monkeypatch, stage, damage):
    module, attr, run, folder = stage(tmp_path, tiny_llama)
    whole = run(tmp_path / "a", lambda m: None)
    real = getattr(module, attr)

    def interrupted(*a, **kw):
        t = real(*a, **kw)
        t.add_callback(StopAt(5))            # after checkpoint-2 and checkpoint-4
        return t
    monkeypatch.setattr(module, attr, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", lambda m: None)
    monkeypatch.setattr(module, attr, real)
    ckpts = tmp_path / "b" / folder / "checkpoints"
    state = ckpts / "checkpoint-4" / "trainer_state.json"
    if damage == "no trainer_state.json":
        state.unlink()
    else:
        state.write_text(state.read_text()[:40])
    said = []
    resumed = run(tmp_path / "b", said.append)
    notes = [m for m in said if "set aside" in m]
    assert len(notes) == 1 and "checkpoint-4: incomplete" in notes[0]
    assert (ckpts / "partial-checkpoint-4").is_dir()
    assert any("resuming" in m for m in said)
    a, b = weights(whole.output), weights(resumed.output)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    m = json.loads((tmp_path / "b" / folder / "manifest.json").read_text())
    assert m["status"] == "complete"


def test_checkpoint_problems_are_named(tmp_path):
    from constitutional.train.stage import checkpoint_problem

    c = tmp_path / "checkpoint-3"
    c.mkdir()
    assert checkpoint_problem(c) == "no trainer_state.json"
    (c / "trainer_state.json").write_text('{"global_step": 3')
    assert checkpoint_problem(c) == "trainer_state.json is cut short"
    (c / "trainer_state.json").write_text('{"global_step": 2}')
    assert checkpoint_problem(c) == "trainer_state.json says step 2"
    (c / "trainer_state.json").write_text('{"global_step": 3}')
    assert checkpoint_problem(c) == "no weights"
    (c / "model.safetensors").write_bytes(b"x")
    assert checkpoint_problem(c) is None
