"""Named sizes of a benchmark run: ``smoke`` (tests), ``cpu`` (default without CUDA), ``gpu``."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataPreset:
    """How much expert data to collect per task."""

    train_episodes: int
    """Episodes in the train split (LAM, latent BC and probe fitting)."""
    test_episodes: int
    """Held-out episodes (probe NMSE is measured on these)."""
    episode_steps: int
    """Steps per episode (1000 = the full DMC episode; shorter only for tests)."""
    labelled_transitions: int
    """Size of the labelled subset: the first N transitions of the train split (MaskLAM code)."""
    action_noise: float
    """Std of Gaussian noise on the expert's actions: greedy experts repeat a narrow range of actions."""


@dataclasses.dataclass(frozen=True)
class TrainPreset:
    """How long and how big each training stage is."""

    encoder: str
    """Network family: ``light`` (three stride-2 convs, CPU) or ``impala`` (the paper's networks)."""
    lam_steps: int
    """Gradient steps of LAM pretraining (stage 1)."""
    lam_batch: int
    """Batch size of LAM pretraining (MaskLAM code: 512)."""
    bc_steps: int
    """Gradient steps of latent behaviour cloning o -> z."""
    bc_batch: int
    """Batch size of latent behaviour cloning."""
    decoder_steps: int
    """Gradient steps of the action decoder z -> a on the labelled subset (MaskLAM code: 25k)."""
    probe_fit_transitions: int
    """Train transitions the linear probe is fitted on (test: all held-out transitions)."""
    eval_episodes: int
    """Rollout episodes per evaluation env (ID and OOD)."""
    eval_episode_steps: int
    """Steps per evaluation episode."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named benchmark size."""

    name: str
    data: DataPreset
    train: TrainPreset


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke",
        DataPreset(train_episodes=2, test_episodes=1, episode_steps=40, labelled_transitions=40,
                   action_noise=0.3),
        TrainPreset(encoder="light", lam_steps=3, lam_batch=8, bc_steps=3, bc_batch=8,
                    decoder_steps=5, probe_fit_transitions=60, eval_episodes=1,
                    eval_episode_steps=20),
    ),
    "cpu": Preset(
        "cpu",
        DataPreset(train_episodes=24, test_episodes=4, episode_steps=1000,
                   labelled_transitions=4000, action_noise=0.3),
        TrainPreset(encoder="light", lam_steps=1500, lam_batch=64, bc_steps=1500, bc_batch=64,
                    decoder_steps=2000, probe_fit_transitions=20000, eval_episodes=3,
                    eval_episode_steps=1000),
    ),
    "gpu": Preset(
        "gpu",
        DataPreset(train_episodes=400, test_episodes=40, episode_steps=1000,
                   labelled_transitions=128_000, action_noise=0.3),
        TrainPreset(encoder="impala", lam_steps=30_000, lam_batch=512, bc_steps=15_000,
                    bc_batch=512, decoder_steps=25_000, probe_fit_transitions=100_000,
                    eval_episodes=10, eval_episode_steps=1000),
    ),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name, with a clear error for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def default_preset_name() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
