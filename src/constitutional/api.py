"""The Python API: load a model, run a stage on your own rows, get rows (or a Dataset) back.

    import constitutional as cai

    policy = cai.load_backend("smollm2-135m")
    chains = cai.critique(["How do I pick a lock?"], backend=policy, rounds=1)
    labels = cai.label([{"prompt": "...", "response_a": "...", "response_b": "..."}],
                       backend=policy, principles=4)
    cai.to_dataset(labels).to_parquet("labels.parquet")
    results = cai.run_recipe("configs/quickstart.yaml", "runs/quickstart")

Each stage function takes its inputs as a list (strings or rows in any shape the CLI reads) or
as a data source (a file, a saved dataset, a hub id), its settings as keyword arguments (the
fields of the stage's config class: `CritiqueConfig`, `LabelConfig`, `GenerateConfig`), and
an optional run folder `out`: with one, the stage resumes there like the CLI's (the rows given
are kept in OUT/inputs/); without one it runs in a temporary folder that is removed after.
Bad input raises `InputError` (nothing calls `sys.exit`); progress goes to the
`constitutional` logger (`logging.basicConfig(level=logging.INFO)` shows it) and rich's
progress bars on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from constitutional.config import ModelConfig, build_config
from constitutional.rundir import RunDir

logger = logging.getLogger("constitutional")

Rows = Sequence[str | dict] | str | Path


def _log(msg: str) -> None:
    logger.info(msg)


def load_backend(model: str | dict | ModelConfig = "smollm2-135m", **settings):
    """A backend (generate, score choices) for a model: a built-in name, a folder, a hub id;
    `settings` are ModelConfig fields (backend="openai", server={...}, dtype, device, ...)."""
    from constitutional.backends import load_backend as load
    from constitutional.models import check_model

    cfg = _model(model, settings)
    check_model(cfg)
    return load(cfg, log=_log)


def _model(model: str | dict | ModelConfig, settings: dict | None = None) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model.model_copy(update=settings or {})
    data = {"name": model} if isinstance(model, str) else dict(model)
    return build_config(ModelConfig, {**data, **(settings or {})})


@contextlib.contextmanager
def _run_folder(out: str | Path | None) -> Iterator[RunDir]:
    if out is not None:
        yield RunDir(Path(out), _log)
        return
    with tempfile.TemporaryDirectory(prefix="cai-") as tmp:
        yield RunDir(Path(tmp), _log)


def _source(rows: Rows, run: RunDir, name: str, as_prompts: bool) -> str:
    """A data source for the stage: the spec itself, or the rows written to OUT/inputs/."""
    from constitutional.jsonio import write_jsonl_atomic

    if isinstance(rows, (str, Path)):
        return str(rows)
    data = [({"id": f"{name}-{i}", "prompt": r} if isinstance(r, str) else dict(r))
            for i, r in enumerate(rows)]
    if not as_prompts and any(isinstance(r, str) for r in rows):
        raise TypeError(f"{name}: give rows (dicts), not strings")
    path = run.inputs(name)
    write_jsonl_atomic(path, data)
    return str(path)


def _models(backend, model, critic=None) -> dict:
    """The config's model fields: the model named, else the given backend's own name (so the
    manifest and fingerprint record the model that ran)."""
    out = {}
    if model:
        out["model"] = _model(model).model_dump()
    elif getattr(backend, "name", None):
        out["model"] = {"name": str(backend.name)}
    if critic is not None:
        out["critic"] = {"name": str(getattr(critic, "name", None) or "critic")}
    return out


def _loader(backend, model: ModelConfig | None):
    """The stage's backend: the one given (loaded once by the caller), or the model's."""
    if backend is not None:
        return lambda: backend
    from constitutional.backends import load_backend as load

    return lambda: load(model, log=_log)


def generate(prompts: Rows, *, backend=None, model: str | dict | None = None,
             out: str | Path | None = None, **settings) -> list[dict]:
    """Answers to prompts (rows of `cai generate`: `completion`, `sample`, token counts)."""
    from constitutional.artifacts import read_output
    from constitutional.config import GenerateConfig
    from constitutional.stages.generate import run_generate

    with _run_folder(out) as run:
        cfg = build_config(GenerateConfig, {
            **settings, "prompts": _source(prompts, run, "prompts", True),
            **_models(backend, model)})
        result = run_generate(cfg, run, _loader(backend, cfg.model), _log)
        return read_output(result.output)


def critique(prompts: Rows, *, backend=None, critic=None, model: str | dict | None = None,
             out: str | Path | None = None, **settings) -> list[dict]:
    """Critique -> revision chains (rows of `cai critique`): the policy (`backend`) answers
    each prompt; `critic` (default: the policy itself, the paper's self-critique) critiques
    and revises under principles drawn from `constitution` (default bundled:harmless)."""
    from constitutional.artifacts import read_output
    from constitutional.stages.critique import CritiqueConfig, run_critique

    with _run_folder(out) as run:
        cfg = build_config(CritiqueConfig, {
            **settings, "prompts": _source(prompts, run, "prompts", True),
            **_models(backend, model, critic)})
        result = run_critique(cfg, run, _loader(backend, cfg.model), _log,
                              get_critic=(lambda: critic) if critic is not None else None)
        return read_output(result.output)


def label(pairs: Rows, *, backend=None, model: str | dict | None = None,
          out: str | Path | None = None, **settings) -> list[dict]:
    """AI preference labels (rows of `cai label`: `label` = p(A is better), `votes`) from
    the feedback model (`backend`) for pairs in any comparison shape `cai label` reads."""
    from constitutional.artifacts import read_output
    from constitutional.labeling import LabelConfig
    from constitutional.stages.label import run_label

    with _run_folder(out) as run:
        cfg = build_config(LabelConfig, {
            **settings, "pairs": _source(pairs, run, "pairs", False),
            **_models(backend, model)})
        result = run_label(cfg, run, _loader(backend, cfg.model), _log)
        return read_output(result.output)


def load_recipe(recipe: str | Path | Any, overrides: list[str] | None = None,
                model: str | None = None, dry_run: bool = False):
    """A recipe (a YAML path, or a RecipeConfig, copied) with `key.path=value` overrides,
    the policy set to `model`, and with `dry_run` every generation and labeling stage on the
    scripted fake backend."""
    from pydantic import BaseModel

    from constitutional.config import apply_override, load_config
    from constitutional.stages import pipeline
    from constitutional.stages.sl_cai import set_model

    if isinstance(recipe, BaseModel):
        data = recipe.model_dump(mode="json")
        for o in overrides or []:
            apply_override(data, o)
        cfg = build_config(pipeline.recipe_class(), data)
    else:
        cfg = load_config(pipeline.recipe_class(), recipe, overrides, {})
    if model:
        set_model(cfg, model)
    if dry_run:
        pipeline.fake_models(cfg)
    return cfg


def run_recipe(recipe: str | Path | Any, out: str | Path, *, overrides: list[str] | None = None,
               model: str | None = None, dry_run: bool = False, start: str | None = None,
               until: str | None = None, log=None) -> list:
    """Every stage of a recipe (see `load_recipe`) in the run folder `out`, resumable as
    `cai run`; returns the StageResults (name, output path, rows, seconds, skipped)."""
    from constitutional.backends import load_run_backend
    from constitutional.models import check_model
    from constitutional.stages import pipeline
    from constitutional.stages.critique import check_inputs

    log = log or _log
    cfg = load_recipe(recipe, overrides, model, dry_run)
    pipeline.select(cfg.stages, start, until)
    check_inputs(cfg.critique)
    for m in pipeline.models_used(cfg):
        check_model(m)
    run = RunDir(Path(out), log)
    run.save_config(cfg, "recipe.yaml")

    def load(model_cfg):
        return load_run_backend(model_cfg, run.root, cfg.critique.log_calls, log)

    return pipeline.run_recipe(cfg, run.root, load, log, start, until)


def to_dataset(rows: list[dict]):
    """Rows (of any stage, or `read_rows`) as a `datasets.Dataset`, every column kept."""
    from constitutional.datasource import to_dataset as convert

    return convert(rows)


def read_rows(source: str | Path) -> list[dict]:
    """The rows of a data source (JSONL, parquet, a saved dataset, a hub id)."""
    from constitutional.datasource import read_rows as rows

    return [row for _, row in rows(source)]
