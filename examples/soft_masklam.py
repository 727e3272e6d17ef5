"""A worked example of submitting a method: MaskLAM with a softly weighted background.

Run it with no change to masklam-bench:

    PYTHONPATH=examples masklam-bench run --method soft_masklam:SoftMaskLAM --dims 64

A method subclasses ``LatentActionMethod`` (here through LAPO, which supplies the networks,
optimiser and training step) and changes what it needs: this one keeps a small weight on
background pixels instead of none, interpolating between LAPO (weight 1) and MaskLAM (weight 0).
"""

from __future__ import annotations

import torch

from masklam_bench.baselines.lapo import LAPO

BACKGROUND_WEIGHT = 0.1
"""Weight of a background pixel's squared error relative to an agent pixel's."""


class SoftMaskLAM(LAPO):
    """LAPO whose reconstruction error weights background pixels by BACKGROUND_WEIGHT."""

    name = "soft-masklam"
    uses_masks = True  # it reads the agent masks, so ``--mask-source`` may replace them

    def batch_keys(self) -> tuple[str, ...]:
        """The training step also reads the target's agent mask."""
        keys = super().batch_keys()
        return keys if "target_mask" in keys else (*keys, "target_mask")

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor,
                            batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum(w * err^2) / sum(w) with w = 1 on the agent and BACKGROUND_WEIGHT elsewhere."""
        mask = batch["target_mask"].unsqueeze(1).to(pred.dtype)
        weight = (BACKGROUND_WEIGHT + (1.0 - BACKGROUND_WEIGHT) * mask).expand_as(pred)
        return (weight * (pred - target).square()).sum() / weight.sum()
