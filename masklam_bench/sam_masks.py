"""SAM 2 agent masks for a collected dataset: ``masklam-bench masks --source sam2``.

MaskLAM gets its agent masks from SAM 2's video predictor, prompted once per video. Here each
episode is prompted with a box on its first frame (by default the bounding box of the exact mask
there, the stand-in for a user's click) and SAM 2 tracks the agent through the episode. Long
episodes are tracked in chunks of frames, each chunk prompted with the box of the mask predicted on
the last frame of the chunk before, so memory stays bounded.

The masks go into a sidecar file next to the dataset, ``<dataset>/sam_masks.hdf5``, one group
``episode_{i}`` per episode holding ``sam_mask``: ``(T + 1, H, ceil(W / 8))`` uint8, the bool masks
bit-packed along the width exactly like :attr:`masklam_bench.dataset.FrameData.masks`. The dataset
file itself is never modified (its size and checksum are recorded at collection). Work in progress
lives in ``<dataset>/.sam_masks.partial/``, one file per finished episode written atomically, so an
interrupted run resumes; the sidecar is assembled from them and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from masklam_bench import dataset as ds
from masklam_bench import interrupts
from masklam_bench.checks import check_device, int_at_least
from masklam_bench.errors import BenchError
from masklam_bench.fileio import atomic_path, atomic_write_json
from masklam_bench.provenance import lock_folder, unlock_folder

if TYPE_CHECKING:
    import torch

SIDECAR_FILE = "sam_masks.hdf5"
"""Name of the sidecar file of SAM 2 masks inside a dataset folder."""
SPEED_FILE = "sam_masks_speed.json"
"""The seconds per frame of the run that finished the masks, beside the mask file and not in it,
so that the same masks make the same file (and sha256), however their run was interrupted."""
PARTIAL_DIR = ".sam_masks.partial"
"""Folder inside the dataset folder holding finished episodes of an unfinished run."""
LOCK_FILE = ".sam_masks.lock"
"""File inside the dataset folder that the process making its masks holds (``flock``)."""
MASK_KEY = "sam_mask"
"""Name of the bit-packed mask array inside each ``episode_{i}`` group of the sidecar."""
FORMAT_VERSION = 1
"""Version of the sidecar layout."""
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
"""SAM 2.1 hiera-tiny (39M parameters), the config bundled with the ``sam2`` package."""
DEFAULT_CHUNK = 200
"""Frames tracked per chunk (a chunk's frames and memory stay in memory at once)."""
RANDOM_CHECKPOINT = "random"
"""``checkpoint`` value that builds the model with random weights: tests the plumbing only."""
INSTALL_HINT = 'SAM2_BUILD_CUDA=0 pip install --no-build-isolation ".[sam2]"'
"""The install command for the ``sam2`` extra (see README, "SAM 2 masks")."""

_RANDOM_WEIGHTS_SEED = 0  # random weights are seeded so a resumed plumbing run matches a fresh one
_FEATURE_STRIDE = 16  # Hiera's stride at the memory-attention features (SAM 2: 1024 px -> 64x64)
_LOW_RES_STRIDE = 4  # SAM 2 predicts mask logits at image_size / 4 before resizing them
_FILL_HOLE_AREA = 8  # sam2.build_sam's post-processing: fill holes up to 8 low-res pixels
_MASK_THRESHOLD = 0.0  # SAM 2 binarises mask logits at 0
_OBJ_ID = 1  # the one tracked object (the agent)
_IMG_MEAN = (0.485, 0.456, 0.406)  # SAM 2's input normalisation (ImageNet statistics)
_IMG_STD = (0.229, 0.224, 0.225)
_SETTINGS_FILE = "settings.json"  # inside PARTIAL_DIR: the settings of the unfinished run
_HUB_ID = re.compile(r"^[\w.-]+/[\w.+-]+$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class SamMaskError(BenchError, ValueError):
    """SAM 2 masks cannot be made or read: the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Importing sam2 on CPU-only torch
# ----------------------------------------------------------------------------------------------
# The PyPI torchvision wheel's C++ ops (_C.so) link against CUDA torch libraries, so on CPU-only
# torch they fail to load, and `import torchvision` then dies in its _meta_registrations with
# "operator torchvision::nms does not exist". SAM 2's video predictor uses torchvision only for
# image transforms, never these ops, so declaring their schemas (no kernels) is enough to import
# it. The schemas are those of torchvision's csrc/ops; calling one of the ops raises "no kernel".
_TORCHVISION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    ("roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"),
    ("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
     "int sampling_ratio, bool aligned) -> Tensor"),
    ("qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
     "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"),
    ("ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"),
    ("_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
     "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
     "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"),
    ("roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width) -> (Tensor, Tensor)"),
    ("_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
     "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
     "SymInt height, SymInt width) -> Tensor"),
    ("ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
     "SymInt pooled_width) -> (Tensor, Tensor)"),
    ("_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
     "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
     "SymInt channels, SymInt height, SymInt width) -> Tensor"),
    ("deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
     "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
     "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"),
    ("_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
     "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
     "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
     "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"),
)
_torchvision_op_library: torch.library.Library | None = None  # kept alive: deleting it undefines


def _torchvision_has_ops() -> bool:
    """Whether ``torchvision::nms`` is a registered operator."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 (the lookup is the test)
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work on CPU-only torch (see the comment above the schemas).

    Loads torchvision's compiled ops when they load (a matching CUDA or CPU build: nothing else
    happens); only when they cannot load are their schemas declared, before torchvision is imported.
    """
    import torch

    global _torchvision_op_library
    if "torchvision" in sys.modules or _torchvision_has_ops():
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # not installed: the import itself reports it
    for lib in sorted(Path(spec.origin).parent.glob("_C*")):
        if lib.suffix in (".so", ".pyd"):
            with contextlib.suppress(OSError, ImportError):
                torch.ops.load_library(str(lib))
    if _torchvision_has_ops():
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OP_SCHEMAS:
        library.define(schema)
    _torchvision_op_library = library


def _import_sam2() -> tuple[Any, Any]:
    """``(sam2.build_sam, sam2.sam2_video_predictor)``, or one sentence on how to install them."""
    ensure_torchvision_importable()
    try:
        from sam2 import build_sam, sam2_video_predictor
    except ImportError as err:
        raise SamMaskError(
            f"SAM 2 is not installed ({err}); install the extra with `{INSTALL_HINT}`.") from err
    return build_sam, sam2_video_predictor


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------
def _config_overrides(image_size: int | None) -> list[str]:
    """Hydra overrides that run the model at ``image_size`` instead of the config's 1024."""
    if image_size is None:
        return []
    stride = 2 * _FEATURE_STRIDE  # Hiera halves the resolution 5 times (patch embed 4, then 2^3)
    if image_size < stride or image_size % stride:
        raise SamMaskError(f"image_size must be a positive multiple of {stride} (e.g. 256); "
                           f"got {image_size}.")
    feat = image_size // _FEATURE_STRIDE
    # The memory attention's rotary embeddings are sized for the feature map; SAM 2 would also
    # recompute them on the fly, but stating the size keeps the model consistent from the start.
    return [f"++model.image_size={image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]"]


def _bundled_configs() -> list[str]:
    """Config names shipped inside the ``sam2`` package (``configs/sam2.1/...yaml``)."""
    spec = importlib.util.find_spec("sam2")
    if spec is None or spec.origin is None:
        return []
    root = Path(spec.origin).parent
    return sorted(str(p.relative_to(root)) for p in root.glob("configs/sam2*/*.yaml"))


def _checkpoint_for_config(build_sam: Any, config: str) -> tuple[str, str]:
    """``(hub id, file name)`` of the released checkpoint that matches ``config``."""
    for hub_id, (cfg, filename) in build_sam.HF_MODEL_ID_TO_FILENAMES.items():
        if cfg == config:
            return hub_id, filename
    return "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt"


def _is_hub_id(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names a Hugging Face repository rather than a local file."""
    return bool(_HUB_ID.match(checkpoint)) and not checkpoint.endswith(_CHECKPOINT_SUFFIXES)


def build_predictor(checkpoint: str | None, config: str = DEFAULT_CONFIG, device: str = "cpu",
                    image_size: int | None = None, *,
                    allow_random_weights: bool = False) -> tuple[Any, dict[str, Any]]:
    """Build SAM 2's video predictor; returns ``(predictor, description)``.

    Args:
        checkpoint: A local ``.pt`` file; a Hugging Face id such as ``facebook/sam2.1-hiera-tiny``
            (downloaded by sam2 when online, or found in the hub cache; its own config is used);
            or ``"random"`` for random weights (plumbing tests only: the masks are meaningless).
        config: Bundled SAM 2 config of a local checkpoint.
        device: Torch device.
        image_size: Run the model at this input size instead of the config's (1024); frames are
            resized to it and masks come back at the frame size. 256 was 7x faster on a 2-core
            CPU (``benchmarks/sam_speed.py``).
        allow_random_weights: With ``checkpoint=None``, build random weights instead of failing.

    The description (recorded with the masks) holds the checkpoint, its SHA-256 for a local file,
    the config, the image size and whether the weights are random.
    """
    import torch

    build_sam, _ = _import_sam2()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SamMaskError(f"device {device!r} asked for, but PyTorch sees no CUDA device.")
    configs = _bundled_configs()
    if config not in configs:
        raise SamMaskError(f"Unknown SAM 2 config {config!r}; the sam2 package ships: "
                           f"{', '.join(configs)}.")
    overrides = _config_overrides(image_size)
    random_weights = checkpoint == RANDOM_CHECKPOINT or (checkpoint is None
                                                         and allow_random_weights)
    hub_id, filename = _checkpoint_for_config(build_sam, config)
    download = (f"download {filename} (from https://huggingface.co/{hub_id}/tree/main), put it "
                f"e.g. at checkpoints/{filename} and pass --checkpoint checkpoints/{filename}")
    missing = f"{download} (or pass --checkpoint {hub_id} to let sam2 download it when online)"
    info: dict[str, Any] = {"checkpoint": RANDOM_CHECKPOINT if random_weights else checkpoint,
                            "checkpoint_sha256": None, "config": config,
                            "random_weights": random_weights}
    if random_weights:
        # Seeded so the same plumbing run gives the same masks, resumed or not.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_WEIGHTS_SEED)
            predictor = build_sam.build_sam2_video_predictor(
                config, None, device=device, hydra_overrides_extra=overrides)
    elif checkpoint is None:
        raise SamMaskError(f"No SAM 2 checkpoint given: {missing}.")
    elif Path(checkpoint).is_file():
        info["checkpoint_sha256"] = ds.file_sha256(checkpoint)
        try:
            predictor = build_sam.build_sam2_video_predictor(
                config, checkpoint, device=device, hydra_overrides_extra=overrides)
        except (RuntimeError, KeyError, OSError) as err:
            raise SamMaskError(
                f"SAM 2 checkpoint {checkpoint} does not load into config {config} ({err!r}); "
                f"pass the config that matches it with --config.") from err
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            # A truncated download, or an HTML error page saved under the checkpoint's name.
            raise SamMaskError(
                f"{checkpoint} is not a SAM 2 checkpoint (torch.load: {type(err).__name__}); "
                f"{download} again.") from err
    elif _is_hub_id(checkpoint):
        known = build_sam.HF_MODEL_ID_TO_FILENAMES
        if checkpoint not in known:
            raise SamMaskError(f"Unknown SAM 2 hub id {checkpoint!r}; sam2 knows: "
                               f"{', '.join(known)}.")
        info["config"] = known[checkpoint][0]
        try:
            predictor = build_sam.build_sam2_video_predictor_hf(
                checkpoint, device=device, hydra_overrides_extra=overrides)
        except Exception as err:  # offline, unreachable or unauthorised hub: any error
            raise SamMaskError(
                f"Could not fetch {checkpoint} from the Hugging Face hub "
                f"({type(err).__name__}); {download}.") from err
    else:
        raise SamMaskError(f"SAM 2 checkpoint {checkpoint!r} not found: {missing}.")
    predictor.fill_hole_area = _sam2_fill_hole_area(predictor)
    info["image_size"] = int(predictor.image_size)
    return predictor, info


@functools.cache
def _has_sam2_extension() -> bool:
    """Whether sam2's optional compiled extension (connected components, CUDA only) imports."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _sam2_fill_hole_area(predictor: Any) -> int:
    """The predictor's hole filling, off where sam2's CUDA kernel is missing.

    Without the kernel sam2 warns on every frame and skips the step; :func:`fill_small_holes`
    does the same filling on the output masks instead.
    """
    return int(predictor.fill_hole_area) if _has_sam2_extension() else 0


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Set background components (8-connected) of at most ``max_area`` pixels to foreground.

    The CPU equivalent of SAM 2's ``fill_holes_in_mask_scores`` post-processing.
    """
    from scipy import ndimage

    if max_area < 1 or mask.all():
        return mask
    labels, count = ndimage.label(~mask, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    small = areas <= max_area
    small[0] = False  # label 0 is the foreground
    return mask | small[labels]


# ----------------------------------------------------------------------------------------------
# Tracking one episode
# ----------------------------------------------------------------------------------------------
class _FramesInMemory:
    """A video held in memory, passed to ``init_state`` instead of a folder of JPEG files."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames


def _frames_to_tensor(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, S, S)`` float32, resized and normalised as SAM 2 does."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        # SAM 2 resizes frames to a square of its input size (PIL bicubic for JPEG folders).
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bicubic",
                                            align_corners=False).clamp_(0.0, 1.0)
    mean = torch.tensor(_IMG_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMG_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@contextlib.contextmanager
def _in_memory_video(video_module: Any) -> Iterator[None]:
    """Let ``init_state`` take :class:`_FramesInMemory` and silence sam2's per-call progress bar.

    sam2's predictor only reads videos from an MP4 file or a folder of JPEG files; writing 64x64
    frames out as JPEG would add compression artefacts and disk traffic, so the loader it calls is
    swapped for one that also accepts frames in memory, for the duration of the block.
    """
    original_loader, original_tqdm = video_module.load_video_frames, video_module.tqdm

    def load(video_path: Any, image_size: int, offload_video_to_cpu: bool, *args: Any,
             compute_device: Any = None, **kwargs: Any) -> Any:
        if not isinstance(video_path, _FramesInMemory):
            return original_loader(video_path, image_size, offload_video_to_cpu, *args,
                                   compute_device=compute_device, **kwargs)
        images = _frames_to_tensor(video_path.frames, image_size)
        if not offload_video_to_cpu and compute_device is not None:
            images = images.to(compute_device)
        return images, video_path.frames.shape[1], video_path.frames.shape[2]

    video_module.load_video_frames = load
    video_module.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        video_module.load_video_frames, video_module.tqdm = original_loader, original_tqdm


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of a bool mask in pixel-edge coordinates, or None if empty.

    A mask covering columns c0..c1 and rows r0..r1 (inclusive) has the box (c0, r0, c1 + 1, r1 + 1).
    """
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    return float(c[0]), float(r[0]), float(c[-1] + 1), float(r[-1] + 1)


def _track_chunk(predictor: Any, video_module: Any, frames: np.ndarray,
                 box: tuple[float, float, float, float]) -> np.ndarray:
    """Bool masks ``(T, H, W)`` of the object in ``box`` on frame 0, tracked through ``frames``."""
    import torch

    masks = np.zeros(frames.shape[:3], bool)
    with _in_memory_video(video_module), torch.inference_mode():
        # Frames stay on the CPU and move to the device one at a time (a 200-frame chunk at
        # 1024 px would take 2.5 GB of GPU memory).
        state = predictor.init_state(_FramesInMemory(frames), offload_video_to_cpu=True)
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=_OBJ_ID,
                                        box=np.asarray(box, np.float32))
        for index, _, logits in predictor.propagate_in_video(state):
            masks[index] = (logits[0, 0] > _MASK_THRESHOLD).cpu().numpy()
            interrupts.raise_pending()  # a frame takes seconds: a swallowed Ctrl-C waits no longer
    return masks


def track_episode(predictor: Any, frames: np.ndarray, box: tuple[float, float, float, float],
                  chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Track the agent through one episode: bool masks ``(T, H, W)``, one per frame.

    Frames ``[0, chunk)`` are tracked from ``box`` on frame 0; each next chunk starts on the last
    frame of the previous one, prompted with the box of the mask predicted there (or of the last
    non-empty mask of that chunk, or the chunk's own prompt box if it lost the agent throughout),
    and keeps the previous chunk's mask for that shared frame.
    """
    if chunk < 2:
        raise SamMaskError(f"chunk must be at least 2 frames (chunks overlap by one); got {chunk}.")
    _, video_module = _import_sam2()
    n = len(frames)
    out = np.zeros(frames.shape[:3], bool)
    start = 0
    while True:
        stop = min(start + chunk, n)
        masks = _track_chunk(predictor, video_module, frames[start:stop], box)
        skip = 0 if start == 0 else 1
        out[start + skip:stop] = masks[skip:]
        if stop == n:
            break
        for mask in out[stop - 1:start - 1 if start else None:-1]:
            found = mask_box(mask)
            if found is not None:
                box = found
                break
        start = stop - 1
    max_area = _FILL_HOLE_AREA * (frames.shape[1] * _LOW_RES_STRIDE / predictor.image_size) ** 2
    if not _has_sam2_extension():
        out = np.stack([fill_small_holes(m, max_area) for m in out])
    return out


# ----------------------------------------------------------------------------------------------
# The dataset side
# ----------------------------------------------------------------------------------------------
def _dataset_folder(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The dataset folder and its metadata, after checking it is complete."""
    meta = ds.dataset_metadata(path)
    folder = Path(meta["path"])
    ds.validate_dataset(folder, checksum=False)
    return folder, meta


def _dataset_fingerprint(meta: dict[str, Any]) -> str | None:
    """The recorded SHA-256 of the dataset's HDF5 file: ties the sidecar to these exact frames."""
    record = meta.get("files", {}).get(ds.MAIN_FILE, {})
    return record.get("sha256")


def _parse_box(box: Any) -> tuple[float, float, float, float] | None:
    """Validate a user box ``(x0, y0, x1, y1)`` in frame pixels."""
    if box is None:
        return None
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not (values[0] < values[2] and values[1] < values[3]):
        raise SamMaskError(f"box must be (x0, y0, x1, y1) in frame pixels with x0 < x1 and "
                           f"y0 < y1, e.g. 10,20,40,60; got {box!r}.")
    return values  # type: ignore[return-value]


def _settings(info: dict[str, Any], box: Any, chunk: int, meta: dict[str, Any],
              device: str) -> dict[str, Any]:
    """What makes two runs' masks the same: compared before resuming, stored in the sidecar.

    On the CPU that includes torch's thread count: SAM 2's kernels reduce in another order
    with another count, which flipped a mask bit between 1 and 2 threads."""
    import torch

    threads = torch.get_num_threads() if torch.device(device).type == "cpu" else None
    return {"format_version": FORMAT_VERSION, "cpu_threads": threads,
            "weights": info["checkpoint_sha256"] or info["checkpoint"], "config": info["config"],
            "image_size": info["image_size"], "random_weights": info["random_weights"],
            "box": list(box) if box is not None else "exact-mask-first-frame", "chunk": chunk,
            "hole_filling": _hole_filling(), "dataset_sha256": _dataset_fingerprint(meta)}


_LATER_SETTINGS = ("hole_filling", "cpu_threads")
"""Settings that older mask files do not record (hole_filling: before 2026-12-04;
cpu_threads: before 2026-12-05)."""


def _hole_filling() -> str:
    """Which hole filling :func:`track_episode` applies here; masks made with the two differ.

    ``sam2-kernel``: SAM 2's own, on the low-resolution mask scores (its CUDA extension);
    ``fill_small_holes``: ours, on the output masks, where the extension is missing.
    """
    return "sam2-kernel" if _has_sam2_extension() else "fill_small_holes"


def _same_settings(old: dict[str, Any] | None, new: dict[str, Any], folder: Path, state: str,
                   overwrite: bool) -> bool:
    """Whether earlier masks were made like ``new``; if not, fail unless ``overwrite``."""
    old = old or {}
    # A setting recorded only since a later version (hole_filling) is not held against a file
    # made before it: its absence says nothing about how that file was made.
    changed = sorted(k for k in new if old.get(k) != new[k]
                     and not (k in _LATER_SETTINGS and k not in old))
    if changed and not overwrite:
        raise SamMaskError(
            f"{folder} already has {state} SAM 2 masks made with other settings "
            f"({', '.join(changed)}); pass --overwrite to replace them.")
    return not changed


def _episode_file(work: Path, index: int) -> Path:
    return work / f"episode_{index}.npy"


def _write_episode(work: Path, index: int, masks: np.ndarray) -> None:
    """Store one episode's bit-packed masks atomically (a reader never sees half a file)."""
    with atomic_path(_episode_file(work, index)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.packbits(masks, axis=-1))


def _assemble(folder: Path, work: Path, settings: dict[str, Any], extra: dict[str, Any],
              episodes: int, width: int) -> Path:
    """Merge the finished episodes into the sidecar file, written under a temporary name first."""
    final = folder / SIDECAR_FILE
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["settings"] = json.dumps(settings)
        f.attrs["info"] = json.dumps(extra)
        f.attrs["width"] = width
        f.attrs["total_episodes"] = episodes
        for i in range(episodes):
            packed = np.load(_episode_file(work, i))
            f.create_group(f"episode_{i}").create_dataset(
                MASK_KEY, data=packed, compression="gzip", shuffle=True)
        f.attrs["complete"] = True
    shutil.rmtree(work)
    return final


def sidecar_settings(path: str | os.PathLike) -> dict[str, Any] | None:
    """The settings the dataset's SAM 2 masks were made with, or None if it has none."""
    folder = Path(ds.dataset_metadata(path)["path"])
    file = folder / SIDECAR_FILE
    if not file.exists():
        return None
    settings, attrs = _sidecar_attrs(file, folder)
    try:
        speed = json.loads((folder / SPEED_FILE).read_text())
    except (OSError, ValueError):
        speed = {}  # made before the file existed, or lost: only a timing
    return {"seconds_per_frame": None, **(speed if isinstance(speed, dict) else {}),
            **settings, **json.loads(attrs.get("info", "{}"))}


def _sidecar_attrs(file: Path, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings and the attributes of a mask file, or a SamMaskError when it cannot be read
    (truncated by a full disk, say): the command that makes it again, with ``--overwrite``."""
    try:
        with h5py.File(file, "r") as f:
            attrs = dict(f.attrs)
        return json.loads(attrs["settings"]), attrs
    except (OSError, KeyError, ValueError) as err:
        raise SamMaskError(
            f"{file} cannot be read ({type(err).__name__}); make it again with `masklam-bench "
            f"masks --dataset {folder} --source sam2 --checkpoint <sam2.1_hiera_tiny.pt> "
            f"--overwrite`.") from None


def add_sam_masks(dataset_path: str | os.PathLike, checkpoint: str | None,
                  config: str = DEFAULT_CONFIG, device: str = "cpu",
                  box: tuple[float, float, float, float] | None = None,
                  chunk: int = DEFAULT_CHUNK, image_size: int | None = None,
                  progress: bool = True, *, allow_random_weights: bool = False,
                  overwrite: bool = False) -> Path:
    """Track the agent with SAM 2 in every episode of a dataset and store one mask per frame.

    Resumable: episodes finished by an interrupted run are kept and skipped; a finished sidecar
    made with the same settings is returned as it is.

    Args:
        dataset_path: The dataset folder (as for :func:`masklam_bench.dataset.load_frames`).
        checkpoint: Local checkpoint file, Hugging Face id, or ``"random"`` (plumbing only); see
            :func:`build_predictor`.
        config: Bundled SAM 2 config of a local checkpoint.
        device: Torch device.
        box: Prompt box ``(x0, y0, x1, y1)`` in frame pixels on every episode's first frame;
            default: the bounding box of the exact agent mask on that frame.
        chunk: Frames tracked at once (bounds memory; chunks overlap by one frame).
        image_size: SAM 2 input size (default: the config's 1024; 256 was 7x faster on 2 CPU
            cores).
        progress: Show a progress bar over frames.
        allow_random_weights: With ``checkpoint=None``, use random weights (plumbing only).
        overwrite: Replace SAM 2 masks made with other settings instead of failing.

    Returns:
        The sidecar file ``<dataset>/sam_masks.hdf5``.
    """
    folder, meta = _dataset_folder(dataset_path)
    user_box = _parse_box(box)
    if chunk < 2:
        raise SamMaskError(f"chunk must be at least 2 frames (chunks overlap by one); got {chunk}.")
    # One process per dataset: another one's final merge would remove the unfinished episodes.
    lock_folder(folder, LOCK_FILE, f"SAM 2 masks of {folder} are being made by another process; "
                                   "wait for it to end (or stop it), then run again.")
    try:
        predictor, info = build_predictor(checkpoint, config, device, image_size,
                                          allow_random_weights=allow_random_weights)
        return _make_masks(folder, meta, predictor, info, user_box, chunk, device, progress,
                           overwrite)
    finally:
        unlock_folder(folder, LOCK_FILE)


def _make_masks(folder: Path, meta: dict[str, Any], predictor: Any, info: dict[str, Any],
                user_box: tuple[float, float, float, float] | None, chunk: int, device: str,
                progress: bool, overwrite: bool) -> Path:
    """:func:`add_sam_masks` once the dataset is held and the model built."""
    import torch

    settings = _settings(info, user_box, chunk, meta, device)
    final, work = folder / SIDECAR_FILE, folder / PARTIAL_DIR
    if final.exists():
        try:
            made = sidecar_settings(folder)
        except SamMaskError:
            if not overwrite:
                raise
            made = None  # unreadable: --overwrite makes it again
        if made is not None and _same_settings(made, settings, folder, "finished", overwrite):
            return final
        final.unlink()
    if (work / _SETTINGS_FILE).exists():
        old = json.loads((work / _SETTINGS_FILE).read_text())
        if not _same_settings(old, settings, folder, "unfinished", overwrite):
            shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    atomic_write_json(work / _SETTINGS_FILE, settings)

    episodes, size = int(meta["total_episodes"]), int(meta["image_size"])
    main = folder / ds.DATA_DIR / ds.MAIN_FILE
    with h5py.File(main, "r") as f:
        lengths = [int(f[f"episode_{i}"].attrs["total_steps"]) + 1 for i in range(episodes)]
    todo = [i for i in range(episodes) if not _episode_file(work, i).exists()]
    extra = {"checkpoint": info["checkpoint"], "device": device, "sam2_version": _version("sam2"),
             "torch_version": torch.__version__}
    bar = _progress(sum(lengths), sum(lengths) - sum(lengths[i] for i in todo), progress)
    seconds, frames_done = 0.0, 0
    try:
        for i in todo:
            with h5py.File(main, "r") as f:
                obs = f[f"episode_{i}"]["observations"]
                frames = obs["pixels"][()]
                first = obs["agent_mask"][0].astype(bool)
            prompt = user_box or mask_box(first) or (0.0, 0.0, float(size), float(size))
            start = time.perf_counter()
            masks = track_episode(predictor, frames, prompt, chunk)
            seconds += time.perf_counter() - start
            frames_done += len(frames)
            _write_episode(work, i, masks)
            interrupts.raise_pending()
            bar.update(len(frames))
    finally:
        bar.close()
    final = _assemble(folder, work, settings, extra, episodes, size)
    atomic_write_json(folder / SPEED_FILE,
                      {"seconds_per_frame": seconds / frames_done if frames_done else None})
    return final


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="frame",
                desc="SAM 2 masks")


def _missing_masks_error(folder: Path, why: str) -> SamMaskError:
    return SamMaskError(
        f"{folder} {why}; run `masklam-bench masks --dataset {folder} --source sam2 "
        f"--checkpoint <sam2.1_hiera_tiny.pt>` first.")


def sam_masks_file(dataset_path: str | os.PathLike) -> Path:
    """The dataset's finished SAM 2 mask file, made for its frames in this format; otherwise a
    SamMaskError naming the command that makes it."""
    folder, meta = _dataset_folder(dataset_path)
    file = folder / SIDECAR_FILE
    if not file.exists():
        why = ("has an unfinished SAM 2 mask run" if (folder / PARTIAL_DIR).exists()
               else "has no SAM 2 masks")
        raise _missing_masks_error(folder, why)
    settings, attrs = _sidecar_attrs(file, folder)
    complete = bool(attrs.get("complete"))
    if not complete or settings.get("format_version") != FORMAT_VERSION:
        raise _missing_masks_error(folder, f"has an incomplete or outdated {SIDECAR_FILE}")
    if settings.get("dataset_sha256") != _dataset_fingerprint(meta):
        raise _missing_masks_error(folder, f"has a {SIDECAR_FILE} made for other frames")
    return file


def read_sam_masks(dataset_path: str | os.PathLike, episode_ids: np.ndarray) -> np.ndarray:
    """Bool SAM 2 masks ``(N, H, W)`` of the given episodes, concatenated in the given order."""
    file = sam_masks_file(dataset_path)
    folder = file.parent
    with h5py.File(folder / ds.DATA_DIR / ds.MAIN_FILE, "r") as f:
        lengths = {int(i): int(f[f"episode_{i}"].attrs["total_steps"]) + 1 for i in episode_ids}
    with h5py.File(file, "r") as f:
        width = int(f.attrs["width"])
        parts = []
        for i in episode_ids:
            packed = f[f"episode_{int(i)}"][MASK_KEY][()]
            if len(packed) != lengths[int(i)]:
                raise _missing_masks_error(folder, f"has a {SIDECAR_FILE} whose episode {i} has "
                                                   f"{len(packed)} masks for {lengths[int(i)]} "
                                                   f"frames")
            parts.append(np.unpackbits(packed, axis=-1, count=width).view(bool))
    return np.concatenate(parts) if parts else np.zeros((0, width, width), bool)


def load_sam_masks(dataset_path: str | os.PathLike, split: str = "train",
                   test_episodes: int | None = None) -> np.ndarray:
    """Bool SAM 2 masks ``(N, H, W)`` aligned with ``load_frames(dataset_path, split).frames``."""
    meta = ds.dataset_metadata(dataset_path)
    if test_episodes is None:
        test_episodes = int(meta["test_episodes"])
    ids = ds.split_episodes(int(meta["total_episodes"]), test_episodes, split)
    return read_sam_masks(dataset_path, ids)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parse_box_arg(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"--box takes x0,y0,x1,y1 in frame pixels, e.g. 10,20,40,60; got {text!r}")
    return values  # type: ignore[return-value]


def _cmd_masks(args: argparse.Namespace) -> None:
    """Add SAM 2 masks to a dataset."""
    import torch

    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint == RANDOM_CHECKPOINT:
        print("warning: --checkpoint random builds SAM 2 with random weights; the masks only test "
              "the plumbing.", file=sys.stderr)
    out = add_sam_masks(args.dataset, args.checkpoint, config=args.config, device=args.device,
                        box=args.box, chunk=args.chunk, image_size=args.image_size,
                        overwrite=args.overwrite)
    info = sidecar_settings(out.parent) or {}
    speed = info.get("seconds_per_frame")
    print(f"wrote {out}" + (f" ({speed:.3f} s/frame at {info['image_size']} px)" if speed else ""))


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``masks`` sub-command (``mask-quality`` is :mod:`masklam_bench.mask_quality`'s)."""
    p = subparsers.add_parser("masks", help="add SAM 2 agent masks to a collected dataset")
    p.add_argument("--dataset", required=True, help="dataset folder (from collect)")
    p.add_argument("--source", default="sam2", choices=["sam2"], help="mask source (sam2)")
    p.add_argument("--checkpoint", required=True,
                   help="SAM 2 checkpoint: a .pt file (e.g. sam2.1_hiera_tiny.pt), a Hugging Face "
                        "id (facebook/sam2.1-hiera-tiny, needs network), or 'random' (random "
                        "weights: tests the plumbing only)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"bundled SAM 2 config of the checkpoint (default: {DEFAULT_CONFIG})")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--box", type=_parse_box_arg, default=None,
                   help="prompt box x0,y0,x1,y1 on each episode's first frame "
                        "(default: bounding box of the exact mask there)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"frames tracked at once (default: {DEFAULT_CHUNK})")
    p.add_argument("--image-size", type=int, default=None,
                   help="SAM 2 input size (default: the config's 1024; 256 was 7x faster on 2 "
                        "CPU cores)")
    p.add_argument("--threads", type=int_at_least(0), default=0,
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace SAM 2 masks made with other settings")
    p.set_defaults(func=_cmd_masks)


__all__ = [
    "SamMaskError",
    "add_cli",
    "add_sam_masks",
    "build_predictor",
    "ensure_torchvision_importable",
    "fill_small_holes",
    "load_sam_masks",
    "mask_box",
    "read_sam_masks",
    "sam_masks_file",
    "sidecar_settings",
    "track_episode",
]
