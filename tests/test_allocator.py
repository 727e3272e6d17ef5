"""The allocator thresholds: set once, and never change a training result."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys, torch
from masklam_bench.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
from masklam_bench.baselines import get_method
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.bench import random_batch
torch.set_num_threads(1)
cfg = LamConfig(latent_dim=256, total_steps=10)
torch.manual_seed(0)
method = get_method("masklam")(cfg, 32, 6, "cpu")
batch = random_batch(cfg, 32, 6, 8)
print(repr([float(method.train_step(batch)["loss"]) for _ in range(3)]))
"""


def test_tuned_allocator_gives_bit_identical_training():
    # Fresh processes: the thresholds are process-wide and cannot be unset.
    outs = [subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True,
                           capture_output=True, text=True, timeout=300).stdout for mode in ("plain", "tuned")]
    assert outs[0] == outs[1] and outs[0].startswith("[")
