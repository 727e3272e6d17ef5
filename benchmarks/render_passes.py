"""Wall milliseconds of an env step and of each OpenGL pass of its render, one piece at a time.

    MUJOCO_GL=egl python benchmarks/render_passes.py [--envs ID,ID] [--repeats 200]

For each id: a whole ``env.step``; ``SceneRenderer.render``; the RGB pass alone (``mjr_render``
and ``mjr_readPixels``, with the floor in tiles where the renderer uses them); the segmentation
pass alone; the RGB pass with the reflection, the shadows or the skybox switched off; and the RGB
pass of the floor alone (the scene cut to its first geom, the floor), with and without the
shadows (frames that no id renders: this only tells what each costs). The last two rows divide
what the agent's geoms add to the RGB pass by their number: what one body part costs, which says
whether a pass is bound by its pixels or by its geometry. Last, the RGB pass with the whole floor
(no tiles) is timed with the model's tessellation of curved geoms and with half its slices and
stacks, in a rendering context made for that (a coarser look than any id's). Each figure is the mean over
``--repeats`` calls after 50 warm-up steps; the passes re-render the same scene.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.envs.rendering import AGENT, FLOOR

IDS = ("DistractingCheetah-v0", "DistractingHumanoid-v0")
WARMUP_STEPS = 50
_FLAG = mujoco.mjtRndFlag
_GEOM = mujoco.mjtObj.mjOBJ_GEOM


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
            with _off(flags, name):
                times[f"RGB pass without {name}"] = _mean_ms(
                    lambda i: ctx.call(_one_pass, renderer, False), repeats)
        times.update(_per_agent_geom(renderer, ctx, times, repeats))
        times.update(_coarser(env.unwrapped._physics, renderer, ctx, repeats))
    env.close()
    return times


@contextlib.contextmanager
def _off(flags, name: str):
    """The render flag ``mjRND_<NAME>`` off while inside."""
    flag = int(getattr(_FLAG, f"mjRND_{name.upper()}"))
    kept = flags[flag]
    flags[flag] = 0
    try:
        yield
    finally:
        flags[flag] = kept


def _per_agent_geom(renderer, ctx, times: dict[str, float], repeats: int) -> dict[str, float]:
    """The RGB pass of the floor alone, with and without shadows, and what each agent geom adds."""
    scene = renderer.scene
    geoms = [scene.geoms[i] for i in range(scene.ngeom)]
    labels = [renderer._geom_labels[g.objid] if g.objtype == _GEOM else None for g in geoms]
    if labels[0] != FLOOR or set(labels[1:]) != {AGENT}:
        raise SystemExit("the scene is not its floor followed by the agent's geoms")
    ngeom, out = scene.ngeom, {}
    scene.ngeom = 1
    try:
        out["RGB pass, floor alone"] = _mean_ms(lambda i: ctx.call(_one_pass, renderer, False),
                                                repeats)
        with _off(scene.flags, "shadow"):
            out["RGB pass, floor alone, without shadow"] = _mean_ms(
                lambda i: ctx.call(_one_pass, renderer, False), repeats)
    finally:
        scene.ngeom = ngeom
    agent = ngeom - 1
    out["per agent geom"] = (times["RGB pass"] - out["RGB pass, floor alone"]) / agent
    out["per agent geom, without shadow"] = (
        times["RGB pass without shadow"] - out["RGB pass, floor alone, without shadow"]) / agent
    return out


def _coarser(physics, renderer, ctx, repeats: int) -> dict[str, float]:
    """The RGB pass (whole floor) with the model's tessellation and with half of it."""
    quality = physics.model.vis.quality
    kept = renderer._mjr_context, quality.numslices, quality.numstacks
    renderer._floor.active = False  # its lists belong to the env's context
    label = f"RGB pass, whole floor, {quality.numslices} slices x {quality.numstacks} stacks"
    out = {label: _mean_ms(lambda i: ctx.call(_one_pass, renderer, False), repeats)}
    quality.numslices, quality.numstacks = kept[1] // 2, kept[2] // 2
    coarse = ctx.call(mujoco.MjrContext, physics.model.ptr, mujoco.mjtFontScale.mjFONTSCALE_150)
    try:
        ctx.call(mujoco.mjr_setBuffer, mujoco.mjtFramebuffer.mjFB_OFFSCREEN, coarse)
        renderer._mjr_context = coarse
        label = f"RGB pass, whole floor, {quality.numslices} slices x {quality.numstacks} stacks"
        out[label] = _mean_ms(lambda i: ctx.call(_one_pass, renderer, False), repeats)
    finally:
        renderer._mjr_context, quality.numslices, quality.numstacks = kept
        ctx.call(coarse.free)
        ctx.call(mujoco.mjr_setBuffer, mujoco.mjtFramebuffer.mjFB_OFFSCREEN, kept[0])
    return out


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
