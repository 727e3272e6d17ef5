"""Downstream networks: the latent policy o -> z and the action decoder z -> a."""

from __future__ import annotations

import torch
from torch import nn

from masklam_bench.baselines.base import LamConfig
from masklam_bench.baselines.networks import channels_last, make_image_encoder, to_unit_range

DECODER_HIDDEN = (256, 256)
"""Hidden widths of the action decoder z -> 256 -> 256 -> a (MaskLAM code)."""


class LatentPolicy(nn.Module):
    """The IDM's encoder architecture on stacked frames, then a linear layer to the latent."""

    def __init__(self, config: LamConfig, image_size: int, out_dim: int,
                 frames: int | None = None) -> None:
        super().__init__()
        # Policies see the last 3 frames (MaskLAM authors' code), the IDM's context by default.
        self.frames = config.context_frames if frames is None else frames
        self.encoder, features = make_image_encoder(config, 3 * self.frames, image_size)
        self.head = nn.Linear(features, out_dim)
        self.to(memory_format=torch.channels_last)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, frames, 3, H, W)`` or ``(B, frames * 3, H, W)``, oldest first -> ``(B, out)``."""
        if frames.dim() == 5:
            frames = frames.flatten(1, 2)
        if frames.dim() != 4 or frames.shape[1] != 3 * self.frames:
            raise ValueError(f"LatentPolicy takes uint8 (B, {self.frames}, 3, H, W) frame stacks, "
                             f"channels first; got {tuple(frames.shape)}.")
        return self.head(self.encoder(channels_last(to_unit_range(frames))))


class ActionDecoder(nn.Module):
    """MLP z -> 256 -> 256 -> a, trained on the labelled subset (MaskLAM code)."""

    def __init__(self, latent_dim: int, action_dim: int,
                 hidden: tuple[int, ...] = DECODER_HIDDEN) -> None:
        super().__init__()
        layers, width = [], latent_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, action_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` -> unbounded ``(B, action_dim)``; clip to the action space to act."""
        return self.net(z)
