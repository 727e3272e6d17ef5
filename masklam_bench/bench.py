"""``masklam-bench bench-env``: frames/s of every id next to stock dm_control rendering."""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym
import numpy as np

from masklam_bench.envs import parse_env_id

CHUNK_STEPS = 25
"""Steps one contender runs before the next takes its turn. The columns of a task are measured in
turns like this, so that a change of load on a shared machine falls on all of them alike."""

STOCK_SHADOW_SIZE = 2048
"""dm_control's own shadow map side (``<quality shadowsize>`` of the suite's models)."""


class _Stock:
    """Stock dm_control: ``env.step`` with seeded random actions, then
    ``physics.render(size, size, camera_id=0)``."""

    def __init__(self, task_name: str, size: int = 64, seed: int = 0) -> None:
        from dm_control import suite

        from masklam_bench.envs import get_task

        task = get_task(task_name)
        self.env = suite.load(task.domain, task.task, task_kwargs={"random": seed})
        self.env.reset()
        self.spec = self.env.action_spec()
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.env.physics.render(size, size, camera_id=0)  # warm up the context

    def run(self, steps: int) -> None:
        """Take ``steps`` steps, rendering each."""
        for _ in range(steps):
            self.env.step(self.rng.uniform(self.spec.minimum, self.spec.maximum))
            self.env.physics.render(self.size, self.size, camera_id=0)

    def close(self) -> None:
        """Nothing to free beyond what garbage collection does."""


class _Ours:
    """A registered id: ``env.step`` with seeded random actions (observation and mask included)."""

    def __init__(self, name: str, seed: int = 0, keep_frames: bool = False, **kwargs) -> None:
        self.env = gym.make(name, **kwargs)
        self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        self.env.step(self.env.action_space.sample())  # warm up
        self.frames: list[np.ndarray] | None = [] if keep_frames else None

    def run(self, steps: int) -> None:
        """Take ``steps`` steps, keeping the observations if asked to."""
        for _ in range(steps):
            obs, _, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
            if self.frames is not None:
                self.frames.append(obs)
            if terminated or truncated:
                self.env.reset()

    def close(self) -> None:
        """Free the env."""
        self.env.close()


def _seconds_in_turns(contenders: dict[str, _Stock | _Ours], steps: int) -> dict[str, np.ndarray]:
    """Seconds each contender took in each turn, over ``steps`` steps run in turns of
    ``CHUNK_STEPS`` (the last turn may be shorter)."""
    seconds: dict[str, list[float]] = {key: [] for key in contenders}
    done = 0
    while done < steps:
        chunk = min(CHUNK_STEPS, steps - done)
        for key, contender in contenders.items():
            start = time.perf_counter()
            contender.run(chunk)
            seconds[key].append(time.perf_counter() - start)
        done += chunk
    return {key: np.asarray(s) for key, s in seconds.items()}


def _frames_per_s(seconds: dict[str, np.ndarray], steps: int) -> dict[str, float]:
    """Frames/s of each contender from its seconds per turn over ``steps`` steps in all."""
    return {key: steps / s.sum() for key, s in seconds.items()}


def _fps_in_turns(contenders: dict[str, _Stock | _Ours], steps: int) -> dict[str, float]:
    """Frames/s of each contender over ``steps`` steps, run in turns of ``CHUNK_STEPS``."""
    return _frames_per_s(_seconds_in_turns(contenders, steps), steps)


MIN_TURNS = 5
"""Fewer turns give no interval (a bootstrap over so few has next to nothing to resample)."""


def speedup_interval(stock_s: np.ndarray, ours_s: np.ndarray, level: float = 0.95,
                     resamples: int = 4000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the speed-up ``sum(stock_s) / sum(ours_s)``, resampling
    turns with their stock and our times kept together (they ran in one round of turns, under
    about the same load; other contenders may run between them). It says how much the load
    moved the figure within one run, not how much the machine moves between runs, and with a
    dozen turns it is rough (percentile intervals from few samples run narrow). ``None`` with
    fewer than ``MIN_TURNS`` turns."""
    stock, ours = np.asarray(stock_s, np.float64), np.asarray(ours_s, np.float64)
    if len(stock) < MIN_TURNS:
        return None
    picks = np.random.default_rng(seed).integers(0, len(stock), (resamples, len(stock)))
    ratios = stock[picks].sum(axis=1) / ours[picks].sum(axis=1)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def stock_fps(task_name: str, steps: int, size: int = 64, seed: int = 0) -> float:
    """Frames/s of plain dm_control: ``env.step`` then ``physics.render(size, size, camera_id=0)``."""
    return _fps_in_turns({"stock": _Stock(task_name, size, seed)}, steps)["stock"]


def env_fps(name: str, steps: int, seed: int = 0, **kwargs) -> float:
    """Frames/s of a registered id: ``env.step`` with random actions, observation and mask included."""
    ours = _Ours(name, seed, **kwargs)
    fps = _fps_in_turns({"ours": ours}, steps)["ours"]
    ours.close()
    return fps


def run_benchmark(names: list[str], steps: int) -> list[dict[str, Any]]:
    """Measure each id (default look, with dm_control's 2048-texel shadow map, and with the floor
    replaced) and stock dm_control per task, and the share of pixels the smaller map changes.

    All the columns of one task (stock and its ids' variants) run in turns of ``CHUNK_STEPS``, so
    each speed-up compares measurements made under the same load."""
    tasks: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        task, split = parse_env_id(name)
        tasks.setdefault(task.name, []).append((name, split))
    rows_by_name: dict[str, dict[str, float | str]] = {}
    for task_name, ids in tasks.items():
        contenders: dict[str, _Stock | _Ours] = {"stock": _Stock(task_name)}
        for name, split in ids:
            contenders[f"{name}/default"] = _Ours(name, keep_frames=True)
            contenders[f"{name}/2048"] = _Ours(name, keep_frames=True,
                                               shadow_size=STOCK_SHADOW_SIZE)
            if split != "none":
                contenders[f"{name}/replace"] = _Ours(name, floor="replace")
        seconds = _seconds_in_turns(contenders, steps)
        fps = _frames_per_s(seconds, steps)
        for name, split in ids:
            frames = np.stack(contenders[f"{name}/default"].frames)
            stock_frames = np.stack(contenders[f"{name}/2048"].frames)
            row: dict[str, Any] = {
                "id": name,
                "stock_dm_control_fps": fps["stock"],
                "fps_stock_shadow_map": fps[f"{name}/2048"],
                "fps": fps[f"{name}/default"],
                "pixels_changed_by_shadow_map": float(
                    (frames != stock_frames).any(axis=-1).mean()),
                "speedup": seconds["stock"].sum() / seconds[f"{name}/default"].sum(),
                "speedup_interval": speedup_interval(seconds["stock"],
                                                     seconds[f"{name}/default"]),
                "turns": len(seconds["stock"]),
            }
            if split != "none":
                row["fps_floor_replaced"] = fps[f"{name}/replace"]
            rows_by_name[name] = row
        for contender in contenders.values():
            contender.close()
    return [rows_by_name[name] for name in names]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the benchmark rows."""
    lines = [
        (f"Frames/s on one process (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}, "
         f"{os.cpu_count()} CPUs visible); each step = physics + render + mask (+ background); "
         f"the columns of a task ran in turns of {CHUNK_STEPS} steps; the default look's "
         f"speed-up with a 95% bootstrap interval over its {rows[0]['turns'] if rows else 0} "
         f"turns (none under {MIN_TURNS})."),
        "",
        ("| id | stock dm_control | ours, 2048 shadow map | ours (default) | speed-up (95%) | "
         "pixels changed | floor replaced | speed-up |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        stock = float(row["stock_dm_control_fps"])
        fps = float(row["fps"])
        replaced = row.get("fps_floor_replaced")
        rep = (f"{float(replaced):.0f} | {float(replaced) / stock:.1f}x" if replaced is not None
               else "n/a | n/a")
        interval = row["speedup_interval"]
        spread = "" if interval is None else f" ({interval[0]:.2f}-{interval[1]:.2f})"
        lines.append(f"| {row['id']} | {stock:.0f} | {float(row['fps_stock_shadow_map']):.0f} | "
                     f"{fps:.0f} | {row['speedup']:.2f}x{spread} | "
                     f"{100 * float(row['pixels_changed_by_shadow_map']):.2f}% | {rep} |")
    return "\n".join(lines)
