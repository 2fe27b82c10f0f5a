"""The pixel side of :class:`~rlinf_wm.envs.world_model_env.WorldModelEnv`: latents <-> frames and success scores.

The env samples latents; this turns them into what the policy and the reward model consume - and back - with each
part timed in the env's :class:`StepTimings`: the reset states' conditioning latents (encoded once per id), decoding
only the frames asked for, re-encoding the conditioning window, and the reward model's success probabilities.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.envs.world_model_timing import StepTimings
from rlinf_wm.models.reward_model import RewardModel, compiled_logits
from rlinf_wm.models.tokenizer import VideoTokenizer, compiled_decode_to_uint8, compiled_encode
from rlinf_wm.utils.precision import autocast


class WorldModelFrames:
    """Encoding, decoding and scoring for the world-model env (its models run on ``device`` under autocast in
    ``dtype``; latents in ``dtype``). In bfloat16 re-encoded latents agree with float32 ones to 50 dB (relative
    MSE 1e-5) and success probabilities to 8e-6 here (docs/results.md, 2026-12-05 fifth entry)."""

    def __init__(
        self, tokenizer: VideoTokenizer, reward_model: RewardModel, initial_states: InitialStates,
        num_cond_latent_frames: int, chunk_size: int, device: torch.device, dtype: torch.dtype, timings: StepTimings,
        compiled: bool = False,
    ) -> None:
        self.tokenizer, self.reward_model, self.initial_states = tokenizer, reward_model, initial_states
        self.num_cond_latent_frames, self.chunk_size = num_cond_latent_frames, chunk_size
        self.device, self.dtype, self.timings = device, dtype, timings
        self.per_frame = tokenizer.temporal_compression == 1
        self.compiled_tokenizer = compiled and self.per_frame  # see compiled_decode_to_uint8
        self.compiled_reward_model = compiled
        self._latent_cache: dict[int, torch.Tensor] = {}  # reset id -> context latents [C, Tc, h, w]
        self._prob_cache: dict[int, float] = {}  # reset id -> success probability of the reset frame

    def move_cache(self, device: torch.device) -> None:
        """Move the cached reset latents (offloading moves the models themselves)."""
        self._latent_cache = {k: v.to(device) for k, v in self._latent_cache.items()}

    def initial_latents(self, state_id: int) -> torch.Tensor:
        """Conditioning latents ``[C, Tc, h, w]`` of one initial state (encoded once, then cached)."""
        if state_id not in self._latent_cache:
            start = time.perf_counter()
            frames = self.initial_states.frames[state_id]  # [F, H, W, 3]
            if (frames == frames[:1]).all():
                # A reset state is its first frame repeated: encode it once and repeat the latent, exactly as
                # training pads an episode start (this also holds for causal video tokenizers).
                frames = frames[:1]
            latents = self._encode(torch.from_numpy(frames[None]))[0]  # [C, F', h, w]
            tc = self.num_cond_latent_frames
            if latents.shape[1] < tc:
                pad = latents[:, :1].expand(-1, tc - latents.shape[1], -1, -1)
                latents = torch.cat([pad, latents], dim=1)
            self._latent_cache[state_id] = latents[:, -tc:].to(self.dtype).contiguous()
            self.timings.encode_seconds += time.perf_counter() - start
        return self._latent_cache[state_id]

    def initial_prob(self, state_id: int) -> float:
        """Success probability of an initial state's reset frame (cached)."""
        if state_id not in self._prob_cache:
            frame = self.initial_states.frames[state_id, -1]
            window = np.repeat(frame[None, None], self.reward_model.num_frames, axis=1)  # [1, nf, H, W, 3]
            self._prob_cache[state_id] = float(self.score(torch.from_numpy(window))[0])
        return self._prob_cache[state_id]

    def score(self, windows: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, nf, H, W, 3]`` -> success probabilities ``[N]``."""
        start = time.perf_counter()
        frames = windows[:, 0] if self.reward_model.num_frames == 1 else windows
        with torch.no_grad(), autocast(self.device, self.dtype):
            logits = (compiled_logits()(self.reward_model, frames.to(self.device)) if self.compiled_reward_model
                      else self.reward_model(frames.to(self.device)))
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        self.timings.reward_seconds += time.perf_counter() - start
        self.timings.scored_frames += len(windows)
        return probs

    def steps_to_decode(self, ends: np.ndarray, score_every_step: bool,
                        reencode_context: bool) -> tuple[list[list[int]], list[list[int]]]:
        """Per env of a chunk that executes ``ends[i]`` steps: the steps the reward model scores (each executed step,
        or the last) and the steps to decode for them. A multi-frame reward model also needs the ``num_frames - 1``
        frames before each scored one, and re-encoding the context needs the chunk's last conditioning frames."""
        nf, k, tc = self.reward_model.num_frames, self.chunk_size, self.num_cond_latent_frames
        scored = [list(range(int(e))) if score_every_step else [int(e) - 1] for e in ends]
        wanted = [sorted({i for j in js for i in range(max(0, j - nf + 1), j + 1)}) for js in scored]
        if reencode_context:
            wanted = [sorted(set(ws) | set(range(max(0, k - tc), k))) for ws in wanted]
        return scored, wanted

    def decode(self, context: torch.Tensor, new: torch.Tensor, wanted: list[list[int]]) -> list[dict[int, np.ndarray]]:
        """Decode chunk frames ``wanted[i]`` (indices 0..K-1, frame j = after action j) of each row ``i``.

        Per-frame tokenizers decode exactly the wanted latent frames, all rows in one batch; video tokenizers
        decode each row's whole window (their latents only make sense in sequence) and keep the wanted frames.
        """
        start = time.perf_counter()
        out: list[dict[int, np.ndarray]] = [{} for _ in wanted]
        if self.per_frame:
            pairs = [(i, j) for i, frames in enumerate(wanted) for j in frames]
            if pairs:
                rows = torch.tensor([i for i, _ in pairs], device=new.device)
                index = torch.tensor([j for _, j in pairs], device=new.device)
                latents = new[rows, :, index].unsqueeze(2).float()  # [N, C, 1, h, w]
                with autocast(self.device, self.dtype):
                    if self.compiled_tokenizer:
                        frames = compiled_decode_to_uint8()(self.tokenizer, latents)
                    else:
                        frames = self.tokenizer.decode_to_uint8(latents)
                    frames = frames[:, 0].cpu().numpy()
                for (i, j), frame in zip(pairs, frames):
                    out[i][j] = frame
                self.timings.decoded_frames += len(pairs)
        else:
            with autocast(self.device, self.dtype):
                frames = self.tokenizer.decode_to_uint8(torch.cat([context, new], dim=2).float())
            frames = frames[:, -self.chunk_size :].cpu().numpy()  # the chunk's K frames
            for i, wanted_frames in enumerate(wanted):
                out[i] = {j: frames[i, j] for j in wanted_frames}
            self.timings.decoded_frames += frames.shape[0] * frames.shape[1]
        self.timings.decode_seconds += time.perf_counter() - start
        return out

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 ``[N, T, H, W, 3]`` -> latents ``[N, C, T', h, w]`` in ``dtype`` (re-encoding the context)."""
        start = time.perf_counter()
        latents = self._encode(torch.from_numpy(frames))
        self.timings.encode_seconds += time.perf_counter() - start
        return latents

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.dtype):
            frames = frames.to(self.device)
            latents = (compiled_encode()(self.tokenizer, frames) if self.compiled_tokenizer
                       else self.tokenizer.encode(frames))
        return latents.to(self.dtype)
