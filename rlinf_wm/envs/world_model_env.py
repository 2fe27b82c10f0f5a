"""The learned world model as a batched :class:`ChunkEnv`: imagined environments for RL.

One ``chunk_step`` over ``B`` envs:

1. the still-running envs are cut into micro-batches of ``batch_size``; each gets ONE sampler run: every solver
   step is one DiT call for the whole micro-batch (classifier-free guidance doubles that call's batch, and is
   skipped when ``guidance == 0``). Finished envs cost nothing.
2. Only the frames that are consumed are decoded: with ``reward_frames="last"`` the frame the policy sees next
   (plus the few earlier frames a multi-frame reward model stacks); with ``"all"`` every generated frame, so
   success is found at the exact step.
3. The reward model scores the decoded frames; success terminates the env (``success_once``: reward 1 at that
   step; ``relative``: each scored frame earns the change in success probability since the previous one, so an
   episode's return is ``p_final - p_reset``; :mod:`rlinf_wm.envs.world_model_success`). ``max_episode_steps``
   truncates.
4. With an ensemble (``ensemble_world_model_dirs``, :mod:`rlinf_wm.envs.world_model_ensemble`) the env goes on with
   its own DiT's chunk and reports the members' disagreement on it. Above ``uncertainty_threshold`` the episode ends
   there as a failure, whatever its frames score: MOReL's "unknown state" halt (Kidambi et al., 2020). (On
   drawer-open two DiT seeds agree on GRPO's false successes as much as on its true ones: docs/results.md.)
5. With a state model (``state_model_path``) a success the reward model sees in the frames counts only once the
   state model, run open loop on the same actions, also brings the object to the goal: a second opinion from
   another model class on the same data, which tells GRPO's false imagined successes from its true ones where a
   second DiT does not (docs/results.md). Its members' disagreement on the object (``info["state_spread"]``) can
   halt an env as the DiT ensemble's does (``state_uncertainty_threshold``).
6. The conditioning window slides in latent space: the newest generated latent frames condition the next chunk,
   or, with ``reencode_context`` (the default for per-frame tokenizers), they are decoded and encoded again, which
   keeps long autoregressive rollouts on the tokenizer's manifold.

Settings not given (``None``) come from ``world_model.json`` in ``world_model_dir`` - the values the world model
was trained with (window sizes, action scaler, sampler) - so one file is the source of truth; given values override
it (a warning names any that differ from training); loading and checking the parts is
:mod:`rlinf_wm.envs.world_model_parts`, encoding, decoding and scoring frames :mod:`rlinf_wm.envs.world_model_frames`,
per-env episode state :mod:`rlinf_wm.envs.world_model_episodes`.

Randomness: every env has its own noise stream, seeded from ``(seed, env index)``; ``reset(seed=s)`` re-seeds all
of them. An env's rollout therefore depends only on its seed, its initial state and its actions - not on the
micro-batch it shares or on which other envs are still running. Envs of one GRPO group (same reset id) differ
because their streams differ.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch

from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.envs.registry import register_env
from rlinf_wm.envs.world_model_ensemble import DiTEnsemble
from rlinf_wm.envs.world_model_episodes import EpisodeRows
from rlinf_wm.envs.world_model_frames import WorldModelFrames
from rlinf_wm.envs.world_model_parts import load_world_model_parts
from rlinf_wm.envs.world_model_placement import ModelPlacement
from rlinf_wm.envs.world_model_success import SuccessRule
from rlinf_wm.envs.world_model_timing import CountingModel, StepTimings
from rlinf_wm.models.state_dynamics import StateSuccessTracker, own_state_model
from rlinf_wm.utils.compilation import resolve_compile
from rlinf_wm.utils.precision import resolve_dtype

REWARD_FRAMES = ("last", "all")


@register_env("world_model")
class WorldModelEnv(ChunkEnv):
    """``num_envs`` imagined environments stepped together by action chunks (see the module docstring).

    Args:
        world_model_dir: the trained world model (``world_model_pipeline``'s directory).
        task: informational (initial states carry their instructions); checked against world_model.json.
        tokenizer_path, dit_path, reward_model_path, stats_path, initial_states_path: override the parts
            (``None``: world_model.json's paths, relative to ``world_model_dir``). Model paths may be run
            directories holding ``model/``. ``initial_states_path`` may also be a trajectory directory.
        num_envs: B.
        chunk_size: K actions per ``chunk_step`` (a multiple of the DiT's actions per latent frame).
        num_cond_latent_frames: latent frames conditioning each chunk.
        max_episode_steps: truncation, in actions.
        action_scaler: normalised actions (q01..q99 -> [-1, 1]) are multiplied by this before the DiT.
        sampler: ``FlowSampler`` settings (solver, num_steps, guidance, guidance_interval, sigma_min, sigma_max,
            rho); a missing or ``None`` key takes the trained default.
        distilled: run the world model's few-step student DiT (``stage=distill``; guidance baked in, one branch)
            with its own sampler defaults; ``dit_path`` and ``sampler`` keys still override. ``auto``: the
            student when the world model has one, else the trained DiT.
        batch_size: most envs per sampler run (CFG doubles each DiT call's batch internally).
        reward_type: ``success_once`` or ``relative`` (module docstring).
        reward_frames: ``last`` scores the last frame of each chunk; ``all`` every generated frame.
        reward_threshold: success probability threshold (``None``: the reward model's own).
        success_consecutive: scored frames in a row at or above the threshold before an env succeeds (1: the
            first). More rejects one-frame false successes of long imagined rollouts, at the cost of detecting a
            real success one scored frame later.
        ensemble_world_model_dirs: more world models trained on the same windows and action statistics (e.g.
            with another ``train.dit.seed``); their DiTs (the student when the env runs the student) run with the
            env's sampler. Their disagreement is ``info["disagreement"]``.
        disagreement: ``mean`` or ``sample``, what the members' predictions are (module docstring).
        uncertainty_threshold: an env whose chunk disagreement exceeds this ends there as a failure
            (terminated, no success; ``relative`` rewards score it as probability 0; ``info["halted"]``).
            ``None``: never (disagreement is only reported).
        state_model_path: a state model (:mod:`rlinf_wm.models.state_dynamics`, ``train_state_model``) run open
            loop beside the DiT from each env's recorded reset state; success then also needs its object to reach
            the goal (``info["state_distance"]``: its smallest object-to-goal distance so far). It decides success
            and termination; ``relative`` rewards still follow the frames' probabilities. ``auto``: the world
            model's own when its ``world_model.json`` names one (stage ``state``) and the initial states are
            episode starts; ``None``: frames only.
        state_model_members: ``mean``: the state model's members' mean object-to-goal distance decides; ``all``:
            every member must bring the object to the goal (stricter).
        state_uncertainty_threshold: an env whose state-model members' object positions spread further than this
            within a chunk (``info["state_spread"]``, the largest distance of a member from their mean; metres on
            Meta-World) ends there as a failure, a success in that chunk included, as ``uncertainty_threshold`` does
            for DiTs. ``None``: never.
        reencode_context: decode the new conditioning frames and encode them again instead of sliding the
            generated latents (per-frame tokenizers only). ``None`` (default): on for per-frame tokenizers - on
            drawer-open-v3, sliding raw generated latents drifted off the tokenizer's manifold within ~10 chunks
            (frames dissolve and the reward model fires on them); re-encoding keeps 30+ chunks on it.
        device, dtype: where the models run. The DiT runs in ``dtype``; the tokenizer and the reward model run
            under autocast in it (in bfloat16 decodes agree with float32 to ~53 dB, re-encoded latents to 50 dB).
            ``auto``: bfloat16 on hardware that computes it natively (CUDA, CPUs with AMX / AVX512-BF16), else
            float32 (:mod:`rlinf_wm.utils.precision`).
        compile: ``torch.compile`` the DiT, the reward model and the per-frame tokenizer (``auto``: where a compiler is
            installed; :mod:`rlinf_wm.utils.compilation`). The first chunk of a process then compiles (~50 s on
            this CPU with inductor's cache cold), which ten GRPO iterations repaid here; short runs stay eager.
        seed: seeds the noise streams and the initial-state draws of ``reset(ids=None)``.
    """

    def __init__(
        self,
        world_model_dir: str,
        task: str | None = None,
        tokenizer_path: str | None = None,
        dit_path: str | None = None,
        reward_model_path: str | None = None,
        stats_path: str | None = None,
        initial_states_path: str | None = None,
        num_envs: int = 8,
        chunk_size: int | None = None,
        num_cond_latent_frames: int | None = None,
        max_episode_steps: int = 150,
        action_scaler: float | None = None,
        sampler: dict[str, Any] | None = None,
        distilled: bool | str = False,
        batch_size: int = 64,
        reward_type: Literal["success_once", "relative"] = "success_once",
        reward_frames: Literal["last", "all"] = "last",
        reward_threshold: float | None = None,
        success_consecutive: int = 1,
        ensemble_world_model_dirs: list[str] | None = None,
        uncertainty_threshold: float | None = None,
        disagreement: Literal["mean", "sample"] = "mean",
        state_model_path: str | None = None,
        state_model_members: Literal["mean", "all"] = "mean",
        state_uncertainty_threshold: float | None = None,
        reencode_context: bool | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        compile: bool | str = False,
        seed: int = 0,
    ) -> None:
        if reward_frames not in REWARD_FRAMES:
            raise ValueError(f"reward_frames must be one of {REWARD_FRAMES}, got {reward_frames!r}")
        for name, value in (("num_envs", num_envs), ("batch_size", batch_size), ("max_episode_steps", max_episode_steps)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if uncertainty_threshold is not None and not ensemble_world_model_dirs:
            raise ValueError("uncertainty_threshold needs ensemble_world_model_dirs: disagreement is between DiTs")
        if state_uncertainty_threshold is not None and state_model_path is None:
            raise ValueError("state_uncertainty_threshold needs a state model (state_model_path)")
        for name, value in (("uncertainty_threshold", uncertainty_threshold),
                            ("state_uncertainty_threshold", state_uncertainty_threshold)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        SuccessRule.check(reward_type, success_consecutive)  # before the models load
        compute_dtype = resolve_dtype(dtype, device)
        compiled = resolve_compile(compile, device)
        parts = load_world_model_parts(
            world_model_dir, task, tokenizer_path, dit_path, reward_model_path, stats_path, initial_states_path,
            chunk_size, num_cond_latent_frames, action_scaler, sampler, distilled,
        )
        self.world_model_dir, self.task = parts.world_model_dir, parts.task
        self.chunk_size, self.num_cond_latent_frames = parts.chunk_size, parts.num_cond_latent_frames
        self.action_scaler, self.sampler = parts.action_scaler, parts.sampler
        self.action_inputs = parts.action_inputs
        self.stats, self.action_dim = parts.stats, parts.action_dim
        self.tokenizer, self.dit, self.reward_model = parts.tokenizer, parts.dit, parts.reward_model
        self.initial_states = parts.initial_states
        self.num_envs = int(num_envs)
        if self.initial_states.start_steps.max() >= int(max_episode_steps):
            raise ValueError(f"initial states start at step {int(self.initial_states.start_steps.max())}, not before "
                             f"max_episode_steps={max_episode_steps}: no step would be left")
        self.batch_size = int(batch_size)
        self.reward_type = reward_type
        self.reward_frames = reward_frames
        self.device = torch.device(device)
        self.dtype = compute_dtype
        self.seed = int(seed)
        self._rule = SuccessRule(self.num_envs, reward_type, self.reward_model.threshold if reward_threshold is None
                                 else reward_threshold, success_consecutive)
        self.num_pred_latent_frames = self.chunk_size // self.dit.actions_per_latent_frame
        self.uncertainty_threshold = None if uncertainty_threshold is None else float(uncertainty_threshold)
        per_frame_tokenizer = self.tokenizer.temporal_compression == 1
        self.reencode_context = per_frame_tokenizer if reencode_context is None else bool(reencode_context)
        if self.reencode_context and not per_frame_tokenizer:
            raise ValueError("reencode_context needs a per-frame tokenizer (temporal_compression 1), got "
                             f"{self.tokenizer.kind} with temporal compression {self.tokenizer.temporal_compression}")

        self.timings = StepTimings()
        if state_model_path == "auto":
            state_model_path = own_state_model(self.world_model_dir, self.initial_states)
        self._state_success = None if state_model_path is None else StateSuccessTracker.for_initial_states(
            state_model_path, self.initial_states, int(num_envs), self.action_dim, state_model_members)
        if state_uncertainty_threshold is not None and self._state_success is None:
            raise ValueError("state_uncertainty_threshold needs a state model: state_model_path auto found none")
        self.state_uncertainty_threshold = None if state_uncertainty_threshold is None else float(
            state_uncertainty_threshold)
        self.ensemble = DiTEnsemble(list(ensemble_world_model_dirs or []), parts, disagreement, self.timings)
        for dit in (self.dit, *self.ensemble.dits):
            dit.compile_forward = compiled
        self._counting_dit = CountingModel(self.dit, self.timings)
        self._frames = WorldModelFrames(self.tokenizer, self.reward_model, self.initial_states, self.num_cond_latent_frames,
                                        self.chunk_size, self.device, self.dtype, self.timings, compiled)
        self._placement = ModelPlacement(self.tokenizer, (self.dit, *self.ensemble.dits), self.reward_model, self.device,
                                         self.dtype)

        self._episodes = EpisodeRows(self.num_envs, self.initial_states.image_size,
                                     max(0, self.reward_model.num_frames - 1), self.action_dim, int(max_episode_steps),
                                     self._rule)
        self._context: torch.Tensor | None = None  # latents [B, C, Tc, h, w] (DiT dtype)
        self._seed_streams(self.seed)

    # ------------------------------------------------------------------ setup
    def _seed_streams(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        # One noise stream per env, independent of the others (np SeedSequence spawns well-mixed child seeds).
        children = np.random.SeedSequence(seed).spawn(self.num_envs)
        self._generators = [torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0] >> 1)) for c in children]

    @property
    def max_episode_steps(self) -> int:
        return self._episodes.max_episode_steps

    @property
    def reward_threshold(self) -> float:
        return self._rule.threshold

    @reward_threshold.setter
    def reward_threshold(self, value: float) -> None:  # benchmarks rescore one rollout under several thresholds
        self._rule.threshold = float(value)

    @property
    def success_consecutive(self) -> int:
        return self._rule.consecutive

    @property
    def num_initial_states(self) -> int:
        return len(self.initial_states)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the observations."""
        return (*self.initial_states.image_size, 3)

    # ------------------------------------------------------------------ offloading
    def _move_state(self, device: torch.device) -> None:
        if self._context is not None:
            self._context = self._context.to(device)
        self._frames.move_cache(device)

    def offload(self) -> None:
        """Move every parameter and buffer of tokenizer, DiTs and reward model (and the latent state) to CPU."""
        self._placement.offload()
        self._move_state(torch.device("cpu"))

    def onload(self) -> None:
        self._placement.onload()
        self._move_state(self.device)

    @property
    def is_onloaded(self) -> bool:
        return self._placement.onloaded

    def model_devices(self) -> set[str]:
        """Devices holding any parameter or buffer of the models."""
        return self._placement.devices()

    def _require_ready(self, call: str) -> None:
        if not self._placement.onloaded:
            raise RuntimeError(f"WorldModelEnv.{call} called while offloaded: call onload() first")

    # ------------------------------------------------------------------ ChunkEnv
    def reset(self, ids: list[int] | np.ndarray | None = None, seed: int | None = None) -> Obs:
        """Start episodes; ``ids[b]`` picks initial state ``ids[b] % num_initial_states`` (random when ``None``).

        ``seed`` re-seeds every env's noise stream and the draw of random ids; without it the streams go on.
        """
        self._require_ready("reset")
        if seed is not None:
            self._seed_streams(int(seed))
        self._start(np.arange(self.num_envs), ids)
        return self._obs()

    def reset_envs(self, env_indices: list[int] | np.ndarray, ids: list[int] | np.ndarray | None = None) -> Obs:
        """Restart only the envs ``env_indices`` (the others go on untouched); returns every env's observation.

        ``ids`` picks their initial states (random when ``None``). Noise streams are not re-seeded. This gives
        adapters (gymnasium autoreset) and asynchronous runners per-env restarts.
        """
        self._require_ready("reset_envs")
        if self._context is None:
            raise RuntimeError("WorldModelEnv.reset_envs called before reset()")
        rows = np.asarray(env_indices, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_envs or len(set(rows.tolist())) != len(rows)):
            raise ValueError(f"env_indices must be distinct envs in [0, {self.num_envs}), got {rows.tolist()}")
        self._start(rows, ids)
        return self._obs()

    def _start(self, rows: np.ndarray, ids) -> None:
        if len(rows) == 0:
            return
        ids = self.initial_states.resolve_ids(ids, len(rows), self._rng)
        with torch.no_grad():
            latents = torch.stack([self._frames.initial_latents(int(i)) for i in ids])
            if self._context is None or np.array_equal(rows, np.arange(self.num_envs)):
                self._context = latents
            else:
                self._context[torch.from_numpy(rows).to(self.device)] = latents
            reset_probs = [self._frames.initial_prob(int(i)) for i in ids] if self.reward_type == "relative" else None
        self._rule.reset(rows, reset_probs)
        self._episodes.start(rows, ids, self.initial_states, self.action_inputs.integral_scale > 0)
        if self._state_success is not None:
            self._state_success.reset(rows, self.initial_states.reset_ids[ids])

    def chunk_step(self, actions) -> ChunkStep:
        self._require_ready("chunk_step")
        if self._context is None:
            raise RuntimeError("WorldModelEnv.chunk_step called before reset()")
        actions = validate_actions(actions, self.num_envs, self.action_dim)
        k = actions.shape[1]
        if k != self.chunk_size:
            raise ValueError(f"actions must have K = chunk_size = {self.chunk_size} steps per chunk, got shape "
                             f"{tuple(actions.shape)}")
        rewards = np.zeros((self.num_envs, k), np.float32)
        terminated = np.zeros((self.num_envs, k), bool)
        truncated = np.zeros((self.num_envs, k), bool)
        # Envs finished before this chunk keep their flags, get no reward and cost nothing.
        ended_by_env = self._rule.ended  # terminated; the others were truncated
        terminated[self._episodes.done & ended_by_env] = True
        truncated[self._episodes.done & ~ended_by_env] = True
        active = np.flatnonzero(~self._episodes.done)
        if self._state_success is not None:
            self._state_success.start_chunk()
        scored_probs = np.full(self.num_envs, np.nan, np.float32)
        disagreement = np.full(self.num_envs, np.nan, np.float32)
        for start in range(0, len(active), self.batch_size):
            rows = active[start : start + self.batch_size]
            with torch.no_grad():
                self._step_rows(rows, actions[rows], rewards, terminated, truncated, scored_probs, disagreement)
        if len(active):
            self.timings.chunks += 1
        info = {
            "success": self._rule.success.copy(),
            "episode_length": self._episodes.steps.copy(),
            "reset_ids": self._episodes.reset_ids.copy(),
            "success_prob": scored_probs,  # last scored probability of each env stepped now (NaN otherwise)
            "num_active": int(len(active)),
        }
        if self.ensemble:
            info["disagreement"] = disagreement  # of each env stepped now (NaN otherwise)
        if self.uncertainty_threshold is not None or self.state_uncertainty_threshold is not None:
            info["halted"] = self._rule.halted.copy()
        if self._state_success is not None:  # the state model's smallest object-to-goal distance so far
            info["state_distance"] = self._state_success.distance.copy()
            info["state_spread"] = self._state_success.chunk_spread.copy()  # of each env stepped now (NaN otherwise)
        return ChunkStep(self._obs(), rewards, terminated, truncated, info)

    # ------------------------------------------------------------------ internals
    def _obs(self) -> Obs:
        return Obs(images=self._episodes.images.copy(), instructions=list(self._episodes.instructions))

    def _noise(self, rows: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        # Drawn per env from its own stream, so a row's noise never depends on its batch-mates.
        noise = torch.stack([torch.randn(shape, generator=self._generators[r]) for r in rows.tolist()])
        return noise.to(self.device, self.dtype)

    def _step_rows(self, rows, actions, rewards, terminated, truncated, scored_probs, disagreement) -> None:
        n, k, tc, p = len(rows), self.chunk_size, self.num_cond_latent_frames, self.num_pred_latent_frames
        context = self._context[rows]  # [n, C, Tc, h, w]
        c, h, w = context.shape[1], context.shape[3], context.shape[4]
        x_cond = torch.cat([context, context.new_zeros(n, c, p, h, w)], dim=2)
        mask = torch.zeros(n, 1, tc + p, h, w, dtype=self.dtype, device=self.device)
        mask[:, :, :tc] = 1.0
        scaled = torch.from_numpy(self.action_inputs(actions, self._episodes.action_sums[rows]))
        self._episodes.action_sums[rows] = self.action_inputs.advance(self._episodes.action_sums[rows], actions)
        noise = self._noise(rows, (c, tc + p, h, w))

        start = time.perf_counter()
        scaled = scaled.to(self.device, self.dtype)
        new = self.sampler.sample(self._counting_dit, x_cond, mask, scaled, noise=noise)[:, :, tc:]  # [n, C, P, h, w]
        halted = np.zeros(n, bool)
        if self.ensemble:
            spread = self.ensemble.spread(self.sampler, new, x_cond, mask, scaled, noise, tc)
            disagreement[rows] = spread
            if self.uncertainty_threshold is not None:
                halted = spread > self.uncertainty_threshold
        self.timings.dit_seconds += time.perf_counter() - start

        # Steps of this chunk each env executes (fewer only when max_episode_steps ends it early).
        ends = np.minimum(k, self.max_episode_steps - self._episodes.steps[rows])
        # the state model's verdict by each step (None: no state model, the frames decide)
        state_reached = None if self._state_success is None else self._state_success.advance(rows, actions, ends)
        if self.state_uncertainty_threshold is not None:
            halted |= self._state_success.chunk_spread[rows] > self.state_uncertainty_threshold
        scored, wanted = self._frames.steps_to_decode(ends, self.reward_frames == "all", self.reencode_context)
        decoded = self._frames.decode(context, new, wanted)

        windows, owners = self._episodes.reward_windows(rows, decoded, scored)
        probs = self._frames.score(torch.from_numpy(windows))

        new_context = torch.cat([context, new], dim=2)[:, :, -tc:]
        if self.reencode_context:
            fresh = min(tc, p)
            frames = np.stack([[decoded[i][t] for t in range(k - fresh, k)] for i in range(n)])
            new_context = torch.cat([new_context[:, :, : tc - fresh], self._frames.encode(frames)], dim=2)
        self._context[rows] = new_context

        self.timings.env_steps += self._episodes.finish(rows, ends, decoded, owners, probs.tolist(), halted,
                                                        state_reached, rewards, terminated, truncated, scored_probs)
