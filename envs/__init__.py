"""The distracting DeepMind Control environments of masklam-bench and their Gymnasium registration."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede importing mujoco

import gymnasium as gym

from masklam_bench.envs.tasks import EPISODE_STEPS, TASKS, Task, get_task
from masklam_bench.errors import UserError

ENTRY_POINT = "masklam_bench.envs.distracting:DistractingControlEnv"
"""String entry point, so registering does not import dm_control."""


class _DropSetTotalMassWarning(logging.Filter):
    """Drops one absl warning: MuJoCo 3.17 deprecates the ``settotalmass`` compiler attribute of
    dm_control's cheetah model, and dm_control logs that on every load (every env, every worker).
    The model still compiles to the intended mass; every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'settotalmass' is deprecated" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropSetTotalMassWarning())

# Id prefix and suffix for each distractor split.
_VARIANTS = {"id": ("Distracting", ""), "ood": ("Distracting", "OOD"), "none": ("Clean", "")}

ENV_VERSIONS = {"id": 0, "ood": 1, "none": 0}
"""The current (and only registered) version of each split's ids. OOD is v1: v0's pool had three
videos that repeated an ID (family, palette); asking for ``...OOD-v0`` makes Gymnasium raise its
``DeprecatedEnv`` error, which names the v1 id."""


def env_id(task: str, distractors: str = "id", version: int | None = None) -> str:
    """The id of a task and split, by default its current version: ``DistractingCheetahOOD-v1``."""
    prefix, suffix = _VARIANTS[distractors]
    if version is None:
        version = ENV_VERSIONS[distractors]
    return f"{prefix}{get_task(task).short.capitalize()}{suffix}-v{version}"


def registered_ids() -> list[str]:
    """All twelve ids the suite registers, in task order: ID, OOD, clean."""
    return [env_id(t, split) for t in TASKS for split in _VARIANTS]


def register_envs() -> None:
    """Register every id with Gymnasium; calling it again changes nothing."""
    for task in TASKS.values():
        for split in _VARIANTS:
            new_id = env_id(task.name, split)
            if new_id in gym.registry:
                continue
            gym.register(
                id=new_id,
                entry_point=ENTRY_POINT,
                max_episode_steps=EPISODE_STEPS,
                kwargs={"task": task.name, "distractors": split},
            )


def parse_env_id(name: str) -> tuple[Task, str]:
    """Map a registered id (with or without the ``masklam_bench:`` namespace) to (task, split)."""
    bare = name.split(":", 1)[-1]
    unversioned = bare.rsplit("-v", 1)[0]
    for task in TASKS.values():
        for split in _VARIANTS:
            current = env_id(task.name, split)
            if current == bare:
                return task, split
            if current.rsplit("-v", 1)[0] == unversioned:
                raise UserError(f"{name!r} is not a current version; use {current!r}.")
    raise UserError(
        f"Unknown environment {name!r}; masklam-bench registers: {', '.join(registered_ids())}."
    )


__all__ = ["ENV_VERSIONS", "EPISODE_STEPS", "TASKS", "env_id", "get_task", "parse_env_id",
           "register_envs", "registered_ids"]
