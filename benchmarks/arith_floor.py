"""How much of the main job's dense-8192 work is arithmetic that no bookkeeping change can remove.

    python benchmarks/arith_floor.py [--threads 2] [--steps 10]

For the ``cpu`` preset's networks (light encoder, batch 64) and the two latent sizes of the README's
main job, this times, on random batches, in alternating blocks:

- ``LAM step``: MaskLAM's ``train_step`` as stage 1 runs it (bf16 autocast over fp32 weights, fused
  AdamW, gradient clipping);
- ``LAM arithmetic``: the same forward and backward passes on a bf16 copy of the networks (autocast
  then casts no weight and no weight gradient), with no optimiser and no clipping: the matrix
  products and convolutions alone;
- ``BC step`` and ``BC arithmetic``: the same two for the latent policy of stage 3 (latent BC);
- the probe's dense linear algebra at 8192: the float64 Gram matrix of 20,000 latents (NumPy's
  ``x.T @ x``, a symmetric rank-k update) and the Cholesky factorisation stage 2 makes once per
  ridge strength and once per strength chosen (at least 7 + 1 each for the trained IDM and for the
  control; one more per extra strength when the action and distractor probes choose apart).

The arithmetic figures are a floor for those stages with the networks unchanged: a change that
keeps every number can only remove what lies between the step and the arithmetic. Prints the
medians and the floor they put under the stages; nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import cho_factor

from masklam_bench.allocator import tune_allocator
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.bench import random_batch
from masklam_bench.baselines.networks import fdm_input, idm_input, to_unit_range
from masklam_bench.baselines.policy import LatentPolicy
from masklam_bench.baselines.registry import get_method
from masklam_bench.metrics import RIDGE_GRID
from masklam_bench.presets import get_preset
from masklam_bench.runner import clip_gradients

BATCH = 64
ROUNDS = 3


def lam_steps(dim: int) -> dict[str, Callable[[], object]]:
    """MaskLAM's train step and its arithmetic alone, at latent ``dim``."""
    cls = get_method("masklam")
    config = dataclasses.replace(LamConfig(latent_dim=dim, encoder="light", bf16=True),
                                 **cls.config_overrides())
    torch.manual_seed(0)
    method = cls(config, 64, 6, "cpu")
    batch = random_batch(config, 64, 6, BATCH)
    idm, fdm = copy.deepcopy(method.idm).bfloat16(), copy.deepcopy(method.fdm).bfloat16()

    def arithmetic() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = idm(idm_input(batch, config))
            pred = fdm(fdm_input(batch, config), z,
                       batch["k"] if config.max_future > 1 else None)
        method.reconstruction_loss(pred.float(), to_unit_range(batch["target"]), batch).backward()
        for p in (*idm.parameters(), *fdm.parameters()):
            p.grad = None

    return {"step": lambda: method.train_step(batch), "arithmetic": arithmetic}


def bc_steps(dim: int) -> dict[str, Callable[[], object]]:
    """Stage 3's step (as ``runner._fit_indexed`` takes it) and its arithmetic alone."""
    torch.manual_seed(0)
    policy = LatentPolicy(LamConfig(latent_dim=dim, encoder="light", bf16=True), 64, dim)
    params = list(policy.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    frames = torch.randint(0, 256, (BATCH, 3, 3, 64, 64), dtype=torch.uint8)
    target = torch.randn(BATCH, dim)
    bare = copy.deepcopy(policy).bfloat16()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = policy(frames)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, 1.0)
        opt.step()

    def arithmetic() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = bare(frames)
        torch.nn.functional.mse_loss(pred.float(), target).backward()
        for p in bare.parameters():
            p.grad = None

    return {"step": step, "arithmetic": arithmetic}


def seconds_per_call(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks after a warm-up."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(ROUNDS):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def probe_algebra(dim: int, rows: int) -> dict[str, float]:
    """Seconds of one float64 Gram of ``rows`` x ``dim`` latents and of one Cholesky factor."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim))
    start = time.perf_counter()
    gram = x.T @ x
    gram_s = time.perf_counter() - start
    gram[np.diag_indices_from(gram)] += rows * 0.1
    start = time.perf_counter()
    cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)
    return {"gram": gram_s, "cholesky": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="calls per timed block")
    args = parser.parse_args(argv)
    tune_allocator()
    torch.set_num_threads(args.threads)
    train = get_preset("cpu").train
    print(f"cpu preset: {train.lam_steps} LAM steps, {train.bc_steps} latent-BC steps, batch "
          f"{BATCH}; {args.threads} threads; medians of {ROUNDS} blocks of {args.steps} calls")
    print("| stage | latent | s per step | arithmetic alone | stage at that rate | floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage, make, steps in (("LAM", lam_steps, train.lam_steps),
                               ("latent BC", bc_steps, train.bc_steps)):
        for dim in (64, 8192):
            t = seconds_per_call(make(dim), args.steps)
            print(f"| {stage} | {dim} | {t['step']:.4f} | {t['arithmetic']:.4f} | "
                  f"{t['step'] * steps:.0f} s | {t['arithmetic'] * steps:.0f} s |", flush=True)
    algebra = probe_algebra(8192, train.probe_fit_transitions)
    factors = 2 * (len(RIDGE_GRID) + 1)
    print(f"probe at 8192: one Gram of {train.probe_fit_transitions:,} latents "
          f"{algebra['gram']:.1f} s, one Cholesky {algebra['cholesky']:.1f} s; two Grams and "
          f"at least {factors} factors (trained IDM and control) = "
          f"{2 * algebra['gram'] + factors * algebra['cholesky']:.0f} s")


if __name__ == "__main__":
    main()
