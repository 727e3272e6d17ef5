"""MaskLAM as in its authors' code: masked loss, the mask as an input channel, k-step futures."""

from __future__ import annotations

from typing import Any

import torch

from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.masklam import MaskLAM
from masklam_bench.baselines.registry import register

MAX_FUTURE = 9
"""Predict o_{t+k} with k ~ U{1..9} (MaskLAM code)."""


@register
class MaskLAMFull(MaskLAM):
    """MaskLAM with the agent mask as a 4th IDM/FDM input channel and a k-conditioned FDM."""

    name = "masklam-full"

    @classmethod
    def config_overrides(cls) -> dict[str, Any]:
        """Mask input on, futures up to 9 steps ahead (MaskLAM code)."""
        return {"mask_input": True, "max_future": MAX_FUTURE}

    def __init__(self, config: LamConfig, image_size: int, action_dim: int,
                 device: torch.device | str = "cpu") -> None:
        if not config.mask_input:
            raise ValueError(f"{self.name!r} needs mask_input=True; build its config with "
                             f"dataclasses.replace(config, **MaskLAMFull.config_overrides()).")
        super().__init__(config, image_size, action_dim, device)
