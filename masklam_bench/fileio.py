"""Atomic file writes and safe checkpoint reads.

Every result, checkpoint, dataset file, log and table the suite writes goes through
:func:`atomic_path` (TensorBoard's event files, which its ``SummaryWriter`` appends to, are the
exception): the content is written to a temporary name in the destination's folder and
renamed over the destination only once complete, so a reader (or a resumed run) sees the old file or
the new one, never half of one. A failure (or Ctrl-C, or a kill) mid-write leaves the destination as
it was.

Every checkpoint is read back with :func:`load_checkpoint`: ``torch.load(weights_only=True)``, which
builds tensors and plain Python values only, plus the few NumPy types our checkpoints hold. A file
that holds anything else is refused before any of it runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from masklam_bench.errors import CheckpointError

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


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` and below when a
    process was killed outright (SIGKILL, power loss) mid-write; return them.

    Only for a folder no other process writes to (a run folder its lock holds)."""
    stale = sorted(p for p in Path(folder).rglob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


def atomic_write_csv(path: str | os.PathLike, fieldnames: Sequence[str],
                     rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` under a header of ``fieldnames`` as CSV (``csv.DictWriter``) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _checkpoint_globals() -> list[Any]:
    """The non-torch types our checkpoints hold, for ``torch.load(weights_only=True)``.

    Only NumPy's legacy ``RandomState.get_state()``: the SAC trainer stores each env's
    ``("MT19937", uint32 array, pos, has_gauss, cached_gaussian)``, and a uint32 array pickles as
    these four. ``_reconstruct`` makes an empty array of an allow-listed class (``ndarray``) only.
    """
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(?P<reason>[^\n]*?)(?:\. |\n|$)")
"""The one line of torch's weights-only refusal that says what it met."""
_REFUSED_GLOBAL = re.compile(r"GLOBAL (?P<name>\S+) was not an allowed global")
"""The class or function a refused file pickles, in torch's refusal."""


def load_run_json(path: str | os.PathLike, hint: str = "delete it to redo the stage") -> Any:
    """A JSON file of a run folder; one that is damaged (hand-edited, or written by something
    else) is a clear error with what to do, as a damaged checkpoint is.

    Raises:
        CheckpointError: ``<path> is unreadable (<why>); <hint>.``
    """
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is unreadable ({err}); {hint}.") from None


def load_checkpoint(path: str | os.PathLike, hint: str = "delete it to redo the stage",
                    map_location: str = "cpu") -> Any:
    """Load a checkpoint the suite wrote, safely; a file that will not load is a clear error.

    ``torch.load(path, weights_only=True)`` with only :func:`_checkpoint_globals` allowed besides
    torch's own, so a file that pickles any other class or function (a damaged file, or not one
    of ours) is refused before anything in it runs.

    Raises:
        CheckpointError: ``Checkpoint <path> is unreadable (<why>); <hint>.``
    """
    import torch

    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any unpickling failure means the same thing
        text = str(err)
        refused, reason = _REFUSED_GLOBAL.search(text), _WEIGHTS_ONLY_REASON.search(text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if refused:
            why = (f"it holds {refused['name']}, and a checkpoint of this suite holds only "
                   "tensors, plain values and NumPy RNG states; a method's state_dict() that "
                   "holds anything else makes such files every time")
        else:
            why = reason["reason"] if reason else (lines[0] if lines else type(err).__name__)
        raise CheckpointError(f"Checkpoint {path} is unreadable ({why}); {hint}.") from err
