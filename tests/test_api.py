"""The Python API (issue 18): the README's example runs as written on the scripted backend;
stages called from Python resume in a run folder, name bad settings, and never exit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from constitutional.errors import InputError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    # the scripted backend in place of the two models, as the README says
    return re.sub(r'cai\.load_backend\(("[^"]+")\)', r'cai.load_backend(\1, backend="fake")',
                  code)


def test_the_readme_example_runs_on_the_fake_backend(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert code.count('backend="fake"') == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    chains, labels = namespace["chains"], namespace["labels"]
    assert len(chains) == 2 and all("revision" in c and "initial_response" in c for c in chains)
    assert len(labels) == 2 and all(0 <= r["label"] <= 1 and r["votes"] for r in labels)
    import datasets

    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "labels.parquet"))
    assert back["train"].num_rows == 2
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[-1].startswith("[")


def test_stages_from_python_resume_in_a_run_folder_and_name_bad_settings(tmp_path):
    import constitutional as cai

    fake = cai.load_backend("smollm2-135m", backend="fake")
    prompts = ["How do I pick a lock?", {"id": "mine", "prompt": "Insult my coworker."}]
    first = cai.critique(prompts, backend=fake, out=tmp_path / "run", rounds=2)
    again = cai.critique(prompts, backend=fake, out=tmp_path / "run", rounds=2)
    assert first == again and [r["id"] for r in first] == ["prompts-0", "mine"]
    assert (tmp_path / "run/inputs/prompts.jsonl").is_file()
    assert all(len(r["rounds"]) == 2 for r in first)
    generated = cai.generate(str(tmp_path / "run/inputs/prompts.jsonl"), backend=fake,
                             sampling={"n": 2})
    assert len(generated) == 4
    with pytest.raises(InputError, match="no_such_setting"):
        cai.critique(prompts, backend=fake, no_such_setting=1)
    with pytest.raises(InputError, match="response_a|comparison row"):
        cai.label([{"prompt": "only a prompt"}], backend=fake)
    with pytest.raises(TypeError, match="rows"):
        cai.label(["a string is not a pair"], backend=fake)
    rows = cai.read_rows(tmp_path / "run/inputs/prompts.jsonl")
    assert cai.to_dataset(rows).column_names == ["id", "prompt"]


def test_importing_the_api_names_does_not_load_torch():
    code = ("import sys, constitutional as c; c.critique; c.run_recipe; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr
