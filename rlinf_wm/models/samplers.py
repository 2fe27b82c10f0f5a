"""Rectified-flow ODE samplers for the action-conditioned DiT (the model computes, the sampler steps).

Convention (Cosmos Predict 2.5): ``x_s = s * eps + (1 - s) * x0`` with flow time ``s`` in [0, 1]; the model
predicts ``v = eps - x0 = dx/ds``; sampling integrates from noise (s near 1) down to s = 0. The data prediction
at any point is ``x0_hat = x_s - s * v``.

Solvers:
- ``"2ab"``: second-order Adams-Bashforth in exponential-integrator form on the data prediction, i.e.
  DPM-Solver++(2M) on the flow (alpha_s = 1 - s, sigma_s = s, lambda = log(alpha / sigma)); first step and the
  final step (to s = 0) are first order, exactly as diffusers' ``DPMSolverMultistepScheduler(algorithm_type=
  "dpmsolver++", solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True)``.
- ``"euler"``: ``x <- x + (s_next - s) * v``.
- ``"unipc"``: diffusers ``UniPCMultistepScheduler`` in flow mode (what diffusers' Cosmos 2.5 pipeline uses).

All solvers share one schedule, :meth:`FlowSampler.sigmas`: Karras' rho-schedule in the EDM noise-to-signal
ratio ``sigma = s / (1 - s)`` between ``sigma_max`` and ``sigma_min``, mapped to ``s = sigma / (1 + sigma)``, then
a final 0 (diffusers' ``use_karras_sigmas`` + ``use_flow_sigmas``; Cosmos 2.5 uses sigma in [0.01, 200]).

Classifier-free guidance: ``v = v_c + w * (v_c - v_u)``; the unconditional branch drops the actions
(``drop_actions=True``, which the DiT turns into a zero action embedding - the same dropout the training loss
applies). Both branches run as one forward pass on a doubled batch; with ``w == 0`` only the conditional one runs.
``guidance_interval = (low, high)`` applies guidance only on steps whose flow time ``s`` lies in ``(low, high]``
and runs one branch elsewhere (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval"): a step at
``s`` near 0 moves the data prediction ``x - s v`` by ``s`` times the guidance term, so guiding it costs a full
second branch for almost no change.
Conditioning latent frames are reset to their clean values before every model call and at the end, so they come
back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

SOLVERS = ("2ab", "euler", "unipc")


class VelocityModel(Protocol):
    """What the sampler calls: :class:`rlinf_wm.models.dit.ActionDiT` or anything with its forward signature."""

    def __call__(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        actions: torch.Tensor,
        condition_mask: torch.Tensor,
        drop_actions: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def karras_flow_sigmas(num_steps: int, sigma_min: float = 0.01, sigma_max: float = 200.0, rho: float = 7.0) -> torch.Tensor:
    """``num_steps + 1`` decreasing flow times: Karras schedule in ``sigma = s / (1 - s)``, mapped to s, then 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    edm_sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([edm_sigmas / (1 + edm_sigmas), torch.zeros(1, dtype=torch.float64)])


def _log_snr(s: float) -> float:
    """lambda = log(alpha / sigma) = log((1 - s) / s) on the flow; -inf at s = 1, +inf at s = 0."""
    if s >= 1.0:
        return -math.inf
    if s <= 0.0:
        return math.inf
    return math.log((1.0 - s) / s)


def dpm_solver_2m_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    previous_denoised: torch.Tensor | None,
    s_previous: float | None,
    s: float,
    s_next: float,
) -> torch.Tensor:
    """One DPM-Solver++(2M) step on the flow, from ``s`` to ``s_next`` (the "2AB" step).

    ``denoised`` is the data prediction ``x - s * v`` at ``s``; ``previous_denoised`` the one at ``s_previous``
    (None on the first step). First order (DDIM on the flow) when there is no history or ``s_next == 0``::

        x_next = (s_next / s) * x + (1 - s_next) * (1 - exp(-h)) * D,   h = lambda(s_next) - lambda(s)
        D = denoised + (denoised - previous_denoised) / (2 r),   r = (lambda(s) - lambda(s_previous)) / h
    """
    if s_next <= 0.0:
        return denoised  # exp(-h) = 0: the first-order step to s = 0 is the data prediction itself
    # exp(-h) = (s_next / (1 - s_next)) * ((1 - s) / s), written without logs so that s = 1 is exact
    decay = (s_next * (1.0 - s)) / ((1.0 - s_next) * s)
    direction = denoised
    if previous_denoised is not None and s_previous is not None and s_previous < 1.0:
        h = _log_snr(s_next) - _log_snr(s)
        r = (_log_snr(s) - _log_snr(s_previous)) / h
        direction = denoised + (denoised - previous_denoised) * (0.5 / r)
    return x * (s_next / s) + direction * ((1.0 - s_next) * (1.0 - decay))


def integrate_flow(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    solver: str = "2ab",
    after_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
    history_key: Callable[[float], object] | None = None,
) -> torch.Tensor:
    """Integrate ``dx/ds = velocity(x, s)`` along ``sigmas`` (decreasing) with "2ab" or "euler".

    ``after_step`` (e.g. resetting conditioning frames) is applied to every new state. One velocity call per step.
    A step whose ``history_key(s)`` differs from the previous step's starts a new 2AB history (a first-order step):
    where guidance switches on or off the velocity field jumps, and extrapolating across the jump would carry part
    of one field's prediction into the other.
    """
    if solver not in ("2ab", "euler"):
        raise ValueError(f"integrate_flow solver must be '2ab' or 'euler', got {solver!r}")
    schedule = [float(s) for s in sigmas]
    previous_denoised, s_previous, previous_key = None, None, None
    for s, s_next in zip(schedule[:-1], schedule[1:]):
        if history_key is not None:
            key = history_key(s)
            if key != previous_key:
                previous_denoised, previous_key = None, key
        v = velocity(x, s)
        if solver == "euler":
            x = x + (s_next - s) * v
        else:
            denoised = x - s * v
            x = dpm_solver_2m_step(x, denoised, previous_denoised, s_previous, s, s_next)
            previous_denoised, s_previous = denoised, s
        if after_step is not None:
            x = after_step(x)
    return x


@dataclass
class FlowSampler:
    """Samples latent video from an action-conditioned velocity model.

    Args:
        solver: "2ab" (DPM-Solver++(2M)), "euler" or "unipc".
        num_steps: model evaluations (each a single forward, CFG included).
        guidance: CFG weight w in ``v_c + w (v_c - v_u)``; 0 disables the unconditional branch.
        guidance_interval: ``(low, high)``: guidance only on steps with flow time in ``(low, high]``; the default
            ``(0, 1)`` guides every step.
        sigma_min, sigma_max, rho: the Karras schedule in ``sigma = s / (1 - s)``.
    """

    solver: str = "2ab"
    num_steps: int = 10
    guidance: float = 7.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sigma_min: float = 0.01
    sigma_max: float = 200.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"FlowSampler solver must be one of {SOLVERS}, got {self.solver!r}")
        if int(self.num_steps) < 1:
            raise ValueError(f"FlowSampler num_steps must be >= 1, got {self.num_steps}")
        if self.guidance < 0:
            raise ValueError(f"FlowSampler guidance must be >= 0, got {self.guidance}")
        interval = tuple(float(v) for v in self.guidance_interval)
        if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
            raise ValueError(f"FlowSampler guidance_interval must be [low, high] with 0 <= low < high <= 1, "
                             f"got {list(self.guidance_interval)}")
        self.guidance_interval = interval
        karras_flow_sigmas(1, self.sigma_min, self.sigma_max, self.rho)  # validates the schedule parameters

    def sigmas(self, num_steps: int | None = None) -> torch.Tensor:
        """The float64 flow-time schedule, ``num_steps + 1`` values from ~1 down to 0."""
        return karras_flow_sigmas(int(num_steps or self.num_steps), self.sigma_min, self.sigma_max, self.rho)

    def guided_velocity(
        self,
        model: VelocityModel,
        x: torch.Tensor,
        s: float,
        condition_mask: torch.Tensor,
        actions: torch.Tensor,
        guidance: float,
    ) -> torch.Tensor:
        """``v_c + w (v_c - v_u)`` from one forward pass (doubled batch when ``w != 0``)."""
        batch = x.shape[0]
        timestep = torch.full((batch,), s, dtype=torch.float32, device=x.device)
        no_drop = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if guidance == 0:
            return model(x, timestep, actions, condition_mask, drop_actions=no_drop)
        both = model(
            torch.cat([x, x]),
            torch.cat([timestep, timestep]),
            torch.cat([actions, actions]),
            torch.cat([condition_mask, condition_mask]),
            drop_actions=torch.cat([no_drop, ~no_drop]),
        )
        v_cond, v_uncond = both[:batch], both[batch:]
        return v_cond + guidance * (v_cond - v_uncond)

    @torch.no_grad()
    def predicted_mean(
        self,
        model: VelocityModel,
        x_cond: torch.Tensor,
        condition_mask: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """One conditional DiT pass at the schedule's first flow time: the data prediction ``x - s v`` there.

        Near pure noise the input says almost nothing about ``x0``, so this is the model's estimate of
        ``E[x0 | conditioning frames, actions]``: where two models trained on the same data differ in it, their
        data did not pin the outcome down (epistemic), unlike the spread of samples, which the data allows.
        Conditioning frames equal ``x_cond``'s.
        """
        given = condition_mask.to(x_cond.dtype).expand_as(x_cond) > 0.5
        x = torch.where(given, x_cond, noise)
        s = float(self.sigmas(1)[0])
        velocity = self.guided_velocity(model, x, s, condition_mask.to(x_cond.dtype), actions, 0.0)
        denoised = x.float() - s * velocity.float()  # in float32: x and s v nearly cancel
        return torch.where(given, x_cond, denoised.to(x_cond.dtype))

    @torch.no_grad()
    def sample(
        self,
        model: VelocityModel,
        x_cond: torch.Tensor,
        condition_mask: torch.Tensor,
        actions: torch.Tensor,
        num_steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate the non-conditioning frames of ``x_cond``.

        Args:
            model: velocity model (``ActionDiT``).
            x_cond: ``[B, C, T, H, W]``, clean latents on conditioning frames, anything elsewhere.
            condition_mask: ``[B, 1, T, H, W]``, 1 on conditioning frames.
            actions: ``[B, K, A]`` for the model.
            num_steps, guidance: override the sampler's defaults for this call.
            generator: seeds the initial noise (ignored when ``noise`` is given).
            noise: optional ``[B, C, T, H, W]`` initial noise.
        Returns:
            ``x0`` latents ``[B, C, T, H, W]``; conditioning frames equal ``x_cond``'s.
        """
        if x_cond.ndim != 5:
            raise ValueError(f"FlowSampler x_cond must be [B, C, T, H, W], got {tuple(x_cond.shape)}")
        expected_mask = (x_cond.shape[0], 1, *x_cond.shape[2:])
        if tuple(condition_mask.shape) != expected_mask:
            raise ValueError(f"FlowSampler condition_mask must be {expected_mask}, got {tuple(condition_mask.shape)}")
        guidance = self.guidance if guidance is None else float(guidance)
        if guidance < 0:
            raise ValueError(f"FlowSampler guidance must be >= 0, got {guidance}")
        steps = int(num_steps or self.num_steps)
        sigmas = self.sigmas(steps)
        if noise is None:
            noise = torch.randn(x_cond.shape, generator=generator, dtype=x_cond.dtype, device=x_cond.device)
        elif noise.shape != x_cond.shape:
            raise ValueError(f"FlowSampler noise must match x_cond {tuple(x_cond.shape)}, got {tuple(noise.shape)}")
        condition_mask = condition_mask.to(x_cond.dtype)
        given = condition_mask.expand_as(x_cond) > 0.5

        def keep_given(x: torch.Tensor) -> torch.Tensor:
            return torch.where(given, x_cond, x)

        low, high = self.guidance_interval

        def guidance_at(s: float) -> float:
            return guidance if low < s <= high else 0.0

        def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
            return self.guided_velocity(model, x, s, condition_mask, actions, guidance_at(s))

        x = keep_given(noise)
        if self.solver == "unipc":  # diffusers' UniPC keeps its history across a guidance switch
            x = self._sample_unipc(velocity, x, sigmas, keep_given)
        else:
            x = integrate_flow(velocity, x, sigmas, self.solver, after_step=keep_given, history_key=guidance_at)
        return keep_given(x)

    @staticmethod
    def _sample_unipc(velocity, x: torch.Tensor, sigmas: torch.Tensor, keep_given) -> torch.Tensor:
        from diffusers import UniPCMultistepScheduler

        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,  # our schedule is passed in explicitly
            solver_order=2,
            final_sigmas_type="zero",
        )
        scheduler.set_timesteps(sigmas=sigmas[:-1].numpy(), device=x.device)
        scheduler.set_begin_index(0)
        for index, timestep in enumerate(scheduler.timesteps):
            v = velocity(x, float(scheduler.sigmas[index]))
            x = keep_given(scheduler.step(v, timestep, x, return_dict=False)[0])
        return x
