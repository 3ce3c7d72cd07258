"""Reading user JSONL with precise errors, and atomic writes (temp file + rename).

Every artifact the toolkit writes goes through `write_atomic`/`write_jsonl_atomic`, so a reader
never sees half a file: either the old content, the new content, or no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from constitutional.errors import InputError


def not_utf8(path: str | Path, data: bytes, e: UnicodeDecodeError, line: int | None = None,
             line_start: int = 0) -> InputError:
    """The one error for bytes that are not UTF-8: the line, and the byte and its column."""
    if line is None:
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
    return InputError(f"not UTF-8 (byte 0x{data[e.start]:02x} at column "
                      f"{e.start - line_start + 1})", path=str(path), line=line)


def read_text(path: str | Path) -> str:
    """A whole text file, which must be UTF-8 (a BOM is dropped)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, data, e) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found" if not path.exists() else "not a file", path=str(path))
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, raw, e, lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON ({e.msg} at column {e.colno})",
                                 path=str(path), line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}",
                                 path=str(path), line=lineno)
            yield lineno, obj


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [dumps_row(r) + "\n" for r in rows]
    write_atomic(path, "".join(lines))
    return len(lines)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    if not Path(path).is_file():
        raise InputError("file not found" if not Path(path).exists() else "not a file",
                         path=str(path))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seeded_fraction(seed: int, *parts: str) -> float:
    """A fixed number in [0, 1) for (seed, parts): splits that do not move across runs,
    batching or resume."""
    h = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
