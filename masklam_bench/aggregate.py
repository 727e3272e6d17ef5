"""Statistics across tasks, computed by rliable (Agarwal et al., NeurIPS 2021).

The leaderboard's cross-task numbers come from here: the IQM, mean and optimality gap of all runs
with stratified-bootstrap intervals, the probability of improvement of one method over another,
and performance profiles, each computed by ``rliable.library`` and ``rliable.metrics`` and plotted
by ``rliable.plot_utils``. rliable's bootstrap draws its indices from NumPy's global random state,
so every call here seeds that state and restores it afterwards: the same input always gives the
same output, whatever ran before.

Scores are given per task (a list of runs for every task), so tasks may have different numbers of
runs; runs are resampled within their task (rliable's stratified bootstrap). rliable expects
higher-is-better scores: pass ``1 - NMSE`` for the probe.

rliable and its plotting stack (arch, pandas, seaborn) are imported on first use, so importing
this module is cheap.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

STATISTICS = ("iqm", "mean", "optimality_gap")
"""The aggregates of ``interval_estimates``, in order."""

OPTIMALITY_GAMMA = 1.0
"""Target of the optimality gap: gamma - mean(min(score, gamma)); 1 is the data's return."""

PROFILE_TAUS = np.linspace(0.0, 1.25, 51)
"""Thresholds of a performance profile of normalised returns (1 is the data's return)."""

PAIR_SEPARATOR = ","
"""Joins the two method names of a pair, as rliable's probability-of-improvement plot expects."""

PerTask = Sequence[Sequence[float]]
"""Scores of one method: for each task, the scores of its runs."""


@contextlib.contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global random state (which rliable's bootstrap draws from), then restore it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _columns(per_task: PerTask) -> list[np.ndarray]:
    """Each task's scores as a (runs, 1) float array; ValueError when empty or not finite."""
    columns = [np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in per_task]
    if not columns or any(c.size == 0 for c in columns):
        raise ValueError("every task needs at least one run; drop tasks without runs first.")
    if not all(np.all(np.isfinite(c)) for c in columns):
        raise ValueError("scores contain NaN or inf; drop missing runs first.")
    return columns


def _matrix(per_task: PerTask) -> np.ndarray:
    """Runs x tasks: the first k runs of every task, k the fewest runs of any task."""
    columns = _columns(per_task)
    runs = min(len(c) for c in columns)
    return np.concatenate([c[:runs] for c in columns], axis=1)


def interquartile_mean(scores: np.ndarray) -> np.floating:
    """rliable's ``aggregate_iqm`` (SciPy's ``trim_mean`` of a quarter at each end over all
    scores), bit for bit, without SciPy's argument handling, which was most of the bootstrap's
    time: the same partition and the same mean of the kept middle; NaN if any score is NaN."""
    a = np.asarray(scores).ravel()
    if a.size == 0 or np.isnan(a).any():
        return np.float64(np.nan)
    low = int(0.25 * a.size)
    high = a.size - low
    return np.mean(np.partition(a, (low, high - 1))[low:high])


def _all_statistics(*columns: np.ndarray) -> np.ndarray:
    """[IQM of all runs, mean of task means, optimality gap averaged over tasks] (rliable's).

    With the same number of runs on every task these equal rliable's ``aggregate_iqm``,
    ``aggregate_mean`` and ``aggregate_optimality_gap`` of the runs x tasks matrix.
    """
    from rliable import metrics as rly_metrics

    pooled = np.concatenate(columns)
    return np.array([
        interquartile_mean(pooled),
        np.mean([rly_metrics.aggregate_mean(c) for c in columns]),
        np.mean([rly_metrics.aggregate_optimality_gap(c, OPTIMALITY_GAMMA) for c in columns]),
    ])


def improvement_probability(scores_x: np.ndarray, scores_y: np.ndarray) -> np.floating:
    """rliable's ``probability_of_improvement``, bit for bit, without its per-task SciPy call.

    For each task (column), P(X > Y) + P(X = Y) / 2 over all pairs of runs: the Mann-Whitney U
    statistic that rliable takes from ``scipy.stats.mannwhitneyu``, divided by the number of
    pairs (0.5 where the two columns are equal; NaN where either holds a NaN, as SciPy gives),
    then averaged over tasks in the same order. U counts pairs, so it is exact in float64 either
    way. The bootstrap calls this thousands of times per pair of methods, and SciPy's argument
    handling was most of ``masklam-bench leaderboard``'s two minutes
    (``benchmarks/leaderboard_speed.py``).
    """
    per_task = []
    for x, y in zip(scores_x.T, scores_y.T):
        if np.array_equal(x, y):
            per_task.append(0.5)
        elif np.isnan(x).any() or np.isnan(y).any():
            per_task.append(np.float64(np.nan))
        else:
            greater = np.count_nonzero(x[:, None] > y[None, :])
            ties = np.count_nonzero(x[:, None] == y[None, :])
            per_task.append(np.float64(greater + 0.5 * ties) / (len(x) * len(y)))
    return np.mean(per_task)


def interval_estimates(per_task: PerTask, reps: int, confidence: float,
                       seed: int) -> dict[str, tuple[float, float, float]]:
    """IQM, mean and optimality gap across tasks with stratified-bootstrap intervals (rliable).

    Returns {statistic: (point, low, high)} for ``STATISTICS``. With one run per task the
    bootstrap cannot vary anything, so the interval is (nan, nan).
    """
    from rliable import library as rly

    columns = _columns(per_task)
    if max(len(c) for c in columns) == 1:
        points = _all_statistics(*columns)
        return {s: (float(p), np.nan, np.nan) for s, p in zip(STATISTICS, points)}
    with seeded_global_numpy(seed):
        points, intervals = rly.get_interval_estimates(
            {"x": columns}, _all_statistics, reps=reps, confidence_interval_size=confidence)
    return {s: (float(points["x"][i]), float(intervals["x"][0][i]),
                float(intervals["x"][1][i])) for i, s in enumerate(STATISTICS)}


def probability_of_improvement(x: PerTask, y: PerTask, reps: int, confidence: float,
                               seed: int) -> tuple[float, float, float]:
    """P(X > Y) averaged over tasks (rliable) and its stratified-bootstrap interval.

    ``x`` and ``y`` hold higher-is-better scores of the same tasks in the same order. Each method
    uses the first k runs of every task, k its fewest runs of any task (rliable needs a runs x
    tasks matrix). With one run per task for both, the interval is (nan, nan).
    """
    from rliable import library as rly
    from rliable import metrics as rly_metrics

    if len(x) != len(y):
        raise ValueError(f"X has {len(x)} tasks and Y has {len(y)}; compare them on the same "
                         "tasks.")
    mx, my = _matrix(x), _matrix(y)
    if len(mx) == 1 and len(my) == 1:
        return float(rly_metrics.probability_of_improvement(mx, my)), np.nan, np.nan
    with seeded_global_numpy(seed):
        points, intervals = rly.get_interval_estimates(
            {"xy": [mx, my]}, improvement_probability, reps=reps,
            confidence_interval_size=confidence)
    low, high = np.ravel(intervals["xy"])
    return float(points["xy"]), float(low), float(high)


def performance_profiles(scores: Mapping[str, PerTask], reps: int, confidence: float,
                         seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fraction of runs scoring above each of ``PROFILE_TAUS``, per method, with intervals.

    rliable's ``create_performance_profile`` over runs x tasks matrices (first k runs of each
    task, k a method's fewest); returns (profiles, intervals as 2 x taus arrays).
    """
    from rliable import library as rly

    matrices = {name: _matrix(per_task) for name, per_task in scores.items()}
    with seeded_global_numpy(seed):
        return rly.create_performance_profile(matrices, PROFILE_TAUS, reps=reps,
                                              confidence_interval_size=confidence)


def plot_probability_of_improvement(estimates: Mapping[tuple[str, str], tuple[float, float, float]],
                                    xlabel: str, title: str) -> bytes:
    """PNG of rliable's probability-of-improvement plot; ``estimates`` maps (X, Y) to
    (point, low, high), and pairs without an interval are drawn as their point."""
    from rliable import plot_utils

    points, intervals = {}, {}
    for (x, y), (point, low, high) in estimates.items():
        pair = f"{x}{PAIR_SEPARATOR}{y}"
        points[pair] = point
        intervals[pair] = (point, point) if np.isnan(low) else (low, high)

    def draw(ax):
        plot_utils.plot_probability_of_improvement(
            points, intervals, pair_separator=PAIR_SEPARATOR, ax=ax, xlabel=xlabel,
            xticks=[0.0, 0.25, 0.5, 0.75, 1.0], ticklabelsize="small", labelsize="medium")
        ax.set_xlim(0.0, 1.0)
        ax.set_title(title, fontsize="medium")

    return _png(draw, (7.0, 1.2 + 0.5 * len(points)))


def plot_performance_profiles(profiles: Mapping[str, np.ndarray],
                              intervals: Mapping[str, np.ndarray], title: str) -> bytes:
    """PNG of rliable's performance-profile plot of normalised returns over ``PROFILE_TAUS``."""
    from rliable import plot_utils

    def draw(ax):
        plot_utils.plot_performance_profiles(
            profiles, PROFILE_TAUS, performance_profile_cis=intervals, ax=ax,
            xlabel=r"normalised return ($\tau$)",
            ylabel=r"fraction of runs with return $> \tau$", labelsize="medium",
            ticklabelsize="small", legend=True, legendsize="small")
        ax.set_title(title, fontsize="medium")

    return _png(draw, (7.0, 4.0))


def _png(draw: Callable, size: tuple[float, float]) -> bytes:
    """PNG bytes of one figure drawn by ``draw(ax)``, outside pyplot's global figures."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
