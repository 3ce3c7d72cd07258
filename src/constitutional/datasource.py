"""Where user rows come from: a JSONL file, or anything `datasets` reads.

Every option that takes a data file (prompts, pairs, comparisons, helpful data, PMP data,
benchmarks, SFT rows) names a *source*, read here into plain dicts:

- a JSONL file (`.jsonl`, or any name `datasets` has no reader for): read line by line, so a
  bad row is named by its line, as always;
- a `.json` file holding either JSON lines or one JSON array of objects;
- a `.parquet`, `.arrow` or `.csv` file, read with `datasets`;
- a folder written by `Dataset.save_to_disk` (read with `load_from_disk`), or a folder of data
  files (read with `load_dataset(folder)`, which follows a dataset card's `configs`);
- a hub dataset id, `owner/name`, with an optional split and config: `owner/name:split` or
  `owner/name:config:split` (for users with a network; `HF_HUB_OFFLINE=1` refuses it).

A folder or a hub id may name its split (and config) the same way: `export/labelled:train`.
Rows from `datasets` are numbered from 1 in errors (`file:ROW: field: ...`), and a column a row
does not have (`None` in a table that unites several shapes) is left out of that row, so
validation sees what the row holds. `digest` is the fingerprint of a source's content: a file's
sha256 (the same number stage fingerprints used before), a folder's files, or a hub dataset's
rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from constitutional.errors import InputError
from constitutional.jsonio import read_jsonl, read_text, sha256_file, sha256_json

_DATASETS_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Source:
    """One data source: `kind` is jsonl, json-array, file (parquet/arrow/csv), disk (a
    `save_to_disk` folder), folder (data files) or hub."""
    spec: str
    kind: str
    path: Path | None = None
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return self.spec


def source(spec: str | Path) -> Source:
    """What `spec` names (nothing is read yet but a folder's listing)."""
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return _file_source(text, path)
    if path.is_dir():
        return Source(text, _folder_kind(path), path)
    # `folder:split` / `folder:config:split`, then a hub id with the same suffixes
    parts = text.split(":")
    for n in (1, 2):
        head = ":".join(parts[:-n])
        if len(parts) > n and head and Path(head).is_dir():
            cfg, split = (None, parts[-1]) if n == 1 else (parts[-2], parts[-1])
            return Source(text, _folder_kind(Path(head)), Path(head), cfg, split)
    if _HUB_ID.fullmatch(parts[0]) and len(parts) <= 3 and \
            Path(parts[0]).suffix.lower() not in {".jsonl", ".json", *_DATASETS_SUFFIXES}:
        cfg, split = (None, None) if len(parts) == 1 else \
            (None, parts[1]) if len(parts) == 2 else (parts[1], parts[2])
        return Source(text, "hub", None, cfg, split)
    raise InputError("file not found", path=text)


def _file_source(text: str, path: Path) -> Source:
    suffix = path.suffix.lower()
    if suffix in _DATASETS_SUFFIXES:
        return Source(text, "file", path)
    if suffix == ".json" and _first_char(path) == "[":
        return Source(text, "json-array", path)
    return Source(text, "jsonl", path)


def _first_char(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head[:1].decode("latin-1")


def _folder_kind(path: Path) -> str:
    saved = (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    return "disk" if saved else "folder"


def read_rows(spec: str | Path | Source) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, row) for every row of the source; bad input raises InputError."""
    src = spec if isinstance(spec, Source) else source(spec)
    if src.kind == "jsonl":
        yield from read_jsonl(src.path)
    elif src.kind == "json-array":
        yield from _json_array(src)
    else:
        for i, row in enumerate(_dataset(src), start=1):
            yield i, {k: v for k, v in row.items() if v is not None}


def _json_array(src: Source) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(read_text(src.path))
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", path=src.spec,
                         line=e.lineno) from None
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}",
                             path=src.spec, line=i)
        yield i, obj


def _dataset(src: Source):
    """The `datasets.Dataset` a non-JSONL source names (one split)."""
    try:
        import datasets
    except ImportError:
        raise InputError("reading this needs the `datasets` package (pip install "
                         "'constitutional[models]')", path=src.spec) from None
    datasets.disable_progress_bars()
    try:
        if src.kind == "disk":
            ds = datasets.load_from_disk(str(src.path))
        elif src.kind == "file":
            ds = datasets.load_dataset(_DATASETS_SUFFIXES[src.path.suffix.lower()],
                                       data_files=str(src.path))
        else:
            target = str(src.path) if src.kind == "folder" else src.spec.split(":")[0]
            ds = datasets.load_dataset(target, src.config)
    except Exception as e:   # the library's own errors: no network, no such dataset, no files
        where = "the hub" if src.kind == "hub" else "here"
        raise InputError(f"cannot load a dataset from {where}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}", path=src.spec) from None
    return _one_split(ds, src)


def _one_split(ds, src: Source):
    import datasets

    if not isinstance(ds, datasets.DatasetDict):
        if src.split:
            raise InputError(f"split '{src.split}' named, but this is one dataset with no "
                             "splits", path=src.spec)
        return ds
    if src.split:
        if src.split not in ds:
            raise InputError(f"no split '{src.split}' (have: {', '.join(ds)})", path=src.spec)
        return ds[src.split]
    if len(ds) == 1:
        return next(iter(ds.values()))
    if "train" in ds:
        return ds["train"]
    raise InputError(f"several splits ({', '.join(ds)}): name one as SOURCE:SPLIT",
                     path=src.spec)


def digest(spec: str | Path | Source) -> str:
    """A fingerprint of the source's content, for stage fingerprints."""
    src = spec if isinstance(spec, Source) else source(spec)
    if src.path is not None and src.path.is_file():
        return sha256_file(src.path)
    if src.kind in ("disk", "folder"):
        files = sorted(p for p in src.path.rglob("*") if p.is_file())
        return sha256_json({"split": [src.config, src.split],
                            "files": {str(p.relative_to(src.path)): sha256_file(p)
                                      for p in files}})
    return sha256_json([row for _, row in read_rows(src)])


def to_dataset(rows: list[dict[str, Any]]):
    """Rows as a `datasets.Dataset` with every column any row has (`Dataset.from_list`
    takes its columns from the first row alone and would drop the rest)."""
    import datasets

    datasets.disable_progress_bars()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})
