"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every result, checkpoint, dataset file and table the suite writes goes through :func:`atomic_path`:
the content is written to a temporary name in the destination's folder and renamed over the
destination only once complete. A failure (or Ctrl-C) mid-write removes the temporary file and leaves
the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

READABLE_MODE = 0o644
"""Permissions of written files (``mkstemp`` would leave 0600; results are meant to be shared)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    The temporary file lives in ``path``'s folder (a rename across file systems is not atomic) and
    starts with a dot, so globs for results skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash cannot leave it empty
            os.fsync(f.fileno())
        os.chmod(tmp, READABLE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    """JSON for the numpy scalars and arrays, paths and sets that configs and metrics hold."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> None:
    """Write ``payload`` as sorted, indented JSON to ``path`` atomically."""
    text = json.dumps(payload, indent=indent, sort_keys=True, default=_json_default)
    atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
