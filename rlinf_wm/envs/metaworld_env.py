"""Meta-World v3 (MuJoCo) as a :class:`ChunkEnv`: ``B`` single-task envs rendered to small RGB images.

Initial states are ML1's 50 train tasks (object/goal positions) of one task; they are generated
with a fixed seed, so ``reset(ids=[i])`` is the same scene in every process and every run.
Rewards are success-once: 1.0 at the first step where Meta-World reports success, else 0; an
episode terminates on success (unless ``terminate_on_success=False``: data collection records what success
looks like for a few more steps) and is truncated after ``max_episode_steps`` (our limit replaces
Meta-World's own 500-step ``max_path_length``).
"""

from __future__ import annotations

import atexit
import functools
import os
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.envs.registry import register_env

# MuJoCo picks its GL backend at import; EGL renders headless without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

import metaworld  # noqa: E402  (after MUJOCO_GL)
import mujoco  # noqa: E402

# ML1 generates its task list from a seed; a constant one makes reset ids mean the same scenes everywhere.
TASK_SET_SEED = 0
STATE_DIM = 39
# These cameras are defined with their up axis pointing down (xyz_base.xml), so the raw render is
# rotated by 180 degrees; we rotate it back to get an upright view.
_UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})

INSTRUCTIONS = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "put the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the coffee machine button",
    "coffee-pull-v3": "pull the mug from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "door-close-v3": "close the door",
    "door-open-v3": "open the door",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet off",
    "faucet-open-v3": "turn the faucet on",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-v3": "press the handle down",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "push-v3": "push the puck to the goal",
    "reach-v3": "reach the goal position",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "sweep-into-v3": "sweep the puck into the hole",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}
_VERBS = ("open", "close", "press", "pull", "push", "turn", "insert", "unplug", "lock", "unlock",
          "place", "slide", "sweep", "pick", "reach")


def instruction_for(task: str) -> str:
    """A natural-language instruction for a Meta-World task name."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    words = task.removesuffix("-v3").split("-")
    verbs = [w for w in words if w in _VERBS]
    verb = verbs[0] if verbs else "complete"
    objects = [w for w in words if w != verb]
    return f"{verb} the {' '.join(objects) or 'task'}"


def available_tasks() -> list[str]:
    return sorted(metaworld.ML1.ENV_NAMES)


# Envs not closed by their owner are closed at exit, before MuJoCo's EGL display is terminated
# (its atexit hook is registered at the first render, so ours, registered after it, runs first);
# otherwise every GL context raises in its __del__ at interpreter shutdown.
_open_envs: "weakref.WeakSet[MetaWorldEnv]" = weakref.WeakSet()
_close_at_exit_registered = False


def _close_open_envs() -> None:
    for env in list(_open_envs):
        env.close()


def _aim_camera(model: Any, camera: str, pos, lookat, fovy: float) -> None:
    """Place fixed world-frame camera ``camera`` at ``pos`` looking at ``lookat``, upright (world z up)."""
    cam = model.camera(camera)
    if int(cam.bodyid[0]) != 0 or int(cam.mode[0]) != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
        raise ValueError(f"camera_pose needs a fixed camera on the world body; {camera!r} is not one")
    pos, lookat = np.asarray(pos, np.float64), np.asarray(lookat, np.float64)
    back = pos - lookat
    if np.hypot(back[0], back[1]) < 1e-6:  # the image's up (world z) is undefined
        raise ValueError(f"camera_pose.lookat {lookat.tolist()} is straight above or below pos {pos.tolist()}")
    # MuJoCo cameras look along their -z axis with +y up: z points from the target back to the camera
    z = back / np.linalg.norm(back)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.stack([x, np.cross(z, x), z], axis=1).reshape(-1))
    model.cam_pos[cam.id], model.cam_quat[cam.id], model.cam_fovy[cam.id] = pos, quat, float(fovy)


@functools.lru_cache(maxsize=8)
def _benchmark(task: str) -> "metaworld.ML1":
    # Building ML1 resets the env 100 times (~1-3 s); envs of one task in a process share it.
    return metaworld.ML1(task, seed=TASK_SET_SEED)


@register_env("metaworld")
class MetaWorldEnv(ChunkEnv):
    """``num_envs`` Meta-World envs of one task, stepped by action chunks ``[B, K, 4]``.

    Actions are Meta-World's: xyz end-effector deltas and gripper effort, each clipped to [-1, 1].
    ``camera_pose`` (``pos``, ``lookat``, ``fovy``) re-aims the named camera, e.g. to frame the workspace at 64x64.
    One frame is rendered per chunk (rendering is the cost); ``render_every_step`` also renders after every inner
    step into ``info["frames"]`` ``uint8 [B, K, H, W, 3]`` (steps after an episode's end repeat its last frame),
    so policy rollouts can be recorded as world-model training data. ``include_states`` adds the state vector to
    observations and the state after every inner step to ``info["states"]`` ``float32 [B, K, 39]`` (repeated after
    an episode's end in the same way), which costs no rendering.
    """

    action_dim = 4

    def __init__(
        self,
        task: str,
        num_envs: int = 1,
        image_size: list[int] | tuple[int, int] = (64, 64),
        camera: str = "corner3",
        camera_pose: dict | None = None,
        max_episode_steps: int = 150,
        seed: int = 0,
        include_states: bool = False,
        render_every_step: bool = False,
        terminate_on_success: bool = True,
    ) -> None:
        if task not in metaworld.ML1.ENV_NAMES:
            raise ValueError(f"unknown Meta-World task {task!r}; available: {', '.join(available_tasks())}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be two positive ints [H, W], got {list(image_size)}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.task = task
        self.num_envs = int(num_envs)
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.camera = camera
        # a mapping from YAML, or the validated schema's CameraPose
        pose = camera_pose if camera_pose is None or isinstance(camera_pose, Mapping) else vars(camera_pose)
        if pose is not None and set(pose) != {"pos", "lookat", "fovy"}:
            raise ValueError(f"camera_pose needs exactly the keys fovy, lookat, pos; got {sorted(pose)}")
        self.camera_pose = None if pose is None else dict(pose)
        self.max_episode_steps = int(max_episode_steps)
        self.include_states = bool(include_states)
        self.render_every_step = bool(render_every_step)
        self.terminate_on_success = bool(terminate_on_success)
        self.instruction = instruction_for(task)
        self._rng = np.random.default_rng(seed)
        benchmark = _benchmark(task)
        self._tasks = list(benchmark.train_tasks)
        env_class = benchmark.train_classes[task]
        self._envs: list[Any] = []
        try:
            for _ in range(self.num_envs):
                env = env_class(render_mode="rgb_array", camera_name=camera, width=self.width, height=self.height)
                cameras = [env.model.camera(i).name for i in range(env.model.ncam)]
                if camera not in cameras:
                    # MuJoCo would silently fall back to a free camera.
                    raise ValueError(f"unknown camera {camera!r} for {task}; available: {', '.join(cameras)}")
                if self.camera_pose is not None:
                    _aim_camera(env.model, camera, **self.camera_pose)
                # No shadows or multisampling: ~10x faster renders, and at 64x64 they add nothing.
                # Must be set before the first render creates the GL context.
                env.model.vis.quality.shadowsize = 0
                env.model.vis.quality.offsamples = 0
                # Meta-World raises once its own path length is reached; ours ends episodes first.
                env.max_path_length = self.max_episode_steps + 1
                self._envs.append(env)
        except Exception:
            self.close()
            raise
        b = self.num_envs
        self._task_ids = np.full(b, -1, np.int64)
        self._states = np.zeros((b, STATE_DIM), np.float64)
        self._images = np.zeros((b, self.height, self.width, 3), np.uint8)
        self._lengths = np.zeros(b, np.int64)
        self._success = np.zeros(b, bool)
        self._terminated = np.zeros(b, bool)
        self._truncated = np.zeros(b, bool)
        self._was_reset = False
        _open_envs.add(self)

    @property
    def num_initial_states(self) -> int:
        """How many distinct reset ids there are (ML1's train tasks); ids wrap around modulo this."""
        return len(self._tasks)

    # -- ChunkEnv --------------------------------------------------------------------------------

    def reset(self, ids: list[int] | np.ndarray | None = None, seed: int | None = None) -> Obs:
        """Reset every env; ``ids[b]`` picks ML1 train task ``ids[b] % 50`` (random when ``None``).

        Meta-World's reset is deterministic given the task, so ``seed`` only matters when ``ids``
        is ``None``: it then fixes which tasks are drawn.
        """
        if ids is None:
            rng = np.random.default_rng(seed) if seed is not None else self._rng
            ids = rng.integers(0, len(self._tasks), size=self.num_envs)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != self.num_envs:
            raise ValueError(f"reset ids has {len(ids)} entries for num_envs={self.num_envs}")
        for b, env in enumerate(self._envs):
            self._task_ids[b] = ids[b] % len(self._tasks)
            env.set_task(self._tasks[self._task_ids[b]])
            state, _ = env.reset()
            self._store_state(b, state)
            self._images[b] = self._render(b)
        self._lengths[:] = 0
        self._success[:] = False
        self._terminated[:] = False
        self._truncated[:] = False
        self._was_reset = True
        return self._obs()

    def chunk_step(self, actions: np.ndarray) -> ChunkStep:
        if not self._was_reset:
            raise RuntimeError("MetaWorldEnv.chunk_step called before reset()")
        actions = np.clip(validate_actions(actions, self.num_envs, self.action_dim), -1.0, 1.0)
        b_size, k_size = actions.shape[:2]
        rewards = np.zeros((b_size, k_size), np.float32)
        terminated = np.zeros((b_size, k_size), bool)
        truncated = np.zeros((b_size, k_size), bool)
        frames = np.zeros((b_size, k_size, self.height, self.width, 3), np.uint8) if self.render_every_step else None
        states = np.zeros((b_size, k_size, STATE_DIM), np.float32) if self.include_states else None
        for b, env in enumerate(self._envs):
            if self._terminated[b] or self._truncated[b]:
                # Finished before this chunk: not stepped, flags stay, no reward.
                terminated[b] = self._terminated[b]
                truncated[b] = self._truncated[b]
                if frames is not None:
                    frames[b] = self._images[b]
                if states is not None:
                    states[b] = self._states[b]
                continue
            for k in range(k_size):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Meta-World warns about its own sim instabilities
                    state, _, _, _, info = env.step(actions[b, k])
                self._store_state(b, state)
                self._lengths[b] += 1
                if info["success"] and not self._success[b]:
                    self._success[b] = True
                    self._terminated[b] = self.terminate_on_success
                    rewards[b, k] = 1.0
                if self._lengths[b] >= self.max_episode_steps and not self._terminated[b]:
                    self._truncated[b] = True
                ended = self._terminated[b] or self._truncated[b]
                if frames is not None:
                    frames[b, k:] = self._render(b)
                if states is not None:
                    states[b, k:] = self._states[b]
                if ended:
                    terminated[b, k:] = self._terminated[b]
                    truncated[b, k:] = self._truncated[b]
                    break
            self._images[b] = frames[b, -1] if frames is not None else self._render(b)
        info = {"success": self._success.copy(), "episode_length": self._lengths.copy(), "task_ids": self._task_ids.copy()}
        if frames is not None:
            info["frames"] = frames
        if states is not None:
            info["states"] = states
        return ChunkStep(obs=self._obs(), rewards=rewards, terminated=terminated, truncated=truncated, info=info)

    def close(self) -> None:
        # Closing explicitly frees the EGL context while it is still valid; left to __del__ it raises.
        for env in getattr(self, "_envs", []):
            try:
                env.close()
            except Exception:  # noqa: BLE001  (a half-built env may fail to close; nothing to free)
                pass
        self._envs = []

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "MetaWorldEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- extras ----------------------------------------------------------------------------------

    def raw_states(self) -> np.ndarray:
        """float64 [B, 39]: Meta-World's state vector per env, with the goal position filled in.

        ML1 hides the goal (zeros in the last 3 entries); scripted experts need it, so it is put back.
        """
        return self._states.copy()

    @property
    def task_ids(self) -> np.ndarray:
        return self._task_ids.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._lengths.copy()

    def _store_state(self, b: int, state: np.ndarray) -> None:
        self._states[b] = state
        self._states[b, -3:] = self._envs[b]._get_pos_goal()

    def _render(self, b: int) -> np.ndarray:
        env = self._envs[b]
        # Every env owns a GL context and gymnasium renders into whichever is current; with several
        # envs (or after another env closed its context) that is the wrong one, so make ours current.
        env.mujoco_renderer._get_viewer("rgb_array").make_context_current()
        image = env.render()
        global _close_at_exit_registered
        if not _close_at_exit_registered:
            atexit.register(_close_open_envs)
            _close_at_exit_registered = True
        if self.camera in _UPSIDE_DOWN_CAMERAS and self.camera_pose is None:
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _obs(self) -> Obs:
        states = self._states.astype(np.float32) if self.include_states else None
        return Obs(images=self._images.copy(), instructions=[self.instruction] * self.num_envs, states=states)
