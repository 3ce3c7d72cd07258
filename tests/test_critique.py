"""The critique -> revision stage on the scripted fake backend, and `cai critique` end to end."""

from __future__ import annotations

import json

import pytest

from constitutional.artifacts import read_output
from constitutional.backends.fake import FakeBackend, last_user_text
from constitutional.constitution import draw_principles, load_constitution
from constitutional.stages.critique import CritiqueConfig, run_critique, step_flags
from conftest import kill_after_shards, run_cai, write_jsonl


def prompts_file(tmp_path, n=3):
    return write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Harmful question {i}?"}
                                              for i in range(n)])


def run(tmp_path, backend, name="run", **kw):
    cfg = CritiqueConfig(prompts=str(prompts_file(tmp_path)), **kw)
    result = run_critique(cfg, tmp_path / name, lambda: backend, log=lambda m: None)
    return cfg, read_output(result.output)


def by_length(prompt, j):
    """A reply that names where in the loop it was asked: R<number of messages>."""
    return f"R{len(prompt)} s{j}"


def test_rounds_and_steps_in_exact_order_with_seeded_principles(tmp_path):
    fake = FakeBackend(reply=by_length)
    cfg, rows = run(tmp_path, fake, rounds=3, samples=2, few_shot=0)
    _, con = load_constitution("bundled:harmless")
    pairs = con.critique_revision
    # one batched call for the answers (n = samples), then critique, revision x 3 rounds
    assert len(fake.calls) == 1 + 2 * 3
    assert [len(prompts) for _, prompts in fake.calls] == [3] + [6] * 6
    assert [(r["id"], r["sample"]) for r in rows] == [(f"q{i}", j) for i in range(3)
                                                      for j in (0, 1)]
    for k, row in enumerate(rows):
        drawn = draw_principles(16, 3, cfg.sampling.seed, f"{row['id']}\x00{row['sample']}")
        assert [rd["principle"] for rd in row["rounds"]] == [pairs[d].name for d in drawn]
        for rnd, d in zip(range(3), drawn):
            crit_call, rev_call = fake.calls[1 + 2 * rnd][1][k], fake.calls[2 + 2 * rnd][1][k]
            assert last_user_text(crit_call) == pairs[d].critique
            assert last_user_text(rev_call) == pairs[d].revision
            assert row["rounds"][rnd]["critique_request"] == pairs[d].critique
        # the conversation grows by request + reply per step
        assert row["initial_response"] == f"R1 s{row['sample']}"
        assert [(rd["critique"], rd["revision"]) for rd in row["rounds"]] == \
            [("R3 s0", "R5 s0"), ("R7 s0", "R9 s0"), ("R11 s0", "R13 s0")]
        assert row["revision"] == "R13 s0" and row["ok"] and row["flags"] == []
    # the revision call sees the critique it follows
    last = fake.calls[-1][1][0]
    assert [m["content"] for m in last[-2:]] == ["R11 s0",
                                                 rows[0]["rounds"][2]["revision_request"]]


def test_principle_sampling_is_reproducible_and_seed_dependent(tmp_path):
    _, a = run(tmp_path, FakeBackend(reply=by_length), "a", rounds=2, few_shot=0)
    _, b = run(tmp_path, FakeBackend(reply=by_length), "b", rounds=2, few_shot=0,
               chunk_size=1)
    cfg = CritiqueConfig(rounds=2, few_shot=0)
    cfg.sampling.seed = 3
    _, c = run(tmp_path, FakeBackend(reply=by_length), "c", rounds=2, few_shot=0,
               sampling=cfg.sampling)
    names = lambda rows: [[rd["principle"] for rd in r["rounds"]] for r in rows]  # noqa: E731
    assert names(a) == names(b)           # chunking does not change the draws
    assert names(a) != names(c)


def test_revision_only_mode_skips_the_critique(tmp_path):
    fake = FakeBackend(reply=by_length)
    _, rows = run(tmp_path, fake, rounds=2, mode="revision_only")
    assert len(fake.calls) == 1 + 2
    _, con = load_constitution("bundled:harmless")
    critiques = {p.critique for p in con.critique_revision}
    for _, prompts in fake.calls:
        for p in prompts:
            users = [m["content"] for m in p if m["role"] == "user"]
            assert not critiques & set(users)
            # exemplars come without their critique too
            assert not any(ex.critique == m["content"] for m in p
                           for ex in con.exemplars.critique_revision)
    assert all("critique" not in rd and "revision" in rd for r in rows for rd in r["rounds"])
    assert rows[0]["mode"] == "revision_only"


def test_few_shot_exemplars_come_before_the_conversation(tmp_path):
    fake = FakeBackend(reply=by_length)
    run(tmp_path, fake, few_shot=1, system_prompt="Be wise.")
    _, con = load_constitution("bundled:harmless")
    ex = con.exemplars.critique_revision[0]
    crit = fake.calls[1][1][0]
    assert crit[0] == {"role": "system", "content": "Be wise."}
    assert [m["content"] for m in crit[1:7]] == [
        ex.conversation[0].content, ex.conversation[1].content, ex.critique_request,
        ex.critique, ex.revision_request, ex.revision]
    assert crit[7]["content"] == "Harmful question 0?"
    # the initial answer is asked without exemplars
    assert len(fake.calls[0][1][0]) == 2


def test_text_format_uses_the_paper_layout_and_stops(tmp_path):
    fake = FakeBackend(reply=lambda p, j: "A fine answer.\n\nHuman: an invented turn")
    _, rows = run(tmp_path, fake, prompt_format="text", few_shot=1)
    answer_prompt, crit_prompt = fake.calls[0][1][0], fake.calls[1][1][0]
    assert answer_prompt == "\n\nHuman: Harmful question 0?\n\nAssistant:"
    assert crit_prompt.endswith("\n\nCritique:") and "\n\nCritiqueRequest: " in crit_prompt
    assert crit_prompt.index("\n\nRevision: ") < crit_prompt.index("Harmful question 0?")
    # the default stop strings cut the invented turn
    assert rows[0]["initial_response"] == "A fine answer."


@pytest.mark.parametrize("reply, flag", [
    (lambda p, j: "   ", "empty"),
    (lambda p, j: "Original answer here, long enough to compare.", "copy_of_answer"),
    (lambda p, j: last_user_text(p), "repeats_request"),
    (lambda p, j: "I am sorry about that. " * 4, "repetitive"),
])
def test_degenerate_steps_are_flagged_not_kept(tmp_path, reply, flag):
    def script(prompt, j):
        if len(prompt) == 1:
            return "Original answer here, long enough to compare."
        return reply(prompt, j)
    _, rows = run(tmp_path, FakeBackend(reply=script), few_shot=0)
    row = rows[0]
    assert flag in row["flags"] and row["ok"] is False
    assert flag in row["rounds"][0]["revision_flags"]


def test_truncated_is_recorded_but_kept():
    assert step_flags("a long answer that was cut", "Rewrite it.", ["x"], "length", 0.9) == \
        ["truncated"]


def test_cli_dry_run_and_bad_constitution(tmp_path):
    p = prompts_file(tmp_path, 2)
    ok = run_cai(["critique", "--dry-run", "--prompts", str(p), "--out", "run", "--rounds",
                  "2", "--show", "1"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(x) for x in (tmp_path / "run/critique/output.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 2 and all(len(r["rounds"]) == 2 for r in rows)
    assert "critique 1" in ok.stdout and "rounds/s" in ok.stdout
    (tmp_path / "c.yaml").write_text("name: c\nchoice:\n  - name: a\n    text: Which?\n")
    bad = run_cai(["critique", "--dry-run", "--prompts", str(p), "--out", "run2",
                   "--constitution", "c.yaml"], tmp_path)
    assert bad.returncode == 2 and "no `critique_revision` principles" in bad.stderr
    assert not (tmp_path / "run2").exists()
    bad = run_cai(["critique", "--dry-run", "--prompts", str(p), "--out", "run2",
                   "sampling.n=2"], tmp_path)
    assert bad.returncode == 2 and "use `samples`" in bad.stderr


def test_kill_mid_critique_then_resume_matches_unbroken_run(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"Bad question {i} " +
                                        "y" * (i % 5)} for i in range(96)])
    args = ["critique", "--model", str(tiny_llama), "--prompts", "p.jsonl", "--max-tokens",
            "12", "--rounds", "2", "--few-shot", "1", "model.dtype=float32",
            "model.batch_size=8", "chunk_size=4"]
    unbroken = run_cai(args + ["--out", "a"], tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr

    done_before = kill_after_shards(args + ["--out", "b"], tmp_path,
                                    tmp_path / "b/critique/shards", at_least=2)
    assert not (tmp_path / "b/critique/output.jsonl").exists()
    assert 2 <= done_before < 24

    resumed = run_cai(args + ["--out", "b"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = (tmp_path / "a/critique/output.jsonl").read_text()
    b = (tmp_path / "b/critique/output.jsonl").read_text()
    assert a == b and a.count("\n") == 96
