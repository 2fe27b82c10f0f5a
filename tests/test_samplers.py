"""Flow samplers (2AB / Euler / UniPC, CFG, conditioning frames) and the flow-matching loss."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.flow_matching import flow_matching_loss, sample_flow_time
from rlinf_wm.models.samplers import FlowSampler, integrate_flow, karras_flow_sigmas

# --- a toy problem with an exact answer: 1-D Gaussian data x0 ~ N(MU, SD^2), x_s = s eps + (1 - s) x0 ---------------
MU, SD = 0.3, 0.5


def _variance(s: float) -> float:
    return ((1 - s) * SD) ** 2 + s**2


def gaussian_velocity(x: torch.Tensor, s: float) -> torch.Tensor:
    """The exact flow velocity E[eps - x0 | x_s = x] for Gaussian data."""
    centred = x - (1 - s) * MU
    return s / _variance(s) * centred - (MU + (1 - s) * SD**2 / _variance(s) * centred)


def gaussian_flow(x_start: torch.Tensor, s_start: float, s_end: float) -> torch.Tensor:
    """The exact ODE solution: the 1-D flow keeps each point's standardised quantile."""
    z = (x_start - (1 - s_start) * MU) / _variance(s_start) ** 0.5
    return (1 - s_end) * MU + _variance(s_end) ** 0.5 * z


def integration_errors(solver: str, steps=(16, 32, 64)) -> list[float]:
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    exact = gaussian_flow(x, 0.95, 0.05)
    errors = []
    for n in steps:
        sigmas = torch.linspace(0.95, 0.05, n + 1, dtype=torch.float64)
        errors.append((integrate_flow(gaussian_velocity, x, sigmas, solver) - exact).abs().max().item())
    return errors


def test_2ab_is_second_order_and_euler_first_order():
    two_ab, euler = integration_errors("2ab"), integration_errors("euler")
    for coarse, fine in zip(two_ab[:-1], two_ab[1:]):
        assert 3.3 < coarse / fine < 5.0
    for coarse, fine in zip(euler[:-1], euler[1:]):
        assert 1.7 < coarse / fine < 2.3
    assert two_ab[-1] < euler[-1] / 5


def test_2ab_matches_diffusers_dpm_solver_pp_2m_on_the_same_sigmas():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 6, generator=generator) * 0.4

    def velocity(x, s):  # deterministic, nonlinear in x, depends on s
        return torch.tanh(x @ weight.to(x.dtype)) * (1 + s) + s * x - 0.3

    sampler = FlowSampler(solver="2ab", num_steps=12)
    sigmas = sampler.sigmas()
    start = torch.randn(5, 6, generator=generator)
    ours = integrate_flow(velocity, start.clone(), sigmas, "2ab")

    scheduler = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True
    )
    scheduler.set_timesteps(12)
    scheduler.sigmas = sigmas.to(torch.float32)  # same schedule: ours (diffusers' flow sigmas are linear)
    scheduler.timesteps = (sigmas[:-1] * 1000).long()
    scheduler.set_begin_index(0)
    x = start.clone()
    for index, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, float(scheduler.sigmas[index])), timestep, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-4)
    # the final first-order step to s = 0 returns the data prediction, as diffusers' final_sigmas_type="zero"
    assert sigmas[-1] == 0 and len(sigmas) == 13


def test_2ab_restarts_its_history_where_the_velocity_field_jumps():
    # dx/ds = 2 above s = 0.5 and 1 below (guidance switched off): D = x - s v is constant on each side, so 2AB is
    # exact on this grid (as Euler, which evaluates v at each step's start) only if it does not extrapolate across
    sigmas = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)

    def velocity(x, s):
        return torch.full_like(x, 2.0 if s > 0.5 else 1.0)

    x = torch.zeros(3, dtype=torch.float64)
    exact = integrate_flow(velocity, x, sigmas, "euler")
    assert exact[0].item() == pytest.approx(-1.5)  # 5 steps of 0.1 at v = 2, 5 at v = 1
    restarted = integrate_flow(velocity, x, sigmas, "2ab", history_key=lambda s: s > 0.5)
    assert torch.allclose(restarted, exact, atol=1e-12)
    assert (integrate_flow(velocity, x, sigmas, "2ab") - exact).abs().max() > 0.01  # one history across the jump


def test_karras_schedule_shape():
    sigmas = karras_flow_sigmas(10, sigma_min=0.01, sigma_max=200.0, rho=7.0)
    assert sigmas.shape == (11,)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert abs(sigmas[0].item() - 200 / 201) < 1e-12 and abs(sigmas[-2].item() - 0.01 / 1.01) < 1e-12
    with pytest.raises(ValueError, match="sigma_min"):
        karras_flow_sigmas(10, sigma_min=1.0, sigma_max=0.5)


class CountingModel(torch.nn.Module):
    """A velocity model with an analytic, action-dependent output that records every call."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
        self.calls.append(x.shape[0])
        action_term = actions.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        if drop_actions is not None:
            action_term = action_term * (~drop_actions).to(x.dtype).view(-1, 1, 1, 1, 1)
        return 0.5 * x + timestep.view(-1, 1, 1, 1, 1) * 0.1 + action_term


def toy_batch(batch=2, frames=5, cond_frames=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_cond = torch.randn(batch, 3, frames, 4, 4, generator=generator)
    mask = torch.zeros(batch, 1, frames, 4, 4)
    mask[:, :, :cond_frames] = 1
    actions = torch.randn(batch, frames - cond_frames, 2, generator=generator)
    return x_cond, mask, actions


def test_predicted_mean_is_one_conditional_pass_at_the_first_flow_time():
    x_cond, mask, actions = toy_batch()
    noise = torch.randn(x_cond.shape, generator=torch.Generator().manual_seed(3))
    model = CountingModel()
    sampler = FlowSampler(num_steps=6, guidance=3.0, sigma_max=99.0)  # its guidance does not apply here
    mean = sampler.predicted_mean(model, x_cond, mask, actions, noise)
    assert model.calls == [2]  # one pass, the conditional branch only
    s = 99.0 / 100.0  # flow time of sigma_max
    x = torch.where(mask.expand_as(x_cond) > 0.5, x_cond, noise)
    v = 0.5 * x + s * 0.1 + actions.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(mean[:, :, 2:], (x - s * v)[:, :, 2:])
    torch.testing.assert_close(mean[:, :, :2], x_cond[:, :, :2])


@pytest.mark.parametrize("solver", ["2ab", "euler", "unipc"])
def test_guidance_zero_is_the_conditional_branch_with_one_forward_per_step(solver):
    x_cond, mask, actions = toy_batch()
    noise = torch.randn(x_cond.shape, generator=torch.Generator().manual_seed(3))
    model = CountingModel()
    unguided = FlowSampler(solver=solver, num_steps=6).sample(model, x_cond, mask, actions, guidance=0.0, noise=noise)
    assert model.calls == [2] * 6

    class ConditionalOnly(CountingModel):  # what the conditional branch alone integrates to
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            return super().forward(x, timestep, actions, condition_mask, None)

    reference = FlowSampler(solver=solver, num_steps=6, guidance=0.0).sample(
        ConditionalOnly(), x_cond, mask, actions, noise=noise
    )
    assert torch.equal(unguided, reference)


@pytest.mark.parametrize("solver", ["2ab", "euler", "unipc"])
def test_guidance_batches_both_branches_in_one_call(solver):
    x_cond, mask, actions = toy_batch()
    noise = torch.randn(x_cond.shape, generator=torch.Generator().manual_seed(3))
    model = CountingModel()
    guided = FlowSampler(solver=solver, num_steps=5, guidance=3.0).sample(model, x_cond, mask, actions, noise=noise)
    assert model.calls == [4] * 5  # one forward per step, on the doubled batch

    class GuidedByHand(CountingModel):  # v_c + w (v_c - v_u) computed with two separate calls
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            v_c = super().forward(x, timestep, actions, condition_mask, None)
            v_u = super().forward(x, timestep, actions, condition_mask, torch.ones(x.shape[0], dtype=torch.bool))
            return v_c + 3.0 * (v_c - v_u)

    by_hand = FlowSampler(solver=solver, num_steps=5).sample(
        GuidedByHand(), x_cond, mask, actions, guidance=0.0, noise=noise
    )
    assert torch.allclose(guided, by_hand, atol=1e-5)
    unguided = FlowSampler(solver=solver, num_steps=5).sample(CountingModel(), x_cond, mask, actions, guidance=0.0, noise=noise)
    assert (guided - unguided).abs().amax() > 1e-3


@pytest.mark.parametrize("solver", ["2ab", "euler", "unipc"])
def test_guidance_interval_guides_only_the_steps_inside_it(solver):
    x_cond, mask, actions = toy_batch()
    noise = torch.randn(x_cond.shape, generator=torch.Generator().manual_seed(3))
    schedule = [float(s) for s in FlowSampler(num_steps=4).sigmas()]  # 0.995, 0.963, 0.594, 0.0099, 0
    inside = (0.05, 0.97)  # the second and third steps
    model = CountingModel()
    partly = FlowSampler(solver=solver, num_steps=4, guidance=3.0, guidance_interval=inside).sample(
        model, x_cond, mask, actions, noise=noise
    )
    assert model.calls == [2, 4, 4, 2]
    steps_seen = []

    class GuidedWhereTold(CountingModel):  # guidance by hand, on the steps inside the interval only
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            s = float(timestep[0])
            steps_seen.append(s)
            v_c = super().forward(x, timestep, actions, condition_mask, None)
            if not inside[0] < s <= inside[1]:
                return v_c
            v_u = super().forward(x, timestep, actions, condition_mask, torch.ones(x.shape[0], dtype=torch.bool))
            return v_c + 3.0 * (v_c - v_u)

    by_hand_sampler = FlowSampler(solver=solver, num_steps=4)
    if solver == "unipc":
        by_hand = by_hand_sampler.sample(GuidedWhereTold(), x_cond, mask, actions, guidance=0.0, noise=noise)
    else:  # 2ab restarts its history where guidance switches on (the second step)
        given = mask.expand_as(x_cond) > 0.5

        def keep(x):
            return torch.where(given, x_cond, x)

        def velocity(x, s):
            return by_hand_sampler.guided_velocity(GuidedWhereTold(), x, s, mask, actions, 0.0)

        by_hand = keep(integrate_flow(velocity, keep(noise), by_hand_sampler.sigmas(), solver, after_step=keep,
                                      history_key=lambda s: inside[0] < s <= inside[1]))
    assert steps_seen == pytest.approx(schedule[:-1], rel=1e-5)
    assert torch.allclose(partly, by_hand, atol=1e-5)
    everywhere = FlowSampler(solver=solver, num_steps=4, guidance=3.0).sample(
        CountingModel(), x_cond, mask, actions, noise=noise
    )
    assert (partly - everywhere).abs().amax() > 1e-3


@pytest.mark.parametrize("interval", [(0.5, 0.5), (-0.1, 1.0), (0.0, 1.5), (0.2,)])
def test_bad_guidance_intervals_are_rejected(interval):
    with pytest.raises(ValueError, match="guidance_interval"):
        FlowSampler(guidance_interval=interval)


@pytest.mark.parametrize("solver", ["2ab", "euler", "unipc"])
def test_conditioning_frames_come_back_unchanged(solver):
    x_cond, mask, actions = toy_batch()
    sample = FlowSampler(solver=solver, num_steps=4, guidance=2.0).sample(
        CountingModel(), x_cond, mask, actions, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(sample[:, :, :2], x_cond[:, :, :2])
    assert torch.isfinite(sample).all()
    assert (sample[:, :, 2:] - x_cond[:, :, 2:]).abs().amax() > 1e-3


def test_conditioning_frames_enter_the_model_clean():
    x_cond, mask, actions = toy_batch()
    seen = []

    class Recording(CountingModel):
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            seen.append(x[:, :, :2].clone())
            return super().forward(x, timestep, actions, condition_mask, drop_actions)

    FlowSampler(num_steps=3, guidance=1.0).sample(Recording(), x_cond, mask, actions)
    for given in seen:
        assert torch.equal(given, torch.cat([x_cond, x_cond])[:, :, :2])


def test_sampler_is_seeded_by_the_generator():
    x_cond, mask, actions = toy_batch()
    sampler = FlowSampler(num_steps=3)
    first = sampler.sample(CountingModel(), x_cond, mask, actions, generator=torch.Generator().manual_seed(7))
    again = sampler.sample(CountingModel(), x_cond, mask, actions, generator=torch.Generator().manual_seed(7))
    other = sampler.sample(CountingModel(), x_cond, mask, actions, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_sampler_runs_the_dit_end_to_end():
    model = ActionDiT(latent_channels=3, action_dim=2, num_layers=1, num_attention_heads=2, attention_head_dim=12,
                      adaln_lora_dim=4, text_embed_dim=4, max_size=(8, 8, 8)).eval()
    x_cond, mask, actions = toy_batch()
    sample = FlowSampler(num_steps=3, guidance=2.0).sample(model, x_cond, mask, actions)
    assert sample.shape == x_cond.shape and torch.equal(sample[:, :, :2], x_cond[:, :, :2])


def test_bad_sampler_settings_are_rejected():
    with pytest.raises(ValueError, match="solver"):
        FlowSampler(solver="heun")
    x_cond, mask, actions = toy_batch()
    with pytest.raises(ValueError, match="condition_mask"):
        FlowSampler().sample(CountingModel(), x_cond, mask[:, :, :-1], actions)


# --- flow-matching loss --------------------------------------------------------------------------------------------


def test_loss_ignores_conditioning_frames_and_matches_the_formula():
    x0, mask, actions = toy_batch(batch=3)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x0.shape, generator=generator)
    s = torch.tensor([0.2, 0.5, 0.9])
    seen = {}

    def model(x, timestep, actions, condition_mask, drop_actions=None, perturb=0.0):
        seen["x"], seen["drop"] = x.clone(), drop_actions
        return 0.3 * x + perturb * condition_mask.expand_as(x)  # perturb only conditioning frames

    kwargs = dict(noise=noise, flow_time=s, drop_actions=torch.tensor([False, True, False]))
    loss = flow_matching_loss(model, x0, mask, actions, **kwargs)
    perturbed = flow_matching_loss(lambda *a, **k: model(*a, **k, perturb=100.0), x0, mask, actions, **kwargs)
    assert torch.equal(loss, perturbed)
    # conditioning frames entered clean, the others at x_s = s eps + (1 - s) x0
    assert torch.equal(seen["x"][:, :, :2], x0[:, :, :2])
    expected_x = s.view(3, 1, 1, 1, 1) * noise + (1 - s.view(3, 1, 1, 1, 1)) * x0
    assert torch.allclose(seen["x"][:, :, 2:], expected_x[:, :, 2:])
    target = noise - x0
    expected = ((0.3 * expected_x - target)[:, :, 2:] ** 2).mean()
    assert torch.allclose(loss, expected)
    assert torch.equal(seen["drop"], torch.tensor([False, True, False]))


def test_loss_action_dropout_rate_and_flow_time_distribution():
    x0, mask, actions = toy_batch(batch=4000, frames=3, cond_frames=1)
    drops = []

    def model(x, timestep, actions, condition_mask, drop_actions=None):
        drops.append(drop_actions)
        return torch.zeros_like(x)

    flow_matching_loss(model, x0, mask, actions, action_dropout=0.25, generator=torch.Generator().manual_seed(0))
    assert abs(drops[0].float().mean().item() - 0.25) < 0.03
    s = sample_flow_time(20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.min() > 0 and s.max() < 1
    # logit-normal(0, 1) has median 1/2; shift 3 maps it to 3/4
    assert abs(s.median().item() - 0.75) < 0.01


def test_loss_trains_the_dit():
    """A few optimiser steps on one batch lower the loss: gradients reach the zero-initialised output."""
    torch.manual_seed(0)
    model = ActionDiT(latent_channels=3, action_dim=2, num_layers=1, num_attention_heads=2, attention_head_dim=12,
                      adaln_lora_dim=4, text_embed_dim=4, max_size=(8, 8, 8))
    x0, mask, actions = toy_batch(batch=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    fixed = dict(noise=torch.randn(x0.shape), flow_time=torch.full((4,), 0.5), drop_actions=torch.zeros(4, dtype=torch.bool))
    losses = []
    for _ in range(15):
        loss = flow_matching_loss(model, x0, mask, actions, **fixed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert model.action_embed_timestep.fc2.weight.abs().sum() > 0  # the action path woke up


@pytest.mark.parametrize("solver", ["2ab", "euler", "unipc"])
def test_every_solver_evaluates_the_model_on_the_shared_schedule(solver):
    x_cond, mask, actions = toy_batch()
    times = []

    class Recording(CountingModel):
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            times.append(timestep[0].item())
            return super().forward(x, timestep, actions, condition_mask, drop_actions)

    sampler = FlowSampler(solver=solver, num_steps=7, guidance=0.0, sigma_max=80.0, rho=5.0)
    sampler.sample(Recording(), x_cond, mask, actions)
    assert torch.allclose(torch.tensor(times, dtype=torch.float64), sampler.sigmas()[:-1], atol=1e-6)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_a_bfloat16_batch_gets_float32_timesteps(guidance):
    # near pure noise the schedule's times differ in the third decimal, below bfloat16's resolution there
    x_cond, mask, actions = toy_batch()
    times = []

    class Recording(CountingModel):
        def forward(self, x, timestep, actions, condition_mask, drop_actions=None):
            times.append(timestep)
            return super().forward(x, timestep, actions, condition_mask, drop_actions).to(x.dtype)

    sampler = FlowSampler(solver="2ab", num_steps=10, guidance=guidance)
    sampler.sample(Recording(), x_cond.bfloat16(), mask.bfloat16(), actions.bfloat16())
    assert {t.dtype for t in times} == {torch.float32}
    expected = sampler.sigmas()[:-1].float()
    assert torch.equal(torch.stack([t[0] for t in times]), expected) and expected[0] != expected[0].bfloat16().float()
