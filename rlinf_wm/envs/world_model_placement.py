"""Where a world model's networks live, and moving them there and back (offloading).

The DiTs (the env's and any ensemble members) are cast to the configured dtype; the tokenizer and the reward model
keep float32 weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ModelPlacement:
    """Moves the tokenizer, the DiTs and the reward model together; ``onloaded`` says whether they are on ``device``."""

    def __init__(self, tokenizer: torch.nn.Module, dits: Sequence[torch.nn.Module], reward_model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.tokenizer, self.dits, self.reward_model = tokenizer, tuple(dits), reward_model
        self.models = (tokenizer, *self.dits, reward_model)
        self.device, self.dtype = device, dtype
        self.onloaded = False
        self.onload()

    def _move(self, device: torch.device) -> None:
        self.tokenizer.to(device=device, dtype=torch.float32)
        self.reward_model.to(device=device, dtype=torch.float32)
        for dit in self.dits:
            dit.to(device=device, dtype=self.dtype)

    def offload(self) -> None:
        """Every parameter and buffer to CPU."""
        self._move(torch.device("cpu"))
        self.onloaded = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the freed blocks back, so another component can use them

    def onload(self) -> None:
        self._move(self.device)
        self.onloaded = True

    def devices(self) -> set[str]:
        """Devices holding any parameter or buffer of the models."""
        return {str(t.device) for m in self.models for t in (*m.parameters(), *m.buffers())}
