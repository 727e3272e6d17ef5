"""The four DeepMind Control tasks of the suite and how their states are flattened."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from masklam_bench.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
    """One DeepMind Control task as the suite uses it."""

    name: str
    """Suite-wide name, e.g. ``"cheetah-run"``."""
    domain: str
    """dm_control domain, e.g. ``"cheetah"``."""
    task: str
    """dm_control task within the domain, e.g. ``"run"``."""
    short: str
    """Short name used in env ids and on the command line, e.g. ``"cheetah"``."""
    ground_alpha: float
    """Opacity of the floor over the background video (DCS: 1.0, humanoid 0.3)."""


# DCS keeps the floor opaque except for humanoid, whose floor lets 70% of the video through.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cheetah-run", "cheetah", "run", "cheetah", 1.0),
        Task("walker-run", "walker", "run", "walker", 1.0),
        Task("hopper-hop", "hopper", "hop", "hopper", 1.0),
        Task("humanoid-walk", "humanoid", "walk", "humanoid", 0.3),
    )
}

EPISODE_STEPS = 1000
"""Every task runs 1000 control steps (dm_control's own time limits), ending in ``truncated``."""


def get_task(name: str) -> Task:
    """Look up a task by full name (``cheetah-run``) or short name (``cheetah``)."""
    for task in TASKS.values():
        if name in (task.name, task.short):
            return task
    known = ", ".join(f"{t.short} ({t.name})" for t in TASKS.values())
    raise UserError(f"Unknown task {name!r}; choose one of: {known}.")


def flatten_state(observation: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate a dm_control observation dict, in its own key order, into one float32 vector."""
    return np.concatenate(
        [np.asarray(v, dtype=np.float32).reshape(-1) for v in observation.values()]
    )
