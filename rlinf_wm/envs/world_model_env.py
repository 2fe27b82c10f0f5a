"""The learned world model as a batched :class:`ChunkEnv`: imagined environments for RL.

One ``chunk_step`` runs ONE batched sampler pass over every env still running (every solver step is one
DiT call for the whole micro-batch, CFG branches included), decodes only the frames that are consumed
(the policy's next observation and the frames the reward model scores), and scores success with the
reward model. The conditioning window slides in latent space: the newest generated latent frames
condition the next chunk, so decoded pixels are never re-encoded (unless ``reencode_context``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.envs.registry import register_env
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.reward_model import RewardModel
from rlinf_wm.models.samplers import FlowSampler
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.utils.checkpoint import load_model

logger = logging.getLogger(__name__)


@dataclass
class SamplerSettings:
    solver: str = "2ab"
    num_steps: int = 10
    guidance: float = 7.0
    sigma_min: float = 0.01
    sigma_max: float = 200.0
    rho: float = 7.0


@dataclass
class StepTimings:
    """Seconds spent per stage, accumulated over ``chunk_step`` calls (for benchmarks and metrics)."""

    dit: float = 0.0
    decode: float = 0.0
    reward: float = 0.0
    dit_calls: int = 0
    extra: dict = field(default_factory=dict)


@register_env("world_model")
class WorldModelEnv(ChunkEnv):
    """``num_envs`` imagined environments stepped together by action chunks.

    Args:
        task: task name (informational; initial states carry their instructions).
        world_model_dir: the root the paths below are usually derived from (in the env YAML).
        tokenizer_path, dit_path, reward_model_path: ``save_pretrained`` directories.
        stats_path: ``dataset_statistics.json`` used to normalise actions exactly as in training.
        initial_states_path: an initial-state file, or a directory of trajectory HDF5 files.
        num_envs: B. chunk_size: K actions per ``chunk_step``. num_cond_frames: conditioning latent frames.
        max_episode_steps: truncation, in env steps (actions).
        action_scaler: multiplies normalised actions before the DiT (Cosmos Predict 2.5 uses 20).
        sampler: solver / num_steps / guidance / Karras schedule.
        batch_size: micro-batch of envs per DiT call.
        reward_type: ``success_once`` (1 at the success step, then terminate) or ``relative``
            (difference of success probabilities between consecutive scored frames; terminate on success).
        reward_frames: ``last`` scores the chunk's last frame only (one decode per chunk);
            ``all`` decodes and scores every generated frame (exact success step).
        device, dtype: where the models run (``cuda`` + ``bfloat16`` on GPUs).
        seed: seeds resets and generation; ``reset(seed=...)`` re-seeds.
    """

    def __init__(
        self,
        task: str,
        world_model_dir: str,
        tokenizer_path: str,
        dit_path: str,
        reward_model_path: str,
        stats_path: str,
        initial_states_path: str,
        num_envs: int = 8,
        chunk_size: int = 8,
        num_cond_frames: int = 1,
        max_episode_steps: int = 120,
        action_scaler: float = 20.0,
        sampler: dict | SamplerSettings | None = None,
        batch_size: int = 64,
        reward_type: Literal["success_once", "relative"] = "success_once",
        reward_frames: Literal["last", "all"] = "last",
        reencode_context: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        if reward_type not in ("success_once", "relative"):
            raise ValueError(f"reward_type must be 'success_once' or 'relative', got {reward_type!r}")
        if reward_frames not in ("last", "all"):
            raise ValueError(f"reward_frames must be 'last' or 'all', got {reward_frames!r}")
        self.task = task
        self.world_model_dir = Path(world_model_dir)
        self.num_envs = int(num_envs)
        self.chunk_size = int(chunk_size)
        self.num_cond_frames = int(num_cond_frames)
        self.max_episode_steps = int(max_episode_steps)
        self.action_scaler = float(action_scaler)
        self.batch_size = int(batch_size)
        self.reward_type = reward_type
        self.reward_frames = reward_frames
        self.reencode_context = bool(reencode_context)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.seed = int(seed)

        settings = sampler if isinstance(sampler, SamplerSettings) else SamplerSettings(**(sampler or {}))
        self.sampler = FlowSampler(**vars(settings))
        self.stats = ActionStatistics.load(stats_path)
        self.action_dim = self.stats.action_dim
        self.tokenizer = load_model(VideoTokenizer, tokenizer_path).eval()
        self.dit = load_model(ActionDiT, dit_path).eval()
        self.reward_model = load_model(RewardModel, reward_model_path).eval()
        if self.dit.action_dim != self.action_dim:
            raise ValueError(
                f"{dit_path}: DiT action_dim={self.dit.action_dim} but {stats_path} has {self.action_dim} action dims"
            )
        if self.chunk_size % self.dit.actions_per_latent_frame:
            raise ValueError(
                f"chunk_size={self.chunk_size} must be a multiple of the DiT's actions_per_latent_frame="
                f"{self.dit.actions_per_latent_frame}"
            )
        self._check_training_settings()
        self.initial_states = InitialStates.load(initial_states_path, self.num_cond_frames)
        self.num_initial_states = len(self.initial_states)
        self._onloaded = True
        self._move_models(self.device)

        self.timings = StepTimings()
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)
        self._context: torch.Tensor | None = None  # latents [B, C, Tc, h, w]
        self._images = np.zeros((self.num_envs, 0, 0, 3), np.uint8)
        self._instructions: list[str] = [""] * self.num_envs
        self._steps = np.zeros(self.num_envs, np.int64)
        self._done = np.ones(self.num_envs, bool)
        self._success = np.zeros(self.num_envs, bool)
        self._last_prob = np.zeros(self.num_envs, np.float32)

    # ------------------------------------------------------------------ setup helpers
    def _check_training_settings(self) -> None:
        """Warn when the env's settings differ from those the world model was trained with."""
        meta_path = self.world_model_dir / "world_model.json"
        if not meta_path.is_file():
            return
        trained = json.loads(meta_path.read_text())
        for key, value in (("action_scaler", self.action_scaler), ("num_cond_frames", self.num_cond_frames)):
            if key in trained and trained[key] != value:
                logger.warning("world model was trained with %s=%s but the env uses %s", key, trained[key], value)

    def _move_models(self, device: torch.device) -> None:
        for model in (self.tokenizer, self.dit, self.reward_model):
            model.to(device=device)
        self.dit.to(dtype=self.dtype)

    def offload(self) -> None:
        """Move every parameter and buffer of the tokenizer, DiT and reward model (and the context) to CPU."""
        self._move_models(torch.device("cpu"))
        if self._context is not None:
            self._context = self._context.cpu()
        self._onloaded = False

    def onload(self) -> None:
        self._move_models(self.device)
        if self._context is not None:
            self._context = self._context.to(self.device)
        self._onloaded = True

    @property
    def is_onloaded(self) -> bool:
        return self._onloaded

    def model_devices(self) -> set[str]:
        """Devices holding any parameter or buffer of the three models (for offload bookkeeping)."""
        devices = set()
        for model in (self.tokenizer, self.dit, self.reward_model):
            devices.update(str(t.device) for t in list(model.parameters()) + list(model.buffers()))
        return devices

    # ------------------------------------------------------------------ ChunkEnv
    def reset(self, ids=None, seed: int | None = None) -> Obs:
        if not self._onloaded:
            raise RuntimeError("WorldModelEnv.reset called while offloaded: call onload() first")
        if seed is not None:
            self._generator.manual_seed(int(seed))
            self._rng = np.random.default_rng(int(seed))
        if ids is None:
            ids = self._rng.integers(0, self.num_initial_states, size=self.num_envs)
        ids = np.asarray(ids, dtype=np.int64) % self.num_initial_states
        if ids.shape != (self.num_envs,):
            raise ValueError(f"reset ids must have shape [num_envs={self.num_envs}], got {ids.shape}")
        frames = self.initial_states.frames[ids]  # [B, C, H, W, 3]
        with torch.no_grad():
            self._context = self._encode(frames)
        self._images = frames[:, -1].copy()
        self._instructions = [self.initial_states.instructions[i] for i in ids.tolist()]
        self._steps[:] = 0
        self._done[:] = False
        self._success[:] = False
        with torch.no_grad():
            self._last_prob = self._success_prob(torch.from_numpy(self._images)).numpy()
        return self._obs()

    def chunk_step(self, actions) -> ChunkStep:
        if self._context is None:
            raise RuntimeError("WorldModelEnv.chunk_step called before reset()")
        if not self._onloaded:
            raise RuntimeError("WorldModelEnv.chunk_step called while offloaded: call onload() first")
        actions = validate_actions(actions, self.num_envs, self.action_dim)
        k = actions.shape[1]
        if k != self.chunk_size:
            raise ValueError(f"actions must have K = chunk_size = {self.chunk_size} steps, got K = {k}")
        rewards = np.zeros((self.num_envs, k), np.float32)
        terminated = np.zeros((self.num_envs, k), bool)
        truncated = np.zeros((self.num_envs, k), bool)
        # Envs already finished keep their flags and cost nothing.
        terminated[self._done & self._success] = True
        truncated[self._done & ~self._success] = True
        active = np.flatnonzero(~self._done)
        for start in range(0, len(active), self.batch_size):
            rows = active[start : start + self.batch_size]
            with torch.no_grad():
                self._step_rows(rows, actions[rows], rewards, terminated, truncated)
        info = {"success": self._success.copy(), "episode_length": self._steps.copy(), "num_active": len(active)}
        return ChunkStep(self._obs(), rewards, terminated, truncated, info)

    # ------------------------------------------------------------------ internals
    def _obs(self) -> Obs:
        return Obs(images=self._images.copy(), instructions=list(self._instructions))

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [B, C, H, W, 3] -> latents [B, C_lat, Tc, h, w] on the model device."""
        latents = self.tokenizer.encode(torch.from_numpy(frames).to(self.device))
        return latents.to(self.dtype)

    def _success_prob(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> success probability [N] (CPU float)."""
        start = _now()
        probs = self.reward_model.predict_proba(frames.to(self.device)).float().cpu()
        self.timings.reward += _now() - start
        return probs

    def _step_rows(self, rows, actions, rewards, terminated, truncated) -> None:
        n = len(rows)
        k = self.chunk_size
        num_new = k // self.dit.actions_per_latent_frame
        context = self._context[rows]
        tc = context.shape[2]
        x_cond = torch.cat([context, context.new_zeros(n, context.shape[1], num_new, *context.shape[3:])], dim=2)
        mask = torch.zeros(n, 1, tc + num_new, *context.shape[3:], dtype=self.dtype, device=self.device)
        mask[:, :, :tc] = 1.0
        scaled = torch.from_numpy(self.stats.normalize(actions) * self.action_scaler).to(self.device, self.dtype)

        start = _now()
        counting = _CallCounter(self.dit)
        sampled = self.sampler.sample(counting, x_cond, mask, scaled, generator=self._generator)
        self.timings.dit += _now() - start
        self.timings.dit_calls += counting.calls
        new_latents = sampled[:, :, tc:]

        start = _now()
        if self.reward_frames == "all":
            frames = self.tokenizer.decode_to_uint8(new_latents.float())  # [n, K', H, W, 3]
        else:
            frames = self.tokenizer.decode_to_uint8(new_latents[:, :, -1:].float())
        self.timings.decode += _now() - start
        last_frames = frames[:, -1]
        if self.reencode_context:
            new_latents = self.tokenizer.encode(frames).to(self.dtype)
        self._context[rows] = torch.cat([context, new_latents], dim=2)[:, :, -tc:]

        scored = frames.flatten(0, 1)
        probs = self._success_prob(scored).reshape(n, -1).numpy()  # [n, F]
        hits = probs >= self.reward_model.threshold
        # Scored frame f ends env step step_index[f] of the chunk.
        step_index = np.linspace(0, k - 1, num=probs.shape[1] + 1)[1:].round().astype(int) if probs.shape[1] > 1 else np.array([k - 1])
        if probs.shape[1] == k:
            step_index = np.arange(k)
        for row_pos, row in enumerate(rows):
            steps_left = self.max_episode_steps - self._steps[row]
            end = min(k, steps_left)  # steps of this chunk that happen before truncation
            first_hit = next((f for f in range(probs.shape[1]) if hits[row_pos, f] and step_index[f] < end), None)
            if self.reward_type == "relative":
                previous = self._last_prob[row]
                for f in range(probs.shape[1]):
                    if step_index[f] >= end or (first_hit is not None and f > first_hit):
                        break
                    rewards[row, step_index[f]] = probs[row_pos, f] - previous
                    previous = probs[row_pos, f]
                self._last_prob[row] = previous
            if first_hit is not None:
                step = step_index[first_hit]
                if self.reward_type == "success_once":
                    rewards[row, step] = 1.0
                terminated[row, step:] = True
                self._success[row] = True
                self._done[row] = True
                self._steps[row] += step + 1
            else:
                self._steps[row] += end
                if self._steps[row] >= self.max_episode_steps:
                    truncated[row, end - 1 :] = True
                    self._done[row] = True
            self._images[row] = last_frames[row_pos].cpu().numpy()


class _CallCounter(torch.nn.Module):
    """Wraps the DiT to count forward calls (the number of network passes per chunk)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def _now() -> float:
    import time

    return time.perf_counter()
