"""Compute dtypes: ``auto`` resolves to bfloat16 where the hardware runs it natively, else float32.

bfloat16 pays off on CUDA GPUs and on CPUs with AMX or AVX512-BF16 (on the project's Xeon VM a 2048^2 matmul
runs at ~2 TFLOP/s in bfloat16 against ~0.3 in float32); elsewhere it is emulated and slower than float32, so
``auto`` keeps float32 there.
"""

from __future__ import annotations

import contextlib
import math

import torch

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
# mixed-precision training: float16 would need gradient scaling, bfloat16 keeps float32's exponent range
TRAIN_PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matmuls in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(check() for check in checks if check is not None)


def resolve_dtype(name: str, device: str | torch.device = "cpu", key: str = "dtype") -> torch.dtype:
    """A dtype name of :data:`DTYPE_NAMES` as a torch dtype; ``key`` names the setting in the error."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"{key} must be one of {list(DTYPE_NAMES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return getattr(torch, name)


def autocast(device: str | torch.device, dtype: torch.dtype):
    """Mixed precision in ``dtype`` on ``device`` (weights stay as they are); a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def training_autocast(device: str | torch.device, dtype: torch.dtype):
    """:func:`autocast` for a training forward pass. On CPU in a low-precision dtype it also picks SDPA's math
    kernel: the fused CPU flash-attention backward in bfloat16 took 5x its float32 time here (the tiny DiT's
    training step: 0.25 s float32, 0.22 s bfloat16 with the fused kernel, 0.18 s with the math one)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(autocast(device, dtype))
        if dtype != torch.float32 and torch.device(device).type == "cpu":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def require_finite(value: torch.Tensor | float, what: str, step: int, lr_key: str) -> None:
    """Stop a run whose loss or gradient norm is not finite before the update reaches the weights: training on
    would save NaN checkpoints, and checkpoint rotation would delete the last good ones."""
    value = value.item() if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value} at step {step}; lower {lr_key}")
