"""State-based expert policies for the suite's DeepMind Control tasks.

The shipped experts are SAC actors (see :mod:`masklam_bench.experts.sac`) stored as small
``weights/{task}.pt`` files: plain dicts of tensors plus metadata, loadable with
``torch.load(..., weights_only=True)``.

>>> expert = load_expert("cheetah-run")                    # doctest: +SKIP
>>> action = expert.act(state)                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklam_bench.envs.tasks import EPISODE_STEPS, TASKS, flatten_state, get_task
from masklam_bench.errors import MissingFileError, UserError
from masklam_bench.experts.sac import CANDIDATE_NAME
from masklam_bench.fileio import load_checkpoint

WEIGHTS_DIR = Path(__file__).parent / "weights"

LAOM_RETURNS: dict[str, float] = {
    "cheetah-run": 837.7,
    "walker-run": 739.8,
    "hopper-hop": 306.6,
    "humanoid-walk": 617.2,
}
"""Returns of LAOM's experts, the references the shipped experts are measured against."""

TARGET_FRACTION = 0.8
"""An expert at less than this fraction of LAOM's return is flagged where it is used."""

__all__ = [
    "CANDIDATE_NAME",
    "LAOM_RETURNS",
    "TARGET_FRACTION",
    "WEIGHTS_DIR",
    "Expert",
    "available_experts",
    "evaluate_expert",
    "load_expert",
    "random_policy_return",
    "shortfall_note",
    "train_expert",
    "weights_path",
]


def weights_path(task: str) -> Path:
    """Where the shipped expert of ``task`` lives (whether or not it exists)."""
    return WEIGHTS_DIR / f"{get_task(task).name}.pt"


class Expert:
    """A deterministic state-based policy: ``tanh`` of the SAC actor's Gaussian mean."""

    def __init__(self, payload: dict[str, Any]):
        self.meta: dict[str, Any] = {k: v for k, v in payload.items() if k != "actor"}
        self.task: str = payload["task"]
        self.obs_dim: int = int(payload["obs_dim"])
        self.act_dim: int = int(payload["act_dim"])
        actor = payload["actor"]
        n = len(payload["hidden"]) + 1
        self._layers = [(actor[f"w{i}"].float(), actor[f"b{i}"].float()) for i in range(n)]

    @torch.no_grad()
    def act(
        self,
        state: np.ndarray,
        noise_std: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Actions in ``[-1, 1]`` for a state ``(obs_dim,)`` or a batch ``(B, obs_dim)``.

        With ``noise_std > 0`` Gaussian noise of that scale (drawn from ``rng``, a fresh
        unseeded generator if none) is added to the deterministic action, then clipped.
        """
        x = np.asarray(state, dtype=np.float32)
        single = x.ndim == 1
        if x.shape[-1] != self.obs_dim or x.ndim not in (1, 2):
            raise ValueError(
                f"{self.task} expert expects states of shape (obs_dim,) or (B, obs_dim) with "
                f"obs_dim={self.obs_dim}, got {x.shape}."
            )
        h = torch.from_numpy(np.atleast_2d(x))
        for i, (w, b) in enumerate(self._layers):
            h = torch.addmm(b, h, w)
            if i < len(self._layers) - 1:
                h = torch.relu(h)
        action = torch.tanh(h[:, : self.act_dim]).numpy().astype(np.float32)
        if noise_std > 0.0:
            rng = rng if rng is not None else np.random.default_rng()
            action = action + rng.normal(0.0, noise_std, action.shape).astype(np.float32)
            action = np.clip(action, -1.0, 1.0)
        return action[0] if single else action

    __call__ = act

    def __repr__(self) -> str:
        ret = self.meta.get("eval_return_mean")
        ret_s = "?" if ret is None else f"{ret:.1f}"
        return (
            f"Expert(task={self.task!r}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
            f"train_steps={self.meta.get('train_steps')}, eval_return={ret_s})"
        )


def load_expert(task: str, path: str | os.PathLike | None = None) -> Expert:
    """Load the shipped expert of ``task`` (or the expert file at ``path``)."""
    name = get_task(task).name
    p = Path(path) if path is not None else weights_path(name)
    if not p.exists():
        raise MissingFileError(
            f"No expert weights for {name} at {p}; train one with "
            f"`masklam-bench train-expert --task {name}` (or "
            f"`python -m masklam_bench.experts.sac --task {name}`, then `--export "
            f"--replace-shipped`), or pass an exported candidate.pt as the expert file."
        )
    payload = load_checkpoint(p, hint="pass an expert file exported by train-expert")
    if not isinstance(payload, dict) or payload.get("task") != name:
        task = payload.get("task") if isinstance(payload, dict) else None
        raise UserError(f"{p} holds an expert for {task!r}, not {name!r}.")
    missing = [k for k in _EXPERT_KEYS if k not in payload]
    if missing:
        raise UserError(f"{p} is not an exported expert (no {', '.join(missing)}); export one "
                        "with `masklam-bench train-expert` or `python -m masklam_bench.experts.sac "
                        "--export`.")
    return Expert(payload)


_EXPERT_KEYS = ("task", "obs_dim", "act_dim", "hidden", "actor")
"""What an exported expert file holds besides its metadata."""


def shortfall_note(expert: Expert) -> str | None:
    """A one-line caveat if ``expert``'s recorded return is under the target, else ``None``.

    The recorded return is the one ``export`` measured when it wrote the file. A task without a
    LAOM reference (a newly added one) has no target, so it gets no caveat.
    """
    ret = expert.meta.get("eval_return_mean")
    reference = LAOM_RETURNS.get(expert.task)
    if ret is None or reference is None or ret >= TARGET_FRACTION * reference:
        return None
    return (
        f"this {expert.task} expert returned {ret:.1f} when exported, {ret / reference:.1%} of "
        f"LAOM's expert ({reference}), below the suite's {TARGET_FRACTION:.0%} target: its "
        "episodes are weaker demonstrations than the papers', and normalised returns are "
        "relative to it."
    )


def available_experts() -> list[str]:
    """Tasks (full names) that have a shipped expert weights file."""
    return [name for name in TASKS if weights_path(name).exists()]


def _run_episodes(task: str, policy, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``policy(batch_of_states) -> actions`` over full episodes run in lockstep."""
    from masklam_bench.experts.sac import make_env

    envs = [make_env(task, seed * 100_003 + i) for i in range(episodes)]
    obs = np.stack([flatten_state(e.reset().observation) for e in envs])
    returns = np.zeros(episodes)
    for _ in range(EPISODE_STEPS):
        actions = np.asarray(policy(obs), dtype=np.float64)
        new = []
        for i, (env, a) in enumerate(zip(envs, actions)):
            ts = env.step(a)
            returns[i] += ts.reward or 0.0
            new.append(flatten_state(ts.observation))
        obs = np.stack(new)
    return returns


def evaluate_expert(
    task: str,
    episodes: int = 10,
    seed: int = 0,
    noise_std: float = 0.0,
    path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Mean/std/list of 1000-step returns of the shipped expert (or the expert file at ``path``)
    on dm_control state observations."""
    expert = load_expert(task, path=path)
    rng = np.random.default_rng(seed)
    rets = _run_episodes(
        expert.task, lambda o: expert.act(o, noise_std=noise_std, rng=rng), episodes, seed
    )
    return {"mean": float(rets.mean()), "std": float(rets.std()), "returns": rets.tolist()}


def random_policy_return(task: str, episodes: int = 10, seed: int = 0) -> float:
    """Mean 1000-step return of a uniform random policy on ``task`` (for normalisation)."""
    name = get_task(task).name
    rng = np.random.default_rng(seed)
    from masklam_bench.experts.sac import task_dims

    _, act_dim = task_dims(name)
    rets = _run_episodes(
        name, lambda o: rng.uniform(-1.0, 1.0, (o.shape[0], act_dim)), episodes, seed
    )
    return float(rets.mean())


def train_expert(
    task: str,
    steps: int = 1_000_000,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    export_weights: bool = True,
    replace_shipped: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train (or resume) a SAC expert in ``out_dir`` (default ``runs/experts/{task}``).

    ``overrides`` set fields of :class:`~masklam_bench.experts.sac.SACConfig`. With
    ``export_weights`` the finished actor is written to ``out_dir/candidate.pt`` (measure it
    with ``eval-expert --weights``); only with ``replace_shipped`` does it replace the package's
    shipped ``weights/{task}.pt``, which the datasets and result files are tied to.
    Returns the training summary (step, updates, last_eval) plus ``weights`` when exported.
    """
    from masklam_bench.experts.sac import SACConfig, export, train

    name = get_task(task).name
    out = Path(out_dir) if out_dir is not None else Path("runs") / "experts" / name
    fields = {f.name for f in dataclasses.fields(SACConfig)} - {"task", "total_steps", "seed"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"train_expert: unknown setting(s) {', '.join(unknown)}; SACConfig has "
                        f"{', '.join(sorted(fields))}.")
    cfg = SACConfig(task=name, total_steps=steps, seed=seed, **overrides)
    summary = train(cfg, out, resume=resume, progress=progress)
    summary.pop("agent", None)
    if export_weights:
        summary["weights"] = str(export(out, name, replace_shipped=replace_shipped))
    return summary
