"""Tests of expert-data collection (Minari format) and the fast frame loader."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import masklam_bench  # noqa: F401  (registers the ids)
from masklam_bench import collect as collect_module
from masklam_bench import dataset as ds
from masklam_bench.collect import add_cli, collect
from masklam_bench.dataset import (
    DatasetError,
    dataset_metadata,
    file_sha256,
    labelled_subset,
    load_frames,
    minari_location,
    validate_dataset,
)
from masklam_bench.experts import available_experts, weights_path

ENV = "DistractingCheetah-v0"
CLEAN_ENV = "CleanCheetah-v0"
EPISODES = 3
TEST_EPISODES = 1
STEPS = 24
NOISE = 0.3
SEED = 5
FAKE_EVAL_RETURN = 123.0


@pytest.fixture(scope="module")
def fake_expert(tmp_path_factory, fake_cheetah_expert) -> str:
    """A tiny random cheetah actor in the shipped weights format (no trained expert needed)."""
    return fake_cheetah_expert(tmp_path_factory.mktemp("expert") / "cheetah-run.pt",
                               eval_return=FAKE_EVAL_RETURN)


def _collect(root, fake_expert, workers, **overrides):
    kwargs = {"episodes": EPISODES, "episode_steps": STEPS, "action_noise": NOISE, "seed": SEED,
              "workers": workers, "progress": False, "test_episodes": TEST_EPISODES,
              "expert_path": fake_expert}
    return collect(ENV, root, **{**kwargs, **overrides})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fake_expert):
    """A small expert dataset collected by two spawned worker processes."""
    return _collect(tmp_path_factory.mktemp("root"), fake_expert, workers=2)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, fake_expert):
    """The same collection in one process, interrupted after its first episode, then resumed.

    Returns the dataset, the error message seen while interrupted, and the episodes rolled out
    by the resumed run.
    """
    root = tmp_path_factory.mktemp("resumed")
    real_run = collect_module._Rollouts.run
    calls = []

    def run_then_fail(self, index, episodes_dir, report):
        if calls:
            raise RuntimeError("simulated interruption")
        calls.append(index)
        return real_run(self, index, episodes_dir, report)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collect_module._Rollouts, "run", run_then_fail)
        with pytest.raises(RuntimeError, match="simulated interruption"):
            _collect(root, fake_expert, workers=1)
    final = root / "masklam" / ENV / "expert-v0"
    with pytest.raises(DatasetError) as interrupted:
        validate_dataset(final)

    rerun = []

    def run_and_count(self, index, episodes_dir, report):
        rerun.append(index)
        return real_run(self, index, episodes_dir, report)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collect_module._Rollouts, "run", run_and_count)
        path = _collect(root, fake_expert, workers=1)
    return path, str(interrupted.value), rerun


def _arrays(data):
    return {k: v for k, v in vars(data).items() if isinstance(v, np.ndarray)}


# ----------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------
def test_layout_and_metadata(dataset):
    assert dataset.parts[-3:] == ("masklam", ENV, "expert-v0")
    assert sorted(p.name for p in dataset.iterdir()) == ["data"]
    assert sorted(p.name for p in (dataset / "data").iterdir()) == ["main_data.hdf5",
                                                                    "metadata.json"]
    assert not list(dataset.parent.glob(".*partial"))
    meta = dataset_metadata(dataset)
    assert meta["env_id"] == ENV and meta["task"] == "cheetah-run"
    assert meta["action_dim"] == 6 and meta["state_dim"] == 17 and meta["image_size"] == 64
    assert meta["total_episodes"] == EPISODES and meta["total_steps"] == EPISODES * STEPS
    assert meta["test_episodes"] == TEST_EPISODES and meta["seed"] == SEED
    assert meta["expert"]["action_noise"] == NOISE
    assert meta["expert"]["meta"]["eval_return_mean"] == FAKE_EVAL_RETURN
    # Short episodes: the expert reference is its noise-free evaluation, not these returns.
    assert meta["ref_max_score"] == FAKE_EVAL_RETURN
    assert isinstance(meta["ref_min_score"], float)
    assert json.loads(meta["env_spec"])["max_episode_steps"] == STEPS
    assert set(meta["package_versions"]) >= {"masklam-bench", "mujoco", "dm_control",
                                              "gymnasium", "numpy", "torch"}
    assert meta["files"]["main_data.hdf5"]["sha256"] == file_sha256(
        dataset / "data" / "main_data.hdf5")
    validate_dataset(dataset)


def test_minari_load_dataset_round_trip(dataset, monkeypatch):
    import minari

    root, ident = minari_location(dataset)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert ident in minari.list_local_datasets()
    mdata = minari.load_dataset(ident)
    assert mdata.total_episodes == EPISODES and mdata.total_steps == EPISODES * STEPS
    assert mdata.env_spec.id == ENV
    frames = load_frames(dataset, split="all")
    assert frames.num_episodes == EPISODES
    start = 0
    for episode in mdata.iterate_episodes():
        obs = episode.observations
        assert mdata.observation_space.contains({k: v[0] for k, v in obs.items()})
        stop = start + STEPS + 1
        assert len(episode) == STEPS and len(obs["pixels"]) == STEPS + 1
        np.testing.assert_array_equal(obs["pixels"], frames.frames[start:stop])
        np.testing.assert_array_equal(obs["clean_pixels"], frames.clean_frames[start:stop])
        np.testing.assert_array_equal(obs["state"], frames.states[start:stop])
        np.testing.assert_array_equal(obs["agent_mask"].astype(bool),
                                      frames.unpack_masks(np.arange(start, stop)))
        np.testing.assert_array_equal(episode.actions, frames.actions[start:stop - 1])
        np.testing.assert_array_equal(episode.rewards.astype(np.float32),
                                      frames.rewards[start:stop - 1])
        assert episode.truncations[-1] and not episode.truncations[:-1].any()
        assert not episode.terminations.any()
        assert set(episode.infos) >= {"distractor_offset", "distractor_projected_action"}
        start = stop


def test_load_frames_contract(dataset):
    data = load_frames(dataset)
    n = (EPISODES - TEST_EPISODES) * (STEPS + 1)
    assert data.split == "train" and data.num_episodes == EPISODES - TEST_EPISODES
    assert data.frames.shape == (n, 64, 64, 3) and data.frames.dtype == np.uint8
    assert data.clean_frames.shape == data.frames.shape
    assert data.masks.shape == (n, 64, 8) and data.masks.dtype == np.uint8
    assert data.actions.shape == (n, 6) and data.actions.dtype == np.float32
    assert data.states.shape == (n, 17) and data.rewards.shape == (n,)
    assert (data.image_size, data.action_dim) == (64, 6)
    last = np.flatnonzero(data.episode_end == np.arange(n))
    np.testing.assert_array_equal(last, [STEPS, 2 * STEPS + 1])
    assert not data.actions[last].any() and not data.rewards[last].any()
    assert np.abs(data.actions[data.transitions]).sum(axis=1).min() > 0
    # Transitions never cross an episode boundary, and every other frame is one.
    t = data.transitions
    assert len(t) == n - data.num_episodes
    assert (data.episode_start[t + 1] == data.episode_start[t]).all()
    assert not np.isin(last, t).any()
    test = load_frames(dataset, split="test", clean=False)
    assert test.clean_frames is None and test.num_episodes == TEST_EPISODES
    every = load_frames(dataset, split="all")
    np.testing.assert_array_equal(test.frames, every.frames[n:])
    np.testing.assert_array_equal(test.episode_start, every.episode_start[n:] - n)
    assert load_frames(dataset, split="test", test_episodes=2).num_episodes == 2


def test_episodes_differ(dataset):
    data = load_frames(dataset, split="all")
    first = data.frames[: STEPS + 1]
    second = data.frames[STEPS + 1: 2 * (STEPS + 1)]
    assert not np.array_equal(first, second)
    assert not np.array_equal(data.actions[:STEPS], data.actions[STEPS + 1: 2 * STEPS + 1])


def test_labelled_subset_is_first_train_transitions(dataset):
    data = load_frames(dataset)
    n = STEPS + 6  # crosses into the second episode
    expected = np.concatenate([np.arange(STEPS), STEPS + 1 + np.arange(6)])
    np.testing.assert_array_equal(labelled_subset(data, n), expected)
    with pytest.raises(ValueError, match="train split has"):
        labelled_subset(data, data.num_transitions + 1)
    with pytest.raises(ValueError, match="train split"):
        labelled_subset(load_frames(dataset, split="test"), 4)


# ----------------------------------------------------------------------------------------------
# Fidelity: the stored masks and clean frames are the environments' own
# ----------------------------------------------------------------------------------------------
def _replay(env_name, seed, actions):
    env = gym.make(env_name, max_episode_steps=STEPS)
    obs, info = env.reset(seed=seed)
    frames, masks = [obs], [info["agent_mask"]]
    for action in actions:
        obs, _, _, _, info = env.step(action)
        frames.append(obs)
        masks.append(info["agent_mask"])
    env.close()
    return np.stack(frames), np.stack(masks)


def test_masks_and_frames_match_replay(dataset):
    import h5py

    data = load_frames(dataset, split="all")
    with h5py.File(dataset / "data" / "main_data.hdf5", "r") as f:
        seed = int(f["episode_1"].attrs["seed"])
    episode = np.arange(STEPS + 1, 2 * (STEPS + 1))
    frames, masks = _replay(ENV, seed, data.actions[episode[:-1]])
    np.testing.assert_array_equal(data.unpack_masks(episode), masks)
    np.testing.assert_array_equal(data.frames[episode], frames)
    assert masks.any(axis=(1, 2)).all()


def test_clean_frames_match_clean_env(dataset):
    import h5py

    data = load_frames(dataset, split="all")
    with h5py.File(dataset / "data" / "main_data.hdf5", "r") as f:
        seed = int(f["episode_0"].attrs["seed"])
    episode = np.arange(STEPS + 1)
    clean, _ = _replay(CLEAN_ENV, seed, data.actions[episode[:-1]])
    np.testing.assert_array_equal(data.clean_frames[episode], clean)
    assert not np.array_equal(data.frames[episode], clean)


# ----------------------------------------------------------------------------------------------
# Determinism, resumption and reuse
# ----------------------------------------------------------------------------------------------
def test_interrupted_collection_is_reported_and_resumes(resumed):
    _, message, rerun = resumed
    assert "incomplete" in message and "resume" in message
    assert rerun == [1, 2]  # episode 0 was kept from the interrupted run


def test_same_seed_gives_identical_dataset(dataset, resumed):
    """Two workers vs one, uninterrupted vs interrupted and resumed: the same arrays."""
    path, _, _ = resumed
    a, b = load_frames(dataset, split="all"), load_frames(path, split="all")
    for name, array in _arrays(a).items():
        np.testing.assert_array_equal(array, _arrays(b)[name], err_msg=name)
    meta_a, meta_b = dataset_metadata(dataset), dataset_metadata(path)
    for key in ("collected_return_mean", "ref_min_score", "total_steps", "observation_space"):
        assert meta_a[key] == meta_b[key]


def test_a_kill_while_writing_the_work_config_keeps_it_and_the_collection_resumes(
        tmp_path, fake_expert, dataset, fresh_python, killed_mid_write):
    """SIGKILL half-way through rewriting the work folder's config.json (a resumed collection
    claims its folder again): the config written before stays whole, and the next resume ends
    with the dataset of a collection never interrupted."""
    import signal

    real_run = collect_module._Rollouts.run

    def first_episode_only(self, index, episodes_dir, report):
        if index > 0:
            raise RuntimeError("simulated interruption")
        return real_run(self, index, episodes_dir, report)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collect_module._Rollouts, "run", first_episode_only)
        with pytest.raises(RuntimeError, match="simulated interruption"):
            _collect(tmp_path, fake_expert, workers=1)
    config = next(tmp_path.rglob("*.partial")) / "config.json"
    before = config.read_text()
    kwargs = {"episodes": EPISODES, "episode_steps": STEPS, "action_noise": NOISE, "seed": SEED,
              "workers": 1, "progress": False, "test_episodes": TEST_EPISODES,
              "expert_path": fake_expert}
    code = killed_mid_write("config.json") + (
        "from masklam_bench.collect import collect\n"
        f"collect({ENV!r}, {str(tmp_path)!r}, **{kwargs!r})\n")
    result = fresh_python(code, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert config.read_text() == before
    path = _collect(tmp_path, fake_expert, workers=1)
    a, b = load_frames(dataset, split="all"), load_frames(path, split="all")
    for name, array in _arrays(a).items():
        np.testing.assert_array_equal(array, _arrays(b)[name], err_msg=name)


@pytest.fixture
def no_recollection(monkeypatch):
    """Fail the test if a finished dataset gets collected again."""
    def fail(*args, **kwargs):
        raise AssertionError("collected again")

    monkeypatch.setattr(collect_module, "_run_episodes", fail)


def test_existing_dataset_is_reused_or_refused(dataset, fake_expert, no_recollection, capsys):
    assert _collect(dataset.parents[2], fake_expert, workers=2) == dataset
    # The fake expert's recorded return (123.0) is far below LAOM's cheetah expert: flagged.
    assert "14.7% of LAOM's expert (837.7), below the suite's 80% target" in capsys.readouterr().err
    with pytest.raises(ValueError, match="other settings.*action_noise"):
        _collect(dataset.parents[2], fake_expert, workers=2, action_noise=0.1)


def test_a_davis_folder_from_the_environment_is_recorded(dataset, fake_expert, no_recollection,
                                                         monkeypatch, tmp_path):
    """$MASKLAM_DAVIS_DIR changes the envs' videos: a dataset of the procedural videos is not
    reused under it (nor one of DAVIS videos without it), and a new one records the folder."""
    from PIL import Image

    from masklam_bench.envs.backgrounds import DAVIS_ENV_VAR

    (tmp_path / "davis" / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "davis" / "ImageSets" / "2017" / "train.txt").write_text("v\n")
    (tmp_path / "davis" / "JPEGImages" / "480p" / "v").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "davis" / "JPEGImages" / "480p" /
                                                 "v" / "0.jpg")
    monkeypatch.setenv(DAVIS_ENV_VAR, str(tmp_path / "davis"))
    with pytest.raises(ValueError, match=r"other settings \(env_kwargs\)"):
        _collect(dataset.parents[2], fake_expert, workers=2)
    kwargs = collect_module._with_davis_dir({})
    assert kwargs == {"davis_dir": str((tmp_path / "davis").resolve())}
    monkeypatch.delenv(DAVIS_ENV_VAR)
    assert collect_module._with_davis_dir({"size": 64}) == {"size": 64}


def test_second_process_waits_for_the_lock(dataset, fake_expert, no_recollection, capsys):
    """Two runs of one task started together: the second waits instead of failing."""
    result = {}

    def second():
        result["path"] = _collect(dataset.parents[2], fake_expert, workers=2)

    lock = dataset.parent / f".{dataset.name}.lock"
    with collect_module._exclusive(lock):  # another process holds it (flock is per open file)
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=1.5)
        assert waiter.is_alive() and "path" not in result
    waiter.join(timeout=120)
    assert not waiter.is_alive(), "the waiting collection did not finish in 120 s"
    assert result["path"] == dataset
    assert "waiting for it" in capsys.readouterr().err
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------
# Damage is detected
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "masklam" / ENV / "expert-v0"
    shutil.copytree(dataset, target)
    return target


def test_truncated_hdf5_is_detected(copy):
    main = copy / "data" / "main_data.hdf5"
    size = main.stat().st_size
    with open(main, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match="truncated"):
        validate_dataset(copy)
    with pytest.raises(DatasetError, match="truncated"):
        load_frames(copy)


def test_corrupted_hdf5_is_detected(copy):
    main = copy / "data" / "main_data.hdf5"
    with open(main, "r+b") as f:
        f.seek(main.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    validate_dataset(copy, checksum=False)  # same size: only the checksum can tell
    with pytest.raises(DatasetError, match="corrupted"):
        validate_dataset(copy)


def test_missing_and_incomplete_datasets_are_detected(copy, tmp_path):
    with pytest.raises(DatasetError, match="No dataset at .*masklam-bench collect"):
        load_frames(tmp_path / "nowhere")
    meta_path = copy / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(DatasetError, match="format version 0"):
        validate_dataset(copy)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items()
                                     if k != "collection_complete"}))
    with pytest.raises(DatasetError, match="incomplete"):
        validate_dataset(copy)
    meta_path.unlink()
    with pytest.raises(DatasetError, match="incomplete or damaged"):
        load_frames(copy)
    shutil.rmtree(copy)
    with pytest.raises(DatasetError, match="No dataset"):
        validate_dataset(copy)


@pytest.mark.parametrize("edit, message", [
    ({"ref_max_score": 1.0}, "was edited after collection"),
    ({"total_episodes": 2, "sign": True}, "holds 1 more episodes than the 2"),
    ({"test_episodes": 2, "sign": True}, "test_episodes=2 but its collection used 1"),
    ({"files": None, "sign": True}, "lacks a 'files' record"),
    ({"image_size": "64", "sign": True}, "image_size='64', not an integer"),
    ({"ref_min_score": "low", "sign": True}, "ref_min_score='low', not a number"),
    ({"collection": None, "sign": True}, "lacks the collection's settings"),
])
def test_edited_or_malformed_metadata_is_a_clear_error(copy, edit, message):
    """The data files' checksums cannot see a hand edit of the metadata (a reference score that
    rescales every normalised return, an episode count that drops an episode): its own digest
    and field checks do, before anything is loaded."""
    meta_path = copy / ds.DATA_DIR / ds.METADATA_FILE
    meta = json.loads(meta_path.read_text())
    assert meta[ds.METADATA_DIGEST_KEY] == ds.metadata_digest(meta)
    assert meta["total_episodes"] == 3 and meta["test_episodes"] == 1
    sign = edit.pop("sign", False)
    meta.update(edit)
    if sign:  # re-signed, as a careful editor would: the field checks still refuse it
        meta[ds.METADATA_DIGEST_KEY] = ds.metadata_digest(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message):
        load_frames(copy)


def test_bad_arguments_are_refused(tmp_path, fake_expert):
    with pytest.raises(ValueError, match="Unknown environment"):
        collect("DistractingCheeta-v0", tmp_path, episodes=2)
    with pytest.raises(ValueError, match="episode_steps"):
        collect(ENV, tmp_path, episodes=2, episode_steps=1001, policy="random")
    with pytest.raises(ValueError, match="policy"):
        collect(ENV, tmp_path, episodes=2, policy="greedy")
    # A bad env keyword fails before any worker starts, and leaves no work folder behind.
    with pytest.raises(ValueError, match="size must be"):
        collect(ENV, tmp_path, episodes=2, policy="random", env_kwargs={"size": 8})
    assert not any(tmp_path.rglob("*.partial"))


# ----------------------------------------------------------------------------------------------
# Command line, random policy, shipped expert
# ----------------------------------------------------------------------------------------------
def test_cli_collects_random_policy(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["collect", "--env", "CleanCheetah-v0", "--out", str(tmp_path),
                              "--preset", "smoke", "--episodes", "2", "--episode-steps", "10",
                              "--policy", "random", "--workers", "1"])
    args.func(args)
    assert "minari.load_dataset('masklam/CleanCheetah-v0/random-v0')" in capsys.readouterr().out
    data = load_frames(tmp_path)  # a root holding one dataset
    meta = dataset_metadata(tmp_path)
    assert meta["preset"] == "smoke" and meta["expert"] is None and meta["ref_max_score"] is None
    assert data.clean_frames is None  # a clean id has no separate clean frames
    assert meta["test_episodes"] == 1  # at least one held-out episode by default
    assert data.num_frames == 11
    assert np.abs(data.actions).max() <= 1.0


@pytest.mark.skipif("cheetah-run" not in available_experts(),
                    reason="no shipped cheetah-run expert yet")
def test_shipped_expert_collection(tmp_path):
    path = collect(ENV, tmp_path, episodes=1, episode_steps=8, workers=1, progress=False)
    meta = dataset_metadata(path)
    assert meta["expert"]["weights"] == "shipped"
    assert meta["expert"]["weights_sha256"] == file_sha256(weights_path("cheetah-run"))
    assert load_frames(path, split="all").num_frames == 9


# ----------------------------------------------------------------------------------------------
# A killed collection leaves no worker behind
# ----------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _collection_workers(parent: int) -> list[int]:
    """Live spawned children of ``parent`` (multiprocessing's spawn_main, not its tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline and _alive(int(stat.parent.name)):
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_collection_leaves_no_worker_running(tmp_path, sig):
    """kill (a scheduler's pre-emption) or kill -9 of the main process stops its workers too."""
    cmd = [sys.executable, "-m", "masklam_bench.cli", "collect", "--env", "CleanCheetah-v0",
           "--out", str(tmp_path / "data"), "--preset", "smoke", "--episodes", "8",
           "--episode-steps", "1000", "--policy", "random", "--workers", "2"]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: progress bars cannot fill it and block
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = _collection_workers(proc.pid)
    assert len(workers) == 2, log.read_text()
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    err = log.read_text()
    if sig == signal.SIGTERM:  # handled like Ctrl-C: a message and exit code 128 + 15
        assert proc.returncode == 143 and "interrupted; finished work is kept" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers)), f"workers {workers} outlived their main process"


def test_background_motion_of_distracting_and_clean_datasets(dataset, copy):
    """Per-frame exogenous motion aligned with the frames of a Distracting dataset; None for a
    Clean one, whose env records the motion of a background it never shows."""
    motion = ds.load_background_motion(dataset)
    assert motion.shape == (len(ds.load_frames(dataset, clean=False).frames), 2)
    assert np.abs(motion).sum() > 0
    meta_path = copy / ds.DATA_DIR / ds.METADATA_FILE
    meta = {**json.loads(meta_path.read_text()), "env_id": "CleanCheetah-v0"}
    meta_path.write_text(json.dumps({**meta, ds.METADATA_DIGEST_KEY: ds.metadata_digest(meta)}))
    assert ds.load_background_motion(copy) is None


def test_a_script_without_a_main_guard_stops_with_the_fix_instead_of_waiting(tmp_path,
                                                                              fake_expert,
                                                                              fresh_python):
    # Each spawned worker imports the script again; unguarded, it would collect again in every
    # worker and wait forever for the parent's lock on the dataset.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from masklam_bench.collect import collect\n"
        f"collect({ENV!r}, {str(tmp_path / 'root')!r}, episodes=2, episode_steps=3, "
        f"workers=2, progress=False, test_episodes=1, expert_path={fake_expert!r})\n")
    # A regression (workers waiting on the lock) fails at the timeout, its workers killed too.
    result = fresh_python("", timeout=240, script=str(script))
    assert result.returncode != 0
    assert 'if __name__ == "__main__":' in result.stderr
    assert "worker stopped unexpectedly" in result.stderr
