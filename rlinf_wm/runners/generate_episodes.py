"""World-model replays of recorded episodes, for the reward model to learn from.

The trained DiT replays each episode's recorded actions open loop from the episode's first frame, as the
world-model env would roll out (same sampler, same re-encoded conditioning window). The decoded frames form a new
episode with the real episode's actions, rewards and outcome, so every generated frame carries the label of what
really happened. Trained on them (``train.reward_generated_episodes``), the reward model learns to judge
*generated* frames: on drawer-open-v3 it flagged none of the real failed frames, yet the world model imagined
success in 58 % of the episodes from initial states where the policy never succeeds for real
(docs/results.md, 2026-12-03) - the false successes live in generated frames only.

Only per-frame tokenizers are supported: their one latent frame per action step makes the replay's frames line up
with the recorded labels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.runners.world_model_rollout import autoregressive_rollout, pixel_reencoder
from rlinf_wm.utils.precision import autocast

GENERATED_KIND = "generated"


def select_sources(episodes: Sequence[Episode], max_episodes: int, kinds: Sequence[str], seed: int) -> list[int]:
    """Indices of up to ``max_episodes`` episodes to replay, drawn at random among those whose ``attrs['kind']`` is
    in ``kinds`` (all episodes when ``kinds`` is empty); returned sorted."""
    wanted = set(kinds)
    eligible = [i for i, ep in enumerate(episodes) if not wanted or str(ep.attrs.get("kind", "")) in wanted]
    if not eligible:
        found = sorted({str(ep.attrs.get("kind", "")) for ep in episodes})
        raise ValueError(f"train.reward_generated_kinds={sorted(wanted)} matches no episode (kinds present: {found})")
    chosen = np.random.default_rng(seed).permutation(eligible)[:max_episodes]
    return sorted(int(i) for i in chosen)


@torch.no_grad()
def _decode_frames(tokenizer, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Per-frame latents ``[B, C, T, h, w]`` -> uint8 ``[B, T, H, W, 3]``, a slice of frames at a time (a whole batch
    of episodes at once would need gigabytes of decoder activations)."""
    b, c, t, h, w = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, 1, h, w)
    frames = [tokenizer.decode_to_uint8(flat[s : s + batch_size])[:, 0].numpy() for s in range(0, len(flat), batch_size)]
    return np.concatenate(frames).reshape(b, t, *frames[0].shape[1:])


@torch.no_grad()
def generate_episodes(
    tokenizer,
    dit,
    sampler,
    action_inputs: DiTActionInputs,
    num_cond_latent_frames: int,
    num_pred_latent_frames: int,
    episodes: Sequence[Episode],
    source_indices: Sequence[int] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    reencode_context: bool = True,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
) -> list[Episode]:
    """Replay ``episodes`` in the world model; returns one generated episode per input, in order.

    A generated episode has the source's first frame, then one generated frame per recorded action; actions,
    rewards, dones, success and instruction are the source's. ``attrs``: ``kind="generated"``, ``source_kind`` and
    ``source_episode`` (``source_indices[i]``, default ``i``: the index in the training data). ``dtype``: the
    DiT and the decoder run under autocast in it (the env's dtype, so the replays match its rollouts to rounding).
    """
    if tokenizer.temporal_compression != 1:
        raise ValueError(f"generated episodes need a per-frame tokenizer (temporal_compression 1), got "
                         f"{tokenizer.kind} with temporal compression {tokenizer.temporal_compression}")
    source_indices = list(range(len(episodes))) if source_indices is None else list(source_indices)
    if len(source_indices) != len(episodes):
        raise ValueError(f"{len(source_indices)} source indices for {len(episodes)} episodes")
    tokenizer.eval()
    dit.eval()
    chunk = num_pred_latent_frames * dit.actions_per_latent_frame  # actions per autoregressive chunk
    generator = torch.Generator().manual_seed(seed)

    # Similar lengths batch together, so little is generated past an episode's end.
    order = sorted(range(len(episodes)), key=lambda i: episodes[i].length)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    out: list[Episode | None] = [None] * len(episodes)
    for rows in tqdm(batches, desc="generate", disable=not progress, dynamic_ncols=True):
        group = [episodes[i] for i in rows]
        num_chunks = math.ceil(max(ep.length for ep in group) / chunk)
        steps = num_chunks * chunk
        first = torch.from_numpy(np.stack([ep.frames[0] for ep in group]))[:, None]  # [B, 1, H, W, 3]
        # an episode start conditions on its first frame repeated, as training pads it and the env resets
        cond = tokenizer.encode(first).repeat(1, 1, num_cond_latent_frames, 1, 1)
        raw = np.zeros((len(group), steps, action_inputs.statistics.action_dim), np.float32)
        for b, ep in enumerate(group):
            raw[b, : ep.length] = ep.actions
            raw[b, ep.length :] = ep.actions[-1]  # past the end: ignored, kept in range
        actions = action_inputs(raw)
        noise = [torch.randn(len(group), cond.shape[1], num_cond_latent_frames + num_pred_latent_frames,
                             *cond.shape[3:], generator=generator) for _ in range(num_chunks)]
        with autocast("cpu", dtype):
            generated = autoregressive_rollout(
                dit, sampler, cond, torch.from_numpy(actions), num_chunks, num_pred_latent_frames,
                dit.actions_per_latent_frame, noise, reencode=pixel_reencoder(tokenizer) if reencode_context else None,
            )
            frames = _decode_frames(tokenizer, generated.float())
        for b, (i, ep) in enumerate(zip(rows, group)):
            out[i] = Episode(
                frames=np.concatenate([ep.frames[:1], frames[b, : ep.length]]),
                actions=ep.actions, rewards=ep.rewards, dones=ep.dones, success=ep.success,
                instruction=ep.instruction, task=ep.task, seed=ep.seed,
                attrs={"kind": GENERATED_KIND, "source_kind": str(ep.attrs.get("kind", "")),
                       "source_episode": int(source_indices[i])},
            )
    return out  # type: ignore[return-value]
