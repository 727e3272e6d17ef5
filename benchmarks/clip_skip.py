"""Seconds per latent-BC step at latent 8192: torch's clip_grad_norm_ against runner.clip_gradients.

    python benchmarks/clip_skip.py

The light latent policy with an 8192-wide head (33M parameters), batch 64 of random frames, bf16
autocast, fused AdamW, torch's default thread count, as the ``cpu`` preset's latent BC runs it.
The two clips alternate in six blocks of ten steps (the order flips every block), so that a change
of load falls on both; prints each block's seconds per step, the medians and the gradient norms
seen before clipping (below 1.0, the clip, the skip applies). Each step also reads the norm once
more for that report, in both columns alike.
"""

from __future__ import annotations

import time

import torch

from masklam_bench import runner
from masklam_bench.allocator import tune_allocator
from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.policy import LatentPolicy


def main() -> None:
    tune_allocator()
    torch.manual_seed(0)
    policy = LatentPolicy(LamConfig(latent_dim=8192, bf16=True), 64, 8192)
    params = list(policy.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    frames = torch.randint(0, 256, (64, 3, 3, 64, 64), dtype=torch.uint8)
    target = torch.randn(64, 8192)

    def step(clip: str) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = policy(frames)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))  # before clipping
        if clip == "clip_grad_norm_":
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        else:
            runner.clip_gradients(params, 1.0)
        opt.step()
        return norm

    for _ in range(3):  # warm-up: allocator, autocast caches
        step("clip_grad_norm_")
    seconds: dict[str, list[float]] = {"clip_grad_norm_": [], "clip_gradients": []}
    norms = []
    for block in range(6):
        for clip in (list(seconds) if block % 2 == 0 else list(seconds)[::-1]):
            start = time.perf_counter()
            norms += [step(clip) for _ in range(10)]
            seconds[clip].append((time.perf_counter() - start) / 10)
    for clip, values in seconds.items():
        median = sorted(values)[len(values) // 2]
        print(f"{clip:>16}: {', '.join(f'{v:.4f}' for v in values)} s/step; median {median:.4f}")
    print(f"gradient norms {min(norms):.4g} .. {max(norms):.4g} (clip 1.0)")


if __name__ == "__main__":
    main()
