"""ActionDiT: diffusers-compatible parameters, action conditioning, per-frame timesteps, checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0, CosmosTransformer3DModel

from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.utils.checkpoint import load_model, save_model_atomic

SMALL = dict(
    latent_channels=4, action_dim=3, actions_per_latent_frame=2, num_layers=2, num_attention_heads=2,
    attention_head_dim=16, adaln_lora_dim=8, text_embed_dim=8, max_size=(8, 8, 8),
)


def randomised(model: ActionDiT, seed: int = 0) -> ActionDiT:
    """A fresh model predicts 0 (zero-init output); give every weight a value so outputs carry information."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def inputs(batch=3, frames=4, cond_frames=1, channels=4, size=4, actions_per_frame=2, action_dim=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, size, size, generator=generator)
    mask = torch.zeros(batch, 1, frames, size, size)
    mask[:, :, :cond_frames] = 1
    actions = torch.randn(batch, actions_per_frame * (frames - cond_frames), action_dim, generator=generator)
    s = torch.rand(batch, generator=generator)
    return x, s, actions, mask


def test_transformer_state_dict_matches_plain_diffusers_cosmos():
    model = ActionDiT(**SMALL)
    plain = CosmosTransformer3DModel(
        in_channels=5, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        text_embed_dim=8, adaln_lora_dim=8, max_size=(8, 8, 8), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type=None,
    )
    ours = {k: v.shape for k, v in model.transformer.state_dict().items()}
    theirs = {k: v.shape for k, v in plain.state_dict().items()}
    assert ours == theirs
    extra = {k.split(".")[0] for k in model.state_dict() if not k.startswith("transformer.")}
    assert extra == {"action_embed_timestep", "action_embed_adaln"}
    # and a plain diffusers state dict loads into our transformer strictly
    model.transformer.load_state_dict(plain.state_dict(), strict=True)


def test_cosmos_2b_preset_has_two_billion_parameters_on_meta_device():
    with torch.device("meta"):
        model = ActionDiT.from_preset("cosmos_2b")
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.transformer.parameters())
    assert 1.9e9 < backbone < 2.1e9
    assert 1.9e9 < total < 2.2e9
    assert model.hidden_size == 2048 and len(model.transformer.transformer_blocks) == 28
    assert next(model.parameters()).device.type == "meta"


def test_fresh_model_starts_at_zero_velocity_with_silent_actions():
    model = ActionDiT(**SMALL).eval()
    x, s, actions, mask = inputs()
    with torch.no_grad():
        v = model(x, s, actions, mask)
    assert torch.count_nonzero(v) == 0
    for mlp in (model.action_embed_timestep, model.action_embed_adaln):
        assert torch.count_nonzero(mlp.fc2.weight) == 0
    # but the blocks are not degenerate: attention weights follow Cosmos' 1/sqrt(fan_in) init
    q = model.transformer.transformer_blocks[0].attn1.to_q.weight
    assert abs(q.std().item() - 32 ** -0.5) < 0.3 * 32 ** -0.5


def test_actions_change_prediction_and_dropping_ignores_them():
    model = randomised(ActionDiT(**SMALL))
    x, s, actions, mask = inputs()
    other = actions + 1.0
    with torch.no_grad():
        v = model(x, s, actions, mask)
        v_other = model(x, s, other, mask)
        drop = torch.tensor([True, False, True])
        v_drop = model(x, s, actions, mask, drop_actions=drop)
        v_drop_other = model(x, s, other, mask, drop_actions=drop)
    assert v.shape == x.shape
    assert (v - v_other).abs().amax() > 1e-3
    assert torch.allclose(v_drop[drop], v_drop_other[drop])  # dropped rows: actions are invisible
    assert torch.allclose(v_drop[~drop], v[~drop], atol=1e-6)  # kept rows: unchanged by others' dropping
    assert (v_drop[drop] - v[drop]).abs().amax() > 1e-3


@pytest.mark.parametrize("use_diffusers_forward", [False, True])
def test_per_frame_timesteps_and_action_embeddings_reach_the_right_frames(use_diffusers_forward):
    model = randomised(ActionDiT(**SMALL))
    model.use_diffusers_forward = use_diffusers_forward
    x, s, actions, mask = inputs(batch=2, frames=4, cond_frames=2)
    time_embed = model.transformer.time_embed
    embed, seen = time_embed.embed, {}

    def record(hidden_states, timestep, to_timestep, to_adaln):
        seen["timestep"], seen["to_timestep"] = timestep.clone(), to_timestep.clone()
        return embed(hidden_states, timestep, to_timestep, to_adaln)

    time_embed.embed = record
    with torch.no_grad():
        model(x, s, actions, mask)
    frame_timestep = seen["timestep"].view(2, 4)
    assert torch.equal(frame_timestep[:, :2], torch.zeros(2, 2))  # conditioning frames are clean
    assert torch.allclose(frame_timestep[:, 2:], s[:, None].expand(2, 2))
    per_frame = seen["to_timestep"].view(2, 4, -1)
    assert torch.count_nonzero(per_frame[:, :2]) == 0  # zero action embedding on conditioning frames
    groups = actions.reshape(2, 2, 6)  # 2 actions x 3 dims per predicted frame, in order
    assert torch.allclose(per_frame[:, 2:], model.action_embed_timestep(groups), atol=1e-6)
    assert time_embed.pending_action_embeddings is None  # diffusers' path clears its hand-over after the call


@pytest.mark.parametrize("use_diffusers_forward", [False, True])
def test_a_bfloat16_model_sees_the_timestep_in_float32(use_diffusers_forward):
    # bfloat16 has 8 significant bits: s = 0.995 (a sampler step near pure noise) would be fed as 0.996
    model = randomised(ActionDiT(**SMALL)).to(torch.bfloat16)
    model.use_diffusers_forward = use_diffusers_forward
    x, _, actions, mask = inputs(batch=2, frames=3)
    seen = {}
    model.transformer.time_embed.time_proj.register_forward_hook(lambda module, args, out: seen.update(t=args[0]))
    with torch.no_grad():
        model(x.bfloat16(), 0.995, actions.bfloat16(), mask.bfloat16())
    assert seen["t"].dtype == torch.float32
    assert torch.equal(seen["t"].view(2, 3)[:, 1:], torch.full((2, 2), 0.995))


def test_skipped_cross_attention_equals_zero_text_context():
    model = randomised(ActionDiT(**SMALL))
    reference = copy.deepcopy(model)
    reference.use_diffusers_forward = True
    for block in reference.transformer.transformer_blocks:
        block.attn2.set_processor(CosmosAttnProcessor2_0())  # real cross-attention over the zero context
    x, s, actions, mask = inputs()
    with torch.no_grad():
        assert torch.allclose(model(x, s, actions, mask), reference(x, s, actions, mask), atol=1e-5)


@pytest.mark.parametrize("extra_pos_embed_type, patch_size", [(None, (1, 2, 2)), ("learnable", (1, 2, 2)),
                                                               (None, (1, 1, 1))])
def test_per_frame_forward_equals_diffusers_forward(extra_pos_embed_type, patch_size):
    # (1, 1, 1): one token per latent pixel, 4x the tokens of the default (docs/results.md, 2026-12-05 eighth entry)
    model = randomised(ActionDiT(**SMALL, extra_pos_embed_type=extra_pos_embed_type, patch_size=patch_size))
    x, s, actions, mask = inputs(batch=3, frames=5, cond_frames=2)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        fast = model(x, s, actions, mask, drop_actions=drop)
        model.use_diffusers_forward = True
        reference = model(x, s, actions, mask, drop_actions=drop)
    assert torch.allclose(fast, reference, atol=1e-5)
    # and the gradients agree too (training uses the fast path)
    model.use_diffusers_forward = False
    fast_grad = torch.autograd.grad(model(x, s, actions, mask).square().sum(), model.action_embed_adaln.fc1.weight)[0]
    model.use_diffusers_forward = True
    reference_grad = torch.autograd.grad(model(x, s, actions, mask).square().sum(), model.action_embed_adaln.fc1.weight)[0]
    assert torch.allclose(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)


def test_bad_action_shape_is_reported():
    model = ActionDiT(**SMALL)
    x, s, actions, mask = inputs()
    with pytest.raises(ValueError, match="actions must be"):
        model(x, s, actions[:, :-1], mask)
    with pytest.raises(ValueError, match="condition_mask"):
        model(x, s, actions, mask[:, :, :-1])


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = randomised(ActionDiT(**SMALL, condition_frame_timestep=0.001))
    save_model_atomic(model, tmp_path / "dit")
    config = json.loads((tmp_path / "dit" / "config.json").read_text())
    assert config["actions_per_latent_frame"] == 2 and config["condition_frame_timestep"] == 0.001
    loaded = load_model(ActionDiT, tmp_path / "dit")
    x, s, actions, mask = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, s, actions, mask), loaded(x, s, actions, mask))


def test_truncated_weights_give_an_error_naming_the_file(tmp_path):
    save_model_atomic(ActionDiT(**SMALL), tmp_path / "dit")
    weights = tmp_path / "dit" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        ActionDiT.from_pretrained(tmp_path / "dit")
    with pytest.raises(RuntimeError, match="model.safetensors"):
        load_model(ActionDiT, tmp_path / "dit")


def test_weights_for_another_shape_are_rejected(tmp_path):
    save_model_atomic(ActionDiT(**SMALL), tmp_path / "dit")
    config_path = tmp_path / "dit" / "config.json"
    config = json.loads(config_path.read_text())
    config["action_dim"] = 5
    config_path.write_text(json.dumps(config))
    with pytest.raises((ValueError, RuntimeError), match="model.safetensors"):
        ActionDiT.from_pretrained(tmp_path / "dit")
