"""Print the per-task row table that BENCHMARK.md's results sections use, from result files.

    python benchmarks/task_table.py --task cheetah-run
    python benchmarks/task_table.py --task walker-run --methods lapo,masklam,oracle,laom --dim 64
    python benchmarks/task_table.py --task cheetah-run --sweep 64,256,1024,8192

With ``--sweep DIMS`` it prints the latent-dim sweep table instead: one line per dim, MaskLAM's and
LAPO's probe NMSE (``--methods`` may name two others), their shared untrained control (one value
per seed, from whichever of the two runs has it), LAPO / MaskLAM and each against the control.

One line per method: seeds, probe NMSE (mean +- half-width of the 95% Student-t interval over
seeds, then each seed's value), the untrained-IDM control, their ratio, the normalised ID and OOD
returns (the same interval over the seeds' mean returns; the leaderboard's return cells pool the
episodes instead), and each run's total seconds. As on the leaderboard, return cells are marked
with a dagger unless the task's ``bc-labels`` rows (pixel BC on all true actions, the ceiling of
every row) reach a mean normalised ID return of 0.5; a line under the table says which. Only files of one protocol (by default the
code's current version of the preset, as the leaderboard's main table) without ``--set``
overrides are read, since BENCHMARK.md never puts two protocols in one table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from masklam_bench.leaderboard import (
    GATE_MARK,
    RETURN_GATE,
    TABLE_ORDER,
    current_protocol,
    protocol_id,
)
from masklam_bench.metrics import format_mean_ci as interval


def load_rows(results: Path, task: str, protocol: str, dim: int | None) -> dict[str, list[dict]]:
    """Result files of ``task`` at ``protocol`` (no overrides) by method, each sorted by seed."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(results.glob(f"{task}__*.json")):
        result = json.loads(path.read_text())
        if protocol_id(result) != protocol or result.get("overrides"):
            continue
        if dim is not None and not result.get("latent_is_action") and result["latent_dim"] != dim:
            continue
        rows.setdefault(result["method"], []).append(result)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in rows.items()}


def ceiling(rows: dict[str, list[dict]]) -> float | None:
    """Mean normalised ID return of the task's ``bc-labels`` runs, or None without any."""
    runs = rows.get("bc-labels", [])
    return statistics.mean(r["metrics"]["normalized_return_id"] for r in runs) if runs else None


def table(rows: dict[str, list[dict]], order: list[str]) -> list[str]:
    top = ceiling(rows)
    mark = "" if top is not None and top >= RETURN_GATE else f" {GATE_MARK}"
    lines = [("| method | seeds | probe NMSE (per seed) | untrained-IDM control | probe / control "
              "| norm. return ID | norm. return OOD | total s per run |"),
             "|---|---:|---|---|---:|---|---|---|"]
    for method in [m for m in order if m in rows]:
        runs = rows[method]
        metrics = [r["metrics"] for r in runs]
        probe = [m["probe_nmse"] for m in metrics if m.get("probe_nmse") is not None]
        control = [m["probe_nmse_untrained"] for m in metrics
                   if m.get("probe_nmse_untrained") is not None]
        probe_cell = (f"{interval(probe)} ({' / '.join(f'{x:.3f}' for x in probe)})"
                      if probe else "–")
        ratio = (f"{statistics.mean(probe) / statistics.mean(control):.2f}x"
                 if probe and control else "–")
        ood = ("(same env)" if runs[0]["ood_env_id"] == runs[0]["env_id"]
               else interval([m["normalized_return_ood"] for m in metrics]) + mark)
        times = " / ".join(str(round(r["timings"]["total_s"])) for r in runs)
        lines.append(f"| {method} | {len(runs)} | {probe_cell} | {interval(control) if control else '–'} "
                     f"| {ratio} | {interval([m['normalized_return_id'] for m in metrics])}{mark} "
                     f"| {ood} | {times} |")
    if mark:
        seen = ("not measured (no bc-labels run)" if top is None
                else f"{top:.3f}, below {RETURN_GATE}")
        lines.append(f"\n{GATE_MARK} bc-labels ceiling {seen}: no return of this task is "
                     "informative at this protocol.")
    return lines


def sweep_table(results: Path, task: str, protocol: str, dims: list[int],
                methods: tuple[str, str] = ("masklam", "lapo")) -> list[str]:
    """BENCHMARK.md's latent-dim sweep table of ``methods`` (first, second) at ``dims``."""
    first, second = methods
    head = (f"| latent dim | {first}: seeds, probe NMSE (per seed) | {second}: seeds, probe NMSE "
            f"(per seed) | untrained control (per seed) | {second} / {first} | {first} / control "
            f"| {second} / control |")
    lines = [head, "|---:|---|---|---|---:|---:|---:|"]

    def cell(values: list[float]) -> str:
        if not values:
            return "–"
        return f"{len(values)}: {interval(values)} ({' / '.join(f'{x:.3f}' for x in values)})"

    for dim in dims:
        rows = load_rows(results, task, protocol, dim)
        runs = {m: rows.get(m, []) for m in methods}
        probe = {m: [r["metrics"]["probe_nmse"] for r in runs[m]] for m in methods}
        control = {r["seed"]: r["metrics"]["probe_nmse_untrained"] for m in methods for r in runs[m]}
        if not control:
            continue
        mean_control = statistics.mean(control.values())

        def ratio(a: list[float], b: float | None) -> str:
            return f"{statistics.mean(a) / b:.2f}x" if a and b else "–"

        lines.append(
            f"| {dim} | {cell(probe[first])} | {cell(probe[second])} | {mean_control:.3f} "
            f"({' / '.join(f'{control[k]:.3f}' for k in sorted(control))}) "
            f"| {ratio(probe[second], statistics.mean(probe[first]) if probe[first] else None)} "
            f"| {ratio(probe[first], mean_control)} | {ratio(probe[second], mean_control)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="e.g. cheetah-run")
    parser.add_argument("--results", type=Path, default=Path("leaderboards/results"))
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--protocol", help="protocol id (8 hex digits, the leaderboard's) instead "
                        "of the current version of --preset")
    parser.add_argument("--dim", type=int, default=64,
                        help="latent dim of the LAM rows (rows without a latent are always shown)")
    parser.add_argument("--methods", help="comma-separated methods, in table order (default: every "
                        "method found, built-in ones first)")
    parser.add_argument("--sweep", help="comma-separated latent dims: print the latent-dim sweep "
                        "table of two methods (--methods, default masklam,lapo) instead")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        sys.exit(f"no results folder {args.results}")
    protocol = args.protocol or current_protocol(args.preset)
    if protocol is None:
        sys.exit(f"unknown preset {args.preset!r}")
    if args.sweep:
        pair = tuple(m.strip() for m in (args.methods or "masklam,lapo").split(","))
        if len(pair) != 2:
            sys.exit("--sweep compares two methods: pass --methods FIRST,SECOND")
        dims = [int(d) for d in args.sweep.split(",")]
        print("\n".join(sweep_table(args.results, args.task, protocol, dims, pair)))
        return
    rows = load_rows(args.results, args.task, protocol, args.dim)
    if not rows:
        sys.exit(f"no {args.task} result files of protocol {protocol} without overrides "
                 f"in {args.results}")
    order = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else
             [m for m in TABLE_ORDER if m in rows] + sorted(set(rows) - set(TABLE_ORDER)))
    print("\n".join(table(rows, order)))


if __name__ == "__main__":
    main()
