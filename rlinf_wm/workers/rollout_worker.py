"""RolloutWorker: a copy of the policy that turns observations into action chunks.

The runner sends the learner's weights once per iteration (one object in the Ray object store that
every rollout worker reads) and then calls :meth:`act` on env batches as they become ready.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import ray
import torch

from rlinf_wm.envs.base import Obs
from rlinf_wm.models.policy.base import PolicyOutput
from rlinf_wm.workers.policy_factory import build_policy, pick_device

# Observations arrive as read-only views of Ray's object store; torch warns, but they are only read.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class RolloutWorker:
    def __init__(self, policy_cfg: dict[str, Any], worker_index: int = 0, num_threads: int | None = None,
                 use_gpu: bool = False):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.worker_index = worker_index
        self.device = pick_device(use_gpu)
        self.policy = build_policy(policy_cfg, device=self.device).eval()
        self.temperature = float(policy_cfg.get("temperature", 1.0))
        self.weights_version = -1
        self.offloaded = False
        self.busy_seconds = 0.0  # policy compute since the last take_busy_seconds()

    def spec(self) -> dict[str, Any]:
        return {"chunk_size": self.policy.chunk_size, "action_dim": self.policy.action_dim,
                "image_size": getattr(self.policy, "image_size", None)}

    def set_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        """Load the learner's weights (``weights`` arrives resolved from the shared object ref)."""
        self.policy.load_state_dict(weights)
        self.weights_version = version
        return version

    @torch.no_grad()
    def act(self, obs: Obs, seed: int, deterministic: bool = False) -> PolicyOutput:
        """One action chunk per env; ``seed`` fixes the sampling so reruns and resumes repeat it."""
        if self.offloaded:
            raise RuntimeError(f"rollout worker {self.worker_index} is offloaded; call onload() before act()")
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(int(seed))
        output = self.policy.act(obs, deterministic=deterministic, temperature=self.temperature, generator=generator)
        self.busy_seconds += time.perf_counter() - start
        return output

    @torch.no_grad()
    def values(self, obs: Obs) -> np.ndarray:
        """float [B]: value estimates of ``obs`` (PPO bootstraps from the final observation)."""
        start = time.perf_counter()
        images, instruction_ids = self.policy.obs_to_tensors(obs)
        _, values = self.policy(images, instruction_ids)
        self.busy_seconds += time.perf_counter() - start
        if values is None:
            raise RuntimeError("the policy has no value head (PPO needs policy.model.value_head=true)")
        return values.float().cpu().numpy()

    def offload(self) -> None:
        self.policy.to("cpu")
        self.offloaded = True

    def onload(self) -> None:
        self.policy.to(self.device)
        self.offloaded = False

    def take_busy_seconds(self) -> float:
        seconds, self.busy_seconds = self.busy_seconds, 0.0
        return seconds

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ping(self) -> bool:
        return True
