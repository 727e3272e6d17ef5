"""The humanoid's floor drawn as only its tiles in view: the same frames and masks as MuJoCo's
whole-floor list, most of the floor left out, and MuJoCo's list kept when the two disagree."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import masklam_bench  # noqa: F401 (registers the envs)
from masklam_bench.envs import floor_tiles

STEPS = 40


def _renderer(env):
    env.unwrapped.render_layers()
    return env.unwrapped._renderer


def test_plane_grid_places_the_quads_as_mujoco_does():
    gx, gy = floor_tiles.plane_grid(np.array([100.0, 100.0, 0.2]))
    assert len(gx) == len(gy) == mujoco.mjMAXPLANEGRID + 1  # 200 x 200 quads
    assert gx[0] == -100.0 and np.isclose(gx[-1], 100.0) and (np.diff(gx) >= 0).all()
    assert np.allclose(np.diff(gx)[1:-1], 200 / 198)  # the pads at the ends are empty here
    assert floor_tiles.plane_grid(np.array([0.0, 5.0, 1.0])) is None  # infinite: not tiled
    small = floor_tiles.plane_grid(np.array([1.0, 1.0, 0.25]))
    assert np.allclose(small[0], [-1, -1, -0.5, 0, 0.5, 1, 1])  # 4 quads and 2 empty pads


def test_only_a_large_floor_is_tiled():
    cheetah = gym.make("DistractingCheetah-v0")
    cheetah.reset(seed=0)
    assert not _renderer(cheetah)._floor.active  # 1,200 quads: MuJoCo's list
    cheetah.close()
    humanoid = gym.make("CleanHumanoid-v0")
    humanoid.reset(seed=0)
    assert _renderer(humanoid)._floor.active
    humanoid.close()


@pytest.mark.parametrize("kwargs", [{}, {"level": "hard"}])  # hard: the camera shakes
def test_tiles_give_mujocos_frames_and_leave_out_most_of_the_floor(kwargs):
    env = gym.make("DistractingHumanoid-v0", **kwargs)
    env.reset(seed=3)
    env.action_space.seed(3)
    renderer = _renderer(env)
    tiles, context = renderer._floor, renderer._mjr_context
    mujoco_lists = context.basePlane
    drawn = []
    for _ in range(STEPS):
        env.step(env.action_space.sample())
        tiled = renderer.render()
        assert renderer._floor_checked and context.basePlane == mujoco_lists
        drawn.append(tiles._linked.mean())
        tiles.active = False
        whole = renderer.render()
        tiles.active = True
        for a, b in zip(tiled, whole):
            np.testing.assert_array_equal(a, b)
        assert whole[2].any()  # the floor is in the frame
    assert max(drawn) < 0.3


def test_tiles_that_differ_from_mujocos_floor_are_dropped(monkeypatch):
    original = floor_tiles.FloorTiles.__init__

    def wrong_texture(self, model, mjr_context):
        original(self, model, mjr_context)
        self._texcoords = self._texcoords + 0.25  # the checker pattern shifted

    monkeypatch.setattr(floor_tiles.FloorTiles, "__init__", wrong_texture)
    env = gym.make("CleanHumanoid-v0")
    base = env.unwrapped
    with pytest.warns(RuntimeWarning, match="tiles differs"):
        env.reset(seed=0)  # the first frame
    scene, _, _ = base.render_layers()
    assert not base._renderer._floor.active
    base._renderer._floor_checked = True  # so render() no longer draws both ways
    again, _, _ = base.render_layers()
    np.testing.assert_array_equal(scene, again)  # MuJoCo's frame, both times
    env.close()


def test_a_light_the_test_cannot_bound_draws_every_tile():
    env = gym.make("CleanHumanoid-v0")
    env.reset(seed=0)
    renderer = _renderer(env)
    scene = renderer.scene
    assert renderer._floor.seen(scene) is not None
    light = next(light for light in scene.lights[:scene.nlight] if light.castshadow)
    light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    assert renderer._floor.seen(scene) is None
    env.close()


def test_floor_tiles_benchmark_times_both_ways_and_checks_every_frame(benchmark_script):
    module = benchmark_script("floor_tiles")
    result = module.measure("CleanHumanoid-v0", blocks=1, block_steps=3)
    assert result["tiles_ms"] > 0 and result["whole_ms"] > 0
    assert 0 < result["drawn"] < 0.3
