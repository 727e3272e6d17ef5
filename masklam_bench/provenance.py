"""What a run was made with: its identity (everything that changes its result) and the code's version.

A run folder records its identity when it starts; a later command whose identity differs (another
dataset, an edited method, other settings) is refused instead of resuming stages made with the old
ones. The result file repeats the identity together with the suite's git commit.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import io
import json
import subprocess
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

from masklam_bench.errors import UserError
from masklam_bench.fileio import atomic_write_json, load_run_json

IDENTITY_FILE = "identity.json"
"""The file in a run folder that records what the run is made with."""
RUN_LOCK_FILE = ".run.lock"
"""The file a process holding a run folder keeps locked (``flock``)."""
LATE_ENTRIES = ("cpu_threads", "compiled", "sam_masks_sha256", "harness_sha256")
"""Identity entries added on 2026-12-04: run folders recorded before them are checked without."""

_SHARED_MODULES = ("masklam_bench.baselines.networks", "masklam_bench.baselines.policy")
"""Modules every method's result depends on besides its own class hierarchy."""

HARNESS_MODULES = ("masklam_bench.runner", "masklam_bench.sampling", "masklam_bench.metrics",
                   "masklam_bench.augment", "masklam_bench.dataset", "masklam_bench.mask_sources",
                   "masklam_bench.envs")
"""The suite's code that a run's numbers pass through besides the method's (stages, batches,
probe, augmentation, data loading, mask corruption, and the environments of the rollouts); a
package stands for every module file in it."""


def _sha256_of_files(paths: list[Path],
                     content: Callable[[Path], bytes] = Path.read_bytes) -> str:
    """sha256 over each file's name and ``content`` (its bytes by default), in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(content(path))
    return digest.hexdigest()


def method_source_files(cls: type) -> list[Path]:
    """Source files of ``cls``, of the classes it inherits from, and of the shared networks, in
    the order of their module names (so that where the package is installed, as a wheel or
    editable from a checkout, or where a plug-in's file lies, does not change the hash)."""
    import importlib

    files = {klass.__module__: Path(inspect.getsourcefile(klass)).resolve()
             for klass in cls.__mro__
             if klass.__module__ not in ("builtins", "abc") and _has_source(klass)}
    for name in _SHARED_MODULES:
        files[name] = Path(inspect.getsourcefile(importlib.import_module(name))).resolve()
    return _unique_in_key_order(files)


def _unique_in_key_order(files: dict[str, Path]) -> list[Path]:
    """The files of ``files`` sorted by key, each once."""
    return list(dict.fromkeys(files[key] for key in sorted(files)))


def _has_source(klass: type) -> bool:
    try:
        return inspect.getsourcefile(klass) is not None
    except TypeError:
        return False


def method_sha256(cls: type) -> str:
    """sha256 over :func:`method_source_files`: it changes whenever the method's code does."""
    return _sha256_of_files(method_source_files(cls))


def harness_files() -> list[Path]:
    """Source files of :data:`HARNESS_MODULES` (a package's every module), in the order of their
    module names, which does not depend on where or how the suite is installed."""
    import importlib

    files: dict[str, Path] = {}
    for name in HARNESS_MODULES:
        path = Path(inspect.getsourcefile(importlib.import_module(name))).resolve()
        if path.name == "__init__.py":
            files.update({f"{name}.{module.stem}": module for module in path.parent.glob("*.py")})
        else:
            files[name] = path
    return _unique_in_key_order(files)


def harness_sha256() -> str:
    """sha256 over the code of :func:`harness_files`, without comments, docstrings or layout.

    A run folder records it, so that a run never resumes on stages made by other stage, sampling,
    probe or environment code; the code is hashed as its tokens (:func:`code_tokens`), so editing
    a comment or a docstring, re-indenting, or breaking a line inside brackets keeps runs
    resumable.
    """
    return _sha256_of_files(harness_files(), lambda path: code_tokens(path.read_bytes()).encode())


def code_tokens(source: bytes) -> str:
    """Python ``source`` as its tokens, one logical line per line, without comments, blank lines,
    indentation widths or bare string statements (docstrings, and those under constants).

    Tokens rather than ``ast``: CPython 3.11's ``ast.parse`` can fail with "AST constructor
    recursion depth mismatch" inside a long-running process (seen in the test suite).
    """
    lines, line = [], []
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            lines.append(tokenize.tok_name[tok.type])
        elif tok.type == tokenize.NEWLINE:
            if line and not all(t.type == tokenize.STRING for t in line):
                lines.append(" ".join(t.string for t in line))
            line = []
        else:
            line.append(tok)
    return "\n".join(lines)


def git_state() -> dict[str, Any]:
    """The suite's git commit and whether tracked files differ from it (None outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def recorded_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity a run folder recorded (``identity.json``), or None if it has none."""
    path = run_dir / IDENTITY_FILE
    if not path.exists():
        return None
    return load_run_json(path, "delete the run folder to start the run again")


def check_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Record ``identity`` in a new run folder, or refuse one that was started with another.

    Raises UserError (a ValueError) naming each differing entry and what to do.
    """
    identity = flatten(identity)
    path = run_dir / IDENTITY_FILE
    stages = [p for p in run_dir.glob("*")
              if p.name not in (IDENTITY_FILE, "config.json", RUN_LOCK_FILE)]
    old = recorded_identity(run_dir)
    if old is None and not stages:
        atomic_write_json(path, identity)
        return
    if old is None:
        old = {"(recorded)": "nothing: the folder predates identity records"}
    # Entries recorded since a later version: a folder that predates one is not refused for it.
    identity = {k: v for k, v in identity.items() if k in old or k not in LATE_ENTRIES}
    if old == identity:
        return
    diffs = [f"{key}: {_short(old.get(key))} then, {_short(identity.get(key))} now"
             for key in sorted(set(old) | set(identity)) if old.get(key) != identity.get(key)]
    raise UserError(
        f"{run_dir} holds stages made with other inputs ({'; '.join(diffs)}). Delete that folder "
        "to redo the run, or pass another --runs-root.")


_held: dict[str, Any] = {}
"""Folders this process holds: resolved path of the lock file -> the open, locked file."""


def lock_run_folder(run_dir: Path) -> None:
    """Hold ``run_dir`` for this process, or refuse: two processes on one run folder (a sweep
    started again while its jobs still run) would build stages on each other's half-made ones.

    Holding a folder this process already holds is a no-op; :func:`unlock_run_folder` releases
    it, and so does the end of the process.
    """
    lock_folder(run_dir, RUN_LOCK_FILE,
                f"{run_dir} is in use by another process (a run or sweep job of the same run, "
                "still going); wait for it to end or stop it, then run again.")


def unlock_run_folder(run_dir: Path) -> None:
    """Release a folder :func:`lock_run_folder` holds (nothing if it holds none)."""
    unlock_folder(run_dir, RUN_LOCK_FILE)


def lock_folder(folder: Path, lock_name: str, busy: str) -> None:
    """Hold ``folder`` for this process through an ``flock`` on ``folder/lock_name``, or raise a
    UserError saying ``busy``. A no-op if this process holds it already. ``flock`` locks: on a
    network file system they hold only where it supports them (NFSv4 does)."""
    key = str((Path(folder) / lock_name).resolve())
    if key in _held:
        return
    lock = open(key, "a")  # noqa: SIM115 - held open until released
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(busy) from None
    _held[key] = lock


def unlock_folder(folder: Path, lock_name: str) -> None:
    """Release a folder :func:`lock_folder` holds under ``lock_name`` (nothing if it holds none)."""
    lock = _held.pop(str((Path(folder) / lock_name).resolve()), None)
    if lock is not None:
        lock.close()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, so a difference names the exact setting."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:12] + "..."
