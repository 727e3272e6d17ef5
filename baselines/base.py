"""The small interface every latent action method implements, and the batch it receives."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch


@dataclasses.dataclass
class LamConfig:
    """Hyper-parameters of latent action model pretraining (stage 1)."""

    latent_dim: int = 64
    """Size of the continuous latent action z (MaskLAM main runs: 128; LAOM: 8192)."""
    encoder: str = "light"
    """``light`` (three stride-2 convs, for CPU) or ``impala`` (MaskLAM code's IMPALA CNNs)."""
    channel_mult: int = 4
    """IMPALA channel multiplier (MaskLAM code: 4 -> 64/128/128 IDM channels)."""
    light_channels: int = 32
    """Channels of the light encoder's convolutions."""
    context_frames: int = 3
    """Past frames the IDM sees besides the next frame (MaskLAM code: 3)."""
    lr: float = 6e-4
    """AdamW learning rate (MaskLAM code: 6e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip (MaskLAM code: 1.0)."""
    total_steps: int = 1000
    """Planned optimiser steps, for the cosine learning-rate schedule."""
    warmup_steps: int = 0
    """Linear warm-up steps of the schedule."""
    probe_weight: float = 0.01
    """Weight of the online linear probe on the detached latent (MaskLAM code: 0.01); 0 disables."""
    max_future: int = 1
    """Predict o_{t+k} with k ~ U{1..max_future} (1 = next frame; masklam-full: 9)."""
    mask_input: bool = False
    """Feed the agent mask as a 4th input channel to IDM and FDM (masklam-full)."""
    bf16: bool = False
    """bf16 autocast. Off here for library use; the runner turns it on on every device
    (``--no-bf16`` turns it off), since CPUs with bf16 instructions train about twice as fast
    with it."""


class LatentActionMethod(abc.ABC):
    """A method: trains on batches of transitions and maps transitions to latent actions.

    The runner owns data, stages, checkpoints and evaluation. A method owns its networks,
    its optimiser and its loss. Batches are dicts of tensors on the method's device:

    - ``context``: uint8 ``(B, context_frames, 3, H, W)``: o_{t-c+1} .. o_t (padded at episode start
      by repeating the first frame).
    - ``target``: uint8 ``(B, 3, H, W)``: o_{t+k}; k = 1 unless ``max_future > 1``.
    - ``k``: int64 ``(B,)`` the step distance of ``target``.
    - ``context_mask``: bool ``(B, context_frames, H, W)`` agent masks of the context frames.
    - ``target_mask``: bool ``(B, H, W)`` agent mask of ``target``.
    - ``action``: float32 ``(B, A)`` a_t (used only by the online probe and reference rows).
    - ``next``: uint8 ``(B, 3, H, W)``: o_{t+1}, whatever k is (LAOM's FDM target).
    - ``next_mask``: bool ``(B, H, W)`` agent mask of ``next``.
    - ``target_context``: uint8 ``(B, context_frames, 3, H, W)``: o_{t+k-c+1} .. o_{t+k}, the
      target's own frame stack, padded at episode start like ``context`` (last frame = ``target``).
    - ``labelled``: only for methods with ``labelled_batch_size > 0``, during pretraining: a batch
      of ``labelled_batch_size`` transitions (the same keys) drawn from the labelled subset alone.

    Subclasses register themselves by name with :func:`masklam_bench.baselines.register`.
    """

    name: ClassVar[str] = ""
    """Registry name, e.g. ``"lapo"``."""
    uses_clean_data: ClassVar[bool] = False
    """Train and evaluate on the distractor-free data and env (the oracle)."""
    latent_is_action: ClassVar[bool] = False
    """The latent is the true action (the ``bc-labels`` reference row); no pretraining."""
    uses_masks: ClassVar[bool] = False
    """Reads the agent masks of a batch, so ``--mask-source`` changes its result (MaskLAM)."""
    skips_pretraining: ClassVar[bool] = False
    """Stage 1 is skipped: the IDM keeps its random weights (the ``untrained-idm`` floor row)."""
    bc_on_labelled_only: ClassVar[bool] = False
    """Latent BC sees only the labelled subset, not all train data (the ``bc-labelled`` floor
    row)."""
    labelled_batch_size: ClassVar[int] = 0
    """Transitions of the labelled subset the runner adds to every pretraining batch under
    ``labelled`` (``laom-labels``); 0 = none, and then no labelled batch is drawn."""

    def __init__(self, config: LamConfig, image_size: int, action_dim: int,
                 device: torch.device | str = "cpu") -> None:
        self.config = config
        self.image_size = image_size
        self.action_dim = action_dim
        self.device = torch.device(device)

    @property
    def latent_dim(self) -> int:
        """Size of the latents :meth:`encode` returns."""
        return self.action_dim if self.latent_is_action else self.config.latent_dim

    @abc.abstractmethod
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on a batch; returns scalar logs (at least ``loss``)."""

    @abc.abstractmethod
    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latent actions ``(B, latent_dim)`` float32 from the IDM, for k = 1 transitions."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training (networks, optimiser, schedule, step)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    @classmethod
    def config_overrides(cls) -> dict[str, Any]:
        """``LamConfig`` fields this method needs changed; the runner applies them before building it."""
        return {}

    def idm_backbone(self) -> torch.nn.Module | None:
        """The IDM's image encoder, reused for the latent policy's architecture (may be None)."""
        return None
