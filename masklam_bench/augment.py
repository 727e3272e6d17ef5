"""Random-shift augmentation of frame stacks (DrQ's image augmentation), for latent BC.

DrQ pads each image by ``pad`` pixels, repeating its edges, and crops it back to size at a random
offset: the image moves by up to ``pad`` pixels in each direction. Here the crop is taken by
indexing (the same result without building the padded copy), every frame of a stack moves by the
same offset, and the offsets come from the caller's NumPy generator, so a seeded fit draws the
same shifts again, and a checkpoint of the generator resumes them.
"""

from __future__ import annotations

import numpy as np
import torch


def random_shift(frames: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """``frames`` ``(B, ..., H, W)``, each sample moved by ``(dy, dx)`` drawn uniformly from
    ``[-pad, pad]``, edge pixels repeated; ``pad = 0`` returns ``frames`` and draws nothing."""
    if pad == 0:
        return frames
    if frames.dim() < 3:
        raise ValueError(f"random_shift takes (B, ..., H, W) frames; got {tuple(frames.shape)}.")
    b, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
    if not 0 < pad < min(h, w):
        raise ValueError(f"random_shift: pad must be in [0, {min(h, w) - 1}] for {h}x{w} "
                         f"frames; got {pad}.")
    shift = torch.from_numpy(rng.integers(-pad, pad + 1, size=(b, 2))).to(frames.device)
    rows = (torch.arange(h, device=frames.device)[None, :] + shift[:, :1]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=frames.device)[None, :] + shift[:, 1:]).clamp_(0, w - 1)
    flat = frames.reshape(b, -1, h, w)
    batch = torch.arange(b, device=frames.device)[:, None, None, None]
    chans = torch.arange(flat.shape[1], device=frames.device)[None, :, None, None]
    return flat[batch, chans, rows[:, None, :, None], cols[:, None, None, :]].reshape(frames.shape)


__all__ = ["random_shift"]
