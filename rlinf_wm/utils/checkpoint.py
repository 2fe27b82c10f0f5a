"""Hugging Face style model directories (``config.json`` + ``model.safetensors``), written atomically.

Models subclass ``huggingface_hub.PyTorchModelHubMixin`` so ``save_pretrained`` / ``from_pretrained``
(and ``push_to_hub``) work as users expect; these helpers add atomic writes and clear load errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import torch

from rlinf_wm.utils.io import atomic_path

T = TypeVar("T")


def save_model_atomic(model, directory: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into a temp dir, then rename onto ``directory``."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        model.save_pretrained(tmp)
    return directory


def load_model(cls: type[T], directory: str | os.PathLike, **kwargs) -> T:
    """``cls.from_pretrained`` with errors that name the directory and the file at fault."""
    directory = Path(directory)
    if directory.exists():
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"checkpoint {directory} has no {name}; expected a save_pretrained directory")
    try:
        return cls.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise RuntimeError(f"could not load {cls.__name__} from {directory}: {error}") from error


def save_state_atomic(state: dict, path: str | os.PathLike) -> None:
    """Save training state (optimizer, RNG, counters) with torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict:
    """Load training state written by :func:`save_state_atomic`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing training state file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt files
        raise RuntimeError(f"training state {path} is corrupt or not a torch file: {error}") from error
