"""The modules :class:`rlinf_wm.models.dit.ActionDiT` puts into diffusers' Cosmos transformer: the action
embedders, the timestep embedding that adds them per frame, and a cross-attention processor that skips the
(text-free) cross-attention. Parameter names stay those of diffusers-format Cosmos checkpoints."""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.models.transformers.transformer_cosmos import CosmosEmbedding


class ActionMLP(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear, as Cosmos' action embedders."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.activation = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features)


class ActionTimestepEmbedding(CosmosEmbedding):
    """diffusers' Cosmos timestep embedding plus per-frame action embeddings.

    Same parameters (and state-dict keys) as :class:`CosmosEmbedding`. With per-frame timesteps diffusers calls it
    with the flattened ``[B * T]`` timesteps (batch-major), so the action embeddings are ``[B * T, D]`` and
    ``[B * T, 3D]`` in the same order; diffusers then broadcasts each frame's row to that frame's tokens.
    """

    def __init__(self, embedding_dim: int, condition_dim: int) -> None:
        super().__init__(embedding_dim, condition_dim)
        self.pending_action_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(hidden_states, timestep, *(self.pending_action_embeddings or (None, None)))

    def embed(self, hidden_states: torch.Tensor, timestep: torch.Tensor, to_timestep: torch.Tensor | None,
              to_adaln: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(temb [N, 3D], embedded_timestep [N, D])`` with the action embeddings added (None: none)."""
        timesteps_proj = self.time_proj(timestep).type_as(hidden_states)
        temb = self.t_embedder(timesteps_proj)  # the AdaLN-LoRA vector, [N, 3D]
        if to_timestep is not None:
            timesteps_proj = timesteps_proj + to_timestep
            temb = temb + to_adaln
        return temb, self.norm(timesteps_proj)


class SkipCrossAttentionProcessor:
    """Cross-attention that returns zeros without computing anything.

    With a zero context, Cosmos' bias-free cross-attention outputs exactly zero (keys and values are zero), so this
    is the same function as feeding a zero text embedding, minus the wasted projections. The ``attn2`` parameters
    stay so diffusers-format Cosmos checkpoints load unchanged.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return torch.zeros_like(hidden_states)
