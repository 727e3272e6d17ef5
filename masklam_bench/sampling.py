"""Batches of transitions for LAM training, probing and latent behaviour cloning."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from masklam_bench.dataset import DatasetError, FrameData

BATCH_ORDER = ("context", "context_mask", "target", "target_mask", "k", "action", "next",
               "next_mask", "target_context")
"""Every entry a batch can hold, in the order :meth:`TransitionSampler.batch` returns them."""
BATCH_KEYS = frozenset(BATCH_ORDER)


class TransitionSampler:
    """Builds the batch dicts of :class:`masklam_bench.baselines.base.LatentActionMethod`.

    Frames stay uint8 until the method scales them. On CUDA the whole split is moved to the
    device once, so batches are gathered there without host copies.
    """

    def __init__(self, data: FrameData, context_frames: int = 3, max_future: int = 1,
                 use_clean: bool = False, device: torch.device | str = "cpu",
                 masks: np.ndarray | None = None) -> None:
        """Wrap a split.

        Args:
            data: The split's frames and indices.
            context_frames: Frames o_{t-c+1}..o_t given as context (padded at episode start).
            max_future: Targets are o_{t+k}, k ~ U{1..max_future} clipped to the episode end.
            use_clean: Use the paired distractor-free frames (the oracle).
            device: Where batches live.
            masks: Bool agent masks ``(N, H, W)`` to use instead of the stored exact ones
                (e.g. corrupted or SAM 2 masks); default: unpack the stored masks.
        """
        if use_clean and data.clean_frames is None:
            raise DatasetError("This dataset has no clean frames; recollect it to train the "
                               "oracle.")
        self.data = data
        self.context_frames = context_frames
        self.max_future = max_future
        self.device = torch.device(device)
        frames = data.clean_frames if use_clean else data.frames
        if masks is None:
            masks = data.unpack_masks(np.arange(len(data.frames)))
        # (N, 3, H, W) uint8 and (N, H, W) bool, on the device.
        self._frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        self._masks = torch.from_numpy(np.ascontiguousarray(masks))
        if self.device.type != "cpu":
            self._frames = self._frames.to(self.device)
            self._masks = self._masks.to(self.device)
        self._actions = torch.from_numpy(data.actions).to(self.device)
        self._start = torch.from_numpy(data.episode_start).to(self.device)
        self._end = torch.from_numpy(data.episode_end).to(self.device)

    def batch(self, index: np.ndarray, k: np.ndarray | None = None,
              keys: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The batch for transitions starting at frame indices ``index`` (k = 1 unless given).

        ``keys`` limits the batch to those entries (default: all of :data:`BATCH_KEYS`), so a
        method that reads three of them does not pay for gathering nine.
        """
        wanted = BATCH_KEYS if keys is None else frozenset(keys)
        unknown = wanted - BATCH_KEYS
        if unknown:
            raise ValueError(f"Unknown batch keys {sorted(unknown)}; a batch has "
                             f"{', '.join(sorted(BATCH_KEYS))}.")
        i = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.device)
        if k is None:
            k_t = torch.ones_like(i)
        else:
            k_t = torch.as_tensor(np.asarray(k, dtype=np.int64), device=self.device)
        k_t = torch.minimum(k_t, self._end[i] - i).clamp(min=1)
        offsets = torch.arange(self.context_frames - 1, -1, -1, device=self.device)
        start = self._start[i][:, None]
        target = i + k_t
        # Frame indices by entry (cheap); the frames and masks are gathered only when asked for.
        # The frames a stack encoder needs (LAOM): o_{t+1}, and the target's own context.
        frame_rows = {
            "context": torch.maximum(i[:, None] - offsets[None, :], start),
            "target": target,
            "next": torch.minimum(i + 1, self._end[i]),
            "target_context": torch.maximum(target[:, None] - offsets[None, :], start),
        }
        out: dict[str, torch.Tensor] = {}
        for name, rows in frame_rows.items():
            if name in wanted:
                out[name] = self._frames[rows]
            if f"{name}_mask" in wanted:
                out[f"{name}_mask"] = self._masks[rows]
        if "k" in wanted:
            out["k"] = k_t
        if "action" in wanted:
            out["action"] = self._actions[i]
        return {key: out[key] for key in BATCH_ORDER if key in out}

    def sample(self, rng: np.random.Generator, batch_size: int,
               pool: np.ndarray | None = None,
               keys: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """A random training batch from ``pool`` (default: all transitions); ``keys`` as in
        :meth:`batch` (the random draws are the same whichever keys are asked for)."""
        pool = self.data.transitions if pool is None else pool
        index = pool[rng.integers(len(pool), size=batch_size)]
        k = rng.integers(1, self.max_future + 1, size=batch_size) if self.max_future > 1 else None
        return self.batch(index, k, keys)

    def policy_input(self, index: np.ndarray) -> torch.Tensor:
        """Stacks of the last ``context_frames`` frames ``(B, c, 3, H, W)`` for the latent policy."""
        i = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.device)
        offsets = torch.arange(self.context_frames - 1, -1, -1, device=self.device)
        ctx = torch.maximum(i[:, None] - offsets[None, :], self._start[i][:, None])
        return self._frames[ctx]
