"""Create the env, rollout and actor workers in Ray placement groups, and restart the ones that die.

Placement follows ``cluster.mode``:

* ``colocated``: one placement group with ONE bundle holding every worker's resources, packed on
  one node; the components time-share it (idle ones offload).
* ``disaggregated``: one bundle per worker, each with its component's resources, so custom
  resources (``env_node``, ``actor_node``) or GPUs put components on different nodes/devices.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlinf_wm.config.embodied_schema import EmbodiedConfig, WorkerGroupConfig
from rlinf_wm.runners.rollout_collection import WorkerRef, first_line
from rlinf_wm.workers.actor_worker import ActorWorker
from rlinf_wm.workers.env_worker import EnvWorker
from rlinf_wm.workers.rollout_worker import RolloutWorker

logger = logging.getLogger(__name__)


def _threads(group: WorkerGroupConfig) -> int:
    return max(1, int(group.num_cpus))


def placement_bundles(cfg: EmbodiedConfig) -> tuple[list[dict[str, float]], dict[tuple[str, int], int], str]:
    """Bundles, the bundle index of each (component, worker index), and the placement strategy."""
    cluster = cfg.cluster
    members = [("env", i, cluster.env) for i in range(cluster.env.num_workers)]
    members += [("rollout", i, cluster.rollout) for i in range(cluster.rollout.num_workers)]
    members += [("actor", 0, cluster.actor)]
    if cluster.mode == "colocated":
        total: Counter = Counter()
        for _, _, group in members:
            total.update(group.bundle())
        bundle = {k: float(v) for k, v in total.items() if v > 0} or {"CPU": 0.01}
        return [bundle], {(kind, i): 0 for kind, i, _ in members}, "STRICT_PACK"
    bundles, index = [], {}
    for kind, i, group in members:
        index[(kind, i)] = len(bundles)
        bundles.append(group.bundle() or {"CPU": 0.01})
    return bundles, index, "PACK"


class WorkerGroup:
    """All workers of one run; ``env``/``rollout`` are lists of :class:`WorkerRef`, ``actor`` one."""

    def __init__(self, cfg: EmbodiedConfig, policy_cfg: dict[str, Any], resume_policy_dir: str | None = None):
        self.cfg = cfg
        self.policy_cfg = policy_cfg
        self.resume_policy_dir = resume_policy_dir
        self.env: list[WorkerRef] = []
        self.rollout: list[WorkerRef] = []
        self.actor: WorkerRef | None = None
        self.restarts: list[str] = []
        self._pg = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        bundles, self._bundle_of, strategy = placement_bundles(self.cfg)
        self._pg = placement_group(bundles, strategy=strategy, name="")
        timeout = self.cfg.cluster.placement_timeout_s
        try:
            ray.get(self._pg.ready(), timeout=timeout)
        except GetTimeoutError:
            available = ray.available_resources()
            remove_placement_group(self._pg)
            self._pg = None
            raise RuntimeError(
                f"cluster: Ray could not place the workers within cluster.placement_timeout_s={timeout}s "
                f"(mode={self.cfg.cluster.mode}, bundles={bundles}, strategy={strategy}); the cluster has "
                f"{ {k: v for k, v in available.items() if not k.startswith('node:')} } free. Lower the "
                "cluster.*.num_cpus/num_gpus, or start nodes with the custom resources the config asks for."
            ) from None
        self.env = [self._make("env", i) for i in range(self.cfg.cluster.env.num_workers)]
        self.rollout = [self._make("rollout", i) for i in range(self.cfg.cluster.rollout.num_workers)]
        self.actor = self._make("actor", 0)

    def _make(self, kind: str, index: int) -> WorkerRef:
        cluster = self.cfg.cluster
        group = {"env": cluster.env, "rollout": cluster.rollout, "actor": cluster.actor}[kind]
        options = dict(
            num_cpus=group.num_cpus,
            num_gpus=group.num_gpus,
            resources=dict(group.resources),
            max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self._pg, placement_group_bundle_index=self._bundle_of[(kind, index)]
            ),
        )
        use_gpu = group.num_gpus > 0
        if kind == "env":
            env_cfg = asdict(self.cfg.env.train)
            env_cfg["num_envs"] = self.cfg.env.train.num_envs // cluster.env.num_workers
            handle = ray.remote(EnvWorker).options(**options).remote(env_cfg, index, _threads(group))
        elif kind == "rollout":
            handle = ray.remote(RolloutWorker).options(**options).remote(
                self.policy_cfg, index, _threads(group), use_gpu
            )
        else:
            handle = ray.remote(ActorWorker).options(**options).remote(
                self.policy_cfg, self.cfg.algorithm, self.cfg.actor, self.cfg.runner.seed,
                _threads(group), use_gpu, self.resume_policy_dir,
            )
        return WorkerRef(f"{kind} worker {index}", handle)

    def wait_ready(self) -> None:
        """Block until every worker has finished its constructor; a failing one is named."""
        for worker in [*self.env, *self.rollout, self.actor]:
            try:
                ray.get(worker.handle.ping.remote())
            except ray.exceptions.RayError as error:
                raise RuntimeError(f"{worker.name} failed to start: {first_line(error)}") from error

    def shutdown(self) -> None:
        # Close simulators first (their GL contexts do not survive a kill), then free the processes.
        closing = [w.handle.close.remote() for w in self.env]
        ray.wait(closing, num_returns=len(closing), timeout=30)
        for worker in [*self.env, *self.rollout, *([self.actor] if self.actor else [])]:
            try:
                ray.kill(worker.handle)
            except Exception:  # noqa: BLE001  (already dead)
                pass
        self.env, self.rollout, self.actor = [], [], None
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    # --- fault tolerance ----------------------------------------------------------------------
    def dead_workers(self, timeout_s: float = 30.0) -> list[tuple[WorkerRef, str]]:
        """Env and rollout workers that no longer answer, with the reason Ray gives."""
        refs = {worker.name: (worker, worker.handle.ping.remote()) for worker in [*self.env, *self.rollout]}
        dead = []
        for worker, ref in refs.values():
            try:
                ray.get(ref, timeout=timeout_s)
            except ray.exceptions.RayActorError as error:
                dead.append((worker, first_line(error)))
            except GetTimeoutError:
                dead.append((worker, f"did not answer a ping within {timeout_s}s"))
        return dead

    def restart(self, worker: WorkerRef) -> WorkerRef:
        """Replace a dead env/rollout worker by a fresh one in the same bundle (same node)."""
        kind, index = worker.name.split(" worker ")
        index = int(index)
        try:
            ray.kill(worker.handle)  # a hung-but-alive worker must release its bundle share
        except Exception:  # noqa: BLE001
            pass
        fresh = self._make(kind, index)
        (self.env if kind == "env" else self.rollout)[index] = fresh
        self.restarts.append(worker.name)
        return fresh

    def node_ids(self) -> dict[str, str]:
        """Node id of every worker (tests check the placement with it)."""
        workers = [*self.env, *self.rollout, self.actor]
        return dict(zip([w.name for w in workers], ray.get([w.handle.node_id.remote() for w in workers])))
