"""Scalars to TensorBoard (always), W&B (when ``runner.logger: wandb``) and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per iteration (``{"iteration": n, "<name>": value, ...}``),
appended and flushed each iteration, so scripts and tests read a run without TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricLogger:
    def __init__(self, log_dir: str | os.PathLike, backend: str = "tensorboard", config: dict | None = None,
                 wandb_project: str = "rlinf_wm", run_name: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.log_dir / "tensorboard"))
        self.jsonl = open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.wandb_run = None
        if backend == "wandb":
            import wandb  # optional dependency: checked at config validation

            self.wandb_run = wandb.init(project=wandb_project, name=run_name or self.log_dir.name, config=config,
                                        dir=str(self.log_dir), resume="allow")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        # JSON has no NaN/inf: write them as null.
        row = {"iteration": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(row, sort_keys=True) + "\n")
        self.jsonl.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_metrics(log_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; on a resumed run the last row per iteration wins."""
    path = Path(log_dir) / "metrics.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["iteration"]] = row
    return [rows[k] for k in sorted(rows)]
