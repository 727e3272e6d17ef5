"""System time and minor page faults of LAM train steps with glibc's default thresholds and ours.

    python benchmarks/allocator_churn.py [--dim 8192] [--steps 12]

Each mode runs in a fresh process (the thresholds are process-wide); both train the same seeded
MaskLAM on the same random batch, so their losses must agree to the last bit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = """
import json, resource, sys, time, torch
from masklam_bench.allocator import tune_allocator
mode, dim, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "tuned":
    tune_allocator()
from masklam_bench.baselines import get_method
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.bench import random_batch
torch.set_num_threads(1)
cfg = LamConfig(latent_dim=dim, encoder="light", total_steps=100, bf16=True)
torch.manual_seed(0)
method = get_method("masklam")(cfg, 64, 6, "cpu")
batch = random_batch(cfg, 64, 6, 64)
for _ in range(3):
    method.train_step(batch)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
losses = [float(method.train_step(batch)["loss"]) for _ in range(steps)]
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "wall_s": time.perf_counter() - t0,
                  "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "last_loss": losses[-1]}))
"""


def main() -> None:
    """Print one Markdown row per allocator mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"MaskLAM d{args.dim}, light encoder, batch 64, one thread, {args.steps} steps\n")
    print("| allocator | wall s | user s | system s | minor faults | last loss |")
    print("|---|---:|---:|---:|---:|---|")
    for mode in ("glibc", "tuned"):
        out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(args.dim), str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {mode} | {r['wall_s']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
              f"{r['minor_faults']:,} | {r['last_loss']!r} |")


if __name__ == "__main__":
    main()
