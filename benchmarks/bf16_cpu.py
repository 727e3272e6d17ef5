"""Seconds per MaskLAM training step in bf16 autocast and in float32 on this CPU.

    python benchmarks/bf16_cpu.py [--dims 64,8192] [--steps 64=6,8192=2] [--out FILE]

The `cpu` preset's LAM (light encoder, batch 64, 64 px), with the allocator setting a run has and
torch's default thread count. Each (dim, precision) pair trains one untimed step, then its timed
steps; the pairs of one dim alternate bf16, float32, bf16, float32 over two rounds, so that a
change of load falls on both. It prints what decides the precision of a run that asks none
(``masklam_bench.precision.fast_bf16``: oneDNN's bf16 support) beside the CPU's flags, and a
Markdown table; ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from masklam_bench.allocator import tune_allocator
from masklam_bench.baselines import get_method
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.bench import random_batch
from masklam_bench.fileio import atomic_write_json
from masklam_bench.precision import fast_bf16

FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) that decide PyTorch's bf16 kernels on x86."""


def cpu_facts() -> dict[str, object]:
    """The CPU's model and bf16-relevant flags, and what the suite decides from them."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": model, "flags": {f: f in flags for f in FLAGS},
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "fast_bf16": fast_bf16("cpu")}


def seconds_per_step(dim: int, bf16: bool, steps: int) -> float:
    """Mean seconds of ``steps`` MaskLAM train steps after one untimed one."""
    torch.manual_seed(0)
    config = LamConfig(latent_dim=dim, encoder="light", total_steps=3000, bf16=bf16)
    model = get_method("masklam")(config, 64, 6, "cpu")
    batch = random_batch(config, 64, 6, 64, device="cpu")
    model.train_step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_step(batch)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="64,8192")
    parser.add_argument("--steps", default="64=6,8192=2",
                        help="timed steps per block, by dim (DIM=N,...; default 64=6,8192=2)")
    parser.add_argument("--out", default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    tune_allocator()
    steps = {int(k): int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    facts = cpu_facts()
    print(json.dumps(facts))
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(2):
            for bf16 in (True, False):
                times[bf16].append(seconds_per_step(dim, bf16, steps.get(dim, 2)))
        row = {"dim": dim, "bf16_s": times[True], "float32_s": times[False],
               "ratio": sum(times[True]) / sum(times[False])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| latent | bf16 autocast, s/step | float32, s/step | bf16 / float32 |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dim']} | {' / '.join(f'{t:.3f}' for t in r['bf16_s'])} | "
              f"{' / '.join(f'{t:.3f}' for t in r['float32_s'])} | {r['ratio']:.1f}x |")
    if args.out:
        atomic_write_json(Path(args.out), {**facts, "rows": rows})


if __name__ == "__main__":
    main()
