"""Image encoders and the inverse and forward dynamics models of the latent action methods."""

from __future__ import annotations

import torch
from torch import nn

from masklam_bench.baselines.base import LamConfig

ENCODERS = ("light", "impala")
"""Network families :func:`make_image_encoder` builds."""

DOWNSAMPLE_STAGES = 3
"""Every encoder halves the image three times: 64 px -> 8x8 (MaskLAM code)."""
DOWNSAMPLE = 2**DOWNSAMPLE_STAGES
"""Image side / feature-map side."""

IMPALA_IDM_WIDTHS = (16, 32, 32)
"""IMPALA stage widths before the channel multiplier (MaskLAM code: x4 -> 64/128/128)."""
IMPALA_FDM_WIDTHS = (96, 192, 192)
"""FDM encoder stage widths (MaskLAM code)."""
IMPALA_DECODER_WIDTHS = (192, 192, 96)
"""FDM decoder widths after each transposed conv (MaskLAM code)."""
RESIDUAL_BLOCKS = 2
"""Residual blocks per IMPALA stage, encoder and decoder (MaskLAM code: 2)."""

LIGHT_WIDTH_MULTS = (1, 2, 2)
"""Light encoder widths in units of ``light_channels``: IMPALA's 1:2:2 widening at CPU scale.

With 32 channels this gives 64x8x8 = 4096 features at 64 px and about 0.74M parameters for the
whole LAM at latent 64 (67M at latent 8192); BENCHMARK.md, "LAM training throughput", counts them.
"""
LIGHT_DECODER_MULTS = (2, 1)
"""Light FDM decoder widths after the first two transposed convs, in units of ``light_channels``.

The third transposed conv goes straight to RGB: a full-resolution hidden layer would double the
cost of a CPU training step (measured: 88 -> 167 samples/s at latent 64, fp32, 1 thread).
"""

PIXEL_CENTRE = 0.5
"""Pixels and masks are scaled to [-0.5, 0.5] (MaskLAM code: the FDM ends in tanh(x) / 2)."""


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-0.5, 0.5]: ``x / 255 - 0.5``."""
    if frames.dtype != torch.uint8:
        raise TypeError(f"Expected uint8 frames, got {frames.dtype}; pass raw pixels, the "
                        f"networks scale them themselves.")
    return frames.float().div_(255.0).sub_(PIXEL_CENTRE)


def mask_to_unit_range(mask: torch.Tensor) -> torch.Tensor:
    """bool agent mask -> float32 channel in {-0.5, 0.5}, on the pixels' scale."""
    return mask.float().sub_(PIXEL_CENTRE)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-d image batch in channels-last memory format (faster convolutions on CPU and GPU)."""
    return x.contiguous(memory_format=torch.channels_last)


def feature_side(image_size: int) -> int:
    """Side of the feature map an encoder produces from ``image_size`` pixels."""
    if image_size % DOWNSAMPLE or image_size <= 0:
        raise ValueError(f"image_size must be a positive multiple of {DOWNSAMPLE} (the FDM decodes "
                         f"from an image_size/{DOWNSAMPLE} map by {DOWNSAMPLE_STAGES} doublings); "
                         f"got {image_size}.")
    return image_size // DOWNSAMPLE


def frame_channels(config: LamConfig) -> int:
    """Input channels per frame: RGB, plus the agent mask when ``mask_input``."""
    return 3 + int(config.mask_input)


class ResidualBlock(nn.Module):
    """``x + conv(act(conv(act(x))))`` with 3x3 convolutions (IMPALA)."""

    def __init__(self, channels: int, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(
            activation(), nn.Conv2d(channels, channels, 3, padding=1),
            activation(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``."""
        return x + self.body(x)


def _impala_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> maxpool(3, stride 2, padding 1) -> residual blocks (IMPALA, MaskLAM code)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        *(ResidualBlock(out_channels) for _ in range(RESIDUAL_BLOCKS)),
    )


def _impala_trunk(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """IMPALA stages ending in ReLU: images -> (widths[-1], H/8, W/8) feature maps."""
    layers, channels = [], in_channels
    for width in widths:
        layers.append(_impala_stage(channels, width))
        channels = width
    return nn.Sequential(*layers, nn.ReLU())


def _light_trunk(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 3x3 convolutions with ReLU: images -> (widths[-1], H/8, W/8) feature maps."""
    # ReLU, not GELU: GELU's backward cost ~20% of a CPU training step.
    layers, channels = [], in_channels
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers)


def _check_encoder(config: LamConfig) -> None:
    """Reject an unknown ``config.encoder`` with the valid choices."""
    if config.encoder not in ENCODERS:
        raise ValueError(f"Unknown encoder {config.encoder!r}; choose one of {', '.join(ENCODERS)}.")


def _idm_widths(config: LamConfig) -> tuple[int, ...]:
    """Stage widths of the IDM (and latent policy) encoder."""
    if config.encoder == "impala":
        return tuple(w * config.channel_mult for w in IMPALA_IDM_WIDTHS)
    return tuple(m * config.light_channels for m in LIGHT_WIDTH_MULTS)


def _trunk(config: LamConfig, in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """The ``config.encoder`` family's feature-map trunk."""
    _check_encoder(config)
    make = _impala_trunk if config.encoder == "impala" else _light_trunk
    return make(in_channels, widths)


def make_image_encoder(config: LamConfig, in_channels: int,
                       image_size: int) -> tuple[nn.Module, int]:
    """An encoder of float images ``(B, in_channels, H, W)`` in [-0.5, 0.5] to ``(B, F)``, and F."""
    widths = _idm_widths(config)
    encoder = nn.Sequential(_trunk(config, in_channels, widths), nn.Flatten())
    return encoder, widths[-1] * feature_side(image_size) ** 2


class InverseDynamics(nn.Module):
    """IDM: context frames and the future frame, stacked on channels -> latent action z."""

    def __init__(self, config: LamConfig, image_size: int) -> None:
        super().__init__()
        in_channels = (config.context_frames + 1) * frame_channels(config)
        self.encoder, features = make_image_encoder(config, in_channels, image_size)
        self.head = nn.Linear(features, config.latent_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, (c+1) * frame_channels, H, W)`` floats -> ``(B, latent_dim)``."""
        return self.head(self.encoder(frames))


class ForwardDynamics(nn.Module):
    """FDM: o_t and z (and k) -> predicted o_{t+k} in [-0.5, 0.5]."""

    def __init__(self, config: LamConfig, image_size: int) -> None:
        super().__init__()
        _check_encoder(config)
        impala = config.encoder == "impala"
        if impala:
            enc_widths, dec_widths = IMPALA_FDM_WIDTHS, IMPALA_DECODER_WIDTHS
        else:
            enc_widths = tuple(m * config.light_channels for m in LIGHT_WIDTH_MULTS)
            dec_widths = tuple(m * config.light_channels for m in LIGHT_DECODER_MULTS)
        self.side = feature_side(image_size)
        self.map_channels = enc_widths[-1]
        self.encoder = _trunk(config, frame_channels(config), enc_widths)
        self.latent_proj = nn.Linear(config.latent_dim, self.map_channels * self.side**2)
        # k-step futures: a learned embedding of k added to z before the projection.
        self.k_embedding = (nn.Embedding(config.max_future, config.latent_dim)
                            if config.max_future > 1 else None)
        self.decoder = _impala_decoder(2 * self.map_channels, dec_widths) if impala else \
            _light_decoder(2 * self.map_channels, dec_widths)

    def forward(self, obs: torch.Tensor, z: torch.Tensor,
                k: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, frame_channels, H, W)`` floats, ``(B, latent_dim)``, ``(B,)`` -> ``(B, 3, H, W)``."""
        if self.k_embedding is not None:
            if k is None:
                raise ValueError("This FDM predicts k-step futures (max_future > 1); pass the "
                                 "batch's `k`.")
            z = z + self.k_embedding(k - 1)
        latent_map = self.latent_proj(z).view(-1, self.map_channels, self.side, self.side)
        features = torch.cat([self.encoder(obs), channels_last(latent_map)], dim=1)
        # tanh in float32: bf16 cannot resolve one grey level (1/255) near +-0.5.
        return torch.tanh(self.decoder(features).float()) * PIXEL_CENTRE


def _impala_decoder(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Transposed convs (kernel 2, stride 2) each followed by GELU residual blocks, 1x1 to RGB."""
    layers, channels = [], in_channels
    for width in widths:
        layers.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
        layers += [ResidualBlock(width, nn.GELU) for _ in range(RESIDUAL_BLOCKS)]
        channels = width
    return nn.Sequential(*layers, nn.GELU(), nn.Conv2d(channels, 3, 1))


def _light_decoder(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """A 3x3 conv mixing z with o_t's features, then transposed convs (kernel 2, stride 2) to RGB."""
    # Without the 3x3 mix every 8x8 output patch would see only its own cell's features.
    layers, channels = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.ReLU()], widths[0]
    for width in widths:
        layers += [nn.ConvTranspose2d(channels, width, 2, stride=2), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.ConvTranspose2d(channels, 3, 2, stride=2))


def _check_frames(batch: dict[str, torch.Tensor], config: LamConfig) -> None:
    """Reject a batch whose context length differs from ``config.context_frames``."""
    context = batch["context"]
    if context.dim() != 5 or context.shape[1] != config.context_frames or context.shape[2] != 3:
        raise ValueError(f"batch['context'] must be uint8 (B, {config.context_frames}, 3, H, W) "
                         f"(context_frames={config.context_frames}); got {tuple(context.shape)}.")


def idm_input(batch: dict[str, torch.Tensor], config: LamConfig) -> torch.Tensor:
    """The IDM's input: context frames then the target, each with its mask if ``mask_input``."""
    _check_frames(batch, config)
    frames = torch.cat([batch["context"], batch["target"].unsqueeze(1)], dim=1)
    x = to_unit_range(frames)  # (B, c+1, 3, H, W)
    if config.mask_input:
        masks = torch.cat([batch["context_mask"], batch["target_mask"].unsqueeze(1)], dim=1)
        x = torch.cat([x, mask_to_unit_range(masks).unsqueeze(2)], dim=2)
    return channels_last(x.flatten(1, 2))


def fdm_input(batch: dict[str, torch.Tensor], config: LamConfig) -> torch.Tensor:
    """The FDM's input: the current frame o_t, with its mask if ``mask_input``."""
    x = to_unit_range(batch["context"][:, -1])
    if config.mask_input:
        x = torch.cat([x, mask_to_unit_range(batch["context_mask"][:, -1]).unsqueeze(1)], dim=1)
    return channels_last(x)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
