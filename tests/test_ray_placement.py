"""Worker placement on a simulated two-node Ray cluster (ray.cluster_utils.Cluster).

Node A offers ``env_node`` and node B ``actor_node`` custom resources, as ``ray start --resources``
would on real machines (docs/ray_cluster.md)."""

import importlib.util
from dataclasses import asdict
from pathlib import Path

import pytest
import ray
import torch
from hydra import compose, initialize_config_dir
from ray.cluster_utils import Cluster

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.runners.worker_group import WorkerGroup
from rlinf_wm.utils.checkpoint import save_model_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "examples" / "embodiment" / "config"

pytestmark = pytest.mark.ray


def _prepare():
    spec = importlib.util.spec_from_file_location("train_embodied_agent", ROOT / "examples/embodiment/train_embodied_agent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 2, "resources": {"env_node": 4}, "include_dashboard": False})
    actor_node = cluster.add_node(num_cpus=2, resources={"actor_node": 2})
    cluster.wait_for_nodes()
    yield {"env": cluster.head_node.node_id, "actor": actor_node.node_id}
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    config = TinyVLAConfig(chunk_size=4, num_bins=8, encoder_channels=[4], image_grid=2, hidden_dim=16, num_layers=1,
                           num_heads=2, mlp_ratio=2, image_size=16, action_dim=4, action_q01=[-1.0] * 4,
                           action_q99=[1.0] * 4)
    path = tmp_path_factory.mktemp("policy") / "model"
    torch.manual_seed(0)
    save_model_atomic(TinyVLA(config), path)
    return str(path)


def start_workers(policy_path, log_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg, _ = _prepare()(compose("metaworld_drawer_open_grpo_tinyvla_realsim", overrides=[
            f"policy.path={policy_path}", f"runner.log_dir={log_dir}", "env.train.num_envs=4",
            "algorithm.group_size=2", "env.train.image_size=[16,16]", *overrides]))
    group = WorkerGroup(cfg, {"path": cfg.policy.path, "model": asdict(cfg.policy.model), "temperature": 1.0})
    group.start()
    return group


def test_disaggregated_puts_env_and_rollout_workers_on_one_node_and_the_actor_on_the_other(
        two_nodes, policy_path, tmp_path):
    group = start_workers(policy_path, tmp_path, "cluster=disaggregated", "cluster.env.num_cpus=0.5",
                          "cluster.rollout.num_cpus=0.5", "cluster.actor.num_cpus=1")
    try:
        group.wait_ready()
        nodes = group.node_ids()
    finally:
        group.shutdown()
    assert nodes == {"env worker 0": two_nodes["env"], "env worker 1": two_nodes["env"],
                     "rollout worker 0": two_nodes["env"], "actor worker 0": two_nodes["actor"]}


def test_colocated_packs_every_worker_on_one_node(two_nodes, policy_path, tmp_path):
    group = start_workers(policy_path, tmp_path, "cluster=local_colocated")
    try:
        group.wait_ready()
        nodes = group.node_ids()
    finally:
        group.shutdown()
    assert len(nodes) == 4 and len(set(nodes.values())) == 1


def test_unplaceable_workers_fail_with_a_message_naming_the_resources(two_nodes, policy_path, tmp_path):
    with pytest.raises(RuntimeError, match=r"cluster: Ray could not place the workers within .*gpu_node"):
        start_workers(policy_path, tmp_path, "cluster=disaggregated", "cluster.placement_timeout_s=3",
                      "+cluster.actor.resources.gpu_node=1")
