"""Any :class:`ChunkEnv` as a gymnasium environment, for third-party RL libraries.

* :class:`ChunkVectorEnv` - a ``gymnasium.vector.VectorEnv`` over the ``B`` envs of a ChunkEnv.
* :class:`ChunkGymEnv` - a plain ``gymnasium.Env`` over a ChunkEnv with ``num_envs == 1`` (what
  ``gymnasium.utils.env_checker.check_env`` checks, and what single-env libraries expect).

One gym step is one action chunk: the action is ``float32 [K, A]`` (``Box``), the reward is the chunk's summed
reward, ``terminated`` / ``truncated`` say whether the episode ended inside the chunk (never both: success wins).
Observations are ``{"image": uint8 [H, W, 3], "instruction": str}`` (``Dict`` of ``Box`` and ``Text``); batched,
the image gains a leading ``B`` and the instructions are a tuple (gymnasium's batching of ``Text``).

Autoreset (gymnasium 1.x, ``metadata["autoreset_mode"]``):

* ``NEXT_STEP`` (gymnasium's default): the step after an env's episode ends restarts that env - its action is
  ignored, it returns the new episode's first observation with reward 0 and both flags False. Needs per-env
  restarts, i.e. a ChunkEnv with ``reset_envs(env_indices)`` (WorldModelEnv has it).
* ``DISABLED``: nothing restarts by itself; call ``reset()`` (all envs) or ``reset(options={"reset_mask": m})``
  (only the masked ones; also needs ``reset_envs`` unless the mask covers every env). Finished envs that are
  stepped stay finished (reward 0, flags set) and cost nothing, as in every ChunkEnv.

``reset(options={"ids": [...]})`` passes explicit initial-state ids (e.g. GRPO groups). ``seed`` seeds
``np_random``, from which every ChunkEnv reset seed is drawn, so episodes are reproducible from the gym seed.
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, chunk_success

INSTRUCTION_CHARSET = string.printable


def _image_shape(env: ChunkEnv, image_shape) -> tuple[int, int, int]:
    if image_shape is not None:
        return tuple(int(s) for s in image_shape)
    if hasattr(env, "image_shape"):
        return tuple(env.image_shape)
    if hasattr(env, "height") and hasattr(env, "width"):
        return (int(env.height), int(env.width), 3)
    raise ValueError(f"cannot tell the image shape of {type(env).__name__}: pass image_shape=(H, W, 3)")


def _chunk_size(env: ChunkEnv, chunk_size) -> int:
    size = chunk_size if chunk_size is not None else getattr(env, "chunk_size", None)
    if size is None:
        raise ValueError(f"{type(env).__name__} accepts any chunk length: pass chunk_size=K")
    if getattr(env, "chunk_size", size) != size:
        raise ValueError(f"chunk_size={size} but {type(env).__name__} steps chunks of {env.chunk_size}")
    return int(size)


def _autoreset_mode(value: AutoresetMode | str) -> AutoresetMode:
    """An AutoresetMode from itself, its value ("NextStep") or its name in any case ("next_step")."""
    if isinstance(value, AutoresetMode):
        return value
    for mode in AutoresetMode:
        if str(value).lower().replace("_", "") in (mode.name.lower().replace("_", ""), mode.value.lower()):
            return mode
    raise ValueError(f"unknown autoreset_mode {value!r}; valid: {[m.name for m in AutoresetMode]}")


def observation_space(image_shape: tuple[int, int, int], max_instruction_length: int = 256) -> spaces.Dict:
    return spaces.Dict({
        "image": spaces.Box(0, 255, image_shape, np.uint8),
        "instruction": spaces.Text(max_length=max_instruction_length, min_length=0, charset=INSTRUCTION_CHARSET),
    })


def action_space(chunk_size: int, action_dim: int, low: float, high: float) -> spaces.Box:
    return spaces.Box(low, high, (chunk_size, action_dim), np.float32)


def chunk_outcome(step: ChunkStep) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-env (reward, terminated, truncated) of one chunk: summed reward; success beats truncation."""
    terminated = step.terminated.any(axis=1)
    truncated = step.truncated.any(axis=1) & ~terminated
    return step.rewards.sum(axis=1).astype(np.float64), terminated, truncated


class ChunkVectorEnv(gymnasium.vector.VectorEnv):
    """A ChunkEnv's ``B`` envs as a gymnasium ``VectorEnv`` (see the module docstring)."""

    def __init__(
        self,
        env: ChunkEnv,
        chunk_size: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
        action_low: float = -1.0,
        action_high: float = 1.0,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_instruction_length: int = 256,
    ) -> None:
        mode = _autoreset_mode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or DISABLED, got {mode}")
        if mode is AutoresetMode.NEXT_STEP and not hasattr(env, "reset_envs"):
            raise ValueError(f"NEXT_STEP autoreset restarts single envs, which {type(env).__name__} cannot "
                             "(no reset_envs); use autoreset_mode=DISABLED and reset() all envs")
        self.env = env
        self.num_envs = env.num_envs
        self.chunk_size = _chunk_size(env, chunk_size)
        self.metadata = {"autoreset_mode": mode}
        self.single_observation_space = observation_space(_image_shape(env, image_shape), max_instruction_length)
        self.single_action_space = action_space(self.chunk_size, env.action_dim, action_low, action_high)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._needs_reset = np.zeros(self.num_envs, bool)
        self._reset_done = False

    @staticmethod
    def _to_gym(obs: Obs) -> dict[str, Any]:
        return {"image": obs.images, "instruction": tuple(obs.instructions)}

    def _seed(self) -> int:
        return int(self.np_random.integers(0, 2**31 - 1))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        ids, mask = options.pop("ids", None), options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; valid: ids, reset_mask")
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must be bool [{self.num_envs}], got shape {mask.shape}")
        if mask is None or mask.all() or not self._reset_done:
            obs = self.env.reset(ids=ids, seed=self._seed())
            self._needs_reset[:] = False
        else:
            if not hasattr(self.env, "reset_envs"):
                raise ValueError(f"{type(self.env).__name__} cannot restart single envs: reset_mask must be all True")
            if ids is not None and len(ids) != mask.sum():
                raise ValueError(f"with reset_mask, ids needs one id per masked env ({mask.sum()}), got {len(ids)}")
            obs = self.env.reset_envs(np.flatnonzero(mask), ids)
            self._needs_reset[mask] = False
        self._reset_done = True
        return self._to_gym(obs), {}

    def step(self, actions):
        if not self._reset_done:
            raise RuntimeError("ChunkVectorEnv.step called before reset()")
        actions = np.array(actions, dtype=np.float32)  # a copy: rows restarting now are overwritten below
        restarting = self._needs_reset.copy()
        if actions.shape == (self.num_envs, *self.single_action_space.shape):
            actions[restarting] = 0.0  # ignored (those envs are finished); keeps NaNs out of validation
        step = self.env.chunk_step(actions)
        rewards, terminated, truncated = chunk_outcome(step)
        obs = step.obs
        if self.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP:
            if restarting.any():
                obs = self.env.reset_envs(np.flatnonzero(restarting))
                rewards[restarting] = 0.0
                terminated[restarting] = truncated[restarting] = False
            self._needs_reset = terminated | truncated
        info = {}
        if "success" in step.info:
            info["success"], info["_success"] = chunk_success(step.info, self.num_envs), np.ones(self.num_envs, bool)
        if "episode_length" in step.info:
            info["episode_length"] = np.asarray(step.info["episode_length"])
            info["_episode_length"] = np.ones(self.num_envs, bool)
        return self._to_gym(obs), rewards, terminated, truncated, info

    def close_extras(self, **kwargs) -> None:
        self.env.close()


class ChunkGymEnv(gymnasium.Env):
    """A ChunkEnv with one env (``num_envs == 1``) as a ``gymnasium.Env``; same conventions as the vector env."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        env: ChunkEnv,
        chunk_size: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
        action_low: float = -1.0,
        action_high: float = 1.0,
        max_instruction_length: int = 256,
    ) -> None:
        if env.num_envs != 1:
            raise ValueError(f"ChunkGymEnv wraps one env, got num_envs={env.num_envs}; use ChunkVectorEnv")
        self.env = env
        self.chunk_size = _chunk_size(env, chunk_size)
        self.observation_space = observation_space(_image_shape(env, image_shape), max_instruction_length)
        self.action_space = action_space(self.chunk_size, env.action_dim, action_low, action_high)
        self._episode_over = True

    @staticmethod
    def _to_gym(obs: Obs) -> dict[str, Any]:
        return {"image": obs.images[0], "instruction": obs.instructions[0]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        reset_id = options.pop("id", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; valid: id")
        obs = self.env.reset(ids=None if reset_id is None else [int(reset_id)],
                             seed=int(self.np_random.integers(0, 2**31 - 1)))
        self._episode_over = False
        return self._to_gym(obs), {}

    def step(self, action):
        if self._episode_over:
            raise RuntimeError("ChunkGymEnv.step called after the episode ended (or before reset): call reset()")
        step = self.env.chunk_step(np.asarray(action, np.float32)[None])
        rewards, terminated, truncated = chunk_outcome(step)
        self._episode_over = bool(terminated[0] or truncated[0])
        info = {}
        if "episode_length" in step.info:
            info["episode_length"] = np.asarray(step.info["episode_length"])[0].item()
        if "success" in step.info:
            info["success"] = bool(chunk_success(step.info, 1)[0])
        return self._to_gym(step.obs), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def close(self) -> None:
        self.env.close()
