"""One camera's RGB frame and exact agent and floor masks, rendered together at the least cost.

The pixels are those of dm_control's ``Camera.render()`` and ``Camera.render(segmentation=True)``;
only the work around them is shared. ``tests/test_rendering.py`` checks both against dm_control.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede importing mujoco

import mujoco
import numpy as np
from dm_control.mujoco import wrapper

from masklam_bench.envs.floor_tiles import FloorTiles

BACKGROUND, AGENT, FLOOR = 0, 1, 2
"""What a pixel shows, as ``SceneRenderer.render`` labels it (anything not the agent or the floor,
such as the sky or a site, is background)."""
_ID_BYTES = 256
"""Segment ids below this fit in the red byte of MuJoCo's ``IDCOLOR`` encoding (green, blue 0)."""
# Plain ints: comparing a NumPy array with a MuJoCo enum goes element by element through Python
# (about 8 ms for a 64 x 64 image, a third of a step).
_OBJ_GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)
_RND_SEGMENT = int(mujoco.mjtRndFlag.mjRND_SEGMENT)
_RND_IDCOLOR = int(mujoco.mjtRndFlag.mjRND_IDCOLOR)
_RND_SHADOW = int(mujoco.mjtRndFlag.mjRND_SHADOW)
_RND_REFLECTION = int(mujoco.mjtRndFlag.mjRND_REFLECTION)


class SceneRenderer:
    """Renders a fixed camera of a dm_control physics to RGB, agent mask and floor mask.

    Per frame it does what two ``Camera.render`` calls (RGB, then segmentation) do, minus the
    repeats: one ``mjv_updateScene`` for both passes (a pass changes only render flags, not the
    scene), one trip to the render thread for both ``mjr_render`` and ``mjr_readPixels`` pairs,
    read buffers allocated once, and the segmentation decoded by a per-frame table from segment
    id to label instead of dm_control's (object id, object type) image.
    """

    def __init__(self, physics, size: int, camera_id: int, geom_labels: np.ndarray,
                 floor_effects: bool = True) -> None:
        """Set up the scene and buffers; the OpenGL context is the physics' own.

        Args:
            physics: A dm_control ``Physics``; its rendering context is made here if need be.
            size: Height and width of the image in pixels.
            camera_id: Index of a fixed camera of the model.
            geom_labels: ``BACKGROUND``, ``AGENT`` or ``FLOOR`` for each geom of the model.
            floor_effects: Render shadows and reflections (dm_control's look); off is faster.
        """
        model = physics.model
        width, height = model.vis.global_.offwidth, model.vis.global_.offheight
        if size > min(width, height):
            raise ValueError(
                f"size {size} is larger than the model's {width}x{height} offscreen framebuffer; "
                f"use a size of at most {min(width, height)}.")
        self._physics = physics
        # dm_control's scene and options, so that the scene holds what Camera.render's would.
        self._scene = wrapper.MjvScene(model=model)
        self._option = wrapper.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_id
        self._rect = mujoco.MjrRect(0, 0, size, size)
        self._scene.flags[_RND_SHADOW] = floor_effects
        self._scene.flags[_RND_REFLECTION] = floor_effects
        self._geom_labels = np.asarray(geom_labels, np.uint8)
        # OpenGL's rows run bottom to top; these are read as they come and flipped when used.
        self._rgb = np.empty((size, size, 3), np.uint8)
        self._segment = np.empty((size, size, 3), np.uint8)
        contexts = physics.contexts
        self._mjr_context = contexts.mujoco.ptr
        # A large floor is drawn as only its tiles in view; the first frame that shows the floor
        # is rendered with MuJoCo's own list as well, and the tiles are used only if they agree.
        self._floor = FloorTiles(model, self._mjr_context)
        self._floor_checked = False
        with contexts.gl.make_current() as ctx:
            ctx.call(mujoco.mjr_setBuffer, mujoco.mjtFramebuffer.mjFB_OFFSCREEN,
                     self._mjr_context)

    @property
    def scene(self) -> mujoco.MjvScene:
        """The ``MjvScene`` the renderer fills (its ``flags`` hold the render flags)."""
        return self._scene

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The RGB image ``(size, size, 3)`` uint8 and the agent and floor masks (bool), as new
        arrays, top row first."""
        physics = self._physics
        mujoco.mjv_updateScene(physics.model.ptr, physics.data.ptr, self._option,
                               self._perturb, self._camera, mujoco.mjtCatBit.mjCAT_ALL,
                               self._scene)
        with physics.contexts.gl.make_current() as ctx:
            ctx.call(self._render_both, self._floor.active)
            if self._floor.active and not self._floor_checked:
                self._check_floor(ctx)
        labels = self._segment_labels()[self._segment_ids()]
        return self._rgb[::-1].copy(), labels == AGENT, labels == FLOOR

    def _check_floor(self, ctx) -> None:
        """Render the frame again with MuJoCo's floor list and keep that; once a frame that
        shows the floor is the same both ways, the tiles are used on their own."""
        tiled = self._rgb.copy(), self._segment.copy()
        ctx.call(self._render_both, False)
        if not (self._segment_labels()[self._segment_ids()] == FLOOR).any():
            return
        if np.array_equal(tiled[0], self._rgb) and np.array_equal(tiled[1], self._segment):
            self._floor_checked = True
        else:
            self._floor.active = False
            warnings.warn("The floor drawn in tiles differs from MuJoCo's own floor with this "
                          "MuJoCo or OpenGL build; drawing the whole floor (slower, same frames).",
                          RuntimeWarning, stacklevel=3)

    def _render_both(self, floor_tiles: bool) -> None:
        """The RGB pass, then the segmentation pass, each read back (on the render thread); with
        ``floor_tiles``, the floor drawn as its tiles in view."""
        with self._floor_drawn(floor_tiles):
            self._pass(self._rgb, segmentation=False)
            self._pass(self._segment, segmentation=True)

    @contextlib.contextmanager
    def _floor_drawn(self, tiles: bool) -> Iterator[None]:
        """MuJoCo's plane lists pointed at this frame's floor tiles while inside, if ``tiles``."""
        if tiles:
            self._floor.use(self._scene)
        try:
            yield
        finally:
            if tiles:
                self._floor.restore()

    def _pass(self, out: np.ndarray, segmentation: bool) -> None:
        """One ``mjr_render`` of the scene, RGB or segmentation, read back into ``out``."""
        flags = self._scene.flags
        flags[_RND_SEGMENT] = flags[_RND_IDCOLOR] = int(segmentation)
        try:
            mujoco.mjr_render(self._rect, self._scene, self._mjr_context)
            mujoco.mjr_readPixels(out, None, self._rect, self._mjr_context)
        finally:
            flags[_RND_SEGMENT] = flags[_RND_IDCOLOR] = 0

    def _segment_labels(self) -> np.ndarray:
        """Label of each segment id of the current scene; id 0 is the empty background.

        ``IDCOLOR`` paints scene geom ``g`` with id ``g.segid + 1``; geoms that are not model
        geoms (sites, tendons, decor) label as background, as dm_control's object type says.
        """
        geoms = self._scene.geoms
        labels = np.zeros(len(geoms) + 1, np.uint8)
        for geom in geoms:
            if geom.segid >= 0 and geom.objtype == _OBJ_GEOM:
                labels[geom.segid + 1] = self._geom_labels[geom.objid]
        return labels

    def _segment_ids(self) -> np.ndarray:
        """Segment id of each pixel, top row first, decoded from the ``IDCOLOR`` image."""
        flipped = self._segment[::-1]
        if self._scene.ngeom + 1 < _ID_BYTES:
            return flipped[..., 0]
        ids = flipped.astype(np.int32)
        return ids[..., 0] | ids[..., 1] << 8 | ids[..., 2] << 16
