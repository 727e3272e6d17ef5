"""Where the agent masks a method trains with come from: ``RunConfig.mask_source``.

A mask source is a short label that also names the leaderboard row (``masklam[erode-2]``):

- ``exact``: the simulator's masks stored with the dataset.
- ``sam2``: SAM 2 masks added by ``masklam-bench masks --source sam2`` (see :mod:`sam_masks`).
- ``dilate-R`` / ``erode-R``: the exact mask grown / shrunk by R pixels (a disk of radius R), a
  segmenter that over- or under-segments the agent's outline.
- ``flip-P``: each pixel of the exact mask flipped independently with probability P (salt-and-
  pepper label noise).
- ``drop-P``: each frame's mask replaced, with probability P, by an all-ones mask: on those frames
  nothing is masked out and the loss sees the whole image, as LAPO's does (a segmenter that fails
  to return a mask and falls back to no masking, rather than to an empty mask that would drop the
  frame from the loss).

Random corruptions are seeded per (seed, episode), so a frame's corrupted mask does not depend on
which split it was loaded with or on the other episodes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable

import numpy as np

from masklam_bench.dataset import FrameData
from masklam_bench.errors import UserError

_DISK_RADIUS_MAX = 32  # larger radii would erase or fill a 64x64 mask entirely
_FLIP_STREAM = 1  # SeedSequence keys: the flip and drop noise use independent streams
_DROP_STREAM = 2


@dataclasses.dataclass(frozen=True)
class MaskSource:
    """A parsed mask source: ``kind`` plus its radius or probability."""

    kind: str
    """``exact``, ``sam2``, ``dilate``, ``erode``, ``flip`` or ``drop``."""
    value: float | None = None
    """Radius in pixels (dilate, erode) or probability (flip, drop); None otherwise."""

    @property
    def label(self) -> str:
        """The canonical text, e.g. ``erode-2`` or ``flip-0.05``."""
        if self.value is None:
            return self.kind
        if self.kind in _RADIUS_KINDS:
            return f"{self.kind}-{int(self.value)}"
        return f"{self.kind}-{self.value:g}"


_PLAIN_KINDS = ("exact", "sam2")
_RADIUS_KINDS = ("dilate", "erode")
_PROBABILITY_KINDS = ("flip", "drop")
FORMS = ("exact", "sam2", "dilate-R", "erode-R", "flip-P", "drop-P")
"""The accepted forms: R a radius in pixels (1..32), P a probability in [0, 1]."""
_PATTERN = re.compile(r"^(?P<kind>[a-z0-9]+)(?:-(?P<value>[0-9.eE+-]+))?$")


def _form_error(text: str, why: str) -> UserError:
    return UserError(
        f"Mask source {text!r} {why}; use one of {', '.join(FORMS)} (R = radius in pixels, "
        f"1..{_DISK_RADIUS_MAX}; P = probability in [0, 1]), e.g. erode-2 or flip-0.05.")


def parse_mask_source(text: str) -> MaskSource:
    """Parse a mask source label, with one clear sentence listing the forms when it is malformed."""
    match = _PATTERN.match(text.strip().lower())
    kinds = _PLAIN_KINDS + _RADIUS_KINDS + _PROBABILITY_KINDS
    if match is None or match["kind"] not in kinds:
        raise _form_error(text, "is not a known form")
    kind, raw = match["kind"], match["value"]
    if kind in _PLAIN_KINDS:
        if raw is not None:
            raise _form_error(text, f"takes no value ({kind!r} alone)")
        return MaskSource(kind)
    if raw is None:
        form = f"{kind}-R, R a radius in pixels" if kind in _RADIUS_KINDS \
            else f"{kind}-P, P a probability"
        raise _form_error(text, f"needs a value ({form})")
    try:
        value = float(raw)
    except ValueError:
        raise _form_error(text, f"has an unreadable value {raw!r}") from None
    if not math.isfinite(value):
        raise _form_error(text, f"needs a finite value, not {raw!r}")
    if kind in _RADIUS_KINDS and (value != int(value) or not 1 <= value <= _DISK_RADIUS_MAX):
        raise _form_error(text, f"needs a whole radius from 1 to {_DISK_RADIUS_MAX}")
    if kind in _PROBABILITY_KINDS and not 0.0 <= value <= 1.0:
        raise _form_error(text, "needs a probability from 0 to 1")
    if kind in _PROBABILITY_KINDS and value == 0.0:
        return MaskSource("exact")  # nothing flipped or dropped: exact's run, not a row of its own
    return MaskSource(kind, value)


def disk(radius: int) -> np.ndarray:
    """Bool disk structuring element ``(2R+1, 2R+1)``: offsets (dy, dx) with dy^2 + dx^2 <= R^2."""
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius**2


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Grow each ``(N, H, W)`` mask by a disk of ``radius`` pixels (frames stay independent)."""
    from scipy import ndimage

    return ndimage.binary_dilation(masks, structure=disk(radius)[None])


def erode(masks: np.ndarray, radius: int) -> np.ndarray:
    """Shrink each ``(N, H, W)`` mask by a disk of ``radius`` pixels.

    Pixels beyond the frame edge count as agent: the frame edge is not the agent's outline, so an
    agent cut off by the edge is not eaten away from there.
    """
    from scipy import ndimage

    return ndimage.binary_erosion(masks, structure=disk(radius)[None], border_value=1)


def _episode_slices(data: FrameData) -> list[tuple[int, slice]]:
    """``(episode id, frame slice)`` of each episode in ``data``, in order."""
    starts = np.flatnonzero(data.episode_start == np.arange(data.num_frames))
    ids = (data.episode_ids if data.episode_ids is not None
           else np.arange(len(starts)))
    return [(int(e), slice(int(s), int(data.episode_end[s]) + 1)) for e, s in zip(ids, starts)]


def _episode_rng(seed: int, stream: int, episode: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, episode])


def flip(masks: np.ndarray, p: float, data: FrameData, seed: int) -> np.ndarray:
    """Flip each pixel independently with probability ``p`` (noise seeded per episode)."""
    out = masks.copy()
    for episode, frames in _episode_slices(data):
        rng = _episode_rng(seed, _FLIP_STREAM, episode)
        out[frames] ^= rng.random(out[frames].shape, dtype=np.float32) < p
    return out


def drop(masks: np.ndarray, p: float, data: FrameData, seed: int) -> np.ndarray:
    """Replace each frame's mask by an all-ones mask with probability ``p`` (seeded per episode)."""
    out = masks.copy()
    for episode, frames in _episode_slices(data):
        rng = _episode_rng(seed, _DROP_STREAM, episode)
        dropped = rng.random(frames.stop - frames.start) < p
        out[frames][dropped] = True
    return out


_CORRUPTIONS: dict[str, Callable[[np.ndarray, MaskSource, FrameData, int], np.ndarray]] = {
    "dilate": lambda m, s, d, seed: dilate(m, int(s.value)),
    "erode": lambda m, s, d, seed: erode(m, int(s.value)),
    "flip": lambda m, s, d, seed: flip(m, float(s.value), d, seed),
    "drop": lambda m, s, d, seed: drop(m, float(s.value), d, seed),
}
"""Corruptions of the exact masks, by kind."""


def resolve_masks(source: str | MaskSource, data: FrameData,
                  dataset_path: str | os.PathLike, seed: int) -> np.ndarray:
    """The bool agent masks ``(N, H, W)`` of ``data``'s frames under a mask source.

    Args:
        source: A label such as ``exact``, ``sam2`` or ``erode-2`` (see the module docstring).
        data: The loaded split whose frames the masks must align with.
        dataset_path: The dataset folder ``data`` was loaded from (for the SAM 2 sidecar).
        seed: Seed of the random corruptions (``flip``, ``drop``).
    """
    spec = source if isinstance(source, MaskSource) else parse_mask_source(source)
    if spec.kind == "sam2":
        from masklam_bench.sam_masks import SamMaskError, load_sam_masks, read_sam_masks

        if data.episode_ids is not None:
            masks = read_sam_masks(dataset_path, data.episode_ids)
        else:
            masks = load_sam_masks(dataset_path, data.split)
        if masks.shape != data.frames.shape[:3]:
            raise SamMaskError(f"The SAM 2 masks of {dataset_path} have shape {masks.shape} but "
                             f"the {data.split} frames {data.frames.shape[:3]}; rerun "
                             f"`masklam-bench masks --dataset {dataset_path} --source sam2 "
                             f"--overwrite`.")
        return masks
    exact = data.unpack_masks(np.arange(data.num_frames))
    if spec.kind == "exact":
        return exact
    return _CORRUPTIONS[spec.kind](exact, spec, data, seed)


__all__ = [
    "FORMS",
    "MaskSource",
    "dilate",
    "disk",
    "drop",
    "erode",
    "flip",
    "parse_mask_source",
    "resolve_masks",
]
