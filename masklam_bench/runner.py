"""The benchmark pipeline for one (task, method, latent dim, seed): train, probe, clone, decode, roll out.

Each stage writes its output into the run's folder before the next starts, so a killed run resumes
where it stopped and never recomputes a finished stage. LAM pretraining also checkpoints inside
the stage. The result is one JSON file, written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from masklam_bench import metrics
from masklam_bench.baselines import get_method
from masklam_bench.baselines.base import LamConfig, LatentActionMethod
from masklam_bench.baselines.policy import ActionDecoder, LatentPolicy
from masklam_bench.dataset import (
    dataset_metadata,
    labelled_subset,
    load_background_motion,
    load_frames,
)
from masklam_bench.envs import env_id, get_task
from masklam_bench.fileio import atomic_torch_save, atomic_write_json
from masklam_bench.mask_sources import parse_mask_source, resolve_masks
from masklam_bench.presets import Preset, get_preset
from masklam_bench.sampling import TransitionSampler

RESULT_SCHEMA_VERSION = 1
"""Version of the result-file layout read by the leaderboard."""
CHECKPOINT_EVERY = 500
"""LAM pretraining steps between checkpoints."""
THROUGHPUT_WARMUP_STEPS = 20
"""LAM steps at the start of a (resumed) stage 1 left out of ``lam_samples_per_s``."""
EVAL_SEED_BASE = 100_000
"""Evaluation episode i uses env seed EVAL_SEED_BASE + i: fixed across methods and runs."""
BC_LR = 4e-4
"""Latent behaviour cloning learning rate (MaskLAM code: 4e-4)."""
DECODER_LR = 1e-3
"""Action decoder learning rate (MaskLAM code: 1e-3)."""
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
    results_dir: str = "leaderboards/results"
    """Where the result JSON goes."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    compile: bool = False
    """``torch.compile`` the method's networks (CUDA only)."""
    mask_source: str = "exact"
    """Agent masks the method trains with: ``exact`` (simulator), ``sam2`` (stored SAM 2 masks), or a
    corruption of the exact masks: ``dilate-R``, ``erode-R``, ``flip-P``, ``drop-P``."""
    bf16: bool = True
    """bf16 autocast for the LAM, latent BC and decoder (CPU too: faster with bf16 instructions)."""
    data_seed: int = 0
    """Seed of dataset collection (shared by all methods so their data are identical)."""

    @property
    def run_name(self) -> str:
        """Self-describing name: ``{task}__{method}__d{dim}__s{seed}__{preset}``."""
        method = self.method.replace(":", "-").replace("/", "-")
        label = parse_mask_source(self.mask_source).label
        mask = "" if label == "exact" else f"[{label}]"
        return f"{self.task}__{method}{mask}__d{self.latent_dim}__s{self.seed}__{self.preset}"


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A stage checkpoint, or None if absent; a corrupt one is reported, not silently reused."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing
        raise ValueError(f"Checkpoint {path} is unreadable ({err}); delete it to redo the stage.")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def dataset_path(config: RunConfig) -> Path:
    """Where the run's dataset lives."""
    return Path(config.data_root) / config.preset / get_task(config.task).name


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
def _seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _build_method(config: RunConfig, preset: Preset, image_size: int, action_dim: int,
                  seed: int) -> LatentActionMethod:
    """Instantiate the method with the preset's networks, seeded."""
    cls = get_method(config.method)
    lam = LamConfig(latent_dim=config.latent_dim, encoder=preset.train.encoder,
                    total_steps=preset.train.lam_steps,
                    bf16=config.bf16)
    overrides = cls.config_overrides() if hasattr(cls, "config_overrides") else {}
    lam = dataclasses.replace(lam, **overrides)
    torch.manual_seed(seed)
    method = cls(lam, image_size, action_dim, config.device)
    if config.compile and config.device.startswith("cuda") and hasattr(method, "compile"):
        method.compile()
    return method


def train_lam(method: LatentActionMethod, sampler: TransitionSampler, steps: int, batch: int,
              run_dir: Path, seed: int, progress: bool) -> dict[str, Any]:
    """Stage 1: LAM pretraining on unlabelled transitions, checkpointed every CHECKPOINT_EVERY steps."""
    final = run_dir / "lam_final.pt"
    done = _load_checkpoint(final)
    if done is not None:
        method.load_state_dict(done["method"])
        return done["log"]
    ckpt_path = run_dir / "lam_ckpt.pt"
    ckpt = _load_checkpoint(ckpt_path)
    rng = np.random.default_rng([seed, 1])
    start, log, elapsed = 0, {"loss": []}, 0.0
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start, log, elapsed = ckpt["step"], ckpt["log"], ckpt["elapsed"]
    if method.latent_is_action:
        steps = 0
    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, steps), desc="stage 1/5 LAM", disable=not progress, initial=start,
               total=steps)
    # Throughput leaves out the first steps of this process: they include torch.compile's
    # tracing and CUDA's kernel selection, which a long run pays once.
    warm = min(THROUGHPUT_WARMUP_STEPS, max(0, (steps - start) // 2))
    t_warm = None
    for step in bar:
        if step == start + warm:
            t_warm = time.perf_counter()
        logs = method.train_step(sampler.sample(rng, batch))
        log["loss"].append(float(logs["loss"]))
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            atomic_torch_save({"method": method.state_dict(), "rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state(), "step": step + 1, "log": log,
                               "elapsed": time.perf_counter() - t0}, ckpt_path)
    log["seconds"] = time.perf_counter() - t0
    if t_warm is not None:
        timed = time.perf_counter() - t_warm
        log["samples_per_s"] = (steps - start - warm) * batch / max(timed, 1e-9)
    atomic_torch_save({"method": method.state_dict(), "log": log}, final)
    ckpt_path.unlink(missing_ok=True)
    return log


@torch.no_grad()
def encode_all(method: LatentActionMethod, sampler: TransitionSampler,
               index: np.ndarray) -> np.ndarray:
    """Latents (len(index), D) float32 of k = 1 transitions."""
    out = []
    for chunk in np.array_split(index, max(1, int(np.ceil(len(index) / ENCODE_BATCH)))):
        if len(chunk):
            out.append(method.encode(sampler.batch(chunk)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, method.latent_dim), np.float32)


def probe(method: LatentActionMethod, train: TransitionSampler, test: TransitionSampler,
          fit_index: np.ndarray,
          targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Stage 2: NMSE of linear probes z -> target, fitted on train and scored on held-out data.

    ``targets`` maps a name to per-frame arrays (train split, test split); the probe of each is
    fitted on the ``fit_index`` transitions and scored on every test transition.
    """
    z_fit = encode_all(method, train, fit_index)
    z_test = encode_all(method, test, test.data.transitions)
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
# The whole pipeline
# ------------------------------------------------------------------------------------------------
def run(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage of one benchmark run and write its result file."""
    preset = get_preset(config.preset)
    task = get_task(config.task)
    config = dataclasses.replace(config, task=task.name)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    run_dir = Path(config.runs_root) / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", dataclasses.asdict(config))
    # Seconds each stage took when it was computed; a resumed run keeps the original figures.
    timings_file = run_dir / "timings.json"
    timings: dict[str, float] = (json.loads(timings_file.read_text())
                                 if timings_file.exists() else {})

    def record(key: str, start: float) -> None:
        timings[key] = time.perf_counter() - start
        atomic_write_json(timings_file, timings)


    data_dir = ensure_dataset(config, preset, progress)
    meta = dataset_metadata(data_dir)
    cls = get_method(config.method)
    # Only the oracle reads the paired clean frames; the others leave them on disk.
    train = load_frames(data_dir, "train", clean=cls.uses_clean_data)
    test = load_frames(data_dir, "test", clean=cls.uses_clean_data)
    t0 = time.perf_counter()
    method = _build_method(config, preset, train.image_size, train.action_dim, config.seed)
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

    # Stage 1: LAM pretraining.
    lam_log = train_lam(method, train_s, preset.train.lam_steps, preset.train.lam_batch, run_dir,
                        config.seed, progress)
    timings["lam_s"] = lam_log.get("seconds", time.perf_counter() - t0)
    atomic_write_json(timings_file, timings)

    # Stage 2: linear probes on the frozen IDM and on an untrained one (the control): z -> a_t,
    # and z -> the background's exogenous motion (how much of the distractor the latent carries).
    t0 = time.perf_counter()
    probe_file = run_dir / "probe.json"
    probe_res = json.loads(probe_file.read_text()) if probe_file.exists() else {}
    motion = {split: load_background_motion(data_dir, split) for split in ("train", "test")}
    wanted = ["probe_nmse", "probe_nmse_untrained"]
    if motion["train"] is not None:
        wanted += ["distractor_nmse", "distractor_nmse_untrained"]
    if any(key not in probe_res for key in wanted):
        fit_rng = np.random.default_rng([config.seed, 2])
        n_fit = min(preset.train.probe_fit_transitions, len(train.transitions))
        fit_index = np.sort(fit_rng.choice(train.transitions, size=n_fit, replace=False))
        untrained = _build_method(config, preset, train.image_size, train.action_dim,
                                  config.seed)
        targets = {"probe_nmse": (train.actions, test.actions)}
        if motion["train"] is not None:
            targets["distractor_nmse"] = (motion["train"], motion["test"])
        for suffix, model in (("", method), ("_untrained", untrained)):
            if cls.latent_is_action and suffix:
                probe_res.update({f"{name}{suffix}": None for name in targets})
                continue
            nmse = probe(model, train_s, test_s, fit_index, targets)
            probe_res.update({f"{name}{suffix}": value for name, value in nmse.items()})
        del untrained, model
        atomic_write_json(probe_file, probe_res)
        record("probe_s", t0)

    # Stage 3: latent behaviour cloning o -> z on all unlabelled train data.
    t0 = time.perf_counter()
    # Seed right before building, so a run resumed after stage 2 starts from the same weights.
    torch.manual_seed(config.seed + 3)
    policy = LatentPolicy(lam_cfg, train.image_size, method.latent_dim).to(device)
    bc_file = run_dir / "bc.pt"
    bc_ckpt = _load_checkpoint(bc_file)
    if bc_ckpt is not None:
        policy.load_state_dict(bc_ckpt["policy"])
    else:
        pool = train.transitions
        z_all = torch.from_numpy(encode_all(method, train_s, pool)).to(device)
        _fit_indexed(policy, train_s.policy_input, z_all, pool, preset.train.bc_steps,
                     preset.train.bc_batch, BC_LR, np.random.default_rng([config.seed, 3]),
                     "stage 3/5 latent BC", progress, config.bf16)
        atomic_torch_save({"policy": policy.state_dict()}, bc_file)
        record("bc_s", t0)

    # Stage 4: action decoder z -> a on the labelled subset.
    t0 = time.perf_counter()
    torch.manual_seed(config.seed + 4)
    decoder = ActionDecoder(method.latent_dim, train.action_dim).to(device)
    dec_file = run_dir / "decoder.pt"
    dec_ckpt = _load_checkpoint(dec_file)
    if dec_ckpt is not None:
        decoder.load_state_dict(dec_ckpt["decoder"])
    else:
        labelled = labelled_subset(train, preset.data.labelled_transitions)
        z_lab = torch.from_numpy(encode_all(method, train_s, labelled)).to(device)
        a_lab = torch.from_numpy(train.actions[labelled]).to(device)
        _fit_indexed(decoder, lambda rows: z_lab[rows], a_lab, np.arange(len(labelled)),
                     preset.train.decoder_steps, min(preset.train.bc_batch * 4, len(labelled)),
                     DECODER_LR, np.random.default_rng([config.seed, 4]), "stage 4/5 decoder",
                     progress, config.bf16)
        atomic_torch_save({"decoder": decoder.state_dict()}, dec_file)
        record("decoder_s", t0)

    # Stage 5: rollouts in the ID and OOD envs (the oracle: the clean env for both).
    t0 = time.perf_counter()
    eval_file = run_dir / "eval.json"
    if eval_file.exists():
        returns = json.loads(eval_file.read_text())
    else:
        # The oracle has no OOD env of its own: it is scored in the clean env for both.
        splits = {"id": "none"} if cls.uses_clean_data else {"id": "id", "ood": "ood"}
        returns = evaluate_policy(
            policy, decoder, {name: env_id(task.name, split) for name, split in splits.items()},
            preset.train.eval_episodes, preset.train.eval_episode_steps,
            lam_cfg.context_frames, device, progress, f"stage 5/5 eval {'+'.join(splits)}")
        returns.setdefault("ood", returns["id"])
        atomic_write_json(eval_file, returns)
        record("eval_s", t0)
    timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")

    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    result_metrics: dict[str, Any] = dict(probe_res)
    for name in ("id", "ood"):
        mean_return = float(np.mean(returns[name]))
        result_metrics[f"return_{name}"] = mean_return
        result_metrics[f"return_{name}_episodes"] = returns[name]
        result_metrics[f"normalized_return_{name}"] = (
            metrics.normalized_return(mean_return, lo, hi)
            if lo is not None and hi is not None and hi != lo else None)
    result_metrics.update(ref_min_score=lo, ref_max_score=hi,
                          lam_samples_per_s=lam_log.get("samples_per_s"))
    from masklam_bench.collect import package_versions

    result = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "run_name": config.run_name,
        "task": task.name,
        "env_id": env_id(task.name, "none" if cls.uses_clean_data else "id"),
        "ood_env_id": env_id(task.name, "none" if cls.uses_clean_data else "ood"),
        "method": config.method,
        "method_label": config.method if mask_label == "exact"
        else f"{config.method}[{mask_label}]",
        "mask_source": mask_label,
        "latent_dim": method.latent_dim if cls.latent_is_action else config.latent_dim,
        "seed": config.seed,
        "preset": config.preset,
        "config": {"run": dataclasses.asdict(config), "lam": dataclasses.asdict(lam_cfg),
                   "preset": dataclasses.asdict(preset)},
        "dataset": {"path": str(data_dir), "metadata": _small_meta(meta),
                    "train_transitions": len(train.transitions),
                    "test_transitions": len(test.transitions)},
        "versions": package_versions(),
        "env_versions": {"id": env_id(task.name, "id"), "ood": env_id(task.name, "ood"),
                         "clean": env_id(task.name, "none")},
        "device": str(device),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}".strip(),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": result_metrics,
        "timings": timings,
    }
    atomic_write_json(Path(config.results_dir) / f"{config.run_name}.json", result)
    return result


def _small_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset metadata worth repeating in a result file (not per-file checksums)."""
    keep = ("dataset_id", "env_id", "ref_min_score", "ref_max_score", "action_noise", "policy",
            "expert", "total_episodes", "total_steps", "seed", "preset")
    return {k: meta[k] for k in keep if k in meta}


def _fit_indexed(module: torch.nn.Module, inputs, targets: torch.Tensor, pool: np.ndarray,
                 steps: int, batch: int, lr: float, rng: np.random.Generator, desc: str,
                 progress: bool, bf16: bool) -> list[float]:
    """Regress ``module(inputs(pool[r])) -> targets[r]`` for random rows r (AdamW, cosine).

    With ``bf16`` the forward pass runs under bf16 autocast, as the LAM does. AdamW is fused: at
    latent 8192 the policy's head alone has 33M parameters, and the per-tensor AdamW then took as
    long as the network.
    """
    module.train()
    device_type = next(module.parameters()).device.type
    opt = torch.optim.AdamW(module.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        rows = rng.integers(len(pool), size=batch)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            pred = module(inputs(pool[rows]))
        loss = torch.nn.functional.mse_loss(pred.float(), targets[torch.from_numpy(rows)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())  # read once at the end: a per-step read syncs a GPU
    return torch.stack(losses).tolist() if losses else []
