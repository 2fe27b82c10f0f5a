"""Rectified-flow training objective for the action-conditioned DiT (Cosmos Predict 2.5 style).

    s   ~ shifted logit-normal:  u ~ N(mean, std),  t = sigmoid(u),  s = shift * t / (1 + (shift - 1) * t)
    x_s = s * eps + (1 - s) * x0          on predicted frames; conditioning frames stay x0 (clean)
    v*  = eps - x0
    L   = mean over predicted-frame elements of (v_theta(x_s, s, actions) - v*)^2

With probability ``action_dropout`` a sample's actions are dropped (``drop_actions=True``: the DiT uses a zero
action embedding), which trains the unconditional branch classifier-free guidance needs at sampling time.

``shift`` moves the noise levels up (shift > 1). Cosmos 2.5 trains 720p video with shift 5. SD3 (Esser et al.
2024, sec. 5.3.2) scales the shift with sqrt(latent size); our ~16 x 12 x 8 x 8 latents are ~440x smaller than
Cosmos' 720p ones (16 x 24 x 88 x 160), which gives a shift below 1 - hence the default 1.0 (no shift).
"""

from __future__ import annotations

import torch


def sample_flow_time(
    batch: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[batch]`` flow times from the shifted logit-normal distribution."""
    if logit_std <= 0 or shift <= 0:
        raise ValueError(f"need logit_std > 0 and shift > 0, got logit_std={logit_std}, shift={shift}")
    u = torch.randn(batch, generator=generator, device=device, dtype=torch.float32) * logit_std + logit_mean
    t = torch.sigmoid(u)
    return (shift * t / (1 + (shift - 1) * t)).to(dtype)


def flow_matching_loss(
    model,
    x0: torch.Tensor,
    condition_mask: torch.Tensor,
    actions: torch.Tensor,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    action_dropout: float = 0.1,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    flow_time: torch.Tensor | None = None,
    drop_actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar flow-matching loss on the non-conditioning frames.

    Args:
        model: velocity model with ``ActionDiT.forward``'s signature.
        x0: ``[B, C, T, H, W]`` clean latents.
        condition_mask: ``[B, 1, T, H, W]``, 1 on conditioning frames (kept clean, no loss).
        actions: ``[B, K, A]``.
        logit_mean, logit_std, shift: the flow-time distribution.
        action_dropout: probability of dropping a sample's actions (condition dropout for CFG).
        generator: seeds noise, flow times and dropout (the ones not passed explicitly).
        noise, flow_time, drop_actions: optional explicit ``eps`` ``[B, C, T, H, W]``, ``s`` ``[B]``, and drop
            flags ``[B]`` (for tests and for reproducing a batch).
    """
    if x0.ndim != 5:
        raise ValueError(f"flow_matching_loss x0 must be [B, C, T, H, W], got {tuple(x0.shape)}")
    batch = x0.shape[0]
    expected_mask = (batch, 1, *x0.shape[2:])
    if tuple(condition_mask.shape) != expected_mask:
        raise ValueError(f"flow_matching_loss condition_mask must be {expected_mask}, got {tuple(condition_mask.shape)}")
    if not 0.0 <= action_dropout <= 1.0:
        raise ValueError(f"flow_matching_loss action_dropout must be in [0, 1], got {action_dropout}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if flow_time is None:
        flow_time = sample_flow_time(
            batch, logit_mean=logit_mean, logit_std=logit_std, shift=shift,
            generator=generator, device=x0.device, dtype=x0.dtype,
        )
    if drop_actions is None:
        drop_actions = torch.rand(batch, generator=generator, device=x0.device) < action_dropout

    condition_mask = condition_mask.to(x0.dtype)
    s = flow_time.to(x0.dtype).view(batch, 1, 1, 1, 1)
    noisy = s * noise + (1 - s) * x0
    x_s = condition_mask * x0 + (1 - condition_mask) * noisy
    target = noise - x0
    prediction = model(x_s, flow_time.to(x0.dtype), actions, condition_mask, drop_actions=drop_actions)

    predicted_frames = (1 - condition_mask).expand_as(x0)
    count = predicted_frames.sum()
    if count == 0:
        raise ValueError("flow_matching_loss: condition_mask covers every frame, nothing to predict")
    return ((prediction - target) ** 2 * predicted_frames).sum() / count
