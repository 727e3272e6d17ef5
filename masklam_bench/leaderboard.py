"""The leaderboard: result files of single runs in, Markdown tables, CSVs and plots out.

Each run writes one JSON file under ``leaderboards/results/``. This module validates them
(a malformed file is named and skipped, never merged), summarises seeds per task with a mean and
Student-t interval, summarises tasks with the IQM and a stratified-bootstrap interval, and
regenerates ``leaderboards/README.md``, ``<task>.csv``, ``summary.csv`` and
``<preset>_<task>_{nmse,return}.png``. Presets are never mixed in one table or aggregate.
Output is deterministic: regenerating without new results rewrites identical bytes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from masklam_bench import metrics
from masklam_bench.fileio import atomic_write_bytes

SCHEMA_VERSION = 1
"""Version of the result-file layout this module reads (the runner's ``RESULT_SCHEMA_VERSION``)."""

CONFIDENCE = 0.95
"""Coverage of every interval in the leaderboard."""

BOOTSTRAP_REPS = 2000
"""Stratified-bootstrap replicates per aggregate (rliable's default is 2000)."""

BOOTSTRAP_SEED = 0
"""Fixed seed of every bootstrap, so regenerating gives identical files."""

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
}
"""Keys that may be absent (or null) but, when present, must have these types."""

_NUMERIC_METRICS = (
    "probe_nmse", "probe_nmse_untrained", "distractor_nmse", "distractor_nmse_untrained",
    "return_id", "return_ood", "normalized_return_id",
    "normalized_return_ood", "ref_min_score", "ref_max_score",
)
"""Metrics the leaderboard reads: each a finite number or null (other metrics pass through)."""


@dataclasses.dataclass(frozen=True)
class _Column:
    """One summarised metric: its key, its table heading, and whether lower is better."""

    key: str
    heading: str
    lower_is_better: bool


_COLUMNS = (
    _Column("probe_nmse", "Probe NMSE ↓", True),
    _Column("probe_nmse_untrained", "Untrained-IDM NMSE (control)", True),
    _Column("normalized_return_id", "Norm. return ID ↑", False),
    _Column("normalized_return_ood", "Norm. return OOD ↑", False),
)
"""The metrics in the Markdown tables and aggregates, in order."""

_AGGREGATED = tuple(c.key for c in _COLUMNS)
"""The metrics summarised across tasks (all normalised, so tasks are comparable)."""

_CSV_METRICS = _AGGREGATED + ("return_id", "return_ood")
"""The metrics in the CSVs (raw returns too, per task only)."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Task and preset names become file names, so they are restricted to these characters."""

_RESERVED_TASKS = frozenset({"summary", "README"})
"""Task names that would collide with the leaderboard's own files."""

_GroupKey = tuple[str, str, str, int]
"""(preset, task, method_label, latent_dim)."""


# ---------------------------------------------------------------------------------------------
# Reading and validating results


def load_results(results_dir: str | os.PathLike = "leaderboards/results",
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Valid result records under ``results_dir`` (recursively, ``*.json``) and the problems.

    Each problem is ``"<path relative to results_dir>: <reason>"``; its file is skipped. A file
    repeating the (preset, task, method_label, latent_dim, seed) of an earlier one (in path
    order) is skipped as a duplicate. Returned records are the parsed JSON with
    ``method_label`` defaulting to ``method``, every leaderboard metric present (None when
    missing), normalised returns filled in from raw returns and reference scores where the run
    left them out, and ``_path`` (the relative path).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results directory at {root}; runs write their result JSON "
                                "there (pass --results DIR to read another folder).")
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[tuple, str] = {}
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
        key = (record["preset"], record["task"], record["method_label"], record["latent_dim"],
               record["seed"])
        if key in seen:
            problems.append(f"{rel}: duplicate of {seen[key]} (same preset, task, method_label, "
                            "latent_dim and seed); keep one of them")
            continue
        seen[key] = rel
        record["_path"] = rel
        records.append(record)
    return records, problems


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
    record = dict(data)
    record["method_label"] = data.get("method_label") or data["method"]
    record["metrics"] = found = dict(data["metrics"])
    for key in _NUMERIC_METRICS:
        value = found.get(key)
        if value is not None and not (_is_type(value, float) and math.isfinite(value)):
            raise _Malformed(f"metrics.{key} must be a finite number or null, got {value!r}")
        found[key] = None if value is None else float(value)
    lo, hi = found["ref_min_score"], found["ref_max_score"]
    for split in ("id", "ood"):
        raw, norm = found[f"return_{split}"], f"normalized_return_{split}"
        if found[norm] is None and raw is not None and lo is not None and hi is not None \
                and hi != lo:
            found[norm] = metrics.normalized_return(raw, lo, hi)
    return record


_JSON_NAMES = {int: "integer", float: "number", str: "string", dict: "object"}


def _is_type(value: Any, kind: type) -> bool:
    """JSON-typed isinstance: booleans are not numbers, integers are numbers."""
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


# ---------------------------------------------------------------------------------------------
# Summaries


@dataclasses.dataclass(frozen=True)
class _Stat:
    """A summarised metric: point estimate, interval (nan when undefined) and sample count."""

    point: float
    low: float
    high: float
    n: int


def _seed_stat(values: list[float]) -> _Stat | None:
    """Mean and Student-t interval over seeds, or None without values."""
    if not values:
        return None
    mean, low, high = metrics.mean_ci(values, CONFIDENCE)
    return _Stat(mean, low, high, len(values))


def _task_stat(per_task: list[list[float]]) -> _Stat | None:
    """IQM over all runs of all tasks with a stratified-bootstrap interval, or None."""
    per_task = [v for v in per_task if v]
    if not per_task:
        return None
    scores = np.full((max(map(len, per_task)), len(per_task)), np.nan)
    for j, values in enumerate(per_task):
        scores[:len(values), j] = values
    point, low, high = metrics.stratified_bootstrap_ci(
        scores, metrics.iqm_over_all, BOOTSTRAP_REPS, CONFIDENCE, BOOTSTRAP_SEED)
    return _Stat(point, low, high, sum(map(len, per_task)))


def _group(records: Iterable[dict[str, Any]]) -> dict[_GroupKey, list[dict[str, Any]]]:
    """Records by (preset, task, method_label, latent_dim), keys sorted, runs by seed."""
    groups: dict[_GroupKey, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["preset"], r["task"], r["method_label"], r["latent_dim"])].append(r)
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in sorted(groups)}


def _values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The non-null values of one metric over runs."""
    return [r["metrics"][key] for r in runs if r["metrics"][key] is not None]


# ---------------------------------------------------------------------------------------------
# Writing


def write_leaderboard(results_dir: str | os.PathLike = "leaderboards/results",
                      out_dir: str | os.PathLike = "leaderboards") -> dict[str, Path]:
    """Regenerate README.md, per-task and summary CSVs and plots; returns {file name: path}.

    Raises ValueError, writing nothing, when there is no valid result file, so a wrong
    ``results_dir`` never wipes a leaderboard.
    """
    records, problems = load_results(results_dir)
    if not records:
        raise ValueError(_no_results_message(results_dir, problems))
    return _write_all(records, problems, Path(out_dir))


def _no_results_message(results_dir: str | os.PathLike, problems: list[str]) -> str:
    return (f"no valid result files under {results_dir} ({len(problems)} malformed skipped); "
            "nothing written. Run the benchmark first or pass --results DIR.")


def _write_all(records: list[dict[str, Any]], problems: list[str],
               out: Path) -> dict[str, Path]:
    """Write every leaderboard file from validated records."""
    groups = _group(records)
    rows = {key: {m: _seed_stat(_values(runs, m)) for m in _CSV_METRICS}
            for key, runs in groups.items()}
    aggregates = _aggregates(groups)
    written: dict[str, Path] = {}

    def emit(name: str, data: bytes) -> None:
        atomic_write_bytes(out / name, data)
        written[name] = out / name

    tasks = sorted({key[1] for key in groups})
    for task in tasks:
        emit(f"{task}.csv", _csv([_csv_row(key, groups[key], rows[key]) for key in groups
                                  if key[1] == task]))
    summary = [_csv_row(key, groups[key], rows[key]) for key in groups]
    summary += [_csv_row((p, "all", label, dim), None, stats, n_tasks, method)
                for (p, label, dim), (stats, n_tasks, method) in aggregates.items()]
    emit("summary.csv", _csv(summary))

    plots: dict[tuple[str, str], list[str]] = {}
    for preset, task in sorted({(k[0], k[1]) for k in groups}):
        task_rows = {k: v for k, v in rows.items() if k[0] == preset and k[1] == task}
        for kind, png in _plots(task_rows, f"{task} ({preset} preset)").items():
            name = f"{preset}_{task}_{kind}.png"
            emit(name, png)
            plots.setdefault((preset, task), []).append(name)
    emit("README.md", _readme(groups, rows, aggregates, plots, problems).encode("utf-8"))
    return written


def _aggregates(groups: dict[_GroupKey, list[dict[str, Any]]],
                ) -> dict[tuple[str, str, int], tuple[dict[str, _Stat | None], int, str]]:
    """Per (preset, method_label, dim): IQM over tasks per metric, task count and method.

    Raw returns are not aggregated: their scale differs from task to task.
    """
    by_method: dict[tuple[str, str, int], dict[str, list]] = defaultdict(dict)
    for (preset, task, label, dim), runs in groups.items():
        by_method[(preset, label, dim)][task] = runs
    out = {}
    for key in sorted(by_method):
        tasks = by_method[key]
        stats = {m: _task_stat([_values(runs, m) for runs in tasks.values()])
                 if m in _AGGREGATED else None for m in _CSV_METRICS}
        out[key] = (stats, len(tasks), next(iter(tasks.values()))[0]["method"])
    return out


_CSV_HEADER = (["preset", "task", "method_label", "method", "latent_dim", "statistic",
                "n_tasks", "n_runs", "seeds"]
               + [f"{m}{s}" for m in _CSV_METRICS for s in ("", "_low", "_high", "_n")])


def _csv_row(key: _GroupKey, runs: list[dict[str, Any]] | None,
             stats: dict[str, _Stat | None], n_tasks: int = 1, method: str = "") -> list[str]:
    """One CSV row: per task (mean, t interval) when ``runs`` is given, else an IQM aggregate."""
    preset, task, label, dim = key
    if runs is not None:
        head = [preset, task, label, runs[0]["method"], str(dim), "mean", "1", str(len(runs)),
                " ".join(str(r["seed"]) for r in runs)]
    else:
        n_runs = max((s.n for s in stats.values() if s is not None), default=0)
        head = [preset, task, label, method, str(dim), "iqm", str(n_tasks), str(n_runs), ""]
    cells = []
    for m in _CSV_METRICS:
        s = stats[m]
        cells += (["", "", "", "0"] if s is None
                  else [_num(s.point), _num(s.low), _num(s.high), str(s.n)])
    return head + cells


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _num(x: float) -> str:
    """A number for a CSV: full precision, empty when undefined."""
    return "" if x is None or math.isnan(x) else repr(float(x))


# --- Markdown


def _readme(groups, rows, aggregates, plots, problems) -> str:
    n_runs = sum(len(v) for v in groups.values())
    lines = [
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
         "same probe on a randomly initialised IDM of the same architecture."),
        ("- **Normalised return** (higher is better): (R − R_random) / (R_expert − R_random) "
         "of the latent BC policy with its action decoder, in the ID and the OOD environment."),
        (f"- Per task: mean ± half-width of the {CONFIDENCE:.0%} Student-t interval over seeds "
         "(none with one seed). Across tasks: interquartile mean (IQM) of all runs with a "
         f"{CONFIDENCE:.0%} stratified-bootstrap interval ({BOOTSTRAP_REPS} replicates). "
         "Presets are never mixed."),
        "",
    ]
    if problems:
        lines += [f"## Skipped result files ({len(problems)})", "",
                  "These files are malformed and were not merged:", ""]
        lines += [f"- `{_code(p.split(': ', 1)[0])}`: {_cell(p.split(': ', 1)[-1])}"
                  for p in problems]
        lines.append("")
    for preset in sorted({k[0] for k in groups}):
        lines += [f"## Preset `{preset}`", ""]
        agg = {k: v for k, v in aggregates.items() if k[0] == preset}
        lines += [f"### All tasks (IQM, {CONFIDENCE:.0%} stratified-bootstrap CI)", "",
                  "| Method | Dim | Tasks | " + " | ".join(c.heading for c in _COLUMNS) + " |",
                  "|---|---:|---:|" + "---|" * len(_COLUMNS)]
        for (_, label, dim), (stats, n_tasks, _) in agg.items():
            lines.append(f"| `{_code(label)}` | {dim} | {n_tasks} | "
                         + " | ".join(_interval_cell(stats[c.key]) for c in _COLUMNS) + " |")
        lines.append("")
        for task in sorted({k[1] for k in groups if k[0] == preset}):
            lines += [f"### Task `{task}`", "",
                      "| Method | Dim | " + " | ".join(c.heading for c in _COLUMNS)
                      + " | Seeds |",
                      "|---|---:|" + "---|" * len(_COLUMNS) + "---:|"]
            for key, runs in groups.items():
                if key[0] == preset and key[1] == task:
                    lines.append(f"| `{_code(key[2])}` | {key[3]} | "
                                 + " | ".join(_mean_cell(rows[key][c.key], len(runs))
                                              for c in _COLUMNS)
                                 + f" | {len(runs)} |")
            lines.append("")
            for name in plots.get((preset, task), []):
                kind = "probe NMSE" if name.endswith("_nmse.png") else "normalised return"
                lines.append(f"![{kind} vs latent dim, {task}, {preset}]({name})")
            if plots.get((preset, task)):
                lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _mean_cell(s: _Stat | None, n_runs: int) -> str:
    """``mean ± half-width``; ``(n=k)`` when fewer seeds than the row has reported it."""
    if s is None:
        return "–"
    text = f"{s.point:.3f}" if math.isnan(s.low) else f"{s.point:.3f} ± {(s.high - s.low) / 2:.3f}"
    return text if s.n == n_runs else f"{text} (n={s.n})"


def _interval_cell(s: _Stat | None) -> str:
    return "–" if s is None else f"{s.point:.3f} [{s.low:.3f}, {s.high:.3f}]"


def _code(text: str) -> str:
    """Text safe inside a Markdown code span in a table."""
    return text.replace("`", "'").replace("|", "/")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- Plots


def _plots(task_rows: dict[_GroupKey, dict[str, _Stat | None]], title: str) -> dict[str, bytes]:
    """PNG bytes of the NMSE and return plots of one (preset, task); a plot without data is left
    out."""
    by_label: dict[str, dict[int, dict[str, _Stat | None]]] = defaultdict(dict)
    for (_, _, label, dim), stats in task_rows.items():
        by_label[label][dim] = stats
    labels = sorted(by_label)
    dims = sorted({d for per_dim in by_label.values() for d in per_dim})
    specs = {
        "nmse": ("probe NMSE (lower is better)", [("probe_nmse", "-", None),
                                                 ("probe_nmse_untrained", ":", "untrained IDM")]),
        "return": ("normalised return", [("normalized_return_id", "-", "ID"),
                                         ("normalized_return_ood", "--", "OOD")]),
    }
    out = {}
    for kind, (ylabel, series) in specs.items():
        if not any(stats[m] is not None for m, _, _ in series
                   for per_dim in by_label.values() for stats in per_dim.values()):
            continue
        out[kind] = _plot(by_label, labels, dims, series, ylabel, title)
    return out


_DODGE = 0.08
"""Horizontal offset between methods in the plots, in octaves of latent dim."""


def _plot(by_label, labels, dims, series, ylabel, title) -> bytes:
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
    p.set_defaults(func=_cmd_leaderboard)


def _cmd_leaderboard(args: argparse.Namespace) -> None:
    """Regenerate the leaderboard; malformed files are listed on stderr and skipped."""
    records, problems = load_results(args.results)
    for problem in problems:
        print(f"skipped malformed result file {problem}", file=sys.stderr)
    if not records:
        raise ValueError(_no_results_message(args.results, problems))
    written = _write_all(records, problems, Path(args.out))
    print(f"{len(records)} runs, {len(problems)} malformed file(s) skipped")
    for path in written.values():
        print(f"wrote {path}")
