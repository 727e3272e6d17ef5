"""How well SAM 2 masks match the simulator's exact agent masks: ``masklam-bench mask-quality``.

Reports the intersection over union (IoU) of each frame's SAM 2 mask with its exact mask: the mean
per environment and over all frames, and the mean by step within the episode (binned), as a
Markdown table and a PNG plot of IoU against episode step. Tracking drift shows as IoU falling
with the step.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
from pathlib import Path

import h5py
import numpy as np

from masklam_bench import dataset as ds
from masklam_bench.checks import int_at_least
from masklam_bench.errors import UserError
from masklam_bench.fileio import atomic_write_bytes, atomic_write_text
from masklam_bench.sam_masks import SIDECAR_FILE, SamMaskError, read_sam_masks, sidecar_settings

REPORT_TABLE = "mask_quality.md"
"""File name of the Markdown report."""
REPORT_PLOT = "mask_quality.png"
"""File name of the IoU-vs-step plot."""
DEFAULT_BINS = 10
"""Episode-step bins of the by-step table and plot."""


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of bool masks over their last two axes.

    IoU(a, b) = |a AND b| / |a OR b|, and 1 when both masks are empty (|a OR b| = 0: they agree).
    Masks ``(..., H, W)`` give IoUs of shape ``(...)``; a single pair gives a 0-d array.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"Masks to compare must have the same shape; got {a.shape} and {b.shape}.")
    inter = np.count_nonzero(a & b, axis=(-2, -1))
    union = np.count_nonzero(a | b, axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


@dataclasses.dataclass
class DatasetQuality:
    """Per-frame IoUs of one dataset's SAM 2 masks."""

    env_id: str
    """The dataset's environment id."""
    path: str
    """The dataset folder."""
    checkpoint: str
    """The SAM 2 checkpoint the masks came from (``random`` for random weights)."""
    image_size: int
    """SAM 2 input size used."""
    iou: np.ndarray
    """``(N,)`` float: IoU of every frame, episodes concatenated."""
    step: np.ndarray
    """``(N,)`` int: each frame's step within its episode (0 = the prompted first frame)."""

    @property
    def mean_iou(self) -> float:
        """Mean IoU over all frames."""
        return float(self.iou.mean())


def dataset_quality(dataset_path: str | os.PathLike) -> DatasetQuality:
    """IoU of every frame's SAM 2 mask with its exact mask, in one dataset (all episodes)."""
    meta = ds.dataset_metadata(dataset_path)
    folder = Path(meta["path"])
    episodes = np.arange(int(meta["total_episodes"]))
    sam = read_sam_masks(folder, episodes)
    ious, steps, offset = [], [], 0
    with h5py.File(folder / ds.DATA_DIR / ds.MAIN_FILE, "r") as f:
        for i in episodes:
            exact = f[f"episode_{i}"]["observations"]["agent_mask"][()].astype(bool)
            ious.append(mask_iou(sam[offset:offset + len(exact)], exact))
            steps.append(np.arange(len(exact)))
            offset += len(exact)
    settings = sidecar_settings(folder) or {}
    return DatasetQuality(env_id=str(meta["env_id"]), path=str(folder),
                          checkpoint=str(settings.get("checkpoint")),
                          image_size=int(settings.get("image_size", 0)),
                          iou=np.concatenate(ious), step=np.concatenate(steps))


def find_datasets(paths: list[str | os.PathLike]) -> list[Path]:
    """Dataset folders with SAM 2 masks: each path is such a folder or a root searched below."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.name == ds.MAIN_FILE or (p.name == ds.DATA_DIR and (p / ds.METADATA_FILE).exists()):
            p = Path(ds.dataset_metadata(p)["path"])  # its data/ folder or HDF5 file: the dataset
        if (p / SIDECAR_FILE).exists():
            found.append(p)
            continue
        below = sorted(f.parent for f in p.rglob(SIDECAR_FILE)) if p.is_dir() else []
        if not below:
            raise SamMaskError(
                f"No SAM 2 masks in {p}; run `masklam-bench masks --dataset <dataset folder> "
                f"--source sam2 --checkpoint <sam2.1_hiera_tiny.pt>` first.")
        found.extend(below)
    return list(dict.fromkeys(found))


def step_bins(max_step: int, bins: int) -> np.ndarray:
    """Bin edges ``[0, ..., max_step + 1]`` splitting episode steps into ``bins`` equal ranges."""
    if bins < 1:
        raise UserError(f"bins must be at least 1; got {bins}.")
    return np.unique(np.linspace(0, max_step + 1, bins + 1).round().astype(int))


def binned_iou(quality: DatasetQuality, edges: np.ndarray) -> np.ndarray:
    """Mean IoU of the frames whose step falls in each bin ``[edges[k], edges[k+1])`` (NaN: none)."""
    which = np.digitize(quality.step, edges) - 1
    out = np.full(len(edges) - 1, np.nan)
    for k in range(len(out)):
        sel = which == k
        if sel.any():
            out[k] = quality.iou[sel].mean()
    return out


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def format_markdown(results: list[DatasetQuality], edges: np.ndarray) -> str:
    """Two Markdown tables: mean IoU per dataset (and overall), and mean IoU by episode step."""
    lines = ["| env | SAM 2 checkpoint | image size | frames | mean IoU | IoU at step 0 |",
             "|---|---|---|---|---|---|"]
    for q in results:
        first = q.iou[q.step == 0].mean() if (q.step == 0).any() else np.nan
        label = q.checkpoint + (" (random weights: plumbing only)"
                                if q.checkpoint == "random" else "")
        lines.append(f"| {q.env_id} | {label} | {q.image_size} | {len(q.iou)} | "
                     f"{_fmt(q.mean_iou)} | {_fmt(first)} |")
    everything = np.concatenate([q.iou for q in results])
    lines.append(f"| all | | | {len(everything)} | {_fmt(float(everything.mean()))} | |")
    lines += ["", "| steps | " + " | ".join(q.env_id for q in results) + " |",
              "|---|" + "---|" * len(results)]
    table = [binned_iou(q, edges) for q in results]
    for k in range(len(edges) - 1):
        cells = " | ".join(_fmt(t[k]) for t in table)
        lines.append(f"| {edges[k]}-{edges[k + 1] - 1} | {cells} |")
    return "\n".join(lines)


def plot_iou_vs_step(results: list[DatasetQuality], edges: np.ndarray,
                     path: str | os.PathLike) -> Path:
    """Write a PNG of mean IoU against episode step (bin centres), one line per dataset (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (edges[:-1] + edges[1:] - 1) / 2
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for q in results:
        ax.plot(centres, binned_iou(q, edges), marker="o",
                label=f"{q.env_id} ({q.checkpoint}, {q.image_size} px)")
    ax.set_xlabel("episode step")
    ax.set_ylabel("IoU (SAM 2 vs exact mask)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_report(datasets: list[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
                 bins: int = DEFAULT_BINS) -> tuple[str, list[Path]]:
    """Compute the IoUs of every dataset, write the table and plot; returns ``(table, files)``."""
    paths = [datasets] if isinstance(datasets, (str, os.PathLike)) else list(datasets)
    results = [dataset_quality(p) for p in find_datasets(paths)]
    edges = step_bins(max(int(q.step.max()) for q in results), bins)
    table = format_markdown(results, edges)
    out = Path(out_dir)
    atomic_write_text(out / REPORT_TABLE, table + "\n")
    plot = plot_iou_vs_step(results, edges, out / REPORT_PLOT)
    return table, [out / REPORT_TABLE, plot]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _cmd_mask_quality(args: argparse.Namespace) -> None:
    """Print and plot how well the SAM 2 masks match the exact ones."""
    table, files = write_report(args.dataset, args.out, bins=args.bins)
    print(table)
    print("wrote " + ", ".join(str(f) for f in files))


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mask-quality`` sub-command."""
    p = subparsers.add_parser("mask-quality",
                              help="IoU of the SAM 2 masks vs the exact masks (table and plot)")
    p.add_argument("--dataset", required=True, nargs="+",
                   help="dataset folders with SAM 2 masks, or roots holding several")
    p.add_argument("--out", default="mask_quality",
                   help="folder for mask_quality.md and mask_quality.png (default: mask_quality)")
    p.add_argument("--bins", type=int_at_least(1), default=DEFAULT_BINS,
                   help=f"episode-step bins of the plot (default: {DEFAULT_BINS})")
    p.set_defaults(func=_cmd_mask_quality, output_folders=("out",))


__all__ = [
    "DatasetQuality",
    "add_cli",
    "binned_iou",
    "dataset_quality",
    "find_datasets",
    "format_markdown",
    "mask_iou",
    "plot_iou_vs_step",
    "step_bins",
    "write_report",
]
