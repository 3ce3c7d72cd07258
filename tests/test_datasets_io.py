"""Data in and out the way Hugging Face users bring and expect it (issue 18).

Sources other than JSONL (parquet, json arrays, `save_to_disk` folders), the preference shapes
TRL uses, the CAI paper's multiple-choice rows, and round trips: what `cai export` writes is
read back by `cai label`, `cai train-sft` and `cai train-pm`, and TRL's DPOTrainer trains on the
labelled-pairs export as it is.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cai, write_jsonl

from constitutional.artifacts import read_output
from constitutional.comparisons import load_comparisons
from constitutional.datasource import digest, read_rows, source, to_dataset
from constitutional.errors import InputError
from constitutional.prompts_io import load_prompts

datasets = pytest.importorskip("datasets")

PROMPT_ROWS = [{"id": "a", "prompt": "How do I pick a lock?"},
               {"id": "b", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hi"}]},
               {"id": "c", "prompt": "Third"}]
TRL_PROMPTS = [{"prompt": [{"role": "user", "content": "As TRL messages"}],
                "completion": [{"role": "assistant", "content": "ignored"}]},
               {"messages": [{"role": "user", "content": "An SFT row"},
                             {"role": "assistant", "content": "its answer"}]}]


def as_sources(tmp_path, rows, name):
    """The same rows as a parquet file, a JSON array, a saved dataset folder and JSONL."""
    ds = to_dataset(rows)
    ds.to_parquet(str(tmp_path / f"{name}.parquet"))
    ds.save_to_disk(str(tmp_path / f"{name}_saved"))
    (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / f"{name}.jsonl", rows)
    return [tmp_path / f"{name}.{x}" for x in ("parquet", "json", "jsonl")] + \
        [tmp_path / f"{name}_saved"]


def test_prompts_from_parquet_json_and_a_saved_dataset_are_the_same_rows(tmp_path):
    srcs = as_sources(tmp_path, PROMPT_ROWS, "p")
    kinds = [source(s).kind for s in srcs]
    assert kinds == ["file", "json-array", "jsonl", "disk"]
    seen = []
    for s in srcs:
        _, rows = load_prompts(str(s))
        seen.append([(r.id, r.messages) for r in rows])
    assert all(x == seen[0] for x in seen)
    assert seen[0][1][1][0]["content"] == "Be brief." and seen[0][2][1][0]["content"] == "Third"
    # a parquet table unites the shapes: a column a row lacks is None there and left out
    assert [sorted(r) for _, r in read_rows(srcs[0])][0] == ["id", "prompt"]
    # TRL's conversational prompt and an SFT chat read as the prompt they answer
    _, rows = load_prompts(str(write_jsonl(tmp_path / "trl.jsonl", TRL_PROMPTS)))
    assert [r.messages for r in rows] == [[{"role": "user", "content": "As TRL messages"}],
                                          [{"role": "user", "content": "An SFT row"}]]
    # fingerprints follow the content
    assert digest(srcs[0]) == digest(srcs[0]) and digest(srcs[3]) != digest(srcs[0])


def test_a_bad_row_in_a_dataset_names_its_row_and_field(tmp_path):
    rows = [{"id": "a", "prompt": "fine"}, {"id": "b", "prompt": "  "}]
    for s in as_sources(tmp_path, rows, "bad"):
        with pytest.raises(InputError) as e:
            load_prompts(str(s))
        assert (e.value.line, e.value.field) == (2, "prompt"), s
        assert str(e.value).startswith(f"{s}:2: prompt: empty prompt")


def test_sources_by_name_splits_and_missing_ones(tmp_path):
    ds = datasets.DatasetDict({"train": to_dataset(PROMPT_ROWS[:1]),
                               "test": to_dataset(PROMPT_ROWS[:2])})
    ds.save_to_disk(str(tmp_path / "dd"))
    assert len(load_prompts(str(tmp_path / "dd"))[1]) == 1           # train by default
    assert len(load_prompts(f"{tmp_path / 'dd'}:test")[1]) == 2
    with pytest.raises(InputError, match=r"no split 'dev' \(have: train, test\)"):
        load_prompts(f"{tmp_path / 'dd'}:dev")
    hub = source("Anthropic/hh-rlhf:harmless-base:test")
    assert (hub.kind, hub.config, hub.split) == ("hub", "harmless-base", "test")
    with pytest.raises(InputError, match="file not found"):
        source(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="file not found"):
        source("data/missing.parquet")


def test_an_offline_hub_id_is_a_one_line_error(tmp_path):
    r = run_cai(["generate", "--prompts", "someone/no-such-dataset", "--out", "run",
                 "--dry-run"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "someone/no-such-dataset: cannot load a dataset from the hub" in r.stderr
    assert "Traceback" not in r.stderr


TURN = [{"role": "user", "content": "Is the sky blue?"}]
PREFERENCE_SHAPES = {
    "trl standard": {"prompt": "Is the sky blue?", "chosen": "Yes.", "rejected": "No."},
    "trl conversational": {"prompt": TURN, "chosen": [{"role": "assistant", "content": "Yes."}],
                           "rejected": [{"role": "assistant", "content": "No."}]},
    "trl implicit prompt": {"chosen": TURN + [{"role": "assistant", "content": "Yes."}],
                            "rejected": TURN + [{"role": "assistant", "content": "No."}]},
    "open recipe (text prompt beside chats)": {
        "prompt": "Is the sky blue?", "chosen": TURN + [{"role": "assistant", "content": "Yes."}],
        "rejected": TURN + [{"role": "assistant", "content": "No."}]},
    "hh transcripts": {"chosen": "\n\nHuman: Is the sky blue?\n\nAssistant: Yes.",
                       "rejected": "\n\nHuman: Is the sky blue?\n\nAssistant: No."},
    "hhh": {"prompt": "Is the sky blue?", "better": "Yes.", "worse": "No."},
}


@pytest.mark.parametrize("shape", PREFERENCE_SHAPES)
def test_every_preference_shape_reads_as_the_same_comparison(tmp_path, shape):
    [c], _ = load_comparisons(write_jsonl(tmp_path / "c.jsonl", [PREFERENCE_SHAPES[shape]]))
    assert (c.conversation, c.a, c.b, c.better) == ((("user", "Is the sky blue?"),), "Yes.",
                                                    "No.", 0)


@pytest.mark.parametrize("row, field, what", [
    ({"prompt": TURN, "chosen": [{"role": "user", "content": "x"}], "rejected": "No."},
     "chosen", "one non-empty assistant message"),
    ({"chosen": TURN + [{"role": "assistant", "content": "Yes."}],
      "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "No"}]},
     "rejected", "differ before the final reply"),
    ({"chosen": [{"role": "assistant", "content": "x"}], "rejected": TURN}, "chosen",
     "ending with a non-empty assistant reply"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "prompt[0]",
     "{role, content}"),
])
def test_bad_preference_rows_name_line_and_field(tmp_path, row, field, what):
    with pytest.raises(InputError) as e:
        load_comparisons(write_jsonl(tmp_path / "c.jsonl", [PREFERENCE_SHAPES["hhh"], row]))
    assert (e.value.line, e.value.field) == (2, field) and what in str(e.value)


def test_comparisons_from_a_parquet_file_and_a_saved_dataset(tmp_path):
    rows = [PREFERENCE_SHAPES["trl conversational"], PREFERENCE_SHAPES["trl conversational"]]
    for s in as_sources(tmp_path, rows, "c"):
        pairs, _ = load_comparisons(s)
        assert [p.a for p in pairs] == ["Yes.", "Yes."]


def test_mc_reads_the_papers_released_rows_any_correct_choice_counts(tmp_path):
    from constitutional.backends.fake import FakeBackend
    from constitutional.evals.multiple_choice import load_mc, score, summarize

    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "\n\nHuman: Best way to calm down?\n\nAssistant:",
         "corrects": ["Breathe slowly.", "Take a walk."], "incorrects": ["Shout at someone."]},
        {"prompt": "Capital of France?", "corrects": ["Paris"],
         "incorrects": ["Lyon", "Rome"]}])
    items = load_mc(path)
    assert items[0].choices == ("Breathe slowly.", "Take a walk.", "Shout at someone.")
    assert items[0].right == (0, 1) and items[1].right == (0,)
    assert items[0].prompt.endswith("Human: Best way to calm down?\n\nAssistant:")
    assert items[1].prompt == "Q: Capital of France?\nA:"
    # the second correct answer wins the first question, an incorrect one the second
    wins = {" Take a walk.": 0.0, " Rome": 0.0}
    fake = FakeBackend(scores=lambda p, opts: [wins.get(o, -5.0) for o in opts])
    rows = score(fake, items)
    assert [r["pred"] for r in rows] == [1, 2]
    s = summarize(rows)
    assert s["accuracy"] == 0.5 and s["chance"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(InputError) as e:
        load_mc(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "corrects": ["a"],
                                                      "incorrects": []}]))
    assert (e.value.line, e.value.field) == (1, "incorrects")


# -- round trips ---------------------------------------------------------------------------

def labelled_run(tmp_path):
    """A run folder with finished critique and label stages (fake backends), exported."""
    from constitutional.backends.fake import FakeBackend
    from constitutional.export import export_run
    from constitutional.labeling import LabelConfig
    from constitutional.stages.critique import CritiqueConfig, run_critique
    from constitutional.stages.label import run_label

    run = tmp_path / "run"
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad {i}?"}
                                           for i in range(4)])
    run_critique(CritiqueConfig(prompts=str(p), few_shot=0), run, lambda: FakeBackend(),
                 log=lambda m: None)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"id": f"p{i}", "prompt": f"question {i}", "response_a": f"kind answer {i}",
         "response_b": f"rude answer {i}"} for i in range(6)])
    # the fake feedback model prefers whichever option shows the kind answer
    def prefer_kind(prompt, options):
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        a_kind = text.index("kind answer") < text.index("rude answer")
        return [0.0, -2.0] if a_kind else [-2.0, 0.0]
    run_label(LabelConfig(pairs=str(pairs), principles=2), run,
              lambda: FakeBackend(scores=prefer_kind), log=lambda m: None)
    counts = export_run(run, save_to_disk=True)
    return run, counts


def test_export_writes_three_trl_shaped_datasets_with_a_card(tmp_path):
    run, counts = labelled_run(tmp_path)
    out = run / "export"
    assert counts["label"]["pairs"] == 6 and counts["critique"]["rows"] == 4
    lab = read_output(out / "labelled.jsonl")
    assert all(r["chosen"][0]["content"].startswith("kind") for r in lab)
    assert all(r["label"] > 0.5 and r["prompt"][-1]["role"] == "user" for r in lab)
    assert lab[0]["votes"] and lab[0]["principles"] and lab[0]["method"].startswith("plain K=2")
    pairs = read_output(out / "pairs.jsonl")
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Bad 0?"}]
    assert pairs[0]["chosen"][0]["role"] == "assistant" and "init_response" in pairs[0]
    for name in ("sft", "pairs", "labelled"):
        parquet = datasets.load_dataset("parquet", data_files=str(out / f"{name}.parquet"))
        saved = datasets.load_from_disk(str(out / name))
        assert parquet["train"].num_rows == saved.num_rows == len(read_output(
            out / f"{name}.jsonl"))
    card = (out / "README.md").read_text()
    assert "config_name: labelled\n  data_files: labelled.parquet" in card
    assert "**feedback model:** `smollm2-135m`" in card and "mean label" in card
    assert "harmless v" in card and "choice principles" in card
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows"] == {"sft": 4, "pairs": 4, "labelled": 6}


def test_exports_read_back_by_label_train_sft_and_train_pm(tmp_path, tiny_llama):
    run, _ = labelled_run(tmp_path)
    out = run / "export"
    # the revision pairs, relabelled: no conversion step
    r = run_cai(["label", "--pairs", str(out / "pairs.jsonl"), "--out", "relabel",
                 "--dry-run", "--show", "0"], tmp_path)
    assert r.returncode == 0, r.stderr
    relabelled = read_output(tmp_path / "relabel/label/output.jsonl")
    assert len(relabelled) == len(read_output(out / "pairs.jsonl"))
    assert relabelled[0]["conversation"] == [["user", "Bad 0?"]]
    # SFT on the sft export, a few steps on a tiny model
    r = run_cai(["train-sft", "--revisions", str(out / "sft.parquet"), "--out", "sft",
                 "-m", str(tiny_llama), "--max-steps", "2", "precision=fp32"], tmp_path)
    assert r.returncode == 0, r.stderr
    train = read_output(tmp_path / "sft/sl_model/train.jsonl")
    assert len(train) == 4 and train[0]["completion"][0]["role"] == "assistant"
    # the PM on the labelled export, with TRL conversational rows as the helpful mix
    helpful = write_jsonl(tmp_path / "helpful.jsonl", [
        PREFERENCE_SHAPES["trl conversational"]] * 3)
    r = run_cai(["train-pm", "--labels", str(out / "labelled"), "--helpful", str(helpful),
                 "--out", "pm", "-m", str(tiny_llama), "--max-steps", "2",
                 "precision=fp32"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_output(tmp_path / "pm/pm/train.jsonl")
    assert sum(x["source"] == "ai" for x in rows) == 6
    assert sum(x["source"] == "human" for x in rows) == 3


def test_trls_dpo_trainer_takes_the_labelled_export_as_it_is(tmp_path, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run, _ = labelled_run(tmp_path)
    data = datasets.load_dataset("parquet",
                                 data_files=str(run / "export/labelled.parquet"))["train"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2,
                     report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    assert [h for h in trainer.state.log_history if "loss" in h]
