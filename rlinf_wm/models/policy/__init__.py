"""VLA policies: the :class:`Policy` interface, :class:`TinyVLA`, action/instruction tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

from rlinf_wm.models.policy.base import DiscreteActionPolicy, Policy, PolicyEvaluation, PolicyOutput
from rlinf_wm.models.policy.tokenizer import ActionTokenizer, ByteTokenizer
from rlinf_wm.models.policy.tiny_vla import TinyVLA
from rlinf_wm.utils.io import read_json

# ``policy_type`` in a checkpoint's config.json -> class; an adapter for another VLA registers here.
POLICY_CLASSES: dict[str, type] = {"tiny_vla": TinyVLA}


def resolve_policy_dir(path: str | os.PathLike) -> Path:
    """A model directory, or an SFT run directory holding one under ``model/``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise FileNotFoundError(f"no policy checkpoint at {path} (expected {path}/config.json or {path}/model/config.json)")


def load_policy(path: str | os.PathLike, device: str = "cpu"):
    """Load any registered policy from a ``save_pretrained`` directory, in eval mode."""
    from rlinf_wm.utils.checkpoint import load_model

    directory = resolve_policy_dir(path)
    policy_type = read_json(directory / "config.json").get("policy_type", "tiny_vla")
    if policy_type not in POLICY_CLASSES:
        raise KeyError(f"{directory}/config.json: unknown policy_type {policy_type!r}; known: {sorted(POLICY_CLASSES)}")
    return load_model(POLICY_CLASSES[policy_type], directory, map_location=device).eval()


__all__ = [
    "ActionTokenizer",
    "ByteTokenizer",
    "DiscreteActionPolicy",
    "POLICY_CLASSES",
    "Policy",
    "PolicyEvaluation",
    "PolicyOutput",
    "TinyVLA",
    "load_policy",
    "resolve_policy_dir",
]
