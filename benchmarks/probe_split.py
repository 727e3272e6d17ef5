"""Does the probe's choice of ridge strength depend on how its validation rows are drawn?

    python benchmarks/probe_split.py RUN_DIR [RUN_DIR ...] [--threads 2] [--out probe_split.json]
    python benchmarks/probe_split.py --summary probe_split.json

Stage 2 fits a ridge probe z -> a on ``probe_fit_transitions`` train transitions and chooses the
ridge strength from ``metrics.RIDGE_GRID`` on a random 20% of those transitions (``frames``).
Consecutive frames of an episode are nearly alike, so those validation rows have neighbours in the
fit rows, and the choice may favour too little regularisation where the latent is wide. This script
re-fits the probe of finished runs (their ``lam_final.pt``, and the untrained control, as stage 2
builds it) three ways, on the same latents and the same fit rows, and scores each on the test split:

- ``frames``: stage 2's own protocol (``metrics.linear_probe_nmses``); it must give the run's
  ``probe.json`` values, which the script checks;
- ``episodes``: the strength chosen on the rows of a random 20% of the fit rows' episodes (the
  rest fit), then refitted on all rows, as ``frames`` is;
- ``test_best``: the grid strength with the lowest test NMSE (an optimistic bound: it looks at the
  test split), with the test NMSE at every strength.

Nothing is written into the run folders (their lock is taken while the LAM is read) and no run's
result changes; the output is one JSON file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from masklam_bench import metrics, runner
from masklam_bench.fileio import atomic_write_json
from masklam_bench.provenance import unlock_run_folder

VAL_EPISODE_SEED = 0
"""Seed of the draw of validation episodes (the frame split uses ``metrics.PROBE_VAL_SEED``)."""


def _open(run_dir: Path, threads: int) -> runner._Run:
    """The finished run's data, samplers and trained LAM (stage 1 loaded, never recomputed)."""
    if not (run_dir / "lam_final.pt").exists():
        raise SystemExit(f"{run_dir}: no lam_final.pt; this script reads finished LAMs only.")
    config = runner.RunConfig(**json.loads((run_dir / "config.json").read_text()))
    config.runs_root = str(run_dir.parent)
    run = runner._open_run(config, progress=False, check_code=False)
    torch.set_num_threads(threads)
    try:
        runner._stage_lam(run)
    finally:
        unlock_run_folder(run.run_dir)
    return run


def _episode_val_rows(episode_of_row: np.ndarray) -> np.ndarray:
    """Rows of a seeded 20% (``metrics.PROBE_VAL_FRACTION``) of the episodes, at least one."""
    episodes = np.unique(episode_of_row)
    n_val = max(1, round(metrics.PROBE_VAL_FRACTION * len(episodes)))
    chosen = np.random.default_rng(VAL_EPISODE_SEED).choice(episodes, size=n_val, replace=False)
    return np.flatnonzero(np.isin(episode_of_row, chosen))


def _scores(z: np.ndarray, a: np.ndarray, z_test: np.ndarray, a_test: np.ndarray,
            groups: dict[str, slice], episode_of_row: np.ndarray) -> dict[str, dict]:
    """Per target: chosen strength and test NMSE under ``episodes`` and ``test_best``."""
    grid = list(metrics.RIDGE_GRID)
    mu, sd = metrics._column_stats(z)
    every = np.arange(len(z))
    # Test NMSE of the probe refitted on every row at each strength (standardised weights).
    full, _ = metrics._ridge_weights(z, a, every, mu, sd, grid)
    z_std = (z_test.astype(np.float64) - mu) / sd
    test = {name: [metrics.probe_nmse(z_std @ w[:, g] + b[g], a_test[:, g]) for w, b in full]
            for name, g in groups.items()}
    val_rows = _episode_val_rows(episode_of_row)
    fit_rows = np.setdiff1d(every, val_rows)
    candidates, _ = metrics._ridge_weights(z, a, fit_rows, mu, sd, grid)
    errors = metrics._sq_errors(z, a, val_rows, mu, sd, candidates)
    out = {}
    for name, g in groups.items():
        pick = int(np.argmin(errors[:, g].sum(axis=1)))
        best = int(np.argmin(test[name]))
        out[name] = {"episodes": {"ridge": grid[pick], "nmse": test[name][pick]},
                     "test_best": {"ridge": grid[best], "nmse": test[name][best]},
                     "test_nmse_by_ridge": dict(zip(map(str, grid), test[name])),
                     "val_episodes": len(np.unique(episode_of_row[val_rows]))}
    return out


def _frames(z: np.ndarray, a: np.ndarray, z_test: np.ndarray, a_test: np.ndarray,
            groups: dict[str, slice]) -> dict[str, dict]:
    """Stage 2's own protocol (``metrics.linear_probe_nmses``' steps): strength and test NMSE."""
    w, b, lams = metrics._fit(z, a, metrics.RIDGE_GRID, list(groups.values()))
    pred = metrics.apply_linear_probe(w, b, z_test)
    return {name: {"ridge": lam, "nmse": metrics.probe_nmse(pred[:, g], a_test[:, g])}
            for (name, g), lam in zip(groups.items(), lams)}


def analyse(run_dir: Path, threads: int) -> dict[str, object]:
    """Every protocol's figures for the trained LAM and the untrained control of one run."""
    run = _open(run_dir, threads)
    config, train, test = run.config, run.train_s, run.test_s
    fit_index, targets = runner.probe_fit_index(run), runner.probe_targets(run)
    fits = [metrics._as_2d(y[fit_index], name) for name, (y, _) in targets.items()]
    a_fit = np.concatenate(fits, axis=1)
    a_test = np.concatenate([metrics._as_2d(y[test.data.transitions], name)
                             for name, (_, y) in targets.items()], axis=1)
    ends = np.cumsum([y.shape[1] for y in fits])
    groups = {name: slice(int(end - y.shape[1]), int(end))
              for name, y, end in zip(targets, fits, ends)}
    episode_of_row = run.train.episode_start[fit_index]
    recorded = json.loads((run_dir / "probe.json").read_text())
    untrained = runner.build_method(config, run.preset, run.train.image_size,
                                    run.train.action_dim, config.seed)
    record: dict[str, object] = {"run": run_dir.name, "method": config.method,
                                 "task": config.task, "latent_dim": config.latent_dim,
                                 "seed": config.seed, "fit_rows": len(fit_index),
                                 "fit_episodes": len(np.unique(episode_of_row))}
    for suffix, model in (("", run.method), ("_untrained", untrained)):
        start_s = time.perf_counter()
        z_fit = runner.encode_all(model, train, fit_index)
        z_test = runner.encode_all(model, test, test.data.transitions)
        frames = _frames(z_fit, a_fit, z_test, a_test, groups)
        for name, value in frames.items():
            if value["nmse"] != recorded[f"{name}{suffix}"]:
                raise SystemExit(f"{run_dir}: {name}{suffix} {value['nmse']!r} is not "
                                 f"probe.json's {recorded[name + suffix]!r}: not stage 2's probe.")
        scores = _scores(z_fit, a_fit, z_test, a_test, groups, episode_of_row)
        for name in groups:
            scores[name]["frames"] = frames[name]
            record[f"{name}{suffix}"] = scores[name]
        print(f"{run_dir.name}{suffix or ' trained'}: "
              + "; ".join(f"{n} frames {s['frames']['nmse']:.4f} (ridge {s['frames']['ridge']:g}), "
                          f"episodes {s['episodes']['nmse']:.4f} (ridge {s['episodes']['ridge']:g}), "
                          f"test-best {s['test_best']['nmse']:.4f} (ridge {s['test_best']['ridge']:g})"
                          for n, s in scores.items())
              + f" [{time.perf_counter() - start_s:.0f} s]", flush=True)
    return record


def _distinct(records: list[dict], dim: int, suffix: str) -> list[dict]:
    """The ``probe_nmse{suffix}`` records at ``dim``; an untrained control shared by several runs
    (LAPO and MaskLAM of one task and seed: one architecture, one seed) counted once."""
    cells = {}
    for r in records:
        if r["latent_dim"] == dim:
            cell = r[f"probe_nmse{suffix}"]
            key = (r["run"] if not suffix else (r["task"], r["seed"], cell["frames"]["nmse"]))
            cells.setdefault(key, cell)
    return list(cells.values())


def summarise(records: list[dict]) -> str:
    """Markdown: per latent kind, how far each choice's test NMSE is above the test-best one."""
    lines = [("| latents | runs | frames (stage 2): excess over test-best, mean / max | picks the "
             "test-best strength | episodes: excess, mean / max | picks the test-best strength |"),
             "|---|---:|---:|---:|---:|---:|"]
    for dim in sorted({r["latent_dim"] for r in records}):
        for suffix, kind in (("", "trained LAM"), ("_untrained", "untrained control")):
            cells = _distinct(records, dim, suffix)
            row = [f"d{dim}, {kind}", str(len(cells))]
            for way in ("frames", "episodes"):
                # Refitting on every row's sums can land a hair below the test-best figure.
                excess = [max(0.0, c[way]["nmse"] - c["test_best"]["nmse"]) for c in cells]
                hits = sum(c[way]["ridge"] == c["test_best"]["ridge"] for c in cells)
                row += [f"{np.mean(excess):.4f} / {np.max(excess):.4f}", f"{hits} of {len(cells)}"]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", ("| task | latent | method | seeds | probe NMSE, frames (stage 2) | episodes | "
              "test-best |"), "|---|---:|---|---:|---:|---:|---:|"]
    rows: dict[tuple, list[dict]] = {}
    for r in records:
        rows.setdefault((r["task"], r["latent_dim"], r["method"]), []).append(r["probe_nmse"])
    for (task, dim, method), cells in sorted(rows.items()):
        means = [np.mean([c[way]["nmse"] for c in cells])
                 for way in ("frames", "episodes", "test_best")]
        lines.append(f"| {task} | {dim} | {method} | {len(cells)} | "
                     + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Analyse each run folder, writing the records to ``--out`` as they finish; or summarise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished run folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("probe_split.json"))
    parser.add_argument("--summary", type=Path, help="print the table of an --out file and stop")
    args = parser.parse_args(argv)
    if args.summary:
        print(summarise(json.loads(args.summary.read_text())["runs"]))
        return
    if not args.runs:
        parser.error("name at least one finished run folder (or --summary FILE).")
    torch.manual_seed(0)
    command = " ".join(["python", "benchmarks/probe_split.py",
                        *(runner._portable_path(p) for p in args.runs),
                        "--threads", str(args.threads), "--out", runner._portable_path(args.out)])
    records = []
    for run_dir in args.runs:
        records.append(analyse(run_dir, args.threads))
        atomic_write_json(args.out, {"command": command, "grid": list(metrics.RIDGE_GRID),
                                     "runs": records})


if __name__ == "__main__":
    main()
