"""Workers in-process (no Ray): the learner's update, guards, offloading and state; rollout sampling;
the env worker; trajectory building; placement bundles."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from rlinf_wm.algorithms import NonFiniteLossError
from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.embodied_schema import ActorConfig, EmbodiedConfig
from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.config.validate import validate
from rlinf_wm.envs import Obs
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.runners.worker_group import placement_bundles
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.workers.actor_worker import ActorWorker
from rlinf_wm.workers.env_worker import EnvWorker
from rlinf_wm.workers.rollout_worker import RolloutWorker
from rlinf_wm.workers.seeding import derive_seed
from rlinf_wm.workers.trajectory import TrajectoryBatch, TrajectoryBuilder

IMAGE = 16
K, A = 2, 4
INSTRUCTION = "open the drawer"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = TinyVLAConfig(chunk_size=K, num_bins=8, encoder_channels=[4], image_grid=2, hidden_dim=16, num_layers=1,
                           num_heads=2, mlp_ratio=2, image_size=IMAGE, action_dim=A, action_q01=[-1.0] * A,
                           action_q99=[1.0] * A)
    path = tmp_path_factory.mktemp("policy") / "policy"
    save_model_atomic(TinyVLA(config), path)
    return str(path)


def policy_cfg(path, temperature=1.0):
    return {"path": path, "model": {}, "temperature": temperature}


def make_batch(policy_dir, success, chunks=3, seed=0, group_ids=None, temperature=1.0):
    """Trajectories acted by the policy itself (ratio 1 at the first step); episodes end in the last chunk."""
    policy = RolloutWorker(policy_cfg(policy_dir, temperature))
    rng = np.random.default_rng(seed)
    b = len(success)
    images = rng.integers(0, 256, (b, chunks, IMAGE, IMAGE, 3), dtype=np.uint8)
    outputs = [policy.act(Obs(images[:, n], [INSTRUCTION] * b), seed=seed * 100 + n) for n in range(chunks)]
    terminated = np.zeros((b, chunks, K), bool)
    truncated = np.zeros((b, chunks, K), bool)
    terminated[np.asarray(success), -1, -1] = True
    truncated[~np.asarray(success), -1, -1] = True
    rewards = np.zeros((b, chunks, K), np.float32)
    rewards[np.asarray(success), -1, -1] = 1.0
    values = np.stack([o.values for o in outputs], axis=1)
    return TrajectoryBatch(
        images=images, instructions=[INSTRUCTION] * b,
        tokens=np.stack([o.tokens for o in outputs], axis=1), logprobs=np.stack([o.logprobs for o in outputs], axis=1),
        rewards=rewards, terminated=terminated, truncated=truncated, success=np.asarray(success, bool),
        group_ids=np.asarray(group_ids if group_ids is not None else np.arange(b) // 2, np.int64),
        values=values, next_values=np.concatenate([values[:, 1:], np.zeros((b, 1), np.float32)], axis=1),
    )


def weights(worker):
    return {k: v.clone() for k, v in worker.policy.state_dict().items()}


def changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


# --- the learner ------------------------------------------------------------------------------
def test_grpo_update_moves_the_policy_and_reports_metrics(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2, minibatch_size=4), ActorConfig(lr=1e-2), 0)
    before = weights(actor)
    metrics = actor.update(make_batch(policy_dir, [True, False, True, False]), iteration=0)
    assert changed(before, weights(actor))
    assert metrics["train/actor/num_samples"] == 12  # 4 trajectories x 3 valid chunks
    assert metrics["train/actor/num_updates"] == 3  # ceil(12 / 4) minibatches, 1 epoch
    assert metrics["rollout/zero_variance_groups"] == 0
    assert metrics["train/actor/ratio_mean"] == pytest.approx(1.0, abs=0.05)
    assert all(math.isfinite(v) for v in metrics.values())
    assert actor.reference is None  # kl_coef == 0: no reference policy is held


@pytest.mark.parametrize("target_kl, expected_updates", [(None, 9), (1e-6, 1)])
def test_target_kl_stops_the_update_once_the_policy_leaves_the_trust_region(policy_dir, target_kl, expected_updates):
    # 12 valid chunks, minibatches of 4, 3 epochs: 9 steps unless the KL stop ends the update after the first.
    algorithm = AlgorithmConfig(group_size=2, minibatch_size=4, update_epochs=3, target_kl=target_kl)
    actor = ActorWorker(policy_cfg(policy_dir), algorithm, ActorConfig(lr=1e-2), 0)
    metrics = actor.update(make_batch(policy_dir, [True, False, True, False]), iteration=0)
    assert metrics["train/actor/num_updates"] == expected_updates
    assert metrics["train/actor/kl_early_stopped"] == float(target_kl is not None)


@pytest.mark.parametrize("temperature", [0.5, 1.6])
def test_learner_scores_tokens_at_the_rollout_temperature(policy_dir, temperature):
    # Before the weights move (the first minibatch of the first epoch) the ratio must be exactly 1.
    algorithm = AlgorithmConfig(group_size=2, minibatch_size=12)
    actor = ActorWorker(policy_cfg(policy_dir, temperature), algorithm, ActorConfig(lr=1e-2), 0)
    metrics = actor.update(make_batch(policy_dir, [True, False, True, False], temperature=temperature), iteration=0)
    assert metrics["train/actor/num_updates"] == 1
    assert metrics["train/actor/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["train/actor/approx_kl"] == pytest.approx(0.0, abs=1e-6)


def test_kl_reference_of_a_fresh_policy_is_its_start():
    # policy.path null: the reference is built fresh too, and must be the same start, also in a resumed run
    model = {"chunk_size": K, "num_bins": 8, "encoder_channels": [4], "image_grid": 2, "hidden_dim": 16,
             "num_layers": 1, "num_heads": 2, "mlp_ratio": 2, "image_size": IMAGE, "action_dim": A,
             "action_q01": [-1.0] * A, "action_q99": [1.0] * A}
    algorithm = AlgorithmConfig(group_size=2, kl_coef=0.1)
    def actor(seed):
        return ActorWorker({"path": None, "model": model}, algorithm, ActorConfig(lr=1e-2), seed)

    first = actor(0)
    assert not changed(weights(first), first.reference.state_dict())
    assert not changed(weights(first), weights(actor(0)))  # a resumed run rebuilds the same reference
    assert changed(weights(first), weights(actor(1)))  # the run's seed, not a constant, picks the start


def test_zero_variance_groups_are_filtered_out_of_the_update(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(lr=1e-2), 0)
    before = weights(actor)
    metrics = actor.update(make_batch(policy_dir, [False] * 4), iteration=0)
    assert metrics["train/actor/num_samples"] == 0 and metrics["train/actor/num_updates"] == 0
    assert not changed(before, weights(actor))


def test_ppo_uses_a_separate_value_learning_rate_and_trains_the_value_head(policy_dir):
    algorithm = AlgorithmConfig(name="ppo", group_size=1, zero_variance_groups="keep", value_lr=3e-3, minibatch_size=6)
    actor = ActorWorker(policy_cfg(policy_dir), algorithm, ActorConfig(lr=1e-4), 0)
    assert {g["name"]: g["lr"] for g in actor.optimizer.param_groups} == {"policy": 1e-4, "value": 3e-3}
    before = weights(actor)
    metrics = actor.update(make_batch(policy_dir, [True, False, False, True]), iteration=0)
    assert "train/critic/value_loss" in metrics and metrics["train/critic/lr"] == 3e-3
    assert any(not torch.equal(before[k], v) for k, v in actor.policy.state_dict().items() if k.startswith("value_head."))


def test_frozen_modules_keep_their_weights_while_the_rest_trains(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2, minibatch_size=4),
                        ActorConfig(lr=1e-2, frozen_modules=["image_encoder", "queries"]), 0)
    before = weights(actor)
    actor.update(make_batch(policy_dir, [True, False, True, False]), iteration=0)
    after = weights(actor)
    frozen = [k for k in before if k.startswith("image_encoder.") or k == "queries"]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("trunk."))
    optimized = {id(p) for g in actor.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimized for n, p in actor.policy.named_parameters() if n.startswith("image_encoder."))


def test_frozen_modules_must_name_a_module_of_the_policy(policy_dir):
    with pytest.raises(ValueError, match=r"actor.frozen_modules: 'image_encodr'.*image_encoder"):
        ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(frozen_modules=["image_encodr"]), 0)


def test_freezing_every_policy_module_is_refused(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(), 0)
    modules = sorted({n.split(".")[0] for n, _ in actor.policy.named_parameters()} - {"value_head"})
    with pytest.raises(ValueError, match="freezes every policy parameter"):
        ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(frozen_modules=modules), 0)


def test_resuming_with_other_frozen_modules_is_refused_by_name(policy_dir):
    trained = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2, minibatch_size=4), ActorConfig(), 0)
    trained.update(make_batch(policy_dir, [True, False, True, False]), iteration=0)
    frozen = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2),
                         ActorConfig(frozen_modules=["image_encoder"]), 0)
    with pytest.raises(ValueError, match="resume with the actor.frozen_modules"):
        frozen.load_state_dict(trained.state_dict())
    same = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(), 0)
    same.load_state_dict(trained.state_dict())
    assert same.num_updates == trained.num_updates > 0


def test_kl_penalty_holds_a_frozen_reference_policy(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2, kl_coef=0.1), ActorConfig(lr=1e-2), 0)
    reference = {k: v.clone() for k, v in actor.reference.state_dict().items()}
    metrics = actor.update(make_batch(policy_dir, [True, False, True, False]), iteration=0)
    assert "train/actor/kl_ref" in metrics
    assert not changed(reference, actor.reference.state_dict())
    assert changed(reference, actor.policy.state_dict())


def test_nonfinite_losses_are_skipped_then_stop_the_run(policy_dir):
    algorithm = AlgorithmConfig(group_size=2, minibatch_size=6, max_consecutive_nonfinite=3)
    actor = ActorWorker(policy_cfg(policy_dir), algorithm, ActorConfig(lr=1e-2), 0)
    batch = make_batch(policy_dir, [True, False, True, False])
    batch.logprobs[:] = np.nan
    before = weights(actor)
    metrics = actor.update(batch, iteration=0)  # 12 samples / 6 = 2 minibatches, both NaN: skipped
    assert metrics["train/actor/skipped_nonfinite"] == 2 and metrics["train/actor/num_updates"] == 0
    assert not changed(before, weights(actor))
    with pytest.raises(NonFiniteLossError, match="max_consecutive_nonfinite"):
        actor.update(batch, iteration=1)  # the third NaN in a row


def test_nan_gradients_with_a_finite_loss_count_towards_the_stop(policy_dir):
    algorithm = AlgorithmConfig(group_size=2, minibatch_size=6, max_consecutive_nonfinite=3)
    actor = ActorWorker(policy_cfg(policy_dir), algorithm, ActorConfig(lr=1e-2), 0)
    batch = make_batch(policy_dir, [True, False, True, False])
    first = next(actor.policy.parameters())
    first.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    before = weights(actor)
    metrics = actor.update(batch, iteration=0)
    assert metrics["train/actor/skipped_nonfinite"] == 2 and not changed(before, weights(actor))
    with pytest.raises(NonFiniteLossError):
        actor.update(batch, iteration=1)


def test_offload_moves_state_to_cpu_and_blocks_updates_until_onload(policy_dir):
    actor = ActorWorker(policy_cfg(policy_dir), AlgorithmConfig(group_size=2), ActorConfig(lr=1e-2), 0)
    batch = make_batch(policy_dir, [True, False, True, False])
    actor.update(batch, iteration=0)
    moments = {i: s["exp_avg"].clone() for i, s in enumerate(actor.optimizer.state.values())}
    actor.offload()
    assert actor.placement() == {"offloaded": True, "policy_device": "cpu", "optimizer_devices": ["cpu"],
                                 "compute_device": "cpu"}
    with pytest.raises(RuntimeError, match="offloaded"):
        actor.update(batch, iteration=1)
    actor.onload()
    assert not actor.placement()["offloaded"]
    assert all(torch.equal(moments[i], s["exp_avg"]) for i, s in enumerate(actor.optimizer.state.values()))
    actor.update(batch, iteration=1)


def test_learner_state_round_trip_continues_identically(policy_dir, tmp_path):
    algorithm, actor_cfg = AlgorithmConfig(group_size=2, minibatch_size=4), ActorConfig(lr=1e-2)
    first = ActorWorker(policy_cfg(policy_dir), algorithm, actor_cfg, 7)
    first.update(make_batch(policy_dir, [True, False, True, False], seed=1), iteration=0)
    first.save_policy(str(tmp_path / "policy"))
    resumed = ActorWorker(policy_cfg(policy_dir), algorithm, actor_cfg, 7, resume_policy_dir=str(tmp_path / "policy"))
    resumed.load_state_dict(first.state_dict())
    batch = make_batch(policy_dir, [False, True, True, False], seed=2)
    untimed = lambda metrics: {k: v for k, v in metrics.items() if not k.startswith("time/")}  # noqa: E731
    assert untimed(first.update(batch, iteration=1)) == untimed(resumed.update(batch, iteration=1))
    assert not changed(weights(first), weights(resumed))


# --- rollout and env workers ------------------------------------------------------------------
def test_rollout_sampling_is_fixed_by_the_seed_and_follows_synced_weights(policy_dir):
    worker = RolloutWorker(policy_cfg(policy_dir))
    obs = Obs(np.random.default_rng(0).integers(0, 256, (3, IMAGE, IMAGE, 3), dtype=np.uint8), [INSTRUCTION] * 3)
    first, again, other = worker.act(obs, seed=5), worker.act(obs, seed=5), worker.act(obs, seed=6)
    assert np.array_equal(first.tokens, again.tokens) and not np.array_equal(first.tokens, other.tokens)
    new_weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in worker.policy.state_dict().items()}
    worker.set_weights(new_weights, version=3)
    assert worker.weights_version == 3 and not np.array_equal(worker.act(obs, seed=5).logprobs, first.logprobs)
    assert worker.take_busy_seconds() > 0 and worker.take_busy_seconds() == 0
    worker.offload()
    with pytest.raises(RuntimeError, match="offloaded"):
        worker.act(obs, seed=5)


def test_env_worker_wraps_a_chunk_env_by_env_type():
    env_cfg = dict(env_type="metaworld", task="drawer-open-v3", num_envs=2, image_size=[IMAGE, IMAGE], max_episode_steps=3)
    worker = EnvWorker(env_cfg, worker_index=1)
    try:
        assert worker.spec() == {"num_envs": 2, "action_dim": 4, "max_episode_steps": 3, "num_initial_states": 50,
                                 "chunk_size": None}
        with pytest.raises(ValueError, match="env worker 1: got 3 reset ids for 2 envs"):
            worker.reset([0, 0, 1])
        obs = worker.reset([4, 4], seed=0)
        assert obs.images.shape == (2, IMAGE, IMAGE, 3) and np.array_equal(obs.images[0], obs.images[1])
        next_obs, record = worker.chunk_step(np.zeros((2, 2, 4), np.float32))
        assert record["rewards"].shape == (2, 2) and record["info"]["success"].shape == (2,)
        _, record = worker.chunk_step(np.zeros((2, 2, 4), np.float32))
        assert record["truncated"][:, 0].all()  # step 3 of max 3
        assert worker.take_busy_seconds() > 0 and worker.take_busy_seconds() == 0
    finally:
        worker.close()


# --- trajectories -----------------------------------------------------------------------------
def _obs(b, value):
    return Obs(np.full((b, 2, 2, 3), value, np.uint8), ["x"] * b)


def _output(b, value):
    from rlinf_wm.models.policy import PolicyOutput

    return PolicyOutput(actions=np.zeros((b, 1, 1), np.float32), tokens=np.full((b, 1, 1), value),
                        logprobs=np.full((b, 1, 1), -float(value), np.float32))


def test_builder_tracks_episode_ends_success_and_padding():
    builder = TrajectoryBuilder(np.array([7, 7]), ["x", "x"])
    steps = [  # env 0 succeeds in chunk 0; env 1 is truncated in chunk 1
        (np.array([[True], [False]]), np.zeros((2, 1), bool), [True, False]),
        (np.array([[True], [False]]), np.array([[False], [True]]), [True, True]),
    ]
    for n, (terminated, truncated, success) in enumerate(steps):
        builder.add_action(_obs(2, n), _output(2, n))
        builder.add_step({"rewards": np.zeros((2, 1), np.float32), "terminated": terminated, "truncated": truncated,
                          "info": {"success": np.array(success)}})
    assert builder.finished
    batch = builder.build()
    assert batch.success.tolist() == [True, True]
    assert batch.alive().tolist() == [[True, False], [True, True]]
    assert batch.episode_lengths().tolist() == [1, 2]
    short = TrajectoryBuilder(np.array([8]), ["y"])
    short.add_action(_obs(1, 9), _output(1, 9))
    short.add_step({"rewards": np.ones((1, 1), np.float32), "terminated": np.ones((1, 1), bool),
                    "truncated": np.zeros((1, 1), bool), "info": {"success": np.array([True])}})
    joined = TrajectoryBatch.concatenate([batch, short.build()])
    assert joined.tokens.shape == (3, 2, 1, 1) and joined.group_ids.tolist() == [7, 7, 8]
    assert joined.alive()[2].tolist() == [True, False] and joined.rewards[2, 1].sum() == 0
    assert joined.select(np.array([2])).instructions == ["y"]


def test_builder_ignores_success_reported_after_an_episode_ended():
    builder = TrajectoryBuilder(np.array([0]), ["x"])
    for success, truncated in ((False, True), (True, True)):
        builder.add_action(_obs(1, 0), _output(1, 0))
        builder.add_step({"rewards": np.zeros((1, 1), np.float32), "terminated": np.zeros((1, 1), bool),
                          "truncated": np.full((1, 1), truncated), "info": {"success": np.array([success])}})
    assert builder.build().success.tolist() == [False]


def test_builder_records_world_model_halts_and_the_runner_reports_their_share():
    from rlinf_wm.runners.embodied_runner import EmbodiedRunner

    builder = TrajectoryBuilder(np.array([0, 0, 1]), ["x"] * 3)
    # env 0 halts in chunk 0 (a halt reported again later does not matter); env 1 never; env 2 ends truncated in
    # chunk 0, so a halt reported for it afterwards is not its own
    for halted, truncated in (([True, False, False], [False, False, True]), ([True, False, True], [True, True, True])):
        builder.add_action(_obs(3, 0), _output(3, 0))
        builder.add_step({"rewards": np.zeros((3, 1), np.float32), "terminated": np.array([[True], [False], [False]]),
                          "truncated": np.array(truncated)[:, None], "info": {"success": np.zeros(3, bool),
                                                                               "halted": np.array(halted)}})
    batch = builder.build()
    assert batch.halted.tolist() == [True, False, False]
    assert batch.select(np.array([0, 2])).halted.tolist() == [True, False]
    assert EmbodiedRunner._env_metrics(batch)["env/halted"] == pytest.approx(1 / 3)
    plain = TrajectoryBuilder(np.array([2]), ["y"])
    plain.add_action(_obs(1, 0), _output(1, 0))
    plain.add_step({"rewards": np.zeros((1, 1), np.float32), "terminated": np.ones((1, 1), bool),
                    "truncated": np.zeros((1, 1), bool), "info": {"success": np.array([True])}})
    assert plain.build().halted is None and "env/halted" not in EmbodiedRunner._env_metrics(plain.build())
    assert TrajectoryBatch.concatenate([batch, batch]).halted.tolist() == [True, False, False] * 2


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "act", 1, 2) == derive_seed(0, "act", 1, 2)
    assert len({derive_seed(0, "act", i, b) for i in range(20) for b in range(5)}) == 100
    assert 0 <= derive_seed(123, "x") < 2**31


# --- placement --------------------------------------------------------------------------------
def _cfg(cluster):
    env = dict(env_type="metaworld", task="drawer-open-v3", num_envs=4)
    return validate({"task": "drawer-open-v3", "artifacts_dir": "out", "env": {"train": env, "eval": env},
                     "policy": {"path": "p"}, "algorithm": {"group_size": 2}, "cluster": cluster}, EmbodiedConfig)


def test_colocated_placement_is_one_bundle_with_every_workers_resources():
    cluster = {"mode": "colocated", "env": {"num_workers": 2, "num_cpus": 0.5}, "rollout": {"num_cpus": 0.25, "num_gpus": 0.5},
               "actor": {"num_cpus": 1, "num_gpus": 0.5}}
    bundles, index, strategy = placement_bundles(_cfg(cluster))
    assert bundles == [{"CPU": 2.25, "GPU": 1.0}] and strategy == "STRICT_PACK" and set(index.values()) == {0}


def test_disaggregated_placement_gives_each_worker_its_own_bundle_and_resources():
    cluster = {"mode": "disaggregated", "env": {"num_workers": 2, "num_cpus": 1, "resources": {"env_node": 1}},
               "rollout": {"num_cpus": 1, "resources": {"env_node": 1}}, "actor": {"num_cpus": 2, "resources": {"actor_node": 1}}}
    bundles, index, _ = placement_bundles(_cfg(cluster))
    assert bundles[index[("actor", 0)]] == {"CPU": 2.0, "actor_node": 1.0}
    assert [bundles[index[("env", i)]] for i in range(2)] == [{"CPU": 1.0, "env_node": 1.0}] * 2
    assert len(set(index.values())) == 4


def test_config_dataclasses_are_picklable_for_ray():
    import pickle

    cfg = _cfg({})
    assert pickle.loads(pickle.dumps(cfg)) == cfg and dataclasses.is_dataclass(cfg.algorithm)


# --- DAPO dynamic sampling --------------------------------------------------------------------
def _episodes(success, group_ids):
    b = len(success)
    done = np.ones((b, 1, 1), bool)
    return TrajectoryBatch(
        images=np.zeros((b, 1, 2, 2, 3), np.uint8), instructions=["x"] * b, tokens=np.zeros((b, 1, 1, 1), np.int64),
        logprobs=np.zeros((b, 1, 1, 1), np.float32), rewards=np.zeros((b, 1, 1), np.float32),
        terminated=done & np.asarray(success)[:, None, None], truncated=done & ~np.asarray(success)[:, None, None],
        success=np.asarray(success, bool), group_ids=np.asarray(group_ids, np.int64))


def test_resampling_replaces_zero_variance_groups_with_informative_ones():
    from rlinf_wm.runners.embodied_runner import resample_zero_variance_groups

    algorithm = AlgorithmConfig(group_size=2, zero_variance_groups="resample", max_resample_rounds=3)
    base = _episodes([True, False, False, False, True, True], [0, 0, 1, 1, 2, 2])  # only group 0 informative
    extra_rounds = [_episodes([False, True, False, False, False, False], [10, 10, 11, 11, 12, 12]),
                    _episodes([True, False, True, False, True, True], [20, 20, 21, 21, 22, 22])]
    batch, rounds = resample_zero_variance_groups(algorithm, base, lambda k: extra_rounds[k])
    assert rounds == 2  # after round 1: groups 0, 10 informative (< 3), after round 2: 0, 10, 20, 21
    assert batch.group_ids.tolist() == [0, 0, 10, 10, 20, 20]


def test_resampling_stops_after_max_rounds_and_keeps_the_batch_size():
    from rlinf_wm.runners.embodied_runner import resample_zero_variance_groups

    algorithm = AlgorithmConfig(group_size=2, zero_variance_groups="resample", max_resample_rounds=1)
    base = _episodes([False] * 4, [0, 0, 1, 1])
    batch, rounds = resample_zero_variance_groups(algorithm, base, lambda k: _episodes([True, False, True, True], [5, 5, 6, 6]))
    assert rounds == 1 and batch.group_ids.tolist() == [0, 0, 5, 5]  # informative 5, then base group 0 as filler
