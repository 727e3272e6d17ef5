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


STOCK_SHADOW_SIZE = 2048
"""dm_control's own shadow map side (``<quality shadowsize>`` of the suite's models)."""


def env_frames(name: str, steps: int, seed: int = 0,
               **kwargs) -> tuple[float, np.ndarray]:
    """Frames/s of a registered id (``env.step`` with seeded random actions, observation and mask
    included) and the frames it rendered."""
    env = gym.make(name, **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    env.step(env.action_space.sample())  # warm up
    frames = []
    start = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(obs)
        if terminated or truncated:
            env.reset()
    fps = steps / (time.perf_counter() - start)
    env.close()
    return fps, np.stack(frames)


def env_fps(name: str, steps: int, seed: int = 0, **kwargs) -> float:
    """Frames/s of a registered id: ``env.step`` with random actions, observation and mask included."""
    return env_frames(name, steps, seed, **kwargs)[0]


def run_benchmark(names: list[str], steps: int) -> list[dict[str, float | str]]:
    """Measure each id (default look, with dm_control's 2048-texel shadow map, and with the floor
    replaced) and stock dm_control per task, and the share of pixels the smaller map changes."""
    rows = []
    stock_cache: dict[str, float] = {}
    for name in names:
        task, split = parse_env_id(name)
        if task.name not in stock_cache:
            stock_cache[task.name] = stock_fps(task.name, steps)
        fps, frames = env_frames(name, steps)
        fps_stock_shadows, stock_frames = env_frames(name, steps, shadow_size=STOCK_SHADOW_SIZE)
        row: dict[str, float | str] = {
            "id": name,
            "stock_dm_control_fps": stock_cache[task.name],
            "fps_stock_shadow_map": fps_stock_shadows,
            "fps": fps,
            "pixels_changed_by_shadow_map": float((frames != stock_frames).any(axis=-1).mean()),
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
        ("| id | stock dm_control | ours, 2048 shadow map | ours (default) | speed-up | "
         "pixels changed | floor replaced | speed-up |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        stock = float(row["stock_dm_control_fps"])
        fps = float(row["fps"])
        replaced = row.get("fps_floor_replaced")
        rep = (f"{float(replaced):.0f} | {float(replaced) / stock:.1f}x" if replaced is not None
               else "n/a | n/a")
        lines.append(f"| {row['id']} | {stock:.0f} | {float(row['fps_stock_shadow_map']):.0f} | "
                     f"{fps:.0f} | {fps / stock:.1f}x | "
                     f"{100 * float(row['pixels_changed_by_shadow_map']):.2f}% | {rep} |")
    return "\n".join(lines)
