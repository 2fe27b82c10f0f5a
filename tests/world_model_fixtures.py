"""A tiny randomly-initialised world model saved in the world_model_pipeline layout (shared by env tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.reward_model import RewardModel
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.io import write_json_atomic

SIZE = 16  # frames are SIZE x SIZE; latents 4 x 4 x 4
CHUNK = 2
COND = 2
NUM_STEPS = 2
NUM_STATES = 3
INSTRUCTIONS = ["open the drawer", "open the drawer wide", "pull the handle"]


def randomise(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Fresh DiTs predict 0 (zero-init outputs); random weights make outputs depend on every input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def make_world_model(root: Path, reward_frames: int = 1, seed: int = 0, action_integral_scale: float = 0.0) -> Path:
    """Tokenizer, DiT, reward model, statistics, initial states and world_model.json under ``root``."""
    torch.manual_seed(seed)
    tokenizer = VideoTokenizer(image_size=SIZE, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8)
    save_model_atomic(tokenizer.eval(), root / "tokenizer" / "model")
    action_dim = 8 if action_integral_scale > 0 else 4  # running-sum channels ride along the 4 action dims
    dit = ActionDiT(latent_channels=4, action_dim=action_dim, actions_per_latent_frame=1, num_layers=1, num_attention_heads=2,
                    attention_head_dim=12, adaln_lora_dim=8, text_embed_dim=8, max_size=(8, 8, 8))
    save_model_atomic(randomise(dit, seed), root / "dit" / "model")
    reward = RewardModel(image_size=SIZE, num_frames=reward_frames, embedding_size=8, hidden_sizes=(8, 8),
                         depths=(1, 1), threshold=0.5)
    save_model_atomic(reward.eval(), root / "reward_model" / "model")
    rng = np.random.default_rng(seed)
    ActionStatistics.from_actions(rng.uniform(-1, 1, (200, 4))).save(root / "dataset_statistics.json")
    first_frames = rng.integers(0, 256, (NUM_STATES, SIZE, SIZE, 3), dtype=np.uint8)
    InitialStates.from_frames(first_frames, INSTRUCTIONS, num_frames=COND, tasks=["drawer-open-v3"] * NUM_STATES,
                              reset_ids=[10, 11, 12]).save(root / "initial_states.hdf5")
    write_json_atomic(root / "world_model.json", {
        "format_version": 1,
        "task": "drawer-open-v3",
        "paths": {"tokenizer": "tokenizer/model", "dit": "dit/model", "reward_model": "reward_model/model",
                  "dataset_statistics": "dataset_statistics.json", "initial_states": "initial_states.hdf5"},
        "num_cond_latent_frames": COND,
        "num_cond_frames": COND,
        "chunk_size": CHUNK,
        "action_scaler": 20.0,
        "action_integral_scale": action_integral_scale,
        "sampler": {"solver": "2ab", "num_steps": NUM_STEPS, "guidance": 0.0, "sigma_min": 0.01,
                    "sigma_max": 200.0, "rho": 7.0},
    })
    return root
