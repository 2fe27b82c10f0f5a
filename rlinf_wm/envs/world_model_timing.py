"""What a :class:`~rlinf_wm.envs.world_model_env.WorldModelEnv` step costs: time per part and DiT calls."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepTimings:
    """Work done by ``chunk_step`` / ``reset``, accumulated until :meth:`clear` (benchmarks and metrics)."""

    dit_seconds: float = 0.0  # the sampler runs (all DiT calls)
    decode_seconds: float = 0.0
    reward_seconds: float = 0.0
    encode_seconds: float = 0.0  # initial states (cached per id) and reencode_context
    dit_calls: int = 0
    dit_rows: int = 0  # rows summed over DiT calls (CFG's doubled batch counts twice)
    decoded_frames: int = 0
    scored_frames: int = 0
    env_steps: int = 0  # actions executed by running envs
    chunks: int = 0

    def clear(self) -> None:
        for name, value in vars(StepTimings()).items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


class CountingModel(torch.nn.Module):
    """Forwards to the DiT and counts calls and rows (the cost the tests and benchmarks check)."""

    def __init__(self, model: torch.nn.Module, timings: StepTimings) -> None:
        super().__init__()
        self.model = model
        self.timings = timings

    def forward(self, x, *args, **kwargs):
        self.timings.dit_calls += 1
        self.timings.dit_rows += x.shape[0]
        return self.model(x, *args, **kwargs)
