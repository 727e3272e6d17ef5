"""``masklam-bench show``: a picture of what the agent sees, with masks, ID vs OOD vs clean."""

from __future__ import annotations

import io
from pathlib import Path

import gymnasium as gym
import numpy as np

from masklam_bench.envs import EPISODE_STEPS, env_id, parse_env_id
from masklam_bench.errors import UserError
from masklam_bench.fileio import atomic_write_bytes

ROWS = ("in-distribution", "agent mask", "OOD", "clean")
"""Rows of the strip, top to bottom."""


def rollout_frames(env_name: str, frames: int, every: int, seed: int,
                   **env_kwargs) -> dict[str, np.ndarray]:
    """Roll out the same seeded random actions in the ID, OOD and clean variants of a task.

    One seed fixes the physics of all three, so the strips show one trajectory under three
    backgrounds. Returns arrays of shape ``(frames, H, W, 3)`` per row.
    """
    task, _ = parse_env_id(env_name)
    last = (frames - 1) * every  # the step of the last column
    if last > EPISODE_STEPS:
        raise UserError(f"--frames {frames} every {every} steps reaches step {last}, past the "
                        f"episode's {EPISODE_STEPS}; use fewer frames or a smaller --every.")
    steps = last + 1
    actions_rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ROWS}
    actions = None
    for split, row in (("id", "in-distribution"), ("ood", "OOD"), ("none", "clean")):
        env = gym.make(env_id(task.name, split), **env_kwargs)  # each split's current version
        if actions is None:
            actions = actions_rng.uniform(env.action_space.low, env.action_space.high,
                                          size=(steps, *env.action_space.shape))
        obs, info = env.reset(seed=seed)
        for t in range(steps):
            if t % every == 0:
                rows[row].append(obs)
                if split == "id":
                    rows["agent mask"].append(
                        np.repeat(info["agent_mask"][..., None], 3, axis=-1).astype(np.uint8) * 255)
            if t < last:  # no step after the last column (past the episode's end it would reset)
                obs, _, _, _, info = env.step(actions[t].astype(np.float32))
        env.close()
    return {name: np.stack(images) for name, images in rows.items()}


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
"""Files :func:`save_strip` writes, by suffix (matplotlib's format of the same name)."""


def image_format(out: str | Path) -> str:
    """matplotlib's format for the picture file ``out``, or a UserError if it names none."""
    suffix = Path(out).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"--out {out}: expected a picture file ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}, e.g. strip.png.")
    return suffix.lstrip(".")


def save_strip(rows: dict[str, np.ndarray], out: str | Path, title: str) -> Path:
    """Write the rows as a labelled PNG grid (one row per variant, one column per time); another
    suffix of :data:`IMAGE_SUFFIXES` picks that format."""
    kind = image_format(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(next(iter(rows.values())))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 1.2, 1.3 * n_rows + 0.4),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=kind, dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
