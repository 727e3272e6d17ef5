"""The benchmark pipeline for one (task, method, latent dim, seed): train, probe, clone, decode, roll out.

Each stage writes its output into the run's folder before the next starts, so a killed run resumes
where it stopped and never recomputes a finished stage. LAM pretraining and latent BC also
checkpoint inside their stages (every CHECKPOINT_EVERY and BC_CHECKPOINT_EVERY steps). The
result is one JSON file, written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from masklam_bench import interrupts, metrics
from masklam_bench.allocator import tune_allocator
from masklam_bench.augment import random_shift
from masklam_bench.baselines import get_method
from masklam_bench.baselines.base import LamConfig, LatentActionMethod
from masklam_bench.baselines.policy import ActionDecoder, LatentPolicy
from masklam_bench.dataset import (
    dataset_metadata,
    file_sha256,
    labelled_subset,
    load_background_motion,
    load_frames,
    validate_dataset,
)
from masklam_bench.envs import env_id, get_task
from masklam_bench.envs.backgrounds import DAVIS_VIDEOS, distractor_videos
from masklam_bench.errors import PluginError, UserError
from masklam_bench.fileio import (
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    load_run_json,
    remove_temporaries,
)
from masklam_bench.mask_sources import parse_mask_source, resolve_masks
from masklam_bench.precision import uses_bf16
from masklam_bench.presets import (
    DATA_FIELDS_OF_DATASET,
    Preset,
    apply_overrides,
    get_preset,
    preset_record,
)
from masklam_bench.provenance import (
    check_identity,
    git_state,
    harness_sha256,
    lock_run_folder,
    method_sha256,
    method_source_files,
    recorded_identity,
    unlock_run_folder,
)
from masklam_bench.sam_masks import sam_masks_file, sidecar_settings
from masklam_bench.sampling import BATCH_KEYS, TransitionSampler
from masklam_bench.tblog import LAM_EVERY, Curves

RESULT_SCHEMA_VERSION = 1
"""Version of the result-file layout read by the leaderboard."""
CHECKPOINT_EVERY = 500
"""LAM pretraining steps between checkpoints."""
BC_CHECKPOINT_EVERY = 5000
"""Latent-BC steps between checkpoints (the `cpu` preset's 1,500 never write one)."""
THROUGHPUT_WARMUP_STEPS = 20
"""LAM steps at the start of a (resumed) stage 1 left out of ``lam_samples_per_s``."""
TIME_DEPENDENT_METRICS = frozenset({"lam_samples_per_s"})
"""Metrics that measure the machine, not the run: the same seed need not reproduce them."""
EVAL_SEED_BASE = 100_000
"""Evaluation episode i uses env seed EVAL_SEED_BASE + i: fixed across methods and runs."""
BC_LR = 4e-4
"""Latent behaviour cloning learning rate (MaskLAM code: 4e-4)."""
DECODER_LR = 1e-3
"""Action decoder learning rate (MaskLAM code: 1e-3)."""
DECODER_BATCH_PER_BC_BATCH = 4
"""The action decoder's batch is this many latent-BC batches, capped at the labelled budget."""
TB_IMAGES = 8
"""Test transitions whose FDM predictions, targets and agent masks go to TensorBoard."""
ENCODE_BATCH = 256
"""Transitions per forward pass when computing latents."""


@dataclasses.dataclass
class RunConfig:
    """One benchmark run; written into its result file."""

    method: str
    """Registered method name (``lapo``, ``masklam``, ...) or ``module:Class``."""
    task: str = "cheetah-run"
    """Task: ``cheetah-run``, ``walker-run``, ``hopper-hop`` or ``humanoid-walk``."""
    latent_dim: int = 64
    """Size of the latent action."""
    seed: int = 0
    """Seed of every random choice of training (data collection has its own, fixed seed)."""
    preset: str = "cpu"
    """Size preset: ``smoke``, ``cpu`` or ``gpu``."""
    device: str = "cpu"
    """Torch device, e.g. ``cpu`` or ``cuda``."""
    data_root: str = "data"
    """Folder holding datasets as ``<data_root>/<preset>/<task>``; collected when missing."""
    runs_root: str = "runs"
    """Folder of per-run checkpoints (resumable)."""
    results_dir: str = "results"
    """Where the result JSON goes (the committed leaderboard's files are added to
    ``leaderboards/results`` by hand: BENCHMARK.md, "Submitting a method")."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    compile: bool = False
    """``torch.compile`` the method's networks (CUDA only)."""
    mask_source: str = "exact"
    """Agent masks the method trains with: ``exact`` (simulator), ``sam2`` (stored SAM 2 masks), or a
    corruption of the exact masks: ``dilate-R``, ``erode-R``, ``flip-P``, ``drop-P``."""
    bf16: bool | None = None
    """bf16 autocast for the LAM, latent BC and decoder: None uses it where the device computes in
    bf16 fast (CUDA, CPUs with AVX-512 or AMX) and float32 elsewhere
    (:func:`masklam_bench.precision.uses_bf16`); True or False forces it."""
    data_seed: int = 0
    """Seed of dataset collection (shared by all methods so their data are identical)."""
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Preset fields replaced for this run, ``{"train.lam_steps": 6000}`` (``--set``)."""
    tensorboard: bool = True
    """Write TensorBoard curves to ``<runs_root>/<run>/tb/`` (``--no-tensorboard``: off). Not part
    of the run's identity: the curves change no result."""

    @property
    def variant(self) -> str:
        """What sets this run apart from the preset's protocol, e.g. ``+fp32+set-1a2b3c``."""
        tags = [] if uses_bf16(self.bf16, self.device) else ["fp32"]
        if distractor_videos() == DAVIS_VIDEOS:  # $MASKLAM_DAVIS_DIR: never a procedural run's name
            tags.append("davis")
        if self.data_seed:
            tags.append(f"data{self.data_seed}")
        if self.overrides:
            digest = hashlib.sha256(json.dumps(self.overrides, sort_keys=True).encode())
            tags.append(f"set-{digest.hexdigest()[:6]}")
        return "".join(f"+{t}" for t in tags)

    @property
    def run_name(self) -> str:
        """Self-describing name: ``{task}__{method}__d{dim}__s{seed}__{preset}{variant}``.

        Methods whose latent is the action have no latent dim and leave ``d{dim}`` out.
        """
        method = self.method.replace(":", "-").replace("/", "-")
        label = parse_mask_source(self.mask_source).label
        mask = "" if label == "exact" else f"[{label}]"
        dim = f"__d{self.latent_dim}" if self.latent_dim else ""
        return f"{self.task}__{method}{mask}{dim}__s{self.seed}__{self.preset}{self.variant}"


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A stage checkpoint, or None if absent; a corrupt one is reported, not silently reused."""
    if not path.exists():
        return None
    return load_checkpoint(path)  # weights only: RNG states are plain ints and tensors


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def dataset_path(config: RunConfig) -> Path:
    """Where the run's dataset lives: ``<data_root>/<preset>[+variant]/<task>``.

    Overrides of what is collected (episodes, noise), another data seed and DAVIS-2017 videos
    (``$MASKLAM_DAVIS_DIR``) get a folder of their own, so they never collide with the preset's
    dataset.
    """
    changed = {k: v for k, v in sorted(config.overrides.items())
               if k.startswith("data.") and k[5:] in DATA_FIELDS_OF_DATASET}
    tag = ""
    if changed or config.data_seed:
        key = json.dumps({"data": changed, "seed": config.data_seed}, sort_keys=True)
        tag = "+data-" + hashlib.sha256(key.encode()).hexdigest()[:6]
    if distractor_videos() == DAVIS_VIDEOS:  # DAVIS frames beside, not over, procedural ones
        tag += "+davis"
    return Path(config.data_root) / f"{config.preset}{tag}" / get_task(config.task).name


def ensure_dataset(config: RunConfig, preset: Preset, progress: bool = True) -> Path:
    """Return the run's dataset folder, collecting it (or resuming an interrupted collection).

    A finished dataset is reused only if it was made with the same settings and the same expert
    weights (``collect`` compares them): a dataset of an older shipped expert is reported, not
    silently mixed with results of the current one.
    """
    from masklam_bench.collect import collect

    data = preset.data
    return collect(
        env_id(config.task, "id"), dataset_path(config),
        episodes=data.train_episodes + data.test_episodes, test_episodes=data.test_episodes,
        episode_steps=data.episode_steps, action_noise=data.action_noise,
        seed=config.data_seed, preset=preset.name, progress=progress,
    )


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------
def build_method(config: RunConfig, preset: Preset, image_size: int, action_dim: int,
                 seed: int) -> LatentActionMethod:
    """Instantiate the method with the preset's networks, seeded."""
    cls = get_method(config.method)
    lam = LamConfig(latent_dim=config.latent_dim or 1, encoder=preset.train.encoder,
                    total_steps=preset.train.lam_steps, lr=preset.train.lam_lr,
                    warmup_steps=preset.train.lam_warmup,
                    bf16=uses_bf16(config.bf16, config.device))
    overrides = cls.config_overrides() if hasattr(cls, "config_overrides") else {}
    lam = dataclasses.replace(lam, **overrides)
    torch.manual_seed(seed)
    method = cls(lam, image_size, action_dim, config.device)
    if config.compile and config.device.startswith("cuda") and hasattr(method, "compile"):
        method.compile()
    return method


def train_lam(method: LatentActionMethod, sampler: TransitionSampler, steps: int, batch: int,
              run_dir: Path, seed: int, progress: bool,
              snapshot_steps: tuple[int, ...] = (),
              labelled: np.ndarray | None = None,
              tensorboard: bool = False) -> dict[str, Any]:
    """Stage 1: LAM pretraining on unlabelled transitions, checkpointed every CHECKPOINT_EVERY steps.

    Resumes from ``run_dir/lam_ckpt.pt``. The method's state after each step in
    ``snapshot_steps`` is also kept as ``lam_step{N}.pt`` (the probe curve reads them). A method
    with ``labelled_batch_size > 0`` also gets ``batch["labelled"]``, drawn from the transitions
    ``labelled`` (the labelled subset) with a generator of its own, so the main batches stay
    those of every other method. Batches hold only the entries the method's ``batch_keys()``
    names (all of them for a method without one); the random draws do not depend on it. With
    ``tensorboard`` the step logs go to ``run_dir/tb/lam`` every LAM_EVERY steps.
    """
    ckpt_path = run_dir / "lam_ckpt.pt"
    ckpt = _load_checkpoint(ckpt_path)
    rng = np.random.default_rng([seed, 1])
    labelled_size = method.labelled_batch_size
    if labelled_size and labelled is None:
        raise ValueError(f"Method {type(method).__name__} asks for labelled batches "
                         f"(labelled_batch_size={labelled_size}); pass the labelled subset.")
    labelled_rng = np.random.default_rng([seed, 5]) if labelled_size else None
    start, log, elapsed = 0, {"loss": []}, 0.0
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        rng.bit_generator.state = ckpt["rng"]
        if labelled_rng is not None:
            labelled_rng.bit_generator.state = ckpt["labelled_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start, log, elapsed = ckpt["step"], ckpt["log"], ckpt["elapsed"]
    t0 = time.perf_counter() - elapsed
    keys = method_batch_keys(method)
    curves = Curves(run_dir, "lam", tensorboard and steps > start, purge_step=start)
    bar = tqdm(range(start, steps), desc="stage 1/5 LAM", disable=not progress, initial=start,
               total=steps)
    # Throughput leaves out the first steps of this process: they include torch.compile's
    # tracing and CUDA's kernel selection, which a long run pays once.
    warm = min(THROUGHPUT_WARMUP_STEPS, max(0, (steps - start) // 2))
    t_warm = None
    for step in bar:
        interrupts.raise_pending()
        if step == start + warm:
            t_warm = time.perf_counter()
        batch_dict = sampler.sample(rng, batch, keys=keys)
        if labelled_rng is not None:
            batch_dict["labelled"] = sampler.sample(labelled_rng, labelled_size, pool=labelled)
        logs = method.train_step(batch_dict)
        if not isinstance(logs, dict) or "loss" not in logs:
            raise PluginError(f"{type(method).__name__}.train_step must return a dict holding at "
                              f"least 'loss' (the step's loss); it returned {logs!r:.80}.")
        log["loss"].append(float(logs["loss"]))
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
        if step % LAM_EVERY == 0 or step + 1 == steps:
            curves.scalars(logs, step, "lam")
        if step + 1 in snapshot_steps:
            atomic_torch_save({"method": method.state_dict(), "step": step + 1},
                              run_dir / f"lam_step{step + 1}.pt")
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            state = {"method": method.state_dict(), "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "step": step + 1, "log": log,
                     "elapsed": time.perf_counter() - t0}
            if labelled_rng is not None:
                state["labelled_rng"] = labelled_rng.bit_generator.state
            curves.flush()  # a resume from this checkpoint drops the curves' later points
            atomic_torch_save(state, ckpt_path)
    curves.close()
    log["seconds"] = time.perf_counter() - t0
    if t_warm is not None:
        timed = time.perf_counter() - t_warm
        log["samples_per_s"] = (steps - start - warm) * batch / max(timed, 1e-9)
    return log


def method_batch_keys(method: LatentActionMethod) -> frozenset[str] | None:
    """The batch entries ``method.train_step`` reads (its ``batch_keys()``), or None for all.

    ``labelled`` is a batch of its own, not an entry; a method naming an entry the sampler does
    not make gets every entry, and its own key check then names what is missing.
    """
    named = getattr(method, "batch_keys", None)
    if not callable(named):
        return None
    keys = frozenset(named()) - {"labelled"}
    return keys if keys <= BATCH_KEYS else None


@torch.no_grad()
def encode_all(method: LatentActionMethod, sampler: TransitionSampler, index: np.ndarray,
               done: Callable[[int], Any] | None = None) -> np.ndarray:
    """Latents (len(index), D) float32 of k = 1 transitions; ``done(n)`` after each n encoded."""
    out = []
    for chunk in np.array_split(index, max(1, int(np.ceil(len(index) / ENCODE_BATCH)))):
        if len(chunk):
            latents = method.encode(sampler.batch(chunk))
            if tuple(latents.shape) != (len(chunk), method.latent_dim):
                raise PluginError(
                    f"{type(method).__name__}.encode returned latents of shape "
                    f"{tuple(latents.shape)} for a batch of {len(chunk)}; it must return "
                    f"(batch, latent_dim) = ({len(chunk)}, {method.latent_dim}).")
            out.append(latents.float().cpu().numpy())
            if done is not None:
                done(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, method.latent_dim), np.float32)


def probe(method: LatentActionMethod, train: TransitionSampler, test: TransitionSampler,
          fit_index: np.ndarray, targets: dict[str, tuple[np.ndarray, np.ndarray]],
          progress: bool = False, desc: str = "stage 2/5 probe") -> dict[str, float]:
    """Stage 2: NMSE of linear probes z -> target, fitted on train and scored on held-out data.

    ``targets`` maps a name to per-frame arrays (train split, test split); the probe of each is
    fitted on the ``fit_index`` transitions and scored on every test transition. With
    ``progress``, a bar counts the transitions encoded (most of the stage's time).
    """
    total = len(fit_index) + len(test.data.transitions)
    with tqdm(total=total, desc=desc, unit="transition", disable=not progress) as bar:
        z_fit = encode_all(method, train, fit_index, bar.update)
        z_test = encode_all(method, test, test.data.transitions, bar.update)
    return metrics.linear_probe_nmses(z_fit, z_test, {
        name: (y_train[fit_index], y_test[test.data.transitions])
        for name, (y_train, y_test) in targets.items()})


def _policy_act(policy: LatentPolicy, decoder: ActionDecoder, stacks: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return decoder(policy(stacks)).float().cpu().numpy()


def evaluate_policy(policy: LatentPolicy, decoder: ActionDecoder, env_names: dict[str, str],
                    episodes: int, episode_steps: int, context_frames: int, device: torch.device,
                    progress: bool, desc: str) -> dict[str, list[float]]:
    """Stage 5: roll out ``decoder(policy(last frames))`` in every env of ``env_names`` at once.

    ``env_names`` maps a label (``id``, ``ood``) to an env id; each gets ``episodes`` episodes with
    seeds ``EVAL_SEED_BASE + i``. All of them step together in one vector env (one process per
    episode), so the policy runs one batched forward pass per step for all envs.
    """
    import functools

    import gymnasium as gym

    names = [name for name in env_names.values() for _ in range(episodes)]
    seeds = [EVAL_SEED_BASE + i for _ in env_names for i in range(episodes)]
    # Specs, not ids: a spawned worker has not imported masklam_bench, so its registry lacks them.
    makers = [functools.partial(gym.make, gym.spec(name)) for name in names]
    envs = (gym.vector.AsyncVectorEnv(makers, context="spawn") if len(makers) > 1
            else gym.vector.SyncVectorEnv(makers))
    try:
        obs, _ = envs.reset(seed=seeds)
        history = [obs] * context_frames
        returns = np.zeros(len(names))
        policy.eval()
        decoder.eval()
        for _ in tqdm(range(episode_steps), desc=desc, disable=not progress):
            interrupts.raise_pending()
            stacks = torch.from_numpy(np.stack(history[-context_frames:], axis=1))
            stacks = stacks.permute(0, 1, 4, 2, 3).contiguous().to(device)  # (B, c, 3, H, W)
            action = np.clip(_policy_act(policy, decoder, stacks), -1.0, 1.0)
            obs, reward, terminated, truncated, _ = envs.step(action.astype(np.float32))
            returns += reward
            history.append(obs)
            if np.any(terminated | truncated):
                break
    finally:
        envs.close()
    return {label: returns[i * episodes:(i + 1) * episodes].tolist()
            for i, label in enumerate(env_names)}


# ------------------------------------------------------------------------------------------------
# The whole pipeline: a list of stages behind one resume-and-timing helper
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """What every stage of one run reads: config, data, samplers, the method and the timings."""

    config: RunConfig
    preset: Preset
    cls: type[LatentActionMethod]
    run_dir: Path
    data_dir: Path
    meta: dict[str, Any]
    train: Any
    test: Any
    train_s: TransitionSampler
    test_s: TransitionSampler
    method: LatentActionMethod
    device: torch.device
    progress: bool
    identity: dict[str, Any]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    mask_stats: dict[str, float] | None = None

    def record(self, key: str, seconds: float) -> None:
        """Keep how long a stage took (a resumed run keeps the original figures)."""
        self.timings[key] = seconds
        atomic_write_json(self.run_dir / "timings.json", self.timings)


T = TypeVar("T")


_DOWNSTREAM = {
    "lam_final.pt": ("curve.json", "probe.json", "bc_ckpt.pt", "bc.pt", "decoder.pt", "eval.json"),
    "bc.pt": ("decoder.pt", "eval.json"),
    "decoder.pt": ("eval.json",),
}
"""Artefacts made from a stage's artefact: removed when that stage is computed again (its file
deleted, say), so that a later stage is never loaded from the old one."""


def _stage(run: _Run, key: str, path: Path, compute: Callable[[], T],
           save: Callable[[T, Path], None], load: Callable[[Path], T],
           seconds: Callable[[T], float] | None = None) -> T:
    """Load a finished stage's artefact; else compute it, time it and write it atomically.

    ``seconds`` reads the stage's own time from its value (LAM training times itself across
    resumes inside the stage); otherwise the wall time of ``compute`` is recorded.
    """
    if path.exists():
        return load(path)
    for name in _DOWNSTREAM.get(path.name, ()):  # made from the artefact about to be redone
        (run.run_dir / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    value = compute()
    save(value, path)
    run.record(key, seconds(value) if seconds else time.perf_counter() - t0)
    return value


M = TypeVar("M", bound=torch.nn.Module)


def _module_stage(run: _Run, key: str, path: Path, name: str, module: M,
                  compute: Callable[[], M], seconds: Callable[[M], float] | None = None) -> M:
    """:func:`_stage` for a stage whose artefact is one module's weights, saved under ``name``."""
    def load(p: Path) -> M:
        module.load_state_dict(_load_checkpoint(p)[name])
        return module

    return _stage(run, key, path, compute,
                  lambda m, p: atomic_torch_save({name: m.state_dict()}, p), load, seconds)


def _save_json(value: dict[str, Any], path: Path) -> None:
    atomic_write_json(path, value)


def _stage_lam(run: _Run, snapshot_steps: tuple[int, ...] = ()) -> dict[str, Any]:
    """Stage 1: LAM pretraining (none for methods that skip it)."""
    steps = 0 if (run.cls.latent_is_action or run.cls.skips_pretraining) \
        else run.preset.train.lam_steps

    def save(log: dict[str, Any], path: Path) -> None:
        atomic_torch_save({"method": run.method.state_dict(), "log": log}, path)
        (run.run_dir / "lam_ckpt.pt").unlink(missing_ok=True)  # only once the final one is safe

    def load(path: Path) -> dict[str, Any]:
        done = _load_checkpoint(path)
        run.method.load_state_dict(done["method"])
        return done["log"]

    labelled = (labelled_subset(run.train, run.preset.data.labelled_transitions)
                if run.cls.labelled_batch_size else None)
    def compute() -> dict[str, Any]:
        log = train_lam(run.method, run.train_s, steps, run.preset.train.lam_batch, run.run_dir,
                        run.config.seed, run.progress, snapshot_steps, labelled,
                        run.config.tensorboard)
        if steps:
            _lam_images(run, steps)
        return log

    return _stage(run, "lam_s", run.run_dir / "lam_final.pt", compute, save, load,
                  seconds=lambda log: log["seconds"])


def _lam_images(run: _Run, step: int) -> None:
    """TensorBoard images at the end of stage 1: the FDM's predictions of TB_IMAGES test
    transitions beside their targets and agent masks (methods with a pixel FDM: ``predict``)."""
    if not run.config.tensorboard or not callable(getattr(run.method, "predict", None)):
        return
    test = run.test.transitions
    index = test[np.linspace(0, len(test) - 1, min(TB_IMAGES, len(test))).astype(np.int64)]
    batch = run.test_s.batch(index)
    with Curves(run.run_dir, "lam", purge_step=step) as curves:
        curves.images("fdm/predicted", run.method.predict(batch).cpu().numpy(), step)
        curves.images("fdm/target", batch["target"].cpu().numpy(), step)
        mask = batch["target_mask"][:, None].cpu().numpy().astype(np.uint8) * 255
        curves.images("fdm/agent_mask", mask, step)


def probe_fit_index(run: _Run) -> np.ndarray:
    """Stage 2's fit rows: a seeded draw of ``probe_fit_transitions`` train transitions."""
    n_fit = min(run.preset.train.probe_fit_transitions, len(run.train.transitions))
    fit_rng = np.random.default_rng([run.config.seed, 2])
    return np.sort(fit_rng.choice(run.train.transitions, size=n_fit, replace=False))


def probe_targets(run: _Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stage 2's targets, (train, test) per-frame arrays: the action, and the background's
    exogenous motion where the dataset records it."""
    targets = {"probe_nmse": (run.train.actions, run.test.actions)}
    motion = {split: load_background_motion(run.data_dir, split) for split in ("train", "test")}
    if motion["train"] is not None:
        targets["distractor_nmse"] = (motion["train"], motion["test"])
    return targets


def _stage_probe(run: _Run) -> dict[str, Any]:
    """Stage 2: linear probes on the frozen IDM and on an untrained one (the control).

    Targets: z -> a_t, and z -> the background's exogenous motion (how much of the distractor
    the latent carries).
    """
    def compute() -> dict[str, Any]:
        config, train = run.config, run.train
        fit_index, targets = probe_fit_index(run), probe_targets(run)
        res: dict[str, Any] = {}
        if run.cls.latent_is_action:  # the latent is the action: nothing to probe
            return {f"{name}{suffix}": None for name in targets for suffix in ("", "_untrained")}
        untrained = build_method(config, run.preset, train.image_size, train.action_dim,
                                 config.seed)
        for suffix, model in (("", run.method), ("_untrained", untrained)):
            nmse = probe(model, run.train_s, run.test_s, fit_index, targets, run.progress,
                         f"stage 2/5 probe{' (untrained control)' if suffix else ''}")
            res.update({f"{name}{suffix}": value for name, value in nmse.items()})
        return res

    return _stage(run, "probe_s", run.run_dir / "probe.json", compute, _save_json, load_run_json)


def _stage_bc(run: _Run) -> LatentPolicy:
    """Stage 3: latent behaviour cloning o -> z (on all train data, or the labelled subset)."""
    config = run.config
    # Seed right before building, so a run resumed after stage 2 starts from the same weights.
    torch.manual_seed(config.seed + 3)
    policy = LatentPolicy(run.method.config, run.train.image_size,
                          run.method.latent_dim).to(run.device)

    ckpt = run.run_dir / "bc_ckpt.pt"
    fit_seconds = [0.0]

    def compute() -> LatentPolicy:
        t_start = time.perf_counter()
        pool = (labelled_subset(run.train, run.preset.data.labelled_transitions)
                if run.cls.bc_on_labelled_only else run.train.transitions)
        z_all = torch.from_numpy(encode_all(run.method, run.train_s, pool)).to(run.device)
        t_fit = time.perf_counter()
        # One generator draws the rows and then their shifts (none when off, so the rows are as
        # they were), and is checkpointed with the fit.
        rng = np.random.default_rng([config.seed, 3])
        shift = run.preset.train.bc_random_shift

        def inputs(index: np.ndarray) -> torch.Tensor:
            return random_shift(run.train_s.policy_input(index), shift, rng)

        losses, fit_s = _fit_indexed(
            policy, inputs, z_all, pool, run.preset.train.bc_steps, run.preset.train.bc_batch,
            BC_LR, rng, "stage 3/5 latent BC", run.progress, config.bf16, ckpt=ckpt)
        # This process's encoding, and the fit's time across resumes (as stage 1 counts it).
        fit_seconds[0] = (t_fit - t_start) + fit_s
        with Curves(run.run_dir, "bc", config.tensorboard) as curves:
            curves.series("bc/loss", losses)
        return policy

    policy = _module_stage(run, "bc_s", run.run_dir / "bc.pt", "policy", policy, compute,
                           seconds=lambda _: fit_seconds[0])
    ckpt.unlink(missing_ok=True)  # only once bc.pt is safe
    return policy


@torch.no_grad()
def policy_latents(policy: LatentPolicy, sampler: TransitionSampler,
                   index: np.ndarray) -> np.ndarray:
    """The latent policy's predictions z(o_t) for ``index`` (LAOM trains its decoder on these)."""
    policy.eval()
    out = [policy(sampler.policy_input(chunk)).float().cpu().numpy()
           for chunk in np.array_split(index, max(1, int(np.ceil(len(index) / ENCODE_BATCH))))
           if len(chunk)]
    return np.concatenate(out)


def _new_decoder(run: _Run) -> ActionDecoder:
    """Stage 4's untrained decoder, seeded right before it is built (so a resume matches)."""
    torch.manual_seed(run.config.seed + 4)
    return ActionDecoder(run.method.latent_dim, run.train.action_dim).to(run.device)


def _fit_decoder(run: _Run, policy: LatentPolicy, decoder: ActionDecoder,
                 inputs: str) -> ActionDecoder:
    """Fit ``decoder`` z -> a on the labelled subset, z from ``inputs`` (``idm``: the IDM's
    latents of the labelled transitions; ``policy``: the latent policy's predictions on them)."""
    config, preset = run.config, run.preset
    labelled = labelled_subset(run.train, preset.data.labelled_transitions)
    if inputs == "policy":
        z = policy_latents(policy, run.train_s, labelled)
    else:
        z = encode_all(run.method, run.train_s, labelled)
    z_lab = torch.from_numpy(z).to(run.device)
    a_lab = torch.from_numpy(run.train.actions[labelled]).to(run.device)
    losses, _ = _fit_indexed(
        decoder, lambda rows: z_lab[rows], a_lab, np.arange(len(labelled)),
        preset.train.decoder_steps,
        min(preset.train.bc_batch * DECODER_BATCH_PER_BC_BATCH, len(labelled)), DECODER_LR,
        np.random.default_rng([config.seed, 4]), "stage 4/5 decoder", run.progress, config.bf16)
    with Curves(run.run_dir, "decoder", config.tensorboard) as curves:
        curves.series("decoder/loss", losses)
    return decoder


def _stage_decoder(run: _Run, policy: LatentPolicy) -> ActionDecoder:
    """Stage 4: action decoder z -> a on the labelled subset."""
    decoder = _new_decoder(run)
    return _module_stage(
        run, "decoder_s", run.run_dir / "decoder.pt", "decoder", decoder,
        lambda: _fit_decoder(run, policy, decoder, run.preset.train.decoder_inputs))


@dataclasses.dataclass
class TrainedRun:
    """A run finished through stage 4, loaded for analysis (``benchmarks/decoder_protocols.py``)."""

    run: _Run
    policy: LatentPolicy
    decoder: ActionDecoder

    def other_decoder(self, inputs: str) -> ActionDecoder:
        """A decoder fitted as stage 4 would fit it under ``train.decoder_inputs=inputs`` (same
        seed, data and schedule); nothing is written to the run's folder."""
        run = dataclasses.replace(self.run, config=dataclasses.replace(self.run.config,
                                                                       tensorboard=False))
        return _fit_decoder(run, self.policy, _new_decoder(run), inputs)


def load_trained(config: RunConfig, check_code: bool = True) -> TrainedRun:
    """Open a run whose stages 1-4 are on disk and load its LAM, latent policy and decoder.

    The run's identity is checked as for a resume (other settings, data or code are refused;
    ``check_code=False`` accepts other method source, whose networks must still load); a run
    that has not finished stage 4 is a :class:`UserError`, and nothing is trained. Finished
    stages are only read; the run's ``config.json`` is rewritten from ``config``, as by a resume.
    """
    run_dir = Path(config.runs_root) / resolve(config)[0].run_name
    missing = [name for name in ("lam_final.pt", "bc.pt", "decoder.pt")
               if not (run_dir / name).exists()]
    if missing:
        raise UserError(f"Run folder {run_dir} has not finished stage 4 (missing "
                        f"{', '.join(missing)}); run it first.")
    run = _open_run(config, progress=False, check_code=check_code)
    try:
        _stage_lam(run)
        policy = _stage_bc(run)
        return TrainedRun(run, policy, _stage_decoder(run, policy))
    finally:
        unlock_run_folder(run.run_dir)  # read only from here on


def load_run_folder(run_dir: str | os.PathLike, check_code: bool = True) -> TrainedRun:
    """:func:`load_trained` for the run in ``run_dir``, whose ``config.json`` names its settings
    (its runs root is taken to be the folder's parent, wherever the run was made)."""
    run_dir = Path(run_dir)
    try:
        settings = json.loads((run_dir / "config.json").read_text())
        settings.setdefault("bf16", True)  # folders made before the precision was decided
        config = RunConfig(**settings)
    except FileNotFoundError:
        raise UserError(f"{run_dir} has no config.json: not a run folder.") from None
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{run_dir}/config.json is unreadable ({exc}).") from None
    config.runs_root = str(run_dir.parent)
    return load_trained(config, check_code)


def _stage_eval(run: _Run, policy: LatentPolicy, decoder: ActionDecoder) -> dict[str, Any]:
    """Stage 5: rollouts in the ID and OOD envs (the oracle: the clean env, ID only)."""
    task = run.config.task

    def compute() -> dict[str, Any]:
        # The oracle has no OOD env of its own: it is scored in the clean env, and its OOD
        # return is a copy marked by env ids (result["ood_env_id"] == result["env_id"]).
        splits = {"id": "none"} if run.cls.uses_clean_data else {"id": "id", "ood": "ood"}
        returns = evaluate_policy(
            policy, decoder, {name: env_id(task, split) for name, split in splits.items()},
            run.preset.train.eval_episodes, run.preset.train.eval_episode_steps,
            run.method.config.context_frames, run.device, run.progress,
            f"stage 5/5 eval {'+'.join(splits)}")
        returns.setdefault("ood", returns["id"])
        return returns

    return _stage(run, "eval_s", run.run_dir / "eval.json", compute, _save_json, load_run_json)


def resolve(config: RunConfig) -> tuple[RunConfig, Preset]:
    """The config with its task's full name (no latent dim for action-latent methods, and its
    precision decided), and its preset with the config's overrides applied."""
    task = get_task(config.task)
    cls = get_method(config.method)
    dim = 0 if cls.latent_is_action else config.latent_dim
    # The mask source as its label: ERODE-2 and erode-2.0 are erode-2's run, resumed as one.
    config = dataclasses.replace(config, task=task.name, latent_dim=dim,
                                 bf16=uses_bf16(config.bf16, config.device),
                                 mask_source=parse_mask_source(config.mask_source).label)
    return config, apply_overrides(get_preset(config.preset), config.overrides)


def _open_run(config: RunConfig, progress: bool, check_code: bool = True) -> _Run:
    """Resolve the config, make sure the dataset exists, check the run's identity, load data.

    ``check_code=False`` accepts stages made with other method source (analyses of finished runs
    only: a run never resumes on other code)."""
    tune_allocator()
    config, preset = resolve(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.runs_root) / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_folder(run_dir)  # one process per run folder (a sweep launched twice, say)
    remove_temporaries(run_dir)  # half-written files of a process killed outright
    try:
        return _load_run(config, preset, run_dir, progress, check_code)
    except BaseException:
        unlock_run_folder(run_dir)
        raise


def _load_run(config: RunConfig, preset: Preset, run_dir: Path, progress: bool,
              check_code: bool) -> _Run:
    """:func:`_open_run` once the run folder is locked: data, identity, method and samplers."""
    device = torch.device(config.device)
    data_dir = ensure_dataset(config, preset, progress)
    validate_dataset(data_dir)  # every byte against the collection's sha256: about 1 s per GB
    meta = dataset_metadata(data_dir)
    cls = get_method(config.method)
    # Read once: the source files hashed here are the ones this process imported.
    identity = run_identity(config, preset, cls, meta)
    old = None if check_code else recorded_identity(run_dir)
    if old is not None:  # an analysis: other code and threads are fine
        identity.update({k: old[k] for k in ("method_sha256", "harness_sha256", "cpu_threads")
                         if k in old})
    check_identity(run_dir, identity)
    atomic_write_json(run_dir / "config.json", dataclasses.asdict(config))
    # Only the oracle reads the paired clean frames; the others leave them on disk.
    train = load_frames(data_dir, "train", clean=cls.uses_clean_data)
    test = load_frames(data_dir, "test", clean=cls.uses_clean_data)
    method = build_method(config, preset, train.image_size, train.action_dim, config.seed)
    lam_cfg = method.config
    mask_label = parse_mask_source(config.mask_source).label
    masks = {split: None if mask_label == "exact"
             else resolve_masks(mask_label, data, data_dir, config.seed)
             for split, data in (("train", train), ("test", test))}
    train_s = TransitionSampler(train, lam_cfg.context_frames, lam_cfg.max_future,
                                use_clean=cls.uses_clean_data, device=device,
                                masks=masks["train"])
    test_s = TransitionSampler(test, lam_cfg.context_frames, 1, use_clean=cls.uses_clean_data,
                               device=device, masks=masks["test"])
    timings_file = run_dir / "timings.json"
    timings = load_run_json(timings_file, "delete it (only the stages' recorded times go)") \
        if timings_file.exists() else {}
    stats = None if masks["train"] is None else mask_stats(mask_label, masks["train"], train)
    return _Run(config, preset, cls, run_dir, data_dir, meta, train, test, train_s, test_s,
                method, device, progress, identity, timings, stats)


EMPTY_MASKS_WARNING = 0.5
"""Share of train frames without an agent pixel above which a mask source is warned about."""


def mask_stats(label: str, masks: np.ndarray, data: Any) -> dict[str, float]:
    """How much of the agent a mask source leaves, beside the exact masks (recorded in the
    result file); a warning when most frames are left with no agent pixel at all, where a
    mask-weighted loss has nothing to weigh (``erode-R`` on a thin body)."""
    # The exact masks' share counted on their packed bits (zero-padded rows), not unpacked again.
    exact_share = int(np.bitwise_count(data.masks).sum()) / masks[0].size / data.num_frames
    stats = {"empty_frames": float(np.mean(~masks.any(axis=(1, 2)))),
             "agent_share": float(masks.mean()), "exact_agent_share": exact_share}
    if stats["empty_frames"] > EMPTY_MASKS_WARNING:
        print(f"warning: mask source {label} leaves {stats['empty_frames']:.0%} of the train "
              f"frames without an agent pixel (agent share {stats['agent_share']:.2%} against "
              f"{stats['exact_agent_share']:.2%} exact): a mask-weighted loss has nothing to "
              "weigh there. The result records it (mask_stats).", file=sys.stderr)
    return stats


def run_identity(config: RunConfig, preset: Preset, cls: type[LatentActionMethod],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a run's result: settings, the resolved preset, data, the method's
    code and the suite's (:func:`provenance.harness_sha256`), the torch CPU threads (on the CPU
    another count rounds differently), whether the networks are compiled (CUDA), and the SAM 2
    masks a ``sam2`` mask source trains on."""
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("data_root", "runs_root", "results_dir", "threads", "compile",
                             "tensorboard")}
    files = meta.get("files", {})
    cuda = torch.device(config.device).type == "cuda"
    identity = {"settings": settings, "preset": preset_record(preset),
                "dataset_sha256": {name: f.get("sha256") for name, f in sorted(files.items())},
                "method_sha256": method_sha256(cls), "harness_sha256": harness_sha256(),
                "cpu_threads": None if cuda else torch.get_num_threads(),
                "compiled": bool(config.compile and cuda)}
    if parse_mask_source(config.mask_source).kind == "sam2":
        # Checked before the identity is recorded: a run started before its masks were made
        # must not record "no masks" and then refuse to resume once they exist.
        identity["sam_masks_sha256"] = file_sha256(sam_masks_file(meta["path"]))
    return identity


def run(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage of one benchmark run and write its result file."""
    r = _open_run(config, progress)
    try:
        lam_log = _stage_lam(r)
        probe_res = _stage_probe(r)
        policy = _stage_bc(r)
        decoder = _stage_decoder(r, policy)
        returns = _stage_eval(r, policy, decoder)
        r.timings["total_s"] = sum(v for k, v in r.timings.items() if k != "total_s")
        result = _result(r, lam_log, probe_res, returns)
        path = Path(r.config.results_dir) / f"{r.config.run_name}.json"
        recorded = _recorded_result(path)
        if recorded is not None and _same_result(recorded, result):
            result = recorded  # a finished run run again: its file keeps when and how it was made
        else:
            # Written before the folder is unlocked, so that a second process on the same run
            # is refused ("in use") until the result exists, never let in just before it is.
            atomic_write_json(path, result)
    finally:
        unlock_run_folder(r.run_dir)
    with Curves(r.run_dir, "final", r.config.tensorboard) as curves:
        curves.scalars({k: v for k, v in result["metrics"].items()
                        if not k.startswith("ref_")}, 0, "final")
    return result


_MADE_WHEN = ("created", "code", "versions", "machine")
"""Result entries that say when, where and with what code a result was written, not what it is:
a finished run run again keeps its file when everything else is the same."""


def _recorded_result(path: Path) -> dict[str, Any] | None:
    """The result file at ``path``, or None if there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_result(recorded: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether ``recorded`` holds ``result`` but for :data:`_MADE_WHEN` (JSON's view of both)."""
    def what(r: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in r.items() if k not in _MADE_WHEN}, sort_keys=True)

    return what(recorded) == what(result)


def _result_metrics(r: _Run, lam_log: dict[str, Any], probe_res: dict[str, Any],
                    returns: dict[str, Any]) -> dict[str, Any]:
    lo, hi = r.meta.get("ref_min_score"), r.meta.get("ref_max_score")
    out: dict[str, Any] = dict(probe_res)
    for name in ("id", "ood"):
        mean_return = float(np.mean(returns[name]))
        out[f"return_{name}"] = mean_return
        out[f"return_{name}_episodes"] = returns[name]
        out[f"normalized_return_{name}"] = (
            metrics.normalized_return(mean_return, lo, hi)
            if lo is not None and hi is not None and hi != lo else None)
    out.update(ref_min_score=lo, ref_max_score=hi, lam_samples_per_s=lam_log.get("samples_per_s"))
    return out


def _result(r: _Run, lam_log: dict[str, Any], probe_res: dict[str, Any],
            returns: dict[str, Any]) -> dict[str, Any]:
    """The result file's content: what was run, with what, and what it measured."""
    from masklam_bench.collect import package_versions

    config, cls, task = r.config, r.cls, r.config.task
    mask_label = parse_mask_source(config.mask_source).label
    name = cls.name or config.method
    plugin = ":" in config.method
    identity = r.identity
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "run_name": config.run_name,
        "task": task,
        "env_id": env_id(task, "none" if cls.uses_clean_data else "id"),
        "ood_env_id": env_id(task, "none" if cls.uses_clean_data else "ood"),
        "method": name,
        "method_label": name if mask_label == "exact" else f"{name}[{mask_label}]",
        "method_path": config.method if plugin else None,
        "latent_is_action": cls.latent_is_action,
        "mask_source": mask_label,
        "latent_dim": r.method.latent_dim if cls.latent_is_action else config.latent_dim,
        "seed": config.seed,
        "preset": config.preset,
        "overrides": dict(sorted(config.overrides.items())),
        "config": {"run": _portable_run(config), "lam": dataclasses.asdict(r.method.config),
                   "preset": preset_record(r.preset)},
        "dataset": {"path": _portable_path(r.data_dir), "metadata": _small_meta(r.meta),
                    "sha256": identity["dataset_sha256"],
                    "train_transitions": len(r.train.transitions),
                    "test_transitions": len(r.test.transitions),
                    # The batch's videos; the oracle's clean env plays none, but it records
                    # them too, so that it sits in its batch's leaderboard table.
                    "distractor_videos": distractor_videos()},
        "sam_masks": _sam_masks_record(r) if mask_label == "sam2" else None,
        **({"mask_stats": r.mask_stats} if r.mask_stats is not None else {}),
        "code": {**git_state(), "method_sha256": identity["method_sha256"],
                 "method_files": [p.name for p in method_source_files(cls)],
                 "harness_sha256": identity["harness_sha256"]},
        "versions": package_versions(),
        "env_versions": {"id": env_id(task, "id"), "ood": env_id(task, "ood"),
                         "clean": env_id(task, "none")},
        "device": str(r.device),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}".strip(),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": _result_metrics(r, lam_log, probe_res, returns),
        "timings": r.timings,
    }


def _sam_masks_record(r: _Run) -> dict[str, Any]:
    """What made the SAM 2 masks a ``sam2`` run trained on: their file's sha256, the checkpoint
    (``random`` for random weights, which the leaderboard refuses), config and tracking settings."""
    settings = sidecar_settings(r.data_dir) or {}
    keep = ("checkpoint", "weights", "config", "image_size", "random_weights", "box", "chunk",
            "hole_filling", "cpu_threads", "device", "sam2_version")
    record = {"sha256": r.identity["sam_masks_sha256"],
              **{k: settings[k] for k in keep if k in settings}}
    if os.path.isabs(str(record.get("checkpoint", ""))):  # a file's path, not a hub id
        record["checkpoint"] = _portable_path(record["checkpoint"])
    return record


def _portable_path(path: str | os.PathLike) -> str:
    """A folder as a result file records it: relative to the working folder when inside it, else
    its last two parts behind ``.../``; result files get committed and shared, and then name no
    folder of the machine that made them."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    cwd = Path.cwd().resolve()
    try:
        if cwd.parent != cwd:  # a working folder of "/" would keep every path but its slash
            return p.resolve().relative_to(cwd).as_posix()
    except ValueError:
        pass
    return "/".join(("...", *p.parts[-2:]))


def _portable_run(config: RunConfig) -> dict[str, Any]:
    """The run's settings for its result file, with its folders made portable."""
    run = dataclasses.asdict(config)
    for key in ("data_root", "runs_root", "results_dir"):
        run[key] = _portable_path(run[key])
    return run


def _small_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset metadata worth repeating in a result file (not per-file checksums)."""
    keep = ("dataset_id", "env_id", "ref_min_score", "ref_max_score", "action_noise", "policy",
            "expert", "total_episodes", "total_steps", "seed", "preset")
    small = {k: meta[k] for k in keep if k in meta}
    expert = small.get("expert")
    if isinstance(expert, dict) and os.path.isabs(str(expert.get("weights", ""))):
        small["expert"] = {**expert, "weights": _portable_path(expert["weights"])}  # --expert PATH
    return small


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)``, bit for bit, without its multiply
    by exactly 1 on the CPU.

    The clip scales every gradient by ``min(1, max_norm / (norm + 1e-6))``. Where that is 1 the
    multiply leaves each gradient as it was, so on the CPU, where reading the norm syncs nothing,
    it is skipped: at latent 8192 it is a read and a write of the policy head's 33M gradients a
    step. On other devices the multiply stays, since reading the norm would sync every step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or grads[0].device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    # Skipped only where clip_grad_norm_ clamps the coefficient to 1 (a NaN norm still scales).
    if not bool(max_norm / (total + 1e-6) >= 1.0):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


def _fit_indexed(module: torch.nn.Module, inputs, targets: torch.Tensor, pool: np.ndarray,
                 steps: int, batch: int, lr: float, rng: np.random.Generator, desc: str,
                 progress: bool, bf16: bool, ckpt: Path | None = None,
                 every: int | None = None) -> tuple[list[float], float]:
    """Regress ``module(inputs(pool[r])) -> targets[r]`` for random rows r (AdamW, cosine).

    With ``bf16`` the forward pass runs under bf16 autocast, as the LAM does. AdamW is fused: at
    latent 8192 the policy's head alone has 33M parameters, and the per-tensor AdamW then took as
    long as the network. With ``ckpt``, the weights, optimiser, schedule, ``rng`` and losses are
    saved there every ``every`` steps (default :data:`BC_CHECKPOINT_EVERY`) and a later call
    resumes from them, to the same weights as an uninterrupted fit. Returns the per-step losses
    and the fit's seconds across resumes.
    """
    every = every or BC_CHECKPOINT_EVERY
    module.train()
    device_type = next(module.parameters()).device.type
    params = list(module.parameters())
    opt = torch.optim.AdamW(params, lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    start, done_losses, elapsed = 0, [], 0.0
    state = _load_checkpoint(ckpt) if ckpt is not None else None
    if state is not None:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, done_losses, elapsed = state["step"], state["losses"], state["elapsed"]
    t0 = time.perf_counter() - elapsed
    losses = []
    for step in tqdm(range(start, steps), desc=desc, disable=not progress, initial=start,
                     total=steps):
        interrupts.raise_pending()
        rows = rng.integers(len(pool), size=batch)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            pred = module(inputs(pool[rows]))
        loss = torch.nn.functional.mse_loss(pred.float(), targets[torch.from_numpy(rows)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())  # read once at the end: a per-step read syncs a GPU
        if ckpt is not None and (step + 1) % every == 0 and step + 1 < steps:
            done_losses, losses = done_losses + torch.stack(losses).tolist(), []
            atomic_torch_save({"module": module.state_dict(), "opt": opt.state_dict(),
                               "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state(), "step": step + 1, "losses": done_losses,
                               "elapsed": time.perf_counter() - t0}, ckpt)
    return (done_losses + (torch.stack(losses).tolist() if losses else []),
            time.perf_counter() - t0)
