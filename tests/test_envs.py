"""The registered environments: API conformance, determinism, masks, pools and coupling."""

from __future__ import annotations

import copy
import pickle
import textwrap

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from dm_control.mujoco.engine import Camera
from gymnasium.utils.env_checker import check_env

import masklam_bench
from masklam_bench.checks import parse_envs
from masklam_bench.envs import backgrounds, distractors, parse_env_id, registered_ids


def _rollout(env, seed: int, steps: int, action_seed: int = 0):
    """Observations, masks, infos and actions of a seeded random-action rollout."""
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    frames, infos, actions = [obs], [info], []
    for _ in range(steps):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, _, _, _, info = env.step(action)
        frames.append(obs)
        infos.append(info)
        actions.append(action)
    return np.stack(frames), infos, np.stack(actions)


def test_twelve_ids_registered_idempotently():
    ids = registered_ids()
    assert len(ids) == 12 and len(set(ids)) == 12
    # OOD ids are v1 (their pool changed); ID and clean ids are still v0.
    assert sum(name.endswith("OOD-v1") for name in ids) == 4
    assert sum(name.endswith("-v0") for name in ids) == 8
    masklam_bench.register_envs()  # a second registration changes nothing and raises nothing
    for name in ids:
        assert name in gym.registry
        spec = gym.spec(name)
        assert isinstance(spec.entry_point, str)
        assert spec.max_episode_steps == 1000
        assert spec.to_json()  # JSON-serialisable kwargs


@pytest.mark.parametrize("name", registered_ids())
def test_check_env(name):
    env = gym.make(name)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["agent_mask"].shape == (64, 64) and info["agent_mask"].dtype == bool
    assert info["state"].dtype == np.float32
    assert info["agent_mask"].any()
    env.close()


def test_namespaced_make_and_size_kwarg():
    env = gym.make("masklam_bench:DistractingWalkerOOD-v1", size=48)
    obs, info = env.reset(seed=1)
    assert obs.shape == (48, 48, 3) and info["agent_mask"].shape == (48, 48)


def test_same_seed_same_frames_different_seed_different_background():
    env = gym.make("DistractingCheetah-v0")
    a, _, _ = _rollout(env, seed=3, steps=20)
    b, _, _ = _rollout(env, seed=3, steps=20)
    c, _, _ = _rollout(env, seed=4, steps=20)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_hard_level_is_deterministic_and_moves_camera():
    env = gym.make("DistractingHopper-v0", level="hard")
    a, infos_a, _ = _rollout(env, seed=5, steps=15)
    b, _, _ = _rollout(env, seed=5, steps=15)
    np.testing.assert_array_equal(a, b)
    low = gym.make("DistractingHopper-v0")
    _, infos_c, _ = _rollout(low, seed=5, steps=15)
    np.testing.assert_array_equal(infos_a[-1]["state"], infos_c[-1]["state"])  # same physics
    assert not np.array_equal(infos_a[-1]["agent_mask"], infos_c[-1]["agent_mask"])  # moved camera


def test_a_second_render_of_a_hard_step_is_the_first():
    """The shake moves the camera from the physics' pose once per render, not from the pose the
    last render shook, so rendering a step again (as tests and users do) gives the same image."""
    env = gym.make("CleanWalker-v0", level="hard").unwrapped
    obs, info = env.reset(seed=0)
    for _ in range(2):
        scene, agent, _ = env.render_layers()
        np.testing.assert_array_equal(scene, obs)
        np.testing.assert_array_equal(agent, info["agent_mask"])
    env.close()


def test_close_frees_the_env_and_later_use_says_so():
    env = gym.make("DistractingCheetah-v0").unwrapped
    env.reset(seed=0)
    env.close()
    assert env._physics._contexts is None  # OpenGL and MuJoCo rendering contexts freed
    with pytest.raises(RuntimeError, match="closed; make a new one"):
        env.reset(seed=0)
    env.close()  # twice is harmless


def test_envs_left_open_at_exit_close_quietly(fresh_python):
    # dm_control frees its rendering context at exit and asserts nothing else holds it; an env
    # left open (the README's first example) used to end the script with that AssertionError.
    code = textwrap.dedent("""
        import gymnasium as gym, masklam_bench
        envs = [gym.make(i) for i in ("DistractingCheetah-v0", "CleanHopper-v0")]
        for env in envs:
            env.reset(seed=0)
        envs[1].close()
        gym.make("DistractingWalker-v0").reset(seed=0)  # dropped without close
        print("ok")
    """)
    result = fresh_python(code, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert "Exception ignored" not in result.stderr and "Error" not in result.stderr, \
        result.stderr[-2000:]


def test_numpy_sizes_are_accepted():
    env = gym.make("DistractingHopper-v0", size=np.int64(40))
    assert env.reset(seed=0)[0].shape == (40, 40, 3)


def test_same_trajectory_under_id_ood_and_clean():
    states = []
    for name in ("DistractingWalker-v0", "DistractingWalkerOOD-v1", "CleanWalker-v0"):
        _, infos, _ = _rollout(gym.make(name), seed=7, steps=10)
        states.append(np.stack([i["state"] for i in infos]))
    np.testing.assert_array_equal(states[0], states[1])
    np.testing.assert_array_equal(states[0], states[2])


@pytest.mark.parametrize("task", ["Cheetah", "Humanoid"])
def test_mask_is_exact_and_agent_pixels_untouched(task):
    env = gym.make(f"Distracting{task}-v0")
    obs, info = env.reset(seed=0)
    raw = env.unwrapped
    for _ in range(5):
        obs, _, _, _, info = env.step(env.action_space.sample())
    scene, agent, _ = raw.render_layers()
    # The mask is the segmentation-derived set of geoms not attached to the world body.
    seg = Camera(raw._physics, 64, 64, camera_id=0).render(segmentation=True)
    model = raw._physics.model
    is_geom = seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
    expected = is_geom & (model.geom_bodyid[np.where(is_geom, seg[..., 0], 0)] != 0)
    np.testing.assert_array_equal(info["agent_mask"], expected)
    np.testing.assert_array_equal(agent, expected)
    # Inside the mask the observation is the rendered agent, with no background colour.
    np.testing.assert_array_equal(obs[expected], scene[expected])
    # Outside the mask, the video replaced the sky and shows through a translucent floor.
    floor = raw.render_layers()[2]
    replaced = ~expected & (~floor if raw.task_spec.ground_alpha == 1.0 else True)
    assert replaced.mean() > 0.3
    assert (obs[replaced] != scene[replaced]).any(axis=-1).mean() > 0.9


def test_clean_env_is_stock_dm_control_rendering():
    env = gym.make("CleanCheetah-v0")
    obs, info = env.reset(seed=0)
    scene, _, _ = env.unwrapped.render_layers()
    np.testing.assert_array_equal(obs, scene)
    assert info["distractor_video"] == -1


@pytest.mark.parametrize("kwargs, texels", [({}, 512), ({"size": 32}, 256), ({"shadow_size": 2048}, 2048)])
def test_shadow_map_is_sized_for_the_image(kwargs, texels):
    env = gym.make("CleanCheetah-v0", **kwargs)
    env.reset(seed=0)
    physics = env.unwrapped._physics
    assert physics.model.vis.quality.shadowsize == texels
    # The context built on first render has the map we asked for, not the model's 2048.
    assert physics.contexts.mujoco.ptr.shadowSize == texels


def test_id_and_ood_pools_are_disjoint_and_ood_has_unseen_looks():
    id_pool, ood_pool = backgrounds.video_pool("id"), backgrounds.video_pool("ood")
    assert not set(id_pool) & set(ood_pool)
    id_frames = {backgrounds.render_video(v, 32, 4).tobytes() for v in id_pool}
    assert not any(backgrounds.render_video(v, 32, 4).tobytes() in id_frames for v in ood_pool)
    assert len({v.family for v in id_pool}) >= 3
    assert {v.family for v in ood_pool} - {v.family for v in id_pool}
    assert {v.palette for v in ood_pool} - {v.palette for v in id_pool}


# The ID pool as it was when the first ID datasets and results were made: it must not change.
ID_POOL_V0 = [
    ("noise", "warm", 0), ("shapes", "warm", 1), ("stripes", "warm", 2),
    ("noise", "cool", 3), ("shapes", "cool", 4), ("stripes", "cool", 5),
    ("noise", "earth", 6), ("shapes", "earth", 7), ("stripes", "earth", 8),
    ("noise", "warm", 9), ("shapes", "warm", 10), ("stripes", "warm", 11),
    ("noise", "cool", 12), ("shapes", "cool", 13), ("stripes", "cool", 14),
    ("noise", "earth", 15), ("shapes", "earth", 16), ("stripes", "earth", 17),
    ("noise", "warm", 18), ("shapes", "warm", 19), ("stripes", "warm", 20),
    ("noise", "cool", 21), ("shapes", "cool", 22), ("stripes", "cool", 23),
]


def test_id_pool_is_unchanged():
    assert [(v.family, v.palette, v.seed) for v in backgrounds.video_pool("id")] == ID_POOL_V0


@pytest.mark.parametrize("id_size, ood_size", [(24, 12), (24, 1), (24, 5), (24, 9), (60, 30),
                                               (3, 40)])
def test_no_ood_look_occurs_in_the_id_pool(monkeypatch, id_size, ood_size):
    # A look is a (family, palette) pair: an OOD video sharing one with an ID video would differ
    # from it only by seed, which is not out of distribution.
    monkeypatch.setattr(backgrounds, "ID_POOL_SIZE", id_size)
    monkeypatch.setattr(backgrounds, "OOD_POOL_SIZE", ood_size)
    id_pool, ood_pool = backgrounds.video_pool("id"), backgrounds.video_pool("ood")
    assert len(id_pool) == id_size and len(ood_pool) == ood_size
    id_looks = {(v.family, v.palette) for v in id_pool}
    shared = [v.name for v in ood_pool if (v.family, v.palette) in id_looks]
    assert not shared, f"OOD videos with a look the ID pool shows: {shared}"


@pytest.mark.filterwarnings("ignore:.*out of date:DeprecationWarning")  # gym warns, then raises
def test_old_ood_version_is_refused_naming_v1():
    with pytest.raises(gym.error.DeprecatedEnv, match="DistractingCheetahOOD-v1"):
        gym.make("DistractingCheetahOOD-v0")
    with pytest.raises(ValueError, match="use 'DistractingCheetahOOD-v1'"):
        parse_env_id("DistractingCheetahOOD-v0")
    assert parse_envs("DistractingCheetahOOD-v1,walker") == ["cheetah-run", "walker-run"]


def test_video_colours_and_cache(monkeypatch):
    """Colours as one whole-video float64 mapping gives them; the kept videos bounded by bytes."""
    field = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    palette = backgrounds.PALETTES["warm"]
    stops = np.linspace(0.0, 1.0, len(palette))
    whole = np.clip(np.stack([np.interp(field, stops, palette[:, c]) for c in range(3)], -1),
                    0, 255).astype(np.uint8)
    np.testing.assert_array_equal(backgrounds._colourise(field, palette), whole)

    backgrounds.clear_video_cache()
    pool = backgrounds.video_pool("id")
    first = backgrounds.render_video(pool[0], 32, 4)
    monkeypatch.setattr(backgrounds, "VIDEO_CACHE_BYTES", 2 * first.nbytes)
    for spec in pool[1:4]:
        backgrounds.render_video(spec, 32, 4)
    assert [key[0] for key in backgrounds._video_cache] == list(pool[2:4])
    monkeypatch.setattr(backgrounds, "VIDEO_CACHE_BYTES", first.nbytes // 2)
    big = backgrounds.render_video(pool[0], 32, 4)  # larger than the budget: kept alone
    assert list(backgrounds._video_cache.values()) == [big]
    np.testing.assert_array_equal(big, first)
    backgrounds.clear_video_cache()


def test_videos_are_tileable_and_seeded():
    spec = backgrounds.video_pool("id")[1]
    a = backgrounds.render_video(spec, 64, 8)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8
    backgrounds.clear_video_cache()
    np.testing.assert_array_equal(a, backgrounds.render_video(spec, 64, 8))
    # A window straddling the wrap shows continuous content: the wrap seam is no sharper than
    # the video's ordinary neighbouring-pixel differences.
    frame = a[0].astype(int)
    seam = np.abs(frame[:, 0] - frame[:, -1]).mean()
    inner = np.abs(np.diff(frame, axis=1)).mean()
    assert seam <= 3 * inner + 1


def test_video_playback_bounces():
    idx = [distractors.video_frame_index(t, 2, 1, 4) for t in range(8)]
    assert idx == [2, 3, 2, 1, 0, 1, 2, 3]
    idx = [distractors.video_frame_index(t, 1, -1, 3) for t in range(5)]
    assert idx == [1, 0, 1, 2, 1]


def test_crop_window_is_the_wrapped_window_at_the_floored_offset():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
    for offset in [(0.0, 0.0), (127.9, 95.99), (64.0, 32.5), *rng.uniform(0, 128, (20, 2))]:
        oy, ox = (int(np.floor(v)) for v in offset)
        expected = np.roll(frame, (-oy, -ox), axis=(0, 1))[:40, :40]
        out = distractors.crop_window(frame, np.asarray(offset), 40)
        assert out.flags.c_contiguous and np.array_equal(out, expected), offset


def _coupling_correlation(coupling: float, steps: int = 150) -> float:
    """Correlation between per-step background motion and the projected action in a rollout."""
    env = gym.make("DistractingCheetah-v0", coupling=coupling)
    _, infos, _ = _rollout(env, seed=11, steps=steps)
    motion = np.stack([i["distractor_motion"] for i in infos[1:]]).ravel()
    projected = np.stack([i["distractor_projected_action"] for i in infos[1:]]).ravel()
    # Per-episode drift is constant: remove each axis' mean before correlating.
    motion = (motion.reshape(-1, 2) - motion.reshape(-1, 2).mean(0)).ravel()
    return float(np.corrcoef(motion, projected)[0, 1])


def test_background_motion_correlates_with_action_by_coupling():
    corr = [_coupling_correlation(c) for c in (0.0, 0.25, 1.0)]
    assert abs(corr[0]) < 0.15
    assert corr[0] < corr[1] < corr[2]
    assert corr[2] > 0.8


def test_id_and_ood_use_different_projections():
    w_id = gym.make("DistractingCheetah-v0").unwrapped.projection
    w_ood = gym.make("DistractingCheetahOOD-v1").unwrapped.projection
    assert w_id.shape == (2, 6)
    assert not np.allclose(w_id, w_ood)


def test_vector_env_async(fresh_python):
    # A fresh interpreter, as a user would run it: forking after this test process has rendered
    # would inherit its OpenGL state. (fresh_python kills the forked workers too on a timeout.)
    code = (
        "import gymnasium as gym, numpy as np, masklam_bench\n"
        "envs = gym.make_vec('DistractingHopper-v0', num_envs=2, vectorization_mode='async')\n"
        "obs, info = envs.reset(seed=0)\n"
        "assert obs.shape == (2, 64, 64, 3), obs.shape\n"
        "obs, r, te, tr, info = envs.step(envs.action_space.sample())\n"
        "assert info['agent_mask'].shape == (2, 64, 64)\n"
        "assert not np.array_equal(obs[0], obs[1])\n"
        "envs.close()\n"
        "print('ok')\n"
    )
    result = fresh_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_vector_env_async_after_the_parent_has_rendered(fresh_python):
    # Issue 18: the forked workers of a process that had rendered hung in their first render. Now
    # they fail at once, naming the fix, and the README's spawn form works. The timeout turns a
    # return of the hang into a failure.
    code = textwrap.dedent("""
        import gymnasium as gym, masklam_bench
        gym.make("DistractingCheetah-v0").reset(seed=0)  # the parent renders
        envs = gym.make_vec("DistractingHopper-v0", num_envs=2, vectorization_mode="async")
        try:
            envs.reset(seed=0)
            raise SystemExit("a forked worker rendered after its parent had")
        except RuntimeError as e:
            assert 'vector_kwargs={"context": "spawn"}' in str(e), e
        envs.close()
        envs = gym.make_vec("DistractingHopper-v0", num_envs=2, vectorization_mode="async",
                            vector_kwargs={"context": "spawn"})
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, 64, 64, 3), obs.shape
        envs.close()
        print("ok")
    """)
    result = fresh_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_episode_ends_truncated_after_1000_steps():
    # Gymnasium's own limit lifted: past 1,000 steps dm_control would start an episode unseen.
    env = gym.make("DistractingHopper-v0", size=16, floor="replace", max_episode_steps=1500)
    env.reset(seed=0)
    for t in range(1000):
        _, _, terminated, truncated, _ = env.step(np.zeros(4, np.float32))
        assert not terminated
        assert truncated == (t == 999)
    with pytest.raises(gym.error.ResetNeeded, match="episode has ended"):
        env.step(np.zeros(4, np.float32))
    env.reset(seed=0)
    env.step(np.zeros(4, np.float32))
    raw = type(env.unwrapped)(task="hopper-hop", size=16)  # without gym.make's order check
    with pytest.raises(gym.error.ResetNeeded, match="no episode has started"):
        raw.step(np.zeros(4, np.float32))
    raw.close()
    env.close()


def test_an_env_cannot_be_copied_or_pickled_and_says_so():
    env = gym.make("DistractingHopper-v0", size=16)
    env.reset(seed=0)
    for copy_it in (copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled"):
            copy_it(env.unwrapped)
    env.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": "extreme"}, "level must be one of"),
        ({"distractors": "some"}, "distractors must be one of"),
        ({"floor": "glass"}, "floor must be one of"),
        ({"size": 7}, "size must be"),
        ({"coupling": -1.0}, "coupling must be"),
        ({"coupling": "a"}, "coupling must be"),
        ({"shadow_size": 4}, "shadow_size must be"),
        ({"camera_id": "0"}, "camera_id must be"),
        ({"task": "ant-walk"}, "Unknown task"),
    ],
)
def test_bad_kwarg_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make("DistractingCheetah-v0", **kwargs)


def test_an_id_made_with_another_task_or_split_is_refused():
    for kwargs, right in (({"task": "walker"}, "DistractingWalker-v0"),
                          ({"distractors": "ood"}, "DistractingCheetahOOD-v1")):
        with pytest.raises(ValueError, match=f"make {right} instead"):
            gym.make("DistractingCheetah-v0", **kwargs)  # by make(), before any reset
    gym.make("DistractingCheetah-v0", task="cheetah-run").reset(seed=0)  # the id's own: fine
    env = gym.make(gym.spec("DistractingCheetah-v0"))  # a spec round-trips
    assert env.spec.id == "DistractingCheetah-v0" and env.unwrapped.spec.kwargs["task"]
    env.close()


def test_bad_id_suggests_the_right_one():
    with pytest.raises(gym.error.Error, match="DistractingCheetah"):
        gym.make("DistractingCheeta-v0")


def test_missing_davis_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DAVIS-2017 folder"):
        gym.make("DistractingCheetah-v0", davis_dir=str(tmp_path))


def test_davis_folder_supplies_the_pools(tmp_path):
    from PIL import Image

    root = tmp_path / "DAVIS"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    for split, names in (("train", ["bear", "boat"]), ("val", ["cows"])):
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for i, name in enumerate(names):
            folder = root / "JPEGImages" / "480p" / name
            folder.mkdir(parents=True)
            for f in range(3):
                colour = np.full((48, 64, 3), 40 * i + 20 * f, np.uint8)
                Image.fromarray(colour).save(folder / f"{f:05d}.jpg")
    env = gym.make("DistractingCheetah-v0", davis_dir=str(root))
    assert env.unwrapped.video_names == ["bear", "boat"]
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    ood = gym.make("DistractingCheetahOOD-v1", davis_dir=str(root))
    assert ood.unwrapped.video_names == ["cows"]
    (root / "JPEGImages" / "480p" / "cows" / "00000.jpg").unlink()
    for f in (root / "JPEGImages" / "480p" / "cows").glob("*.jpg"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        gym.make("DistractingCheetahOOD-v1", davis_dir=str(root))


def test_bench_env_measures_every_column_and_finds_few_changed_pixels():
    from masklam_bench.bench import format_table, run_benchmark

    rows = run_benchmark(["DistractingCheetah-v0"], steps=130)  # six turns, the last of 5 steps
    row = rows[0]
    for key in ("stock_dm_control_fps", "fps_stock_shadow_map", "fps", "fps_floor_replaced"):
        assert row[key] > 0
    # Same seed, same trajectory: only shadow texels can differ, on a small share of pixels.
    assert 0.0 <= row["pixels_changed_by_shadow_map"] < 0.01
    low, high = row["speedup_interval"]
    assert row["turns"] == 6 and low <= row["speedup"] <= high
    assert row["speedup"] == pytest.approx(row["fps"] / row["stock_dm_control_fps"])
    table = format_table(rows)
    assert "| DistractingCheetah-v0 |" in table and table.count("\n") == 4
    assert f"| {row['speedup']:.2f}x ({low:.2f}-{high:.2f}) |" in table and "its 6 turns" in table


def test_the_speedup_interval_resamples_turns_in_pairs():
    from masklam_bench.bench import speedup_interval

    # Load that moved both columns alike: every turn's ratio is 3, so is every resample's.
    stock = np.array([3.0, 6.0, 3.0, 9.0, 6.0])
    assert speedup_interval(stock, stock / 3) == pytest.approx((3.0, 3.0))
    # Turns whose ratios differ give an interval around the ratio of the sums, reproducibly.
    ours = np.array([1.0, 1.0, 1.5, 1.0, 2.5])
    low, high = speedup_interval(stock, ours)
    assert low < stock.sum() / ours.sum() < high and (low, high) == speedup_interval(stock, ours)
    # Too few turns to resample: no interval.
    assert speedup_interval(stock[:4], ours[:4]) is None
