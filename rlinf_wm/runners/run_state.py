"""Checkpoint layout of an embodied run, and RNG states in a form ``torch.load(weights_only=True)`` accepts.

``<log_dir>/checkpoints/iter_N/policy/`` holds the policy (save_pretrained layout) and
``iter_N/state.pt`` the rest (optimizer, RNG states, counters). ``state.pt`` is written last, so a
directory without it is an interrupted save and is never resumed from.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
POLICY_DIR = "policy"
_ITER_DIR = re.compile(r"^iter_(\d+)$")


def checkpoint_dir(log_dir: str | Path, iteration: int) -> Path:
    return Path(log_dir) / "checkpoints" / f"iter_{iteration}"


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the latest complete one under ``path`` or ``path/checkpoints``."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        if not root.is_dir():
            continue
        complete = [
            (int(m.group(1)), child)
            for child in root.iterdir()
            if (m := _ITER_DIR.match(child.name)) and (child / STATE_FILE).is_file()
        ]
        if complete:
            return max(complete)[1]
    raise FileNotFoundError(
        f"runner.resume_dir: no complete checkpoint at {path} (expected {path}/{STATE_FILE} or "
        f"{path}/checkpoints/iter_N/{STATE_FILE})"
    )


def capture_rng_states() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states as tensors and ints (safe for weights_only loading)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    py = states["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = states["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(states["torch"])
