"""Metrics: probe NMSE, the ridge probe, normalised return and seed intervals."""

import math

import numpy as np
import pytest

from masklam_bench import metrics

# --- probe NMSE


def test_nmse_of_perfect_prediction_is_zero():
    a = np.random.default_rng(0).normal(size=(100, 6))
    assert metrics.probe_nmse(a, a) == 0.0


def test_nmse_of_mean_predictor_is_one():
    a = np.random.default_rng(1).normal(loc=3.0, scale=[1, 2, 5], size=(200, 3))
    assert metrics.probe_nmse(np.broadcast_to(a.mean(axis=0), a.shape), a) == pytest.approx(1.0)


def test_nmse_normalises_by_mean_variance_not_per_dimension():
    target = np.array([[0.0, 0.0], [2.0, 20.0]])  # Var = 1 and 100, mean 50.5
    pred = target + np.array([1.0, 0.0])  # MSE = 0.5
    assert metrics.probe_nmse(pred, target) == pytest.approx(0.5 / 50.5)


def test_nmse_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        metrics.probe_nmse(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="constant"):
        metrics.probe_nmse(np.zeros((4, 2)), np.ones((4, 2)))


# --- linear probe


def _linear_data(n, dim, rng, rank=None, noise=0.0):
    """Latents z and actions a = z M + c; with ``rank``, z lies near a rank-``rank`` subspace."""
    if rank is None:
        z = rng.normal(scale=rng.uniform(0.1, 10.0, dim), size=(n, dim)) + 5.0
    else:
        z = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dim))
    m = rng.normal(size=(dim, 6)) / math.sqrt(dim)
    a = z @ m + np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    return z + noise * rng.normal(size=z.shape), a


def test_probe_recovers_linear_map_at_dim_16():
    rng = np.random.default_rng(0)
    z, a = _linear_data(600, 16, rng)
    nmse = metrics.linear_probe_nmse(z[:400], a[:400], z[400:], a[400:])
    assert nmse < 0.01


def test_probe_recovers_linear_map_at_dim_512_with_fewer_samples_than_dims():
    # N = 200 < 512: the dual form. The action is linear in z, which spans 12 directions.
    rng = np.random.default_rng(1)
    z, a = _linear_data(300, 512, rng, rank=12, noise=1e-3)
    nmse = metrics.linear_probe_nmse(z[:200], a[:200], z[200:], a[200:])
    assert nmse < 0.01


def test_probe_on_noise_latents_does_not_beat_the_mean():
    rng = np.random.default_rng(2)
    z, a = rng.normal(size=(300, 64)), rng.normal(size=(300, 3))
    assert metrics.linear_probe_nmse(z[:200], a[:200], z[200:], a[200:]) > 0.9


def test_primal_and_dual_forms_agree():
    rng = np.random.default_rng(3)
    z, a = rng.normal(size=(40, 30)) * 3 + 1, rng.normal(size=(40, 2))
    mu, sd = metrics._column_stats(z)
    primal = metrics._primal_weights(metrics._moments(z, a, np.arange(40), mu, sd), 0.1)
    dual = metrics._dual_weights((z - mu) / sd, a, 0.1)
    np.testing.assert_allclose(primal[0], dual[0], atol=1e-10)
    np.testing.assert_allclose(primal[1], dual[1], atol=1e-10)


def test_probe_handles_constant_latent_dims_and_float32():
    rng = np.random.default_rng(4)
    z, a = _linear_data(300, 8, rng)
    z = np.concatenate([z, np.full((300, 3), 7.0)], axis=1).astype(np.float32)
    w, b = metrics.fit_linear_probe(z, a, ridge=1e-4)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    assert metrics.probe_nmse(metrics.apply_linear_probe(w, b, z), a) < 1e-3


def test_ridge_is_chosen_on_a_train_split_and_prefers_strong_ridge_for_noise():
    rng = np.random.default_rng(5)
    z, a = rng.normal(size=(120, 100)), rng.normal(size=(120, 2))
    assert metrics.select_ridge(z, a) == max(metrics.RIDGE_GRID)
    clean_z, clean_a = _linear_data(200, 8, rng)
    assert metrics.select_ridge(clean_z, clean_a) == min(metrics.RIDGE_GRID)


@pytest.mark.parametrize("n, dim", [(300, 40), (60, 120)])  # primal and dual forms
def test_several_targets_share_work_but_score_as_if_probed_alone(n, dim):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(n + 50, dim))
    # One target the latents predict well (weak ridge wins), one pure noise (strong ridge wins).
    signal = z @ rng.normal(size=(dim, 3)) + 0.01 * rng.normal(size=(n + 50, 3))
    noise = rng.normal(size=(n + 50,))
    targets = {"signal": (signal[:n], signal[n:]), "noise": (noise[:n], noise[n:])}
    joint = metrics.linear_probe_nmses(z[:n], z[n:], targets)
    assert list(joint) == ["signal", "noise"]
    for name, (y_train, y_test) in targets.items():
        alone = metrics.linear_probe_nmse(z[:n], y_train, z[n:], y_test)
        assert joint[name] == pytest.approx(alone, rel=1e-9)
    assert metrics.select_ridge(z[:n], signal[:n]) != metrics.select_ridge(z[:n], noise[:n])


def test_probe_is_deterministic():
    rng = np.random.default_rng(6)
    z, a = rng.normal(size=(200, 20)), rng.normal(size=(200, 2))
    first, second = metrics.fit_linear_probe(z, a, metrics.RIDGE_GRID), \
        metrics.fit_linear_probe(z, a, metrics.RIDGE_GRID)
    np.testing.assert_array_equal(first[0], second[0])


def test_probe_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        metrics.fit_linear_probe(np.full((10, 3), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="one action per latent"):
        metrics.fit_linear_probe(np.zeros((10, 3)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="positive"):
        metrics.fit_linear_probe(np.zeros((10, 3)), np.zeros((10, 2)), ridge=0.0)


# --- normalised return


def test_normalized_return_maps_random_to_zero_and_expert_to_one():
    assert metrics.normalized_return(5.0, 5.0, 705.0) == 0.0
    assert metrics.normalized_return(705.0, 5.0, 705.0) == 1.0
    assert metrics.normalized_return(355.0, 5.0, 705.0) == pytest.approx(0.5)
    assert metrics.normalized_return(-65.0, 5.0, 705.0) == pytest.approx(-0.1)  # kept, not clipped
    np.testing.assert_allclose(metrics.normalized_return(np.array([5.0, 705.0]), 5.0, 705.0),
                               [0.0, 1.0])


def test_normalized_return_rejects_equal_references():
    with pytest.raises(ValueError, match="undefined"):
        metrics.normalized_return(10.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="finite"):
        metrics.normalized_return(10.0, float("nan"), 3.0)


# --- statistics


def test_mean_ci_matches_student_t():
    mean, low, high = metrics.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t_{0.975, 3}
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))


def test_mean_ci_of_one_seed_has_no_interval():
    mean, low, high = metrics.mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)


def test_format_mean_ci_writes_the_half_width_or_the_seed_count():
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert metrics.format_mean_ci([1.0, 2.0, 3.0, 4.0]) == f"2.500 +- {half:.3f}"
    assert metrics.format_mean_ci([0.7]) == "0.700 (n=1)"
