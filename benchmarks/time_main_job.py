"""Time the README's main job end to end, stage by stage, with its CPU, system time and faults.

    MUJOCO_GL=egl python benchmarks/time_main_job.py [--out main_job_timing.json] [--keep]

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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = ["-m", "masklam_bench.cli", "run", "--method", "masklam", "--dims", "64,8192"]
"""The README's main job (``--preset cpu`` is added: the preset it picks without CUDA)."""
STAGES = ("lam_s", "probe_s", "bc_s", "decoder_s", "eval_s", "total_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="main_job_timing.json", help="JSON file of the figures")
    parser.add_argument("--data-root", default="data", help="dataset folder (reused if present)")
    parser.add_argument("--keep", action="store_true", help="keep the run and result folders")
    parser.add_argument("--preset", default="cpu", help="cpu (the README's job); smoke to try it")
    args = parser.parse_args()
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
    figures = {"command": "masklam-bench " + " ".join(cmd[3:]), "wall_s": wall,
               "user_s": usage.ru_utime, "system_s": usage.ru_stime,
               "system_share": usage.ru_stime / max(usage.ru_utime + usage.ru_stime, 1e-9),
               "minor_faults": usage.ru_minflt, "peak_rss_mib": usage.ru_maxrss / 1024,
               "runs": runs, "metrics": metrics}
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
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
