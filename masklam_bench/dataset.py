"""Collected datasets on disk: their layout, validation, metadata, and a fast loader for training.

A dataset is a Minari dataset (HDF5 backend, no JPEG) under a datasets root::

    <root>/masklam/<env id>/<policy>-v0/data/main_data.hdf5
    <root>/masklam/<env id>/<policy>-v0/data/metadata.json

so ``MINARI_DATASETS_PATH=<root>`` and ``minari.load_dataset("masklam/<env id>/<policy>-v0")``
open it. Each ``episode_{i}`` group holds T actions, rewards, terminations and truncations, and
T + 1 observations: a dict of ``pixels`` (the distracting frame, raw), ``clean_pixels`` (the
same state without distractors, when collected; gzip), ``agent_mask`` (exact, 0/1 uint8; gzip)
and ``state``, plus the distractor's per-step ``infos``. A 1000-step 64x64 episode takes about
15 MB on disk (12.3 MB of it distracting frames, which do not compress).

A collection in progress lives in a hidden sibling folder (``.<policy>-v0.partial``) and is
renamed into place only once everything is written, so a folder under its final name is complete;
its metadata also records a completion marker and the size and SHA-256 of every data file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from masklam_bench.errors import BenchError

FORMAT_VERSION = 1
"""Version of the layout below; a dataset written with another version must be collected again."""
NAMESPACE = "masklam"
"""Minari namespace of every dataset the suite writes."""
DATASET_VERSION = 0
"""Minari dataset version (the ``-v0`` of the id)."""
DATA_DIR = "data"
"""Minari's sub-folder holding the data and its metadata."""
MAIN_FILE = "main_data.hdf5"
"""Minari's name for the HDF5 file of all episodes."""
METADATA_FILE = "metadata.json"
"""Minari's metadata file (Minari fields plus the suite's)."""
PARTIAL_SUFFIX = ".partial"
"""Suffix of the hidden folder a collection is written into before it is renamed into place."""
COMPLETE_KEY = "collection_complete"
"""Metadata key written last, when every episode and checksum is in place."""
DEFAULT_TEST_FRACTION = 0.1
"""Held-out share of episodes when no preset says otherwise (MaskLAM code: 9M train / 1M test)."""
SPLITS = ("train", "test", "all")
"""Episode splits: the last ``test_episodes`` episodes are ``test``, the others ``train``."""

_HASH_CHUNK = 1 << 24  # bytes read at a time while hashing


class DatasetError(BenchError, ValueError):
    """A dataset is missing, incomplete, damaged or of another format version."""


@dataclasses.dataclass(eq=False)
class FrameData:
    """One split of a dataset as contiguous arrays, episodes concatenated in order.

    An episode of T steps contributes T + 1 frames. Memory: frames take N * H * W * 3 bytes (12 GB
    for 1M frames at 64x64) and clean frames as much again; masks stay bit-packed (N * H * W / 8).
    """

    frames: np.ndarray
    """``(N, H, W, 3)`` uint8: every observation (with distractors) of the split."""
    clean_frames: np.ndarray | None
    """``(N, H, W, 3)`` uint8: the paired distractor-free frames, or None if not stored or loaded."""
    masks: np.ndarray
    """``(N, H, ceil(W / 8))`` uint8: ``np.packbits(agent_mask, axis=-1)``; see ``unpack_masks``."""
    actions: np.ndarray
    """``(N, A)`` float32: the action taken at frame i (zeros on each episode's last frame)."""
    states: np.ndarray
    """``(N, S)`` float32: proprioceptive state at frame i."""
    rewards: np.ndarray
    """``(N,)`` float32: reward after the action at frame i (0 on each episode's last frame)."""
    episode_start: np.ndarray
    """``(N,)`` int64: index of the first frame of frame i's episode."""
    episode_end: np.ndarray
    """``(N,)`` int64: index of the last frame of frame i's episode."""
    transitions: np.ndarray
    """``(M,)`` int64: frames i whose successor i + 1 is in the same episode, in order."""
    split: str = "train"
    """Which split these frames are: ``train``, ``test`` or ``all``."""
    episode_ids: np.ndarray | None = None
    """``(E,)`` int64: the dataset's episode indices (``episode_{i}``) in this split, in order."""

    def unpack_masks(self, index: np.ndarray) -> np.ndarray:
        """Boolean agent masks ``(len(index), H, W)`` of the frames at ``index``."""
        width = self.frames.shape[2]
        bits = np.unpackbits(self.masks[np.asarray(index)], axis=-1, count=width)
        return bits.view(bool)

    @property
    def image_size(self) -> int:
        """Height (= width) of the frames in pixels."""
        return int(self.frames.shape[1])

    @property
    def action_dim(self) -> int:
        """Number of action dimensions."""
        return int(self.actions.shape[1])

    @property
    def state_dim(self) -> int:
        """Number of proprioceptive state dimensions."""
        return int(self.states.shape[1])

    @property
    def num_frames(self) -> int:
        """Number of frames N."""
        return int(self.frames.shape[0])

    @property
    def num_transitions(self) -> int:
        """Number of valid ``(o_i, a_i, o_{i+1})`` transitions M."""
        return int(self.transitions.shape[0])

    @property
    def num_episodes(self) -> int:
        """Number of episodes in the split."""
        return int(np.count_nonzero(self.episode_start == np.arange(self.num_frames)))


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def dataset_id(env_name: str, policy: str) -> str:
    """Minari id of a collection, e.g. ``masklam/DistractingCheetah-v0/expert-v0``."""
    bare = env_name.split(":", 1)[-1]
    return f"{NAMESPACE}/{bare}/{policy}-v{DATASET_VERSION}"


def partial_dir(path: str | Path) -> Path:
    """The hidden folder a dataset at ``path`` is written into until it is complete."""
    path = Path(path)
    return path.parent / f".{path.name}{PARTIAL_SUFFIX}"


def minari_location(path: str | Path) -> tuple[Path, str]:
    """``(root, dataset_id)``: set ``MINARI_DATASETS_PATH=root`` and load ``dataset_id``."""
    folder = _resolve(path)
    meta = _read_metadata(folder)
    ident = meta["dataset_id"]
    root = folder
    for _ in ident.split("/"):
        root = root.parent
    return root, ident


def _resolve(path: str | Path) -> Path:
    """The dataset folder meant by ``path``: the folder, its ``data/``, its HDF5 file, or a root
    that holds exactly one dataset."""
    p = Path(path)
    if p.name == MAIN_FILE:
        return p.parent.parent
    if p.name == DATA_DIR and (p / METADATA_FILE).exists():
        return p.parent
    if (p / DATA_DIR).is_dir() or partial_dir(p).exists() or not p.is_dir():
        return p
    found = sorted(m.parent.parent for m in p.glob(f"{NAMESPACE}/*/*/{DATA_DIR}/{METADATA_FILE}"))
    partials = sorted(p.glob(f"{NAMESPACE}/*/.*{PARTIAL_SUFFIX}"))
    if len(found) + len(partials) > 1:
        names = ", ".join(str(f.relative_to(p)) for f in found + partials)
        raise DatasetError(f"{p} holds several datasets ({names}); pass the folder of one.")
    if found:
        return found[0]
    if partials:
        part = partials[0]
        return part.parent / part.name[1:-len(PARTIAL_SUFFIX)]
    return p


# ----------------------------------------------------------------------------------------------
# Validation and metadata
# ----------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_metadata(folder: Path) -> dict[str, Any]:
    """The metadata of a dataset folder, with a clear error when it is missing or incomplete."""
    meta_path = folder / DATA_DIR / METADATA_FILE
    if not meta_path.exists():
        if partial_dir(folder).exists():
            raise DatasetError(
                f"The collection at {folder} is incomplete (it was interrupted before it "
                f"finished); rerun the same `masklam-bench collect` command to resume it.")
        if (folder / DATA_DIR).exists():
            raise DatasetError(
                f"{folder} has no {DATA_DIR}/{METADATA_FILE}, so it is incomplete or damaged; "
                f"delete it and run `masklam-bench collect` again.")
        raise DatasetError(
            f"No dataset at {folder}; collect one with "
            f"`masklam-bench collect --env <id> --out <root>`.")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{meta_path} cannot be read ({err}); delete the dataset and collect "
                           f"it again.") from err
    if not isinstance(meta, dict) or not meta.get(COMPLETE_KEY):
        raise DatasetError(
            f"The collection at {folder} is incomplete (no completion marker in its metadata); "
            f"delete it and run `masklam-bench collect` again.")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{folder} has dataset format version {version} but this masklam-bench reads "
            f"version {FORMAT_VERSION}; collect it again with this version.")
    _check_metadata(meta, meta_path)
    return meta


METADATA_DIGEST_KEY = "metadata_sha256"
"""The metadata's own SHA-256 (:func:`metadata_digest`), recorded at collection since 2026-12-05:
a hand edit (a reference score, an episode count) would otherwise change results while the data
files' checksums still pass. Datasets collected before it have none and are not checked."""

_METADATA_INTS = {"total_episodes": 1, "test_episodes": 0, "image_size": 1, "action_dim": 1,
                  "state_dim": 1}
"""Integer metadata fields the suite reads, with their least value."""


def metadata_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of ``meta`` without :data:`METADATA_DIGEST_KEY`, as canonical JSON."""
    body = {k: v for k, v in meta.items() if k != METADATA_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_metadata(meta: dict[str, Any], meta_path: Path) -> None:
    """One clear error for metadata that was edited, or lacks or mistypes a field the suite reads."""
    def bad(what: str) -> DatasetError:
        return DatasetError(f"{meta_path} {what}; restore it or delete the dataset and collect "
                            f"it again.")

    recorded = meta.get(METADATA_DIGEST_KEY)
    if recorded is not None and recorded != metadata_digest(meta):
        raise bad("was edited after collection (its recorded metadata_sha256 no longer matches)")
    files = meta.get("files")
    if not isinstance(files, dict) or not files or not all(
            isinstance(r, dict) and _is_count(r.get("size"), 0)
            and isinstance(r.get("sha256"), str) for r in files.values()):
        raise bad("lacks a 'files' record of each data file's size and sha256")
    for key, least in _METADATA_INTS.items():
        if not _is_count(meta.get(key), least):
            raise bad(f"has {key}={meta.get(key)!r}, not an integer >= {least}")
    collection = meta.get("collection")
    if not isinstance(collection, dict) or not isinstance(meta.get("env_id"), str):
        raise bad("lacks the collection's settings or env_id")
    if collection.get("test_episodes", meta["test_episodes"]) != meta["test_episodes"]:
        raise bad(f"has test_episodes={meta['test_episodes']} but its collection used "
                  f"{collection['test_episodes']}")
    for key in ("ref_min_score", "ref_max_score"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad(f"has {key}={value!r}, not a number")


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def validate_dataset(path: str | Path, checksum: bool = True) -> None:
    """Raise :class:`DatasetError` unless ``path`` holds a complete, intact dataset.

    Checks the completion marker, the format version, each data file's recorded size, its SHA-256
    (``checksum=True``; reads every byte, about 1 s per GB) and that the HDF5 file opens with the
    recorded episodes in it.
    """
    folder = _resolve(path)
    meta = _read_metadata(folder)
    for name, record in meta["files"].items():
        file = folder / DATA_DIR / name
        if not file.exists():
            raise DatasetError(f"{file} is missing; delete the dataset and collect it again.")
        size = file.stat().st_size
        if size != record["size"]:
            raise DatasetError(
                f"{file} is {size} bytes but the collection wrote {record['size']} (truncated or "
                f"modified); delete the dataset and collect it again.")
        if checksum and file_sha256(file) != record["sha256"]:
            raise DatasetError(
                f"{file} is corrupted (its SHA-256 differs from the one recorded at collection); "
                f"delete the dataset and collect it again.")
    main = folder / DATA_DIR / MAIN_FILE
    try:
        with h5py.File(main, "r") as f:
            missing = [i for i in range(meta["total_episodes"]) if f"episode_{i}" not in f]
            extra = sum(name.startswith("episode_") for name in f) \
                - (meta["total_episodes"] - len(missing))
    except OSError as err:
        raise DatasetError(f"{main} cannot be read as HDF5 ({err}); delete the dataset and "
                           f"collect it again.") from err
    if missing:
        raise DatasetError(f"{main} lacks episodes {missing[:5]} of the {meta['total_episodes']} "
                           f"recorded; delete the dataset and collect it again.")
    if extra:
        raise DatasetError(f"{main} holds {extra} more episodes than the "
                           f"{meta['total_episodes']} its metadata records; delete the dataset "
                           f"and collect it again.")


def dataset_metadata(path: str | Path) -> dict[str, Any]:
    """The dataset's metadata: Minari's fields (``dataset_id``, ``ref_min_score``,
    ``ref_max_score``, spaces as JSON strings, ...) and the suite's (``env_id``, ``action_dim``,
    ``preset``, ``test_episodes``, ``package_versions``, ...), plus ``path`` (the dataset folder)."""
    folder = _resolve(path)
    meta = _read_metadata(folder)
    return {**meta, "path": str(folder)}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def split_episodes(total: int, test_episodes: int, split: str) -> np.ndarray:
    """Episode indices of a split: the last ``test_episodes`` are ``test``, the rest ``train``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    if not 0 <= test_episodes <= total:
        raise DatasetError(f"test_episodes must be between 0 and the {total} episodes of the "
                         f"dataset; got {test_episodes}.")
    first, stop = {"train": (0, total - test_episodes), "test": (total - test_episodes, total),
                   "all": (0, total)}[split]
    return np.arange(first, stop, dtype=np.int64)


def load_frames(path: str | Path, split: str = "train", test_episodes: int | None = None, *,
                clean: bool = True) -> FrameData:
    """Load one split of a dataset into contiguous arrays (see :class:`FrameData`).

    Args:
        path: The dataset folder that ``collect`` returned (or its ``data/`` folder, its HDF5 file,
            or a datasets root holding exactly one dataset).
        split: ``train``, ``test`` (the last ``test_episodes`` episodes) or ``all``.
        test_episodes: Held-out episodes; defaults to the number recorded at collection.
        clean: Also load the paired clean frames when the dataset has them (doubles the memory).
    """
    folder = _resolve(path)
    validate_dataset(folder, checksum=False)
    meta = _read_metadata(folder)
    if test_episodes is None:
        test_episodes = int(meta["test_episodes"])
    ids = split_episodes(int(meta["total_episodes"]), test_episodes, split)
    if len(ids) == 0:
        raise DatasetError(f"The {split} split of {folder} is empty (test_episodes="
                           f"{test_episodes} of {meta['total_episodes']} episodes).")
    size, action_dim, state_dim = meta["image_size"], meta["action_dim"], meta["state_dim"]
    with h5py.File(folder / DATA_DIR / MAIN_FILE, "r") as f:
        groups = [f[f"episode_{i}"] for i in ids]
        lengths = np.array([int(g.attrs["total_steps"]) + 1 for g in groups], dtype=np.int64)
        n = int(lengths.sum())
        with_clean = clean and "clean_pixels" in groups[0]["observations"]
        frames = np.empty((n, size, size, 3), np.uint8)
        clean_frames = np.empty((n, size, size, 3), np.uint8) if with_clean else None
        masks = np.empty((n, size, (size + 7) // 8), np.uint8)
        states = np.empty((n, state_dim), np.float32)
        actions = np.zeros((n, action_dim), np.float32)
        rewards = np.zeros((n,), np.float32)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for g, a, length in zip(groups, starts, lengths):
            b = a + length
            obs = g["observations"]
            obs["pixels"].read_direct(frames, dest_sel=np.s_[a:b])
            if clean_frames is not None:
                obs["clean_pixels"].read_direct(clean_frames, dest_sel=np.s_[a:b])
            masks[a:b] = np.packbits(obs["agent_mask"][()], axis=-1)
            obs["state"].read_direct(states, dest_sel=np.s_[a:b])
            g["actions"].read_direct(actions, dest_sel=np.s_[a:b - 1])
            rewards[a:b - 1] = g["rewards"][()]
    episode_start = np.repeat(starts, lengths)
    episode_end = episode_start + np.repeat(lengths, lengths) - 1
    transitions = np.flatnonzero(np.arange(n) != episode_end).astype(np.int64)
    return FrameData(frames=frames, clean_frames=clean_frames, masks=masks, actions=actions,
                     states=states, rewards=rewards, episode_start=episode_start,
                     episode_end=episode_end, transitions=transitions, split=split,
                     episode_ids=ids)


def load_background_motion(path: str | Path, split: str = "train",
                           test_episodes: int | None = None) -> np.ndarray | None:
    """Exogenous background motion ``(N, 2)`` of the transition starting at each frame of a split.

    Row i is the window shift between o_i and o_{i+1} minus its action-coupled part,
    ``motion - coupling * W a_i``, minus its episode mean (the episode's drift), so what remains
    is the per-step jitter; zeros on each episode's last frame. Aligned with
    ``load_frames(path, split).frames``. None when the dataset has no distractors.
    """
    folder = _resolve(path)
    meta = _read_metadata(folder)
    if str(meta.get("env_id", "")).startswith("Clean"):
        return None  # its env still writes the (unseen) motion of a background it never shows
    if test_episodes is None:
        test_episodes = int(meta["test_episodes"])
    ids = split_episodes(int(meta["total_episodes"]), test_episodes, split)
    spec = meta.get("env_spec") or {}
    spec = json.loads(spec) if isinstance(spec, str) else spec  # Minari stores it as JSON text
    coupling = float((spec.get("kwargs") or {}).get("coupling", 1.0))
    rows = []
    with h5py.File(folder / DATA_DIR / MAIN_FILE, "r") as f:
        for i in ids:
            infos = f[f"episode_{i}"].get("infos")
            if infos is None or "distractor_motion" not in infos:
                return None
            # The info of frame j+1 holds the shift that happened on the step from j to j+1.
            shift = infos["distractor_motion"][()] - coupling * infos["distractor_projected_action"][()]
            # Each episode drifts at its own random velocity, which no model can know for an unseen
            # episode; the per-step part (jitter) is what a latent could encode.
            shift = shift[1:] - shift[1:].mean(axis=0)
            rows.append(np.concatenate([shift, np.zeros((1, 2))]).astype(np.float32))
    return np.concatenate(rows)


def labelled_subset(data: FrameData, n: int) -> np.ndarray:
    """Indices of the first ``n`` transitions of the train split (MaskLAM code takes the first N)."""
    if data.split != "train":
        raise ValueError(f"The labelled subset comes from the train split, not {data.split!r}.")
    if not 0 < n <= data.num_transitions:
        raise DatasetError(f"Asked for {n} labelled transitions but the train split has "
                         f"{data.num_transitions}; collect more episodes or label fewer.")
    return data.transitions[:n].copy()


__all__ = [
    "DatasetError",
    "FrameData",
    "dataset_id",
    "dataset_metadata",
    "labelled_subset",
    "load_background_motion",
    "load_frames",
    "minari_location",
    "split_episodes",
    "validate_dataset",
]
