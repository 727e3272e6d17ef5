"""Result files as a pandas DataFrame: one row per run, nested fields flattened into columns.

``load_results("leaderboards/results")`` reads the same validated records as the leaderboard
(``leaderboard.read_records``), so a malformed file is reported by name (a warning) and skipped,
exactly as ``masklam-bench leaderboard`` skips it. Nested objects become dotted columns, e.g.
``metrics.probe_nmse`` or ``config.preset.train.lam_steps``; lists (per-episode returns) stay
lists in one cell.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

import pandas as pd

from masklam_bench import leaderboard

SEPARATOR = "."
"""Joins the keys of a nested field into a column name."""

_DERIVED = {"_path": "path", "_dim": "dim"}
"""The leaderboard's derived fields kept as columns: the file's relative path and the latent dim
it is compared at (``leaderboard.NO_DIM`` where the latent is the true action)."""


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level: ``{"a": {"b": 1}}`` becomes ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + SEPARATOR))
        else:
            flat[name] = value
    return flat


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """One run's columns: its JSON flattened, its protocol, path and compared latent dim."""
    public = {k: v for k, v in record.items() if not k.startswith("_")}
    row = {**flatten(public), "protocol": record["_table"].protocol}
    row.update({column: record[key] for key, column in _DERIVED.items()})
    return row


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Validated records (``leaderboard.read_records``) as a DataFrame, one row per run."""
    return pd.DataFrame([_row(r) for r in records])


def load_results(path: str | os.PathLike = "leaderboards/results") -> pd.DataFrame:
    """Every valid result file under ``path`` as a DataFrame, one row per run.

    Malformed files are skipped with a warning naming each; their problems are also in
    ``frame.attrs["problems"]``.
    """
    records, problems = leaderboard.read_records(path)
    for problem in problems:
        warnings.warn(f"skipped result file {problem}", stacklevel=2)
    frame = records_frame(records)
    frame.attrs["problems"] = problems
    return frame
