"""Run folders: one sub-folder per stage, resumable shards, and a manifest.

    runs/<name>/config.yaml          the resolved config of the last invocation
    runs/<name>/calls.jsonl          every model call (prompt, parameters, output, latency)
    runs/<name>/<stage>/manifest.json
    runs/<name>/<stage>/shards/00000.jsonl ...
    runs/<name>/<stage>/output.jsonl written last, atomically

How resume stays exact: a stage's work items are cut into chunks fixed by the input alone
(never by what is already done); each chunk is computed in one deterministic call and lands as
one shard by atomic rename, so a shard either exists whole or not at all. A restarted stage
skips existing shards and computes the missing chunks exactly as an unbroken run would. The
fingerprint (stage config + input hashes) ties shards to what produced them: a change discards
the stage's shards, and since a stage's inputs include the hash of the previous stage's output,
a change upstream invalidates everything downstream.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from constitutional.jsonio import (dumps_row, sha256_file, sha256_json, write_atomic,
                                   write_json_atomic)

MANIFEST = "manifest.json"
OUTPUT = "output.jsonl"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("constitutional", "torch", "transformers", "trl", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class StageResult:
    name: str
    output: Path
    rows: int
    seconds: float
    skipped: bool           # True when a finished stage with unchanged inputs was reused


class StageDir:
    """One stage's folder: manifest, shards and the final output."""

    def __init__(self, run_root: str | Path, name: str):
        self.name = name
        self.path = Path(run_root) / name
        self.shards = self.path / "shards"

    @property
    def output(self) -> Path:
        return self.path / OUTPUT

    @property
    def model(self) -> Path:
        """A training stage's final model: a Hugging Face folder that appears by rename."""
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_manifest(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path / MANIFEST, data)

    def is_complete(self, fingerprint: str, result: Path | None = None) -> bool:
        """Finished with this fingerprint, and its result (default output.jsonl) is there."""
        m = self.manifest()
        return bool(m and m.get("status") == "complete" and m.get("fingerprint") == fingerprint
                     and (result or self.output).exists())

    def reuse_or_reset(self, fingerprint: str, log: Callable[[str], None],
                       result: Path | None = None) -> dict[str, Any] | None:
        """The one resume rule of every step (data, training, PPO, SELF-ALIGN's rounds): the
        manifest if the step finished with this fingerprint (reuse it); otherwise None, after
        clearing a folder another config or other inputs left. A folder the same fingerprint
        left unfinished is kept, so the step continues from its shards or checkpoints."""
        if self.is_complete(fingerprint, result):
            return self.manifest()
        old = self.manifest()
        if old and old.get("fingerprint") != fingerprint:
            log(f"{self.name}: config or inputs changed since the last run; recomputing")
            self.reset()
        return None

    def reset(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def run_sharded(stage: StageDir, *, config: dict[str, Any], inputs: dict[str, str],
                items: Sequence[Any], chunk_size: int,
                process: Callable[[Sequence[Any]], list[dict[str, Any]]],
                on_resume: Callable[[int], None] | None = None,
                log: Callable[[str], None] = print) -> StageResult:
    """Run `process` over fixed chunks of `items`, one atomic shard per chunk; resumable."""
    fingerprint = sharded_fingerprint(stage, config, inputs, len(items), chunk_size)
    done = stage.reuse_or_reset(fingerprint, log)
    if done:
        return StageResult(stage.name, stage.output, done.get("rows", 0), 0.0, skipped=True)
    old = stage.manifest()
    stage.shards.mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage.name, "status": "running", "fingerprint": fingerprint,
                "config": config, "inputs": inputs, "items": len(items),
                "chunk_size": chunk_size, "versions": package_versions(),
                # a resumed stage keeps adding to the compute time of its earlier attempts
                "seconds": old.get("seconds", 0.0) if old and
                old.get("fingerprint") == fingerprint else 0.0}
    stage.write_manifest(manifest)
    chunks = [range(i, min(i + chunk_size, len(items))) for i in range(0, len(items), chunk_size)]
    done = [k for k in range(len(chunks)) if _shard(stage, k).is_file()]
    if done and on_resume:
        on_resume(sum(len(chunks[k]) for k in done))
    for k, chunk in enumerate(chunks):
        if _shard(stage, k).is_file():
            continue
        t0 = time.time()
        rows = process([items[i] for i in chunk])
        write_atomic(_shard(stage, k), "".join(dumps_row(r) + "\n" for r in rows))
        manifest["seconds"] += time.time() - t0
        manifest["shards_done"] = k + 1
        stage.write_manifest(manifest)
    n = _assemble(stage, len(chunks))
    manifest.update(status="complete", rows=n, output=OUTPUT,
                    output_sha256=sha256_file(stage.output), finished=time.time())
    stage.write_manifest(manifest)
    # Compute time across all attempts (a resumed stage adds up its runs), not model loading.
    return StageResult(stage.name, stage.output, n, manifest["seconds"], skipped=False)


def sharded_fingerprint(stage: StageDir, config: dict[str, Any], inputs: dict[str, str],
                        n_items: int, chunk_size: int) -> str:
    """What decides whether a sharded step's output can be reused."""
    return sha256_json({"stage": stage.name, "config": config, "inputs": inputs,
                        "items": n_items, "chunk_size": chunk_size})


def model_identity(name: str) -> str:
    """What a stage's fingerprint records for a model: the content hash of a local folder's
    weights and configs (so a retrained model at the same path invalidates what was made with
    the old one), or the name itself for a built-in name or hub id."""
    p = Path(name).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".json"))
        return sha256_json({f.name: sha256_file(f) for f in files})
    return name


def run_model_stage(stage: StageDir, *, config: dict[str, Any], inputs: dict[str, str],
                    items: Sequence[Any], chunk_size: int, get_backend: Callable[[], Any],
                    work: Callable[[Any, Sequence[Any], Callable[[int], None]], list[dict]],
                    total: int, unit: str, per_item: int = 1,
                    log: Callable[[str], None] = print) -> StageResult:
    """`run_sharded` for a stage that calls a model: the backend is loaded on the first chunk
    that needs work (a finished stage loads no model), and a progress bar counts `total`
    units; `work(backend, chunk, advance)` advances it, and resumed chunks count `per_item`
    units per item."""
    from constitutional.progress import progress_bar

    fingerprint = sharded_fingerprint(stage, config, inputs, len(items), chunk_size)
    if stage.is_complete(fingerprint):
        # reused whole: no bar, which would stand at 0/N as if nothing had been done
        return run_sharded(stage, config=config, inputs=inputs, items=items,
                           chunk_size=chunk_size, process=lambda chunk: [], log=log)
    backend = None
    with progress_bar(stage.name, total, unit=unit) as advance:
        def process(chunk: Sequence[Any]) -> list[dict]:
            nonlocal backend
            backend = backend or get_backend()
            return work(backend, chunk, advance)

        return run_sharded(stage, config=config, inputs=inputs, items=items,
                           chunk_size=chunk_size, process=process,
                           on_resume=lambda n: advance(n * per_item), log=log)


def _shard(stage: StageDir, k: int) -> Path:
    return stage.shards / f"{k:05d}.jsonl"


def _assemble(stage: StageDir, n_chunks: int) -> int:
    parts = [_shard(stage, k).read_text(encoding="utf-8") for k in range(n_chunks)]
    text = "".join(parts)
    write_atomic(stage.output, text)
    return text.count("\n")


def read_output(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
