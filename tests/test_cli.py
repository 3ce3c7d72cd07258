"""`cai` as a user runs it: real subprocesses, one-line errors, exit codes, resume after kill."""

import json

import pytest

from conftest import kill_after_shards, run_cai, write_jsonl


def _prompts(tmp_path, n=6):
    return write_jsonl(tmp_path / "p.jsonl",
                       [{"id": f"q{i}", "prompt": f"How do I bake bread number {i}?"}
                        for i in range(n)])


def test_generate_writes_rows_and_reuses_finished_stage(tmp_path, tiny_llama):
    p = _prompts(tmp_path)
    args = ["generate", "--model", str(tiny_llama), "--prompts", str(p), "--out", "run",
            "--max-tokens", "8", "--n", "2", "model.dtype=float32", "chunk_size=4"]
    r = run_cai(args, tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (tmp_path / "run/generate/output.jsonl").read_text().splitlines()]
    assert [(x["id"], x["sample"]) for x in rows] == [(f"q{i}", j) for i in range(6) for j in (0, 1)]
    assert all(0 < x["completion_tokens"] <= 8 for x in rows)
    calls = (tmp_path / "run/calls.jsonl").read_text().splitlines()
    assert len(calls) == 6 and json.loads(calls[0])["params"]["max_tokens"] == 8
    assert "model:" in (tmp_path / "run/config.yaml").read_text()
    again = run_cai(args, tmp_path)
    assert again.returncode == 0 and "reused" in again.stdout
    assert len((tmp_path / "run/calls.jsonl").read_text().splitlines()) == 6  # no new calls


def test_dry_run_uses_fake_backend(tmp_path):
    p = _prompts(tmp_path, 2)
    r = run_cai(["generate", "--dry-run", "--prompts", str(p), "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[fake reply 0]" in (tmp_path / "run/generate/output.jsonl").read_text()


def _assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("content,needles", [
    ('{"prompt": "a"}\n{"prompt": \n', ["p.jsonl:2:", "malformed JSON"]),
    ('{"prompt": "a"}\n{"question": "b"}\n', ["p.jsonl:2: prompt:", "missing field"]),
    ('{"prompt": ""}\n', ["p.jsonl:1: prompt:", "empty prompt"]),
])
def test_bad_prompt_files(tmp_path, content, needles):
    (tmp_path / "p.jsonl").write_text(content)
    r = run_cai(["generate", "--dry-run", "--prompts", "p.jsonl", "--out", "run"], tmp_path)
    _assert_one_line_error(r, *needles)
    assert not (tmp_path / "run/generate/output.jsonl").exists()


def test_other_bad_inputs(tmp_path):
    p = _prompts(tmp_path, 1)
    _assert_one_line_error(run_cai(["generate", "--dry-run", "--prompts", "missing.jsonl",
                                    "--out", "run"], tmp_path), "missing.jsonl", "not found")
    _assert_one_line_error(run_cai(["generate", "--model", "smollm-135", "--prompts", str(p),
                                    "--out", "run"], tmp_path), "unknown model", "smollm2-135m")
    _assert_one_line_error(run_cai(["generate", "--dry-run", "--prompts", str(p), "--out", "run",
                                    "sampling.tempreture=1"], tmp_path),
                           "sampling.tempreture", "did you mean 'sampling.temperature'")
    (tmp_path / "bad.yaml").write_text("sampling: [\n")
    _assert_one_line_error(run_cai(["generate", "--config", "bad.yaml", "--prompts", str(p),
                                    "--out", "run"], tmp_path), "bad.yaml", "malformed YAML")
    assert not (tmp_path / "run/generate/output.jsonl").exists()


def test_verbose_shows_traceback(tmp_path):
    r = run_cai(["--verbose", "generate", "--dry-run", "--prompts", "missing.jsonl", "--out",
                 "run"], tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_kill_mid_run_then_resume_matches_unbroken_run(tmp_path, tiny_llama):
    rows = [{"id": f"q{i}", "prompt": f"Tell me about bread, question {i} " + "x" * (i % 7)}
            for i in range(240)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    args = ["generate", "--model", str(tiny_llama), "--prompts", "p.jsonl", "--max-tokens",
            "48", "--temperature", "0.9", "model.dtype=float32", "model.batch_size=4",
            "chunk_size=4"]
    unbroken = run_cai(args + ["--out", "a"], tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr

    shards = tmp_path / "b/generate/shards"
    done_before = kill_after_shards(args + ["--out", "b"], tmp_path, shards, at_least=3)
    manifest = json.loads((tmp_path / "b/generate/manifest.json").read_text())
    assert manifest["status"] == "running"
    assert not (tmp_path / "b/generate/output.jsonl").exists()
    assert 3 <= done_before < 60

    resumed = run_cai(args + ["--out", "b"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = (tmp_path / "a/generate/output.jsonl").read_text()
    b = (tmp_path / "b/generate/output.jsonl").read_text()
    assert a == b and len(a.splitlines()) == 240
    calls = (tmp_path / "b/calls.jsonl").read_text().splitlines()
    assert len(calls) >= 240 - 4 * done_before  # the resumed run computed only missing chunks
    assert len(calls) < 240 + 4 * 8


@pytest.mark.parametrize("args,needle", [
    (["eval", "blind-score", "folder", "sheet.csv", "--run", "x"], "No such option: --run"),
    (["generate", "--dry-run"], "Missing option"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_a_message_and_exit_code_2(tmp_path, args, needle):
    r = run_cai(args, tmp_path)
    assert r.returncode == 2 and needle in r.stderr, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
