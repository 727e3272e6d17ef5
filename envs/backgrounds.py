"""Procedural background videos: seeded, tileable, animated, in several visually different families.

A video is a ``(T, C, C, 3)`` uint8 array whose frames are periodic in both image axes, so an
observation-sized window can be cut out at any (wrapping) offset. The distractor moves that window
every step; the video's own animation advances one frame per step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

from masklam_bench.errors import MissingFileError

VIDEO_FRAMES = 64
"""Frames per procedural video (DAVIS-2017 videos have 50 to 100 frames)."""

ID_FAMILIES = ("noise", "shapes", "stripes")
"""Families shown in distribution."""
OOD_ONLY_FAMILIES = ("plasma",)
"""Families only the OOD pool shows."""

# Colour palettes, as RGB stops in [0, 255] that a scalar field is mapped through.
PALETTES: dict[str, np.ndarray] = {
    "warm": np.array([[60, 10, 10], [200, 60, 20], [250, 180, 60], [255, 240, 200]], np.float32),
    "cool": np.array([[5, 20, 60], [20, 90, 160], [80, 190, 220], [210, 245, 255]], np.float32),
    "earth": np.array([[40, 30, 20], [100, 80, 40], [60, 120, 50], [190, 170, 120]], np.float32),
    "neon": np.array([[20, 0, 40], [255, 0, 160], [0, 255, 200], [250, 250, 0]], np.float32),
    "pastel": np.array([[250, 200, 210], [200, 230, 250], [220, 250, 200], [250, 240, 180]],
                       np.float32),
}
ID_PALETTES = ("warm", "cool", "earth")
"""Palettes shown in distribution."""
OOD_ONLY_PALETTES = ("neon", "pastel")
"""Palettes only the OOD pool shows."""

ID_POOL_SIZE = 24
"""Videos in the in-distribution pool (DCS: 60 DAVIS training videos)."""
OOD_POOL_SIZE = 12
"""Videos in the held-out pool (DCS: 30 DAVIS validation videos)."""
_OOD_SEED_BASE = 1_000_000
"""OOD videos draw their content seeds from a range the ID pool never uses."""


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one procedural video."""

    family: str
    """Generator family: ``noise``, ``shapes``, ``stripes`` or ``plasma``."""
    palette: str
    """Colour palette name (a key of ``PALETTES``)."""
    seed: int
    """Seed of the video's content."""

    @property
    def name(self) -> str:
        """A readable unique name, e.g. ``noise-warm-3``."""
        return f"{self.family}-{self.palette}-{self.seed}"


def video_pool(split: str) -> tuple[VideoSpec, ...]:
    """The fixed pool of videos of a split (``"id"`` or ``"ood"``); the two pools are disjoint.

    The ID pool cycles the three ID families through the three ID palettes. The OOD pool cycles all
    four families (the ID ones and the OOD-only ``plasma``) through the OOD-only palettes only, so
    every OOD video has a palette the ID pool never shows, and every fourth a family it never shows.
    """
    if split == "id":
        return tuple(
            VideoSpec(ID_FAMILIES[i % 3], ID_PALETTES[(i // 3) % 3], i) for i in range(ID_POOL_SIZE)
        )
    if split == "ood":
        # No ID palette here: an ID family in an ID palette would differ from ID videos only by
        # seed, a look the agent has already seen (OOD-v0 had three such videos).
        families = ID_FAMILIES + OOD_ONLY_FAMILIES
        return tuple(
            VideoSpec(families[i % len(families)],
                      OOD_ONLY_PALETTES[(i // len(families)) % len(OOD_ONLY_PALETTES)],
                      _OOD_SEED_BASE + i)
            for i in range(OOD_POOL_SIZE)
        )
    raise ValueError(f"Unknown split {split!r}; expected 'id' or 'ood'.")


def _colourise(field: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a scalar field in [0, 1] through a palette's colour stops to uint8 RGB.

    One frame and channel at a time into the uint8 result, so that the float64 intermediates stay
    a frame's size (all of them at once peaked at about 19 bytes per output byte)."""
    stops = np.linspace(0.0, 1.0, len(palette))
    out = np.empty(field.shape + (3,), np.uint8)
    for t in range(field.shape[0]):
        for c in range(3):
            out[t, ..., c] = np.clip(np.interp(field[t], stops, palette[:, c]), 0, 255)
    return out


def _normalise(field: np.ndarray) -> np.ndarray:
    """Rescale a field to [0, 1] over the whole video (so brightness does not flicker)."""
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6)


def _grid(canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates as fractions of the period, shaped for broadcasting over (T, y, x)."""
    u = np.arange(canvas, dtype=np.float32) / canvas
    return u[None, :, None], u[None, None, :]


def _noise(rng: np.random.Generator, canvas: int, frames: int) -> np.ndarray:
    """Drifting smooth noise: a sum of low-frequency periodic waves whose phases advance in time."""
    y, x = _grid(canvas)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    field = np.zeros((frames, canvas, canvas), np.float32)
    for _ in range(10):
        ky, kx = rng.integers(-4, 5, size=2)
        if ky == 0 and kx == 0:
            kx = 1
        amp = 1.0 / np.hypot(ky, kx)
        omega = rng.uniform(-0.15, 0.15)
        field += amp * np.cos(2 * np.pi * (ky * y + kx * x) + omega * t + rng.uniform(0, 2 * np.pi))
    return _normalise(field)


def _shapes(rng: np.random.Generator, canvas: int, frames: int) -> np.ndarray:
    """Discs and squares of different shades moving on a torus over a flat backdrop."""
    y, x = _grid(canvas)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    field = np.full((frames, canvas, canvas), rng.uniform(0.0, 0.3), np.float32)
    for _ in range(int(rng.integers(6, 11))):
        cy, cx = rng.uniform(0, 1, size=2)
        vy, vx = rng.uniform(-0.012, 0.012, size=2)
        radius = rng.uniform(0.05, 0.16)
        # Wrapped distance on the unit torus keeps the video periodic.
        dy = (y - (cy + vy * t) + 0.5) % 1.0 - 0.5
        dx = (x - (cx + vx * t) + 0.5) % 1.0 - 0.5
        if rng.random() < 0.5:
            inside = dy**2 + dx**2 < radius**2
        else:
            inside = np.maximum(np.abs(dy), np.abs(dx)) < radius
        field = np.where(inside, rng.uniform(0.35, 1.0), field)
    return field


def _stripes(rng: np.random.Generator, canvas: int, frames: int) -> np.ndarray:
    """Scrolling plaid: two or three sharp periodic stripe patterns moving at their own speeds."""
    y, x = _grid(canvas)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    field = np.zeros((frames, canvas, canvas), np.float32)
    for _ in range(int(rng.integers(2, 4))):
        ky, kx = rng.integers(-6, 7, size=2)
        if ky == 0 and kx == 0:
            ky = 3
        speed = rng.uniform(-0.1, 0.1)
        wave = np.sin(2 * np.pi * (ky * y + kx * x) + speed * t + rng.uniform(0, 2 * np.pi))
        field += (wave > rng.uniform(-0.3, 0.3)).astype(np.float32)
    return _normalise(field)


def _plasma(rng: np.random.Generator, canvas: int, frames: int) -> np.ndarray:
    """Warped interference rings: phase-modulated waves, a look no ID family produces."""
    y, x = _grid(canvas)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    k1, k2, k3 = rng.integers(1, 4, size=3)
    w1, w2 = rng.uniform(0.05, 0.2, size=2)
    inner = np.sin(2 * np.pi * k2 * y + w1 * t) + np.cos(2 * np.pi * k3 * x - w2 * t)
    field = np.sin(2 * np.pi * k1 * (x + y) + 2.5 * inner)
    field += np.sin(2 * np.pi * k1 * (x - y) + 2.0 * inner)
    return _normalise(field)


_FAMILIES = {"noise": _noise, "shapes": _shapes, "stripes": _stripes, "plasma": _plasma}


VIDEO_CACHE_BYTES = 256 * 2**20
"""The videos :func:`render_video` keeps, in bytes: every video of both pools at 64 px (3 MiB
each), a few at 256 px; the latest video is kept whatever its size."""
_video_cache: collections.OrderedDict[tuple[VideoSpec, int, int], np.ndarray] = \
    collections.OrderedDict()


def render_video(spec: VideoSpec, canvas: int, frames: int = VIDEO_FRAMES) -> np.ndarray:
    """A procedural video as a read-only ``(frames, canvas, canvas, 3)`` uint8 array.

    Generated once and kept while the videos kept stay under :data:`VIDEO_CACHE_BYTES` (the least
    recently used go first)."""
    key = (spec, canvas, frames)
    video = _video_cache.get(key)
    if video is not None:
        _video_cache.move_to_end(key)
        return video
    rng = np.random.default_rng(spec.seed)
    field = _FAMILIES[spec.family](rng, canvas, frames)
    video = _colourise(field, PALETTES[spec.palette])
    video.flags.writeable = False
    _video_cache[key] = video
    while len(_video_cache) > 1 and sum(v.nbytes for v in _video_cache.values()) \
            > VIDEO_CACHE_BYTES:
        _video_cache.popitem(last=False)
    return video


def clear_video_cache() -> None:
    """Drop every video :func:`render_video` keeps."""
    _video_cache.clear()


# --------------------------------------------------------------------------------------------
# DAVIS-2017 videos (optional; the user brings them)
# --------------------------------------------------------------------------------------------
DAVIS_ENV_VAR = "MASKLAM_DAVIS_DIR"
"""Environment variable pointing at a DAVIS-2017 folder, used when no ``davis_dir`` is given."""


def davis_dir_from(given: str | os.PathLike | None) -> str | None:
    """The DAVIS folder an env reads: ``given``, else ``$MASKLAM_DAVIS_DIR``, else None."""
    return os.fspath(given) if given else os.environ.get(DAVIS_ENV_VAR) or None


PROCEDURAL_VIDEOS = "procedural"
"""Name of the distractor videos an env plays without DAVIS: its own procedural ones. Result files
record it (``dataset.distractor_videos``); a file without the record counts as procedural."""
DAVIS_VIDEOS = "DAVIS-2017"
"""Name of the distractor videos an env plays with a DAVIS folder."""


def distractor_videos(given: str | os.PathLike | None = None) -> str:
    """:data:`DAVIS_VIDEOS` when an env made with ``davis_dir=given`` reads DAVIS (``given`` or
    ``$MASKLAM_DAVIS_DIR``), else :data:`PROCEDURAL_VIDEOS`."""
    return DAVIS_VIDEOS if davis_dir_from(given) else PROCEDURAL_VIDEOS


def davis_pool(root: str | Path, split: str) -> tuple[Path, ...]:
    """The DAVIS-2017 video folders of a split: DCS's 60 train videos (ID) or 30 val videos (OOD).

    Expects the layout of the DAVIS-2017 trainval download: ``ImageSets/2017/{train,val}.txt`` and
    ``JPEGImages/480p/<video>/*.jpg``.
    """
    root = Path(root)
    list_name = {"id": "train.txt", "ood": "val.txt"}[split]
    listing = root / "ImageSets" / "2017" / list_name
    frames_root = root / "JPEGImages" / "480p"
    if not listing.is_file() or not frames_root.is_dir():
        raise MissingFileError(
            f"{root} is not a DAVIS-2017 folder: expected {listing} and {frames_root}. "
            "Download DAVIS-2017 trainval (480p) and point davis_dir (or "
            f"${DAVIS_ENV_VAR}) at the folder that contains ImageSets/ and JPEGImages/."
        )
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    videos = tuple(frames_root / name for name in names)
    missing = [v.name for v in videos if not any(v.glob("*.jpg"))]
    if missing or not videos:
        raise MissingFileError(
            f"DAVIS folder {root} is incomplete: no frames for {missing[:5] or 'any video'} "
            f"listed in {listing}."
        )
    return videos


@functools.lru_cache(maxsize=4)
def load_davis_video(folder: Path, canvas: int) -> np.ndarray:
    """Load a DAVIS video as a tileable ``(T, canvas, canvas, 3)`` array by mirror-tiling each frame.

    Each frame is resized to half the canvas and mirrored into the four quadrants, which makes
    it periodic so the moving window never shows a seam.
    """
    from PIL import Image

    half = canvas // 2
    frames = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            small = np.asarray(image.convert("RGB").resize((half, half), Image.BILINEAR))
        top = np.concatenate([small, small[:, ::-1]], axis=1)
        frames.append(np.concatenate([top, top[::-1]], axis=0))
    video = np.stack(frames)
    video.flags.writeable = False
    return video
