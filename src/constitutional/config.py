"""Typed configs: documented pydantic models, YAML files, and `a.b=value` overrides.

Every field carries its help text (as TRL's config dataclasses do), unknown keys are refused
with the closest valid name, and every error names the file and the dotted path of the field.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from constitutional.errors import InputError
from constitutional.jsonio import read_text

C = TypeVar("C", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# A field marked with this changes how a stage runs, not what it produces (batch sizes, shard
# sizes, logging), or names an input the stage fingerprints by content (a file it reads by
# hash, a model folder by its weights' hash). `results_config` leaves such fields out, so a
# stage resumes after you lower a batch size or move the run folder.
NOT_RESULTS = {"affects_results": False}


def results_config(cfg: BaseModel) -> dict[str, Any]:
    """The config as a stage's fingerprint sees it: every field but those marked NOT_RESULTS,
    at any depth (JSON types)."""
    data = cfg.model_dump(mode="json")
    _strip(cfg, data)
    return data


def _strip(cfg: BaseModel, data: dict[str, Any]) -> None:
    for name, info in type(cfg).model_fields.items():
        if isinstance(info.json_schema_extra, dict) and \
                info.json_schema_extra.get("affects_results") is False:
            data.pop(name, None)
            continue
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            _strip(value, data[name])
        elif isinstance(value, list):
            for v, d in zip(value, data[name]):
                if isinstance(v, BaseModel):
                    _strip(v, d)


class ServerConfig(StrictModel):
    """For backend `openai` (any OpenAI-compatible server: vLLM, llama.cpp, TGI, SGLang,
    `cai serve`) and `vllm` (in process)."""
    base_urls: list[str] = Field(default_factory=list, description="Server base URLs, e.g. "
                                 "http://node1:8000/v1; requests are spread over them.",
                                 json_schema_extra=NOT_RESULTS)
    api_key_env: str | None = Field(None, description="Name of the environment variable "
                                    "holding the API key (the key itself is never in a "
                                    "config, a log or an artifact).")
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="Chat prompts go to /v1/chat/completions; raw-text prompts and "
        "choice scoring always use /v1/completions.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.",
                             json_schema_extra=NOT_RESULTS)
    timeout_s: float = Field(300.0, gt=0, json_schema_extra=NOT_RESULTS)
    retries: int = Field(4, ge=0, description="Retries on 429, 5xx and timeouts, with "
                         "exponential backoff.", json_schema_extra=NOT_RESULTS)
    top_logprobs: int = Field(20, ge=2, description="Top-k next-token log-probabilities asked "
                              "for when scoring choices (servers cap it, often at 20).")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm.")


class ModelConfig(StrictModel):
    name: str = Field("smollm2-135m", description="Built-in model name (see `cai models`), "
                      "a local Hugging Face folder, or a hub id such as org/name.")
    backend: Literal["auto", "transformers", "fake", "openai", "vllm"] = Field(
        "auto", description="Engine that runs the model. `auto` (the default): `vllm` where "
        "a GPU and the vllm package are, else `transformers` (our in-process engine); the "
        "config records which. `fake` replies from a script (tests and --dry-run); `openai`: "
        "an OpenAI-compatible server (see `server`); `vllm`: vLLM in process (optional "
        "extra).")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Settings of the "
                                 "openai and vllm backends.")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="Weights and compute dtype. `auto`: bfloat16 where the CPU has bf16 "
        "matrix units or on GPU, else float32.")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    batch_size: int = Field(128, ge=1, description="Sequences decoded together (128 is "
                            "fastest on a 2-core CPU for a 135M model; lower it for big "
                            "models).", json_schema_extra=NOT_RESULTS)
    score_batch_tokens: int = Field(1536, ge=64, description="Token budget of one choice-"
                                    "scoring forward pass (rows x length).",
                                    json_schema_extra=NOT_RESULTS)
    trust_remote_code: bool = Field(False, description="Run code shipped with a hub model. "
                                    "Off unless you trust its source.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    fake_script: str | None = Field(None, description="For backend `fake`: a YAML file of "
                                    "`- match: regex` / `reply: text` rules.")

    @model_validator(mode="after")
    def _pick_backend(self):
        if self.backend == "auto":
            self.backend = "vllm" if self.device.split(":")[0] in ("auto", "cuda") and \
                vllm_with_gpu() else "transformers"
        return self


def vllm_with_gpu() -> bool:
    """vLLM is installed and a CUDA GPU is there (torch is imported only when vLLM is)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


class SamplingConfig(StrictModel):
    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: all).")
    max_tokens: int = Field(256, ge=1, description="Cap on new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; the completion "
                            "is cut before the first one.")
    seed: int = Field(0, description="Seed; each (prompt, sample) draws from its own stream, "
                      "so results do not depend on batching or on resuming.")


class GenerateConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prompts: str = Field("bundled:helpful", description="JSONL with a `prompt` (or "
                         "`messages`) field, or bundled:redteam / bundled:helpful.")
    system_prompt: str | None = Field(None, description="System message put before each "
                                      "prompt (None: the chat template's default).")
    user_template: str | None = Field(None, description="The last user turn becomes this "
                                      "text with {prompt} replaced by that turn (None: the "
                                      "turn as given).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.",
                              json_schema_extra=NOT_RESULTS)    # the rows count is hashed
    chunk_size: int = Field(128, ge=1, description="Rows per resumable shard.",
                            json_schema_extra=NOT_RESULTS)
    log_calls: bool = Field(True, description="Log every model call to calls.jsonl.",
                            json_schema_extra=NOT_RESULTS)


# ---------------------------------------------------------------------------------------
# Loading and overrides

def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path=str(path))
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"malformed YAML ({problem})", path=str(path), line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping at the top level, got {type(data).__name__}",
                         path=str(path))
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply `a.b=value` in place; the value is parsed as YAML (so 3, 0.5, true, [a, b] work)."""
    if "=" not in assignment:
        raise InputError(f"override {assignment!r} is not of the form key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise InputError(f"override {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"override {assignment!r}: {p} is not a section")
    node[parts[-1]] = value


def _check_keys(cls: type[BaseModel], data: Any, prefix: str, source: str | None) -> None:
    """Refuse unknown keys with the closest valid name before pydantic sees them."""
    if not isinstance(data, dict):
        return
    fields = cls.model_fields
    for key, value in data.items():
        path = f"{prefix}{key}"
        renamed = getattr(cls, "RENAMED", {}).get(key)
        if key not in fields and renamed:
            line = yaml_line(source, tuple(path.split("."))) if source else None
            raise InputError(f"renamed: use '{prefix}{renamed}' (one name in every trainer)",
                             path=source, line=line, field=path)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else \
                f" (valid: {', '.join(fields)})"
            line = yaml_line(source, tuple(path.split("."))) if source else None
            raise InputError(f"unknown key{hint}", path=source, line=line, field=path)
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(ann, value, path + ".", source)


def build_config(cls: type[C], data: dict[str, Any], source: str | None = None) -> C:
    _check_keys(cls, data, "", source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, source) from None


def field_path(loc: tuple) -> str:
    """('critique_revision', 3, 'revision') -> 'critique_revision[3].revision'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(e: ValidationError, source: str | None) -> InputError:
    """The first pydantic error as an InputError naming the file, line and field."""
    errors = e.errors()
    # A misspelt key also shows up as a missing one: name the misspelling, it is the cause.
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        missing = [str(x["loc"][-1]) for x in errors if x["type"] == "missing"
                   and tuple(x["loc"][:-1]) == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), missing, n=1, cutoff=0.5)
        msg = f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"
    if err["type"] not in ("missing", "value_error") and not isinstance(err.get("input"), dict):
        msg += f" (got {err.get('input')!r})"
    line = yaml_line(source, loc) if source else None
    return InputError(msg, path=source, line=line, field=field_path(loc) or None)


def yaml_line(path: str | Path, loc: tuple) -> int | None:
    """The line of the YAML node at `loc` (or of its nearest existing parent), 1-based."""
    try:
        node = yaml.compose(read_text(path))
    except (OSError, yaml.YAMLError):
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def load_config(cls: type[C], path: str | Path | None = None,
                overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> C:
    """File (optional) <- base values (e.g. CLI flags) <- `a.b=value` overrides, then validate."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    for k, v in (base or {}).items():
        _set_dotted(data, k, v)
    for o in overrides or []:
        apply_override(data, o)
    return build_config(cls, data, source=str(path) if path else None)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
