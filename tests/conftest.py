"""Shared test set-up: headless rendering before anything imports mujoco, and a fake expert."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch


def write_fake_cheetah_expert(path, *, hidden: int = 16, seed: int = 0,
                              eval_return: float = 1.0) -> str:
    """Write a small random cheetah-run actor in the shipped weights format; return its path.

    Collection tests use it so they need no trained expert; different ``seed`` or ``hidden``
    give different weights (and so a different sha256)."""
    gen = torch.Generator().manual_seed(seed)
    actor = {"w0": torch.randn(17, hidden, generator=gen), "b0": torch.zeros(hidden),
             "w1": torch.randn(hidden, 12, generator=gen), "b1": torch.zeros(12)}
    torch.save({"task": "cheetah-run", "obs_dim": 17, "act_dim": 6, "hidden": [hidden],
                "actor": actor, "eval_return_mean": float(eval_return)}, path)
    return str(path)


@pytest.fixture(scope="session")
def fake_cheetah_expert():
    """The writer of fake cheetah experts, as a fixture (``conftest`` is not importable)."""
    return write_fake_cheetah_expert
