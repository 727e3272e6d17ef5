"""The shared-pass renderer: byte for byte what dm_control's own Camera renders, and composited
by DCS's rule, checked against a slow reference built from dm_control's public API."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from dm_control.mujoco.engine import Camera

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.collect import SceneTap
from masklam_bench.envs import distractors
from masklam_bench.envs.distracting import _blend_table

STEPS = 30
"""Steps compared per case: enough for the agent to move and the background to wrap."""


class _Reference:
    """The frame, mask and scene of an env's current state by the slow path: two dm_control
    ``Camera.render`` calls (RGB, segmentation) and DCS's float compositing, as before issue 19."""

    def __init__(self, env) -> None:
        self.env = env
        self.camera = Camera(env._physics, height=env.size, width=env.size,
                             camera_id=env.camera_id)
        flags = self.camera.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = not env._hide_floor_effects
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = not env._hide_floor_effects

    def __call__(self, frame_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        env, model = self.env, self.env._physics.model
        scene = self.camera.render().copy()
        seg = self.camera.render(segmentation=True)
        is_geom = seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
        geom = np.where(is_geom, seg[..., 0], 0)
        agent = is_geom & (model.geom_bodyid[geom] != 0)
        floor = is_geom & (model.geom_bodyid[geom] == 0) & (
            model.geom_type[geom] == int(mujoco.mjtGeom.mjGEOM_PLANE))
        if not env._pool:
            return scene, agent, scene
        background = distractors.crop_window(env._video[frame_index], env._motion.offset,
                                             env.size)
        obs = background.copy()
        obs[agent] = scene[agent]
        if env.floor == "keep":
            alpha = env.task_spec.ground_alpha
            blended = alpha * scene[floor] + (1.0 - alpha) * background[floor]
            obs[floor] = np.round(blended).astype(np.uint8)
        return obs, agent, scene


@pytest.mark.parametrize("name, kwargs", [
    ("DistractingCheetah-v0", {}),
    ("DistractingCheetahOOD-v1", {}),
    ("DistractingHumanoid-v0", {}),  # translucent floor: the blend table
    ("DistractingHumanoidOOD-v1", {}),
    ("CleanWalker-v0", {}),
    ("DistractingHopper-v0", {"level": "hard"}),  # camera shake and colours
    ("DistractingWalkerOOD-v1", {"floor": "replace"}),  # no shadows or reflections
])
def test_frames_masks_and_scenes_match_the_dm_control_reference(name, kwargs):
    env = gym.make(name, **kwargs)
    base = env.unwrapped
    tap = SceneTap(base)
    obs, info = env.reset(seed=11)
    env.action_space.seed(11)
    reference = _Reference(base)
    for _ in range(STEPS):
        obs, _, _, _, info = env.step(env.action_space.sample())
        want_obs, want_mask, want_scene = reference(info["distractor_frame"])
        np.testing.assert_array_equal(obs, want_obs)
        np.testing.assert_array_equal(info["agent_mask"], want_mask)
        np.testing.assert_array_equal(tap.scene, want_scene)
    assert info["agent_mask"].any() and not info["agent_mask"].all()
    env.close()


def test_outputs_are_fresh_arrays_the_next_step_leaves_alone():
    env = gym.make("DistractingHumanoid-v0")
    env.reset(seed=0)
    obs, _, _, _, info = env.step(env.action_space.sample())
    scene, agent, floor = env.unwrapped.render_layers()
    kept = [a.copy() for a in (obs, info["agent_mask"], scene, agent, floor)]
    for _ in range(3):
        env.step(env.action_space.sample())
    for before, now in zip(kept, (obs, info["agent_mask"], scene, agent, floor)):
        np.testing.assert_array_equal(before, now)
    assert all(a.flags.c_contiguous for a in (obs, info["agent_mask"], scene))


def test_blend_table_is_the_float_blend_with_scene_first():
    alpha = 0.3
    table = _blend_table(alpha)
    scene, video = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    scene, video = scene.astype(np.uint8), video.astype(np.uint8)
    expected = np.round(alpha * scene + (1.0 - alpha) * video).astype(np.uint8)
    np.testing.assert_array_equal(table, expected)
    assert table[255, 0] == 76 and table[0, 255] == 178  # 76.5 and 178.5 round to even
    assert _blend_table(1.0) is None


def test_segment_ids_use_all_three_bytes_in_large_scenes():
    env = gym.make("CleanCheetah-v0", size=16)
    env.reset(seed=0)
    renderer = env.unwrapped._renderer
    ids = np.random.default_rng(0).integers(0, 2**24, (16, 16))
    encoded = np.stack([ids & 0xFF, ids >> 8 & 0xFF, ids >> 16], axis=-1).astype(np.uint8)
    renderer._segment[...] = encoded[::-1]  # OpenGL rows run bottom to top
    renderer.scene.ngeom = 300
    np.testing.assert_array_equal(renderer._segment_ids(), ids)
    renderer.scene.ngeom = 9  # ids below 256: only the red byte is read
    np.testing.assert_array_equal(renderer._segment_ids(), ids & 0xFF)


def test_size_beyond_the_models_framebuffer_renders():
    """dm_control's models have a 640 x 480 offscreen buffer; the env grows it for its image."""
    env = gym.make("CleanCheetah-v0", size=641)
    obs, info = env.reset(seed=0)
    assert obs.shape == (641, 641, 3) and info["agent_mask"].any()


def test_render_passes_script_measures_every_piece_and_leaves_the_renderer_as_it_was(
        benchmark_script):
    """``benchmarks/render_passes.py`` times passes the envs never render (no shadow, the floor
    alone, a coarser tessellation in a context of its own); afterwards the env renders what a
    fresh one does."""
    script = benchmark_script("render_passes")
    times = script.measure("DistractingHopper-v0", repeats=2)
    assert all(ms > 0 for ms in times.values()) and len(times) == 13
    assert "RGB pass, whole floor, 14 slices x 8 stacks" in times
    env, fresh = gym.make("DistractingHopper-v0"), gym.make("DistractingHopper-v0")
    env.reset(seed=0)
    fresh.reset(seed=0)
    renderer = env.unwrapped._renderer
    with env.unwrapped._physics.contexts.gl.make_current() as ctx:
        script._coarser(env.unwrapped._physics, renderer, ctx, repeats=1)
    for _ in range(3):
        a, b = env.step(np.full(4, 0.3)), fresh.step(np.full(4, 0.3))
        assert np.array_equal(a[0], b[0])
    assert np.array_equal(renderer.render()[0], fresh.unwrapped._renderer.render()[0])
    env.close()
    fresh.close()
