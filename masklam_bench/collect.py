"""``masklam-bench collect``: roll out an expert (or random) policy and store the episodes as a Minari dataset.

Each worker process owns one environment and writes each episode it finishes to its own HDF5
file, atomically; when all are there they are merged into Minari's ``main_data.hdf5``, the
metadata (with sizes, checksums and a completion marker) is written, and the folder is renamed
into place. An interrupted collection resumes from its finished episodes. Episode i is seeded
from ``(seed, i)`` alone, so the data does not depend on the number of workers. The layout is
described in :mod:`masklam_bench.dataset`. Disk: the episode files and the merged file coexist
until the merge ends, so a collection needs about twice its final size (15 MB per 1000 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import importlib.metadata
import json
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede importing mujoco

import gymnasium as gym
import h5py
import numpy as np
from gymnasium.envs.registration import EnvSpec

from masklam_bench import dataset as ds
from masklam_bench import interrupts
from masklam_bench.checks import int_at_least
from masklam_bench.envs import EPISODE_STEPS, parse_env_id
from masklam_bench.errors import UserError
from masklam_bench.fileio import atomic_path, atomic_write_json, atomic_write_text

POLICIES = ("expert", "random")
"""``expert``: the shipped state-based expert plus Gaussian noise. ``random``: uniform actions."""
RANDOM_RETURN_EPISODES = 5
"""Episodes averaged for the random-policy reference return (``ref_min_score``)."""
PACKAGES = ("masklam-bench", "mujoco", "dm_control", "gymnasium", "shimmy", "numpy", "torch",
            "minari", "h5py")
"""Packages whose versions are recorded in the metadata."""
REQUIREMENTS = ("mujoco", "dm_control", "gymnasium", "shimmy", "masklam-bench")
"""Packages Minari's ``recover_environment`` checks, pinned to the collecting versions."""

# Per-key HDF5 compression (filter, level), standard gzip so any HDF5 reader opens the file.
# Measured on a 1000-step cheetah episode at level 1: masks shrink 30x and clean frames 6x;
# distracting frames only 2x while decoding at ~100 MB/s, so they stay raw for fast loading.
_COMPRESSION: dict[str, tuple[str, int] | None] = {
    "pixels": None, "clean_pixels": ("gzip", 1), "agent_mask": ("gzip", 1), "state": None,
}
_CHUNK_FRAMES = 128  # frames per HDF5 chunk of a compressed dataset
_PROGRESS_EVERY = 25  # steps between progress reports of a worker
_ACTION_STREAM = 1  # SeedSequence key separating the action noise from the environment's seed
_POLL_SECONDS = 1.0  # how often the main process checks that its workers are alive
_EPISODES_DIR = "episodes"
_CONFIG_FILE = "config.json"
# Config fields that may change between an interrupted run and its resumption, and between a
# finished dataset and a call that returns it.
_RESUMABLE_FIELDS = ("episodes", "test_episodes", "preset", "expert_path")
_REUSABLE_FIELDS = ("expert_path",)
_INFO_KEYS = ("distractor_video", "distractor_frame", "distractor_offset", "distractor_motion",
              "distractor_projected_action")
"""Per-step ``info`` entries stored under each episode's ``infos`` group."""


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """What a collection is: every field is recorded in the dataset's metadata."""

    env_id: str
    """Registered id without namespace, e.g. ``DistractingCheetah-v0``."""
    env_kwargs: dict[str, Any]
    """Extra keyword arguments of ``gym.make`` (image size, level, floor, coupling)."""
    episodes: int
    """Number of episodes."""
    test_episodes: int
    """How many of the last episodes form the held-out split."""
    episode_steps: int
    """Steps per episode (actions; each episode stores one more observation)."""
    action_noise: float
    """Std of the Gaussian noise added to the expert's actions (ignored by ``random``)."""
    seed: int
    """Base seed: episode i resets with a seed derived from (seed, i)."""
    policy: str
    """``expert`` or ``random``."""
    expert_path: str | None
    """Expert weights file, or None for the task's shipped expert (or the random policy)."""
    expert_sha256: str | None
    """SHA-256 of the expert weights file (None for the random policy)."""
    preset: str | None
    """Name of the preset the sizes came from, if any."""


def episode_seed(seed: int, index: int) -> int:
    """The ``reset`` seed of episode ``index`` of a collection with base seed ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _action_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of episode ``index``'s action noise (or random actions)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, _ACTION_STREAM]))


def _stores_clean(env_id: str, env_kwargs: dict[str, Any]) -> bool:
    """Whether the stock render of a frame is the clean env's frame: a distracting id at level
    ``low`` that keeps the floor (``hard`` shakes the camera; replacing the floor drops shadows)."""
    _, split = parse_env_id(env_id)
    return (split != "none" and env_kwargs.get("level", "low") == "low"
            and env_kwargs.get("floor", "keep") == "keep")


# ----------------------------------------------------------------------------------------------
# One process's rollouts
# ----------------------------------------------------------------------------------------------
class SceneTap:
    """Wraps an env's ``render_layers`` to keep the stock dm_control render of the last frame.

    The distracting env renders the scene once per step and pastes the background over it; the
    tap keeps that scene, the paired clean frame, without rendering twice. Each step's scene is a
    fresh array, so a caller may keep it. Also used by ``benchmarks/env_hashes.py`` and
    ``tests/test_rendering.py`` to check the scene a step rendered.
    """

    def __init__(self, base: Any):
        self._render_layers = base.render_layers
        self.scene: np.ndarray | None = None
        base.render_layers = self

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scene, agent, floor = self._render_layers()
        self.scene = scene
        return scene, agent, floor


class _Rollouts:
    """An environment and a policy, reused for every episode one process collects."""

    def __init__(self, config: CollectConfig):
        import masklam_bench  # noqa: F401  (registers the ids in a fresh process)

        self.config = config
        self.env = gym.make(config.env_id, max_episode_steps=config.episode_steps,
                            **config.env_kwargs)
        base = self.env.unwrapped
        self.tap = SceneTap(base) if _stores_clean(config.env_id, config.env_kwargs) else None
        self.expert = None
        if config.policy == "expert":
            from masklam_bench.experts import load_expert

            self.expert = load_expert(parse_env_id(config.env_id)[0].name, config.expert_path)

    def _act(self, state: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The policy's action for one proprioceptive state."""
        space = self.env.action_space
        if self.expert is None:
            return rng.uniform(space.low, space.high).astype(np.float32)
        return self.expert.act(state, noise_std=self.config.action_noise, rng=rng)

    def run(self, index: int, episodes_dir: Path, report: Callable[[int], None]) -> Path:
        """Collect episode ``index`` and write it atomically to ``episodes_dir``."""
        cfg = self.config
        steps = cfg.episode_steps
        seed = episode_seed(cfg.seed, index)
        rng = _action_rng(cfg.seed, index)
        obs, info = self.env.reset(seed=seed)
        size = obs.shape[0]
        pixels = np.empty((steps + 1, *obs.shape), np.uint8)
        clean = np.empty_like(pixels) if self.tap is not None else None
        masks = np.empty((steps + 1, size, size), np.uint8)
        states = np.empty((steps + 1, info["state"].shape[0]), np.float32)
        actions = np.empty((steps, *self.env.action_space.shape), np.float32)
        rewards = np.empty((steps,), np.float64)
        terminations = np.zeros((steps,), bool)
        truncations = np.zeros((steps,), bool)
        infos = {k: [] for k in _INFO_KEYS}

        def record(t: int) -> None:
            pixels[t] = obs
            if clean is not None:
                clean[t] = self.tap.scene
            masks[t] = info["agent_mask"]
            states[t] = info["state"]
            for k in _INFO_KEYS:
                infos[k].append(info[k])

        record(0)
        t = 0
        while t < steps:
            actions[t] = self._act(info["state"], rng)
            obs, rewards[t], terminations[t], truncations[t], info = self.env.step(actions[t])
            t += 1
            record(t)
            if t % _PROGRESS_EVERY == 0:
                report(_PROGRESS_EVERY)
            if terminations[t - 1] or truncations[t - 1]:
                break
        report(t % _PROGRESS_EVERY)
        observations = {"pixels": pixels, "agent_mask": masks, "state": states}
        if clean is not None:
            observations["clean_pixels"] = clean
        observations = {k: v[: t + 1] for k, v in observations.items()}
        episode = {
            "observations": observations,
            "actions": actions[:t], "rewards": rewards[:t],
            "terminations": terminations[:t], "truncations": truncations[:t],
            "infos": {k: np.asarray(v) for k, v in infos.items()},
        }
        return _write_episode(episodes_dir, index, seed, episode)

    def close(self) -> None:
        """Free the environment."""
        self.env.close()


def _episode_path(episodes_dir: Path, index: int) -> Path:
    """The file of one finished episode."""
    return episodes_dir / f"episode_{index:06d}.hdf5"


def _write_episode(episodes_dir: Path, index: int, seed: int, episode: dict[str, Any]) -> Path:
    """Write an episode as group ``episode_{index}`` of its own file, renamed into place when
    complete so a file under its final name is never partial."""
    final = _episode_path(episodes_dir, index)
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        group = f.create_group(f"episode_{index}")
        group.attrs["id"] = index
        group.attrs["seed"] = seed
        group.attrs["total_steps"] = len(episode["rewards"])
        group.attrs["episode_return"] = float(np.sum(episode["rewards"]))
        obs_group = group.create_group("observations")
        for key, value in episode["observations"].items():
            compression = _COMPRESSION[key]
            if compression is None:
                obs_group.create_dataset(key, data=value)
                continue
            chunks = (min(_CHUNK_FRAMES, len(value)), *value.shape[1:])
            obs_group.create_dataset(key, data=value, chunks=chunks, compression=compression[0],
                                     compression_opts=compression[1])
        for key in ("actions", "rewards", "terminations", "truncations"):
            group.create_dataset(key, data=episode[key])
        info_group = group.create_group("infos")
        for key, value in episode["infos"].items():
            info_group.create_dataset(key, data=value)
    return final


def _exit_with_parent(parent_pid: int) -> None:
    """End this process once ``parent_pid`` is no longer its parent (it was killed outright).

    A main process that dies by SIGKILL (or SIGTERM outside the CLI) cannot stop its workers; left
    alone they would go on rendering, and a resumed run would collect the same episodes twice.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(config: CollectConfig, episodes_dir: str, tasks: Any, events: Any,
                 parent_pid: int) -> None:
    """A spawned worker: collect the episode indices taken from ``tasks`` until a None.

    It reports ``("steps", n)``, ``("done", index)`` or ``("error", traceback)`` on ``events``.
    One torch thread, so its actions are bit-identical to a single-process run. It exits by
    itself if the main process disappears.
    """
    # Ctrl-C reaches every process of the terminal; the main process stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    try:
        import torch

        torch.set_num_threads(1)
        rollouts = _Rollouts(config)
        while (index := tasks.get()) is not None:
            rollouts.run(index, Path(episodes_dir), lambda n: events.put(("steps", n)))
            events.put(("done", index))
        rollouts.close()
    except Exception:  # noqa: BLE001  (sent to the main process, which raises it)
        events.put(("error", traceback.format_exc()))


# ----------------------------------------------------------------------------------------------
# Collection
# ----------------------------------------------------------------------------------------------
def _finished_episodes(episodes_dir: Path, episodes: int) -> set[int]:
    """Indices of the episodes already written (readable) by an earlier, interrupted run."""
    done = set()
    for index in range(episodes):
        path = _episode_path(episodes_dir, index)
        if not path.exists():
            continue
        try:
            with h5py.File(path, "r") as f:
                f[f"episode_{index}"].attrs["total_steps"]
            done.add(index)
        except (OSError, KeyError):
            path.unlink()
    for stale in episodes_dir.glob("*.tmp"):
        stale.unlink()
    return done


def _run_episodes(config: CollectConfig, todo: list[int], episodes_dir: Path, workers: int,
                  progress: bool, done_steps: int) -> None:
    """Collect the episodes ``todo``, in this process (one worker) or in spawned processes."""
    from tqdm.auto import tqdm

    total = config.episodes * config.episode_steps
    bar = tqdm(total=total, initial=done_steps, unit="step", disable=not progress,
               desc=f"collect {config.env_id}", smoothing=0.05)
    def report(steps: int) -> None:
        interrupts.raise_pending()  # a swallowed Ctrl-C or SIGTERM, raised again here
        bar.update(steps)

    try:
        if workers == 1 or len(todo) == 1:
            _run_in_process(config, todo, episodes_dir, report)
        else:
            _run_in_workers(config, todo, episodes_dir, min(workers, len(todo)), report)
    finally:
        bar.close()


def _run_in_process(config: CollectConfig, todo: list[int], episodes_dir: Path,
                    report: Callable[[int], None]) -> None:
    """Collect with one thread here, as a worker process would."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rollouts = _Rollouts(config)
    try:
        for index in todo:
            rollouts.run(index, episodes_dir, report)
    finally:
        rollouts.close()
        torch.set_num_threads(threads)


def _run_in_workers(config: CollectConfig, todo: list[int], episodes_dir: Path, workers: int,
                    report: Callable[[int], None]) -> None:
    """Collect in ``workers`` spawned processes (forking after an OpenGL context exists hangs).

    Episodes are handed out one at a time, so a slow episode does not hold up the others. On an
    error, Ctrl-C or SIGTERM (through the CLI) the workers are terminated; if this process is
    killed outright they exit by themselves within a second. Finished episodes stay on disk.
    """
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for index in todo:
        tasks.put(index)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(config, str(episodes_dir), tasks, events, os.getpid()))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    remaining = set(todo)
    try:
        while remaining:
            try:
                kind, value = events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                codes = [proc.exitcode for proc in procs]
                if any(code not in (None, 0) for code in codes) or None not in codes:
                    raise RuntimeError(
                        f"A collection worker stopped unexpectedly (exit codes {codes}); rerun "
                        f"the same command to resume from the finished episodes.") from None
                continue
            if kind == "steps":
                report(value)
            elif kind == "done":
                remaining.discard(value)
            else:
                raise RuntimeError(f"A collection worker failed:\n{value}")
    except BaseException:
        for proc in procs:
            proc.terminate()
        raise
    finally:
        for proc in procs:
            proc.join()


@functools.cache
def _random_return(task: str, seed: int) -> float:
    """Random-policy reference return on states (cached per process)."""
    from masklam_bench.experts import random_policy_return

    return random_policy_return(task, episodes=RANDOM_RETURN_EPISODES, seed=seed)


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of expert metadata (tensors and arrays become lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine data and results (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclasses.dataclass(frozen=True)
class _Merged:
    """What the metadata records about the merged episodes."""

    returns: list[float]
    """Return of every episode, in order."""
    steps: int
    """Steps (actions) over all episodes."""
    image_size: int
    """Side of the square frames in pixels."""
    state_dim: int
    """Length of the proprioceptive state."""
    action_dim: int
    """Length of an action."""
    has_clean: bool
    """Whether the episodes store paired clean frames."""


def _merge_episodes(episodes: int, episodes_dir: Path, main: Path) -> _Merged:
    """Copy every episode file's group into ``main``, in index order."""
    returns, steps = [], 0
    with h5py.File(main, "w") as dst:
        for index in range(episodes):
            name = f"episode_{index}"
            with h5py.File(_episode_path(episodes_dir, index), "r") as src:
                src.copy(src[name], dst, name=name)
            returns.append(float(dst[name].attrs["episode_return"]))
            steps += int(dst[name].attrs["total_steps"])
        first = dst["episode_0"]
        obs = first["observations"]
        return _Merged(returns=returns, steps=steps, image_size=int(obs["pixels"].shape[1]),
                       state_dim=int(obs["state"].shape[1]),
                       action_dim=int(first["actions"].shape[1]),
                       has_clean="clean_pixels" in obs)


def _env_spec(config: CollectConfig) -> EnvSpec:
    """The registered spec with the collection's episode length and keyword arguments."""
    env_spec = gym.spec(config.env_id)
    return dataclasses.replace(env_spec, max_episode_steps=config.episode_steps,
                               kwargs={**env_spec.kwargs, **config.env_kwargs})


def _spaces(merged: _Merged) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The observation and action spaces of the stored episodes."""
    size = merged.image_size
    image = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    observation_spaces = {"pixels": image,
                          "agent_mask": gym.spaces.Box(0, 1, (size, size), np.uint8),
                          "state": gym.spaces.Box(-np.inf, np.inf, (merged.state_dim,), np.float32)}
    if merged.has_clean:
        observation_spaces["clean_pixels"] = image
    action_space = gym.spaces.Box(-1.0, 1.0, (merged.action_dim,), np.float32)
    return gym.spaces.Dict(observation_spaces), action_space


def _ref_max_score(config: CollectConfig, expert_meta: dict[str, Any] | None,
                   collected_return: float) -> tuple[float | None, str]:
    """Minari's ``ref_max_score`` and where it comes from: the collected episodes' mean return
    for full-length expert episodes, else the expert's own noise-free evaluation, if known."""
    if config.policy == "expert" and config.episode_steps == EPISODE_STEPS:
        return collected_return, (
            f"mean return of the {config.episodes} collected episodes (expert, action noise "
            f"{config.action_noise})")
    if expert_meta is not None and expert_meta.get("eval_return_mean") is not None:
        return float(expert_meta["eval_return_mean"]), (
            "noise-free evaluation return of the expert, from its weights' metadata")
    return None, "no expert"


def _policy_name(config: CollectConfig) -> str:
    """The policy in words, for Minari's ``algorithm_name``."""
    if config.policy == "expert":
        return f"SAC expert on states + N(0, {config.action_noise}^2) action noise"
    return "uniform random actions"


def _minari_fields(config: CollectConfig, merged: _Merged, main: Path, env_spec: EnvSpec,
                   versions: dict[str, str | None], ref_max: float | None) -> dict[str, Any]:
    """The metadata fields Minari defines."""
    import minari
    from minari.serialization import serialize_space

    task, _ = parse_env_id(config.env_id)
    observation_space, action_space = _spaces(merged)
    policy_name = _policy_name(config)
    return {
        "dataset_id": ds.dataset_id(config.env_id, config.policy),
        "minari_version": minari.__version__,
        "data_format": "hdf5",
        "jpeg_encoding": False,
        "total_episodes": config.episodes,
        "total_steps": merged.steps,
        "dataset_size": round(main.stat().st_size / 1e6, 1),
        "observation_space": serialize_space(observation_space),
        "action_space": serialize_space(action_space),
        "env_spec": env_spec.to_json(),
        "algorithm_name": policy_name,
        "description": (f"{config.episodes} episodes of {config.episode_steps} steps of "
                        f"{config.env_id}, {policy_name}, collected by masklam-bench."),
        "ref_min_score": _random_return(task.name, config.seed),
        "ref_max_score": ref_max,
        "num_episodes_average_score": RANDOM_RETURN_EPISODES,
        "requirements": [f"{n}=={versions[n]}" for n in REQUIREMENTS if versions.get(n)],
    }


def _suite_fields(config: CollectConfig, merged: _Merged, env_spec: EnvSpec,
                  versions: dict[str, str | None], ref_max_source: str,
                  expert_meta: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata fields the suite adds to Minari's: where the data came from."""
    task, _ = parse_env_id(config.env_id)
    return {
        "format_version": ds.FORMAT_VERSION,
        "env_id": config.env_id,
        "env_version": env_spec.version,
        "task": task.name,
        "image_size": merged.image_size,
        "action_dim": merged.action_dim,
        "state_dim": merged.state_dim,
        "has_clean_observations": merged.has_clean,
        "ref_min_score_source": (f"mean 1000-step return of uniform random actions on states "
                                 f"over {RANDOM_RETURN_EPISODES} episodes (seed {config.seed})"),
        "ref_max_score_source": ref_max_source,
        "collected_return_mean": float(np.mean(merged.returns)),
        "collected_return_std": float(np.std(merged.returns)),
        "expert": None if expert_meta is None else {
            "task": task.name, "weights": config.expert_path or "shipped",
            "weights_sha256": config.expert_sha256, "action_noise": config.action_noise,
            "meta": expert_meta},
        "package_versions": versions,
        "collection": dataclasses.asdict(config),
        **{k: getattr(config, k) for k in ("policy", "action_noise", "seed", "preset",
                                           "episode_steps", "test_episodes")},
    }


def _metadata(config: CollectConfig, merged: _Merged, main: Path,
              expert_meta: dict[str, Any] | None) -> dict[str, Any]:
    """The dataset's metadata: Minari's fields, the suite's, then the main file's size and
    checksum, the time and the completion marker."""
    env_spec = _env_spec(config)
    versions = package_versions()
    ref_max, ref_max_source = _ref_max_score(config, expert_meta,
                                             float(np.mean(merged.returns)))
    return {
        **_minari_fields(config, merged, main, env_spec, versions, ref_max),
        **_suite_fields(config, merged, env_spec, versions, ref_max_source, expert_meta),
        "files": {ds.MAIN_FILE: {"size": main.stat().st_size, "sha256": ds.file_sha256(main)}},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        ds.COMPLETE_KEY: True,
    }


def _merge(config: CollectConfig, work: Path, expert_meta: dict[str, Any] | None) -> None:
    """Merge the episode files into Minari's ``main_data.hdf5`` and write the metadata last."""
    data_dir = work / ds.DATA_DIR
    if data_dir.exists():
        shutil.rmtree(data_dir)  # an earlier merge was interrupted
    data_dir.mkdir()
    main = data_dir / ds.MAIN_FILE
    merged = _merge_episodes(config.episodes, work / _EPISODES_DIR, main)
    metadata = _metadata(config, merged, main, expert_meta)
    metadata[ds.METADATA_DIGEST_KEY] = ds.metadata_digest(metadata)
    atomic_write_text(data_dir / ds.METADATA_FILE, json.dumps(metadata, indent=1))


def _check_args(env_name: str, episodes: int, test_episodes: int, episode_steps: int,
                action_noise: float, seed: int, workers: int, policy: str) -> None:
    """Raise a one-sentence error for an argument out of range."""
    parse_env_id(env_name)
    if policy not in POLICIES:
        raise UserError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}.")
    if episodes < 1:
        raise UserError(f"episodes must be at least 1; got {episodes}.")
    if not 0 <= test_episodes < episodes:
        raise UserError(f"test_episodes must be between 0 and episodes - 1 = {episodes - 1}; "
                         f"got {test_episodes}.")
    if not 1 <= episode_steps <= EPISODE_STEPS:
        raise UserError(f"episode_steps must be between 1 and {EPISODE_STEPS}; "
                         f"got {episode_steps}.")
    if not np.isfinite(action_noise) or action_noise < 0:
        raise UserError(f"action_noise must be a finite number >= 0; got {action_noise}.")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed}.")
    if workers < 1:
        raise UserError(f"workers must be at least 1; got {workers}.")


def collect(
    env_name: str,
    out_dir: str | os.PathLike,
    episodes: int,
    episode_steps: int = EPISODE_STEPS,
    action_noise: float = 0.3,
    seed: int = 0,
    workers: int = 2,
    policy: str = "expert",
    progress: bool = True,
    *,
    test_episodes: int | None = None,
    preset: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    expert_path: str | os.PathLike | None = None,
) -> Path:
    """Collect ``episodes`` episodes of ``env_name`` into a Minari dataset under ``out_dir``.

    The expert acts on ``info["state"]``; pixels, the exact agent mask and (for a distracting id
    at level ``low``) the paired clean frame are stored for every step. Calling it again with the
    same arguments returns the finished dataset, or resumes an interrupted collection.

    Args:
        env_name: A registered id, e.g. ``DistractingCheetah-v0``.
        out_dir: Minari datasets root; the dataset goes to ``out_dir/<dataset id>``.
        episodes: Number of episodes (train + test).
        episode_steps: Actions per episode (1000 = the full DMC episode).
        action_noise: Std of the Gaussian noise added to the expert's actions.
        seed: Base seed; episode i depends only on (seed, i).
        workers: Processes collecting in parallel (each renders on one core).
        policy: ``expert`` (the shipped expert of the task) or ``random``.
        progress: Show a progress bar over steps.
        test_episodes: Held-out episodes at the end (default: 10% of ``episodes``, at least one
            when there are two or more; pass the preset's ``test_episodes`` to match it).
        preset: Name of the preset the sizes came from (recorded only).
        env_kwargs: Extra ``gym.make`` keyword arguments (``size``, ``level``, ``floor``, ...).
        expert_path: Expert weights file to use instead of the task's shipped expert.

    Returns:
        The dataset folder (``out_dir/masklam/<env id>/<policy>-v0``).
    """
    _refuse_in_a_starting_worker()
    env_kwargs = _with_davis_dir(dict(env_kwargs or {}))
    if test_episodes is None:
        test_episodes = max(1, round(episodes * ds.DEFAULT_TEST_FRACTION)) if episodes > 1 else 0
    _check_args(env_name, episodes, test_episodes, episode_steps, action_noise, seed, workers,
                policy)
    env_name = env_name.split(":", 1)[-1]
    task, _ = parse_env_id(env_name)
    # Bad keyword arguments (e.g. size=8) fail here with the env's own message, not in a worker.
    # Building the env is cheap: nothing renders until the first step.
    gym.make(env_name, **env_kwargs).close()
    expert_path, expert_sha, expert_meta = _check_expert(task.name, policy, expert_path)
    config = CollectConfig(
        env_id=env_name, env_kwargs=env_kwargs, episodes=episodes, test_episodes=test_episodes,
        episode_steps=episode_steps, action_noise=float(action_noise), seed=seed, policy=policy,
        expert_path=expert_path, expert_sha256=expert_sha, preset=preset)
    final = Path(out_dir) / ds.dataset_id(env_name, policy)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{final.name}.lock"):
        if final.exists():
            return _existing(final, config)
        _collect_into(final, config, workers, progress, expert_meta)
    return final


def _with_davis_dir(env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env_kwargs`` naming the DAVIS folder the envs will read, absolute, when there is one:
    given, or from ``$MASKLAM_DAVIS_DIR``, which the env reads by itself. Recorded so, a dataset
    of other videos is neither reused nor resumed, and Minari rebuilds the env it was made in
    (the folder is compared by path, not by its contents)."""
    from masklam_bench.envs.backgrounds import davis_dir_from

    davis = davis_dir_from(env_kwargs.get("davis_dir"))
    if davis:
        env_kwargs["davis_dir"] = str(Path(davis).resolve())
    return env_kwargs


def _check_expert(task: str, policy: str, expert_path: str | os.PathLike | None
                  ) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """The expert's weights file (absolute; None for the shipped one), its SHA-256 and its
    metadata, or three Nones for the random policy.

    Loading the expert here fails early, with a clear message, when no expert is shipped; one
    below the suite's target gets a warning on stderr.
    """
    if policy != "expert":
        if expert_path is not None:
            raise UserError("expert_path only applies to policy='expert'.")
        return None, None, None
    from masklam_bench.experts import load_expert, shortfall_note, weights_path

    if expert_path is not None:
        expert_path = str(Path(expert_path).resolve())
    expert = load_expert(task, expert_path)
    note = shortfall_note(expert)
    if note is not None:
        print(f"Warning: {note}", file=sys.stderr, flush=True)
    expert_meta = _jsonable(expert.meta)
    expert_sha = ds.file_sha256(expert_path or weights_path(task))
    return expert_path, expert_sha, expert_meta


def _collect_into(final: Path, config: CollectConfig, workers: int, progress: bool,
                  expert_meta: dict[str, Any] | None) -> None:
    """Collect the episodes an interrupted run left to do in the work folder, merge them, and
    rename the folder to ``final`` (the caller holds the lock)."""
    work = ds.partial_dir(final)
    episodes_dir = work / _EPISODES_DIR
    _claim_work_dir(work, config)
    episodes_dir.mkdir(exist_ok=True)
    done = _finished_episodes(episodes_dir, config.episodes)
    todo = [i for i in range(config.episodes) if i not in done]
    if todo:
        _run_episodes(config, todo, episodes_dir, workers, progress,
                      done_steps=len(done) * config.episode_steps)
    _merge(config, work, expert_meta)
    os.replace(work, final)  # the dataset appears under its final name only when complete
    shutil.rmtree(final / _EPISODES_DIR)
    (final / _CONFIG_FILE).unlink()


def _refuse_in_a_starting_worker() -> None:
    """Stop a spawned worker that is re-running the script that started it.

    A worker process imports the parent's main script; a script that calls ``collect`` (or
    ``runner.run``) outside ``if __name__ == "__main__":`` would collect again in every worker,
    and wait forever for the parent's lock on the dataset."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "collect() was called while a worker process was importing the script that started "
            "it. Put the script's top-level code under `if __name__ == \"__main__\":` so that "
            "the collection's worker processes do not run it again.")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``, so two collections never write one dataset.

    A second process (e.g. two ``masklam-bench run`` jobs of one task started together) waits,
    with one message on stderr, until the first has finished collecting or checking the dataset.
    The lock file is removed on release, so a waiter re-checks after locking that the path still
    names the file it locked, and otherwise locks the new file.
    """
    told = False
    while True:
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    name = lock_path.name[1:-len(".lock")]
                    print(f"Another process is collecting or checking {lock_path.parent}/{name};"
                          f" waiting for it (Ctrl-C to stop).", file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the holder releases it
            try:
                same = os.stat(lock_path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and removed it between our open and our lock
                continue
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)
            return


def _config_json(config: CollectConfig) -> dict[str, Any]:
    """The config as it round-trips through JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _claim_work_dir(work: Path, config: CollectConfig) -> None:
    """Create the work folder, or check that an interrupted one is for the same collection."""
    config_file = work / _CONFIG_FILE
    wanted = _config_json(config)
    if config_file.exists():
        try:
            before = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:  # older code wrote it in place: a kill could cut it
            raise UserError(f"The interrupted collection at {work} has an unreadable "
                            f"{_CONFIG_FILE} ({err}); delete that folder to collect again.") from None
        differ = sorted(k for k in wanted if k not in _RESUMABLE_FIELDS
                        and before.get(k) != wanted[k])
        if differ:
            raise UserError(
                f"An interrupted collection at {work} used other settings ({', '.join(differ)}); "
                f"rerun it with the same settings to resume, or delete that folder.")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_file, wanted)  # a kill mid-write must not block the resume


def _existing(final: Path, config: CollectConfig) -> Path:
    """Return a finished dataset made with the same settings, or explain why it is in the way."""
    ds.validate_dataset(final, checksum=False)
    recorded = ds.dataset_metadata(final)["collection"]
    wanted = _config_json(config)
    differ = sorted(k for k in wanted if k not in _REUSABLE_FIELDS
                    and recorded.get(k) != wanted[k])
    if differ:
        raise UserError(
            f"A dataset with other settings ({', '.join(differ)}) already exists at {final}; "
            f"delete it to collect it again, or choose another output folder (--out for "
            f"collect, --data-root for run).")
    for leftover in (final / _EPISODES_DIR, final / _CONFIG_FILE):  # cleanup was interrupted
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    return final


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _cmd_collect(args: argparse.Namespace) -> None:
    """Collect a dataset with sizes from a preset, overridden by the flags given."""
    from masklam_bench.presets import default_preset_name, get_preset

    if args.expert is not None and args.policy != "expert":
        raise UserError(f"--expert gives the weights of --policy expert; drop it, or --policy "
                        f"{args.policy}.")
    preset_name = args.preset or default_preset_name()
    data = get_preset(preset_name).data
    episodes = args.episodes if args.episodes is not None else (
        data.train_episodes + data.test_episodes)
    test_episodes = args.test_episodes
    if test_episodes is None:
        test_episodes = data.test_episodes if args.episodes is None else None
    env_kwargs = {k: v for k, v in (("size", args.size), ("level", args.level),
                                    ("floor", args.floor)) if v is not None}
    path = collect(
        args.env, args.out, episodes,
        episode_steps=args.episode_steps if args.episode_steps is not None else data.episode_steps,
        action_noise=args.action_noise if args.action_noise is not None else data.action_noise,
        seed=args.seed, workers=args.workers, policy=args.policy, progress=True,
        test_episodes=test_episodes, preset=preset_name, env_kwargs=env_kwargs,
        expert_path=args.expert)
    root, ident = ds.minari_location(path)
    print(f"wrote {path}\nopen it with: MINARI_DATASETS_PATH={root} and "
          f"minari.load_dataset({ident!r})")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``collect`` sub-command to the ``masklam-bench`` parser."""
    p = subparsers.add_parser("collect", help="collect expert episodes of an id as a Minari dataset")
    p.add_argument("--env", required=True, help="a registered id, e.g. DistractingCheetah-v0")
    p.add_argument("--out", required=True,
                   help="Minari datasets root; the dataset goes to OUT/masklam/<env>/<policy>-v0")
    p.add_argument("--preset", default=None, choices=["smoke", "cpu", "gpu"],
                   help="sizes to use (default: gpu with CUDA, else cpu)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes to collect (default: the preset's train + test)")
    p.add_argument("--test-episodes", type=int, default=None,
                   help="held-out episodes at the end (default: the preset's, or 10%% of "
                        "--episodes, at least 1, when --episodes is given)")
    p.add_argument("--episode-steps", type=int, default=None,
                   help="steps per episode (default: the preset's)")
    p.add_argument("--action-noise", type=float, default=None, metavar="SIGMA",
                   help="std of Gaussian noise on the expert's actions (default: the preset's)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="base seed (default: 0)")
    p.add_argument("--workers", type=int_at_least(1), default=2,
                   help="parallel processes (default: 2)")
    p.add_argument("--policy", default="expert", choices=POLICIES,
                   help="the task's shipped expert or uniform random actions (default: expert)")
    p.add_argument("--expert", default=None, metavar="PATH",
                   help="expert weights file (default: the task's shipped expert)")
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default: 64)")
    p.add_argument("--level", default=None, choices=["low", "hard"],
                   help="distractor level (default: low)")
    p.add_argument("--floor", default=None, choices=["keep", "replace"],
                   help="floor mode (default: keep)")
    p.set_defaults(func=_cmd_collect, output_folders=("out",))


__all__ = ["POLICIES", "CollectConfig", "add_cli", "collect", "episode_seed"]
