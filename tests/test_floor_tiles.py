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
    floor = _renderer(cheetah)._floor
    assert not floor.available and not floor.active  # 400 quads: MuJoCo's list
    with pytest.raises(ValueError, match="no floor"):
        floor.active = True
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
        first, _ = env.reset(seed=0)  # the first frame: rendered both ways, and they differ
    assert not base._renderer._floor.active
    scene, _, _ = base.render_layers()  # MuJoCo's list from now on
    np.testing.assert_array_equal(first, scene)  # the frame returned on the check was MuJoCo's
    shifted = base._renderer._floor
    shifted.active = True
    base._renderer._floor_checked = True
    tiled, _, _ = base.render_layers()
    assert not np.array_equal(tiled, scene)  # the shifted tiles do change the frame
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


def _floor_points(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The points (x, y, 0) of the grid ``xs`` x ``ys``, as rows."""
    return np.stack(np.meshgrid(xs, ys, [0.0], indexing="ij"), -1).reshape(-1, 3)


def _across(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` evenly spaced values from ``lo`` to ``hi``, both included."""
    return lo + np.linspace(0, 1, n) * (hi - lo)


def _inside_frustum(camera, points: np.ndarray) -> np.ndarray:
    """Which world points dm_control's camera matrix puts in front of the camera and inside
    the image (an independent projection: fovy, pose and image size from dm_control; a MuJoCo
    camera looks along its -z, so points in front have a negative third coordinate)."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], 1)
    image = homogeneous @ camera.matrix.T
    depth = image[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = image[:, 0] / depth, image[:, 1] / depth
    return ((depth < 0) & (u >= -0.5) & (u <= camera.width - 0.5)
            & (v >= -0.5) & (v <= camera.height - 0.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_no_culled_tile_reaches_the_image_by_dm_controls_own_projection(seed):
    from dm_control.mujoco.engine import Camera

    env = gym.make("CleanHumanoid-v0")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(20):
        env.step(env.action_space.sample())
    base = env.unwrapped
    renderer = _renderer(env)
    tiles = renderer._floor
    camera = Camera(base._physics, height=base.size, width=base.size, camera_id=base.camera_id)
    seen = tiles.seen(renderer.scene)
    assert 0 < seen.sum() < len(seen)
    span = np.linspace(-100, 100, 401)
    dense = _floor_points(span, span)
    assert _inside_frustum(camera, dense).sum() > 100  # the check sees the floor at all
    # 9 x 9 points across each tile; the floor geom sits at the origin, unrotated
    ex, ey = tiles._edge_xy
    for t in np.flatnonzero(~seen):
        i, j = divmod(int(t), len(ey) - 1)
        grid = _floor_points(_across(ex[i], ex[i + 1], 9), _across(ey[j], ey[j + 1], 9))
        assert not _inside_frustum(camera, grid).any(), f"tile {t} is in view but culled"
    env.close()


def test_the_lights_pyramid_keeps_the_floor_under_the_light_when_the_camera_looks_away():
    env = gym.make("CleanHumanoid-v0")
    env.reset(seed=0)
    renderer = _renderer(env)
    scene, tiles = renderer.scene, renderer._floor
    for eye in scene.camera[:2]:  # look straight up: the camera sees no floor
        eye.forward[:] = (0.0, 0.0, 1.0)
        eye.up[:] = (1.0, 0.0, 0.0)
    light = next(light for light in scene.lights[:scene.nlight] if light.castshadow)
    seen = tiles.seen(scene).reshape(len(tiles._edge_xy[0]) - 1, -1)
    below = [np.searchsorted(edges, light.pos[k]) - 1 for k, edges in enumerate(tiles._edge_xy)]
    assert seen[below[0], below[1]]  # the tile under the light: in the shadow map
    assert seen.sum() < 10  # and little else
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    assert not tiles.seen(scene).any()  # without shadows nothing is left
    env.close()


def test_outside_is_conservative_on_random_pyramids_and_tiles():
    rng = np.random.default_rng(0)
    for _ in range(50):
        apex = rng.normal(size=3) * 3
        axes = floor_tiles._basis(rng.normal(size=3))
        slope = rng.uniform(0.1, 2.0)
        edges = np.sort(rng.uniform(-10, 10, (2, 6)), axis=1)
        corners = np.stack(np.meshgrid(edges[0], edges[1], [0.0], indexing="ij"), -1)[:, :, 0]
        out = floor_tiles._outside(corners, apex, axes, slope)
        for i in range(5):
            for j in range(5):
                points = _floor_points(_across(edges[0, i], edges[0, i + 1], 7),
                                       _across(edges[1, j], edges[1, j + 1], 7))
                local = (points - apex) @ axes.T
                inside = ((local[:, 2] > 0) & (np.abs(local[:, 0]) <= slope * local[:, 2])
                          & (np.abs(local[:, 1]) <= slope * local[:, 2]))
                assert not (out[i, j] and inside.any())


def test_a_steady_camera_gets_just_its_tiles_and_a_shaking_one_a_wider_set():
    env = gym.make("CleanHumanoid-v0")
    env.reset(seed=0)
    renderer = _renderer(env)
    tiles, scene = renderer._floor, renderer.scene
    steady = tiles.seen(scene)
    np.testing.assert_array_equal(tiles._linked, steady)  # the first list: just what is seen
    tiles._linked = np.zeros_like(steady)  # a tile missing again at once: the camera moves a lot
    with env.unwrapped._physics.contexts.gl.make_current() as ctx:
        ctx.call(tiles.use, scene)
        ctx.call(tiles.restore)
    np.testing.assert_array_equal(tiles._linked, steady | tiles.seen(scene, floor_tiles.LOOSE))
    assert tiles._linked.sum() > steady.sum()
    env.close()
