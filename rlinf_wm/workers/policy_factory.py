"""Build the policy a worker holds from the ``policy`` config section (as a plain dict)."""

from __future__ import annotations

from typing import Any

import torch

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.models.policy import POLICY_CLASSES, load_policy


def pick_device(use_gpu: bool) -> torch.device:
    """The worker's compute device: its GPU when Ray granted one, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_policy(policy_cfg: dict[str, Any], device: torch.device | str = "cpu"):
    """``policy_cfg['path']`` (a save_pretrained dir) if set, else a fresh model from ``policy_cfg['model']``."""
    if policy_cfg.get("path"):
        return load_policy(policy_cfg["path"], device=str(device))
    model_cfg = dict(policy_cfg["model"])
    policy_type = model_cfg.get("policy_type", "tiny_vla")
    config = TinyVLAConfig(**model_cfg)
    config.check_complete("policy.model")
    return POLICY_CLASSES[policy_type](config).to(device)
