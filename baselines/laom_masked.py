"""LAOM with feature-space masking (ours): the target encoder sees only the agent."""

from __future__ import annotations

import torch

from masklam_bench.baselines.laom import LAOM, next_stack
from masklam_bench.baselines.registry import register

BACKGROUND_FILL = 128
"""uint8 value every pixel outside the agent mask gets before the target encoder (mid grey: 0 on
the networks' [-0.5, 0.5] scale)."""


def mask_background(frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(..., 3, H, W)``, pixels outside bool ``masks`` ``(..., H, W)`` filled."""
    if masks.shape != frames.shape[:-3] + frames.shape[-2:]:
        raise ValueError(f"The agent masks must be {tuple(frames.shape[:-3] + frames.shape[-2:])} "
                         f"to match the frames; got {tuple(masks.shape)}.")
    fill = torch.full_like(frames, BACKGROUND_FILL)
    return torch.where(masks.unsqueeze(-3), frames, fill)


@register
class LAOMMasked(LAOM):
    """LAOM whose EMA target embeds stack_{t+1} with the background replaced by a constant.

    MaskLAM masks its pixel reconstruction loss; this asks whether masking carries over to
    LAOM's feature-space target (the MaskLAM paper's open question). The IDM and FDM inputs are
    unmasked, so encoding needs no masks; only the target does. The constant image is augmented
    like LAOM's target.
    """

    name = "laom-masked"
    uses_masks = True

    def batch_keys(self) -> tuple[str, ...]:
        """LAOM's batch keys and the agent masks of the target's stack."""
        return (*super().batch_keys(), "context_mask", "next_mask")

    def target_frames(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The stack of o_{t+1} with every pixel outside the agent mask set to BACKGROUND_FILL."""
        masks = torch.cat([batch["context_mask"][:, 1:], batch["next_mask"].unsqueeze(1)], dim=1)
        return mask_background(next_stack(batch), masks)
