"""Distractor dynamics: the moving, action-coupled background, camera shake and colour change."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

# Background motion, in pixels per step at 64 px (scaled with the image size).
EXO_SPEED_RANGE = (0.5, 1.5)
"""Range of the per-episode drift speed of the exogenous motion (random direction)."""
EXO_JITTER_STD = 0.5
"""Std of the per-step Gaussian jitter of the exogenous motion: unpredictable from the past."""
COUPLING_SCALE = 2.0
"""Pixels of background motion per unit of projected action at ``coupling=1`` (64 px)."""
REFERENCE_SIZE = 64
"""Image size at which the pixel constants above hold."""

# DCS "hard" settings at scale s (Stone et al. 2021; LAOM and MaskLAM use s = 0.1).
HARD_SCALE = 0.1
"""Difficulty scale of camera and colour distractions at level ``hard``."""
CAMERA_ANGLE_LIMIT = np.pi / 2
"""Max |delta| of camera vertical, horizontal and roll angles, times the scale."""
CAMERA_VEL_STD = 0.1
"""Std of the per-step change of the angular velocity, times the scale."""
CAMERA_MAX_VEL = 0.4
"""Max |angular velocity| per step, times the scale."""
COLOUR_STEP_STD = 0.03
"""Std of the per-step Gaussian walk of each material colour, times the scale."""


def coupling_matrix(task_name: str, split: str, action_dim: int) -> np.ndarray:
    """The fixed ``(2, A)`` projection W from an action to background motion (pixels at 64 px).

    W depends only on the task and the split, so ID and OOD use different projections. Its rows
    are scaled so a uniform random action moves the background by about COUPLING_SCALE pixels
    per axis (std) at ``coupling=1``.
    """
    seed = zlib.crc32(f"{task_name}/{split}".encode())
    g = np.random.default_rng(seed).standard_normal((2, action_dim))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    # A uniform action in [-1, 1]^A has per-coordinate variance 1/3.
    return (COUPLING_SCALE * np.sqrt(3.0) * g).astype(np.float64)


@dataclasses.dataclass
class BackgroundMotion:
    """The window offset into a tileable video: exogenous drift and jitter plus ``coupling * W a``."""

    projection: np.ndarray
    """W, shape ``(2, A)``, pixels at the reference size."""
    coupling: float
    """Strength of the action-coupled part."""
    pixel_scale: float
    """Image size / REFERENCE_SIZE."""
    offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    last_motion: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    last_projected: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))

    def reset(self, rng: np.random.Generator, canvas: int) -> None:
        """Draw a start offset and a drift direction and speed for the episode."""
        self.offset = rng.uniform(0, canvas, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*EXO_SPEED_RANGE) * self.pixel_scale
        self.velocity = speed * np.array([np.sin(angle), np.cos(angle)])
        self.last_motion = np.zeros(2)
        self.last_projected = np.zeros(2)

    def step(self, rng: np.random.Generator, action: np.ndarray, canvas: int) -> None:
        """Advance one step: drift, jitter, and the action-coupled shift."""
        projected = self.projection @ np.asarray(action, np.float64) * self.pixel_scale
        jitter = rng.normal(0.0, EXO_JITTER_STD * self.pixel_scale, size=2)
        motion = self.velocity + jitter + self.coupling * projected
        self.offset = (self.offset + motion) % canvas
        self.last_motion = motion
        self.last_projected = projected


def video_frame_index(step: int, start: int, direction: int, length: int) -> int:
    """DCS playback: one frame per step from ``start`` in ``direction``, bouncing at both ends."""
    if length == 1:
        return 0
    period = 2 * (length - 1)
    pos = (start + direction * step) % period
    return int(pos if pos < length else period - pos)


def crop_window(frame: np.ndarray, offset: np.ndarray, size: int) -> np.ndarray:
    """Cut a ``size x size`` window from a tileable frame at a (wrapping) float offset."""
    height, width = frame.shape[:2]
    oy, ox = (int(v) for v in np.floor(offset))
    # Rows, then columns: two one-axis gathers copy whole rows and cost a quarter of one
    # two-axis fancy index (about 0.1 ms of a 5 ms cheetah step).
    rows = np.arange(oy, oy + size) % height
    cols = np.arange(ox, ox + size) % width
    return frame.take(rows, axis=0).take(cols, axis=1)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@dataclasses.dataclass
class CameraShake:
    """DCS-style camera distraction: bounded random walks of vertical, horizontal and roll angles."""

    scale: float
    angles: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    velocity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))

    def reset(self, rng: np.random.Generator) -> None:
        """Start from a random pose within the limits, at rest."""
        limit = CAMERA_ANGLE_LIMIT * self.scale
        self.angles = rng.uniform(-limit, limit, size=3)
        self.velocity = np.zeros(3)

    def step(self, rng: np.random.Generator) -> None:
        """Random-walk the angular velocity and integrate it, both clipped to their limits."""
        max_vel = CAMERA_MAX_VEL * self.scale
        self.velocity = np.clip(
            self.velocity + rng.normal(0.0, CAMERA_VEL_STD * self.scale, size=3), -max_vel, max_vel
        )
        limit = CAMERA_ANGLE_LIMIT * self.scale
        self.angles = np.clip(self.angles + self.velocity, -limit, limit)

    def apply(self, data, camera_id: int, target: np.ndarray) -> None:
        """Rotate the camera about the point it tracks; writes ``data.cam_xpos`` / ``cam_xmat``."""
        pos = data.cam_xpos[camera_id].copy()
        xmat = data.cam_xmat[camera_id].reshape(3, 3).copy()
        vertical, horizontal, roll = self.angles
        # Camera axes: x right, y up, -z forward (MuJoCo convention), columns of xmat.
        rot = _rotation(np.array([0.0, 0.0, 1.0]), horizontal) @ _rotation(xmat[:, 0], vertical)
        new_pos = target + rot @ (pos - target)
        new_xmat = rot @ xmat @ _rotation(np.array([0.0, 0.0, 1.0]), roll)
        data.cam_xpos[camera_id] = new_pos
        data.cam_xmat[camera_id] = new_xmat.reshape(-1)


@dataclasses.dataclass
class ColourChange:
    """DCS-style colour distraction: per-material RGB offsets, uniform at reset, then a Gaussian walk."""

    scale: float
    base_rgb: np.ndarray
    """Original RGB of each perturbed material, shape (M, 3)."""
    offset: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))

    def reset(self, rng: np.random.Generator) -> None:
        """Draw a uniform offset in [-scale, scale] per material and channel."""
        self.offset = rng.uniform(-self.scale, self.scale, size=self.base_rgb.shape)

    def step(self, rng: np.random.Generator) -> None:
        """Take one step of the colour random walk."""
        self.offset = self.offset + rng.normal(0.0, COLOUR_STEP_STD * self.scale,
                                               size=self.base_rgb.shape)

    def colours(self) -> np.ndarray:
        """Current RGB of each material, clipped to [0, 1]."""
        return np.clip(self.base_rgb + self.offset, 0.0, 1.0)
