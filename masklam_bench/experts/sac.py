"""A fast, resumable Soft Actor-Critic for state-based DeepMind Control experts.

Written for a CPU with few cores: the two critics are one batched ensemble (``torch.baddbmm``),
the replay buffer is one preallocated tensor sampled with a single gather, the networks are
plain tensors (no ``nn.Module`` dispatch), and several dm_control environments are stepped in
lockstep as a small "vector" so acting costs one batched forward pass.

Every random choice (network initialisation, exploration, replay sampling, policy noise,
environment initial states) is drawn from generators seeded by :attr:`SACConfig.seed`, and a
checkpoint holds all of their states, so an interrupted run resumes bit-for-bit.

Command line::

    python -m masklam_bench.experts.sac --task cheetah-run --steps 1000000 \\
        --out runs/experts/cheetah-run
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from masklam_bench.envs.tasks import EPISODE_STEPS, flatten_state, get_task
from masklam_bench.errors import MissingFileError, UserError
from masklam_bench.fileio import (
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    load_checkpoint,
)

CANDIDATE_NAME = "candidate.pt"
"""File in a training run's folder that an export writes unless told to replace the shipped one."""
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
CHECKPOINT_NAME = "checkpoint.pt"
BEST_ACTOR_NAME = "best_actor.pt"
EVAL_LOG_NAME = "eval.csv"
CONFIG_NAME = "config.json"
_RESUME_HINT = ("delete it, or train from scratch: --restart (masklam-bench train-expert), "
                "--no-resume (python -m masklam_bench.experts.sac) or resume=False")


# The height a body part must reach for each domain's own reward to count the agent as standing
# (dm_control's _STAND_HEIGHT constants), and how to read that height from the physics.
STAND_HEIGHT = {
    "walker": (1.2, lambda physics: physics.torso_height()),
    "hopper": (0.6, lambda physics: physics.height()),
    "humanoid": (1.4, lambda physics: physics.head_height()),
}


@dataclass
class SACConfig:
    """Hyperparameters of one SAC run (defaults tuned for wall-clock speed on one CPU core)."""

    task: str = "cheetah-run"
    """Task name, e.g. ``cheetah-run`` (or its short name ``cheetah``)."""
    seed: int = 0
    """Seeds every generator of the run: networks, exploration, replay sampling, environments."""
    total_steps: int = 1_000_000
    """Environment (control) steps to train for, summed over the parallel environments."""
    num_envs: int = 1
    """dm_control environments stepped in lockstep; each agent step adds one transition each."""
    episode_steps: int = EPISODE_STEPS
    """Control steps per training episode (dm_control's own limit is 1000; tests use fewer)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of each critic."""
    critic_layer_norm: bool = False
    """Apply LayerNorm after every hidden layer of the critics."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity in transitions (the oldest are overwritten)."""
    learning_starts: int = 5_000
    """Environment steps of uniform random actions before learning starts."""
    updates_per_step: float = 1.0
    """Critic gradient updates per environment step (update-to-data ratio)."""
    actor_every: int = 2
    """Update the actor (and temperature) once every this many critic updates."""
    n_step: int = 3
    """Length of the n-step bootstrapped return used as the critic target."""
    gamma: float = 0.99
    """Discount factor per environment step."""
    tau: float = 0.005
    """Polyak averaging rate of the target critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the log-temperature."""
    init_alpha: float = 0.1
    """Initial entropy temperature."""
    target_entropy_scale: float = 1.0
    """The temperature is tuned towards an entropy of ``-scale * action_dim``."""
    eval_every: int = 10_000
    """Evaluate the deterministic policy every this many environment steps (at episode ends)."""
    eval_episodes: int = 5
    """Episodes per evaluation (fixed initial states, so evaluations are comparable)."""
    checkpoint_every: int = 50_000
    """Write a checkpoint every this many environment steps (at the next episode end)."""
    save_buffer: bool = True
    """Include the replay buffer in checkpoints (needed for an exact resume)."""
    num_threads: int = 1
    """``torch.set_num_threads`` for the training process."""
    stop_return: float | None = None
    """Stop early (with a checkpoint) once an evaluation's mean return reaches this value."""
    stand_bonus: float = 0.0
    """Weight of a dense standing term added to the *training* reward only (walker, hopper,
    humanoid): ``stand_bonus * min(1, height / stand_height)`` with the task's own body height and
    standing threshold. It gives a learning signal before the agent first stands, which hopper-hop's
    reward (zero unless standing and moving) lacks. Evaluations, logged returns and shipped
    returns always use the task's own reward."""
    init_from: str | None = None
    """Run directory whose checkpoint supplies the starting agent (networks, target critics,
    temperature and optimiser states) instead of a random initialisation; used to fine-tune an
    expert under a changed training reward, e.g. hopper without ``stand_bonus`` once it stands.
    The replay buffer starts empty (the source's rewards may include a bonus) and during
    ``learning_starts`` the loaded policy acts instead of uniform noise. Read only when the run
    starts; a resumed run continues from its own checkpoint."""

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.task = get_task(self.task).name
        if not 0 < self.episode_steps <= EPISODE_STEPS:
            raise UserError(
                f"episode_steps must be in 1..{EPISODE_STEPS}, got {self.episode_steps}"
            )
        if self.n_step < 1:
            raise UserError(f"n_step must be >= 1, got {self.n_step}")
        if self.stand_bonus < 0:
            raise UserError(f"stand_bonus must be >= 0, got {self.stand_bonus}")
        if self.stand_bonus > 0 and get_task(self.task).domain not in STAND_HEIGHT:
            raise UserError(f"stand_bonus applies to {sorted(STAND_HEIGHT)} only, not {self.task}")
        if self.init_from is not None:
            self.init_from = str(self.init_from)


# --------------------------------------------------------------------------------------------
# Networks as plain tensors
# --------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


def init_actor(obs_dim: int, act_dim: int, hidden: tuple[int, ...], gen: torch.Generator):
    """Actor MLP ``obs -> hidden... -> (mean, log_std)``; PyTorch's default Linear init."""
    sizes = [obs_dim, *hidden, 2 * act_dim]
    params: dict[str, torch.Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = _uniform((fan_in, fan_out), bound, gen)
        params[f"b{i}"] = _uniform((fan_out,), bound, gen)
    return params


def init_critics(
    in_dim: int, hidden: tuple[int, ...], layer_norm: bool, gen: torch.Generator, n: int = 2
):
    """``n`` critics ``(obs, act) -> Q`` as one ensemble: weights ``(n, in, out)``."""
    sizes = [in_dim, *hidden, 1]
    params: dict[str, torch.Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"w{i}"] = _uniform((n, fan_in, fan_out), bound, gen)
        params[f"b{i}"] = _uniform((n, 1, fan_out), bound, gen)
        if layer_norm and i < len(sizes) - 2:
            params[f"g{i}"] = torch.ones(n, 1, fan_out)
            params[f"h{i}"] = torch.zeros(n, 1, fan_out)
    return params


def actor_forward(p: dict[str, torch.Tensor], obs: torch.Tensor, n_layers: int):
    """Return the Gaussian mean and log-std (squashed into [LOG_STD_MIN, LOG_STD_MAX])."""
    x = obs
    for i in range(n_layers):
        x = torch.addmm(p[f"b{i}"], x, p[f"w{i}"])
        if i < n_layers - 1:
            x = F.relu(x)
    mean, log_std = x.chunk(2, dim=-1)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
    return mean, log_std


def critic_forward(p: dict[str, torch.Tensor], x: torch.Tensor, n_layers: int, layer_norm: bool):
    """Q-values ``(n, B, 1)`` of the ensemble; ``x`` is ``(B, in)`` or ``(n, B, in)``."""
    n = p["w0"].shape[0]
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(n, -1, -1)
    for i in range(n_layers):
        x = torch.baddbmm(p[f"b{i}"], x, p[f"w{i}"])
        if i < n_layers - 1:
            if layer_norm:
                x = F.layer_norm(x, x.shape[-1:]) * p[f"g{i}"] + p[f"h{i}"]
            x = F.relu(x)
    return x


def sample_action(mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor):
    """Reparameterised tanh-Gaussian sample and its log-probability ``(B, 1)``."""
    u = mean + noise * log_std.exp()
    a = torch.tanh(u)
    # log N(u) - log|d tanh(u)/du|, the latter written stably as 2 (log 2 - u - softplus(-2u)).
    logp = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
    logp = logp - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1, keepdim=True)
    return a, logp


# --------------------------------------------------------------------------------------------
# Replay buffer with n-step returns
# --------------------------------------------------------------------------------------------


class ReplayBuffer:
    """Preallocated ring buffer of rows ``[obs, act, reward, discount, next_obs]``.

    ``discount`` already includes ``gamma**n`` of the (possibly shortened) n-step return, so the
    critic target is simply ``reward + discount * V(next_obs)``.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity = capacity
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        self.data = torch.zeros(capacity, self.width, dtype=torch.float32)
        self.ptr = 0
        self.size = 0

    def add(self, rows: np.ndarray) -> None:
        rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        n = rows.shape[0]
        end = self.ptr + n
        if end <= self.capacity:
            self.data[self.ptr : end] = rows
        else:
            k = self.capacity - self.ptr
            self.data[self.ptr :] = rows[:k]
            self.data[: n - k] = rows[k:]
        self.ptr = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, gen: torch.Generator):
        idx = torch.randint(0, self.size, (batch_size,), generator=gen)
        rows = self.data.index_select(0, idx)
        o, a = self.obs_dim, self.act_dim
        return (
            rows[:, :o],
            rows[:, o : o + a],
            rows[:, o + a : o + a + 1],
            rows[:, o + a + 1 : o + a + 2],
            rows[:, o + a + 2 :],
        )

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[: self.size].clone(), "ptr": self.ptr, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data[: state["size"]] = state["data"]
        self.ptr, self.size = int(state["ptr"]), int(state["size"])


class NStepAccumulator:
    """Turns one environment's transitions into n-step rows; flushed at every episode end."""

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.pending: list[tuple[np.ndarray, np.ndarray, float, float]] = []

    def push(self, obs, act, reward: float, discount: float, next_obs) -> list[np.ndarray]:
        self.pending.append((obs, act, reward, discount))
        rows = []
        if len(self.pending) == self.n:
            rows.append(self._row(next_obs))
            self.pending.pop(0)
        return rows

    def flush(self, next_obs) -> list[np.ndarray]:
        rows = []
        while self.pending:
            rows.append(self._row(next_obs))
            self.pending.pop(0)
        return rows

    def _row(self, next_obs) -> np.ndarray:
        ret, disc = 0.0, 1.0
        for _, _, r, d in self.pending:
            ret += disc * r
            disc *= self.gamma * d
        obs, act = self.pending[0][0], self.pending[0][1]
        return np.concatenate([obs, act, [ret, disc], next_obs]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------


def make_env(task: str, seed: int):
    """A state-based dm_control environment whose initial states are drawn with ``seed``."""
    from dm_control import suite

    t = get_task(task)
    return suite.load(t.domain, t.task, task_kwargs={"random": seed})


class VectorEnv:
    """``n`` dm_control environments stepped in lockstep (all episodes have the same length).

    With ``stand_bonus > 0`` :meth:`step` also returns the dense standing term of
    :attr:`SACConfig.stand_bonus` per environment (zeros otherwise).
    """

    def __init__(self, task: str, n: int, seed: int, episode_steps: int, stand_bonus: float = 0.0):
        self.envs = [make_env(task, seed * 1000 + i) for i in range(n)]
        self.episode_steps = episode_steps
        self.stand_bonus = stand_bonus
        if stand_bonus > 0:
            self._stand = STAND_HEIGHT[get_task(task).domain]
        spec = self.envs[0].action_spec()
        self.act_dim = int(np.prod(spec.shape))
        self.t = 0

    def reset(self) -> np.ndarray:
        self.t = 0
        return np.stack([flatten_state(e.reset().observation) for e in self.envs])

    def step(self, actions: np.ndarray):
        obs, rew, disc, bonus = [], [], [], []
        for env, a in zip(self.envs, actions):
            ts = env.step(a)
            obs.append(flatten_state(ts.observation))
            rew.append(ts.reward or 0.0)
            disc.append(1.0 if ts.discount is None else ts.discount)
            if self.stand_bonus > 0:
                stand_height, height = self._stand
                bonus.append(
                    self.stand_bonus * min(1.0, max(0.0, height(env.physics)) / stand_height)
                )
            else:
                bonus.append(0.0)
        self.t += 1
        done = self.t >= self.episode_steps
        return (
            np.stack(obs),
            np.asarray(rew, np.float64),
            np.asarray(disc, np.float64),
            np.asarray(bonus, np.float64),
            done,
        )

    def random_states(self) -> list:
        return [e.task.random.get_state() for e in self.envs]

    def set_random_states(self, states: list) -> None:
        for e, s in zip(self.envs, states):
            e.task.random.set_state(s)


def task_dims(task: str) -> tuple[int, int]:
    env = make_env(task, 0)
    obs = flatten_state(env.reset().observation)
    return int(obs.size), int(np.prod(env.action_spec().shape))


# --------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------


class SAC:
    """Networks, optimisers and the update step; all state lives in tensors and generators."""

    def __init__(self, cfg: SACConfig, obs_dim: int, act_dim: int):
        self.cfg = cfg
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.n_layers = len(cfg.hidden) + 1
        self.actor = init_actor(obs_dim, act_dim, cfg.hidden, self.gen)
        self.critic = init_critics(obs_dim + act_dim, cfg.hidden, cfg.critic_layer_norm, self.gen)
        self.critic_target = {k: v.clone() for k, v in self.critic.items()}
        self.log_alpha = torch.tensor([math.log(cfg.init_alpha)])
        for p in [*self.actor.values(), *self.critic.values(), self.log_alpha]:
            p.requires_grad_(True)
        self.target_entropy = -cfg.target_entropy_scale * act_dim
        self.actor_opt = torch.optim.Adam(list(self.actor.values()), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(list(self.critic.values()), lr=cfg.critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)
        self.num_updates = 0
        self._critic_list = list(self.critic.values())
        self._target_list = list(self.critic_target.values())
        self._actor_list = list(self.actor.values())

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        mean, log_std = actor_forward(self.actor, torch.from_numpy(obs), self.n_layers)
        if deterministic:
            return torch.tanh(mean).numpy()
        noise = torch.randn(mean.shape, generator=self.gen)
        return torch.tanh(mean + noise * log_std.exp()).numpy()

    def update(self, buffer: ReplayBuffer) -> dict[str, torch.Tensor]:
        cfg, L, ln = self.cfg, self.n_layers, self.cfg.critic_layer_norm
        obs, act, rew, disc, next_obs = buffer.sample(cfg.batch_size, self.gen)
        noise = torch.randn((2, cfg.batch_size, self.act_dim), generator=self.gen)
        alpha = self.log_alpha.detach().exp()

        with torch.no_grad():
            mean, log_std = actor_forward(self.actor, next_obs, L)
            next_act, next_logp = sample_action(mean, log_std, noise[0])
            q_next = critic_forward(self.critic_target, torch.cat([next_obs, next_act], -1), L, ln)
            v_next = q_next.min(0).values - alpha * next_logp
            target = rew + disc * v_next

        q = critic_forward(self.critic, torch.cat([obs, act], -1), L, ln)
        critic_loss = (q - target).pow(2).mean(dim=(1, 2)).sum()
        grads = torch.autograd.grad(critic_loss, self._critic_list)
        for p, g in zip(self._critic_list, grads):
            p.grad = g
        self.critic_opt.step()
        torch._foreach_lerp_(self._target_list, [p.detach() for p in self._critic_list], cfg.tau)
        self.num_updates += 1
        info = {"critic_loss": critic_loss.detach()}

        if self.num_updates % cfg.actor_every == 0:
            mean, log_std = actor_forward(self.actor, obs, L)
            new_act, logp = sample_action(mean, log_std, noise[1])
            frozen = {k: v.detach() for k, v in self.critic.items()}
            q_new = critic_forward(frozen, torch.cat([obs, new_act], -1), L, ln).min(0).values
            actor_loss = (alpha * logp - q_new).mean()
            grads = torch.autograd.grad(actor_loss, self._actor_list)
            for p, g in zip(self._actor_list, grads):
                p.grad = g
            self.actor_opt.step()
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy).mean()).sum()
            (g,) = torch.autograd.grad(alpha_loss, [self.log_alpha])
            self.log_alpha.grad = g
            self.alpha_opt.step()
            info.update(actor_loss=actor_loss.detach(), entropy=-logp.detach().mean())
        return info

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": {k: v.detach().clone() for k, v in self.actor.items()},
            "critic": {k: v.detach().clone() for k, v in self.critic.items()},
            "critic_target": {k: v.clone() for k, v in self.critic_target.items()},
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "gen": self.gen.get_state(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        with torch.no_grad():
            for mine, theirs in (
                (self.actor, s["actor"]),
                (self.critic, s["critic"]),
                (self.critic_target, s["critic_target"]),
            ):
                for k, v in mine.items():
                    v.copy_(theirs[k])
            self.log_alpha.copy_(s["log_alpha"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        self.alpha_opt.load_state_dict(s["alpha_opt"])
        self.gen.set_state(s["gen"])
        self.num_updates = int(s["num_updates"])


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


EVAL_SEED_OFFSET = 1_000_003


def evaluate_policy(policy, task: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``policy(obs_batch) -> actions`` on ``episodes`` full 1000-step episodes.

    The episodes run in lockstep so the policy is called once per step on a batch.
    """
    envs = [make_env(task, seed * 7919 + EVAL_SEED_OFFSET + i) for i in range(episodes)]
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


# --------------------------------------------------------------------------------------------
# Training with checkpoints
# --------------------------------------------------------------------------------------------


def _eval_log_rows(out_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of ``eval.csv`` as written (strings), or nothing if there is none."""
    path = out_dir / EVAL_LOG_NAME
    if not path.exists():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _append_eval_log(out_dir: Path, row: dict[str, Any]) -> None:
    """Add one evaluation row: the whole log is rewritten atomically, so a kill never halves it.

    A log begun by older code with fewer columns keeps them; the new ones are added at the end.
    """
    fields, rows = _eval_log_rows(out_dir)
    atomic_write_csv(out_dir / EVAL_LOG_NAME, list(dict.fromkeys([*fields, *row])), [*rows, row])


def _truncate_eval_log(out_dir: Path, step: int) -> None:
    """Drop evaluation rows written after the checkpoint we resume from."""
    fields, rows = _eval_log_rows(out_dir)
    if fields:
        keep = [r for r in rows if int(float(r["step"])) <= step]
        atomic_write_csv(out_dir / EVAL_LOG_NAME, fields, keep)


def read_eval_log(out_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's ``eval.csv`` as dicts of floats (a column a row lacks is left out)."""
    return [{k: float(v) for k, v in row.items() if v != ""}
            for row in _eval_log_rows(Path(out_dir))[1]]


def _init_agent_from(agent: SAC, cfg: SACConfig, src: Path, out: Path) -> None:
    """Copy the agent of ``src``'s checkpoint into ``agent`` (see :attr:`SACConfig.init_from`)."""
    path = src / CHECKPOINT_NAME
    if src.resolve() == out.resolve():
        raise UserError("init_from must name another run directory than out_dir")
    ck = load_checkpoint(path, hint="point init_from at the folder of another train-expert run")
    theirs = ck["config"]
    for name in ("task", "hidden", "critic_layer_norm"):
        mine = getattr(cfg, name)
        other = tuple(theirs[name]) if name == "hidden" else theirs[name]
        if other != mine:
            raise UserError(f"init_from: {path} has {name}={other!r}, this run {mine!r}")
    state = dict(ck["agent"])
    state["gen"] = agent.gen.get_state()  # this run's own seed drives its noise
    state["num_updates"] = 0
    agent.load_state_dict(state)
    for opt, lr in (
        (agent.actor_opt, cfg.actor_lr),
        (agent.critic_opt, cfg.critic_lr),
        (agent.alpha_opt, cfg.alpha_lr),
    ):
        for group in opt.param_groups:  # this run's learning rates, not the source's
            group["lr"] = lr


# Config fields a resumed run may change; every other field must match the checkpoint's.
_MAY_CHANGE_ON_RESUME = (
    "total_steps",
    "eval_every",
    "checkpoint_every",
    "eval_episodes",
    "num_threads",
    "save_buffer",
    "stop_return",
)


@dataclass
class _Run:
    """The objects of one training run whose state a checkpoint holds."""

    cfg: SACConfig
    out: Path
    obs_dim: int
    act_dim: int
    agent: SAC
    buffer: ReplayBuffer
    venv: VectorEnv
    np_rng: np.random.Generator
    refill_until: int = 0
    """No updates before this step: a run resumed from a checkpoint saved without its replay
    buffer (``save_buffer=False``) first refills it for ``learning_starts`` steps."""


@dataclass
class _Progress:
    """Where the training loop stands; every field is saved in the checkpoint under its name."""

    step: int = 0
    """Environment steps taken, summed over the parallel environments."""
    episodes: int = 0
    """Training episodes finished, summed over the parallel environments."""
    last_eval: float | None = None
    """Mean return of the latest evaluation (None before the first)."""
    best_eval: float = -math.inf
    """Best mean evaluation return so far (the actor of ``best_actor.pt``)."""
    train_returns: list[float] = dataclasses.field(default_factory=list)
    """Mean training return of every finished episode (task reward only)."""
    next_eval: int = 0
    """Evaluate at the first episode end at or after this step."""
    next_ckpt: int = 0
    """Checkpoint at the first episode end at or after this step."""
    updates_owed: float = 0.0
    """Gradient updates earned by ``updates_per_step`` but not yet made (a fraction carries over)."""


def _build_run(cfg: SACConfig, out: Path) -> _Run:
    """The agent, replay buffer, environments and action generator of a run, before any restore."""
    obs_dim, act_dim = task_dims(cfg.task)
    agent = SAC(cfg, obs_dim, act_dim)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim)
    venv = VectorEnv(cfg.task, cfg.num_envs, cfg.seed, cfg.episode_steps, cfg.stand_bonus)
    np_rng = np.random.default_rng(cfg.seed)
    return _Run(cfg, out, obs_dim, act_dim, agent, buffer, venv, np_rng)


def _fresh_start(run: _Run) -> _Progress:
    """Start from scratch (or from ``init_from``'s agent): an old eval log is removed."""
    cfg = run.cfg
    if (run.out / EVAL_LOG_NAME).exists():
        (run.out / EVAL_LOG_NAME).unlink()
    if cfg.init_from is not None:
        _init_agent_from(run.agent, cfg, Path(cfg.init_from), run.out)
    return _Progress(next_eval=cfg.eval_every, next_ckpt=cfg.checkpoint_every)


def _check_resumable(saved: SACConfig, cfg: SACConfig, ckpt_path: Path) -> None:
    """Refuse to resume a checkpoint trained with another setting that must not change."""
    for f in dataclasses.fields(SACConfig):
        if f.name not in _MAY_CHANGE_ON_RESUME and getattr(saved, f.name) != getattr(cfg, f.name):
            raise UserError(
                f"Checkpoint {ckpt_path} was trained with {f.name}="
                f"{getattr(saved, f.name)!r}, not {getattr(cfg, f.name)!r}; use another "
                "out_dir or resume=False."
            )


def _restore(run: _Run, ckpt_path: Path) -> _Progress:
    """Load every state of ``ckpt_path`` into ``run`` and drop the evaluations logged after it."""
    ck = load_checkpoint(ckpt_path, hint=_RESUME_HINT)
    try:
        saved = SACConfig(**{**ck["config"], "hidden": tuple(ck["config"]["hidden"])})
    except TypeError as err:  # written by a version with other settings
        raise UserError(f"{ckpt_path} was written by another version of the expert trainer "
                        f"({err}); {_RESUME_HINT}.") from None
    _check_resumable(saved, run.cfg, ckpt_path)
    run.agent.load_state_dict(ck["agent"])
    if ck.get("buffer") is not None:
        run.buffer.load_state_dict(ck["buffer"])
    elif int(ck["step"]) > 0:
        run.refill_until = int(ck["step"]) + run.cfg.learning_starts
        warnings.warn(f"{ckpt_path} was saved without its replay buffer (save_buffer=False): the "
                      f"agent acts for {run.cfg.learning_starts} steps to refill it before it "
                      "updates again, so this run no longer matches an uninterrupted one.",
                      stacklevel=2)
    run.venv.set_random_states(ck["env_random"])
    run.np_rng.bit_generator.state = ck["np_rng"]
    state = _Progress(
        step=int(ck["step"]),
        episodes=int(ck["episodes"]),
        last_eval=ck["last_eval"],
        best_eval=float(ck.get("best_eval", -math.inf)),
        train_returns=list(ck["train_returns"]),
        next_eval=int(ck["next_eval"]),
        next_ckpt=int(ck["next_ckpt"]),
        updates_owed=float(ck["updates_owed"]),
    )
    _truncate_eval_log(run.out, state.step)
    return state


def _save_checkpoint(run: _Run, state: _Progress) -> None:
    """Write everything needed to resume exactly, atomically."""
    cfg = run.cfg
    atomic_torch_save(
        {
            "config": dataclasses.asdict(cfg),
            "agent": run.agent.state_dict(),
            "buffer": run.buffer.state_dict() if cfg.save_buffer else None,
            "env_random": run.venv.random_states(),
            "np_rng": run.np_rng.bit_generator.state,
            **dataclasses.asdict(state),
            "obs_dim": run.obs_dim,
            "act_dim": run.act_dim,
            "wall_time": time.time(),
        },
        run.out / CHECKPOINT_NAME,
    )


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[dict[str, bool]]:
    """Yield ``{"flag": False}``, set to True by a SIGTERM (the run then finishes its episode,
    checkpoints and returns); the previous handler is put back on exit."""
    stop = {"flag": False}

    def _on_signal(signum, frame):
        stop["flag"] = True

    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:  # not in the main thread
        pass
    try:
        yield stop
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


@contextlib.contextmanager
def _progress_bar(cfg: SACConfig, step: int, progress: bool) -> Iterator[Any]:
    """A tqdm bar over the run's steps (None without ``progress``), closed on exit."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.total_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            desc=cfg.task,
            smoothing=0.05,
            mininterval=0.1 if sys.stderr.isatty() else 60.0,
        )
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _run_episode(
    run: _Run,
    state: _Progress,
    accs: list[NStepAccumulator],
    info: dict[str, torch.Tensor],
    bar: Any,
) -> None:
    """One training episode in every environment: act, store n-step rows, update the agent.

    The latest update's losses are left in ``info``.
    """
    cfg, agent, act_dim = run.cfg, run.agent, run.act_dim
    obs = run.venv.reset()
    ep_ret = np.zeros(cfg.num_envs)
    done = False
    while not done:
        if state.step < cfg.learning_starts and cfg.init_from is None:
            actions = run.np_rng.uniform(-1.0, 1.0, (cfg.num_envs, act_dim)).astype(np.float32)
        else:
            actions = agent.act(obs, deterministic=False)
        next_obs, rew, disc, bonus, done = run.venv.step(actions)
        ep_ret += rew
        train_rew = rew + bonus
        rows = []
        for i, acc in enumerate(accs):
            rows += acc.push(obs[i], actions[i], train_rew[i], disc[i], next_obs[i])
            if done:
                rows += acc.flush(next_obs[i])
        if rows:
            run.buffer.add(np.stack(rows))
        obs = next_obs
        state.step += cfg.num_envs
        if state.step >= max(cfg.learning_starts, run.refill_until):
            state.updates_owed += cfg.num_envs * cfg.updates_per_step
            while state.updates_owed >= 1.0:
                info.update(agent.update(run.buffer))
                state.updates_owed -= 1.0
        if bar is not None:
            bar.update(cfg.num_envs)
    state.episodes += cfg.num_envs
    state.train_returns.append(float(ep_ret.mean()))


def _save_best_actor(run: _Run, state: _Progress) -> None:
    """Write the actor of the latest evaluation, the best so far, to ``best_actor.pt``."""
    atomic_torch_save(
        {
            "actor": {k: v.detach().clone() for k, v in run.agent.actor.items()},
            "step": state.step,
            "updates": run.agent.num_updates,
            "eval_return": state.last_eval,
        },
        run.out / BEST_ACTOR_NAME,
    )


def _evaluate(
    run: _Run,
    state: _Progress,
    info: dict[str, torch.Tensor],
    started: tuple[float, int],
    bar: Any,
) -> None:
    """Evaluate the deterministic policy, log a row to ``eval.csv``, keep the best actor.

    ``started`` is the time and update count at which this process began training, for the
    logged update rate.
    """
    cfg, agent, out = run.cfg, run.agent, run.out
    rets = evaluate_policy(
        lambda o: agent.act(o.astype(np.float32), True),
        cfg.task,
        cfg.eval_episodes,
        cfg.seed,
    )
    state.last_eval = float(rets.mean())
    t0, u0 = started
    el = time.time() - t0
    row = {
        "step": state.step,
        "updates": agent.num_updates,
        "eval_return": round(state.last_eval, 2),
        "eval_std": round(float(rets.std()), 2),
        "train_return": round(state.train_returns[-1], 2),
        "alpha": round(float(agent.log_alpha.detach().exp()), 5),
        "entropy": round(float(info.get("entropy", torch.nan)), 3),
        "critic_loss": round(float(info.get("critic_loss", torch.nan)), 4),
        "updates_per_s": round((agent.num_updates - u0) / max(el, 1e-9), 1),
        "time": round(time.time(), 1),
    }
    _append_eval_log(out, row)
    if state.last_eval > state.best_eval:
        state.best_eval = state.last_eval
        _save_best_actor(run, state)
    msg = " ".join(f"{k}={v}" for k, v in row.items() if k != "time")
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)
    while state.next_eval <= state.step:
        state.next_eval += cfg.eval_every


def _train_loop(run: _Run, state: _Progress, stop: dict[str, bool], bar: Any) -> bool:
    """Run episodes until ``total_steps``, a SIGTERM or ``stop_return``, evaluating and
    checkpointing at episode ends; returns whether ``stop_return`` was reached."""
    cfg = run.cfg
    accs = [NStepAccumulator(cfg.n_step, cfg.gamma) for _ in range(cfg.num_envs)]
    started = (time.time(), run.agent.num_updates)
    info: dict[str, torch.Tensor] = {}
    reached = False
    while state.step < cfg.total_steps and not stop["flag"] and not reached:
        _run_episode(run, state, accs, info, bar)
        if state.step >= state.next_eval or state.step >= cfg.total_steps:
            _evaluate(run, state, info, started, bar)
            reached = cfg.stop_return is not None and state.last_eval >= cfg.stop_return
        if bar is not None:
            bar.set_postfix(
                eval=None if state.last_eval is None else round(state.last_eval, 1),
                train=round(state.train_returns[-1], 1),
                refresh=False,
            )
        if (
            state.step >= state.next_ckpt
            or state.step >= cfg.total_steps
            or stop["flag"]
            or reached
        ):
            while state.next_ckpt <= state.step:
                state.next_ckpt += cfg.checkpoint_every
            _save_checkpoint(run, state)
    return reached


def train(
    config: SACConfig, out_dir: str | os.PathLike, resume: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume training) until ``config.total_steps``; returns a summary dict.

    ``out_dir`` receives ``checkpoint.pt`` (everything needed to resume exactly, written
    atomically at episode ends), ``eval.csv`` (periodic deterministic evaluations) and
    ``config.json``. With ``resume`` and an existing checkpoint, training continues from it;
    ``total_steps`` may be raised to train longer.
    """
    cfg = config
    torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    fresh = not (resume and ckpt_path.exists())
    if fresh and cfg.init_from is not None:
        src = Path(cfg.init_from) / CHECKPOINT_NAME
        if not src.is_file():  # before anything is written
            raise MissingFileError(f"init_from: no checkpoint at {src}")
    out.mkdir(parents=True, exist_ok=True)

    run = _build_run(cfg, out)
    state = _fresh_start(run) if fresh else _restore(run, ckpt_path)
    atomic_write_json(out / CONFIG_NAME, dataclasses.asdict(cfg))

    with _stop_on_sigterm() as stop, _progress_bar(cfg, state.step, progress) as bar:
        reached = _train_loop(run, state, stop, bar)
    return {
        "step": state.step,
        "updates": run.agent.num_updates,
        "last_eval": state.last_eval,
        "episodes": state.episodes,
        "reached_stop_return": reached,
        "interrupted": stop["flag"],
        "agent": run.agent,
    }


# --------------------------------------------------------------------------------------------
# Export of the shipped actor
# --------------------------------------------------------------------------------------------


def _init_from_chain(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Configs of the runs an ``init_from`` run started from, nearest first, where readable."""
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    src = cfg.get("init_from")
    while src and len(chain) < 16:
        path = Path(src) / CONFIG_NAME
        if path.resolve() in seen or not path.is_file():
            break
        seen.add(path.resolve())
        chain.append(json.loads(path.read_text()))
        src = chain[-1].get("init_from")
    return chain


def export(
    out_dir: str | os.PathLike,
    task: str | None = None,
    dest: str | os.PathLike | None = None,
    eval_episodes: int = 10,
    source: str = "auto",
    replace_shipped: bool = False,
) -> Path:
    """Write a trained actor of ``out_dir`` as a small ``weights_only`` file.

    ``source`` is ``"last"`` (the checkpoint's actor), ``"best"`` (the actor of the best
    periodic evaluation, ``best_actor.pt``) or ``"auto"``: both are evaluated here on
    ``eval_episodes`` fresh episodes and the better one is shipped. The default destination
    is ``out_dir/candidate.pt``; ``replace_shipped`` writes over the package's shipped
    ``masklam_bench/experts/weights/{task}.pt`` instead, which every dataset and result file of
    the task is tied to. The file is a plain dict: the actor's tensors under ``"actor"`` plus
    metadata, including the return measured here.
    """
    if source not in ("auto", "last", "best"):
        raise UserError(f"source must be 'auto', 'last' or 'best'; got {source!r}.")
    out = Path(out_dir)
    if not (out / CHECKPOINT_NAME).is_file():
        raise MissingFileError(f"No {CHECKPOINT_NAME} in {out_dir} to export; train there first "
                               "(masklam-bench train-expert --out DIR).")
    ck = load_checkpoint(out / CHECKPOINT_NAME, hint="train the expert again")
    cfg = ck["config"]
    name = get_task(task or cfg["task"]).name
    if name != cfg["task"]:
        raise UserError(f"Checkpoint in {out_dir} is for {cfg['task']}, not {name}.")
    n_layers = len(cfg["hidden"]) + 1
    candidates = {}
    if source in ("last", "auto"):
        candidates["last"] = (
            ck["agent"]["actor"],
            int(ck["step"]),
            int(ck["agent"]["num_updates"]),
        )
    if source in ("best", "auto") and (out / BEST_ACTOR_NAME).exists():
        b = load_checkpoint(out / BEST_ACTOR_NAME, hint="delete it to export the last actor")
        candidates["best"] = (b["actor"], int(b["step"]), int(b["updates"]))
    if not candidates:
        raise MissingFileError(f"No {source!r} actor in {out_dir}.")

    results = {}
    for key, (actor, _, _) in candidates.items():
        actor = {k: v.detach().contiguous() for k, v in actor.items()}

        @torch.no_grad()
        def policy(o, actor=actor):
            x = torch.from_numpy(o.astype(np.float32))
            return torch.tanh(actor_forward(actor, x, n_layers)[0]).numpy()

        results[key] = (actor, evaluate_policy(policy, name, eval_episodes, seed=12345))
    chosen = max(results, key=lambda k: results[k][1].mean())
    actor, rets = results[chosen]
    payload = {
        "actor": actor,
        "task": name,
        "obs_dim": int(ck["obs_dim"]),
        "act_dim": int(ck["act_dim"]),
        "hidden": [int(h) for h in cfg["hidden"]],
        "log_std_min": LOG_STD_MIN,
        "log_std_max": LOG_STD_MAX,
        "source": chosen,
        "train_steps": candidates[chosen][1],
        "train_updates": candidates[chosen][2],
        "eval_return_mean": float(rets.mean()),
        "eval_return_std": float(rets.std()),
        "eval_returns": [float(r) for r in rets],
        "eval_episodes": int(eval_episodes),
        "config": json.dumps(cfg),
        "init_from_configs": json.dumps(_init_from_chain(cfg)),
        "torch_version": str(torch.__version__),
    }
    if dest is None:
        dest = (Path(__file__).parent / "weights" / f"{name}.pt" if replace_shipped
                else out / CANDIDATE_NAME)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m masklam_bench.experts.sac",
        description="Train (resumably) or export a state-based SAC expert for one task.",
    )
    p.add_argument("--task", required=True)
    p.add_argument("--steps", type=int, default=None, help="total environment steps")
    p.add_argument("--out", default=None, help="run directory (default runs/experts/TASK)")
    p.add_argument("--no-resume", action="store_true", help="start over, ignoring a checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--export",
        action="store_true",
        help="only export the run's actor (best or last, whichever evaluates "
        "better) to RUN_DIR/candidate.pt",
    )
    p.add_argument("--replace-shipped", action="store_true",
                   help="with --export: write over the package's shipped expert instead")
    for f in dataclasses.fields(SACConfig):
        if f.name in ("task", "total_steps"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "hidden":
            p.add_argument(flag, type=int, nargs="+", default=None)
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        else:
            typ = int if str(f.type) == "int" else float if "float" in str(f.type) else str
            p.add_argument(flag, type=typ, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    name = get_task(args.task).name
    out = args.out or os.path.join("runs", "experts", name)
    if args.export:
        dest = export(out, name, replace_shipped=args.replace_shipped)
        print(f"exported {dest}")
        return
    kw = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SACConfig)
        if f.name not in ("task", "total_steps") and getattr(args, f.name) is not None
    }
    if args.steps is not None:
        kw["total_steps"] = args.steps
    cfg = SACConfig(task=name, **kw)
    res = train(cfg, out, resume=not args.no_resume, progress=not args.no_progress)
    if res["interrupted"]:
        state = "interrupted (resumable)"
    elif res["reached_stop_return"]:
        state = f"reached stop_return={cfg.stop_return}"
    else:
        state = "done"
    print(f"{state}: step={res['step']} updates={res['updates']} last_eval={res['last_eval']}")
    if res["interrupted"]:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
