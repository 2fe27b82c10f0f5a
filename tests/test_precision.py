import pytest
import torch

from rlinf_wm.utils import precision
from rlinf_wm.utils.precision import autocast, resolve_dtype, training_autocast


def test_auto_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda device="cpu": True)
    assert resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(precision, "native_bfloat16", lambda device="cpu": False)
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16  # explicit names are taken as given
    assert resolve_dtype("float32") == torch.float32


def test_native_bfloat16_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not precision.native_bfloat16("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.native_bfloat16("cpu")
    assert not precision.native_bfloat16("meta")


def test_unknown_dtype_names_the_key():
    with pytest.raises(ValueError, match=r"env\.train\.dtype must be one of .*'half'"):
        resolve_dtype("half", key="env.train.dtype")


def test_autocast_runs_matmuls_in_the_dtype_and_is_a_no_op_for_float32():
    a = torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", torch.float32):
        assert (a @ a).dtype == torch.float32


def test_training_autocast_uses_the_math_attention_kernel_only_for_low_precision_on_cpu():
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    with training_autocast("cpu", torch.bfloat16):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert _cur_sdpa_kernel_backends() == [SDPBackend.MATH]
    with training_autocast("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")
        assert SDPBackend.FLASH_ATTENTION in _cur_sdpa_kernel_backends()
