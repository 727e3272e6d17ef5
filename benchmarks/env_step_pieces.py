"""CPU time of the pieces of one env step, for the rendering path before issue 19 and today's.

    MUJOCO_GL=egl python benchmarks/env_step_pieces.py [--env DistractingCheetah-v0] [--steps 100]

Two envs of the same id take the same actions, step by step in turns: one rendered the old way
(two dm_control ``Camera.render`` calls, masks by comparing the segmentation with a MuJoCo enum,
float compositing), one by ``SceneRenderer``. Times are ``time.process_time`` (every thread of the
process, so llvmpipe's rasterizer threads count), which a busy machine disturbs far less than wall
time. Both paths must give the same frame and mask at every step, or the script stops.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np
from dm_control.mujoco.engine import Camera

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.envs import distractors, rendering

WARMUP_STEPS = 5
"""Steps not timed (contexts, shader variants and caches are made on the first ones)."""
SEED = 0
"""Seed of both episodes and of the actions."""


class _Pieces:
    """Accumulated CPU seconds per named piece."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.process_time()

    def start(self) -> None:
        self._last = time.process_time()

    def lap(self, piece: str) -> None:
        now = time.process_time()
        self.seconds[piece] = self.seconds.get(piece, 0.0) + now - self._last
        self._last = now


def _advance(env, action: np.ndarray) -> None:
    """The non-rendering part of ``env.step``: physics, task, background motion."""
    env._dm.step(action)
    env._t += 1
    if env._pool:
        env._motion.step(env.np_random, action, env._canvas)


def _background(env) -> np.ndarray:
    frame = distractors.video_frame_index(env._t, env._video_start, env._video_direction,
                                          len(env._video))
    return distractors.crop_window(env._video[frame], env._motion.offset, env.size)


def _old_step(env, camera: Camera, action: np.ndarray, t: _Pieces) -> tuple[np.ndarray, ...]:
    """One step as the env did it before issue 19 (its ``render_layers`` and ``_observe``)."""
    model = env._physics.model
    t.start()
    _advance(env, action)
    t.lap("physics")
    scene = camera.render().copy()
    t.lap("RGB pass (Camera.render)")
    seg = camera.render(segmentation=True)
    t.lap("segmentation pass (Camera.render, dm_control's decoding)")
    is_geom = seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM  # the enum, as the old code had it
    geom = np.where(is_geom, seg[..., 0], 0)
    agent = is_geom & (model.geom_bodyid[geom] != 0)
    floor = is_geom & (model.geom_bodyid[geom] == 0) & (
        model.geom_type[geom] == int(mujoco.mjtGeom.mjGEOM_PLANE))
    t.lap("masks")
    if not env._pool:
        return scene, agent
    background = _background(env)
    t.lap("background crop")
    obs = background.copy()
    obs[agent] = scene[agent]
    alpha = env.task_spec.ground_alpha
    obs[floor] = np.round(alpha * scene[floor] + (1.0 - alpha) * background[floor]).astype(np.uint8)
    t.lap("compositing")
    return obs, agent


def _new_step(env, action: np.ndarray, t: _Pieces) -> tuple[np.ndarray, ...]:
    """One step as the env does it now, ``SceneRenderer.render`` split into its parts."""
    renderer, physics = env._renderer, env._physics
    t.start()
    _advance(env, action)
    t.lap("physics")
    mujoco.mjv_updateScene(physics.model.ptr, physics.data.ptr, renderer._option,
                           renderer._perturb, renderer._camera, mujoco.mjtCatBit.mjCAT_ALL,
                           renderer.scene)
    t.lap("mjv_updateScene (once for both passes)")
    with physics.contexts.gl.make_current() as ctx:
        ctx.call(renderer._render_both, renderer._floor.active)
    t.lap("RGB and segmentation passes (one call)")
    labels = renderer._segment_labels()[renderer._segment_ids()]
    scene = renderer._rgb[::-1].copy()
    agent, floor = labels == rendering.AGENT, labels == rendering.FLOOR
    t.lap("masks")
    if not env._pool:
        return scene, agent
    background = _background(env)
    t.lap("background crop")
    if env._floor_blend is not None:
        obs = np.where(floor[..., None], env._floor_blend[scene, background], background)
        np.copyto(obs, scene, where=agent[..., None])
    else:
        obs = np.where((agent | floor)[..., None], scene, background)
    t.lap("compositing")
    return obs, agent


def main() -> None:
    """Print the CPU milliseconds per step of each piece, old path then new."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="DistractingCheetah-v0")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    old, new = (gym.make(args.env).unwrapped for _ in range(2))
    for env in (old, new):
        env.reset(seed=SEED)  # also builds new's renderer
    camera = Camera(old._physics, height=old.size, width=old.size, camera_id=old.camera_id)
    rng = np.random.default_rng(SEED)
    timers = {"before": _Pieces(), "now": _Pieces()}
    for step in range(WARMUP_STEPS + args.steps):
        if step == WARMUP_STEPS:
            timers = {"before": _Pieces(), "now": _Pieces()}
        action = rng.uniform(old.action_space.low, old.action_space.high).astype(np.float32)
        old_obs, old_mask = _old_step(old, camera, action, timers["before"])
        new_obs, new_mask = _new_step(new, action, timers["now"])
        if not (np.array_equal(old_obs, new_obs) and np.array_equal(old_mask, new_mask)):
            raise SystemExit(f"step {step}: the two paths disagree")
    print(f"{args.env}, CPU ms per step over {args.steps} steps")
    for label, timer in timers.items():
        total = sum(timer.seconds.values())
        print(f"  {label}: {1e3 * total / args.steps:.2f} ms")
        for piece, seconds in timer.seconds.items():
            print(f"    {piece:58s} {1e3 * seconds / args.steps:6.2f} ms {100 * seconds / total:4.0f}%")
    os._exit(0)  # skip dm_control's context clean-up at exit, which trips over the extra camera


if __name__ == "__main__":
    main()
