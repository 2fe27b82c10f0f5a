"""Open-loop autoregressive rollouts of the action-conditioned DiT, shared by the evaluation
(:mod:`rlinf_wm.runners.eval_world_model`) and the reward model's replays (:mod:`rlinf_wm.runners.generate_episodes`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


@torch.no_grad()
def autoregressive_rollout(
    model, sampler, cond_latents: torch.Tensor, actions: torch.Tensor, num_chunks: int, num_pred: int,
    actions_per_latent_frame: int, noise: Sequence[torch.Tensor], guidance: float | None = None,
    reencode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate ``num_chunks * num_pred`` latent frames after ``cond_latents`` ``[B, C, Tc, h, w]``.

    ``actions`` ``[B, num_chunks * num_pred * actions_per_latent_frame, A]`` (scaled); ``noise[j]`` is chunk j's
    initial noise ``[B, C, Tc + num_pred, h, w]``. Each chunk conditions on the newest ``Tc`` latent frames, passed
    through ``reencode`` (decode + encode, as the world-model env does) when given.
    """
    batch, channels, num_cond, height, width = cond_latents.shape
    window = cond_latents
    mask = torch.zeros(batch, 1, num_cond + num_pred, height, width)
    mask[:, :, :num_cond] = 1.0
    per_chunk = num_pred * actions_per_latent_frame
    generated = []
    for j in range(num_chunks):
        x = torch.cat([window, torch.zeros(batch, channels, num_pred, height, width)], dim=2)
        out = sampler.sample(model, x, mask, actions[:, j * per_chunk : (j + 1) * per_chunk], noise=noise[j],
                             guidance=guidance)
        new = out[:, :, num_cond:]
        generated.append(new)
        window = torch.cat([window, new], dim=2)[:, :, -num_cond:]
        if reencode is not None:
            window = reencode(window)
    return torch.cat(generated, dim=2)


def pixel_reencoder(tokenizer) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latent window -> the same window decoded to uint8 pixels and encoded again, exactly as WorldModelEnv."""

    @torch.no_grad()
    def reencode(window: torch.Tensor) -> torch.Tensor:
        return tokenizer.encode(tokenizer.decode_to_uint8(window)).to(window.dtype)

    return reencode
