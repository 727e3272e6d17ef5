"""A large floor drawn as only the part of it that a frame's passes can see.

MuJoCo draws a finite plane geom as one display list of up to 200 x 200 quads (it subdivides the
plane for per-vertex lighting; ``makePlane`` in MuJoCo's ``render_context.c``). The humanoid's
100 m x 100 m floor is 40,000 quads, and ``mjr_render`` draws them in every pass that draws the
floor: the reflection stencil, the main pass, the shadow map, the shadow-lighting pass and the
segmentation pass. Most of them lie outside the camera's field of view and the light's, and on
a CPU renderer drawing them took over a quarter of a humanoid step (``benchmarks/floor_tiles.py``:
16.1 ms a step with the whole floor, 11.7 with the tiles in view).

``FloorTiles`` groups the plane's quads into tiles of ``TILE`` x ``TILE``. Before a render it
finds the tiles that may lie inside the camera's view pyramid or a shadow-casting spot light's
(both widened by a margin), compiles a display list of those tiles' quads, with the vertices,
texture coordinates and normal MuJoCo gives them, in MuJoCo's order within each quad, and points
the context's plane lists at it for the render. A quad outside every pass's view makes no
fragment in any pass, and the quads of a plane do not overlap, so the frame and the masks are
byte-identical to those of MuJoCo's own list. ``SceneRenderer`` checks that on the first frame
that shows the floor, and goes back to MuJoCo's list for good if they differ (a MuJoCo or Mesa
that builds planes differently); ``tests/test_floor_tiles.py`` (40 steps per level, both ways),
``tests/test_rendering.py`` (30 steps against dm_control's ``Camera.render``) and
``benchmarks/env_hashes.py`` (100-step rollouts) check it further. A frame the test cannot bound
(an orthographic or stereo camera, a shadow-casting light that is not a spot, another reflective
geom, another plane drawn with the same list, a scene transform, the floor not in the scene) draws
every tile; the next frame that can be bounded gets a list of its own again. The camera's view is
bounded for a square viewport, the only kind ``SceneRenderer`` renders.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

MIN_QUADS = 4096
"""Planes with fewer quads are left to MuJoCo's list (the other tasks' floors: 400-1,200 quads)."""
TILE = 8
"""Quads per side of a tile: the unit of the test (the humanoid's floor: 25 x 25 tiles)."""
MARGIN = 1.05
"""Factor on the view pyramids' slopes (plus ``SLACK``), so that rounding in the test can never
cull a quad that a pass draws."""
SLACK = 0.01
LOOSE = 1.1
"""A list is compiled only when a tile seen now is missing from the current one. It holds just the
tiles seen, unless the last list was compiled fewer than ``RECENT`` frames before (a shaking
camera): then it holds those seen with the slopes this much wider again, so that it lasts."""
RECENT = 25
_PLANE = int(mujoco.mjtGeom.mjGEOM_PLANE)
_BOX = int(mujoco.mjtGeom.mjGEOM_BOX)
_SPOT = int(mujoco.mjtLightType.mjLIGHT_SPOT)


def plane_grid(size) -> tuple[np.ndarray, np.ndarray] | None:
    """The grid lines along x and y of a plane of geom size ``size``, placed as MuJoCo's
    ``makePlane`` places them; ``None`` for a plane infinite along x or y."""
    lines = []
    for k in range(2):
        half = float(size[k])
        if half <= 0:
            return None
        step = max(float(size[2]), half / (mujoco.mjMAXPLANEGRID - 2))
        n = math.floor(half / max(mujoco.mjMINVAL, step))
        n -= n % 2
        pad = half - n * step
        n += 2
        grid = np.empty(n + 1)
        for x in range(n):
            if x == 0:
                left = -half
                right = left + pad
            else:
                left = -half + pad + (x - 1) * step * 2
                right = left + (pad if x == n - 1 else step * 2)
            grid[x] = left
            grid[x + 1] = max(left, right)
        lines.append(grid)
    return lines[0], lines[1]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cross product of two 3-vectors (``np.cross`` costs 10x more on vectors this short)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                     a[0] * b[1] - a[1] * b[0]])


def _basis(forward: np.ndarray) -> np.ndarray:
    """Rows: two unit vectors perpendicular to ``forward`` and to each other, then ``forward``."""
    forward = forward / np.linalg.norm(forward)
    helper = np.array([1.0, 0.0, 0.0]) if abs(forward[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    side = _cross(forward, helper)
    side /= np.linalg.norm(side)
    return np.stack([side, _cross(forward, side), forward])


class FloorTiles:
    """The tiles of one large plane geom and the display list of a frame's tiles."""

    def __init__(self, model, mjr_context) -> None:
        """Index the plane's quads; ``available`` is False when the model has no plane to tile.

        ``active`` (initially ``available``) says whether ``SceneRenderer`` uses the tiles.
        """
        self.available = False
        self._active = False
        self._context = mjr_context
        planes = [g for g in range(model.ngeom) if model.geom_type[g] == _PLANE]
        large = [(ordinal, g, grid) for ordinal, g in enumerate(planes)
                 if (grid := plane_grid(model.geom_size[g])) is not None
                 and (len(grid[0]) - 1) * (len(grid[1]) - 1) >= MIN_QUADS]
        if len(large) != 1:
            return
        self._ordinal, self.geom, (gx, gy) = large[0]
        size = model.geom_size[self.geom]
        # Tile edges along x and y (grid line indices), then every quad's four corners, tile by
        # tile, in MuJoCo's order within a quad: (x, y), (x+1, y), (x+1, y+1), (x, y+1).
        edges = [np.r_[np.arange(0, len(g) - 1, TILE), len(g) - 1] for g in (gx, gy)]
        self._edge_xy = (gx[edges[0]], gy[edges[1]])
        u = (gx + float(size[0])) / (2.0 * float(size[0]))
        v = 1.0 - (gy + float(size[1])) / (2.0 * float(size[1]))
        vertices, texcoords, starts = [], [], [0]
        for i0, i1 in zip(edges[0][:-1], edges[0][1:]):
            for j0, j1 in zip(edges[1][:-1], edges[1][1:]):
                xs, ys = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
                xs, ys = xs.ravel(), ys.ravel()
                cx = np.stack([xs, xs + 1, xs + 1, xs], 1).ravel()
                cy = np.stack([ys, ys, ys + 1, ys + 1], 1).ravel()
                vertices.append(np.stack([gx[cx], gy[cy], np.zeros(len(cx))], 1))
                texcoords.append(np.stack([u[cx], v[cy]], 1))
                starts.append(starts[-1] + len(cx))
        self._vertices = np.concatenate(vertices)
        self._texcoords = np.concatenate(texcoords)
        self._starts = np.asarray(starts)
        self._mujoco_base = mjr_context.basePlane
        self._nlists = mjr_context.rangePlane
        self._base = 0
        self._linked: np.ndarray | None = None
        self._linked_every = False
        self._frame, self._last_link = 0, -RECENT
        self.available = self._active = True

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, on: bool) -> None:
        if on and not self.available:
            raise ValueError("this model has no floor to draw in tiles")
        self._active = bool(on)

    @property
    def tiles(self) -> int:
        return len(self._starts) - 1

    def seen(self, scene, widen: float = 1.0) -> np.ndarray | None:
        """Which tiles a pass of the render of ``scene`` may draw (bool per tile), with the
        pyramids' slopes widened by ``widen``; ``None`` when every tile must be drawn (a case the
        test cannot bound, or the floor not in the scene)."""
        geoms = scene.geoms[:scene.ngeom]
        ours = [g for g in geoms if g.type == _PLANE and g.objid == self.geom]
        if len(ours) != 1 or scene.enabletransform or scene.stereo:
            return None
        geom = ours[0]
        if geom.dataid != self._ordinal or any(
                g is not geom and g.type == _PLANE and g.dataid == self._ordinal for g in geoms):
            return None  # another plane would draw the tiles at its own pose
        if scene.flags[int(mujoco.mjtRndFlag.mjRND_REFLECTION)] and any(
                g is not geom and g.type in (_PLANE, _BOX) and g.reflectance > 0 for g in geoms):
            return None  # another mirror would show the floor reflected, outside these pyramids
        rotation = np.asarray(geom.mat, np.float64).reshape(3, 3)
        ex, ey = self._edge_xy
        corners = (np.asarray(geom.pos, np.float64) + ex[:, None, None] * rotation[:, 0]
                   + ey[None, :, None] * rotation[:, 1])
        camera = self._camera_pyramid(scene)
        if camera is None:
            return None
        pyramids = [camera]
        if scene.flags[int(mujoco.mjtRndFlag.mjRND_SHADOW)]:
            for light in scene.lights[:scene.nlight]:
                if light.castshadow:
                    if light.type != _SPOT:
                        return None
                    pyramids.append(self._light_pyramid(light))
        seen = np.zeros((len(ex) - 1, len(ey) - 1), bool)
        for apex, axes, slope in pyramids:
            seen |= ~_outside(corners, apex, axes, slope * widen)
        return seen.ravel()

    @staticmethod
    def _camera_pyramid(scene):
        """Apex, axes and side slope of a square pyramid that holds the frustum of the camera
        ``mjr_render`` uses: the average of the scene's two eyes (``mjv_averageCamera``)."""
        eyes = scene.camera[0], scene.camera[1]
        if any(eye.orthographic for eye in eyes):
            return None
        pos = [np.asarray(eye.pos, np.float64) for eye in eyes]
        forward = sum(np.asarray(eye.forward, np.float64) for eye in eyes) / 2
        up = sum(np.asarray(eye.up, np.float64) for eye in eyes) / 2
        up -= (forward @ up) / (forward @ forward) * forward
        forward /= np.linalg.norm(forward)
        up /= np.linalg.norm(up)

        def mean(field: str) -> float:
            return (getattr(eyes[0], field) + getattr(eyes[1], field)) / 2

        # The viewport is square, so the frustum's half width is its half height unless set.
        half_height = max(abs(mean("frustum_bottom")), abs(mean("frustum_top")))
        half_width = abs(mean("frustum_center")) + (mean("frustum_width") or half_height)
        slope = MARGIN * max(half_width, half_height) / mean("frustum_near") + SLACK
        # The apex moved back along the axis: the pyramid grows, so rounding in the average
        # (float32 in MuJoCo) and the gap between the eyes can only add tiles.
        back = 0.01 + np.linalg.norm(pos[0] - pos[1]) * (1 + 1 / slope)
        apex = (pos[0] + pos[1]) / 2 - back * forward
        return apex, np.stack([_cross(forward, up), up, forward]), slope

    def _light_pyramid(self, light):
        """A pyramid that holds a spot light's shadow-map frustum, however it is turned."""
        fovy = min(2 * light.cutoff * self._context.shadowScale, 160.0)
        slope = MARGIN * math.sqrt(2) * math.tan(math.radians(fovy / 2)) + SLACK
        axes = _basis(np.asarray(light.dir, np.float64))
        return np.asarray(light.pos, np.float64) - 0.01 * axes[2], axes, slope  # apex moved back

    def use(self, scene) -> None:
        """Point the context's plane lists at a list of this frame's tiles (render thread)."""
        from OpenGL import GL

        if not self._base:
            self._base = GL.glGenLists(self._nlists)
            for i in range(self._nlists):  # each calls MuJoCo's, until linked below
                GL.glNewList(self._base + i, GL.GL_COMPILE)
                GL.glCallList(self._mujoco_base + i)
                GL.glEndList()
        needed = self.seen(scene)
        if needed is None:
            if not self._linked_every:
                self._link(np.ones(self.tiles, bool))
                self._linked_every = True
        elif self._linked is None or self._linked_every or (needed & ~self._linked).any():
            shaking = self._frame - self._last_link < RECENT
            self._link(needed | self.seen(scene, LOOSE) if shaking else needed)
            self._linked_every = False
            self._last_link = self._frame
        self._frame += 1
        self._context.basePlane = self._base

    def _link(self, tiles: np.ndarray) -> None:
        from OpenGL import GL

        rows = np.concatenate([np.arange(self._starts[t], self._starts[t + 1])
                               for t in np.flatnonzero(tiles)] + [np.arange(0)])
        vertices = np.ascontiguousarray(self._vertices[rows])
        texcoords = np.ascontiguousarray(self._texcoords[rows])
        GL.glPushClientAttrib(GL.GL_CLIENT_VERTEX_ARRAY_BIT)
        try:
            GL.glDisableClientState(GL.GL_NORMAL_ARRAY)
            GL.glDisableClientState(GL.GL_COLOR_ARRAY)
            GL.glEnableClientState(GL.GL_VERTEX_ARRAY)
            GL.glEnableClientState(GL.GL_TEXTURE_COORD_ARRAY)
            GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)
            GL.glClientActiveTexture(GL.GL_TEXTURE0)
            GL.glVertexPointer(3, GL.GL_DOUBLE, 0, vertices)
            GL.glTexCoordPointer(2, GL.GL_DOUBLE, 0, texcoords)
            GL.glNewList(self._base + self._ordinal + 1, GL.GL_COMPILE)
            try:
                GL.glNormal3d(0, 0, 1)
                if len(rows):
                    GL.glDrawArrays(GL.GL_QUADS, 0, len(rows))
            finally:
                GL.glEndList()
        finally:
            GL.glPopClientAttrib()
        self._linked = tiles

    def restore(self) -> None:
        """Give the context MuJoCo's own plane lists back."""
        self._context.basePlane = self._mujoco_base


def _outside(corners: np.ndarray, apex: np.ndarray, axes: np.ndarray,
             slope: float) -> np.ndarray:
    """Which tiles (of a grid of tile corners, shape (nx + 1, ny + 1, 3)) lie wholly beyond one
    face of the square pyramid with apex ``apex``, axis ``axes[2]`` and side slope ``slope``."""
    local = (corners - apex) @ axes.T
    x, y, z = local[..., 0], local[..., 1], local[..., 2]
    faces = (z < 0, x > slope * z, x < -slope * z, y > slope * z, y < -slope * z)
    out = np.zeros((corners.shape[0] - 1, corners.shape[1] - 1), bool)
    for face in faces:
        out |= face[:-1, :-1] & face[1:, :-1] & face[:-1, 1:] & face[1:, 1:]
    return out
