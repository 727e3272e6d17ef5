"""MaskLAM: LAPO whose reconstruction error counts only the agent's pixels."""

from __future__ import annotations

import torch

from masklam_bench.baselines.lapo import LAPO
from masklam_bench.baselines.registry import register


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(M * (pred - target)^2) / max(1, sum(M))`` with M the agent mask over the 3 channels.

    ``pred`` and ``target`` are ``(B, 3, H, W)``, ``mask`` is bool ``(B, H, W)``. The sum runs over
    the whole batch, so the loss is the mean squared error per agent pixel and channel (MaskLAM,
    arXiv 2602.02259, its masked loss); background pixels give exactly zero gradient, and an empty mask gives 0, not NaN.
    """
    if mask.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(f"The agent mask must be (B, H, W) = {tuple(pred.shape[:1] + pred.shape[2:])}"
                         f" to match the prediction; got {tuple(mask.shape)}.")
    weight = mask.unsqueeze(1).to(pred.dtype).expand_as(pred)
    return (weight * (pred - target).square()).sum() / weight.sum().clamp(min=1)


@register
class MaskLAM(LAPO):
    """MaskLAM (Adnan et al. 2026): LAPO with the reconstruction loss masked to the agent."""

    name = "masklam"
    uses_masks = True

    def batch_keys(self) -> tuple[str, ...]:
        """Batch keys :meth:`train_step` reads: LAPO's and the target's agent mask."""
        keys = super().batch_keys()
        return keys if "target_mask" in keys else (*keys, "target_mask")

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor,
                            batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:func:`masked_mse` under the agent mask of o_{t+k}."""
        return masked_mse(pred, target, batch["target_mask"])
