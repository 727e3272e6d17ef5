"""Time a grid on the local Ray launcher against ``run`` doing the same runs in sequence.

    MUJOCO_GL=egl python benchmarks/time_sweep.py [--methods lapo,masklam] [--seeds 0,1]
        [--envs cheetah] [--dims 64] [--preset cpu] [--copy-to leaderboards/results]

Both sides run in fresh run and result folders, one thread per run: ``masklam-bench sweep
--cpus-per-run 1`` (a local Ray instance with every core) and then, one after another,
``masklam-bench run --method M --threads 1`` for each method. The dataset is collected first and
is not timed. It prints the two wall times, the speed-up, and whether every result file of the
sweep equals its sequential twin number for number (metrics and config; ``lam_samples_per_s``, a
throughput, and the timings aside). It exits non-zero if they differ. ``--copy-to`` copies the
sweep's result files there once they matched. Run it on a machine with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from masklam_bench.fileio import atomic_write_bytes, atomic_write_json
from masklam_bench.runner import TIME_DEPENDENT_METRICS, RunConfig, ensure_dataset, resolve

CLI = [sys.executable, "-m", "masklam_bench.cli"]


def _call(cmd: list[str]) -> float:
    """Run ``cmd``, fail if it fails, and return its wall time in seconds."""
    print("$ masklam-bench", " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def _results(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def differences(a: dict, b: dict) -> list[str]:
    """What differs between two result files of one run, as readable lines (empty: the same)."""
    lines = []
    keys = set(a["metrics"]) | set(b["metrics"])
    for key in sorted(keys - TIME_DEPENDENT_METRICS):
        if a["metrics"].get(key) != b["metrics"].get(key):
            lines.append(f"metrics.{key}: {a['metrics'].get(key)!r} != {b['metrics'].get(key)!r}")
    for key in ("lam", "preset"):
        if a["config"].get(key) != b["config"].get(key):
            lines.append(f"config.{key} differs")
    if a["dataset"].get("sha256") != b["dataset"].get("sha256"):
        lines.append("dataset checksum differs")
    return lines


def _collect(args: argparse.Namespace) -> None:
    """Collect (or verify) each task's dataset before either side is timed."""
    for env in args.envs.split(","):
        config = RunConfig(method=args.methods.split(",")[0], task=env, preset=args.preset,
                           data_root=args.data_root)
        print("dataset:", ensure_dataset(*resolve(config)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lapo,masklam")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--envs", default="cheetah")
    parser.add_argument("--dims", default="64")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", default="sweep_timing.json", help="JSON file of the figures")
    parser.add_argument("--copy-to", default=None, metavar="DIR",
                        help="copy the sweep's result files here once they matched")
    parser.add_argument("--keep", action="store_true", help="keep the run and result folders")
    args = parser.parse_args()
    if args.copy_to and not Path(args.copy_to).is_dir():
        parser.error(f"--copy-to {args.copy_to} is not a folder (checked before an hour of runs)")
    work = Path(tempfile.mkdtemp(prefix="time_sweep_"))
    grid = ["--envs", args.envs, "--dims", args.dims, "--seeds", args.seeds,
            "--preset", args.preset, "--data-root", args.data_root]
    _collect(args)
    ray_s = _call([*CLI, "sweep", "--methods", args.methods, *grid, "--cpus-per-run", "1",
                   "--runs-root", str(work / "ray-runs"), "--out", str(work / "ray-results"),
                   "--no-leaderboard"])
    seq_s = 0.0
    for method in args.methods.split(","):
        seq_s += _call([*CLI, "run", "--method", method, *grid, "--threads", "1",
                        "--runs-root", str(work / "seq-runs"), "--out", str(work / "seq-results")])
    ray, seq = _results(work / "ray-results"), _results(work / "seq-results")
    report = {name: differences(ray[name], seq[name]) if name in seq else ["missing in run's"]
              for name in ray}
    report.update({name: ["missing in sweep's"] for name in seq if name not in ray})
    same = not any(report.values())
    figures = {"grid": grid, "methods": args.methods, "ray_wall_s": ray_s,
               "sequential_wall_s": seq_s, "speed_up": seq_s / ray_s, "results_match": same,
               "differences": report,
               "runs": {name: r["timings"]["total_s"] for name, r in ray.items()},
               "sequential_runs": {name: r["timings"]["total_s"] for name, r in seq.items()}}
    atomic_write_json(args.out, figures)
    print(f"\n| launcher | runs | wall s |\n|---|---:|---:|\n| sweep (local Ray, 1 CPU a run) | "
          f"{len(ray)} | {ray_s:.0f} |\n| run, in sequence, --threads 1 | {len(seq)} | {seq_s:.0f} |")
    print(f"\nspeed-up {seq_s / ray_s:.2f}x; result files "
          + ("match number for number" if same else "DIFFER:"))
    for name, lines in report.items():
        for line in lines:
            print(f"  {name}: {line}")
    if same and args.copy_to:
        for path in sorted((work / "ray-results").glob("*.json")):
            atomic_write_bytes(Path(args.copy_to) / path.name, path.read_bytes())
        print(f"copied {len(ray)} result files to {args.copy_to}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
