"""Scale curves: how the probe and the return ceiling move with training and data.

- ``probe``: probe NMSE against LAM steps, for each method beside its untrained control. One long
  LAM run per (method, seed) keeps snapshots at the asked steps, and each snapshot is probed, so
  the points share one schedule (that of the longest run) rather than being separate runs.
- ``ceiling``: ``bc-labels`` (pixel BC on all true actions, the ceiling of every LAM row)
  normalised return against BC steps, dataset size and random-shift augmentation, through the
  full pipeline.

Both write one JSON file and one PNG under ``--out`` and resume from the runs' folders. Neither
needs to run to be drawn: ``probe --merge`` joins curve files made elsewhere (one per seed or
machine), and ``ceiling --from-results`` reads finished ``bc-labels`` result files and fits the
return's trend on log2(BC steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from masklam_bench import metrics
from masklam_bench.checks import int_at_least, method_class, parse_int_list, parse_overrides
from masklam_bench.envs.backgrounds import PROCEDURAL_VIDEOS, distractor_videos
from masklam_bench.fileio import atomic_write_bytes, atomic_write_json, load_checkpoint
from masklam_bench.precision import add_bf16_flag, say_if_float32
from masklam_bench.provenance import unlock_run_folder

PROBE_STEPS = (1500, 6000, 24000)
"""Default LAM steps at which the probe curve is read (issue 17: 1.5k, 6k, 24k)."""
CEILING_BC_STEPS = (1500, 6000, 24000)
"""Default BC steps of the ceiling curve."""
POINT_FIELDS = ("method", "seed", "step", "probe_nmse", "probe_nmse_untrained", "lr", "warmup",
                "schedule_steps")
"""What every point of a probe curve records."""
SHIFT_KEY = "train.bc_random_shift"
"""The preset field of latent BC's random-shift augmentation (0: off)."""


def probe_curve(task: str, methods: list[str], steps: list[int], seeds: list[int], dim: int,
                preset: str, overrides: dict[str, Any], data_root: str, runs_root: str,
                threads: int, progress: bool = True, bf16: bool | None = None,
                ) -> list[dict[str, Any]]:
    """Probe NMSE after each of ``steps`` LAM steps (one run to ``max(steps)``), and its control."""
    from masklam_bench import runner

    points = []
    for method in methods:
        for seed in seeds:
            config = runner.RunConfig(
                method=method, task=task, latent_dim=dim, seed=seed, preset=preset,
                data_root=data_root, runs_root=runs_root, threads=threads, bf16=bf16,
                overrides={**overrides, "train.lam_steps": max(steps)})
            r = runner._open_run(config, progress)
            try:
                done, base = _probed_snapshots(r, steps)
            finally:
                unlock_run_folder(r.run_dir)
            for step in steps:
                points.append({"method": method, "seed": seed, "step": step,
                               "probe_nmse": done[str(step)],
                               "probe_nmse_untrained": base["probe_nmse_untrained"],
                               "lr": r.preset.train.lam_lr, "warmup": r.preset.train.lam_warmup,
                               "schedule_steps": max(steps), "bf16": r.config.bf16})
    return points


def _probed_snapshots(r: Any, steps: list[int]) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (or resume) the run to ``max(steps)`` keeping snapshots, probe each once (cached in
    ``curve.json``); the probe NMSE per step and stage 2's result (with the untrained control)."""
    from masklam_bench import runner

    runner._stage_lam(r, snapshot_steps=tuple(steps))
    base = runner._stage_probe(r)  # the final snapshot and the untrained control
    cache = r.run_dir / "curve.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for step in steps:
        if str(step) not in done:
            state = load_checkpoint(r.run_dir / f"lam_step{step}.pt")
            r.method.load_state_dict(state["method"])
            done[str(step)] = _probe_action(r)
            atomic_write_json(cache, done)
    return done, base


def merge_probe_curves(paths: list[Path], task: str, preset: str,
                       ) -> tuple[list[dict[str, Any]], dict[str, Any], int, str]:
    """The points of several probe-curve JSON files (e.g. one per seed, made on other machines).

    Every file must be a probe curve of ``task`` at ``preset`` and one latent dim, with the same
    ``--set`` overrides and distractor videos (a file without them: procedural), and every point
    must come from one LAM schedule (peak lr, warm-up, schedule length) and one precision (bf16
    or float32; a point without the record is bf16's), so that methods are compared at the same
    training. A (method, seed, step) point found twice must agree in every field. Returns the
    points, the overrides, the dim and the videos.
    """
    from masklam_bench.errors import UserError

    points: dict[tuple[str, int, int], dict[str, Any]] = {}
    overrides: dict[str, Any] | None = None
    dim: int | None = None
    videos: str | None = None
    for path in paths:
        try:
            curve = json.loads(Path(path).read_text())
            found = (curve["task"], curve["preset"])
            # A point made before curves recorded the precision is a bf16 run's.
            new = [{"bf16": True, **p} for p in curve["points"]]
            keys = [(p["method"], p["seed"], p["step"]) for p in new]
            missing = sorted({k for p in new for k in POINT_FIELDS if k not in p})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a probe curve's JSON ({exc!r}).") from None
        if missing:
            raise UserError(f"{path}: its points lack {', '.join(missing)} (a file made before "
                            "curves recorded them); make it again with this code.")
        if found != (task, preset):
            raise UserError(f"{path} is a curve of {found[0]} at {found[1]!r}, not of {task} at "
                            f"{preset!r}.")
        if "dim" not in curve:
            raise UserError(f"{path} records no latent dim (a file made before curves recorded "
                            'it); add "dim": N to it, N as its --dim was (default 64).')
        if dim is not None and curve["dim"] != dim:
            raise UserError(f"{path} is a curve at latent dim {curve['dim']}, {paths[0]} at {dim}.")
        dim = curve["dim"]
        if overrides is not None and curve.get("overrides", {}) != overrides:
            raise UserError(f"{path} was made with other --set overrides than {paths[0]}.")
        overrides = curve.get("overrides", {})
        found_videos = curve.get("distractor_videos", PROCEDURAL_VIDEOS)
        if videos is not None and found_videos != videos:
            raise UserError(f"{path} was made on {found_videos} distractor videos, {paths[0]} on "
                            f"{videos}; one curve is of one kind of video.")
        videos = found_videos
        for key, point in zip(keys, new):
            if key in points and points[key] != point:
                differ = sorted(k for k in set(point) | set(points[key])
                                if point.get(k) != points[key].get(k))
                raise UserError(f"{path} and an earlier file disagree on {key[0]} seed {key[1]} "
                                f"at step {key[2]} ({', '.join(differ)}).")
            points[key] = point
    schedules = {(p["lr"], p["warmup"], p["schedule_steps"]) for p in points.values()}
    if len(schedules) > 1:
        raise UserError("the points come from different LAM schedules (lr, warm-up, steps): "
                        f"{sorted(schedules)}; one curve compares methods at one schedule.")
    if len({p["bf16"] for p in points.values()}) > 1:
        raise UserError("the points mix bf16 and float32 runs (a CPU without bf16 instructions "
                        "trains in float32 unless `curve probe --bf16`); one curve compares "
                        "methods at one precision.")
    return [points[k] for k in sorted(points)], overrides or {}, dim or 0, \
        videos or PROCEDURAL_VIDEOS


def _probe_action(r: Any) -> float:
    """The action-probe NMSE of the run's method as it is now (stage 2's fit split)."""
    from masklam_bench import runner

    fit_rng = np.random.default_rng([r.config.seed, 2])
    n_fit = min(r.preset.train.probe_fit_transitions, len(r.train.transitions))
    fit_index = np.sort(fit_rng.choice(r.train.transitions, size=n_fit, replace=False))
    res = runner.probe(r.method, r.train_s, r.test_s, fit_index,
                       {"probe_nmse": (r.train.actions, r.test.actions)})
    return float(res["probe_nmse"])


def ceiling_curve(task: str, bc_steps: list[int], train_episodes: list[int], seeds: list[int],
                  preset: str, overrides: dict[str, Any], data_root: str, runs_root: str,
                  results_dir: str, threads: int, progress: bool = True,
                  shifts: tuple[int, ...] = (0,), bf16: bool | None = None,
                  ) -> list[dict[str, Any]]:
    """``bc-labels`` normalised return for every (train episodes, shift, BC steps, seed)."""
    import itertools

    from masklam_bench import runner
    from masklam_bench.presets import get_preset

    own = get_preset(preset)
    points = []
    for episodes, shift, steps, seed in itertools.product(train_episodes, shifts, bc_steps, seeds):
        # A size equal to the preset's is no override: that point is the preset's own
        # bc-labels run (and reuses its stages when --runs-root is shared).
        sets = dict(overrides)
        for key, value, default in (("train.bc_steps", steps, own.train.bc_steps),
                                    ("data.train_episodes", episodes, own.data.train_episodes),
                                    (SHIFT_KEY, shift, own.train.bc_random_shift)):
            if value != default:
                sets[key] = value
        config = runner.RunConfig(
            method="bc-labels", task=task, latent_dim=0, seed=seed, preset=preset,
            data_root=data_root, runs_root=runs_root, results_dir=results_dir,
            threads=threads, overrides=sets, bf16=bf16)
        points.append(ceiling_point(runner.run(config, progress)))
    return points


CEILING_SWEPT = ("train.bc_steps", "data.train_episodes", SHIFT_KEY)
"""The preset fields a ceiling curve varies."""
CEILING_MEASUREMENT = ("train.eval_episodes",)
"""Preset fields that change how a point is measured, not the policy: points may differ in them.
Every field outside these and :data:`CEILING_SWEPT` must be the preset's own."""


def ceiling_points_from_results(paths: list[Path], task: str, preset: str,
                                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ceiling curve's points from finished ``bc-labels`` result files (no training).

    ``paths`` are result files or folders of them. A file counts when it is ``bc-labels`` on
    ``task`` at ``preset``, and its preset differs from this code's only in the swept fields
    (:data:`CEILING_SWEPT`) and the number of evaluation episodes, and it was made on the
    distractor videos this process would use (``envs.backgrounds.distractor_videos``; a file
    without the record counts as procedural): points from several machines,
    folders or sessions can then be drawn as one curve. Of two files of the same size, shift and
    seed (a copy of a run, or the run measured again with more episodes) the one with more
    evaluation episodes is kept. Returns the points and one line per file left out, and why.
    """
    from masklam_bench.leaderboard import recorded_videos
    from masklam_bench.presets import get_preset, preset_record

    want = _without_swept(preset_record(get_preset(preset)))
    videos = distractor_videos()
    files = sorted({f for p in paths for f in (sorted(Path(p).glob("*.json"))
                                               if Path(p).is_dir() else [Path(p)])})
    kept: dict[tuple[int, int, bool, int, int], dict[str, Any]] = {}
    skipped = []
    for f in files:
        try:
            record = json.loads(f.read_text())
            got = record["config"]["preset"]
            if (record["method"], record["task"], got["name"]) != ("bc-labels", task, preset):
                continue
            point = dict(ceiling_point(record), file=str(f))
            same_protocol = _without_swept(got) == want
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            skipped.append(f"{f}: not a readable result file ({exc!r})")
            continue
        found_videos = recorded_videos(record)
        if found_videos != videos:
            here = "unset" if videos == PROCEDURAL_VIDEOS else "set"
            skipped.append(f"{f}: made on {found_videos} distractor videos; this curve is of "
                           f"{videos} ones ($MASKLAM_DAVIS_DIR is {here} here)")
            continue
        other = {k: v for k, v in (record.get("overrides") or {}).items()
                 if k not in CEILING_SWEPT + CEILING_MEASUREMENT}
        if other or not same_protocol:
            skipped.append(f"{f}: its preset differs from this code's {preset!r} in more than "
                           f"{', '.join(CEILING_SWEPT + CEILING_MEASUREMENT)}")
            continue
        key = (*_series(point), point["bc_steps"], point["seed"])
        if key in kept:
            first, second = sorted([kept[key], point], key=lambda p: -len(p["episodes"]))
            skipped.append(f"{second['file']}: the same size and seed as {first['file']}, "
                           f"which has {len(first['episodes'])} evaluation episodes (kept)")
            point = first
        kept[key] = point
    return [kept[k] for k in sorted(kept)], skipped


def ceiling_point(record: dict[str, Any]) -> dict[str, Any]:
    """One ceiling point from a ``bc-labels`` result (as ``runner.run`` returns and writes it):
    its sizes, seed, precision, mean normalised ID return and every episode's normalised return."""
    from masklam_bench.leaderboard import recorded_bf16

    preset, m = record["config"]["preset"], record["metrics"]
    lo, hi = m["ref_min_score"], m["ref_max_score"]
    return {"bc_steps": preset["train"]["bc_steps"],
            "train_episodes": preset["data"]["train_episodes"],
            # Absent from records at its old value 0 (presets.LATE_FIELDS).
            "bc_random_shift": preset["train"].get("bc_random_shift", 0), "seed": record["seed"],
            # A float32 run (no bf16 autocast: ``--no-bf16``, a CPU without bf16) is its own line.
            "bf16": recorded_bf16(record),
            "normalized_return_id": m["normalized_return_id"],
            "episodes": [metrics.normalized_return(x, lo, hi) for x in m["return_id_episodes"]],
            "bc_s": record.get("timings", {}).get("bc_s")}


def _series(point: dict[str, Any]) -> tuple[int, int, bool]:
    """The line a ceiling point belongs to: (train episodes, random shift, bf16)."""
    return point["train_episodes"], point.get("bc_random_shift", 0), point.get("bf16", True)


def _series_label(series: tuple[int, int, bool]) -> str:
    episodes, shift, bf16 = series
    return (f"{episodes} train episodes" + (f", shift {shift}" if shift else "")
            + ("" if bf16 else ", float32"))


def _without_swept(preset: dict[str, Any]) -> dict[str, Any]:
    """A preset dict without the fields ceiling points may differ in."""
    out = json.loads(json.dumps(preset))
    for key in CEILING_SWEPT + CEILING_MEASUREMENT:
        section, field = key.split(".")
        out[section].pop(field, None)
    return out


def fit_ceiling(points: list[dict[str, Any]], gate: float = 0.5) -> list[dict[str, Any]]:
    """Least-squares line of normalised return on log2(BC steps), per dataset size and shift.

    Fitted on every seed's mean return (one value per run), so a BC-step count with more seeds
    weighs more. ``per_doubling`` is the return gained per doubling of the BC steps, with its 95%
    Student-t interval and the p-value of a zero slope (from ``scipy.stats.linregress``; both
    None below three runs); ``steps_to_gate`` is where the line reaches ``gate``, and
    ``steps_to_gate_fastest`` where a line through the points' mean at the interval's top slope
    does (None when the line does not rise, or not below 2^64 steps; ``steps_to_gate_fastest``
    also None when the points' mean is already at the gate: the runs reach it). An extrapolation
    of a few noisy points: a statement of the measured trend, not a prediction.
    """
    from scipy import stats

    fits = []
    for series in sorted({_series(p) for p in points}):
        mine = [p for p in points if _series(p) == series]
        x = np.log2([p["bc_steps"] for p in mine])
        y = np.asarray([p["normalized_return_id"] for p in mine], dtype=np.float64)
        if len(set(x.tolist())) < 2:
            continue
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
        ci, p_value, fastest = None, None, None
        if len(mine) >= 3:  # two points fit exactly: no spread to measure
            line = stats.linregress(x, y)
            half = float(stats.t.ppf(0.975, len(mine) - 2) * line.stderr)
            ci, p_value = [slope - half, slope + half], float(line.pvalue)
            if float(y.mean()) < gate:  # above it, a steeper line would reach it later
                fastest = _steps_to(gate, float(x.mean()), float(y.mean()), ci[1])
        fits.append({"train_episodes": series[0], "bc_random_shift": series[1],
                     "bf16": series[2], "runs": len(mine), "per_doubling": slope,
                     "per_doubling_ci95": ci, "p_value": p_value, "intercept_log2": intercept,
                     "gate": gate,
                     "steps_to_gate": _steps_to(gate, 0.0, intercept, slope),
                     "steps_to_gate_fastest": fastest})
    return fits


def _steps_to(gate: float, x0: float, y0: float, slope: float) -> float | None:
    """BC steps where the line through (log2 steps x0, return y0) with ``slope`` reaches ``gate``;
    None when it does not rise or only beyond 2^64 steps (which keeps the JSON free of inf)."""
    if slope <= 0:
        return None
    log2_steps = x0 + (gate - y0) / slope
    return float(2 ** log2_steps) if log2_steps < 64 else None


def describe_fit(fit: dict[str, Any]) -> str:
    """One line for a :func:`fit_ceiling` result."""
    reach = (f"reaches {fit['gate']} at about {fit['steps_to_gate']:.3g} BC steps"
             if fit["steps_to_gate"] else f"does not reach {fit['gate']}")
    text = (f"{_series_label(_series(fit))} ({fit['runs']} runs): "
            f"{fit['per_doubling']:+.3f} per doubling of BC steps")
    if fit["per_doubling_ci95"] is not None:
        lo, hi = fit["per_doubling_ci95"]
        text += f" (95% interval {lo:+.3f} to {hi:+.3f}, p = {fit['p_value']:.2g})"
    text += f"; the line {reach}"
    if fit["steps_to_gate_fastest"]:
        text += f", at the interval's top slope at about {fit['steps_to_gate_fastest']:.3g}"
    return text


def summarise_probe(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and Student-t 95% interval over seeds per (method, step), beside the mean of the same
    seeds' untrained controls; ``ratio_to_control`` is the ratio of the two means (no interval).
    Snapshots of one run at several steps are not independent of each other."""
    rows = []
    keys = sorted({(p["method"], p["step"]) for p in points}, key=lambda k: (k[0], k[1]))
    for method, step in keys:
        vals = [p["probe_nmse"] for p in points if (p["method"], p["step"]) == (method, step)]
        ctrl = [p["probe_nmse_untrained"] for p in points
                if (p["method"], p["step"]) == (method, step)]
        mean, lo, hi = metrics.mean_ci(vals)
        lo, hi = (None, None) if len(vals) < 2 else (lo, hi)  # one seed: no interval
        rows.append({"method": method, "step": step, "n": len(vals), "mean": mean, "lo": lo,
                     "hi": hi, "control": float(np.mean(ctrl)),
                     "ratio_to_control": mean / float(np.mean(ctrl))})
    return rows


def plot_probe(rows: list[dict[str, Any]], title: str) -> bytes:
    """PNG: probe NMSE against LAM steps per method, dashed lines at each untrained control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, method in enumerate(sorted({r["method"] for r in rows})):
        mine = [r for r in rows if r["method"] == method]
        color = f"C{i}"
        x = [r["step"] for r in mine]
        ax.errorbar(x, [r["mean"] for r in mine],
                    yerr=[[r["mean"] - (r["lo"] if r["lo"] is not None else r["mean"])
                           for r in mine],
                          [(r["hi"] if r["hi"] is not None else r["mean"]) - r["mean"]
                           for r in mine]],
                    marker="o", color=color, label=f"{method} (n={_n_label(mine)})", capsize=3)
        ax.axhline(_control_line(rows, method), color=color, linestyle="--", linewidth=1)
    ax.set_xlabel("LAM steps (snapshots of one run)")
    ax.set_ylabel("probe NMSE (lower is better)")
    return _finish(fig, ax, title, sorted({r["step"] for r in rows}))


def _n_label(rows: list[dict[str, Any]]) -> str:
    """Seeds per point of one method: ``3``, or ``2-3`` when the steps have different counts."""
    low, high = min(r["n"] for r in rows), max(r["n"] for r in rows)
    return str(low) if low == high else f"{low}-{high}"


def _control_line(rows: list[dict[str, Any]], method: str) -> float:
    """The dashed control of ``method``: its row with the most seeds (every seed's control is the
    same at each step, so this is the mean over the most seeds)."""
    return max((r for r in rows if r["method"] == method), key=lambda r: r["n"])["control"]


def plot_ceiling(points: list[dict[str, Any]], title: str,
                 fits: list[dict[str, Any]] | None = None) -> bytes:
    """PNG: bc-labels normalised return against BC steps, one line per dataset size and shift.

    Error bars are the 95% interval over every evaluation episode of every seed at a size;
    ``fits`` (from :func:`fit_ceiling`) are drawn as dotted lines over the measured range.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, series in enumerate(sorted({_series(p) for p in points})):
        mine = [p for p in points if _series(p) == series]
        steps = sorted({p["bc_steps"] for p in mine})
        stats = [metrics.mean_ci([e for p in mine if p["bc_steps"] == s for e in p["episodes"]])
                 for s in steps]
        ax.errorbar(steps, [m for m, _, _ in stats],
                    yerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]],
                    marker="o", color=f"C{i}", capsize=3, label=_series_label(series))
        for fit in fits or []:
            if _series(fit) == series:
                xs = np.asarray([steps[0], steps[-1]], dtype=np.float64)
                ax.plot(xs, fit["intercept_log2"] + fit["per_doubling"] * np.log2(xs),
                        color=f"C{i}", linestyle=":", linewidth=1,
                        label=f"fit, {_series_label(series)}: "
                              f"{fit['per_doubling']:+.3f} per doubling")
    ax.axhline(0.5, color="grey", linestyle=":", label="gate: 0.5")
    ax.set_xlabel("BC steps")
    ax.set_ylabel("bc-labels normalised return (ID)")
    return _finish(fig, ax, title, sorted({p["bc_steps"] for p in points}))


def _finish(fig: Any, ax: Any, title: str, ticks: list[int] | None = None) -> bytes:
    """Title, legend and log-x axis on ``ax`` (labelled at ``ticks``, the measured steps); the
    figure as PNG bytes (no timestamp: stable)."""
    import io

    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``masklam-bench curve``."""
    p = subparsers.add_parser("curve", help="scale curves: probe vs LAM steps, ceiling vs BC size")
    p.add_argument("kind", choices=["probe", "ceiling"])
    p.add_argument("--task", default="cheetah", help="task (default: cheetah)")
    p.add_argument("--methods", default="oracle,masklam,lapo", help="probe curve: methods")
    p.add_argument("--steps", default=None,
                   help="probe: LAM steps (default 1500,6000,24000); ceiling: BC steps")
    p.add_argument("--episodes", default="24", help="ceiling: train episodes (e.g. 24,96)")
    p.add_argument("--shifts", default="0",
                   help="ceiling: random-shift augmentation of BC's frames, in pixels (0: off; "
                        "e.g. 0,4)")
    p.add_argument("--seeds", default="0", help="training seeds (default: 0)")
    p.add_argument("--dim", type=int_at_least(1), default=64,
                   help="probe: latent dim (default: 64)")
    p.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field (as for run)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--runs-root", default="runs/curves")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="probe: draw the curve from these probe-curve JSON files (repeatable; "
                        "e.g. one per seed) instead of running; --methods/--steps/--seeds/--dim "
                        "are ignored")
    p.add_argument("--from-results", action="append", default=[], metavar="PATH",
                   help="ceiling: draw the curve from these bc-labels result files or folders "
                        "(repeatable) instead of running; --steps/--episodes/--shifts/--seeds are "
                        "ignored")
    p.add_argument("--out", default="curves", help="folder for the curve's JSON and PNG")
    p.add_argument("--threads", type=int_at_least(0), default=0,
                   help="torch CPU threads (default 0: torch's own count)")
    add_bf16_flag(p)
    p.set_defaults(func=_cmd_curve, output_folders=("data_root", "runs_root", "out"))


def _cmd_curve(args: argparse.Namespace) -> None:
    """Run (or resume) one curve and write ``<out>/<kind>_curve_<task>.{json,png}``."""
    import torch

    from masklam_bench.envs import get_task
    from masklam_bench.errors import UserError

    task = get_task(args.task).name
    seeds = parse_int_list(args.seeds, "--seeds", minimum=0, example="0,1,2")
    overrides = parse_overrides(args.set, None)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.kind == "probe":
        if args.merge:
            if overrides:
                raise UserError("--merge takes each curve's overrides as they are; drop --set.")
            points, overrides, dim, videos = merge_probe_curves(
                [Path(p) for p in args.merge], task, args.preset)
        else:
            for method in args.methods.split(","):
                cls = method_class(method)
                if cls.latent_is_action or cls.skips_pretraining:
                    raise UserError(f"--methods: {method} trains no LAM, so there is no probe "
                                    f"to follow over LAM steps; drop it.")
            steps = parse_int_list(args.steps or ",".join(map(str, PROBE_STEPS)), "--steps", 1)
            dim, videos = args.dim, distractor_videos()
            say_if_float32(args.bf16, "cpu")
            points = probe_curve(task, args.methods.split(","), sorted(steps), seeds, dim,
                                 args.preset, overrides, args.data_root, args.runs_root,
                                 args.threads, bf16=args.bf16)
        rows = summarise_probe(points)
        bf16 = all(p.get("bf16", True) for p in points)  # one precision (merge checks it)
        seed_list = ",".join(str(x) for x in sorted({p["seed"] for p in points}))
        title = (f"{task}, d{dim}, {args.preset} preset, seeds {seed_list}"
                 f"{_videos_text(videos)}{'' if bf16 else ', float32'}")
        png = plot_probe(rows, title)
        payload = {"task": task, "preset": args.preset, "dim": dim, "overrides": overrides,
                   "distractor_videos": videos, "bf16": bf16, "points": points, "summary": rows}
        for row in rows:
            ci = (f"[{row['lo']:.3f}, {row['hi']:.3f}]" if row["lo"] is not None
                  else "(n=1, no interval)")
            print(f"{row['method']:>10} step {row['step']:>6}: probe {row['mean']:.3f} "
                  f"{ci} control {row['control']:.3f} "
                  f"({row['ratio_to_control']:.2f}x)")
    else:
        points = _ceiling_points(args, task, seeds, overrides, out)
        fits = fit_ceiling(points)
        videos = distractor_videos()
        png = plot_ceiling(points, f"{task}, bc-labels, {args.preset} preset"
                           f"{_videos_text(videos)}", fits)
        payload = {"task": task, "preset": args.preset, "overrides": overrides,
                   "distractor_videos": videos, "points": points, "fits": fits}
        for p in points:
            print(f"bc steps {p['bc_steps']:>6} episodes {p['train_episodes']:>4} shift "
                  f"{p['bc_random_shift']} seed {p['seed']}: normalised return "
                  f"{p['normalized_return_id']:.3f}")
        for fit in fits:
            print(f"fit, {describe_fit(fit)}")
    # DAVIS and float32 curves beside, not over, procedural bf16 ones in the same --out.
    stem = (f"{args.kind}_curve_{task}{'' if videos == PROCEDURAL_VIDEOS else '_davis'}"
            f"{'' if payload.get('bf16', True) else '_fp32'}")
    atomic_write_json(out / f"{stem}.json", payload)
    atomic_write_bytes(out / f"{stem}.png", png)
    print(f"wrote {out}/{stem}.json and .png")


def _videos_text(videos: str) -> str:
    """A plot title's mention of the distractor videos: nothing for the procedural ones."""
    return "" if videos == PROCEDURAL_VIDEOS else f", {videos} videos"


def _ceiling_points(args: argparse.Namespace, task: str, seeds: list[int],
                    overrides: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """The ceiling curve's points: read from ``--from-results``, or run (resuming) otherwise."""
    import sys

    from masklam_bench.errors import UserError
    from masklam_bench.presets import parse_override

    if args.from_results:
        if overrides:
            raise UserError("--from-results takes the runs as they are; drop --set.")
        missing = [p for p in args.from_results if not Path(p).exists()]
        if missing:
            raise UserError(f"--from-results: no such file or folder: {', '.join(missing)}")
        points, skipped = ceiling_points_from_results(
            [Path(p) for p in args.from_results], task, args.preset)
        for line in skipped:
            print(f"left out: {line}", file=sys.stderr)
        if not points:
            raise UserError(f"--from-results: no bc-labels result of {task} at the "
                            f"{args.preset!r} preset in {', '.join(args.from_results)}.")
        return points
    swept = sorted(set(overrides) & set(CEILING_SWEPT))
    if swept:
        raise UserError(f"--set {', '.join(swept)}: the ceiling curve sweeps it; give its values "
                        "with --steps, --episodes or --shifts.")
    steps = parse_int_list(args.steps or ",".join(map(str, CEILING_BC_STEPS)), "--steps", 1)
    episodes = parse_int_list(args.episodes, "--episodes", 1, example="24,96")
    shifts = parse_int_list(args.shifts, "--shifts", 0, example="0,4")
    for shift in shifts:
        parse_override(f"{SHIFT_KEY}={shift}")  # its bounds, in --set's words
    say_if_float32(args.bf16, "cpu")
    return ceiling_curve(task, sorted(steps), episodes, seeds, args.preset, overrides,
                         args.data_root, args.runs_root, str(out / "results"), args.threads,
                         shifts=tuple(shifts), bf16=args.bf16)


__all__ = ["ceiling_curve", "ceiling_point", "ceiling_points_from_results", "describe_fit",
           "fit_ceiling", "merge_probe_curves", "plot_ceiling", "plot_probe", "probe_curve",
           "summarise_probe"]
