"""torch.compile switches (rlinf_wm.utils.compilation) and the compiled DiT / decoder paths."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.tokenizer import VideoTokenizer, compiled_decode_to_uint8
from rlinf_wm.utils import compilation
from rlinf_wm.utils.compilation import compiler_available, resolve_compile
from tests.test_dit import SMALL, inputs, randomised

needs_compiler = pytest.mark.skipif(not compiler_available("cpu"), reason="torch.compile on CPU needs a C++ compiler")


def test_auto_compiles_exactly_where_a_compiler_is_installed(monkeypatch):
    assert resolve_compile("auto", "cpu") == compiler_available("cpu")
    assert resolve_compile(False, "cpu") is False
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert compilation.compiler_available("cpu") is False
    assert resolve_compile("auto", "cpu") is False
    with pytest.raises(ValueError, match=r"train\.dit\.compile=true needs a C\+\+ compiler"):
        resolve_compile(True, "cpu", key="train.dit.compile")


@pytest.mark.parametrize("setting", ["yes", 1, None])
def test_a_bad_compile_setting_names_its_key(setting):
    with pytest.raises(ValueError, match=r"env\.train\.compile must be one of \['auto', True, False\]"):
        resolve_compile(setting, "cpu", key="env.train.compile")


@needs_compiler
def test_the_compiled_dit_computes_the_eager_forward_and_gradients():
    eager = randomised(ActionDiT(**SMALL)).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_forward = True
    x, s, actions, mask = inputs(batch=3, frames=4, cond_frames=2)
    drop = torch.tensor([False, True, False])
    outputs = [model(x, s, actions, mask, drop_actions=drop) for model in (eager, compiled)]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
    for model, out in zip((eager, compiled), outputs):
        out.square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-3), name
    # a copy of a compiled model computes with its own weights, not the original's
    copied = copy.deepcopy(compiled).eval()
    with torch.no_grad():
        for parameter in copied.parameters():
            parameter.mul_(0.5)
        x, s, actions, mask = inputs(batch=5, frames=4, cond_frames=2, seed=2)  # another batch size: dynamic shapes
        reference = copy.deepcopy(copied)
        reference.compile_forward = False
        assert torch.allclose(copied(x, s, actions, mask), reference(x, s, actions, mask), atol=1e-4)


@needs_compiler
def test_the_compiled_decoder_decodes_as_the_eager_one():
    tokenizer = VideoTokenizer(image_size=16, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4).eval()
    latents = torch.randn(3, 4, 2, tokenizer.latent_size, tokenizer.latent_size)
    with torch.no_grad():
        eager = tokenizer.decode_to_uint8(latents).int()
        compiled = compiled_decode_to_uint8()(tokenizer, latents).int()
    assert compiled.shape == eager.shape == (3, 2, 16, 16, 3)
    assert (compiled - eager).abs().max() <= 1  # rounding of fused kernels


@needs_compiler
def test_the_compiled_encoder_and_reward_model_compute_as_the_eager_ones():
    from rlinf_wm.models.reward_model import RewardModel, compiled_logits
    from rlinf_wm.models.tokenizer import compiled_encode

    tokenizer = VideoTokenizer(image_size=16, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4).eval()
    reward_model = RewardModel(image_size=16, hidden_sizes=(8, 16), depths=(1, 1), embedding_size=8).eval()
    frames = torch.randint(0, 256, (3, 2, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        encoded, eager_encoded = compiled_encode()(tokenizer, frames), tokenizer.encode(frames)
        logits, eager_logits = compiled_logits()(reward_model, frames[:, 0]), reward_model(frames[:, 0])
    assert encoded.shape == eager_encoded.shape == (3, 4, 2, 4, 4)
    torch.testing.assert_close(encoded, eager_encoded, atol=1e-4, rtol=1e-4)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, eager_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("schema, path", [("dit", "train.dit"), ("env", "env.train")])
def test_configs_take_auto_or_a_bool_for_compile_and_name_the_key_otherwise(schema, path):
    from rlinf_wm.config.validate import ConfigError, validate
    from rlinf_wm.config.world_model_config import DiTTrainConfig
    from rlinf_wm.config.world_model_env_schema import WorldModelEnvConfig

    base = {"dit": ({}, DiTTrainConfig), "env": ({"env_type": "world_model", "world_model_dir": "wm"}, WorldModelEnvConfig)}
    node, cls = base[schema]
    for value in ("auto", True, False):
        assert validate({**node, "compile": value}, cls, path).compile == value
    with pytest.raises(ConfigError, match=rf"{path}\.compile: 'on' matches none of"):
        validate({**node, "compile": "on"}, cls, path)
