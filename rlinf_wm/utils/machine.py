"""What machine a result came from: the same commit builds different models on different CPUs (docs/results.md,
2026-12-06 sixth entry), so every result file names its CPU, its core count and whether it runs bfloat16 natively."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from rlinf_wm.utils.precision import native_bfloat16


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows, else ``"unknown"``."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine() -> dict:
    """A JSON-ready description: CPU, cores this process may use, native bfloat16, AMX, torch, CUDA devices."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "native_bfloat16": native_bfloat16("cpu"),
        "amx": bool(amx()) if amx is not None else False,
        "torch": torch.__version__,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def machine_label(machine: dict) -> str:
    """One line for a results table, e.g. ``AMD EPYC, 2 CPUs, bfloat16 native (no AMX)``."""
    bf16 = "bfloat16 native" if machine["native_bfloat16"] else "no native bfloat16"
    amx = "AMX" if machine["amx"] else "no AMX"
    gpus = f", {len(machine['cuda_devices'])} GPU(s): {machine['cuda_devices'][0]}" if machine["cuda_devices"] else ""
    return f"{machine['cpu']}, {machine['cpus']} CPUs, {bf16} ({amx}){gpus}"
