"""TensorBoard curves of one run, under ``<runs_root>/<run>/tb/<stage>``.

Each stage writes to a folder of its own, so TensorBoard shows it as its own run and a stage that
is redone after a kill replaces its curves instead of drawing them twice: a writer opened at step
``s`` (``purge_step``) tells TensorBoard to drop that folder's events from ``s`` on. Writing the
curves reads no random number and changes no result; ``--no-tensorboard`` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

TB_DIR = "tb"
"""A run's TensorBoard folder, inside its run folder."""
LAM_EVERY = 10
"""LAM steps between two points of the stage-1 curves."""
FIT_EVERY = 10
"""Latent-BC and decoder steps between two points of their loss curves."""


class Curves:
    """One stage's TensorBoard writer, or nothing at all when ``enabled`` is False.

    Args:
        run_dir: The run's folder; curves go to ``run_dir/tb/<stage>``.
        stage: Folder name of this stage (``lam``, ``bc``, ``decoder``, ``final``).
        enabled: False makes every call a no-op (``--no-tensorboard``).
        purge_step: First step this writer will write; TensorBoard drops the folder's older
            events from that step on (a resumed stage does not draw its steps twice).
    """

    def __init__(self, run_dir: Path, stage: str, enabled: bool = True,
                 purge_step: int = 0) -> None:
        self._writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is a pinned dependency; say what to do anyway
            raise ImportError(f"TensorBoard curves need the tensorboard package ({err}); "
                              "`pip install tensorboard==2.21.0`, or pass --no-tensorboard.") from err
        self._writer = SummaryWriter(str(Path(run_dir) / TB_DIR / stage), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        """Whether anything is written."""
        return self._writer is not None

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        """Write each finite number of ``values`` as ``prefix/name`` at ``step``; skip the rest."""
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            if np.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def series(self, tag: str, values: Sequence[float], every: int = FIT_EVERY) -> None:
        """Write every ``every``-th value of a per-step series (and the last) as ``tag``."""
        if self._writer is None or not len(values):
            return
        for step in sorted({*range(0, len(values), every), len(values) - 1}):
            self._writer.add_scalar(tag, float(values[step]), step)

    def images(self, tag: str, images: np.ndarray, step: int) -> None:
        """Write a batch of images ``(N, C, H, W)``: uint8, or float in [0, 1]; C is 1 or 3."""
        if self._writer is not None:
            self._writer.add_images(tag, images, step, dataformats="NCHW")

    def flush(self) -> None:
        """Put what was written on disk (before a checkpoint, so a resume purges from there)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
