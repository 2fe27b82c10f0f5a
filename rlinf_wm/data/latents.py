"""The latent dataset: every episode's frames encoded once by the tokenizer, so DiT training never runs the encoder.

Written by :func:`encode_dataset` (one HDF5 file, written atomically)::

    attrs: format_version, tokenizer_kind, tokenizer_config (JSON), latent_channels, latent_size,
           temporal_compression, num_episodes
    episodes/ep_00000/
        latents   float32 [C, T', h, w]  normalised latents (as ``VideoTokenizer.encode`` returns, batch dropped)
        actions   float32 [T, A]
        rewards   float32 [T]
        attrs: success (bool), success_step (int; -1 if never), instruction, task, seed,
               num_frames (video frames encoded, T + 1 when the final frame was recorded),
               num_padded_frames (frames after padding the last one to 1 + 4k for the wan backend)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.data.trajectories import Episode, success_step
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.utils.io import atomic_path, open_hdf5

LATENT_FORMAT_VERSION = 1


@dataclass
class LatentEpisode:
    latents: np.ndarray  # float32 [C, T', h, w], normalised
    actions: np.ndarray  # float32 [T, A]
    rewards: np.ndarray  # float32 [T]
    success: bool
    success_step: int  # index into actions/rewards; -1 if never reached
    instruction: str
    task: str = ""
    seed: int = -1
    num_frames: int = 0


@torch.no_grad()
def encode_dataset(
    tokenizer: VideoTokenizer,
    episodes: Sequence[Episode],
    out_path: str | os.PathLike,
    batch_frames: int = 64,
    progress: bool = False,
) -> Path:
    """Encode every episode's frames once and write the latent dataset (format in the module docstring)."""
    out_path = Path(out_path)
    tokenizer.eval()
    c = tokenizer.temporal_compression
    with atomic_path(out_path, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            format_version=LATENT_FORMAT_VERSION,
            tokenizer_kind=tokenizer.kind,
            tokenizer_config=json.dumps(tokenizer._hub_mixin_config),
            latent_channels=tokenizer.latent_channels,
            latent_size=tokenizer.latent_size,
            temporal_compression=c,
            num_episodes=len(episodes),
        )
        group = f.create_group("episodes")
        for index, ep in enumerate(tqdm(episodes, desc="encode", disable=not progress)):
            ep.validate(f"episode {index}")
            frames = ep.frames
            num_frames = len(frames)
            padding = (-(num_frames - 1)) % c
            if padding:  # wan needs 1 + 4k frames: repeat the last frame
                frames = np.concatenate([frames, np.repeat(frames[-1:], padding, axis=0)])
            if c == 1:
                chunks = [tokenizer.encode(frames[None, s : s + batch_frames]) for s in range(0, len(frames), batch_frames)]
                latents = torch.cat(chunks, dim=2)[0]
            else:  # causal video VAE: the whole episode at once so every latent sees its history
                latents = tokenizer.encode(frames[None])[0]
            demo = group.create_group(f"ep_{index:05d}")
            demo.create_dataset("latents", data=latents.numpy().astype(np.float32))
            demo.create_dataset("actions", data=np.asarray(ep.actions, np.float32))
            demo.create_dataset("rewards", data=np.asarray(ep.rewards, np.float32))
            demo.attrs.update(
                success=bool(ep.success),
                success_step=success_step(ep.rewards, ep.dones, ep.success),
                instruction=ep.instruction,
                task=ep.task,
                seed=int(ep.seed),
                num_frames=num_frames,
                num_padded_frames=len(frames),
            )
    return out_path


def load_encoded_dataset(path: str | os.PathLike) -> tuple[list[LatentEpisode], dict]:
    """Read a file written by :func:`encode_dataset`: (episodes, file attrs)."""
    path = Path(path)
    with open_hdf5(path, "latent dataset") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        if attrs.get("format_version") != LATENT_FORMAT_VERSION or "episodes" not in f:
            raise ValueError(f"{path}: not a latent dataset (format_version {attrs.get('format_version')!r})")
        attrs["tokenizer_config"] = json.loads(attrs["tokenizer_config"])
        episodes = []
        for name in sorted(f["episodes"]):
            demo = f["episodes"][name]
            for key in ("latents", "actions", "rewards"):
                if key not in demo:
                    raise KeyError(f"{path}: episodes/{name} has no '{key}'")
            episodes.append(
                LatentEpisode(
                    latents=np.asarray(demo["latents"]),
                    actions=np.asarray(demo["actions"]),
                    rewards=np.asarray(demo["rewards"]),
                    success=bool(demo.attrs["success"]),
                    success_step=int(demo.attrs["success_step"]),
                    instruction=str(demo.attrs["instruction"]),
                    task=str(demo.attrs.get("task", "")),
                    seed=int(demo.attrs.get("seed", -1)),
                    num_frames=int(demo.attrs["num_frames"]),
                )
            )
    return episodes, attrs
