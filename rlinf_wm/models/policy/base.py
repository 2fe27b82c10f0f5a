"""The policy interface (DESIGN.md section 2): image + instruction -> a chunk of ``K`` actions.

Two entry points with two data forms:

* ``act(obs)`` is for rollouts and evaluation. It takes an :class:`rlinf_wm.envs.Obs` (numpy) and
  returns a :class:`PolicyOutput` of numpy arrays, ready for ``ChunkEnv.chunk_step`` and for
  shipping between Ray workers.
* ``evaluate(obs, tokens)`` is for the learner. It returns differentiable torch tensors. A learner
  that keeps its batch as tensors calls ``evaluate_tensors(images, instruction_ids, tokens)``
  instead; ``policy.tokenize_instructions(list[str])`` gives the ``instruction_ids``.

Actions are discrete: every action dimension of every chunk step is a categorical over bins, so
``logprobs`` are exact per-dimension log-probabilities ``[B, K, A]`` (sum them for the chunk).

``temperature`` scales the logits of the distribution that is sampled *and* scored: ``act`` returns
log-probs of the tempered distribution, and ``evaluate`` with the same temperature reproduces them.
With ``deterministic=True`` the arg-max token is taken (the same for every temperature) and its
log-prob under the tempered distribution is returned.

:class:`DiscreteActionPolicy` implements ``act`` / ``evaluate`` once for any model that produces
logits ``[B, K, A, num_bins]``; an adapter for a bigger VLA only supplies ``forward`` (logits and
values from tensors), ``tokenize_instructions`` and ``detokenize`` (tokens -> env actions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rlinf_wm.envs.base import Obs


@dataclass
class PolicyOutput:
    """One action chunk per env, as numpy arrays (what rollouts store and envs consume)."""

    actions: np.ndarray  # float32 [B, K, A], env units
    tokens: np.ndarray  # int64 [B, K, A], bin indices
    logprobs: np.ndarray  # float32 [B, K, A], log pi(token) per dimension
    values: np.ndarray | None = None  # float32 [B], chunk-level value estimate (PPO)


class PolicyEvaluation(NamedTuple):
    """Differentiable scores of given tokens (torch tensors)."""

    logprobs: torch.Tensor  # [B, K, A]
    entropy: torch.Tensor  # [B, K, A]
    values: torch.Tensor | None  # [B]


class Policy(ABC):
    """A VLA acting in chunks. Implementations are ``torch.nn.Module`` subclasses."""

    chunk_size: int
    action_dim: int

    @abstractmethod
    def act(self, obs: Obs, deterministic: bool = False, temperature: float = 1.0,
            generator: torch.Generator | None = None) -> PolicyOutput:
        """Choose one action chunk per env (no gradients)."""

    @abstractmethod
    def evaluate(self, obs: Obs, tokens: np.ndarray | torch.Tensor, temperature: float = 1.0) -> PolicyEvaluation:
        """Log-probs, entropies and values of ``tokens`` ``[B, K, A]`` for the learner (differentiable)."""


class DiscreteActionPolicy(Policy):
    """``act`` / ``evaluate`` for models that output per-dimension logits over action bins.

    Subclasses (also ``nn.Module``) implement ``forward``, ``tokenize_instructions`` and ``detokenize``.
    """

    @abstractmethod
    def forward(self, images: torch.Tensor, instruction_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images`` uint8 ``[B, H, W, 3]``, ``instruction_ids`` long ``[B, L]`` ->
        logits ``[B, K, A, num_bins]`` and values ``[B]`` (or None)."""

    @abstractmethod
    def tokenize_instructions(self, instructions: Sequence[str]) -> torch.Tensor:
        """Instruction strings -> long ids ``[B, L]``."""

    @abstractmethod
    def detokenize(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Tokens ``[B, K, A]`` -> actions in env units, float32 ``[B, K, A]``."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    def obs_to_tensors(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor form of an :class:`Obs`: (images uint8 ``[B, H, W, 3]``, instruction ids ``[B, L]``)."""
        images = torch.from_numpy(np.ascontiguousarray(obs.images)).to(self.device)
        return images, self.tokenize_instructions(obs.instructions).to(self.device)

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False, temperature: float = 1.0,
            generator: torch.Generator | None = None) -> PolicyOutput:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use deterministic=True for greedy), got {temperature}")
        images, instruction_ids = self.obs_to_tensors(obs)
        logits, values = self.forward(images, instruction_ids)
        log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
        if deterministic:
            tokens = log_probs.argmax(dim=-1)
        else:
            # Sample on CPU so a CPU generator gives the same draws whatever the model device.
            probs = log_probs.exp().flatten(0, -2).cpu()
            tokens = torch.multinomial(probs, 1, generator=generator).view(log_probs.shape[:-1]).to(log_probs.device)
        chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return PolicyOutput(
            actions=self.detokenize(tokens),
            tokens=tokens.cpu().numpy().astype(np.int64),
            logprobs=chosen.cpu().numpy().astype(np.float32),
            values=None if values is None else values.float().cpu().numpy().astype(np.float32),
        )

    def evaluate(self, obs: Obs, tokens: np.ndarray | torch.Tensor, temperature: float = 1.0) -> PolicyEvaluation:
        images, instruction_ids = self.obs_to_tensors(obs)
        return self.evaluate_tensors(images, instruction_ids, tokens, temperature)

    def evaluate_tensors(self, images: torch.Tensor, instruction_ids: torch.Tensor,
                         tokens: np.ndarray | torch.Tensor, temperature: float = 1.0) -> PolicyEvaluation:
        """:meth:`evaluate` on the tensor form (see :meth:`obs_to_tensors`)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        logits, values = self.forward(images, instruction_ids)
        if tokens.shape != logits.shape[:-1]:
            raise ValueError(f"tokens must have shape [B, K, A] = {tuple(logits.shape[:-1])}, got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= logits.shape[-1]):
            raise ValueError(f"tokens must lie in [0, {logits.shape[-1]}), got [{int(tokens.min())}, {int(tokens.max())}]")
        log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
        chosen = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return PolicyEvaluation(chosen, entropy, values)
