"""TinyVLA: a small vision-language-action policy with parallel chunk decoding.

Layout (one forward pass, no autoregression)::

    image uint8 [B,H,W,3] -> CNN (stride-2 stages, GroupNorm) -> grid x grid image tokens
    instruction bytes      -> byte embedding + 1 transformer layer -> masked mean -> 1 language token
    [language, image tokens, K action queries, value query] -> transformer trunk (bidirectional)
    action query k  -> linear -> A x num_bins logits     (OpenVLA-OFT-style parallel decoding)
                       or (action_head=gaussian) A means and widths -> discretised-Gaussian logits
    value query     -> MLP    -> chunk value             (optional, for PPO)

OpenVLA-OFT (Kim et al., 2025, "Fine-Tuning Vision-Language-Action Models") replaces
autoregressive decoding by feeding empty action embeddings and decoding the whole chunk with
bidirectional attention in one pass; here each query is one chunk step and the head emits every
action dimension's categorical, so log-probs stay exact for RL.

The checkpoint's config holds the q01/q99 action statistics, so ``act`` returns env-unit actions
without any other file. GroupNorm (not BatchNorm) keeps every sample independent of its batch.
"""

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.models.policy.base import DiscreteActionPolicy
from rlinf_wm.models.policy.tokenizer import ActionTokenizer, ByteTokenizer


# Widths of the discretised Gaussian head, in normalised action units ([-1, 1] spans all bins).
GAUSSIAN_MIN_STD, GAUSSIAN_MAX_STD, GAUSSIAN_INIT_STD = 1e-3, 2.0, 0.3
GAUSSIAN_MEAN_LIMIT = 3.0  # means beyond [-1, 1] put the mass on the edge bins (saturated actions)


class DiscretizedGaussianHead(nn.Module):
    """Hidden ``[..., dim]`` -> bin logits ``[..., A, num_bins]`` of a Gaussian over the bin centres.

    ``logit_b = -(c_b - mu)^2 / (2 sigma^2)``: the bins stay an exact categorical (sampling, log-probs,
    entropy and temperature are unchanged) but neighbouring bins share two parameters per dimension. With free
    per-bin logits a sampled bin's gradient raises that bin alone, so "act a little further right" has to be
    learned bin by bin; here it moves ``mu`` (the ordinal structure PixelCNN++'s discretised logistic uses).
    """

    def __init__(self, dim: int, action_dim: int, num_bins: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.project = nn.Linear(dim, 2 * action_dim)
        nn.init.normal_(self.project.weight, std=0.01)
        nn.init.zeros_(self.project.bias)
        with torch.no_grad():
            self.project.bias[action_dim:] = math.log(GAUSSIAN_INIT_STD)
        centres = ActionTokenizer(num_bins).decode(np.arange(num_bins))  # what each token decodes to
        self.register_buffer("centres", torch.from_numpy(centres), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.project(hidden).unflatten(-1, (2, self.action_dim)).unbind(-2)
        mean = mean.clamp(-GAUSSIAN_MEAN_LIMIT, GAUSSIAN_MEAN_LIMIT)
        std = log_std.exp().clamp(GAUSSIAN_MIN_STD, GAUSSIAN_MAX_STD)
        return -0.5 * ((self.centres - mean.unsqueeze(-1)) / std.unsqueeze(-1)) ** 2


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ImageEncoder(nn.Module):
    """uint8 images -> ``grid * grid`` tokens of width ``dim``."""

    def __init__(self, channels: Sequence[int], grid: int, dim: int) -> None:
        super().__init__()
        layers, in_channels = [], 3
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                nn.GroupNorm(_groups(out_channels), out_channels),
                nn.GELU(),
                nn.Conv2d(out_channels, out_channels, 3, padding=1),
                nn.GroupNorm(_groups(out_channels), out_channels),
                nn.GELU(),
            ]
            in_channels = out_channels
        self.conv = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.project = nn.Linear(in_channels, dim)
        self.position = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.pool(self.conv(x))  # [B, C, grid, grid]
        return self.project(x.flatten(2).transpose(1, 2)) + self.position


class InstructionEncoder(nn.Module):
    """Byte ids ``[B, L]`` -> one language token ``[B, 1, dim]``."""

    def __init__(self, max_length: int, dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(ByteTokenizer.vocab_size, dim, padding_idx=ByteTokenizer.pad_id)
        self.position = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, 2 * dim, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.project = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # A batch usually holds one or a few distinct instructions: encode each once.
        unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
        pad = unique == ByteTokenizer.pad_id
        x = self.embed(unique) + self.position[:, : unique.shape[1]]
        # An all-padding (empty) instruction would mask every key; let it attend to itself instead.
        attn_pad = pad & ~pad.all(dim=1, keepdim=True)
        x = self.layer(x, src_key_padding_mask=attn_pad)
        keep = (~pad).unsqueeze(-1).float()
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.project(pooled)[inverse].unsqueeze(1)


class TinyVLA(nn.Module, PyTorchModelHubMixin, DiscreteActionPolicy):
    """See the module docstring. Build with a complete :class:`TinyVLAConfig` (or its dict)."""

    def __init__(self, config: TinyVLAConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = TinyVLAConfig(**config)
        config.check_complete("TinyVLA config")
        self.config = config
        self.chunk_size = config.chunk_size
        self.action_dim = config.action_dim
        self.num_bins = config.num_bins
        self.image_size = config.image_size
        self.action_tokenizer = ActionTokenizer(config.num_bins)
        self.instruction_tokenizer = ByteTokenizer(config.max_instruction_length)
        self.statistics = ActionStatistics(
            q01=np.asarray(config.action_q01, np.float64),
            q99=np.asarray(config.action_q99, np.float64),
            mean=np.zeros(config.action_dim),
            std=np.ones(config.action_dim),
            min=np.asarray(config.action_q01, np.float64),
            max=np.asarray(config.action_q99, np.float64),
        )

        dim = config.hidden_dim
        self.image_encoder = ImageEncoder(config.encoder_channels, config.image_grid, dim)
        self.instruction_encoder = InstructionEncoder(config.max_instruction_length, dim, config.num_heads)
        num_queries = config.chunk_size + (1 if config.value_head else 0)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, config.num_heads, config.mlp_ratio * dim, dropout=config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, config.num_layers, norm=nn.LayerNorm(dim),
                                           enable_nested_tensor=False)
        if config.action_head == "gaussian":
            self.action_head = DiscretizedGaussianHead(dim, config.action_dim, config.num_bins)
        else:
            self.action_head = nn.Linear(dim, config.action_dim * config.num_bins)
            # Small initial logits: the untrained policy starts near uniform over bins.
            nn.init.normal_(self.action_head.weight, std=0.01)
            nn.init.zeros_(self.action_head.bias)
        self.value_head = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1)) if config.value_head else None
        )

    # --- DiscreteActionPolicy -------------------------------------------------------------------
    def forward(self, images: torch.Tensor, instruction_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[1:3])} but this policy was trained on "
                f"{self.image_size}x{self.image_size}; set the env's image_size to {self.image_size}"
            )
        if instruction_ids.ndim != 2 or instruction_ids.shape[0] != images.shape[0]:
            raise ValueError(f"instruction_ids must be [B={images.shape[0]}, L], got {tuple(instruction_ids.shape)}")
        batch = images.shape[0]
        tokens = torch.cat(
            [
                self.instruction_encoder(instruction_ids),
                self.image_encoder(images),
                self.queries.expand(batch, -1, -1),
            ],
            dim=1,
        )
        hidden = self.trunk(tokens)
        queries = hidden[:, -self.queries.shape[1]:]
        logits = self.action_head(queries[:, : self.chunk_size])
        logits = logits.view(batch, self.chunk_size, self.action_dim, self.num_bins)
        values = self.value_head(queries[:, -1]).squeeze(-1) if self.value_head is not None else None
        return logits, values

    def tokenize_instructions(self, instructions: Sequence[str]) -> torch.Tensor:
        return self.instruction_tokenizer.encode(instructions)

    def detokenize(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.statistics.unnormalize(self.action_tokenizer.decode(tokens))

    def tokenize_actions(self, actions: np.ndarray) -> np.ndarray:
        """Env-unit actions ``[..., A]`` -> int64 tokens (the SFT targets)."""
        actions = np.asarray(actions)
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in A={self.action_dim}, got shape {actions.shape}")
        return self.action_tokenizer.encode(self.statistics.normalize(actions))
