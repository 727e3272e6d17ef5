"""DistractingControlEnv: a DeepMind Control task seen from pixels, with a moving background and exact agent masks."""

from __future__ import annotations

import atexit
import contextlib
import numbers
import os
import weakref
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede importing mujoco

import gymnasium as gym
import mujoco
import numpy as np
from dm_control import suite
from gymnasium.envs.registration import EnvSpec
from shimmy.dm_control_compatibility import DmControlCompatibilityV0

from masklam_bench.envs import backgrounds, rendering
from masklam_bench.envs import distractors as dyn
from masklam_bench.envs.tasks import EPISODE_STEPS, Task, flatten_state, get_task
from masklam_bench.errors import UserError

DISTRACTOR_SPLITS = ("id", "ood", "none")
"""Background pools: in-distribution, held-out, or no distractors (the clean reference)."""
LEVELS = ("low", "hard")
"""``low``: moving background only (MaskLAM's main setting). ``hard``: plus camera shake and colour."""
FLOOR_MODES = ("keep", "replace")
"""``keep``: DCS look, the floor stays (with its alpha). ``replace``: the video covers the floor too."""
SHADOW_TEXELS_PER_PIXEL = 8
"""Default shadow map side per image pixel: 512 texels at 64 px (dm_control's models use 2048).

``masklam-bench bench-env`` measures both over the same seeded trajectory: at 64 px the 512 map
changes 0.02-0.10% of the pixels and renders about 2x faster (1.8-2.3x on an idle 2-core VM, up
to 3.4x under load; BENCHMARK.md).
"""
_WORLD_BODY = 0
_LLVMPIPE_THREAD = "llvmpipe-"
"""Name prefix of Mesa llvmpipe's rasterizer threads (``/proc/self/task/*/comm``)."""
_FORK_HELP = (
    "this process was forked from one in which Mesa's llvmpipe had already rendered, and a fork "
    "copies the renderer's state but not its rasterizer threads, so OpenGL here would wait for "
    "them forever. Start vector-env workers with spawn: gym.make_vec(..., "
    "vectorization_mode=\"async\", vector_kwargs={\"context\": \"spawn\"}) or "
    "AsyncVectorEnv(..., context=\"spawn\"); or set LP_NUM_THREADS=0 before the first render.")
_fork_state = {"parent_had_llvmpipe": False, "forked_from_llvmpipe": False}


def _llvmpipe_threads_running() -> bool:
    """Whether this process has llvmpipe rasterizer threads (False where ``/proc`` is absent)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith(_LLVMPIPE_THREAD):
                    return True
        except OSError:  # the thread ended while we looked
            continue
    return False


def _before_fork() -> None:
    _fork_state["parent_had_llvmpipe"] = _llvmpipe_threads_running()


def _after_fork_in_child() -> None:
    _fork_state["forked_from_llvmpipe"] = _fork_state["parent_had_llvmpipe"]


# Forking after a render hangs the child's first render (gymnasium's AsyncVectorEnv forks by
# default on Linux); these hooks let that render fail with the fix instead.
os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class DistractingControlEnv(gym.Env[np.ndarray, np.ndarray]):
    """A dm_control task rendered to 64x64 RGB with a distracting, action-coupled background.

    Observations are ``(size, size, 3)`` uint8 frames from camera 0. Every step ``info`` carries the
    exact agent mask (``agent_mask``, bool), the proprioceptive state (``state``, float32), and the
    distractor's state (``distractor_video``, ``distractor_frame``, ``distractor_offset``,
    ``distractor_motion``, ``distractor_projected_action``).

    The physics, task and its seeding go through shimmy's dm_control bridge; rendering is ours
    (``rendering.SceneRenderer``): one scene update serves the RGB and the segmentation pass.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}
    _spec: EnvSpec | None = None

    @property
    def spec(self) -> EnvSpec | None:
        """The spec ``gym.make`` made this env from (None when built directly)."""
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        # gym.make sets it right after building the env: the first moment an id is known, so a
        # registered id made with another task or split is refused by make() itself.
        self._spec = value
        try:
            self._check_registered_id()
        except UserError:
            self.close()
            raise

    def __init__(
        self,
        task: str = "cheetah-run",
        distractors: str = "id",
        size: int = 64,
        level: str = "low",
        coupling: float = 1.0,
        floor: str = "keep",
        camera_id: int = 0,
        davis_dir: str | None = None,
        render_mode: str | None = None,
        shadow_size: int | None = None,
    ) -> None:
        """Build the environment.

        Args:
            task: ``cheetah-run``, ``walker-run``, ``hopper-hop`` or ``humanoid-walk`` (or the short name).
            distractors: ``id`` (training pool), ``ood`` (held-out pool and projection) or ``none``.
            size: Height and width of the observation in pixels.
            level: ``low`` (background only) or ``hard`` (plus DCS camera shake and colour, scale 0.1).
            coupling: Strength of the action-coupled background motion; 0 makes it purely exogenous.
            floor: ``keep`` the floor as DCS does, or ``replace`` it with the video too; replacing it
                hides shadows and reflections, so they are switched off, which renders much faster.
            camera_id: dm_control camera to render (0 in LAOM and MaskLAM).
            davis_dir: DAVIS-2017 folder to use real videos (DCS's 60/30 train/val split as the ID/OOD
                pools) instead of procedural ones; defaults to ``$MASKLAM_DAVIS_DIR`` when set.
            render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns the last observation).
            shadow_size: Side of the shadow map in texels. The default, ``SHADOW_TEXELS_PER_PIXEL``
                times ``size`` (at most the model's own 2048), renders about 2x faster than
                dm_control's 2048 map at 64 px and changes at most about 0.1% of the pixels.
        """
        self.task_spec: Task = get_task(task)
        self._check_arguments(distractors, size, level, coupling, floor, render_mode)
        size = int(size)
        self.split, self.size, self.level, self.floor = distractors, size, level, floor
        self.coupling, self.camera_id, self.render_mode = float(coupling), camera_id, render_mode

        dm_env = suite.load(self.task_spec.domain, self.task_spec.task,
                            environment_kwargs={"flat_observation": False})
        self._dm = DmControlCompatibilityV0(dm_env)
        self._physics = dm_env.physics
        self._setup_rendering(camera_id, size, shadow_size, distractors, floor)

        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        low = self._dm.action_space.low.astype(np.float32)
        high = self._dm.action_space.high.astype(np.float32)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.state_dim = int(sum(int(np.prod(s.shape)) for s in dm_env.observation_spec().values()))
        self.metadata = {**self.metadata, "render_fps": round(1.0 / dm_env.control_timestep())}

        self._setup_distractors(distractors, level, size, davis_dir)

        self._video: np.ndarray | None = None
        self._video_index = -1
        self._video_start = 0
        self._video_direction = 1
        self._t = 0
        self._last_obs: np.ndarray | None = None
        self._needs_reset = True  # before the first reset, and once an episode has ended

    def _check_arguments(self, distractors: str, size: int, level: str, coupling: float,
                         floor: str, render_mode: str | None) -> None:
        """One clear error for each argument of :meth:`__init__` out of its range."""
        _check_choice("distractors", distractors, DISTRACTOR_SPLITS)
        _check_choice("level", level, LEVELS)
        _check_choice("floor", floor, FLOOR_MODES)
        _check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        if not _is_int(size) or not 16 <= size <= 1024:
            raise UserError(f"size must be an int between 16 and 1024 pixels, got {size!r}.")
        if (isinstance(coupling, bool) or not isinstance(coupling, (int, float, np.number))
                or not np.isfinite(coupling) or coupling < 0):
            raise UserError(f"coupling must be a finite number >= 0, got {coupling!r}.")

    def _setup_rendering(self, camera_id: int, size: int, shadow_size: int | None,
                         distractors: str, floor: str) -> None:
        """Rendering settings of the model, and the per-geom labels the masks are made from."""
        model = self._physics.model
        if not _is_int(camera_id) or not 0 <= camera_id < model.ncam:
            raise UserError(f"camera_id must be an int in [0, {model.ncam}) for "
                            f"{self.task_spec.name}, got {camera_id!r}.")
        # Exact masks need unblended edges: no multisampling in the offscreen buffer. This, and the
        # shadow map's size, must be set before the first render creates the rendering context.
        model.vis.quality.offsamples = 0
        # The offscreen buffer must hold the image (the models ship 640 x 480).
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), size)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), size)
        if shadow_size is None:
            shadow_size = min(SHADOW_TEXELS_PER_PIXEL * size, int(model.vis.quality.shadowsize))
        if not _is_int(shadow_size) or not 16 <= shadow_size <= 8192:
            raise UserError(f"shadow_size must be an int between 16 and 8192 texels, "
                             f"got {shadow_size!r}.")
        model.vis.quality.shadowsize = shadow_size
        # The renderer (and its OpenGL context) is made on first render, so that building an env in
        # a parent process, as AsyncVectorEnv does before it forks, leaves no context to inherit.
        self._renderer: rendering.SceneRenderer | None = None
        self._hide_floor_effects = distractors != "none" and floor == "replace"
        self._agent_geoms = np.asarray(model.geom_bodyid) != _WORLD_BODY
        floor_geoms = (np.asarray(model.geom_bodyid) == _WORLD_BODY) & (
            np.asarray(model.geom_type) == int(mujoco.mjtGeom.mjGEOM_PLANE))
        self._geom_labels = np.select([self._agent_geoms, floor_geoms],
                                      [rendering.AGENT, rendering.FLOOR], rendering.BACKGROUND)
        # Floor pixels of a translucent floor, by (scene, video) value: the float blend, tabulated.
        self._floor_blend = _blend_table(self.task_spec.ground_alpha)

    def _setup_distractors(self, distractors: str, level: str, size: int,
                           davis_dir: str | None) -> None:
        """The background video pool, its action-coupled motion and the hard level's dynamics."""
        model = self._physics.model
        self._canvas = 2 * size
        self._davis_dir = backgrounds.davis_dir_from(davis_dir)
        self._pool: tuple[Any, ...] = ()
        if distractors != "none":
            if self._davis_dir:
                self._pool = backgrounds.davis_pool(self._davis_dir, distractors)
            else:
                self._pool = backgrounds.video_pool(distractors)
        action_dim = self.action_space.shape[0]
        projection_split = "ood" if distractors == "ood" else "id"
        self._motion = _make_motion(self.task_spec.name, projection_split, action_dim,
                                    self.coupling, size)
        self._shake = self._colour = None
        if level == "hard":
            self._shake = dyn.CameraShake(dyn.HARD_SCALE)
            self._agent_mats = sorted({int(m) for m in model.geom_matid[self._agent_geoms]
                                       if m >= 0})
            self._colour = dyn.ColourChange(
                dyn.HARD_SCALE, np.array(model.mat_rgba[self._agent_mats, :3]))

    # ------------------------------------------------------------------------------------------
    # Gymnasium API
    # ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; the seed fixes the physics' initial state and every distractor draw."""
        self._check_open()
        self._check_registered_id()
        super().reset(seed=seed)
        # The physics gets its own seed derived from ours, so both streams are fixed by one number.
        state_obs, _ = self._dm.reset(seed=int(self.np_random.integers(2**31 - 1)))
        rng = self.np_random
        self._t = 0
        self._needs_reset = False
        if self._pool:
            self._video_index = int(rng.integers(len(self._pool)))
            self._video = self._load_video(self._pool[self._video_index])
            self._video_start = int(rng.integers(len(self._video)))
            self._video_direction = int(rng.choice([-1, 1]))
            self._motion.reset(rng, self._canvas)
        if self._shake is not None:
            self._shake.reset(rng)
            self._colour.reset(rng)
            self._apply_colour()
        obs, info = self._observe(state_obs)
        return obs, info

    def step(self, action: np.ndarray):
        """Apply an action for one control step and render the next frame."""
        self._check_open()
        if self._needs_reset:
            # dm_control would start a new episode under the old background and step counter.
            raise gym.error.ResetNeeded(
                f"This {self.task_spec.name} env needs reset() before step(): "
                + ("its episode has ended (terminated or truncated)." if self._last_obs is not None
                   else "no episode has started."))
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"Expected an action of shape {self.action_space.shape}, got "
                             f"{action.shape}.")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        state_obs, reward, terminated, truncated, _ = self._dm.step(action)
        rng = self.np_random
        self._t += 1
        if self._pool:
            self._motion.step(rng, action, self._canvas)
        if self._shake is not None:
            self._shake.step(rng)
            self._colour.step(rng)
            self._apply_colour()
        obs, info = self._observe(state_obs)
        self._needs_reset = bool(terminated or truncated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def __getstate__(self):
        raise TypeError(
            f"A {type(self).__name__} cannot be copied or pickled: it holds MuJoCo's physics and "
            "an OpenGL context. Make another with gym.make(env.spec) and reset it with the same "
            "seed for the same episode; vector envs take makers (functools.partial(gym.make, "
            "spec)), not envs.")

    def render(self) -> np.ndarray | None:
        """Return the last observation (``render_mode="rgb_array"``)."""
        if self.render_mode == "rgb_array":
            return None if self._last_obs is None else self._last_obs.copy()
        return None

    def close(self) -> None:
        """Free the renderer, its OpenGL context and the physics; the env cannot be used after."""
        self._renderer = None
        _OPEN_ENVS.discard(self)
        if getattr(self, "_dm", None) is not None:
            self._dm._env.close()
            self._dm = None
            self._physics.free()  # dm_control's close() frees neither the contexts nor the data

    def _check_registered_id(self) -> None:
        """Refuse an env made from one of the suite's ids with ``task`` or ``distractors`` set to
        another task or split: its id (which results and datasets record) would misname it."""
        from masklam_bench.envs import env_id, parse_env_id

        spec = getattr(self, "spec", None)
        if spec is None:
            return
        try:
            task, split = parse_env_id(spec.id)
        except UserError:  # registered under an id of the user's own
            return
        if (task.name, split) != (self.task_spec.name, self.split):
            raise UserError(f"{spec.id} is {task.name} with distractors={split!r}, but was made "
                            f"with {self.task_spec.name} and {self.split!r}; make "
                            f"{env_id(self.task_spec.name, self.split)} instead.")

    def _check_open(self) -> None:
        if getattr(self, "_dm", None) is None:
            raise RuntimeError(f"This {self.task_spec.name} env is closed; make a new one with "
                               "gym.make to go on.")

    # ------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------
    def render_layers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render the scene as dm_control shows it, its agent mask, and its floor mask."""
        self._check_open()
        if self._shake is not None:
            data = self._physics.data
            # The camera's pose from the physics again (as the last step left it), so that a
            # second render of one step shakes that pose once, not the shaken one again.
            mujoco.mj_camlight(self._physics.model.ptr, data.ptr)
            target = np.array(data.subtree_com[self._physics.model.cam_bodyid[self.camera_id]])
            self._shake.apply(data, self.camera_id, target)
        if self._renderer is None:
            if _fork_state["forked_from_llvmpipe"]:
                raise RuntimeError(f"{self.task_spec.name} cannot render: {_FORK_HELP}")
            # Shadows and reflections fall on the floor; when the video covers it they are
            # invisible, so they are not computed (several times faster on a CPU renderer).
            self._renderer = rendering.SceneRenderer(
                self._physics, self.size, self.camera_id, self._geom_labels,
                floor_effects=not self._hide_floor_effects)
            # The one exit hook moves behind dm_control's hook for the context the renderer has
            # just made, so it runs first (last in, first out): an env left open at exit is
            # closed before dm_control frees that context, which would otherwise find the
            # renderer's references to it and print an AssertionError.
            _OPEN_ENVS.add(self)
            atexit.unregister(_close_open_envs)
            atexit.register(_close_open_envs)
        return self._renderer.render()

    def _observe(self, state_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """Render, composite the background, and assemble ``info``."""
        scene, agent, floor = self.render_layers()
        if self._pool:
            frame_index = dyn.video_frame_index(
                self._t, self._video_start, self._video_direction, len(self._video))
            background = dyn.crop_window(
                self._video[frame_index], self._motion.offset, self.size)
            if self.floor == "keep" and self._floor_blend is not None:
                obs = np.where(floor[..., None], self._floor_blend[scene, background], background)
                np.copyto(obs, scene, where=agent[..., None])
            else:
                shown = agent | floor if self.floor == "keep" else agent
                obs = np.where(shown[..., None], scene, background)
        else:
            frame_index = -1
            obs = scene
        self._last_obs = obs
        info = {
            "agent_mask": agent,
            "state": flatten_state(state_obs),
            "distractor_video": self._video_index,
            "distractor_frame": frame_index,
            "distractor_offset": self._motion.offset.astype(np.float32),
            "distractor_motion": self._motion.last_motion.astype(np.float32),
            "distractor_projected_action": self._motion.last_projected.astype(np.float32),
        }
        return obs, info

    def _load_video(self, entry: Any) -> np.ndarray:
        """Fetch a pool entry's frames (procedural, generated once and cached; or DAVIS)."""
        if isinstance(entry, Path):
            return backgrounds.load_davis_video(entry, self._canvas)
        return backgrounds.render_video(entry, self._canvas)

    def _apply_colour(self) -> None:
        """Write the colour distraction's current material colours into the model."""
        self._physics.model.mat_rgba[self._agent_mats, :3] = self._colour.colours()

    @property
    def video_names(self) -> list[str]:
        """Names of the videos in this env's background pool."""
        return [p.name for p in self._pool]

    @property
    def projection(self) -> np.ndarray:
        """The action-to-background projection W of this env (pixels at 64 px)."""
        return self._motion.projection



_OPEN_ENVS: weakref.WeakSet[DistractingControlEnv] = weakref.WeakSet()
"""Envs that have rendered and are not closed (an env dropped without ``close()`` leaves it)."""


def _close_open_envs() -> None:
    """Close the envs still open when the interpreter exits (quietly: it is exiting)."""
    for env in list(_OPEN_ENVS):
        with contextlib.suppress(Exception):  # a half-torn-down renderer at exit is not news
            env.close()


def _blend_table(alpha: float) -> np.ndarray | None:
    """``table[s, b]``: a floor pixel of value ``s`` over video value ``b`` at opacity ``alpha``,
    ``round(alpha * s + (1 - alpha) * b)`` in float64 as DCS blends; None for an opaque floor."""
    if alpha == 1.0:
        return None
    values = np.arange(256, dtype=np.uint8)
    scene, video = np.meshgrid(values, values, indexing="ij")
    return np.round(alpha * scene + (1.0 - alpha) * video).astype(np.uint8)


def _make_motion(task_name: str, split: str, action_dim: int, coupling: float,
                 size: int) -> dyn.BackgroundMotion:
    """The background motion model of a task and split at an image size."""
    return dyn.BackgroundMotion(
        projection=dyn.coupling_matrix(task_name, split, action_dim),
        coupling=coupling,
        pixel_scale=size / dyn.REFERENCE_SIZE,
    )


def _is_int(value: Any) -> bool:
    """An integer (NumPy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise a clear error when a keyword argument is not one of its allowed values."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


__all__ = ["EPISODE_STEPS", "DistractingControlEnv"]
