"""The benchmark's metrics: linear-probe NMSE, normalised return, and statistics over seeds and tasks.

Small pure functions, each with its formula in the docstring (in the manner of rliable's
``metrics.py``). Per-task numbers are reported as a mean with a Student-t interval over seeds;
numbers across tasks come from rliable itself (see ``masklam_bench.aggregate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import stdtrit

RIDGE_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2)
"""Ridge strengths the probe chooses from. The penalty is per sample on standardised latents
(see ``fit_linear_probe``), so one grid serves latent dims from 8 to 8192."""

PROBE_VAL_FRACTION = 0.2
"""Share of the probe's train split held out to choose the ridge strength."""

PROBE_VAL_SEED = 0
"""Seed of the permutation that draws the ridge-selection split (fixed: the probe is deterministic)."""

_MIN_SELECT_SAMPLES = 5
"""Fewest train samples with which a ridge strength can still be chosen on a held-out split."""

_CHUNK_ELEMENTS = 1 << 23
"""Float64 elements per block of latents (64 MiB): bounds memory at N=100k, dim=8192."""

_STD_FLOOR_REL = 1e-10
"""A latent dimension whose std is below this times its |mean| is constant up to rounding."""

# ---------------------------------------------------------------------------------------------
# Linear probe


def probe_nmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Normalised mean squared error of predicted actions (MaskLAM Eq. 5); lower is better.

        NMSE = mean_{i,j} (pred_ij - a_ij)^2 / mean_j Var_i(a_ij)

    over samples i and action dimensions j, with the population variance (ddof 0) of the target.
    A perfect prediction scores 0; predicting the per-dimension mean of the target scores 1.
    """
    pred, target = _as_2d(pred, "pred"), _as_2d(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target has shape {target.shape}; "
                         "pass one predicted action per target action.")
    if target.shape[0] < 2:
        raise ValueError("NMSE needs at least two target samples to measure their variance.")
    var = float(target.var(axis=0).mean())
    if not var > 0:
        raise ValueError("the target actions are constant, so NMSE (MSE / Var) is undefined.")
    return float(np.mean((pred - target) ** 2) / var)


def fit_linear_probe(z_train: np.ndarray, a_train: np.ndarray,
                     ridge: float | Sequence[float] = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge regression a ≈ z W + b, with an unpenalised bias.

    Each latent dimension is standardised with the train mean and std (a constant dimension gets
    std 1), then, on x = (z - mean) / std,

        W_x = argmin (1/n) ||x W + b - a||^2 + ridge ||W||^2
            = (X_c^T X_c + n ridge I)^-1 X_c^T A_c          (primal, used when dim <= n)
            = X_c^T (X_c X_c^T + n ridge I)^-1 A_c          (dual, used when dim > n)

    with X_c, A_c centred on their means, solved by Cholesky in float64. The standardisation is
    folded back, so the returned ``W`` (dim x action_dim) and ``b`` apply to raw latents. The
    primal Gram matrix is accumulated in blocks, so latents of N=100k x 8192 need not fit in
    memory twice.

    If ``ridge`` is a sequence, the strength is chosen on a held-out split of the train set:
    ``PROBE_VAL_FRACTION`` of the samples (fixed permutation, ``PROBE_VAL_SEED``) score each
    candidate fitted on the rest, and the best one is refitted on all of the train set.
    """
    w, b, _ = _fit(z_train, a_train, ridge)
    return w, b


def select_ridge(z_train: np.ndarray, a_train: np.ndarray,
                 grid: Sequence[float] = RIDGE_GRID) -> float:
    """The ridge strength from ``grid`` that ``fit_linear_probe(z_train, a_train, grid)`` uses."""
    return _fit(z_train, a_train, grid)[2][0]


def apply_linear_probe(w: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Predicted actions a_hat = z W + b of a probe from ``fit_linear_probe``."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != w.shape[0]:
        raise ValueError(f"latents have shape {z.shape} but the probe expects (N, {w.shape[0]}).")
    return z.astype(np.float64, copy=False) @ w + b


def linear_probe_nmse(z_train: np.ndarray, a_train: np.ndarray, z_test: np.ndarray,
                      a_test: np.ndarray,
                      ridge: float | Sequence[float] = RIDGE_GRID) -> float:
    """NMSE on (z_test, a_test) of a linear probe fitted on (z_train, a_train); lower is better.

        NMSE = probe_nmse(apply_linear_probe(*fit_linear_probe(z_train, a_train, ridge), z_test),
                          a_test)

    By default the ridge strength is chosen from ``RIDGE_GRID`` on a split of the train set
    (never on the test set), so small and very wide latents are probed equally fairly.
    """
    w, b = fit_linear_probe(z_train, a_train, ridge)
    return probe_nmse(apply_linear_probe(w, b, z_test), a_test)


def linear_probe_nmses(z_train: np.ndarray, z_test: np.ndarray,
                       targets: dict[str, tuple[np.ndarray, np.ndarray]],
                       ridge: float | Sequence[float] = RIDGE_GRID) -> dict[str, float]:
    """``linear_probe_nmse`` of several targets on the same latents, sharing the expensive work.

    ``targets`` maps a name to ``(a_train, a_test)``. Each target gets the NMSE (and chooses the
    ridge strength) that ``linear_probe_nmse`` would give it alone, up to floating-point rounding,
    but the standardisation, Gram matrix and Cholesky factors are computed once for all of them.
    """
    if not targets:
        return {}
    trains = {name: _as_2d(pair[0], f"{name} train targets") for name, pair in targets.items()}
    groups, start = [], 0
    for y in trains.values():
        groups.append(slice(start, start + y.shape[1]))
        start += y.shape[1]
    w, b, _ = _fit(z_train, np.concatenate(list(trains.values()), axis=1), ridge, groups)
    pred = apply_linear_probe(w, b, z_test)
    return {name: probe_nmse(pred[:, g], pair[1])
            for g, (name, pair) in zip(groups, targets.items())}


def _fit(z: np.ndarray, a: np.ndarray, ridge: float | Sequence[float],
         groups: Sequence[slice] | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Probe weights on raw latents and the ridge strength used for each group of target columns.

    Every group of ``a``'s columns (default: all of them, one group) gets its own ridge strength,
    chosen on its own validation error, exactly as if it were fitted alone; the latent statistics,
    Gram matrix and Cholesky factors are shared, which is what makes several targets cheap at
    dim 8192.
    """
    z = np.asarray(z)
    a = _as_2d(a, "a_train")
    if z.ndim != 2:
        raise ValueError(f"latents must be a 2-D array (N, dim); got shape {z.shape}.")
    n, _ = z.shape
    if a.shape[0] != n:
        raise ValueError(f"{n} latents but {a.shape[0]} actions; pass one action per latent.")
    if not np.all(np.isfinite(a)):
        raise ValueError("a_train contains NaN or inf.")
    grid = [float(ridge)] if np.isscalar(ridge) else [float(r) for r in ridge]
    if not grid or min(grid) <= 0:
        raise ValueError(f"ridge strengths must be positive; got {ridge!r}.")
    if n < (2 if len(grid) == 1 else _MIN_SELECT_SAMPLES):
        raise ValueError(f"only {n} train samples: too few to fit (and choose the ridge of) "
                         "a linear probe.")
    groups = [slice(None)] if groups is None else list(groups)
    mu, sd = _column_stats(z)

    if len(grid) == 1:
        lams = [grid[0]] * len(groups)
        w, b = _ridge_weights(z, a, np.arange(n), mu, sd, grid)[0][0]
    else:
        perm = np.random.default_rng(PROBE_VAL_SEED).permutation(n)
        n_val = max(1, round(PROBE_VAL_FRACTION * n))
        fit_rows, val_rows = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        candidates, fit_moments = _ridge_weights(z, a, fit_rows, mu, sd, grid)
        errors = _sq_errors(z, a, val_rows, mu, sd, candidates)  # (candidates, columns)
        lams = [grid[int(np.argmin(errors[:, g].sum(axis=1)))] for g in groups]
        chosen = list(dict.fromkeys(lams))  # distinct strengths, in order: one solve each
        if fit_moments is not None:  # primal: reuse the fit split's sums instead of a second pass
            val_moments = _moments(z, a, val_rows, mu, sd)
            all_moments = [fit_moments[0] + val_moments[0]] + [
                np.add(f, v, out=f) for f, v in zip(fit_moments[1:], val_moments[1:])]
            solutions = [_primal_weights(all_moments, lam) for lam in chosen]
        else:
            solutions = _ridge_weights(z, a, np.arange(n), mu, sd, chosen)[0]
        solved = dict(zip(chosen, solutions))
        w, b = np.empty((z.shape[1], a.shape[1])), np.empty(a.shape[1])
        for g, lam in zip(groups, lams):
            w[:, g], b[g] = solved[lam][0][:, g], solved[lam][1][g]
    # Fold the standardisation back in: x W_x + b_x = z (W_x / sd) + (b_x - (mu / sd) W_x).
    return w / sd[:, None], b - (mu / sd) @ w, lams


def _ridge_weights(z, a, rows, mu, sd, grid):
    """Standardised-space (W, b) per ridge strength on ``rows``, and the primal sums if used."""
    if z.shape[1] <= len(rows):
        moments = _moments(z, a, rows, mu, sd)
        return [_primal_weights(moments, lam) for lam in grid], moments
    x = (z[rows].astype(np.float64) - mu) / sd
    return [_dual_weights(x, a[rows], lam) for lam in grid], None


def _moments(z, a, rows, mu, sd) -> list:
    """[n, sum x, sum a, X^T X, X^T A] of standardised latents over ``rows``, in blocks."""
    d, k = z.shape[1], a.shape[1]
    gram, cross, sx = np.zeros((d, d)), np.zeros((d, k)), np.zeros(d)
    for block in _blocks(rows, d):
        x = (z[block].astype(np.float64) - mu) / sd
        gram += x.T @ x
        cross += x.T @ a[block]
        sx += x.sum(axis=0)
    return [float(len(rows)), sx, a[rows].sum(axis=0), gram, cross]


def _primal_weights(moments, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """W = (X_c^T X_c + n lam I)^-1 X_c^T A_c, b = mean(a) - mean(x) W, from the sums."""
    n, sx, sa, gram, cross = moments
    mx, ma = sx / n, sa / n
    lhs = np.outer(mx, -n * mx)  # built in place: at dim 8192 each d x d copy is 512 MiB
    lhs += gram
    lhs[np.diag_indices_from(lhs)] += n * lam
    w = cho_solve(cho_factor(lhs, lower=True, overwrite_a=True, check_finite=False),
                  cross - n * np.outer(mx, ma), check_finite=False)
    return w, ma - mx @ w


def _dual_weights(x: np.ndarray, a: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """W = X_c^T (X_c X_c^T + n lam I)^-1 A_c, b = mean(a) - mean(x) W."""
    mx, ma = x.mean(axis=0), a.mean(axis=0)
    xc = x - mx
    kernel = xc @ xc.T
    kernel[np.diag_indices_from(kernel)] += len(x) * lam
    alpha = cho_solve(cho_factor(kernel, lower=True, check_finite=False), a - ma,
                      check_finite=False)
    w = xc.T @ alpha
    return w, ma - mx @ w


def _sq_errors(z, a, rows, mu, sd, candidates) -> np.ndarray:
    """Summed squared error per target column on ``rows`` of each standardised-space (W, b)."""
    errors = np.zeros((len(candidates), a.shape[1]))
    for block in _blocks(rows, z.shape[1]):
        x = (z[block].astype(np.float64) - mu) / sd
        for i, (w, b) in enumerate(candidates):
            errors[i] += np.sum((x @ w + b - a[block]) ** 2, axis=0)
    return errors


def _column_stats(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (ddof 0) in float64; std 1 where a dimension is constant."""
    mu = np.mean(z, axis=0, dtype=np.float64)
    ss = np.zeros_like(mu)
    for block in _blocks(np.arange(len(z)), z.shape[1]):
        dev = z[block].astype(np.float64) - mu
        ss += np.einsum("ij,ij->j", dev, dev)
    sd = np.sqrt(ss / len(z))
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sd))):
        raise ValueError("z_train contains NaN or inf; the encoder diverged or its output "
                         "overflowed.")
    return mu, np.where(sd > _STD_FLOOR_REL * np.abs(mu), sd, 1.0)


def _blocks(rows: np.ndarray, dim: int):
    """Consecutive pieces of ``rows`` holding at most ``_CHUNK_ELEMENTS`` latent entries."""
    step = max(1, _CHUNK_ELEMENTS // max(dim, 1))
    for start in range(0, len(rows), step):
        yield rows[start:start + step]


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as float64 (N, k); a vector is one column."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array; got shape {x.shape}.")
    return x


# ---------------------------------------------------------------------------------------------
# Downstream return


def normalized_return(ret: float | np.ndarray, ret_random: float,
                      ret_expert: float) -> float | np.ndarray:
    """Return on a random-to-data scale (D4RL / Minari convention); higher is better.

        normalised = (R - R_random) / (R_data - R_random)

    R_data (a dataset's ``ref_max_score``, passed as ``ret_expert``) is the mean return of the
    data-collecting policy, i.e. the expert's actions plus Gaussian noise, not the expert's greedy
    return. 0 is the random policy, 1 the data; values outside [0, 1] are possible and kept.
    """
    if not (np.isfinite(ret_random) and np.isfinite(ret_expert)):
        raise ValueError(f"reference returns must be finite; got random {ret_random}, "
                         f"expert {ret_expert}.")
    if ret_expert == ret_random:
        raise ValueError(f"expert and random reference returns are both {ret_expert}, so the "
                         "normalised return is undefined; check the task's reference scores.")
    out = (np.asarray(ret, dtype=np.float64) - ret_random) / (ret_expert - ret_random)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# Statistics over seeds and tasks


def mean_ci(values: Sequence[float] | np.ndarray,
            confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its Student-t confidence interval, as (mean, low, high).

        mean ± t_{(1 + confidence)/2, n-1} · s / sqrt(n),   s = sample std (ddof 1)

    With one value there is no spread to measure: the interval is (mean, nan, nan), so a
    single seed never looks certain.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci got NaN or inf among {x.tolist()}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}.")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    half = float(stdtrit(x.size - 1, (1 + confidence) / 2) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def format_mean_ci(values: Sequence[float]) -> str:
    """``mean +- half-width`` of :func:`mean_ci`'s 95% interval, or ``value (n=1)`` for one seed."""
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    mean, _, high = mean_ci(values)
    return f"{mean:.3f} +- {high - mean:.3f}"
