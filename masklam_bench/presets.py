"""Named sizes of a benchmark run: ``smoke`` (tests), ``cpu`` (default without CUDA), ``gpu``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from masklam_bench.errors import UserError


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
    lam_lr: float
    """Peak AdamW learning rate of LAM pretraining (MaskLAM code: 6e-4)."""
    lam_warmup: int
    """Linear warm-up steps before the LAM's cosine decay."""
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
    decoder_inputs: str = "idm"
    """What the action decoder z -> a is trained on: ``idm`` (the IDM's latents of the labelled
    transitions, MaskLAM code) or ``policy`` (the latent policy's predictions on them, LAOM code)."""
    bc_random_shift: int = 0
    """Random-shift augmentation of latent BC's frame stacks (DrQ): each stack is moved by up to
    this many pixels in each direction, edges repeated. 0 (the presets): none."""


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
        TrainPreset(encoder="light", lam_steps=3, lam_batch=8, lam_lr=6e-4, lam_warmup=0,
                    bc_steps=3, bc_batch=8, decoder_steps=5, probe_fit_transitions=60, eval_episodes=1,
                    eval_episode_steps=20),
    ),
    "cpu": Preset(
        "cpu",
        DataPreset(train_episodes=24, test_episodes=4, episode_steps=1000,
                   labelled_transitions=4000, action_noise=0.3),
        # LAM schedule from the probe curve (BENCHMARK.md "Probe curve"): at lr 6e-4 and 1,500 steps
        # the LAMs stopped mid-learning (oracle 0.93x its untrained control on cheetah).
        TrainPreset(encoder="light", lam_steps=3000, lam_batch=64, lam_lr=2e-3, lam_warmup=100,
                    bc_steps=1500, bc_batch=64, decoder_steps=2000, probe_fit_transitions=20000, eval_episodes=3,
                    eval_episode_steps=1000),
    ),
    "gpu": Preset(
        "gpu",
        DataPreset(train_episodes=400, test_episodes=40, episode_steps=1000,
                   labelled_transitions=128_000, action_noise=0.3),
        # Latent BC at LAOM's full-label BC budget (about 100k steps at batch 512); the first
        # version's 15k x 512 was below both it and V-D4RL's DrQ+BC, and at `cpu` pixel BC on all
        # labels stayed far below 0.5 up to 24k x 64 steps (0.021, 0.117, 0.170, 0.167 at 1.5k,
        # 6k, 12k, 24k with 10 evaluation episodes; BENCHMARK.md, "What the gpu preset is sized on").
        TrainPreset(encoder="impala", lam_steps=30_000, lam_batch=512, lam_lr=6e-4,
                    lam_warmup=500, bc_steps=100_000, bc_batch=512, decoder_steps=25_000,
                    probe_fit_transitions=100_000, eval_episodes=10, eval_episode_steps=1000),
    ),
}


LATE_FIELDS: dict[str, int | float | str] = {"train.bc_random_shift": 0}
"""Fields added after rows of the current protocols were run, each with the value that reproduces
those rows. At that value a field is left out of :func:`preset_record`, so adding it changes no
protocol id and no run identity; any other value is recorded (and is a protocol of its own)."""


def preset_record(preset: Preset) -> dict[str, Any]:
    """``preset`` as result files, run identities and protocol ids record it: every field, except
    a :data:`LATE_FIELDS` entry at its old value."""
    record = dataclasses.asdict(preset)
    for key, old in LATE_FIELDS.items():
        section, name = key.split(".")
        if record[section][name] == old:
            del record[section][name]
    return record


def get_preset(name: str) -> Preset:
    """Look up a preset by name, with a clear error for an unknown one."""
    if name not in PRESETS:
        raise UserError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


DATA_FIELDS_OF_DATASET = ("train_episodes", "test_episodes", "episode_steps", "action_noise")
"""``data`` fields that change what is collected (the labelled budget is a subset of it)."""

_CHOICES: dict[str, tuple[str, ...]] = {
    "train.encoder": ("light", "impala"), "train.decoder_inputs": ("idm", "policy"),
}
"""Overridable string fields and the values each accepts."""

_MAXIMA: dict[str, int] = {"train.bc_random_shift": 16, "data.episode_steps": 1000}
"""Upper bounds of overridable numbers where a larger value cannot be meant (a shift of more than
16 pixels moves the cheetah out of the 64-pixel frame; a DMC episode has 1,000 steps)."""

_MINIMA: dict[str, int] = dict.fromkeys(
    ("data.train_episodes", "data.test_episodes", "data.episode_steps",
     "data.labelled_transitions", "train.lam_batch", "train.bc_batch",
     "train.probe_fit_transitions", "train.eval_episodes", "train.eval_episode_steps"), 1)
"""Sizes that cannot be 0: a batch of none trains on NaN, no test episodes leave nothing to probe
on, no evaluation episodes nothing to score (step counts may be 0: an untrained stage)."""


def overridable_keys() -> list[str]:
    """Every ``section.field`` that ``--set`` accepts."""
    return [f"{section}.{f.name}" for section, cls in (("data", DataPreset), ("train", TrainPreset))
            for f in dataclasses.fields(cls)]


def parse_override(text: str) -> tuple[str, int | float | str]:
    """Parse ``"train.lam_steps=6000"`` into a key and a value of the field's type.

    Raises UserError (a ValueError) with one sentence naming what was wrong and what is accepted.
    """
    import difflib

    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    keys = overridable_keys()
    if not sep or not raw:
        raise UserError(f"--set expects KEY=VALUE, e.g. --set train.lam_steps=6000; got {text!r}.")
    if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"--set: unknown preset field {key!r}.{hint} Fields: {', '.join(keys)}.")
    section, name = key.split(".")
    kind = {f.name: f.type for f in dataclasses.fields(DataPreset if section == "data"
                                                       else TrainPreset)}[name]
    if kind == "str":
        if raw not in _CHOICES.get(key, (raw,)):
            raise UserError(f"--set {key}: expected one of {', '.join(_CHOICES[key])}; got {raw!r}.")
        return key, raw
    try:
        value: int | float = int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise UserError(f"--set {key}: expected {'an integer' if kind == 'int' else 'a number'}, "
                         f"got {raw!r}.") from None
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"--set {key}: expected a finite value >= 0, got {raw!r}.")
    if value < _MINIMA.get(key, 0):
        raise UserError(f"--set {key}: expected at least {_MINIMA[key]}, got {raw!r}.")
    if key in _MAXIMA and value > _MAXIMA[key]:
        raise UserError(f"--set {key}: expected at most {_MAXIMA[key]}, got {raw!r}.")
    return key, value


def apply_overrides(preset: Preset, overrides: dict[str, int | float | str]) -> Preset:
    """``preset`` with ``{"section.field": value}`` replaced (values as :func:`parse_override` gives)."""
    data, train = preset.data, preset.train
    for key, value in sorted(overrides.items()):
        _, parsed = parse_override(f"{key}={value}")
        section, name = key.split(".")
        if section == "data":
            data = dataclasses.replace(data, **{name: parsed})
        else:
            train = dataclasses.replace(train, **{name: parsed})
    return Preset(preset.name, data, train)


def split_overrides(preset: Preset, overrides: dict[str, int | float | str]
                    ) -> tuple[dict[str, int | float | str], list[str]]:
    """``overrides`` without those that set a field to ``preset``'s own value, and the dropped
    keys. A run with ``--set train.lam_steps=3000`` at ``cpu`` (whose value it is) is the preset's
    run: it keeps the preset's name, folder and result file instead of making a variant of itself.
    """
    record = dataclasses.asdict(preset)
    changed: dict[str, int | float | str] = {}
    same: list[str] = []
    for key, value in sorted(overrides.items()):
        section, name = key.split(".")
        if record[section][name] == value:
            same.append(key)
        else:
            changed[key] = value
    return changed, same


def default_preset_name() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"
