"""SL-CAI data, fine-tuning on tiny random models, export, and the one-command pipeline."""

from __future__ import annotations

import json

import pytest

from constitutional.artifacts import read_output
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file
from constitutional.train.sft_data import helpful_examples, mix, revision_examples
from conftest import run_cai, write_jsonl


def critique_rows(n=6, flagged=(1,)):
    return [{"id": f"q{i}", "sample": 0, "prompt": f"Bad question {i}?",
             "messages": [{"role": "user", "content": f"Bad question {i}?"}],
             "initial_response": f"Harmful answer {i}.", "mode": "critique",
             "rounds": [{"round": 1, "principle": "harm", "critique_request": "Find harm.",
                         "critique": "It is harmful.", "revision_request": "Fix it.",
                         "revision": f"A safe answer {i}.", "critique_flags": [],
                         "revision_flags": ["empty"] if i in flagged else []}],
             "revision": f"A safe answer {i}.", "flags": ["empty"] if i in flagged else [],
             "ok": i not in flagged} for i in range(n)]


def test_training_rows_revisions_and_helpful_mix(tmp_path):
    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows())
    rows = revision_examples(rev)
    assert len(rows) == 5 and all(r["source"] == "revision" for r in rows)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Bad question 0?"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "A safe answer 0."}]
    assert len(revision_examples(rev, include_flagged=True)) == 6
    helpful = write_jsonl(tmp_path / "help.jsonl", [
        {"id": f"h{i}", "sample": j, "prompt": f"Help {i}", "completion": f"Sure {i}.{j}"}
        for i in range(4) for j in (0, 1)] + [{"id": "h9", "sample": 0, "prompt": "x",
                                               "completion": "  "}])
    h = helpful_examples(helpful)
    assert len(h) == 8        # the empty answer is left out
    mixed = mix(rows, h, 0.4, seed=0)
    assert sum(r["source"] == "helpful" for r in mixed) == 2 and len(mixed) == 7
    assert mixed == mix(rows, h, 0.4, seed=0) and mixed != mix(rows, h, 0.4, seed=1)
    assert sum(r["source"] == "helpful" for r in mix(rows, h, 5.0, 0)) == 8   # all there are
    bad = write_jsonl(tmp_path / "bad.jsonl", [critique_rows(1)[0], {"id": "x"}])
    with pytest.raises(InputError) as e:
        revision_examples(bad)
    assert e.value.line == 2 and e.value.field == "messages"


def sft_config(model, revisions, **kw):
    from constitutional.train.sft import SFTTrainConfig

    base = dict(model={"name": str(model)}, revisions=str(revisions), precision="fp32",
                batch_size=4, logging_steps=1, save_steps=2, max_length=128)
    return SFTTrainConfig(**{**base, **kw})


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def losses(run):
    return [h["loss"] for h in json.loads((run / "sl_model/log_history.json").read_text())
            if "loss" in h]


@pytest.mark.parametrize("lora", [False, True])
def test_sft_changes_the_weights_and_lowers_the_loss(tmp_path, tiny_llama, lora):
    import torch

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(8, flagged=()))
    cfg = sft_config(tiny_llama, rev, lora=lora, epochs=6,
                     learning_rate=3e-3 if not lora else 2e-2)
    from constitutional.train.sft import run_sft

    result = run_sft(cfg, tmp_path / "run", log=lambda m: None)
    before, after = weights(tiny_llama), weights(result.output)
    assert set(before) == set(after)          # adapters merged: a plain model, same tensors
    changed = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    if lora:   # only the adapted linear layers move
        assert changed and all("proj" in k for k in changed)
    else:
        assert len(changed) == len(before)
    ls = losses(tmp_path / "run")
    assert len(ls) == 12 and sum(ls[-3:]) / 3 < 0.8 * sum(ls[:3]) / 3
    # the result is an ordinary model folder every command accepts
    from conftest import load_backend_fp32
    from constitutional.backends.base import Sampling

    out = load_backend_fp32(result.output).generate(["Bad question 1?"],
                                                    Sampling(temperature=0, max_tokens=4))
    assert out[0][0].tokens > 0


def test_loss_is_on_the_assistant_reply_only(tmp_path, tiny_llama):
    from constitutional.train.sft import make_trainer

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(2, flagged=()))
    cfg = sft_config(tiny_llama, rev)
    trainer = make_trainer(cfg, revision_examples(rev), tmp_path / "ck")
    row = trainer.train_dataset[0]
    tok = trainer.processing_class
    ids, labels = row["input_ids"], row["labels"]
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert trained.startswith("A safe answer") and "Bad question" not in trained
    assert "Bad question" in tok.decode(ids)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, tiny_llama, monkeypatch):
    import torch
    import transformers

    from constitutional.train import sft

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(8, flagged=()))
    cfg = sft_config(tiny_llama, rev, lora=False, max_steps=6, learning_rate=1e-3)
    whole = sft.run_sft(cfg, tmp_path / "a", log=lambda m: None)

    class Stop(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt
    real = sft.make_trainer

    def interrupted(*a, **kw):
        t = real(*a, **kw)
        t.add_callback(Stop())
        return t
    monkeypatch.setattr(sft, "make_trainer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sft.run_sft(cfg, tmp_path / "b", log=lambda m: None)
    assert not (tmp_path / "b/sl_model/model").exists()
    assert (tmp_path / "b/sl_model/checkpoints/checkpoint-2").is_dir()
    monkeypatch.setattr(sft, "make_trainer", real)
    said = []
    resumed = sft.run_sft(cfg, tmp_path / "b", log=said.append)
    assert any("resuming" in m for m in said)
    a, b = weights(whole.output), weights(resumed.output)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    again = sft.run_sft(cfg, tmp_path / "b", log=said.append)
    assert again.skipped


def test_export_both_shapes_with_a_card(tmp_path):
    from constitutional.backends.fake import FakeBackend
    from constitutional.export import export_revisions
    from constitutional.stages.critique import CritiqueConfig, run_critique

    p = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad {i}?"}
                                           for i in range(3)])
    fake = FakeBackend(reply=lambda prompt, j: "" if len(prompt) == 5 and
                       prompt[0]["content"] == "Bad 2?" else f"text {len(prompt)}")
    run_critique(CritiqueConfig(prompts=str(p), few_shot=0), tmp_path / "run", lambda: fake,
                 log=lambda m: None)
    counts = export_revisions(tmp_path / "run")
    out = tmp_path / "run/export"
    assert counts["rows"] == 3 and counts["exported"] == 2 and counts["flags"] == {"empty": 1}
    sft = read_output(out / "sft.jsonl")
    assert sft[0]["messages"] == [{"role": "user", "content": "Bad 0?"},
                                  {"role": "assistant", "content": "text 5"}]
    pairs = read_output(out / "pairs.jsonl")
    assert pairs[0]["chosen"][-1]["content"] == "text 5"
    assert pairs[0]["rejected"][-1]["content"] == "text 1"
    assert pairs[0]["critic_response"] == "text 3" and pairs[0]["init_response"] == "text 1"
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "pairs.parquet"))["train"]
    assert ds.num_rows == 2 and ds[1]["prompt"] == [{"role": "user", "content": "Bad 1?"}]
    card = (out / "README.md").read_text()
    assert "harmless v1" in card and "`smollm2-135m`" in card and "flagged rows left out" in card
    assert "data_files: pairs.parquet" in card
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["rows"] == {"sft": 2, "pairs": 2}
    assert m["inputs"]["critique"] == sha256_file(tmp_path / "run/critique/output.jsonl")
    assert set(m["files"]) == {"sft.jsonl", "pairs.jsonl", "sft.parquet", "pairs.parquet",
                               "README.md"}
    assert m["files"]["sft.jsonl"] == sha256_file(out / "sft.jsonl")


def test_sl_cai_pipeline_end_to_end_and_resumed(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad question {i}?"}
                                       for i in range(4)])
    args = ["sl-cai", "--out", "run", "--prompts", "p.jsonl", "--dry-run",
            f"sft.model.name={tiny_llama}", "sft.precision=fp32", "sft.batch_size=4",
            "helpful.limit=2", "show=2"]
    r = run_cai(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    for stage in ("critique", "helpful", "sl_model", "sl_answers"):
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete"
    assert (run / "export/README.md").is_file() and (run / "sl_model/model").is_dir()
    train = read_output(run / "sl_model/train.jsonl")
    n_rev = sum(t["source"] == "revision" for t in train)
    assert n_rev == sum(r["ok"] for r in read_output(run / "critique/output.jsonl")) > 0
    # helpful answers: 2 prompts x 2 samples available, one per revision wanted
    assert sum(t["source"] == "helpful" for t in train) == min(4, n_rev)
    assert r.stdout.count("SL-CAI model:") >= 2 and "original answer" in r.stdout
    again = run_cai(args, tmp_path)
    assert again.returncode == 0 and "reused" in again.stdout
    # the trained model serves as --model for other commands
    gen = run_cai(["generate", "--model", str(run / "sl_model/model"), "--prompts", "p.jsonl",
                   "--max-tokens", "4", "--out", "gen", "model.dtype=float32"], tmp_path)
    assert gen.returncode == 0, gen.stderr


def test_completion_nll_by_hand():
    import math

    import torch

    from constitutional.train.losses import completion_nll

    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]], dtype=torch.bfloat16)
    targets = torch.tensor([0, 1, -100])
    # row 0: p = 1/2 -> ln 2; row 1: p(1) = 1/(3+1) -> ln 4; row 2 not scored
    loss_sum, n = completion_nll(logits, targets)
    assert n.item() == 2
    assert loss_sum.item() == pytest.approx(math.log(8), abs=2e-2)   # bf16 logits, fp32 math


def test_cpu_completion_loss_equals_trls_fused_head(tmp_path, tiny_llama):
    """Our CPU loss (LM head on completion positions only) is TRL's loss, to float precision."""
    import torch
    from trl import SFTTrainer

    from constitutional.train.sft import make_trainer

    rev = write_jsonl(tmp_path / "rev.jsonl", critique_rows(4, flagged=()))
    cfg = sft_config(tiny_llama, rev, precision="fp32")
    trainer = make_trainer(cfg, revision_examples(rev), tmp_path / "ck")
    assert type(trainer) is not SFTTrainer
    batch = next(iter(trainer.get_train_dataloader()))
    ours = trainer.compute_loss(trainer.model, dict(batch))
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    trl = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    trl.backward()
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5)
    for name, g in g_ours.items():
        torch.testing.assert_close(g, dict(trainer.model.named_parameters())[name].grad,
                                   rtol=1e-4, atol=1e-6)
