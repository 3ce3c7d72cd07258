"""Bad input that used to end in a traceback (issue 19): files that are not UTF-8, in every
reader, and a prompt longer than the model's context. Each is one line naming the file and
row, exit code 2, and nothing marked complete."""

from __future__ import annotations

import json

import pytest
from conftest import run_cai, write_jsonl

LATIN1 = "Caf\xe9 au lait?".encode("latin-1")       # 0xe9 alone is not UTF-8


def test_a_prompts_file_that_is_not_utf8_is_named_with_line_and_byte(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'{"prompt": "fine"}\n{"prompt": "' + LATIN1 + b'"}\n')
    r = run_cai(["generate", "--prompts", "p.jsonl", "--out", "run", "--dry-run"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: p.jsonl:2: not UTF-8 (byte 0xe9 at column 16)"
    assert not (tmp_path / "run/generate/manifest.json").exists()


@pytest.mark.parametrize("what", ["pairs", "constitution", "config", "json array"])
def test_every_reader_names_bytes_that_are_not_utf8(tmp_path, what):
    from constitutional.comparisons import load_comparisons
    from constitutional.config import GenerateConfig, load_config
    from constitutional.constitution import load_constitution
    from constitutional.errors import InputError
    from constitutional.prompts_io import load_prompts

    f = tmp_path / {"pairs": "c.jsonl", "constitution": "c.yaml", "config": "g.yaml",
                    "json array": "a.json"}[what]
    body = {"pairs": b'{"prompt": "q", "better": "a", "worse": "b"}\n'
                     b'{"prompt": "q", "better": "a", "worse": "' + LATIN1 + b'"}\n',
            "constitution": b"name: mine\ndescription: " + LATIN1 + b"\n",
            "config": b"limit: 3\nprompts: " + LATIN1 + b"\n",
            "json array": b'[{"prompt": "ok"},\n {"prompt": "' + LATIN1 + b'"}]'}[what]
    f.write_bytes(body)
    read = {"pairs": lambda: load_comparisons(f), "constitution": lambda: load_constitution(f),
            "config": lambda: load_config(GenerateConfig, f),
            "json array": lambda: load_prompts(str(f))}[what]
    with pytest.raises(InputError, match=r"not UTF-8 \(byte 0xe9 at column \d+\)") as e:
        read()
    assert e.value.line == 2


def test_a_prompt_past_the_models_context_names_its_row(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "short", "prompt": "Hello there"},
                                       {"id": "huge", "prompt": "lorem ipsum " * 4000}])
    r = run_cai(["generate", "--prompts", "p.jsonl", "--out", "run", "-m", str(tiny_llama),
                 "--max-tokens", "8"], tmp_path)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: p.jsonl:2: id huge: the prompt is ")
    assert "and 8 new tokens, past" in line and "context of 4096 tokens" in line
    assert "Traceback" not in r.stderr
    m = tmp_path / "run/generate/manifest.json"
    assert not m.exists() or json.loads(m.read_text())["status"] != "complete"
