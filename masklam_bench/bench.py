"""``masklam-bench bench-env``: frames/s of every id next to stock dm_control rendering."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np

from masklam_bench.envs import parse_env_id


def stock_fps(task_name: str, steps: int, size: int = 64, seed: int = 0) -> float:
    """Frames/s of plain dm_control: ``env.step`` then ``physics.render(size, size, camera_id=0)``."""
    from dm_control import suite

    from masklam_bench.envs import get_task

    task = get_task(task_name)
    env = suite.load(task.domain, task.task, task_kwargs={"random": seed})
    env.reset()
    spec = env.action_spec()
    rng = np.random.default_rng(seed)
    env.physics.render(size, size, camera_id=0)  # warm up the context
    start = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(spec.minimum, spec.maximum))
        env.physics.render(size, size, camera_id=0)
    return steps / (time.perf_counter() - start)


def env_fps(name: str, steps: int, seed: int = 0, **kwargs) -> float:
    """Frames/s of a registered id: ``env.step`` with random actions, observation and mask included."""
    env = gym.make(name, **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    env.step(env.action_space.sample())  # warm up
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    fps = steps / (time.perf_counter() - start)
    env.close()
    return fps


def run_benchmark(names: list[str], steps: int) -> list[dict[str, float | str]]:
    """Measure each id (default look and with the floor replaced) and stock dm_control per task."""
    rows = []
    stock_cache: dict[str, float] = {}
    for name in names:
        task, split = parse_env_id(name)
        if task.name not in stock_cache:
            stock_cache[task.name] = stock_fps(task.name, steps)
        row: dict[str, float | str] = {
            "id": name,
            "stock_dm_control_fps": stock_cache[task.name],
            "fps": env_fps(name, steps),
        }
        if split != "none":
            row["fps_floor_replaced"] = env_fps(name, steps, floor="replace")
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    """A Markdown table of the benchmark rows."""
    lines = [
        (f"Frames/s on one process (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}, "
         f"{os.cpu_count()} CPUs visible); each step = physics + render + mask (+ background)."),
        "",
        "| id | stock dm_control | default (floor kept) | speed-up | floor replaced | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        stock = float(row["stock_dm_control_fps"])
        fps = float(row["fps"])
        replaced = row.get("fps_floor_replaced")
        rep = (f"{float(replaced):.0f} | {float(replaced) / stock:.1f}x" if replaced is not None
               else "n/a | n/a")
        lines.append(f"| {row['id']} | {stock:.0f} | {fps:.0f} | {fps / stock:.1f}x | {rep} |")
    return "\n".join(lines)
