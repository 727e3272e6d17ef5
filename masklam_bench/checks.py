"""Argument checks the command line and the library share, each failing with one clear sentence.

The one place these live: ``cli``, the sub-commands the harness modules add (``sweep``, ``curve``,
``masks``, ``gpu-check``) and library code all import them from here. This module imports only
:mod:`masklam_bench.errors` at import time (torch, the env registry and the method registry on
first use), and nothing that imports it is imported back, so it closes no import cycle.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from masklam_bench.errors import UserError


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum``: anything else is a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def parse_int_list(text: str, flag: str, minimum: int = 0, example: str = "64,8192") -> list[int]:
    """Parse ``"64,8192"`` into ``[64, 8192]``, with one clear sentence for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values) or len(set(values)) != len(values):
        raise UserError(
            f"{flag} must be a comma-separated list of distinct integers >= {minimum}, "
            f"e.g. {flag} {example}; got {text!r}."
        )
    return values


MAX_LATENT_DIM = 65_536
"""The largest latent size accepted (the papers use 32..8192; a 65,536-wide dense latent is
already several GB of weights and optimiser state)."""


def parse_dims(text: str, flag: str = "--dims") -> list[int]:
    """Latent sizes ``"64,8192"``: distinct integers from 1 to :data:`MAX_LATENT_DIM`."""
    dims = parse_int_list(text, flag, minimum=1)
    if max(dims) > MAX_LATENT_DIM:
        raise UserError(f"{flag}: {max(dims)} is above the largest latent size accepted "
                        f"({MAX_LATENT_DIM}); the papers use 32..8192.")
    return dims


def positive_float(text: str) -> float:
    """An argparse ``type`` for a finite number above 0: anything else is a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def parse_envs(text: str) -> list[str]:
    """Parse ``--envs cheetah,walker`` (short or full task names, or registered ids) into tasks."""
    from masklam_bench.envs import get_task, parse_env_id

    tasks = []
    for name in (p.strip() for p in text.split(",")):
        try:
            # A registered id ends in its version (ID and clean ids are v0, OOD ids v1).
            is_id = re.search(r"-v\d+$", name) is not None
            task = parse_env_id(name)[0] if is_id else get_task(name)
        except UserError as err:
            raise UserError(f"--envs: {err}") from None
        tasks.append(task.name)
    return list(dict.fromkeys(tasks))


def parse_overrides(items: Sequence[str], labels: int | None) -> dict[str, int | float | str]:
    """``--set KEY=VALUE`` (repeatable) and ``--labels N`` as one dict of preset overrides."""
    from masklam_bench.presets import parse_override

    overrides: dict[str, int | float | str] = dict(parse_override(item) for item in items)
    if labels is not None:
        overrides["data.labelled_transitions"] = labels
    return overrides


def check_device(device: str) -> str:
    """Return ``device`` if it names a CPU or an available CUDA device, else a clear error."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N; got {device!r}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but PyTorch sees no CUDA device.")
    return device


def check_output_folder(path: str | os.PathLike, flag: str, shown: str | None = None) -> None:
    """Refuse, before any work, a folder a command would write into but cannot make or write:
    one that is a file, or sits under a file or a broken link, or whose nearest existing folder
    is read-only. Nothing is created (a dry run leaves no folder behind). The path is taken as
    written, as the writes take it (``~`` is the shell's to expand). ``shown`` is what the
    message names as the flag's value (default ``path``)."""
    shown = str(path) if shown is None else shown
    folder = Path(path)
    try:
        for existing in (folder, *folder.parents):  # a relative path ends in ".", which exists
            if existing.exists():
                break
            if existing.is_symlink():
                raise UserError(f"{flag} {shown}: {existing} is a link to nothing.")
    except OSError as exc:  # a folder on the way that cannot be searched, say
        raise UserError(f"{flag} {shown}: {exc.strerror or exc}.") from None
    if not existing.is_dir():
        where = "" if existing == Path(shown) else f": {existing}"
        raise UserError(f"{flag} {shown}{where} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown}: cannot write in {existing} (permission denied).")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work, a file a command would write but cannot: a path that is a folder,
    or whose folder :func:`check_output_folder` refuses."""
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give the path of a file to write.")
    check_output_folder(Path(path).parent, flag, shown=str(path))


def check_declared_outputs(args: Any) -> None:
    """Check the output paths a sub-command declares with ``set_defaults(output_folders=(dest,
    ...), output_files=(dest, ...))`` (argparse destinations; unset ones are skipped), so that a
    path that cannot be written is refused before the command's work, not after it."""
    for dests, check in ((getattr(args, "output_folders", ()), check_output_folder),
                         (getattr(args, "output_files", ()), check_output_file)):
        for dest in dests:
            if getattr(args, dest, None) is not None:
                check(getattr(args, dest), "--" + dest.replace("_", "-"))


def method_class(name: str) -> type:
    """The method registered as ``name``, or the ``module:Class`` it names; else a UserError.

    The registry (``baselines/``, whose files are hashed into results) reports an unknown name or
    an unimportable plug-in as ``ValueError``/``ImportError``; they become the suite's error here.
    """
    from masklam_bench.baselines import available_methods, get_method

    try:
        cls = get_method(name)
    except (ValueError, ImportError) as err:
        raise UserError(str(err)) from None
    if ":" in name and cls.name in available_methods() and get_method(cls.name) is not cls:
        # Its results would be labelled, and pooled on the leaderboard, as the built-in's.
        raise UserError(f"{name} calls itself {cls.name!r} (its `name`, declared or inherited), "
                        f"the name of a built-in method; set `name = \"...\"` in the class to a "
                        f"name of its own.")
    return cls


__all__ = [
    "MAX_LATENT_DIM",
    "check_declared_outputs",
    "check_device",
    "check_output_file",
    "check_output_folder",
    "int_at_least",
    "method_class",
    "parse_dims",
    "parse_envs",
    "parse_int_list",
    "parse_overrides",
    "positive_float",
]
