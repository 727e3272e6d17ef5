"""LAOM+labels: LAOM plus a linear head latent -> true action, trained on labelled batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklam_bench.baselines.laom import LAOM, stack_input
from masklam_bench.baselines.lapo import require_keys
from masklam_bench.baselines.registry import register

LABELLED_BATCH = 128
"""Labelled transitions per step (LAOM config ``laom-labels.yaml``: ``labeled_batch_size: 128``)."""
LABEL_LOSS_WEIGHT = 0.001
"""Weight of the action MSE (LAOM config ``laom-labels.yaml``: ``labeled_loss_coef: 0.001``)."""


@register
class LAOMLabels(LAOM):
    """LAOM whose latent also predicts the true action on the labelled subset (LAOM-Labels).

    The labelled batch goes through the same augmentations, encoder and IDM as the main batch, with
    its own k ~ U{1..max_future} (LAOM code), and the action MSE trains them too. Only
    ``batch["labelled"]`` is read for it: the main batch's actions are never used.
    """

    name = "laom-labels"
    labelled_batch_size = LABELLED_BATCH

    def extra_nets(self) -> dict[str, nn.Module]:
        """The linear head latent -> true action."""
        self.action_head = nn.Linear(self.config.latent_dim, self.action_dim)
        return {"action_head": self.action_head}

    def batch_keys(self) -> tuple[str, ...]:
        """LAOM's batch keys and the labelled batch."""
        return (*super().batch_keys(), "labelled")

    def label_loss(self, labelled: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE between the head's prediction from the labelled batch's latents and its actions."""
        require_keys(labelled, ("context", "target_context", "action"), f"{self.name} (labelled)")
        action = labelled["action"]
        if action.shape[1:] != (self.action_dim,):
            raise ValueError(f"batch['labelled']['action'] must be (B, {self.action_dim}) "
                             f"(action_dim); got {tuple(action.shape)}.")
        obs = stack_input(self.augment(labelled["context"]))
        future = stack_input(self.augment(labelled["target_context"]))
        with self._autocast():
            z, _ = self.latent(obs, future)
            pred = self.action_head(z)
        return F.mse_loss(pred.float(), action.float())

    def extra_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """LABEL_LOSS_WEIGHT times :meth:`label_loss` on ``batch["labelled"]``."""
        mse = self.label_loss(batch["labelled"])
        return LABEL_LOSS_WEIGHT * mse, {"label_mse": mse}
