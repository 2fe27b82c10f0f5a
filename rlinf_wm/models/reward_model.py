"""Reward model: a ResNet-18-style binary success classifier on (generated) frames.

The world-model env decodes each predicted frame and asks this model whether the task is solved.
The backbone is transformers' ``ResNetModel`` built from a ``ResNetConfig`` (random init, no download;
``layer_type="basic"`` with depths ``[2, 2, 2, 2]`` is the ResNet-18 layout), with the width scaled
down for 64x64 CPU use. ``num_frames > 1`` stacks the last frames along channels, so motion (a drawer
still sliding) can be seen.

Labels come from recorded episodes: Meta-World's per-step ``info["success"]`` is recorded as reward 1 at
the step where success is first reached; frame ``j`` (the observation before action ``j``; frame ``t + 1``
is the one after action ``t``) is a success frame when success was reached at or before it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from torch import nn
from transformers import ResNetConfig, ResNetModel


def stack_frame_history(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """``[T, H, W, 3]`` -> ``[T, num_frames, H, W, 3]``: each frame with its predecessors (first frame repeated)."""
    if num_frames == 1:
        return frames[:, None]
    index = np.arange(len(frames))[:, None] + np.arange(-num_frames + 1, 1)[None, :]
    return frames[np.clip(index, 0, None)]


@functools.cache
def compiled_logits():
    """``RewardModel.forward`` (success logits) through ``torch.compile``, built once per process (a function of the
    model, like :func:`rlinf_wm.models.dit.compiled_per_frame_forward`): the world-model env scores every chunk."""
    return torch.compile(RewardModel.forward)


class RewardModel(nn.Module, PyTorchModelHubMixin):
    """``forward(frames) -> logits[B]``; ``predict_success(frames) -> bool[B]`` at ``threshold``.

    Frames: ``uint8`` (0..255) or float in [-1, 1], ``[B, H, W, 3]`` when ``num_frames == 1`` or
    ``[B, num_frames, H, W, 3]`` (oldest first).
    """

    def __init__(
        self,
        image_size: int = 64,
        num_frames: int = 1,
        embedding_size: int = 32,
        hidden_sizes: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        threshold: float = 0.5,
    ):
        super().__init__()
        if len(hidden_sizes) != len(depths):
            raise ValueError(f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} need the same length")
        self.image_size = image_size
        self.num_frames = num_frames
        self.threshold = threshold
        backbone_config = ResNetConfig(
            num_channels=3 * num_frames,
            embedding_size=embedding_size,
            hidden_sizes=list(hidden_sizes),
            depths=list(depths),
            layer_type="basic",
        )
        self.backbone = ResNetModel(backbone_config)
        self.head = nn.Linear(hidden_sizes[-1], 1)

    @classmethod
    def _from_pretrained(cls, **kwargs):
        # Strict: a checkpoint missing a tensor (e.g. the latent statistics) must not load with defaults.
        kwargs["strict"] = True
        try:
            return super()._from_pretrained(**kwargs)
        except SafetensorError as error:  # not an OSError/ValueError, so callers would miss it
            raise ValueError(f"{kwargs.get('model_id')}/model.safetensors is corrupt: {error}") from error

    def prepare(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames in the accepted layouts -> float ``[B, 3 * num_frames, H, W]`` in [-1, 1]."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if frames.ndim == 4 and self.num_frames == 1:
            frames = frames[:, None]
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected:
            layout = "[B, H, W, 3]" if self.num_frames == 1 else f"[B, {self.num_frames}, H, W, 3]"
            raise ValueError(f"reward model expects frames {layout} with H = W = {self.image_size}, got {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            x = frames.float() / 127.5 - 1.0
        elif frames.is_floating_point():
            x = frames.float()
        else:
            raise ValueError(f"frames must be uint8 or float in [-1, 1], got {frames.dtype}")
        b, k, h, w, c = x.shape
        return x.permute(0, 1, 4, 2, 3).reshape(b, k * c, h, w).to(self.head.weight.device)

    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        features = self.backbone(self.prepare(frames)).pooler_output.flatten(1)
        return self.head(features).squeeze(1)

    @torch.no_grad()
    def predict_proba(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        was_training = self.training
        self.eval()
        probs = torch.sigmoid(self(frames))
        self.train(was_training)
        return probs

    def predict_success(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """bool ``[B]``: success probability >= ``threshold``."""
        return self.predict_proba(frames) >= self.threshold
