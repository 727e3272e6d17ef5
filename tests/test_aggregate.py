"""Statistics across tasks: our calls into rliable against rliable's own on fixed data."""

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics as rly_metrics

from masklam_bench import aggregate

REPS = 500
"""Bootstrap replicates here: enough to compare intervals, few enough to stay quick."""

CI_NOISE = 0.05
"""How far two bootstraps of the same data (different draws, REPS replicates each) may put an
interval's ends apart, for scores on [0, 1]."""

SCORES = np.random.default_rng(0).random((5, 4))
"""Fixed data: 5 runs x 4 tasks on [0, 1]."""


def _columns(matrix):
    return [matrix[:, j] for j in range(matrix.shape[1])]


def test_iqm_is_rliables_trimmed_mean():
    # n = 9: floor(9 / 4) = 2 cut from each end, 0, 0, 0, 0, 1 kept: 0.2 (not the 0.167 of an
    # IQM that weights the values at the quartiles).
    estimates = aggregate.interval_estimates([[0.0] * 6 + [1.0] * 3], REPS, 0.95, 0)
    assert estimates["iqm"][0] == pytest.approx(0.2)


def test_point_estimates_are_rliables():
    estimates = aggregate.interval_estimates(_columns(SCORES), REPS, 0.95, 0)
    assert estimates["iqm"][0] == pytest.approx(rly_metrics.aggregate_iqm(SCORES), rel=1e-12)
    assert estimates["mean"][0] == pytest.approx(rly_metrics.aggregate_mean(SCORES), rel=1e-12)
    assert estimates["optimality_gap"][0] == pytest.approx(
        rly_metrics.aggregate_optimality_gap(SCORES, 1.0), rel=1e-12)


def test_intervals_agree_with_rliables_matrix_bootstrap_within_noise():
    ours = aggregate.interval_estimates(_columns(SCORES), REPS, 0.95, 0)
    funcs = {"iqm": rly_metrics.aggregate_iqm, "mean": rly_metrics.aggregate_mean,
             "optimality_gap": rly_metrics.aggregate_optimality_gap}
    np.random.seed(123)  # a different draw from ours: the ends agree up to bootstrap noise
    _, theirs = rly.get_interval_estimates(
        {k: SCORES for k in funcs}, lambda x: np.array([f(x) for f in funcs.values()]),
        reps=REPS)
    for i, name in enumerate(funcs):
        low, high = theirs[name][:, i]
        point, our_low, our_high = ours[name]
        assert our_low <= point <= our_high
        assert our_low == pytest.approx(low, abs=CI_NOISE)
        assert our_high == pytest.approx(high, abs=CI_NOISE)


def test_estimates_are_deterministic_and_leave_the_global_random_state_alone():
    np.random.seed(7)
    before = np.random.random()
    np.random.seed(7)
    first = aggregate.interval_estimates(_columns(SCORES), REPS, 0.95, 3)
    assert np.random.random() == before
    assert aggregate.interval_estimates(_columns(SCORES), REPS, 0.95, 3) == first
    assert aggregate.interval_estimates(_columns(SCORES), REPS, 0.95, 4) != first


def test_tasks_may_have_different_numbers_of_runs():
    per_task = [[1.0, 2.0, 3.0], [5.0]]
    estimates = aggregate.interval_estimates(per_task, REPS, 0.95, 0)
    assert estimates["iqm"][0] == pytest.approx(rly_metrics.aggregate_iqm(np.array([1, 2, 3, 5.])))
    assert estimates["mean"][0] == pytest.approx((2.0 + 5.0) / 2)
    point, low, high = estimates["iqm"]
    assert low <= point <= high


def test_runs_are_resampled_within_their_task():
    # Task 0 always 0, task 1 always 10: every resample keeps the mean of task means at 5.
    point, low, high = aggregate.interval_estimates([[0.0] * 4, [10.0] * 4], REPS, 0.95, 0)["mean"]
    assert point == low == high == 5.0


def test_one_run_per_task_has_no_interval():
    point, low, high = aggregate.interval_estimates([[0.3], [0.5]], REPS, 0.95, 0)["iqm"]
    assert point == pytest.approx(0.4) and np.isnan(low) and np.isnan(high)


def test_missing_or_bad_scores_are_refused():
    with pytest.raises(ValueError, match="at least one run"):
        aggregate.interval_estimates([[1.0], []], REPS, 0.95, 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        aggregate.interval_estimates([[1.0, float("nan")]], REPS, 0.95, 0)


def test_probability_of_improvement_is_rliables():
    x, y = SCORES, SCORES[::-1] * 0.8 + 0.1
    point, low, high = aggregate.probability_of_improvement(_columns(x), _columns(y), REPS, 0.95, 0)
    assert point == pytest.approx(rly_metrics.probability_of_improvement(x, y), rel=1e-12)
    np.random.seed(123)
    _, theirs = rly.get_interval_estimates(
        {"xy": [x, y]}, rly_metrics.probability_of_improvement, reps=REPS)
    assert low == pytest.approx(theirs["xy"][0], abs=CI_NOISE)
    assert high == pytest.approx(theirs["xy"][1], abs=CI_NOISE)


def test_the_bootstraps_interquartile_mean_is_rliables_bit_for_bit():
    """IQM without SciPy's argument handling equals rliable's ``aggregate_iqm`` exactly, on
    every size (the cut at a quarter moves with it), ties, matrices and NaN."""
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 60))
        x = rng.normal(size=n) if trial % 2 else rng.integers(0, 5, n) / 4
        if trial % 3 == 0 and n % 2 == 0:
            x = x.reshape(2, -1)
        if trial % 37 == 0:
            x = np.array(x, dtype=float)
            x.flat[0] = np.nan
        theirs, ours = rly_metrics.aggregate_iqm(x), aggregate.interquartile_mean(x)
        assert type(ours) is type(theirs), trial
        assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), (trial, ours, theirs)


def test_the_bootstraps_improvement_statistic_is_rliables_bit_for_bit():
    """The statistic the bootstrap calls (without SciPy's per-task overhead) equals rliable's
    exactly: ties, equal columns, NaN, unequal run counts; and so do whole intervals."""
    rng = np.random.default_rng(0)
    for trial in range(600):
        shape_x, shape_y = (rng.integers(1, 7), 3), (rng.integers(1, 7), 3)
        if trial % 2:
            x, y = rng.integers(0, 4, shape_x) / 4, rng.integers(0, 4, shape_y) / 4
        else:
            x, y = rng.normal(size=shape_x), rng.normal(size=shape_y)
        if trial % 5 == 0:
            y = x.copy()
        if trial % 11 == 0:
            x[0, 1] = np.nan
        theirs, ours = (rly_metrics.probability_of_improvement(x, y),
                        aggregate.improvement_probability(x, y))
        assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), (trial, ours, theirs)
    x, y = SCORES, SCORES[::-1] * 0.8 + 0.1
    ours = aggregate.probability_of_improvement(_columns(x), _columns(y), REPS, 0.95, 0)
    with aggregate.seeded_global_numpy(0):
        points, intervals = rly.get_interval_estimates(
            {"xy": [x, y]}, rly_metrics.probability_of_improvement, reps=REPS)
    assert ours == (float(points["xy"]), *map(float, np.ravel(intervals["xy"])))


def test_probability_of_improvement_of_a_lower_nmse_is_high_on_one_minus_nmse():
    better, worse = [[0.2, 0.25, 0.3]] * 2, [[0.6, 0.65, 0.7]] * 2
    flip = [[[1 - v for v in task] for task in m] for m in (better, worse)]
    point, low, high = aggregate.probability_of_improvement(*flip, REPS, 0.95, 0)
    assert point == low == high == 1.0


def test_probability_of_improvement_uses_the_seeds_every_task_has():
    x = [[0.9, 0.8, 0.7], [0.9, 0.8]]
    y = [[0.1, 0.2], [0.1, 0.2]]
    point, _, _ = aggregate.probability_of_improvement(x, y, REPS, 0.95, 0)
    assert point == 1.0
    with pytest.raises(ValueError, match="same tasks"):
        aggregate.probability_of_improvement(x, y[:1], REPS, 0.95, 0)


def test_performance_profiles_are_rliables():
    scores = {"a": _columns(SCORES), "b": _columns(SCORES * 0.5)}
    profiles, intervals = aggregate.performance_profiles(scores, 100, 0.95, 0)
    assert profiles["a"] == pytest.approx(
        [np.mean(SCORES > t) for t in aggregate.PROFILE_TAUS])
    assert intervals["b"].shape == (2, len(aggregate.PROFILE_TAUS))


def test_plots_are_png_and_deterministic():
    estimates = {("lapo", "masklam"): (0.2, 0.1, 0.4), ("lapo", "oracle"): (0.3, np.nan, np.nan)}
    png = aggregate.plot_probability_of_improvement(estimates, "P(X < Y) probe NMSE", "t")
    assert png.startswith(b"\x89PNG") and png == aggregate.plot_probability_of_improvement(
        estimates, "P(X < Y) probe NMSE", "t")
    profiles, intervals = aggregate.performance_profiles({"a": _columns(SCORES)}, 50, 0.95, 0)
    assert aggregate.plot_performance_profiles(profiles, intervals, "t").startswith(b"\x89PNG")
