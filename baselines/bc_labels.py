"""Reference row: behaviour cloning on ground-truth actions for all data (LAOM's normaliser)."""

from __future__ import annotations

from typing import Any

import torch

from masklam_bench.baselines.base import LatentActionMethod
from masklam_bench.baselines.registry import register


@register
class BCLabels(LatentActionMethod):
    """The latent is the true action, so latent BC on all data is plain BC; nothing to pretrain."""

    name = "bc-labels"
    latent_is_action = True

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """No pretraining: returns a zero loss."""
        return {"loss": 0.0}

    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's true actions ``(B, action_dim)`` float32."""
        if "action" not in batch:
            raise KeyError(f"Method {self.name!r} encodes transitions as their actions; the batch "
                           f"needs an 'action' key (B, {self.action_dim}).")
        return batch["action"].to(self.device, torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Nothing is learnt: only the method's name."""
        return {"method": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept a state from :meth:`state_dict`."""
        if state.get("method") != self.name:
            raise ValueError(f"This checkpoint was saved by method {state.get('method')!r}; load "
                             f"it into that method, not {self.name!r}.")
