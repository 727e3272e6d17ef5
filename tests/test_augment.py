"""Random-shift augmentation: DrQ's pad-and-crop, drawn from the caller's seeded generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklam_bench.augment import random_shift


def _frames(b=5, c=3, h=8, w=10):
    return torch.arange(b * c * 3 * h * w, dtype=torch.int64).reshape(b, c, 3, h, w).to(torch.uint8)


def test_shift_equals_replicate_padding_then_a_crop():
    frames = _frames()
    pad = 3
    out = random_shift(frames, pad, np.random.default_rng(1))
    shifts = np.random.default_rng(1).integers(-pad, pad + 1, size=(len(frames), 2))
    padded = torch.nn.functional.pad(frames.flatten(1, 2).float(), (pad,) * 4, mode="replicate")
    for i, (dy, dx) in enumerate(shifts):
        crop = padded[i, :, pad + dy:pad + dy + 8, pad + dx:pad + dx + 10]
        assert torch.equal(out[i].flatten(0, 1).float(), crop), i
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert len({tuple(s) for s in shifts}) > 1  # samples move differently


def test_every_frame_of_a_stack_moves_alike_and_the_seed_fixes_the_shifts():
    frames = _frames().clone()
    frames[:, 1:] = frames[:, :1]  # three equal frames per stack
    out = random_shift(frames, 2, np.random.default_rng(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(out, random_shift(frames, 2, np.random.default_rng(0)))
    assert not torch.equal(out, random_shift(frames, 2, np.random.default_rng(5)))


def test_zero_pad_is_the_identity_and_draws_nothing():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    frames = _frames()
    assert random_shift(frames, 0, rng) is frames
    assert rng.bit_generator.state == before  # so rows drawn after it are as without the option


def test_bad_pads_are_refused():
    with pytest.raises(ValueError, match="pad must be"):
        random_shift(_frames(h=4, w=4), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="frames"):
        random_shift(torch.zeros(4, 4, dtype=torch.uint8), 1, np.random.default_rng(0))
