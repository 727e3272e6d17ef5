"""SHA-256 of the observations, masks and rendered scenes of a seeded rollout of every id, to check
that a change to the renderer leaves every frame and mask byte-identical.

    MUJOCO_GL=egl python benchmarks/env_hashes.py [--steps 100] [--out hashes.json]
    MUJOCO_GL=egl python benchmarks/env_hashes.py --check hashes.json

The scene is what ``render_layers`` returned for the step (dm_control's look before the background
is pasted in), which ``collect`` stores as the clean frame. Besides the twelve ids as registered, it hashes the variants the renderer treats differently:
``level="hard"`` (camera shake and colour), ``floor="replace"`` (no shadows or reflections),
dm_control's 2048-texel shadow map, and a 48 px image. Hashes hold for one machine and one
MuJoCo/Mesa build; compare only hashes made on the same one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.collect import SceneTap
from masklam_bench.envs import registered_ids
from masklam_bench.fileio import atomic_write_json

SEED = 0
"""Seed of the episode and of the random actions."""

VARIANTS: dict[str, dict] = {
    "": {},
    "hard": {"level": "hard"},
    "replace": {"floor": "replace"},
    "shadow2048": {"shadow_size": 2048},
    "48px": {"size": 48},
}
"""Keyword sets hashed per id (``replace`` only for ids with a background)."""

VARIANT_IDS = ("DistractingCheetah-v0", "DistractingHumanoid-v0", "CleanWalker-v0")
"""Ids the non-default variants are hashed for: both floor alphas and one clean id."""


def rollout_hash(name: str, steps: int, **kwargs) -> str:
    """SHA-256 over every observation, agent mask and scene of a seeded random-action rollout."""
    env = gym.make(name, **kwargs)
    tap = SceneTap(env.unwrapped)
    digest = hashlib.sha256()
    obs, info = env.reset(seed=SEED)
    env.action_space.seed(SEED)
    for t in range(steps + 1):
        digest.update(np.ascontiguousarray(obs).tobytes())
        digest.update(np.ascontiguousarray(info["agent_mask"]).tobytes())
        digest.update(np.ascontiguousarray(tap.scene).tobytes())
        if t < steps:
            obs, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, info = env.reset()
    env.close()
    return digest.hexdigest()


def all_hashes(steps: int) -> dict[str, str]:
    """Hashes of every id (default kwargs) and of the variants of ``VARIANT_IDS``."""
    hashes = {}
    for name in registered_ids():
        for variant, kwargs in VARIANTS.items():
            if variant and name not in VARIANT_IDS:
                continue
            if variant == "replace" and name.startswith("Clean"):
                continue
            key = f"{name}+{variant}" if variant else name
            hashes[key] = rollout_hash(name, steps, **kwargs)
            print(key, hashes[key], flush=True)
    return hashes


def main() -> None:
    """Print (and write or check) the hashes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", help="write the hashes to this JSON file")
    parser.add_argument("--check", help="compare with the hashes in this JSON file")
    args = parser.parse_args()
    hashes = all_hashes(args.steps)
    if args.out:
        atomic_write_json(args.out, hashes)
    if args.check:
        with open(args.check) as f:
            expected = json.load(f)
        differ = [k for k in expected if hashes.get(k) != expected[k]]
        print(f"{len(expected) - len(differ)}/{len(expected)} hashes unchanged"
              + (f"; CHANGED: {', '.join(differ)}" if differ else ""))
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
