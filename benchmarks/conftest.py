"""Benchmarks' set-up: headless rendering before anything imports mujoco, one torch thread."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch

TORCH_THREADS = 1
"""Torch threads while a benchmark runs: one, so numbers compare across machines and loads."""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each benchmark with ``TORCH_THREADS`` torch threads, then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(previous)
