"""Steps per second of the humanoid ids with the floor drawn in tiles and as MuJoCo's whole list.

    MUJOCO_GL=egl python benchmarks/floor_tiles.py [--envs ID,ID] [--level low|hard] [--blocks 8]
        [--block-steps 25]

One env per id; its steps alternate between the two ways of drawing the floor in blocks of
``--block-steps`` (so that a change of load falls on both alike), and every step is rendered the
other way as well and compared: the script stops if a frame or mask differs. Prints the median
milliseconds per step of each way (the comparison renders are not timed), the speed-up, how
much of the floor the tiles drew, and how many new tile lists were compiled (every step is drawn
with the tiles once or twice).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np

import masklam_bench  # noqa: F401 (registers the envs)

IDS = ("DistractingHumanoid-v0", "DistractingHumanoidOOD-v1", "CleanHumanoid-v0")
SEED = 0


def _timed_block(env, renderer, tiles: bool, steps: int, rng, drawn: list[float]) -> float:
    """Seconds per step over ``steps`` steps drawn one way; each frame checked the other way."""
    elapsed = 0.0
    for _ in range(steps):
        renderer._floor.active = tiles
        start = time.perf_counter()
        env.step(rng.uniform(-1.0, 1.0, env.action_space.shape))
        elapsed += time.perf_counter() - start
        if tiles:
            drawn.append(float(renderer._floor._linked.mean()))
        shown = renderer.render()
        renderer._floor.active = not tiles
        other = renderer.render()
        if not all(np.array_equal(a, b) for a, b in zip(shown, other)):
            raise SystemExit(f"{env.spec.id}: the floor in tiles and MuJoCo's floor differ")
    renderer._floor.active = True
    return elapsed / steps


def measure(env_id: str, blocks: int, block_steps: int, level: str = "low"
            ) -> dict[str, float]:
    env = gym.make(env_id, level=level)
    env.reset(seed=SEED)
    renderer = env.unwrapped._renderer
    if not renderer._floor.active:
        raise SystemExit(f"{env_id}: no floor large enough to tile")
    floor, new_lists = renderer._floor, [0]
    link = floor._link

    def counted_link(tiles: np.ndarray) -> None:
        new_lists[0] += 1
        link(tiles)

    floor._link = counted_link
    rng = np.random.default_rng(SEED)
    times: dict[bool, list[float]] = {True: [], False: []}
    drawn: list[float] = []
    for _ in range(blocks):
        for tiles in (True, False):
            times[tiles].append(_timed_block(env, renderer, tiles, block_steps, rng, drawn))
    env.close()
    tiled, whole = (float(np.median(times[k])) * 1e3 for k in (True, False))
    return {"tiles_ms": tiled, "whole_ms": whole, "speedup": whole / tiled,
            "drawn": float(np.mean(drawn)), "new_lists": new_lists[0],
            "steps": 2 * blocks * block_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(IDS))
    parser.add_argument("--level", default="low", choices=("low", "hard"))
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-steps", type=int, default=25)
    args = parser.parse_args()
    print("| id | whole floor, ms/step | tiles, ms/step | speed-up | share of the floor drawn "
          "| new tile lists |")
    print("|---|---:|---:|---:|---:|---:|")
    for env_id in args.envs.split(","):
        r = measure(env_id, args.blocks, args.block_steps, args.level)
        print(f"| {env_id} | {r['whole_ms']:.1f} | {r['tiles_ms']:.1f} | {r['speedup']:.2f}x "
              f"| {r['drawn']:.0%} | {r['new_lists']} in {r['steps']} steps |", flush=True)
    print("Every frame and mask was the same both ways.")


if __name__ == "__main__":
    main()
