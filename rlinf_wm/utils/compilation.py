"""``torch.compile`` switches: ``auto`` compiles where a compiler backend for the device is installed.

Inductor fuses the tiny DiT's many small elementwise ops (AdaLN modulation, RoPE, norms) around its matmuls; on the
project's 2-core CPU that made the DiT's bfloat16 rollout forward 1.6x and its training step 1.7x faster
(docs/results.md). The first call of a process compiles (20-65 s here with inductor's on-disk cache cold, a few
seconds warm), so it pays off for long runs, not for a few calls: tests and short tools leave it off.
"""

from __future__ import annotations

import importlib.util
import shutil

import torch

COMPILE_SETTINGS = ("auto", True, False)


def compiler_available(device: str | torch.device = "cpu") -> bool:
    """Whether inductor can build kernels for ``device``: a C++ compiler on CPU, Triton on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    if device.type != "cpu":
        return False
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def resolve_compile(setting: bool | str, device: str | torch.device = "cpu", key: str = "compile") -> bool:
    """A :data:`COMPILE_SETTINGS` value as a bool; ``key`` names the setting in the error."""
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"{key} must be one of {list(COMPILE_SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return compiler_available(device)
    if setting and not compiler_available(device):
        kind = "a C++ compiler (c++, g++ or clang++ on PATH)" if torch.device(device).type == "cpu" else "Triton"
        raise ValueError(f"{key}=true needs {kind} for torch.compile on {device}; set {key}=false")
    return bool(setting)
