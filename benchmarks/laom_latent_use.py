"""How much a trained LAOM-family FDM uses its latent action, from finished runs' checkpoints.

    python benchmarks/laom_latent_use.py runs/cheetah-run__laom__d64__s1__cpu [RUN_DIR ...]

For each run folder (a ``laom``, ``laom-masked`` or ``laom-labels`` run whose LAM stage has
finished, ``lam_final.pt``), it draws held-out transitions of the run's dataset (test split, a
fixed seed, k ~ U{1..10} as in training) and computes, without augmentation, the FDM's MSE against
the target encoder's embedding of the next frame stack:

- with each transition's own latent z,
- with the latents shuffled across the batch (z of another transition),
- with z = 0,
- and the MSE of predicting the batch mean (the target's variance: what a constant achieves).

If the loss with a shuffled z is no higher than with the own z, the FDM does not use the latent,
and the latent need not carry the action. Read the figures as a diagnosis of one run; they are
not a leaderboard metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from masklam_bench.baselines.laom import stack_input
from masklam_bench.dataset import load_frames
from masklam_bench.fileio import load_checkpoint
from masklam_bench.runner import RunConfig, build_method, dataset_path, method_batch_keys, resolve
from masklam_bench.sampling import TransitionSampler

TRANSITIONS = 2048
"""Held-out transitions per run (the cpu preset's test split has 4,000)."""
CHUNK = 256
"""Transitions per forward pass."""


@torch.no_grad()
def latent_use(run_dir: Path, seed: int = 0) -> dict[str, float]:
    config = RunConfig(**json.loads((run_dir / "config.json").read_text()))
    config, preset = resolve(config)
    test = load_frames(dataset_path(config), "test", clean=False)
    method = build_method(config, preset, test.image_size, test.action_dim, config.seed)
    if not hasattr(method, "fdm_head"):
        raise SystemExit(f"{run_dir}: method {config.method!r} has no latent FDM (LAOM family only)")
    final = run_dir / "lam_final.pt"
    if not final.exists():
        raise SystemExit(f"{run_dir}: no lam_final.pt (the LAM stage has not finished)")
    method.load_state_dict(load_checkpoint(final)["method"])
    method.nets.eval()
    sampler = TransitionSampler(test, method.config.context_frames, method.config.max_future)
    rng = np.random.default_rng(seed)
    batch = sampler.sample(rng, TRANSITIONS, keys=method_batch_keys(method))
    zs, targets, embs = [], [], []
    for start in range(0, TRANSITIONS, CHUNK):
        part = {k: v[start:start + CHUNK] for k, v in batch.items()}
        with method._autocast():
            z, emb_obs = method.latent(stack_input(part["context"]),
                                       stack_input(part["target_context"]))
            target = method.target_encoder(stack_input(method.target_frames(part)))
        zs.append(z.float())
        embs.append(emb_obs)
        targets.append(target.float())
    z, target = torch.cat(zs), torch.cat(targets)
    emb = torch.cat(embs)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(TRANSITIONS))

    def fdm_mse(latent: torch.Tensor) -> float:
        out = []
        for start in range(0, TRANSITIONS, CHUNK):
            with method._autocast():
                out.append(method.fdm_head(latent[start:start + CHUNK],
                                           emb[start:start + CHUNK]).float())
        return F.mse_loss(torch.cat(out), target).item()

    return {"own_z": fdm_mse(z), "shuffled_z": fdm_mse(z[perm]), "zero_z": fdm_mse(torch.zeros_like(z)),
            "target_variance": F.mse_loss(target.mean(0, keepdim=True).expand_as(target), target).item(),
            "z_std": z.std(0).mean().item()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<run name>)")
    args = parser.parse_args(argv)
    print("| run | FDM MSE, own z | shuffled z | z = 0 | target variance | shuffled / own | mean std of z |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.runs:
        r = latent_use(run_dir)
        print(f"| {run_dir.name} | {r['own_z']:.5f} | {r['shuffled_z']:.5f} | {r['zero_z']:.5f} "
              f"| {r['target_variance']:.5f} | {r['shuffled_z'] / r['own_z']:.2f}x | {r['z_std']:.4f} |")


if __name__ == "__main__":
    main()
