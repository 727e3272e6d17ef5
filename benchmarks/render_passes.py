"""Wall milliseconds of an env step and of each OpenGL pass of its render, one piece at a time.

    MUJOCO_GL=egl python benchmarks/render_passes.py [--envs ID,ID] [--repeats 200]

For each id: a whole ``env.step``; ``SceneRenderer.render``; the RGB pass alone (``mjr_render``
and ``mjr_readPixels``, with the floor in tiles where the renderer uses them); the segmentation
pass alone; and the RGB pass with the reflection, the shadows or the skybox switched off (frames
that no id renders: this only tells what each costs). Each figure is the mean over ``--repeats``
calls after 50 warm-up steps; the passes re-render the same scene.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

import masklam_bench  # noqa: F401 (registers the envs)

IDS = ("DistractingCheetah-v0", "DistractingHumanoid-v0")
WARMUP_STEPS = 50
_FLAG = mujoco.mjtRndFlag


def _mean_ms(fn, repeats: int) -> float:
    start = time.perf_counter()
    for i in range(repeats):
        fn(i)
    return (time.perf_counter() - start) / repeats * 1e3


def _one_pass(renderer, segmentation: bool) -> None:
    """One ``mjr_render`` and read-back of the renderer's scene (on the render thread)."""
    with renderer._floor_drawn(renderer._floor.active):
        renderer._pass(renderer._rgb, segmentation)


def measure(env_id: str, repeats: int) -> dict[str, float]:
    env = gym.make(env_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.0, 1.0, (WARMUP_STEPS + repeats,) + env.action_space.shape)
    for action in actions[:WARMUP_STEPS]:
        env.step(action)
    renderer = env.unwrapped._renderer
    times = {"env.step": _mean_ms(lambda i: env.step(actions[WARMUP_STEPS + i]), repeats),
             "render()": _mean_ms(lambda i: renderer.render(), repeats)}
    flags = renderer.scene.flags
    with env.unwrapped._physics.contexts.gl.make_current() as ctx:
        times["RGB pass"] = _mean_ms(lambda i: ctx.call(_one_pass, renderer, False), repeats)
        times["segmentation pass"] = _mean_ms(lambda i: ctx.call(_one_pass, renderer, True),
                                              repeats)
        for name in ("reflection", "shadow", "skybox"):
            flag = int(getattr(_FLAG, f"mjRND_{name.upper()}"))
            kept = flags[flag]
            flags[flag] = 0
            try:
                times[f"RGB pass without {name}"] = _mean_ms(
                    lambda i: ctx.call(_one_pass, renderer, False), repeats)
            finally:
                flags[flag] = kept
    env.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default=",".join(IDS))
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    results = {env_id: measure(env_id, args.repeats) for env_id in args.envs.split(",")}
    print("| piece, ms | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for piece in next(iter(results.values())):
        print(f"| {piece} | " + " | ".join(f"{r[piece]:.2f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
