"""Throughput under pytest-benchmark: env frames/s against stock dm_control, and a LAM
``train_step`` against the same networks in a bare PyTorch loop.

Not part of the default test run (pytest's testpaths is ``tests``). See BENCHMARK.md,
"Benchmarks across commits": ``pytest benchmarks --benchmark-enable --benchmark-autosave``, then
``--benchmark-compare`` on a later commit. The same measurements as ``masklam-bench bench-env``
and ``bench-train``, which remain the one-shot front ends.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.bench import _bare_step_fn, random_batch
from masklam_bench.baselines.registry import get_method
from masklam_bench.envs import parse_env_id

ENV_ID = "DistractingCheetah-v0"
"""The env measured against stock dm_control rendering of the same task."""

IMAGE_SIZE = 64
"""Frame side in pixels, for the env and the LAM."""

ACTION_DIM = 6
"""cheetah-run's action size, for the LAM's random batch."""

BATCH = 32
"""Samples per LAM step: small enough for a 2-core machine, large enough to be conv-bound."""

LATENT_DIM = 64
"""Latent size of the benchmarked LAMs (the cpu preset's smaller dim)."""

TRAIN_ROUNDS = 5
"""Timed LAM steps per benchmark (each is tens to hundreds of ms on a CPU)."""

SEED = 0
"""Seed of the env's actions and the LAM's weights and batch."""


@pytest.fixture(scope="module")
def env():
    """DistractingCheetah-v0, reset and warmed up; closed afterwards."""
    env = gym.make(ENV_ID)
    env.reset(seed=SEED)
    env.action_space.seed(SEED)
    env.step(env.action_space.sample())
    yield env
    env.close()


@pytest.fixture(scope="module")
def stock():
    """Stock dm_control cheetah-run with its seeded random actions, one frame rendered."""
    from dm_control import suite

    task, _ = parse_env_id(ENV_ID)
    stock = suite.load(task.domain, task.task, task_kwargs={"random": SEED})
    stock.reset()
    stock.physics.render(IMAGE_SIZE, IMAGE_SIZE, camera_id=0)
    return stock


def test_env_frames(benchmark, env):
    """One ``env.step`` of DistractingCheetah-v0 (physics, render, mask, background)."""
    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    benchmark.group = "env frames"
    benchmark.extra_info["env_id"] = ENV_ID
    benchmark(step)


def test_stock_dm_control_frames(benchmark, stock):
    """One step and ``physics.render`` of stock dm_control: the reference for ``test_env_frames``."""
    spec = stock.action_spec()
    rng = np.random.default_rng(SEED)

    def step():
        if stock.step(rng.uniform(spec.minimum, spec.maximum)).last():
            stock.reset()
        stock.physics.render(IMAGE_SIZE, IMAGE_SIZE, camera_id=0)

    benchmark.group = "env frames"
    benchmark.extra_info["env_id"] = "dm_control suite cheetah-run"
    benchmark(step)


def _lam(method_name: str):
    """A LAM of the registered method, its config and a random batch, all seeded."""
    cls = get_method(method_name)
    config = dataclasses.replace(LamConfig(latent_dim=LATENT_DIM), **cls.config_overrides())
    torch.manual_seed(SEED)
    method = cls(config, IMAGE_SIZE, ACTION_DIM, "cpu")
    batch = random_batch(config, IMAGE_SIZE, ACTION_DIM, BATCH)
    return cls, config, method, batch


@pytest.mark.parametrize("method_name", ["lapo", "masklam"])
def test_train_step(benchmark, method_name):
    """One ``train_step`` of the method (schedule, clipping, online probe and logs included)."""
    _, _, method, batch = _lam(method_name)
    benchmark.group = f"train step {method_name}"
    benchmark.extra_info.update(batch=BATCH, latent_dim=LATENT_DIM)
    benchmark.pedantic(method.train_step, args=(batch,), rounds=TRAIN_ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("method_name", ["lapo", "masklam"])
def test_bare_loop_step(benchmark, method_name):
    """Forward, loss, backward and AdamW on the same IDM and FDM: the floor for ``train_step``."""
    cls, config, _, batch = _lam(method_name)
    torch.manual_seed(SEED)
    step = _bare_step_fn(cls(config, IMAGE_SIZE, ACTION_DIM, "cpu"), batch)
    benchmark.group = f"train step {method_name}"
    benchmark.extra_info.update(batch=BATCH, latent_dim=LATENT_DIM)
    benchmark.pedantic(step, rounds=TRAIN_ROUNDS, warmup_rounds=1)
