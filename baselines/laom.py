"""LAOM (Nikulin et al., ICML 2025) in our own code: a latent-space FDM and an EMA target encoder.

LAOM's recipe, as its published code and configs (dunnolab/laom: ``configs/laom.yaml``,
``train_laom.py``, ``src/nn.py``, ``src/augmentations.py``) run it:

- one image encoder shared by both inputs of the IDM; frame stacks of ``context_frames`` frames;
- IDM: a residual MLP head on [emb(stack_t), emb(stack_{t+k})] -> z, k ~ U{1..10};
- FDM: a residual MLP head on [emb(stack_t) (no gradient), z] -> the embedding of stack_{t+1}
  under an EMA copy of the encoder (the target); MSE in that space; no pixel decoder;
- every stack augmented on its own (a random choice among none, shift, rotate, perspective and
  four of their pairs); Adam, linear warm-up then linear decay; orthogonal initialisation.

Where the suite decides instead (BENCHMARK.md, "LAOM"): the encoder family and its sizes (the
preset's ``light`` or ``impala``), the latent size (the run's ``--dims``; LAOM: 8192), the peak
learning rate, batch size and step counts (the preset's ``lam_lr``, ``lam_batch``, ``lam_steps``,
``lam_warmup``; LAOM: 1e-4, 512, 10 epochs with 3 of warm-up) and gradient clipping
(``LamConfig.grad_clip``; LAOM clips nothing).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from masklam_bench.baselines.base import LamConfig, LatentActionMethod
from masklam_bench.baselines.lapo import require_keys
from masklam_bench.baselines.networks import channels_last, make_image_encoder, to_unit_range
from masklam_bench.baselines.registry import register

CHECKPOINT_FORMAT = 1
"""Version of the :meth:`LAOM.state_dict` layout."""

MAX_FUTURE = 10
"""The IDM sees o_{t+k}, k ~ U{1..10} (LAOM config: ``future_obs_offset: 10``)."""
HEAD_WIDTH = 1024
"""Width of the IDM and FDM heads (LAOM config: ``act_head_dim``, ``obs_head_dim``: 1024)."""
LIGHT_HEAD_WIDTH = 256
"""Head width with the ``light`` encoder (ours): LAOM's 1024 scaled by embedding size.

LAOM's 1024-wide heads read a 12,288-d embedding (192 x 8 x 8); the light encoder's is 4,096
(64 x 8 x 8), a third of it, and 1024 / 3 rounded down to a power of two is 256. Measured on the
2-core VM (busy with two other runs; fp32, one thread, batch 64, latent 64, samples/s): LAPO 150;
LAOM with heads of 256 95 (11.9M parameters), 512 68 (30.6M), 1024 50 (88.5M).
"""
HEAD_BLOCKS = 3
"""Residual MLP blocks per head (LAOM code: ``LatentActHead`` and ``LatentObsHead`` have 3)."""
HEAD_EXPAND = 4
"""Hidden width of a block's MLP in units of the head width (LAOM code: ``MLPBlock(expand=4)``)."""
TARGET_TAU = 0.001
"""EMA rate of the target encoder (LAOM config: ``target_tau: 0.001``)."""
TARGET_UPDATE_EVERY = 1
"""Optimiser steps between EMA updates of the target (LAOM config: ``target_update_every: 1``)."""

AUGMENTATIONS = ("none", "shift", "rotate", "perspective", "shift-rotate", "rotate-shift",
                 "rotate-perspective", "perspective-rotate")
"""Each stack gets one of these, uniformly, applied left to right (LAOM code: ``Augmenter``)."""
SHIFT_PAD_FRACTION = 14 / 64
"""Largest shift, as a fraction of the image side (LAOM code: 14 px at 64 px, edge-replicated)."""
ROTATE_DEGREES = 90.0
"""Rotation angle ~ U(-90, 90) degrees (LAOM code: ``RandomRotateAug(degrees=90)``)."""
PERSPECTIVE_PAD_FRACTION = 30 / 64
"""LAOM pads the image by 30 px (at 64 px) before its random perspective, then crops the centre."""
PERSPECTIVE_SCALE = 0.5
"""Each corner of the padded image moves inwards by up to this fraction of its half-side
(LAOM code: torchvision ``RandomPerspective(distortion_scale=0.5)``)."""


def linear_lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """LAOM's schedule: ``(s+1)/w`` while ``s < w``, then linear decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))


def head_width(config: LamConfig) -> int:
    """The IDM and FDM head width for the config's encoder family."""
    return HEAD_WIDTH if config.encoder == "impala" else LIGHT_HEAD_WIDTH


# ------------------------------------------------------------------------------------------------
# Augmentations: every one a projective map of the image plane, so a pair is one map and one
# resampling (LAOM resamples and crops after each of the two).
# ------------------------------------------------------------------------------------------------
def _translation(shift: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` maps adding ``shift`` ``(n, 2)`` to a point."""
    m = torch.eye(3, dtype=torch.float64).repeat(len(shift), 1, 1)
    m[:, :2, 2] = shift
    return m


def _rotation(degrees: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` rotations about the image centre."""
    rad = torch.deg2rad(degrees)
    m = torch.eye(3, dtype=torch.float64).repeat(len(rad), 1, 1)
    m[:, 0, 0], m[:, 0, 1] = torch.cos(rad), -torch.sin(rad)
    m[:, 1, 0], m[:, 1, 1] = torch.sin(rad), torch.cos(rad)
    return m


def homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` projective maps taking the 4 points ``src`` ``(n, 4, 2)`` to ``dst``."""
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (n, 8, 8)
    b = torch.cat([u, v], dim=1)  # (n, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


class FrameAugmenter:
    """LAOM's augmentations on uint8 frames, one random choice per image, from its own generator.

    The same map is applied to every frame of a stack. Points are in pixels from the image centre;
    a map takes an output pixel to where it samples the input (bilinear, edges replicated).
    """

    def __init__(self, image_size: int, seed: int) -> None:
        self.image_size = image_size
        self.generator = torch.Generator().manual_seed(seed)
        side = torch.arange(image_size, dtype=torch.float64) + 0.5 - image_size / 2
        ys, xs = torch.meshgrid(side, side, indexing="ij")
        self._pixels = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(-1, 3)

    def maps(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The choices ``(n,)`` (indices into AUGMENTATIONS) and sampling maps ``(n, 3, 3)``."""
        g, half = self.generator, self.image_size / 2
        choice = torch.randint(len(AUGMENTATIONS), (n,), generator=g)
        pad = round(SHIFT_PAD_FRACTION * self.image_size)
        shift = torch.randint(-pad, pad + 1, (n, 2), generator=g).double()
        degrees = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * ROTATE_DEGREES
        outer = half + PERSPECTIVE_PAD_FRACTION * self.image_size
        corners = outer * torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]],
                                       dtype=torch.float64).expand(n, 4, 2)
        inward = torch.rand((n, 4, 2), generator=g, dtype=torch.float64) * PERSPECTIVE_SCALE * outer
        moved = corners - corners.sign() * inward
        single = {"shift": _translation(shift), "rotate": _rotation(degrees),
                  # The image's corners move to `moved`: an output pixel there samples the corner.
                  "perspective": homography(moved, corners)}
        maps = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        for index, name in enumerate(AUGMENTATIONS[1:], start=1):
            # Applying A then B samples through A's map after B's: map_A @ map_B.
            composed = torch.eye(3, dtype=torch.float64)
            for part in name.split("-"):
                composed = composed @ single[part]
            maps = torch.where((choice == index)[:, None, None], composed, maps)
        return choice, maps

    def warp(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """uint8 ``(n, C, H, W)`` resampled through ``maps`` ``(n, 3, 3)``, as uint8."""
        n, side, device = len(images), self.image_size, images.device
        maps = maps.to(device, torch.float32)
        points = self._pixels.to(device, torch.float32) @ maps.transpose(1, 2)  # (n, H*W, 3)
        grid = (points[..., :2] / points[..., 2:]) / (side / 2)
        grid = grid.view(n, side, side, 2)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Augmented copies of uint8 frames ``(B, 3, H, W)`` or stacks ``(B, c, 3, H, W)``."""
        if frames.dtype != torch.uint8 or frames.shape[-2:] != (self.image_size,) * 2:
            raise ValueError(f"The augmentations take uint8 frames of {self.image_size}x"
                             f"{self.image_size} pixels; got {frames.dtype} "
                             f"{tuple(frames.shape)}.")
        flat = frames.flatten(1, -3) if frames.dim() == 5 else frames
        choice, maps = self.maps(len(flat))
        out = flat.clone()
        changed = (choice != 0).nonzero().squeeze(1)
        if len(changed):
            out[changed.to(out.device)] = self.warp(flat[changed.to(flat.device)], maps[changed])
        return out.reshape(frames.shape)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
class ResidualMLPBlock(nn.Module):
    """``LayerNorm(x + MLP(x))``, MLP: width -> HEAD_EXPAND x width, ReLU6, -> width (LAOM code)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, HEAD_EXPAND * width), nn.ReLU6(),
                                 nn.Linear(HEAD_EXPAND * width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``, normalised."""
        return self.norm(x + self.mlp(x))


class ConditionedHead(nn.Module):
    """LAOM's head shape: HEAD_BLOCKS blocks, each fed its input again through a projection.

    ``h = block_0(proj_0([x, cond]))``, then ``h = block_i(proj_i([h, cond]))``, then a linear
    layer to ``out_dim``; with no ``x`` the first projection reads ``cond`` alone.
    """

    def __init__(self, x_dim: int, cond_dim: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            [nn.Linear(x_dim + cond_dim, width)]
            + [nn.Linear(width + cond_dim, width) for _ in range(HEAD_BLOCKS - 1)])
        self.blocks = nn.ModuleList(ResidualMLPBlock(width) for _ in range(HEAD_BLOCKS))
        self.out = nn.Linear(width, out_dim)

    def forward(self, cond: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, cond_dim)`` and optional ``(B, x_dim)`` -> ``(B, out_dim)``."""
        h = cond if x is None else torch.cat([x, cond], dim=-1)
        for index, (projection, block) in enumerate(zip(self.projections, self.blocks)):
            h = block(projection(h if index == 0 else torch.cat([h, cond], dim=-1)))
        return self.out(h)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for linear and conv layers (LAOM code: ``weight_init``)."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def stack_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 stacks ``(B, c, 3, H, W)`` -> float ``(B, 3c, H, W)`` in [-0.5, 0.5], channels-last."""
    return channels_last(to_unit_range(frames).flatten(1, 2))


def next_stack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stack ending at o_{t+1}: the context's last c-1 frames, then ``next``."""
    return torch.cat([batch["context"][:, 1:], batch["next"].unsqueeze(1)], dim=1)


@register
class LAOM(LatentActionMethod):
    """LAOM: z = IDM(emb(stack_t), emb(stack_{t+k})); the FDM predicts target-emb(stack_{t+1})."""

    name = "laom"

    @classmethod
    def config_overrides(cls) -> dict[str, Any]:
        """Futures up to 10 steps ahead; no online probe in the loss (stage 2 probes)."""
        return {"max_future": MAX_FUTURE, "probe_weight": 0.0}

    def __init__(self, config: LamConfig, image_size: int, action_dim: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_size, action_dim, device)
        if config.mask_input:
            raise ValueError(f"{self.name!r} takes no mask input channel; build it with "
                             f"mask_input=False.")
        if config.max_future < 1:
            raise ValueError(f"max_future must be >= 1 (1 = next frame); got {config.max_future}.")
        self.encoder, features = make_image_encoder(config, 3 * config.context_frames, image_size)
        width = head_width(config)
        self.idm_head = ConditionedHead(0, 2 * features, width, config.latent_dim)
        self.fdm_head = ConditionedHead(features, config.latent_dim, width, features)
        self.nets = nn.ModuleDict({"encoder": self.encoder, "idm_head": self.idm_head,
                                   "fdm_head": self.fdm_head})
        self.nets.apply(orthogonal_init)
        # A variant's modules come after, so the shared ones start as LAOM's for the same seed.
        for key, module in self.extra_nets().items():
            self.nets[key] = module.apply(orthogonal_init)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.nets.to(self.device, memory_format=torch.channels_last)
        self.target_encoder.to(self.device, memory_format=torch.channels_last)
        # Adam, fused into one kernel (LAOM code: torch.optim.Adam(fused=True)).
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay, fused=True)
        # Seeded from the torch seed the runner sets before building, without drawing from it.
        self.augment = FrameAugmenter(image_size, torch.initial_seed())
        self.step = 0

    def extra_nets(self) -> dict[str, nn.Module]:
        """Further trained modules of a variant (built after the shared ones, same optimiser)."""
        return {}

    def encode_keys(self) -> tuple[str, ...]:
        """Batch keys :meth:`encode` reads."""
        return ("context", "target_context")

    def batch_keys(self) -> tuple[str, ...]:
        """Batch keys :meth:`train_step` reads."""
        return ("context", "target_context", "next")

    def target_frames(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 stacks the target encoder embeds (before augmentation): the stack of o_{t+1}."""
        return next_stack(batch)

    def latent(self, obs: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, emb(obs))`` from float stacks; one encoder pass over both."""
        emb = self.encoder(torch.cat([obs, future]))
        emb_obs, emb_future = emb.split(len(obs))
        return self.idm_head(torch.cat([emb_obs, emb_future], dim=-1)), emb_obs

    def extra_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A variant's further loss term (weighted) and its logs; LAOM has none."""
        return torch.zeros((), device=self.device), {}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One Adam step on the latent FDM's MSE (plus a variant's term), then the EMA update."""
        require_keys(batch, self.batch_keys(), self.name)
        batch = self._to_device(batch)
        config = self.config
        lr = config.lr * linear_lr_multiplier(self.step, config.total_steps, config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.nets.train()
        # LAOM augments each of the three stacks on its own.
        obs = stack_input(self.augment(batch["context"]))
        future = stack_input(self.augment(batch["target_context"]))
        target_in = stack_input(self.augment(self.target_frames(batch)))
        with self._autocast():
            z, emb_obs = self.latent(obs, future)
            # The FDM reads o_t's embedding detached (LAOM code): the encoder learns through z.
            pred = self.fdm_head(z, emb_obs.detach())
            with torch.no_grad():
                target = self.target_encoder(target_in)
        fdm_loss = F.mse_loss(pred.float(), target.float())
        extra, extra_logs = self.extra_loss(batch)
        loss = fdm_loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.nets.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        if self.step % TARGET_UPDATE_EVERY == 0:
            self.update_target()
        names = ("loss", "fdm_loss", "grad_norm", *extra_logs)
        values = torch.stack([loss.detach(), fdm_loss.detach(), grad_norm,
                              *(v.detach() for v in extra_logs.values())])
        return {**dict(zip(names, values.tolist())), "lr": lr}

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- (1 - TARGET_TAU) * target + TARGET_TAU * online encoder."""
        for target, online in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            target.lerp_(online, TARGET_TAU)

    @torch.no_grad()
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Latent actions ``(B, latent_dim)`` float32 from the IDM, without augmentation."""
        require_keys(batch, self.encode_keys(), self.name)
        batch = self._to_device(batch)
        self.nets.eval()
        with self._autocast():
            z, _ = self.latent(stack_input(batch["context"]), stack_input(batch["target_context"]))
        return z.float()

    def _autocast(self):
        """bf16 autocast on the method's device when ``config.bf16``."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors (and those of a nested batch) on the method's device."""
        return {key: self._to_device(value) if isinstance(value, dict)
                else value.to(self.device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        """Networks, target encoder, optimiser, augmentation generator, step and config."""
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.name,
            "config": dataclasses.asdict(self.config),
            "image_size": self.image_size,
            "action_dim": self.action_dim,
            "nets": self.nets.state_dict(),
            "target_encoder": self.target_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "augment_rng": self.augment.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        if state.get("format") != CHECKPOINT_FORMAT or "target_encoder" not in state:
            raise ValueError(f"Not a {self.name!r} checkpoint (format {state.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT}); pass what state_dict() returned.")
        if state["method"] != self.name:
            raise ValueError(f"This checkpoint was saved by method {state['method']!r}; load it "
                             f"into that method, not {self.name!r}.")
        try:
            self.nets.load_state_dict(state["nets"])
            self.target_encoder.load_state_dict(state["target_encoder"])
            # A copy: torch's optimiser would otherwise share moment tensors with the source.
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"The checkpoint's networks do not match this {self.name!r} (saved "
                             f"with {_shapes(state['config'], state['image_size'])}; this one has "
                             f"{_shapes(dataclasses.asdict(self.config), self.image_size)}); build "
                             f"the method with the checkpoint's config.") from error
        self.augment.generator.set_state(state["augment_rng"])
        self.step = int(state["step"])

    def idm_backbone(self) -> nn.Module:
        """The shared image encoder."""
        return self.encoder


def _shapes(config: dict[str, Any], image_size: int) -> str:
    """The config fields that decide network shapes, as text."""
    fields = ("encoder", "latent_dim", "light_channels", "channel_mult", "context_frames")
    return ", ".join(f"{f}={config.get(f)}" for f in fields) + f", image_size={image_size}"

