"""The leaderboard: result files of single runs in, Markdown tables, CSVs and plots out.

Each run writes one JSON file (to ``results/`` by default); the committed ones are copied by hand to
``leaderboards/results/``, which the leaderboard reads unless told otherwise. This module validates
them (a malformed file is named and skipped, never merged), summarises seeds per task (probe
columns: a mean with a Student-t interval over seeds; return columns: a mean with a Student-t
interval over all episodes of all seeds), summarises tasks through rliable
(``masklam_bench.aggregate``: IQM, mean and optimality gap with stratified-bootstrap intervals,
probability of improvement of every pair of rows, performance profiles of gated returns), and
regenerates ``leaderboards/README.md``, ``<task>.csv``, ``summary.csv``, ``improvement.csv``,
``<preset>_<task>_{nmse,return}.png`` and ``<preset>_d<dim>_{poi_*,profile_*}.png``.

Rules (issues 17 and 18):

- Protocols are never mixed. A row's protocol is the hash of its resolved preset
  (``config.preset``, see :func:`protocol_id`) plus its ``--set`` overrides. Main tables hold the
  current protocol of each preset without overrides; any other protocol, any run whose
  distractors played DAVIS-2017 videos instead of the procedural ones, and any run trained in
  float32 instead of bf16 autocast, gets its own section and is never in the main aggregates.
- Returns are gated: they count only where the ``bc-labels`` row (pixel BC on all true actions)
  reaches ``RETURN_GATE``; elsewhere they are shown marked and left out of return aggregates.
- A row whose latent is the true action has no probe and no latent dim: its cells show "–".
- Across tasks, rows are compared only over tasks they all cover; others are shown apart.
- Every interval is named; one sample shows no interval. The oracle's OOD return (it has no OOD
  environment of its own) is marked "same env" and left out of OOD aggregates.

Output is deterministic: regenerating without new results rewrites identical bytes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from masklam_bench import aggregate, metrics, presets
from masklam_bench.envs.backgrounds import DAVIS_VIDEOS, PROCEDURAL_VIDEOS
from masklam_bench.errors import MissingFileError, UserError
from masklam_bench.fileio import atomic_write_bytes

SCHEMA_VERSION = 1
"""Version of the result-file layout this module reads (the runner's ``RESULT_SCHEMA_VERSION``)."""

CONFIDENCE = 0.95
"""Coverage of every interval in the leaderboard."""

BOOTSTRAP_REPS = 2000
"""Stratified-bootstrap replicates per aggregate (rliable's default is 2000)."""

BOOTSTRAP_SEED = 0
"""Fixed seed of every bootstrap, so regenerating gives identical files."""

# Pixel BC on all true actions is the ceiling of every LAM row; below 0.5 a return cannot
# separate methods.
RETURN_GATE = 0.5
"""Least mean normalised ID return of the ``bc-labels`` row for a task's returns to count."""

CEILING_METHOD = "bc-labels"
"""The method whose ID return is the ceiling that gates a task's returns."""

GATE_MARK = "†"
"""Suffix of a return cell that the gate marks as not informative."""

TABLE_ORDER = ("lapo", "masklam", "oracle", "laom", "laom-masked", "laom-labels", "untrained-idm",
               "bc-labels", "bc-labelled")
"""Row order of BENCHMARK.md's per-task tables (built-in methods); other methods follow by name."""

PROTOCOL_ID_CHARS = 8
"""Hex digits of the SHA-256 kept in a protocol id."""

UNKNOWN_PROTOCOL = "unknown"
"""Protocol id of a result file without ``config.preset``."""

VIDEOS_KEY = "videos"
"""The key under which distractor videos other than the procedural ones (DAVIS-2017, through
``$MASKLAM_DAVIS_DIR``) join a table's overrides text: such runs get a section of their own, like
runs with ``--set`` overrides."""
PRECISION_KEY = "precision"
"""The key under which a run trained in float32 (``config.run.bf16`` false: ``--no-bf16``, or a
CPU without bf16 instructions) joins its table's overrides text: the presets' rows are bf16 runs,
and a float32 run is not ranked among them."""

NO_DIM = 0
"""Latent-dim key of a row whose latent is the true action (it has no latent dim of its own)."""

REGENERATE = "masklam-bench leaderboard"
"""The command that rewrites the generated files."""

_REQUIRED: dict[str, type] = {
    "schema_version": int, "run_name": str, "task": str, "method": str, "latent_dim": int,
    "seed": int, "preset": str, "metrics": dict,
}
"""Keys every result file must have, with their JSON types."""

_OPTIONAL: dict[str, type] = {
    "method_label": str, "env_id": str, "ood_env_id": str, "config": dict, "versions": dict,
    "env_versions": dict, "timings": dict, "device": str, "machine": str, "created": str,
    "overrides": dict, "latent_is_action": bool, "dataset": dict,
}
"""Keys that may be absent (or null) but, when present, must have these types."""

_NUMERIC_METRICS = (
    "probe_nmse", "probe_nmse_untrained", "distractor_nmse", "distractor_nmse_untrained",
    "return_id", "return_ood", "normalized_return_id",
    "normalized_return_ood", "ref_min_score", "ref_max_score",
)
"""Metrics the leaderboard reads: each a finite number or null (other metrics pass through)."""

_EPISODE_LISTS = ("return_id_episodes", "return_ood_episodes")
"""Per-episode raw returns the leaderboard reads: each a list of finite numbers or null."""

_PROBE_METRICS = ("probe_nmse", "probe_nmse_untrained")
"""Metrics of the linear probe: undefined for a row whose latent is the true action."""

_RETURN_METRICS = ("normalized_return_id", "normalized_return_ood", "return_per_bc")
"""Normalised returns: gated, aggregated across tasks, with intervals over episodes per task."""

_RAW_RETURNS = ("return_id", "return_ood")
"""Raw returns: in the CSVs per task only (their scale differs between tasks)."""

_SEED_METRICS = _PROBE_METRICS + _RETURN_METRICS + _RAW_RETURNS
"""Per-run metrics summarised over seeds (the CSVs' main columns)."""

_EPISODE_SOURCE = {"normalized_return_id": ("return_id_episodes", "normalized_return_id"),
                   "normalized_return_ood": ("return_ood_episodes", "normalized_return_ood"),
                   "return_per_bc": ("return_id_episodes", "return_id")}
"""Per return metric: the episode list it is computed from and the per-run metric it pools."""


@dataclasses.dataclass(frozen=True)
class _Column:
    """One metric in the Markdown tables: its key, heading and kind ("probe" or "return")."""

    key: str
    heading: str
    kind: str


_COLUMNS = (
    _Column("probe_nmse", "Probe NMSE ↓", "probe"),
    _Column("probe_nmse_untrained", "Untrained-IDM NMSE (control)", "probe"),
    _Column("normalized_return_id", "Norm. return ID ↑", "return"),
    _Column("normalized_return_ood", "Norm. return OOD ↑", "return"),
    _Column("return_per_bc", "Return / bc-labels ID ↑", "return"),
)
"""The metrics in the Markdown tables and aggregates, in order."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Task and preset names become file names, so they are restricted to these characters."""

_RESERVED_TASKS = frozenset({"summary", "README"})
"""Task names that would collide with the leaderboard's own files."""


class _TableId(NamedTuple):
    """A set of rows that may be compared: one preset, one protocol, one set of overrides."""

    preset: str
    protocol: str
    overrides: str


class _Key(NamedTuple):
    """One row of a per-task table; ``dim`` is ``NO_DIM`` for a row without a latent dim."""

    table: _TableId
    task: str
    label: str
    dim: int


# ---------------------------------------------------------------------------------------------
# Protocols


def protocol_id(record: dict[str, Any]) -> str:
    """First 8 hex digits of SHA-256 of ``json.dumps(config.preset, sort_keys=True)``; or "unknown"
    when the record has no ``config.preset``."""
    config = record.get("config")
    preset = config.get("preset") if isinstance(config, dict) else None
    if preset is None:
        return UNKNOWN_PROTOCOL
    digest = hashlib.sha256(json.dumps(preset, sort_keys=True).encode("utf-8")).hexdigest()
    return digest[:PROTOCOL_ID_CHARS]


def current_protocol(preset_name: str) -> str | None:
    """The protocol id this code's preset of that name gives, or None when it has no such preset."""
    try:
        preset = presets.get_preset(preset_name)
    except UserError:
        return None
    return protocol_id({"config": {"preset": presets.preset_record(preset)}})


def overrides_text(overrides: dict[str, Any] | None) -> str:
    """``--set`` overrides as ``k=v, k=v`` sorted by key; empty without overrides."""
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                     for k, v in sorted((overrides or {}).items()))


def _is_main(table: _TableId) -> bool:
    """Whether a table holds the current protocol of its preset without overrides."""
    return not table.overrides and table.protocol == current_protocol(table.preset)


# ---------------------------------------------------------------------------------------------
# Reading and validating results


def read_records(results_dir: str | os.PathLike = "leaderboards/results",
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Valid result records under ``results_dir`` (recursively, ``*.json``) and the problems.

    Each problem is ``"<path relative to results_dir>: <reason>"``; its file is skipped. A file
    repeating the (preset, protocol, overrides, task, method_label, latent dim, seed) of an
    earlier one (in path order) is skipped as a duplicate. Returned records are the parsed JSON
    with ``method_label`` defaulting to ``method``, every leaderboard metric present (None when
    missing), normalised returns filled in from raw returns and reference scores where the run
    left them out, ``_path`` (the relative path) and the derived ``_table``, ``_dim``,
    ``_no_probe`` and ``_same_env`` (see ``_annotate``).
    """
    root = Path(results_dir)
    if root.is_file():
        raise UserError(f"{root} is a file; pass the folder of result JSON files (--results DIR)"
                        f", e.g. {root.parent}.")
    if not root.is_dir():
        raise MissingFileError(f"no results directory at {root}; pass --results DIR with the "
                                "folder of result JSON files (`run` writes them to results/ "
                                "unless --out; the committed ones are in leaderboards/results).")
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[tuple, str] = {}
    declared: dict[str, tuple[str | None, str]] = {}  # method label: (plug-in path, first file)
    for path in sorted(p for p in root.rglob("*.json") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        try:
            record = _validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{rel}: cannot be read ({err})")
            continue
        except json.JSONDecodeError as err:
            problems.append(f"{rel}: not valid JSON ({err})")
            continue
        except _Malformed as err:
            problems.append(f"{rel}: {err}")
            continue
        label, plugin = record["method_label"], record.get("method_path")
        first = declared.setdefault(label, (plugin, rel))
        if first[0] != plugin:
            problems.append(f"{rel}: method {label!r} here is {_declarer(plugin)}, but in "
                            f"{first[1]} it is {_declarer(first[0])}; one row cannot hold two "
                            "methods: give the plug-in class a `name` of its own")
            continue
        key = (_key(record), record["seed"])
        if key in seen:
            problems.append(f"{rel}: duplicate of {seen[key]} (same preset, protocol, overrides, "
                            "task, method_label, latent_dim and seed); keep one of them")
            continue
        seen[key] = rel
        record["_path"] = rel
        records.append(record)
    return records, problems


def _declarer(plugin: str | None) -> str:
    return f"the plug-in {plugin}" if plugin else "the built-in one"


class _Malformed(Exception):
    """A result file that cannot be merged; the message says why."""


def _validate(data: Any) -> dict[str, Any]:
    """The record normalised, or _Malformed with the first thing wrong in it."""
    if not isinstance(data, dict):
        raise _Malformed(f"top level is a JSON {type(data).__name__}, not an object")
    missing = [k for k in _REQUIRED if data.get(k) is None]
    if missing:
        raise _Malformed(f"missing required key(s) {', '.join(missing)}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        value = data.get(key)
        if value is not None and not _is_type(value, kind):
            raise _Malformed(f"{key} must be a JSON {_JSON_NAMES[kind]}, got {value!r}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise _Malformed(f"schema_version {data['schema_version']} is not {SCHEMA_VERSION}; "
                         "regenerate it with this version of masklam-bench")
    for key in ("task", "preset"):
        if not _SAFE_NAME.match(data[key]):
            raise _Malformed(f"{key} {data[key]!r} may only use letters, digits, '_', '.', '-'")
    if data["task"] in _RESERVED_TASKS:
        raise _Malformed(f"task name {data['task']!r} is reserved by the leaderboard")
    if data["latent_dim"] < 1:
        raise _Malformed(f"latent_dim must be positive, got {data['latent_dim']}")
    videos = (data.get("dataset") or {}).get("distractor_videos")
    if videos is not None and not (isinstance(videos, str) and _SAFE_NAME.match(videos)):
        raise _Malformed(f"dataset.distractor_videos must be a name such as "
                         f"{PROCEDURAL_VIDEOS!r} or {DAVIS_VIDEOS!r}, got {videos!r}")
    sam = data.get("sam_masks")
    if isinstance(sam, dict) and (sam.get("random_weights") or sam.get("checkpoint") == "random"):
        raise _Malformed("trained on SAM 2 masks of random weights (`masks --checkpoint random`, "
                         "a test of the plumbing, not a result); make the masks with a real "
                         "checkpoint and run again")
    if data.get("mask_source") == "sam2" and not (
            isinstance(sam, dict) and sam.get("random_weights") is False and sam.get("sha256")):
        raise _Malformed("trained on SAM 2 masks but does not record which (sam_masks: their "
                         "file's sha256 and random_weights false); run it again with this "
                         "version of masklam-bench")
    record = dict(data)
    record["method_label"] = data.get("method_label") or data["method"]
    record["metrics"] = _validate_metrics(data["metrics"])
    return _annotate(record)


def _validate_metrics(given: dict[str, Any]) -> dict[str, Any]:
    """The metrics with every read one present (None when missing) and normalised returns filled."""
    found = dict(given)
    for key in _NUMERIC_METRICS:
        value = found.get(key)
        if value is not None and not (_is_type(value, float) and math.isfinite(value)):
            raise _Malformed(f"metrics.{key} must be a finite number or null, got {value!r}")
        found[key] = None if value is None else float(value)
    for key in _EPISODE_LISTS:
        value = found.get(key)
        if value is not None and not (isinstance(value, list) and all(
                _is_type(v, float) and math.isfinite(v) for v in value)):
            raise _Malformed(f"metrics.{key} must be a list of finite numbers or null")
        found[key] = None if value is None else [float(v) for v in value]
    lo, hi = found["ref_min_score"], found["ref_max_score"]
    for split in ("id", "ood"):
        raw, norm = found[f"return_{split}"], f"normalized_return_{split}"
        if found[norm] is None and raw is not None and _has_refs(lo, hi):
            found[norm] = metrics.normalized_return(raw, lo, hi)
    return found


def _has_refs(lo: float | None, hi: float | None) -> bool:
    """Whether reference scores R_random and R_data are both known and distinct."""
    return lo is not None and hi is not None and hi != lo


def recorded_videos(record: dict[str, Any]) -> str:
    """The distractor videos a result record names (``dataset.distractor_videos``);
    :data:`~masklam_bench.envs.backgrounds.PROCEDURAL_VIDEOS` when it names none."""
    videos = (record.get("dataset") or {}).get("distractor_videos")
    return PROCEDURAL_VIDEOS if videos is None else videos


def recorded_bf16(record: dict[str, Any]) -> bool:
    """Whether a result record's run trained under bf16 autocast (``config.run.bf16``); a record
    that does not say is a bf16 run's (every run was, before the precision followed the CPU)."""
    run = (record.get("config") or {}).get("run")
    return not (isinstance(run, dict) and run.get("bf16") is False)


def _annotate(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its table, latent-dim key, no-probe and same-env flags (``_``-prefixed)."""
    no_probe = bool(record.get("latent_is_action")) or record["method"] == CEILING_METHOD
    env, ood = record.get("env_id"), record.get("ood_env_id")
    overrides = dict(record.get("overrides") or {})
    videos = recorded_videos(record)
    if videos != PROCEDURAL_VIDEOS:
        overrides[VIDEOS_KEY] = videos
    if not recorded_bf16(record):
        overrides[PRECISION_KEY] = "float32"
    record["_table"] = _TableId(record["preset"], protocol_id(record), overrides_text(overrides))
    record["_no_probe"] = no_probe
    record["_dim"] = NO_DIM if no_probe else record["latent_dim"]
    record["_same_env"] = env is not None and env == ood
    return record


def _key(record: dict[str, Any]) -> _Key:
    """The row a record belongs to."""
    return _Key(record["_table"], record["task"], record["method_label"], record["_dim"])


_JSON_NAMES = {int: "integer", float: "number", str: "string", dict: "object", bool: "boolean"}


def _is_type(value: Any, kind: type) -> bool:
    """JSON-typed isinstance: booleans are only booleans, integers are numbers."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


# ---------------------------------------------------------------------------------------------
# Summaries


@dataclasses.dataclass(frozen=True)
class _Stat:
    """A summarised metric: point, interval (nan when undefined), samples and runs behind it."""

    point: float
    low: float
    high: float
    n: int
    runs: int


@dataclasses.dataclass(frozen=True)
class _Ceiling:
    """The ``bc-labels`` row of one (table, task): its mean normalised and raw ID return."""

    normalized: float | None = None
    raw: float | None = None

    @property
    def informative(self) -> bool:
        """Whether returns at this (table, task) can separate methods (the gate)."""
        return self.normalized is not None and self.normalized >= RETURN_GATE

    @property
    def ratio_base(self) -> float | None:
        """The raw return that ``Return / bc-labels`` divides by; None when not positive."""
        return self.raw if self.raw is not None and self.raw > 0 else None


@dataclasses.dataclass(frozen=True)
class _Row:
    """One (table, task, method_label, dim): its runs, per-run values and summaries."""

    key: _Key
    runs: list[dict[str, Any]]
    values: dict[str, list[float]]
    seeds: dict[str, _Stat | None]
    episodes: dict[str, _Stat | None]

    @property
    def method(self) -> str:
        """The method of the row's runs."""
        return self.runs[0]["method"]

    @property
    def no_probe(self) -> bool:
        """Whether the row's latent is the true action, so it has no probe."""
        return any(r["_no_probe"] for r in self.runs)

    @property
    def same_env(self) -> bool:
        """Whether the row's OOD return is its ID return (no OOD environment of its own)."""
        return any(r["_same_env"] for r in self.runs)


def _seed_stat(values: list[float]) -> _Stat | None:
    """Mean and Student-t interval over seeds, or None without values."""
    if not values:
        return None
    mean, low, high = metrics.mean_ci(values, CONFIDENCE)
    return _Stat(mean, low, high, len(values), len(values))


def _task_stats(per_task: list[list[float]], reps: int) -> dict[str, _Stat] | None:
    """IQM, mean and optimality gap over all runs of all tasks with rliable's stratified-bootstrap
    intervals (no interval with one run per task), or None without values."""
    per_task = [v for v in per_task if v]
    if not per_task:
        return None
    n_runs = sum(map(len, per_task))
    estimates = aggregate.interval_estimates(per_task, reps, CONFIDENCE, BOOTSTRAP_SEED)
    return {s: _Stat(*estimates[s], n_runs, n_runs) for s in aggregate.STATISTICS}


def _group(records: Iterable[dict[str, Any]]) -> dict[_Key, list[dict[str, Any]]]:
    """Records by row key, keys sorted, runs by seed."""
    groups: dict[_Key, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[_key(r)].append(r)
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups)}


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The non-null values of one metric over runs."""
    return [r["metrics"][key] for r in runs if r["metrics"][key] is not None]


def _ceilings(groups: dict[_Key, list[dict[str, Any]]]) -> dict[tuple[_TableId, str], _Ceiling]:
    """Per (table, task): the ``bc-labels`` row's mean ID returns (empty _Ceiling without one).

    With several ``bc-labels`` rows at a (table, task), the one labelled ``bc-labels`` wins, else
    the first label in sorted order.
    """
    out: dict[tuple[_TableId, str], _Ceiling] = {}
    for key, runs in groups.items():
        spot = (key.table, key.task)
        out.setdefault(spot, _Ceiling())
        if runs[0]["method"] != CEILING_METHOD or (out[spot].normalized is not None
                                                   and key.label != CEILING_METHOD):
            continue
        norm, raw = _values(runs, "normalized_return_id"), _values(runs, "return_id")
        out[spot] = _Ceiling(float(np.mean(norm)) if norm else None,
                             float(np.mean(raw)) if raw else None)
    return out


def _rows(groups: dict[_Key, list[dict[str, Any]]],
          ceilings: dict[tuple[_TableId, str], _Ceiling]) -> dict[_Key, _Row]:
    """Every row summarised: seed statistics for all metrics, episode statistics for returns."""
    return {key: _row(key, runs, ceilings[(key.table, key.task)])
            for key, runs in groups.items()}


def _row(key: _Key, runs: list[dict[str, Any]], ceiling: _Ceiling) -> _Row:
    """One row summarised; probe values are dropped for a row without a probe."""
    no_probe = any(r["_no_probe"] for r in runs)
    values = {m: [] if no_probe and m in _PROBE_METRICS else _values(runs, m)
              for m in _SEED_METRICS if m != "return_per_bc"}
    base = ceiling.ratio_base
    values["return_per_bc"] = [] if base is None else [v / base for v in values["return_id"]]
    seeds = {m: _seed_stat(values[m]) for m in _SEED_METRICS}
    episodes = {m: _episode_stat(runs, m, base) for m in _RETURN_METRICS}
    return _Row(key, runs, values, seeds, episodes)


def _episode_stat(runs: list[dict[str, Any]], metric: str, base: float | None) -> _Stat | None:
    """Mean and Student-t interval over all episodes of all runs that report ``metric``.

    None when no run reports it or one of them left out its episode returns.
    """
    episodes_key, run_key = _EPISODE_SOURCE[metric]
    used = [r["metrics"] for r in runs if r["metrics"][run_key] is not None]
    if metric == "return_per_bc" and base is None:
        return None
    pooled: list[float] = []
    for m in used:
        episodes = m[episodes_key]
        if not episodes:
            return None
        if metric == "return_per_bc":
            pooled += [e / base for e in episodes]
        elif _has_refs(m["ref_min_score"], m["ref_max_score"]):
            pooled += [metrics.normalized_return(e, m["ref_min_score"], m["ref_max_score"])
                       for e in episodes]
        else:
            return None
    if not pooled:
        return None
    mean, low, high = metrics.mean_ci(pooled, CONFIDENCE)
    return _Stat(mean, low, high, len(pooled), len(used))


# --- Across tasks


@dataclasses.dataclass(frozen=True)
class _Aggregate:
    """One row of a cross-task summary: a (table, method_label, dim) over some of its tasks.

    ``values`` holds, per metric, the per-run values of each task it was aggregated over;
    ``stats`` per metric the statistics of ``aggregate.STATISTICS`` (None without values).
    """

    table: _TableId
    label: str
    dim: int
    method: str
    tasks: tuple[str, ...]
    return_tasks: tuple[str, ...]
    compared: bool
    no_probe: bool
    same_env: bool
    values: dict[str, dict[str, list[float]]]
    stats: dict[str, dict[str, _Stat] | None]

    def stat(self, metric: str, statistic: str = "iqm") -> _Stat | None:
        """One statistic of one metric, or None when the metric was not aggregated."""
        found = self.stats.get(metric)
        return None if found is None else found[statistic]


def _compared_tasks(task_sets: Iterable[frozenset[str]]) -> frozenset[str]:
    """The task set compared at one (table, dim): of the rows' own task sets, the one that puts
    the most (row, task) results into the comparison; ties go to more rows, then more tasks."""
    sets = list(task_sets)

    def score(candidate: frozenset[str]) -> tuple[int, int, int]:
        covering = sum(candidate <= s for s in sets)
        return covering * len(candidate), covering, len(candidate)

    return max(sorted(set(sets), key=sorted), key=score)


def _aggregates(rows: dict[_Key, _Row], ceilings: dict[tuple[_TableId, str], _Ceiling],
                reps: int) -> list[_Aggregate]:
    """Per (table, dim, method_label): the statistics over the compared tasks, or over its own
    tasks when it does not cover them (then ``compared`` is False). Sorted by table, dim, label."""
    by_group: dict[tuple[_TableId, int], dict[str, dict[str, _Row]]] = defaultdict(
        lambda: defaultdict(dict))
    for key, row in rows.items():
        by_group[(key.table, key.dim)][key.label][key.task] = row
    out = []
    for table, dim in sorted(by_group):
        per_label = by_group[(table, dim)]
        compared = _compared_tasks(frozenset(t) for t in per_label.values())
        group = []
        for label in sorted(per_label):
            own = per_label[label]
            inside = compared <= own.keys()
            tasks = sorted(compared if inside else own)
            informative = [t for t in tasks if ceilings[(table, t)].informative]
            group.append(_aggregate([own[t] for t in tasks],
                                    [own[t] for t in informative], inside, reps))
        out += _align_metrics(group, reps)
    return out


def _align_metrics(group: list[_Aggregate], reps: int) -> list[_Aggregate]:
    """The compared rows of one (table, dim), each metric aggregated over the same tasks.

    A compared row covers every compared task, but a run may lack a metric on one of them (no
    OOD return, no rollout). Per metric, the rows with values keep only the tasks on which all of
    them have values, so that no row is ranked over fewer (or easier) tasks than its neighbours.
    """
    compared = [a for a in group if a.compared]
    common: dict[str, set[str]] = {}
    for m in _PROBE_METRICS + _RETURN_METRICS:
        having = [set(a.values[m]) for a in compared if a.values[m]]
        common[m] = set.intersection(*having) if having else set()
    out = []
    for a in group:
        if not a.compared:
            out.append(a)
            continue
        values = {m: {t: v for t, v in per.items() if t in common[m]}
                  for m, per in a.values.items()}
        stats = {m: a.stats[m] if values[m] == a.values[m]
                 else _task_stats(list(values[m].values()), reps) for m in values}
        returned = values["normalized_return_id"]
        return_tasks = (tuple(t for t in a.return_tasks if t in returned) if returned
                        else a.return_tasks)
        out.append(dataclasses.replace(a, values=values, stats=stats, return_tasks=return_tasks))
    return out


def _aggregate(task_rows: list[_Row], return_rows: list[_Row], compared: bool,
               reps: int) -> _Aggregate:
    """Statistics of probe metrics over ``task_rows`` and of returns over ``return_rows`` (gated);
    OOD returns leave out rows whose OOD environment is their ID one."""
    first = task_rows[0]
    no_probe = any(r.no_probe for r in task_rows)
    values: dict[str, dict[str, list[float]]] = {
        m: {} if no_probe else {r.key.task: r.values[m] for r in task_rows if r.values[m]}
        for m in _PROBE_METRICS}
    for m in _RETURN_METRICS:
        used = [r for r in return_rows if not (m == "normalized_return_ood" and r.same_env)]
        values[m] = {r.key.task: r.values[m] for r in used if r.values[m]}
    stats = {m: _task_stats(list(per_task.values()), reps) for m, per_task in values.items()}
    return _Aggregate(first.key.table, first.key.label, first.key.dim, first.method,
                      tuple(r.key.task for r in task_rows),
                      tuple(r.key.task for r in return_rows), compared, no_probe,
                      any(r.same_env for r in task_rows), values, stats)


# --- Probability of improvement and performance profiles


_IMPROVEMENT_METRICS = (
    ("probe_nmse", "P(X < Y) probe NMSE", "nmse"),
    ("normalized_return_id", "P(X > Y) norm. return ID", "return-id"),
    ("normalized_return_ood", "P(X > Y) norm. return OOD", "return-ood"),
)
"""Metrics compared pairwise: key, heading (X improves on Y) and the plot's file-name part."""

_PROFILE_METRICS = (("normalized_return_id", "ID", "id"), ("normalized_return_ood", "OOD", "ood"))
"""Returns with performance profiles: key, label and the plot's file-name part."""


@dataclasses.dataclass(frozen=True)
class _Improvement:
    """P(X improves on Y) per metric for one pair of compared rows at one (table, dim)."""

    table: _TableId
    dim: int
    x: str
    y: str
    stats: dict[str, _Stat | None]


def _higher_is_better(metric: str, per_task: dict[str, list[float]]) -> dict[str, list[float]]:
    """Scores for rliable, which expects higher to be better: 1 - NMSE for probe metrics."""
    if metric not in _PROBE_METRICS:
        return per_task
    return {task: [1.0 - v for v in vals] for task, vals in per_task.items()}


def _improvement_stat(x: _Aggregate, y: _Aggregate, metric: str, reps: int) -> _Stat | None:
    """P(X improves on Y) in one metric over the tasks both have values on, or None."""
    tasks = sorted(x.values[metric].keys() & y.values[metric].keys())
    if not tasks:
        return None
    xs, ys = (_higher_is_better(metric, a.values[metric]) for a in (x, y))
    point, low, high = aggregate.probability_of_improvement(
        [xs[t] for t in tasks], [ys[t] for t in tasks], reps, CONFIDENCE, BOOTSTRAP_SEED)
    return _Stat(point, low, high, len(tasks), len(tasks))


def _improvements(aggs: list[_Aggregate], reps: int) -> list[_Improvement]:
    """P(X improves on Y) for every pair of compared rows at the same (table, dim), X < Y by
    label; rows without a latent dim are not compared."""
    out = []
    groups = sorted({(a.table, a.dim) for a in aggs if a.compared and a.dim != NO_DIM})
    for table, dim in groups:
        rows = [a for a in aggs if a.compared and (a.table, a.dim) == (table, dim)]
        for i, x in enumerate(rows):
            for y in rows[i + 1:]:
                stats = {m: _improvement_stat(x, y, m, reps) for m, _, _ in _IMPROVEMENT_METRICS}
                out.append(_Improvement(table, dim, x.label, y.label, stats))
    return out


def _improvement_plots(board: _Board, table: _TableId) -> dict[str, bytes]:
    """rliable's probability-of-improvement plots of one table: {file name: PNG}, per dim and
    metric with at least one estimate."""
    out = {}
    for dim in sorted({i.dim for i in board.improvements if i.table == table}):
        pairs = [i for i in board.improvements if (i.table, i.dim) == (table, dim)]
        for metric, heading, part in _IMPROVEMENT_METRICS:
            found = {(i.x, i.y): i.stats[metric] for i in pairs if i.stats[metric] is not None}
            if found:
                estimates = {pair: (s.point, s.low, s.high) for pair, s in found.items()}
                title = f"{heading}, dim {dim} ({table.preset} preset)"
                out[f"{table.preset}_d{dim}_poi_{part}.png"] = (
                    aggregate.plot_probability_of_improvement(estimates, heading, title))
    return out


def _profile_plots(board: _Board, table: _TableId, reps: int) -> dict[str, bytes]:
    """rliable's performance profiles of normalised returns of one table: {file name: PNG}, per
    dim and return with values (returns are gated, so only tasks past the gate count)."""
    out = {}
    for dim in sorted({a.dim for a in board.aggregates if a.table == table and a.dim != NO_DIM}):
        rows = [a for a in board.aggregates if a.compared and (a.table, a.dim) == (table, dim)]
        for metric, split, part in _PROFILE_METRICS:
            scores = {a.label: list(a.values[metric].values())
                      for a in rows if a.values[metric]}
            if scores:
                profiles, intervals = aggregate.performance_profiles(
                    scores, reps, CONFIDENCE, BOOTSTRAP_SEED)
                title = (f"normalised return {split}, dim {dim} ({table.preset} preset, "
                         f"tasks past the gate)")
                out[f"{table.preset}_d{dim}_profile_{part}.png"] = (
                    aggregate.plot_performance_profiles(profiles, intervals, title))
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def write_leaderboard(results_dir: str | os.PathLike = "leaderboards/results",
                      out_dir: str | os.PathLike = "leaderboards",
                      reps: int = BOOTSTRAP_REPS) -> dict[str, Path]:
    """Regenerate README.md, per-task and summary CSVs and plots; returns {file name: path}.

    ``reps`` is the number of bootstrap replicates of every interval. Raises UserError, writing
    nothing, when there is no valid result file, so a wrong ``results_dir`` never wipes a
    leaderboard.
    """
    records, problems = read_records(results_dir)
    if not records:
        raise UserError(_no_results_message(results_dir, problems))
    return _write_all(records, problems, Path(out_dir), reps, results_dir)


def _no_results_message(results_dir: str | os.PathLike, problems: list[str]) -> str:
    return (f"no valid result files under {results_dir} ({len(problems)} skipped); "
            "nothing written. Run the benchmark first or pass --results DIR.")


@dataclasses.dataclass(frozen=True)
class _Board:
    """Everything the generated files are made of."""

    rows: dict[_Key, _Row]
    ceilings: dict[tuple[_TableId, str], _Ceiling]
    aggregates: list[_Aggregate]
    improvements: list[_Improvement]
    problems: list[str]
    reps: int
    results: str
    """The results folder as given (the README names it where it says how to check a row)."""


def _board(records: list[dict[str, Any]], problems: list[str], reps: int,
           results: str) -> _Board:
    """Every summary of the validated records."""
    groups = _group(records)
    ceilings = _ceilings(groups)
    rows = _rows(groups, ceilings)
    aggs = _aggregates(rows, ceilings, reps)
    return _Board(rows, ceilings, aggs, _improvements(aggs, reps), problems, reps, results)


def _write_all(records: list[dict[str, Any]], problems: list[str], out: Path,
               reps: int = BOOTSTRAP_REPS,
               results: str | os.PathLike = "leaderboards/results") -> dict[str, Path]:
    """Write every leaderboard file from validated records read from ``results``."""
    board = _board(records, problems, reps, Path(results).as_posix())
    rows, ceilings = board.rows, board.ceilings
    written: dict[str, Path] = {}

    def emit(name: str, data: bytes) -> None:
        atomic_write_bytes(out / name, data)
        written[name] = out / name

    for task in sorted({key.task for key in rows}):
        emit(f"{task}.csv", _csv([_csv_row(row, ceilings) for key, row in rows.items()
                                  if key.task == task]))
    summary = [_csv_row(row, ceilings) for row in rows.values()]
    summary += [_csv_aggregate_row(agg, s) for agg in board.aggregates
                for s in aggregate.STATISTICS]
    emit("summary.csv", _csv(summary))
    emit("improvement.csv", _improvement_csv(board.improvements))

    plots: dict[tuple[str, str], list[str]] = {}
    for table, task in sorted({(k.table, k.task) for k in rows if _is_main(k.table)}):
        task_rows = [row for k, row in rows.items() if k.table == table and k.task == task]
        title = f"{task} ({table.preset} preset)"
        for kind, png in _plots(task_rows, title, ceilings[(table, task)]).items():
            name = f"{table.preset}_{task}_{kind}.png"
            emit(name, png)
            plots.setdefault((table.preset, task), []).append(name)
    for table in sorted({k.table for k in rows if _is_main(k.table)}):
        section = {**_improvement_plots(board, table), **_profile_plots(board, table, reps)}
        for name, png in section.items():
            emit(name, png)
            plots.setdefault((table.preset, _SECTION_PLOTS), []).append(name)
    emit("README.md", _readme(board, plots).encode("utf-8"))
    return written


_SECTION_PLOTS = ""
"""Task key under which ``plots`` lists a section's cross-task plots (no task has this name)."""


# --- CSV


_CSV_HEADER = (["preset", "protocol", "current_protocol", "overrides", "task", "method_label",
                "method", "latent_dim", "statistic", "compared", "n_tasks", "tasks",
                "return_tasks", "n_runs", "seeds", "returns_informative", "bc_labels_ceiling",
                "ood_same_env"]
               + [f"{m}{s}" for m in _SEED_METRICS for s in ("", "_low", "_high", "_n")]
               + [f"{m}_episodes{s}" for m in _RETURN_METRICS
                  for s in ("", "_low", "_high", "_n")])
"""Per-task rows: seed statistics (mean, Student-t interval, runs) of every metric, then episode
statistics (mean, Student-t interval over all episodes of all seeds, episodes) of returns.
Aggregate rows: IQM, mean or optimality gap with a stratified-bootstrap interval; episode columns
empty, and the optimality gap of probe NMSEs too (it is defined on returns)."""


def _csv_head(table: _TableId, task: str, label: str, method: str, dim: int) -> list[str]:
    """The identifying cells of a CSV row."""
    current = "1" if _is_main(table) else "0"
    return [table.preset, table.protocol, current, table.overrides, task, label, method,
            "" if dim == NO_DIM else str(dim)]


def _csv_row(row: _Row, ceilings: dict[tuple[_TableId, str], _Ceiling]) -> list[str]:
    """One per-task CSV row: means with Student-t intervals over seeds and over episodes."""
    k = row.key
    ceiling = ceilings[(k.table, k.task)]
    head = _csv_head(k.table, k.task, k.label, row.method, k.dim) + [
        "mean", "", "1", k.task, k.task if ceiling.informative else "", str(len(row.runs)),
        " ".join(str(r["seed"]) for r in row.runs), "1" if ceiling.informative else "0",
        _num(ceiling.normalized), "1" if row.same_env else "0"]
    return (head + _stat_cells(row.seeds[m] for m in _SEED_METRICS)
            + _stat_cells(row.episodes[m] for m in _RETURN_METRICS))


def _csv_aggregate_row(agg: _Aggregate, statistic: str) -> list[str]:
    """One cross-task CSV row: one statistic (``aggregate.STATISTICS``) of every aggregated
    metric, with its stratified-bootstrap interval."""
    n_runs = max((s["iqm"].runs for s in agg.stats.values() if s is not None), default=0)
    head = _csv_head(agg.table, "all", agg.label, agg.method, agg.dim) + [
        statistic, "1" if agg.compared else "0", str(len(agg.tasks)), " ".join(agg.tasks),
        " ".join(agg.return_tasks), str(n_runs), "", "", "", "1" if agg.same_env else "0"]
    return (head + _stat_cells(agg.stat(m, statistic) if _has_statistic(agg, m, statistic)
                               else None for m in _SEED_METRICS)
            + _stat_cells(None for _ in _RETURN_METRICS))


def _has_statistic(agg: _Aggregate, metric: str, statistic: str) -> bool:
    """Whether ``agg`` has ``statistic`` of ``metric``. The optimality gap is a distance below a
    return of 1, meaningless for a probe NMSE (it would read 1 - NMSE): blank there."""
    return metric in agg.stats and not (statistic == "optimality_gap"
                                        and metric in _PROBE_METRICS)


_IMPROVEMENT_HEADER = (["preset", "protocol", "current_protocol", "overrides", "latent_dim",
                        "method_x", "method_y"]
                       + [f"{m}{s}" for m, _, _ in _IMPROVEMENT_METRICS
                          for s in ("_p_x_better", "_low", "_high", "_n_tasks")])
"""Probability of improvement: P(X better than Y) per metric (for probe NMSE, P(X < Y), computed
by rliable on 1 - NMSE), its stratified-bootstrap interval and the tasks behind it."""


def _improvement_csv(improvements: list[_Improvement]) -> bytes:
    """The probability-of-improvement CSV: one row per pair of methods at one (table, dim)."""
    rows = [_csv_head(i.table, "all", i.x, "", i.dim)[:4] + [str(i.dim), i.x, i.y]
            + _stat_cells(i.stats[m] for m, _, _ in _IMPROVEMENT_METRICS)
            for i in improvements]
    return _csv(rows, _IMPROVEMENT_HEADER)


def _stat_cells(stats: Iterable[_Stat | None]) -> list[str]:
    """Point, low, high and sample count of each statistic; empty (count 0) when undefined."""
    cells = []
    for s in stats:
        cells += (["", "", "", "0"] if s is None
                  else [_num(s.point), _num(s.low), _num(s.high), str(s.n)])
    return cells


def _csv(rows: list[list[str]], header: list[str] = _CSV_HEADER) -> bytes:
    """CSV bytes of ``rows`` under ``header``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _num(x: float | None) -> str:
    """A number for a CSV: full precision, empty when undefined."""
    return "" if x is None or math.isnan(x) else repr(float(x))


# --- Markdown

_TASK_INTERVALS = (
    f"Intervals: probe columns, mean ± half-width of the {CONFIDENCE:.0%} Student-t interval "
    f"over seeds; return columns, mean ± half-width of the {CONFIDENCE:.0%} Student-t interval "
    "over all evaluation episodes of all seeds, pooled (so a one-seed row has one too; the "
    "episodes of one seed share its policy, so it is narrower than an interval over seeds).")
"""The caption under every per-task table."""


def _readme(board: _Board, plots: dict[tuple[str, str], list[str]]) -> str:
    """The whole README: header, skipped files, then per preset its main and other sections."""
    lines = _header(sum(len(row.runs) for row in board.rows.values()), board.reps, board.results)
    if board.problems:
        lines += [f"## Skipped result files ({len(board.problems)})", "",
                  "These files were not merged:", ""]
        lines += [f"- `{_code(p.split(': ', 1)[0])}`: {_cell(p.split(': ', 1)[-1])}"
                  for p in board.problems]
        lines.append("")
    tables = sorted({key.table for key in board.rows})
    for preset in sorted({t.preset for t in tables}):
        current = current_protocol(preset)
        main = _TableId(preset, current, "") if current is not None else None
        lines += [f"## Preset `{preset}`", ""]
        if current is None:
            lines += [(f"This version of masklam-bench defines no `{preset}` preset, so none of "
                       "its protocols is current: every result is listed below by protocol."), ""]
        elif main in tables:
            lines += [(f"Protocol `{current}`: the current `{preset}` preset, no `--set` "
                       "overrides. Rows of any other protocol are in their own sections below."),
                      ""]
            lines += _section(board, main, plots, "")
        else:
            lines += [(f"No result of the current protocol (`{current}`) without `--set` "
                       "overrides on the procedural videos in bf16 yet; every result is listed "
                       "below by protocol, overrides, videos and precision."), ""]
        for table in tables:
            if table.preset == preset and table != main:
                lines += _other_section(board, table, current)
    return "\n".join(lines).rstrip("\n") + "\n"


def _header(n_runs: int, reps: int, results: str) -> list[str]:
    """The README's title, provenance line and the definitions of every column and rule."""
    return [
        (f"<!-- Generated by masklam_bench.leaderboard: do not edit; regenerate with "
         f"`{REGENERATE}`. -->"),
        "# masklam-bench leaderboard",
        "",
        (f"> **Generated file: do not edit; regenerate with `{REGENERATE}`.** It is built from "
         f"{n_runs} run result file(s), one JSON per run."),
        "",
        ("- **Probe NMSE** (lower is better): a ridge probe z → a fitted on the frozen IDM's "
         "latents of train transitions, MSE on held-out transitions divided by the mean "
         "per-dimension action variance (MaskLAM Eq. 5). The **untrained-IDM control** is the "
         "same probe on a randomly initialised IDM of the same architecture. A row whose latent "
         "is the true action (`bc-labels`) has no probe and no latent dim: it shows \"–\"."),
        ("- **Normalised return** (higher is better): (R − R_random) / (R_data − R_random) "
         "of the latent BC policy with its action decoder, in the ID and the OOD environment. "
         "**R_data** (`ref_max_score`) is the mean return of the data-collecting policy (the "
         "expert's actions plus Gaussian noise), not the expert's greedy return; R_random is a "
         "random policy's. **Return / bc-labels**: the row's raw ID return divided by the "
         "`bc-labels` row's mean raw ID return at the same task and protocol (LAOM's "
         "normalisation; \"–\" where that return is not positive, and noise where it is near "
         "a random policy's, as on an ungated task)."),
        (f"- **Return gate**: pixel BC on all true actions (`bc-labels`) is the ceiling of every "
         f"LAM row. Where its mean normalised ID return (the **bc-labels ceiling**) is below "
         f"{RETURN_GATE} or was not measured, a return cannot separate methods: return cells are "
         f"marked {GATE_MARK} and left out of return aggregates."),
        (f"- **Intervals**: per task, probe columns show mean ± half-width of the "
         f"{CONFIDENCE:.0%} Student-t interval over seeds, return columns the {CONFIDENCE:.0%} "
         "Student-t interval over all evaluation episodes of all seeds. Across tasks, computed by "
         "[rliable](https://github.com/google-research/rliable): the interquartile mean (IQM, "
         "25% trimmed mean) of all runs, the mean of task means and the optimality gap, each "
         f"with a {CONFIDENCE:.0%} stratified-bootstrap interval ({reps} replicates, fixed "
         "seed); the probability of improvement of every pair of methods; performance profiles "
         "of normalised returns. One sample gives no interval (\"n=1, no interval\")."),
        ("- **Protocols are never mixed**: a protocol is the resolved preset of a run "
         "(`config.preset`; its id is the first 8 hex digits of the SHA-256 of its sorted JSON). "
         "Main tables hold the current protocol without `--set` overrides, on the procedural "
         "distractor videos, in bf16; other protocols, runs on DAVIS-2017 videos and runs in "
         "float32 have their own sections and are never in the main aggregates."),
        ("- **CSV files**: `<task>.csv` (a task's rows), `summary.csv` (every task's rows and "
         "the cross-task aggregates, `task` = `all`) and `improvement.csv` (probability of "
         "improvement of each pair). `current_protocol` is 1 for the rows of a main table (the "
         "preset's current protocol, no `--set` overrides, procedural videos, bf16) and 0 for "
         "the others; `overrides` names what gives a row its own section (`--set` fields, "
         f"`{VIDEOS_KEY}=...`, `{PRECISION_KEY}=float32`). Per metric: the value (`statistic`: "
         "`mean` over seeds for a task; `iqm`, `mean` or `optimality_gap` across tasks), `_low` "
         "and `_high` (the Student-t interval over seeds, or the stratified-bootstrap interval) "
         "and `_n` (the runs or tasks behind it, 0 where undefined); the `_episodes` columns are "
         "the same over all evaluation episodes of all seeds."),
        ("- **Oracle OOD**: the oracle runs in the clean environment, which has no OOD variant of "
         "its own, so its OOD return is its ID return: marked \"same env\" and left out of OOD "
         "aggregates."),
        (f"- **Checking a row**: each row's runs are result files in `{results}/`; "
         f"`masklam-bench reproduce {results}/<run>.json` runs one again from what it "
         "records and lists every metric that differs (on the same kind of machine and torch "
         "version; a run of an older protocol needs the commit that made it)."),
        "",
    ]


def _other_section(board: _Board, table: _TableId, current: str | None) -> list[str]:
    """A section of rows that are not the current protocol, headed by what differs."""
    heading = f"## Preset `{table.preset}`, protocol `{table.protocol}`"
    if table.overrides:
        videos, precision, sets = _split_overrides_text(table.overrides)
        heading += " with " + " and ".join(
            ([f"{videos} videos"] if videos else []) + ([precision] if precision else [])
            + (["`--set` overrides"] if sets else []))
    suffix = f" (protocol `{table.protocol}`{_overrides_suffix(table.overrides)})"
    return [heading, "", _protocol_note(table, current) + " These rows are never in the main "
            "tables or aggregates; plots show the current protocol only.", ""] + \
        _section(board, table, {}, suffix)


def _overrides_suffix(overrides: str) -> str:
    """What a section's table titles add after the protocol: its videos, precision and/or
    ``overrides``."""
    videos, precision, sets = _split_overrides_text(overrides)
    parts = [f"{videos} videos"] if videos else []
    parts += [precision] if precision else []
    parts += ["overrides"] if sets else []
    return "".join(f", {part}" for part in parts)


def _split_overrides_text(overrides: str) -> tuple[str, str, str]:
    """A table's overrides text as (its distractor videos or "", its precision or "", the
    ``--set`` overrides)."""
    parts = overrides.split(", ") if overrides else []
    found = {key: "" for key in (VIDEOS_KEY, PRECISION_KEY)}
    sets = []
    for part in parts:
        key, _, value = part.partition("=")
        if key in found:
            found[key] = value
        else:
            sets.append(part)
    return found[VIDEOS_KEY], found[PRECISION_KEY], ", ".join(sets)


def _protocol_note(table: _TableId, current: str | None) -> str:
    """One sentence saying how a section's protocol differs from the current one."""
    now = "none" if current is None else f"`{current}`"
    if table.overrides:
        videos, precision, sets = _split_overrides_text(table.overrides)
        parts = [f"{videos} distractor videos, not the procedural ones of the main tables"] \
            if videos else []
        parts += [f"{precision} training, not the bf16 autocast of the main tables"] \
            if precision else []
        parts += [f"--set {_cell(sets)}"] if sets else []
        return f"Made with {' and '.join(parts)} (protocol `{table.protocol}`; current {now})."
    if table.protocol == UNKNOWN_PROTOCOL:
        return (f"Made with an unrecorded protocol: these result files carry no `config.preset` "
                f"(current {now}).")
    if current is None:
        return (f"Made with protocol `{table.protocol}` of a `{table.preset}` preset that this "
                "version of masklam-bench does not define.")
    return (f"Made with an older version of the `{table.preset}` preset (protocol "
            f"`{table.protocol}`; current `{current}`).")


def _section(board: _Board, table: _TableId, plots: dict[tuple[str, str], list[str]],
             suffix: str) -> list[str]:
    """The cross-task summaries, pairwise comparisons and the per-task tables of one table id."""
    aggs = [a for a in board.aggregates if a.table == table]
    lines = _summary_tables(aggs, suffix, board.reps)
    lines += _other_statistics(aggs, suffix)
    lines += _improvement_table([i for i in board.improvements if i.table == table], suffix,
                                board.reps)
    lines += _section_plots(plots.get((table.preset, _SECTION_PLOTS), []), table)
    for task in sorted({k.task for k in board.rows if k.table == table}):
        rows = [row for k, row in board.rows.items() if k.table == table and k.task == task]
        lines += _task_table(task, rows, board.ceilings[(table, task)], suffix)
        names = plots.get((table.preset, task), [])
        for name in names:
            kind = "probe NMSE" if name.endswith("_nmse.png") else "normalised return"
            lines.append(f"![{kind} vs latent dim, {task}, {table.preset}]({name})")
        if names:
            lines.append("")
    return lines


def _section_plots(names: list[str], table: _TableId) -> list[str]:
    """Links to a section's probability-of-improvement and performance-profile plots."""
    if not names:
        return []
    lines = [f"![{'probability of improvement' if '_poi_' in n else 'performance profile'}, "
             f"{table.preset}]({n})" for n in names]
    if not any("_profile_" in n for n in names):
        lines.append("No performance profile: no task of this section has returns past the gate.")
    return lines + [""]


def _summary_caption(reps: int, seeds: list[int]) -> str:
    """The caption under every cross-task summary; ``seeds``: the runs per (row, task) in it."""
    few = ""
    if seeds and seeds[-1] > 1:  # with one run per task there is no interval to qualify
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        few = (f"With {count} seed{'s' * (seeds[-1] != 1)} per task these intervals are too "
               "narrow: simulated, a nominal 95% one held the truth 82% of the time at 3 tasks "
               "of 3 seeds and 88% at 3 tasks of 5 (BENCHMARK.md, \"How far the intervals can "
               "be trusted\"). ")
    return (
        f"IQM over all runs of the compared tasks (rliable), with a {CONFIDENCE:.0%} "
        f"stratified-bootstrap interval ({reps} replicates; none with one run per task). The IQM "
        "pools runs, so where tasks have different seed counts a task with more seeds weighs "
        f"more (the mean and optimality gap below weigh tasks equally). {few}Rows "
        "are compared only within one latent dim and only over tasks that all of them cover: of "
        "the rows' own task sets, the one that puts the most (row, task) results into the "
        "comparison (ties: more rows, then more tasks); a row with more tasks is aggregated over "
        "those tasks only, and a row missing one of them is shown apart. Returns are aggregated "
        f"only over the tasks whose bc-labels ceiling is ≥ {RETURN_GATE} (column *Return tasks*). "
        "Each metric is aggregated over the tasks on which every compared row with that metric "
        "has values, so a run without one (no OOD return, say) takes its task out of that "
        "column for all of them.")


def _summary_tables(aggs: list[_Aggregate], suffix: str, reps: int) -> list[str]:
    """The compared rows of a cross-task summary and, apart, the rows that cover other tasks."""
    head = ("| Method | Dim | Tasks | Return tasks | "
            + " | ".join(c.heading for c in _COLUMNS) + " |")
    rule = "|---|---:|---|---:|" + "---|" * len(_COLUMNS)
    seeds = sorted({len(runs) for a in aggs for per_task in a.values.values()
                    for runs in per_task.values()})
    lines = [f"### All tasks (IQM, {CONFIDENCE:.0%} stratified-bootstrap CI){suffix}", "",
             _summary_caption(reps, seeds), "", head, rule]
    lines += [_summary_line(a, str(len(a.tasks))) for a in aggs if a.compared]
    apart = [a for a in aggs if not a.compared]
    if apart:
        lines += ["", ("Shown apart: these rows do not cover the tasks compared at their latent "
                       "dim, so each is aggregated over its own tasks and not ranked with the rows "
                       "above."), "", head, rule]
        lines += [_summary_line(a, f"over {len(a.tasks)} task{'s' * (len(a.tasks) != 1)}: "
                                + ", ".join(a.tasks)) for a in apart]
    return lines + [""]


def _summary_line(agg: _Aggregate, tasks: str) -> str:
    """One Markdown row of a cross-task summary."""
    return (f"| `{_code(agg.label)}` | {_dim(agg.dim)} | {tasks} | {len(agg.return_tasks)} | "
            + " | ".join(_aggregate_cell(agg, c) for c in _COLUMNS) + " |")


_OTHER_STATISTICS_CAPTION = (
    "The mean of task means and the optimality gap (rliable; γ = 1, the data-collecting policy's "
    "return for normalised returns and the bc-labels return for *Return / bc-labels*: the "
    "average shortfall below γ, lower is better) of the compared rows, over the same tasks and "
    "runs as the IQM above, with the same intervals. For probe NMSE the optimality gap of "
    "1 − NMSE is the mean NMSE, so it is not repeated.")
"""The caption under the mean and optimality-gap table."""


def _other_statistics(aggs: list[_Aggregate], suffix: str) -> list[str]:
    """The mean of every column and the optimality gap of the return columns, compared rows."""
    returns = [c for c in _COLUMNS if c.kind == "return"]
    head = ("| Method | Dim | " + " | ".join(f"{c.heading} mean" for c in _COLUMNS) + " | "
            + " | ".join(f"{c.heading.rstrip(' ↑')} gap ↓" for c in returns) + " |")
    rule = "|---|---:|" + "---|" * (len(_COLUMNS) + len(returns))
    lines = [f"### All tasks (mean and optimality gap){suffix}", "", _OTHER_STATISTICS_CAPTION,
             "", head, rule]
    for a in aggs:
        if a.compared:
            cells = ([_aggregate_cell(a, c, "mean") for c in _COLUMNS]
                     + [_aggregate_cell(a, c, "optimality_gap") for c in returns])
            lines.append(f"| `{_code(a.label)}` | {_dim(a.dim)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _improvement_caption(reps: int) -> str:
    """The caption under every probability-of-improvement table."""
    return (
        "Probability of improvement (rliable): the probability that a run of X on a task does "
        "better than a run of Y on the same task (Mann-Whitney U, ties count half), averaged "
        f"over tasks, with a {CONFIDENCE:.0%} stratified-bootstrap interval ({reps} replicates; "
        "none with one run per task for both). 0.5 means no difference. Probe NMSE is lower "
        "is better, so rliable is given 1 − NMSE: its column is P(NMSE of X < NMSE of Y). "
        "Pairs are the compared rows of one latent dim, over the tasks both cover (returns: "
        f"only tasks whose bc-labels ceiling is ≥ {RETURN_GATE}); each method uses its first k "
        "seeds of every task, k its fewest on any of them.")


def _improvement_table(improvements: list[_Improvement], suffix: str, reps: int) -> list[str]:
    """The probability-of-improvement table of one table id; empty without pairs."""
    if not improvements:
        return []
    head = ("| Dim | X | Y | " + " | ".join(h for _, h, _ in _IMPROVEMENT_METRICS) + " |")
    lines = [f"### Probability of improvement{suffix}", "", _improvement_caption(reps), "", head,
             "|---:|---|---|" + "---|" * len(_IMPROVEMENT_METRICS)]
    for i in improvements:
        cells = [_interval_cell(i.stats[m], "one run per task") for m, _, _ in _IMPROVEMENT_METRICS]
        lines.append(f"| {i.dim} | `{_code(i.x)}` | `{_code(i.y)}` | " + " | ".join(cells) + " |")
    return lines + [""]


def _task_table(task: str, rows: list[_Row], ceiling: _Ceiling, suffix: str) -> list[str]:
    """One per-task table with its interval caption, gate note and same-env note."""
    lines = [f"### Task `{task}`{suffix}", "",
             "| Method | Dim | " + " | ".join(c.heading for c in _COLUMNS) + " | Seeds |",
             "|---|---:|" + "---|" * len(_COLUMNS) + "---:|"]
    for row in rows:
        lines.append(f"| `{_code(row.key.label)}` | {_dim(row.key.dim)} | "
                     + " | ".join(_task_cell(row, c, ceiling) for c in _COLUMNS)
                     + f" | {len(row.runs)} |")
    lines += ["", _TASK_INTERVALS, _gate_note(ceiling)]
    if any(row.same_env for row in rows):
        lines.append("\"same env\": the oracle has no OOD environment of its own; its OOD return "
                     "is its ID return and is left out of OOD aggregates.")
    return lines + [""]


def _gate_note(ceiling: _Ceiling) -> str:
    """The line under a per-task table naming the bc-labels ceiling and what it means here."""
    if ceiling.normalized is None:
        return (f"{GATE_MARK} Returns not informative: the **bc-labels ceiling** was not measured "
                f"(no `{CEILING_METHOD}` run at this task and protocol), so nothing shows that a "
                "return can separate methods; they are left out of return aggregates.")
    if not ceiling.informative:
        return (f"{GATE_MARK} Returns not informative: the **bc-labels ceiling** is "
                f"{ceiling.normalized:.3f} < {RETURN_GATE}, so a return cannot separate methods; "
                "they are left out of return aggregates.")
    return (f"Returns informative: the **bc-labels ceiling** is {ceiling.normalized:.3f} "
            f"≥ {RETURN_GATE}.")


def _task_cell(row: _Row, col: _Column, ceiling: _Ceiling) -> str:
    """A per-task cell: probe columns over seeds, return columns over episodes, with marks."""
    if col.kind == "probe":
        return "–" if row.no_probe else _seed_cell(row.seeds[col.key], len(row.runs))
    seed, episode = row.seeds[col.key], row.episodes[col.key]
    if seed is None:
        return "–"
    if episode is None:
        text = f"{seed.point:.3f} (no episode returns, no interval)"
    else:
        text = _pm(episode) + _partial(episode, len(row.runs))
    if col.key == "normalized_return_ood" and row.same_env:
        text += " (same env)"
    return text if ceiling.informative else f"{text} {GATE_MARK}"


def _seed_cell(s: _Stat | None, n_runs: int) -> str:
    """``mean ± half-width`` over seeds; says so when fewer seeds than the row's report it."""
    return "–" if s is None else _pm(s) + _partial(s, n_runs)


def _pm(s: _Stat) -> str:
    """``mean ± half-width``, or the mean and "n=1, no interval" with one sample."""
    if math.isnan(s.low):
        return f"{s.point:.3f} (n=1, no interval)"
    return f"{s.point:.3f} ± {(s.high - s.low) / 2:.3f}"


def _partial(s: _Stat, n_runs: int) -> str:
    """`` (k of n seeds)`` when only k of the row's n runs report the metric."""
    return "" if s.runs == n_runs else f" ({s.runs} of {n_runs} seeds)"


def _aggregate_cell(agg: _Aggregate, col: _Column, statistic: str = "iqm") -> str:
    """A cross-task cell: a statistic [bootstrap interval], "same env" or "–"."""
    s = agg.stat(col.key, statistic)
    if s is None:
        same_env = col.key == "normalized_return_ood" and agg.same_env
        return "same env" if same_env else "–"
    return _interval_cell(s, "n=1" if s.n == 1 else "one run per task")


def _interval_cell(s: _Stat | None, why: str) -> str:
    """``point [low, high]``, ``point (why, no interval)`` without an interval, "–" without s."""
    if s is None:
        return "–"
    if math.isnan(s.low):
        return f"{s.point:.3f} ({why}, no interval)"
    return f"{s.point:.3f} [{s.low:.3f}, {s.high:.3f}]"


def _dim(dim: int) -> str:
    """A latent dim for a table; "–" for a row without one."""
    return "–" if dim == NO_DIM else str(dim)


def _code(text: str) -> str:
    """Text safe inside a Markdown code span in a table."""
    return text.replace("`", "'").replace("|", "/")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- Plots


def _plots(task_rows: list[_Row], title: str, ceiling: _Ceiling) -> dict[str, bytes]:
    """PNG bytes of the NMSE and return plots of one (table, task); a plot without data is left
    out. Rows without a latent dim are not points; the bc-labels ceiling is a horizontal line."""
    by_label: dict[str, dict[int, dict[str, _Stat | None]]] = defaultdict(dict)
    for row in task_rows:
        if row.key.dim == NO_DIM:
            continue
        stats = {**{m: row.seeds[m] for m in _PROBE_METRICS},
                 **{m: row.episodes[m] for m in _RETURN_METRICS}}
        if row.same_env:
            stats["normalized_return_ood"] = None
        by_label[row.key.label][row.key.dim] = stats
    labels = sorted(by_label)
    dims = sorted({d for per_dim in by_label.values() for d in per_dim})
    gate = "" if ceiling.informative else f" ({GATE_MARK} returns not informative)"
    specs = {
        "nmse": (f"probe NMSE, {CONFIDENCE:.0%} t over seeds (lower is better)", title,
                 [("probe_nmse", "-", None), ("probe_nmse_untrained", ":", "untrained IDM")]),
        "return": (f"normalised return, {CONFIDENCE:.0%} t over episodes", title + gate,
                   [("normalized_return_id", "-", "ID"), ("normalized_return_ood", "--", "OOD")]),
    }
    out = {}
    for kind, (ylabel, plot_title, series) in specs.items():
        if not any(stats[m] is not None for m, _, _ in series
                   for per_dim in by_label.values() for stats in per_dim.values()):
            continue
        line = ceiling.normalized if kind == "return" else None
        out[kind] = _plot(by_label, labels, dims, series, ylabel, plot_title, line)
    return out


_DODGE = 0.08
"""Horizontal offset between methods in the plots, in octaves of latent dim."""


def _plot(by_label, labels, dims, series, ylabel, title, ceiling_line=None) -> bytes:
    """One errorbar plot over latent dims, with an optional bc-labels ceiling line."""
    from matplotlib.figure import Figure  # Agg through savefig; pyplot's global state untouched

    fig = Figure(figsize=(8.5, 4.0), dpi=100)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for i, (label, color) in enumerate(zip(labels, colors)):
        # Nudge methods apart along the log axis so their error bars do not hide each other.
        nudge = 2.0 ** (_DODGE * (i - (len(labels) - 1) / 2))
        for key, style, suffix in series:
            points = [(d, s[key]) for d, s in sorted(by_label[label].items())
                      if s[key] is not None]
            if not points:
                continue
            x = [d * nudge for d, _ in points]
            y = np.array([s.point for _, s in points])
            err = np.array([[0.0, 0.0] if math.isnan(s.low) else [s.point - s.low, s.high - s.point]
                            for _, s in points]).T
            untrained = key == "probe_nmse_untrained"
            ax.errorbar(x, y, yerr=err, linestyle=style, marker="o", markersize=4, capsize=3,
                        color="grey" if untrained else color,
                        mfc=color if untrained else None,
                        label=label if suffix is None else f"{label} {suffix}")
    if ceiling_line is not None:
        ax.axhline(ceiling_line, color="black", linestyle="-.", linewidth=1,
                   label=f"{CEILING_METHOD} ceiling (ID)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("latent dim")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``leaderboard`` sub-command to the ``masklam-bench`` parser."""
    p = subparsers.add_parser("leaderboard",
                              help="regenerate leaderboards/ (README, CSVs, plots) from results")
    p.add_argument("--results", default="leaderboards/results",
                   help="folder of result JSON files, read recursively "
                        "(default: leaderboards/results)")
    p.add_argument("--out", default="leaderboards",
                   help="folder to write README.md, CSVs and plots into (default: leaderboards)")
    p.add_argument("--bootstrap-reps", type=int, default=BOOTSTRAP_REPS, metavar="N",
                   help=f"bootstrap replicates of every cross-task interval "
                        f"(default: {BOOTSTRAP_REPS})")
    p.set_defaults(func=_cmd_leaderboard, output_folders=("out",))


def _cmd_leaderboard(args: argparse.Namespace) -> None:
    """Regenerate the leaderboard; malformed files are listed on stderr and skipped."""
    if args.bootstrap_reps < 1:
        raise UserError(f"--bootstrap-reps must be at least 1; got {args.bootstrap_reps}.")
    records, problems = read_records(args.results)
    for problem in problems:
        print(f"skipped result file {problem}", file=sys.stderr)
    if not records:
        raise UserError(_no_results_message(args.results, problems))
    print(f"summarising {len(records)} runs ({args.bootstrap_reps:,} bootstrap replicates per "
          "interval; about 20 s for the committed 130 on 2 cores)", flush=True)
    written = _write_all(records, problems, Path(args.out), args.bootstrap_reps, args.results)
    print(f"{len(records)} runs, {len(problems)} file(s) skipped")
    for path in written.values():
        print(f"wrote {path}")
