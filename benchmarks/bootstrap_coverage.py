"""How often the leaderboard's cross-task intervals cover the truth, at the seed counts it has.

    python benchmarks/bootstrap_coverage.py [--sims 300] [--reps 500]

Draws scores of a method on T tasks with R runs each (normal, a task effect plus run noise),
asks ``aggregate.interval_estimates`` (rliable's stratified percentile bootstrap, the
leaderboard's) for the 95% interval of the mean of task means, and counts how often it holds the
true mean. Beside it, the 95% Student-t interval over runs of one task (``metrics.mean_ci``, the
per-task probe columns) for T = 1. Seeded: the same arguments print the same table.
"""

from __future__ import annotations

import argparse

import numpy as np

from masklam_bench import aggregate, metrics

SHAPES = ((1, 3), (3, 3), (5, 3), (3, 5), (10, 3))
"""(tasks, runs per task) to simulate: the leaderboard's are 3-4 tasks of 3 seeds."""


def coverage(tasks: int, runs: int, sims: int, reps: int, seed: int) -> tuple[float, float]:
    """Share of ``sims`` draws whose bootstrap (and, for one task, Student-t) interval holds the
    true mean."""
    rng = np.random.default_rng(seed)
    boot = t_hits = 0
    for i in range(sims):
        effects = rng.normal(0.0, 0.2, tasks)
        scores = effects[:, None] + rng.normal(0.0, 0.1, (tasks, runs))
        truth = effects.mean()  # the mean of task means the runs estimate
        _, low, high = aggregate.interval_estimates(scores, reps, 0.95, seed=i)["mean"]
        boot += low <= truth <= high
        if tasks == 1:
            _, t_low, t_high = metrics.mean_ci(scores[0])
            t_hits += t_low <= truth <= t_high
    return boot / sims, (t_hits / sims if tasks == 1 else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=300, help="simulated draws per shape")
    parser.add_argument("--reps", type=int, default=500, help="bootstrap replicates per interval")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| tasks x runs | stratified bootstrap, 95% | Student-t over runs, 95% |")
    print("|---|---:|---:|")
    for tasks, runs in SHAPES:
        boot, t = coverage(tasks, runs, args.sims, args.reps, args.seed)
        t_text = "" if np.isnan(t) else f"{t:.0%}"
        print(f"| {tasks} x {runs} | {boot:.0%} | {t_text} |", flush=True)


if __name__ == "__main__":
    main()
