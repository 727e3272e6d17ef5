"""Time the README's main job end to end, stage by stage, with its CPU, system time and faults.

    MUJOCO_GL=egl python benchmarks/time_main_job.py [--out main_job_timing.json] [--keep]
    python benchmarks/time_main_job.py --compare BEFORE.json AFTER.json

Runs ``masklam-bench run --method masklam --dims 64,8192 --preset cpu`` in a child process with
fresh run and result folders (the dataset in ``data/`` is reused when present; delete it to time
its collection too), then prints one Markdown table: wall time, user and system CPU seconds, minor
page faults and peak RSS of the whole job, and each run's stage times from its result file. The
JSON also keeps each run's metrics, so that a before/after pair can be checked to come from
identical results. Run it on a machine with nothing else running: issue 19's before/after figures
are read from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from masklam_bench.fileio import atomic_write_json
from masklam_bench.provenance import git_state

COMMAND = ["-m", "masklam_bench.cli", "run", "--method", "masklam", "--dims", "64,8192"]
"""The README's main job (``--preset cpu`` is added: the preset it picks without CUDA)."""
STAGES = ("lam_s", "probe_s", "bc_s", "decoder_s", "eval_s", "total_s")


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:,.0f}"


def compare(before: dict, after: dict, labels: tuple[str, str] = ("before", "after")) -> str:
    """A Markdown table of two timings of the main job, stage by stage, and whether they agree.

    Agreement means: the same runs, and every metric equal except the runner's
    ``TIME_DEPENDENT_METRICS``.
    """
    def collection(fig: dict) -> float:  # what the runs' own timings do not cover
        return fig["wall_s"] - sum(run["total_s"] for run in fig["runs"].values())

    rows = [("**wall time, whole job**", f"**{_s(before['wall_s'])} s**",
             f"**{_s(after['wall_s'])} s**", f"**{before['wall_s'] / after['wall_s']:.2f}x**"),
            ("user CPU", f"{_s(before['user_s'])} s", f"{_s(after['user_s'])} s", ""),
            ("system CPU (share of CPU time)",
             f"{_s(before['system_s'])} s ({100 * before['system_share']:.1f}%)",
             f"{_s(after['system_s'])} s ({100 * after['system_share']:.1f}%)", ""),
            ("minor page faults", f"{before['minor_faults']:,}", f"{after['minor_faults']:,}", ""),
            ("peak RSS", f"{_s(before['peak_rss_mib'])} MiB", f"{_s(after['peak_rss_mib'])} MiB",
             ""),
            ("collection and start-up", f"{_s(collection(before))} s",
             f"{_s(collection(after))} s", f"{collection(before) / collection(after):.2f}x")]
    stages = " / ".join(STAGES[:-1])
    for name in before["runs"]:
        # A run of another precision on the other side (+fp32: a CPU without bf16) is its pair.
        twin = name[:-len("+fp32")] if name.endswith("+fp32") else name + "+fp32"
        b, a = before["runs"][name], after["runs"].get(name, after["runs"].get(twin))
        if a is None:
            continue
        rows.append((f"{name}: {stages}", " / ".join(_s(b[k]) for k in STAGES[:-1]),
                     " / ".join(_s(a[k]) for k in STAGES[:-1]), ""))
        rows.append((f"{name}: total", f"{_s(b['total_s'])} s", f"{_s(a['total_s'])} s",
                     f"{b['total_s'] / a['total_s']:.2f}x"))
    lines = [f"| | {labels[0]} | {labels[1]} | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines.append("")
    lines.append(agreement(before, after))
    return "\n".join(lines)


def agreement(before: dict, after: dict) -> str:
    """One sentence: do the two timings come from identical results?"""
    # Imported here, not at the top: the timing itself may run under an older checkout's Python
    # (the "before" side), which need not have this list.
    from masklam_bench.runner import TIME_DEPENDENT_METRICS

    if "metrics" not in before or "metrics" not in after:
        return "Metrics: not recorded in both files, so not compared."
    if set(before["metrics"]) != set(after["metrics"]):
        return (f"Metrics: different runs ({sorted(before['metrics'])} vs "
                f"{sorted(after['metrics'])}).")
    differ = [f"{run}: {key}" for run, metrics in before["metrics"].items()
              for key in sorted(set(metrics) | set(after["metrics"][run]))
              if key not in TIME_DEPENDENT_METRICS and metrics.get(key) != after["metrics"][run].get(key)]
    if differ:
        return "Metrics DIFFER: " + "; ".join(differ) + "."
    return ("Metrics: identical in every run (except " + ", ".join(sorted(TIME_DEPENDENT_METRICS))
            + ", a speed).")


def _recorded_command(cmd: list[str], fresh_data: bool) -> str:
    """The job's command as the JSON records it: folders as placeholders, not this machine's
    paths (the file is committed)."""
    shown = list(cmd[3:])
    for flag, placeholder in (("--data-root", "<fresh folder>" if fresh_data else "<data root>"),
                              ("--runs-root", "<temp>"), ("--out", "<temp>")):
        shown[shown.index(flag) + 1] = placeholder
    return "masklam-bench " + " ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="main_job_timing.json", help="JSON file of the figures")
    parser.add_argument("--data-root", default="data", help="dataset folder (reused if present)")
    parser.add_argument("--keep", action="store_true", help="keep the run and result folders")
    parser.add_argument("--preset", default="cpu", help="cpu (the README's job); smoke to try it")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="run nothing: print the before/after table of two saved --out files")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        print(compare(before, after, tuple(Path(p).stem for p in args.compare)))
        return
    fresh_data = not Path(args.data_root).exists()
    work = Path(tempfile.mkdtemp(prefix="main_job_"))
    cmd = [sys.executable, *COMMAND, "--preset", args.preset, "--data-root", args.data_root,
           "--runs-root", str(work / "runs"), "--out", str(work / "results")]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs, metrics = {}, {}
    for path in sorted((work / "results").glob("*.json")):
        result = json.loads(path.read_text())
        runs[result["run_name"]] = {k: result["timings"].get(k) for k in STAGES}
        metrics[result["run_name"]] = result["metrics"]
    git = git_state()
    import torch

    from masklam_bench.precision import fast_bf16

    figures = {"code": git["git_commit"], "code_dirty": git["git_dirty"],
               "cpu": {"capability": torch.backends.cpu.get_cpu_capability(),
                       "fast_bf16": fast_bf16("cpu")},
               "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()}, "
               f"{os.cpu_count()} CPUs", "command": _recorded_command(cmd, fresh_data),
               "data_collected": fresh_data,
               "wall_s": wall,
               "user_s": usage.ru_utime, "system_s": usage.ru_stime,
               "system_share": usage.ru_stime / max(usage.ru_utime + usage.ru_stime, 1e-9),
               "minor_faults": usage.ru_minflt, "peak_rss_mib": usage.ru_maxrss / 1024,
               "runs": runs, "metrics": metrics}
    atomic_write_json(args.out, figures)
    print(f"\nwall {wall:.0f} s, user {usage.ru_utime:.0f} s, system {usage.ru_stime:.0f} s "
          f"({100 * figures['system_share']:.1f}%), {usage.ru_minflt:,} minor faults, "
          f"peak RSS {figures['peak_rss_mib']:.0f} MiB")
    print("\n| run | " + " | ".join(STAGES) + " |\n|---|" + "---:|" * len(STAGES))
    for name, stages in runs.items():
        print(f"| {name} | " + " | ".join(f"{stages[k]:.0f}" if stages[k] is not None else "–"
                                          for k in STAGES) + " |")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
