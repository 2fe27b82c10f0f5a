import numpy as np
import pytest
import torch

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.envs import Obs
from rlinf_wm.models.policy import ActionTokenizer, ByteTokenizer, TinyVLA, load_policy
from rlinf_wm.utils.checkpoint import save_model_atomic

Q01 = [-0.5, -1.0, 0.0, -1.0]
Q99 = [0.5, 1.0, 2.0, 1.0]


def tiny_config(**overrides) -> TinyVLAConfig:
    values = dict(
        chunk_size=3, num_bins=32, encoder_channels=[8, 16], image_grid=2, hidden_dim=32, num_layers=2,
        num_heads=2, max_instruction_length=24, image_size=16, action_dim=4, action_q01=Q01, action_q99=Q99,
    )
    values.update(overrides)
    return TinyVLAConfig(**values)


def make_policy(seed: int = 0, **overrides) -> TinyVLA:
    torch.manual_seed(seed)
    return TinyVLA(tiny_config(**overrides)).eval()


def make_obs(batch: int, seed: int = 0, size: int = 16) -> Obs:
    rng = np.random.default_rng(seed)
    instructions = ["open the drawer" if i % 2 == 0 else "close the drawer" for i in range(batch)]
    return Obs(images=rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), instructions=instructions)


# --- tokenizers ---------------------------------------------------------------------------------------
def test_action_tokens_round_trip_within_half_a_bin():
    tokenizer = ActionTokenizer(num_bins=256)
    values = np.concatenate([np.linspace(-1, 1, 10001), [-1.0, 1.0, 0.0]])
    tokens = tokenizer.encode(values)
    assert tokens.min() == 0 and tokens.max() == 255
    assert np.abs(tokenizer.decode(tokens) - values).max() <= 1.0 / 256 + 1e-7
    # Out-of-range inputs saturate at the end bins.
    assert tokenizer.encode(np.array([-3.0, 3.0])).tolist() == [0, 255]
    with pytest.raises(ValueError, match="action tokens must lie in"):
        tokenizer.decode(np.array([256]))


def test_policy_maps_env_actions_to_tokens_and_back_within_half_a_bin():
    policy = make_policy()
    rng = np.random.default_rng(0)
    low, high = np.array(Q01), np.array(Q99)
    actions = rng.uniform(low, high, size=(50, 3, 4)).astype(np.float32)
    restored = policy.detokenize(policy.tokenize_actions(actions))
    half_bin_env_units = (high - low) / 2 * (1.0 / policy.num_bins)
    assert (np.abs(restored - actions) <= half_bin_env_units + 1e-6).all()


def test_byte_tokenizer_pads_truncates_and_decodes():
    tokenizer = ByteTokenizer(max_length=8)
    ids = tokenizer.encode(["Open", "a much longer instruction", ""])
    assert ids.shape == (3, 8)
    assert ids[0, 4:].eq(0).all() and ids[1].ne(0).all() and ids[2].eq(0).all()
    assert tokenizer.decode(ids) == ["open", "a much l", ""]
    with pytest.raises(TypeError):
        tokenizer.encode("not a list")


# --- policy behaviour -----------------------------------------------------------------------------------
def test_act_shapes_and_env_units():
    policy = make_policy()
    out = policy.act(make_obs(5))
    assert out.actions.shape == out.tokens.shape == out.logprobs.shape == (5, 3, 4)
    assert out.actions.dtype == np.float32 and out.tokens.dtype == np.int64
    assert out.values.shape == (5,)
    assert (out.logprobs <= 0).all()
    # Actions are bin centres inside q01..q99 in env units.
    assert (out.actions >= np.array(Q01) - 1e-6).all() and (out.actions <= np.array(Q99) + 1e-6).all()
    assert np.allclose(out.actions, policy.detokenize(out.tokens))


def test_evaluate_reproduces_act_logprobs_and_is_differentiable():
    policy = make_policy()
    obs = make_obs(6)
    for temperature in (1.0, 0.5):
        out = policy.act(obs, temperature=temperature, generator=torch.Generator().manual_seed(1))
        evaluation = policy.evaluate(obs, out.tokens, temperature=temperature)
        np.testing.assert_allclose(evaluation.logprobs.detach().numpy(), out.logprobs, atol=1e-5)
        np.testing.assert_allclose(evaluation.values.detach().numpy(), out.values, atol=1e-5)
    assert evaluation.entropy.shape == (6, 3, 4)
    assert (evaluation.entropy > 0).all() and (evaluation.entropy <= np.log(policy.num_bins) + 1e-5).all()
    evaluation.logprobs.sum().backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_evaluate_tensors_matches_evaluate():
    policy = make_policy()
    obs = make_obs(4)
    tokens = policy.act(obs).tokens
    images, instruction_ids = policy.obs_to_tensors(obs)
    a = policy.evaluate(obs, tokens)
    b = policy.evaluate_tensors(images, instruction_ids, torch.from_numpy(tokens))
    assert torch.allclose(a.logprobs, b.logprobs) and torch.allclose(a.entropy, b.entropy)


def test_batch_of_one_equals_batch_of_many():
    policy = make_policy()
    obs = make_obs(7)
    batch = policy.act(obs, deterministic=True)
    for i in range(7):
        single = policy.act(obs.select([i]), deterministic=True)
        assert np.array_equal(single.tokens[0], batch.tokens[i])
        np.testing.assert_allclose(single.logprobs[0], batch.logprobs[i], atol=1e-5)
        np.testing.assert_allclose(single.values[0], batch.values[i], atol=1e-5)


def test_instruction_changes_the_output():
    policy = make_policy()
    obs = make_obs(2)
    same_image = Obs(images=np.repeat(obs.images[:1], 2, axis=0), instructions=["open the drawer", "press the button"])
    logits, _ = policy(*policy.obs_to_tensors(same_image))
    assert not torch.allclose(logits[0], logits[1])


def test_deterministic_act_is_reproducible_and_argmax():
    policy = make_policy()
    obs = make_obs(4)
    a = policy.act(obs, deterministic=True)
    b = policy.act(obs, deterministic=True, temperature=0.3)
    assert np.array_equal(a.tokens, b.tokens)
    logits, _ = policy(*policy.obs_to_tensors(obs))
    assert np.array_equal(a.tokens, logits.argmax(-1).numpy())


def test_sampling_is_reproducible_with_a_generator_and_follows_temperature():
    policy = make_policy()
    obs = make_obs(32)
    a = policy.act(obs, generator=torch.Generator().manual_seed(3))
    b = policy.act(obs, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(a.tokens, b.tokens)
    with torch.no_grad():  # spread the near-uniform initial logits so a cold sample is the arg-max
        policy.action_head.weight.mul_(100.0)
    greedy = policy.act(obs, deterministic=True).tokens
    cold = policy.act(obs, temperature=1e-3, generator=torch.Generator().manual_seed(3)).tokens
    assert np.array_equal(cold, greedy)
    with pytest.raises(ValueError, match="temperature"):
        policy.act(obs, temperature=0.0)


@pytest.mark.parametrize("action_head", ["categorical", "gaussian"])
def test_save_and_load_give_identical_outputs(tmp_path, action_head):
    policy = make_policy(seed=4, action_head=action_head)
    save_model_atomic(policy, tmp_path / "model")
    loaded = load_policy(tmp_path)  # the run directory resolves to its model/ subdirectory
    assert isinstance(loaded, TinyVLA) and not loaded.training
    assert loaded.config == policy.config
    obs = make_obs(3)
    a, b = policy.act(obs, deterministic=True), loaded.act(obs, deterministic=True)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logprobs, b.logprobs)
    assert np.array_equal(a.actions, b.actions)


def test_gaussian_head_logits_are_a_discretised_gaussian():
    policy = make_policy(action_head="gaussian")
    logits, _ = policy(torch.from_numpy(make_obs(2).images), policy.tokenize_instructions(make_obs(2).instructions))
    assert logits.shape == (2, 3, 4, 32)
    # Quadratic in the bin centre: second differences are equal and negative, one peak per dimension.
    second = logits.diff(dim=-1).diff(dim=-1)
    assert torch.allclose(second, second[..., :1].expand_as(second), atol=1e-4) and bool((second < 0).all())


@pytest.mark.parametrize("action_head, neighbour_rises", [("categorical", False), ("gaussian", True)])
def test_a_policy_gradient_step_on_one_bin_lifts_the_bin_beyond_only_with_the_gaussian_head(action_head, neighbour_rises):
    # A small REINFORCE step on a token 3 bins above the mode: the Gaussian head shifts its mean towards it,
    # so the bin beyond the target rises with it; free per-bin logits raise the target and lower the rest.
    policy = make_policy(action_head=action_head).train()
    obs = make_obs(1)
    images, ids = torch.from_numpy(obs.images), policy.tokenize_instructions(obs.instructions)
    before = torch.log_softmax(policy(images, ids)[0][0, 0, 0].detach(), -1)
    target = int(before.argmax()) + 3
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-3)
    (-torch.log_softmax(policy(images, ids)[0][0, 0, 0], -1)[target]).backward()
    optimizer.step()
    change = torch.log_softmax(policy(images, ids)[0][0, 0, 0].detach(), -1) - before
    assert change[target] > 0
    assert bool(change[target + 1] > 0) == neighbour_rises


def test_no_value_head():
    policy = make_policy(value_head=False)
    out = policy.act(make_obs(2))
    assert out.values is None
    assert policy.evaluate(make_obs(2), out.tokens).values is None


def test_bad_inputs_raise_clear_errors(tmp_path):
    policy = make_policy()
    with pytest.raises(ValueError, match="trained on 16x16"):
        policy.act(make_obs(2, size=24))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, K, A\]"):
        policy.evaluate(make_obs(2), np.zeros((2, 5, 4), np.int64))
    with pytest.raises(ValueError, match="tokens must lie in"):
        policy.evaluate(make_obs(2), np.full((2, 3, 4), 99))
    with pytest.raises(ConfigError, match="action_dim"):
        TinyVLA(TinyVLAConfig(image_size=16))
    with pytest.raises(FileNotFoundError, match="no policy checkpoint"):
        load_policy(tmp_path / "missing")


def test_model_section_schema_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.hidden_dim: 30 is not divisible"):
        validate({"hidden_dim": 30, "num_heads": 4}, TinyVLAConfig, "model")
    with pytest.raises(ConfigError, match=r"model\.num_bin"):
        validate({"num_bin": 8}, TinyVLAConfig, "model")
    assert validate({"chunk_size": 8}, TinyVLAConfig, "model").chunk_size == 8
