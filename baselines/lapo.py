"""LAPO as run in MaskLAM v2's code: continuous latent, IDM + FDM, full-image reconstruction MSE."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklam_bench.baselines.base import LamConfig, LatentActionMethod
from masklam_bench.baselines.networks import (
    ForwardDynamics,
    InverseDynamics,
    fdm_input,
    idm_input,
    to_unit_range,
)
from masklam_bench.baselines.registry import register

CHECKPOINT_FORMAT = 1
"""Version of the :meth:`LAPO.state_dict` layout."""


def cosine_lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Learning-rate factor: ``(s+1)/w`` while ``s < w``, else ``(1 + cos(pi * min(1, p))) / 2``.

    ``p = (s - w) / (total_steps - w)`` is the progress after warm-up; after ``total_steps`` the
    factor stays 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_adamw(params: Iterable[nn.Parameter], config: LamConfig) -> torch.optim.AdamW:
    """AdamW with ``config``'s learning rate and weight decay, fused into one kernel."""
    # Fused: the default per-tensor loop took 1.4 s a step for the 67M-parameter latent-8192 LAM on
    # one CPU core, the fused kernel 0.25 s.
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def require_keys(batch: dict[str, torch.Tensor], keys: tuple[str, ...], method: str) -> None:
    """Reject a batch that lacks a key the method needs, naming the key."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"Method {method!r} needs batch keys {', '.join(missing)} (see "
                       f"LatentActionMethod's docstring for their shapes); the batch has "
                       f"{', '.join(sorted(batch)) or 'none'}.")


@register
class LAPO(LatentActionMethod):
    """LAPO (Schmidt & Jiang 2024) without quantisation: z = IDM(o_{t-c+1..t}, o_{t+k})."""

    name = "lapo"

    def __init__(self, config: LamConfig, image_size: int, action_dim: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_size, action_dim, device)
        if config.max_future < 1:
            raise ValueError(f"max_future must be >= 1 (1 = next frame); got {config.max_future}.")
        self.idm = InverseDynamics(config, image_size)
        self.fdm = ForwardDynamics(config, image_size)
        self.probe = nn.Linear(config.latent_dim, action_dim)
        self.nets = nn.ModuleDict({"idm": self.idm, "fdm": self.fdm, "probe": self.probe})
        self.nets.to(self.device, memory_format=torch.channels_last)
        self.optimizer = make_adamw(self.nets.parameters(), config)
        self._lam_parameters = [*self.idm.parameters(), *self.fdm.parameters()]
        self._idm_fn, self._fdm_fn = self.idm, self.fdm  # torch.compile'd by compile()
        self.step = 0

    def encode_keys(self) -> tuple[str, ...]:
        """Batch keys :meth:`encode` reads."""
        masks = ("context_mask", "target_mask") if self.config.mask_input else ()
        return ("context", "target", *masks)

    def batch_keys(self) -> tuple[str, ...]:
        """Batch keys :meth:`train_step` reads."""
        keys = list(self.encode_keys())
        if self.config.max_future > 1:
            keys.append("k")
        if self.config.probe_weight > 0:
            keys.append("action")
        return tuple(keys)

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor,
                            batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Plain full-image MSE between predicted and true o_{t+k} (both in [-0.5, 0.5])."""
        return F.mse_loss(pred, target)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the method's device when ``config.bf16``."""
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's tensors on the method's device."""
        return {key: value.to(self.device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in batch.items()}

    def _k(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The batch's step distances, checked against ``max_future`` (None for next-frame FDMs)."""
        if self.config.max_future == 1:
            return None
        k = batch["k"].long()
        low, high = torch.stack([k.min(), k.max()]).tolist()  # one device sync
        if low < 1 or high > self.config.max_future:
            raise ValueError(f"batch['k'] must lie in 1..{self.config.max_future} (max_future); "
                             f"got {low}..{high}.")
        return k

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One AdamW step on reconstruction + ``probe_weight`` * probe MSE."""
        require_keys(batch, self.batch_keys(), self.name)
        batch = self._to_device(batch)
        config = self.config
        lr = config.lr * cosine_lr_multiplier(self.step, config.total_steps, config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.nets.train()
        with self._autocast():
            z = self._idm_fn(idm_input(batch, config))
            pred = self._fdm_fn(fdm_input(batch, config), z, self._k(batch))
        recon = self.reconstruction_loss(pred.float(), to_unit_range(batch["target"]), batch)
        loss = recon
        probe_mse = torch.zeros((), device=self.device)
        if config.probe_weight > 0:
            action = batch["action"]
            if action.shape != (len(z), self.action_dim):
                raise ValueError(f"batch['action'] must be (B, {self.action_dim}) (action_dim); "
                                 f"got {tuple(action.shape)}.")
            # The probe reads a detached latent: it monitors z and never shapes it.
            probe_mse = F.mse_loss(self.probe(z.detach().float()), action.float())
            loss = loss + config.probe_weight * probe_mse
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clip the LAM alone, so the probe cannot change the LAM's update through the clip factor.
        grad_norm = nn.utils.clip_grad_norm_(self._lam_parameters, config.grad_clip)
        self.optimizer.step()
        self.step += 1
        values = torch.stack([loss.detach(), recon.detach(), probe_mse.detach(), grad_norm])
        logs = dict(zip(("loss", "recon_loss", "probe_mse", "grad_norm"), values.tolist()))
        return {**logs, "lr": lr}

    def compile(self) -> None:
        """``torch.compile`` the IDM and FDM used by :meth:`train_step` (worth it on CUDA)."""
        self._idm_fn, self._fdm_fn = torch.compile(self.idm), torch.compile(self.fdm)

    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latent actions ``(B, latent_dim)`` float32 from the IDM."""
        require_keys(batch, self.encode_keys(), self.name)
        batch = self._to_device(batch)
        self.nets.eval()
        with self._autocast():
            z = self.idm(idm_input(batch, self.config))
        return z.float()

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The FDM's predicted o_{t+k} as uint8 ``(B, 3, H, W)``, for inspection."""
        require_keys(batch, tuple(k for k in self.batch_keys() if k != "action"), self.name)
        batch = self._to_device(batch)
        self.nets.eval()
        with self._autocast():
            z = self.idm(idm_input(batch, self.config))
            pred = self.fdm(fdm_input(batch, self.config), z, self._k(batch))
        return ((pred.float() + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimiser, step and the config they were built with."""
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.name,
            "config": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "action_dim": self.action_dim,
            "nets": self.nets.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore networks, optimiser and step from :meth:`state_dict`."""
        if state.get("format") != CHECKPOINT_FORMAT or "nets" not in state:
            raise ValueError(f"Not a {self.name!r} checkpoint (format {state.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT}); pass what state_dict() returned.")
        if state["method"] != self.name:
            raise ValueError(f"This checkpoint was saved by method {state['method']!r}; load it "
                             f"into that method, not {self.name!r}.")
        try:
            self.nets.load_state_dict(state["nets"])
            # A copy: torch's optimiser would otherwise share moment tensors with the source.
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"The checkpoint's networks do not match this {self.name!r} "
                f"(saved with {_shape_summary(state['config'], state['image_size'])}; "
                f"this one has {_shape_summary(dataclasses.asdict(self.config), self.image_size)})"
                f"; build the method with the checkpoint's config.") from error
        self.step = int(state["step"])

    def idm_backbone(self) -> nn.Module:
        """The IDM's image encoder."""
        return self.idm.encoder


def _shape_summary(config: dict[str, Any], image_size: int) -> str:
    """The config fields that decide network shapes, as text."""
    fields = ("encoder", "latent_dim", "light_channels", "channel_mult", "context_frames",
              "mask_input", "max_future")
    return ", ".join(f"{f}={config.get(f)}" for f in fields) + f", image_size={image_size}"
