"""The shape of the code: one stage contract, one registry, run paths from the RunDir alone,
imports one way, and a stage added as one file plus one registry line (run through `cai run`,
killed and resumed)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "constitutional"

# Folder names of the run folder and of a stage's model: joined only in rundir.py (and the
# StageDir of artifacts.py; models.py's "model" is the user's model cache, not a run folder).
RUN_JOIN = re.compile(
    r'/ "(critique|helpful|export|sl_model|sl_answers|pairs|labels?|pm|rl|eval|self_instruct|'
    r'redteam_topics|redteam|instructions|self_align|engraved?|verbose_answers|verbose(_model)?|'
    r'selfalign_samples|model|snapshots|calls\.jsonl|report\.md|report\.html|summary\.json)"'
    r'|StageDir\(|"(critique|pairs|label|pm|rl|eval)/[\w./-]+\.(jsonl|json|png|csv)"')
ALLOWED = {"rundir.py", "artifacts.py", "models.py"}


def modules(folder: Path = SRC):
    return sorted(p for p in folder.rglob("*.py"))


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_module_outside_the_run_folder_object_joins_run_paths():
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for p in modules() if p.name not in ALLOWED or p.parent != SRC
            for i, line in enumerate(p.read_text().splitlines(), 1) if RUN_JOIN.search(line)]
    assert hits == []


def test_the_grep_would_see_a_hand_join():
    # the pattern itself: a regression here would make the test above pass vacuously
    for line in ('x = run_dir / "pm" / "model"', 'StageDir(run_dir, "label")',
                 'doc.image(p, "eval/frontier.png")', 'path = "critique/output.jsonl"'):
        assert RUN_JOIN.search(line), line
    assert not RUN_JOIN.search('title="critique/revision"')


def test_imports_run_one_way():
    """cli -> api -> pipeline -> stages -> {train, evals, selfalign, prompts, backends} ->
    {artifacts, config, models}: nothing below stages/ imports it, nothing but cli imports
    api, and nothing but cli imports cli."""
    top = (SRC / "api.py", SRC / "__init__.py")
    low = [p for d in ("evals", "train", "backends", "selfalign") for p in modules(SRC / d)]
    low += [p for p in SRC.glob("*.py") if p not in top]
    bad = [(str(p.relative_to(SRC)), m) for p in low for m in imported(p)
           if m.startswith(("constitutional.stages", "constitutional.cli", "constitutional.api"))]
    bad += [(str(p.relative_to(SRC)), m) for p in [*modules(SRC / "stages"), *top]
            for m in imported(p) if m.startswith("constitutional.cli")]
    bad += [(str(p.relative_to(SRC)), m) for p in modules(SRC / "stages") for m in imported(p)
            if m.startswith("constitutional.api")]
    assert bad == []


def test_every_registered_stage_has_the_one_signature_and_a_section():
    from constitutional.config import StrictModel
    from constitutional.stages import registry
    from constitutional.stages.pipeline import RecipeConfig

    cfg = RecipeConfig()
    for name, mod in registry.modules().items():
        params = list(inspect.signature(mod.run).parameters)
        assert params == ["cfg", "run", "models"], name
        assert issubclass(mod.Section, StrictModel), name
        assert set(mod.Section.model_fields) <= set(RecipeConfig.model_fields), name
        assert (mod.run.__doc__ or "").strip(), name           # its line in `cai stages`
        for path in mod.FAKE:                                  # --dry-run reaches each model
            *parents, last = path.split(".")
            obj = cfg
            for part in parents:
                obj = getattr(obj, part)
            assert last in type(obj).model_fields, (name, path)
    assert set(RecipeConfig.model_fields["stages"].default_factory()) <= set(registry.STAGES)


def test_a_recipe_naming_an_unregistered_stage_is_refused(tmp_path):
    from conftest import run_cai

    (tmp_path / "r.yaml").write_text("stages: [sl-cai, polish]\n")
    r = run_cai(["run", "r.yaml", "--dry-run"], tmp_path)
    assert r.returncode == 2
    assert "unknown stage 'polish'" in r.stderr and "sl-cai, pairs, label" in r.stderr


# -- a new stage: one file, one registry line --------------------------------------------------

TOY = '''"""Stage `toy`: squares of the first n numbers, one shard per two numbers."""

import time

from pydantic import Field

from constitutional.artifacts import StageResult, run_sharded
from constitutional.config import StrictModel
from constitutional.rundir import RunDir


class ToyConfig(StrictModel):
    n: int = Field(12, ge=1, description="How many numbers.")
    delay: float = Field(0.0, description="Seconds per shard (to be killed in the middle).")


class Section(StrictModel):
    toy: ToyConfig = Field(default_factory=ToyConfig)


FAKE = ()


def run(cfg, run: RunDir, models) -> list[StageResult]:
    """Squares the first n numbers (toy/)."""
    def square(chunk):
        time.sleep(cfg.toy.delay)
        return [{"x": x, "y": x * x} for x in chunk]

    return [run_sharded(run.stage("toy"), config={"n": cfg.toy.n}, inputs={},
                        items=list(range(cfg.toy.n)), chunk_size=2, process=square,
                        log=run.log)]
'''

# What a user adds to stages/registry.py, done here before the CLI starts.
LAUNCH = ("import sys; from constitutional.stages import registry; "
          "registry.STAGES['toy'] = 'toy_stage'; "
          "from constitutional.cli import main; sys.argv[0] = 'cai'; main()")


def toy_run(tmp_path: Path, out: str, delay: float) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "run", "toy.yaml", "--out", out,
                             f"toy.delay={delay}"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_toy_stage_registered_in_one_line_runs_through_cai_run_and_resumes(tmp_path):
    (tmp_path / "toy_stage.py").write_text(TOY)
    (tmp_path / "toy.yaml").write_text("stages: [toy]\ntoy: {n: 12}\n")
    whole = toy_run(tmp_path, "a", 0.0)
    log, _ = whole.communicate(timeout=120)
    assert whole.returncode == 0, log
    rows = (tmp_path / "a/toy/output.jsonl").read_text()
    assert [json.loads(r)["y"] for r in rows.splitlines()] == [x * x for x in range(12)]

    killed = toy_run(tmp_path, "b", 0.4)                       # killed after some shards
    shards = tmp_path / "b/toy/shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.jsonl"))) < 2:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    done = len(list(shards.glob("*.jsonl")))
    assert 2 <= done < 6 and not (tmp_path / "b/toy/output.jsonl").exists()
    again = toy_run(tmp_path, "b", 0.0)
    log, _ = again.communicate(timeout=120)
    assert again.returncode == 0, log
    assert (tmp_path / "b/toy/output.jsonl").read_text() == rows
    manifest = json.loads((tmp_path / "b/toy/manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == 12
    third = toy_run(tmp_path, "b", 0.0)                        # finished: reused
    log, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "reused" in log


@pytest.mark.parametrize("recipe", ["quickstart", "cai_rlaif", "self_align"])
def test_a_recipe_built_from_the_registry_round_trips_through_its_yaml(recipe, tmp_path):
    """The recipe class is assembled from the stages' sections at run time; what `cai run`
    writes as recipe.yaml must load back to the same config (the resolved roles included)."""
    from constitutional.config import dump_config, load_config
    from constitutional.stages.pipeline import recipe_class

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(recipe_class(), root / "configs" / f"{recipe}.yaml")
    (tmp_path / "recipe.yaml").write_text(dump_config(cfg))
    again = load_config(recipe_class(), tmp_path / "recipe.yaml")
    assert again.model_dump() == cfg.model_dump()
    assert again.stages == cfg.stages and again.rl.ppo.model == cfg.rl.ppo.model
