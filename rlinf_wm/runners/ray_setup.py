"""Connect to a Ray cluster: the one at ``RAY_ADDRESS`` when set, else a fresh local one."""

from __future__ import annotations

import os
from collections import Counter

import ray

# Environment every worker process needs, wherever the cluster was started.
_WORKER_ENV_DEFAULTS = {"MUJOCO_GL": "egl", "RAY_USAGE_STATS_ENABLED": "0"}
_WORKER_ENV_PASSTHROUGH = ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "PYOPENGL_PLATFORM")


def _worker_env() -> dict[str, str]:
    env = {key: os.environ.get(key, default) for key, default in _WORKER_ENV_DEFAULTS.items()}
    env.update({key: os.environ[key] for key in _WORKER_ENV_PASSTHROUGH if key in os.environ})
    return env


def local_resources(cfg) -> tuple[float, dict[str, float]]:
    """CPUs and custom resources an embodied run asks for (workers + evaluation workers).

    A local instance declares at least these, so a one-machine run of any config places: Ray CPUs
    are scheduling tokens, and the components mostly take turns (colocated) anyway.
    """
    cluster = cfg.cluster
    cpus, custom = 0.0, Counter()
    for group in (cluster.env, cluster.rollout, cluster.actor):
        cpus += group.num_cpus * group.num_workers
        for name, amount in group.resources.items():
            custom[name] += amount * group.num_workers
    cpus += cfg.runner.eval_workers * max(cluster.env.num_cpus, 0.01)
    return cpus, dict(custom)


def init_ray(cfg=None, *, num_cpus: int | None = None, num_gpus: int | None = None, address: str | None = None) -> str:
    """Start or join Ray and return a one-line description of where we are.

    ``address`` (else ``RAY_ADDRESS``) joins an existing cluster (started with ray_utils/start_ray.sh).
    Otherwise a local instance is started with ``address="local"``, so a stray cluster on this
    machine is never joined by accident. ``cfg`` (an :class:`EmbodiedConfig`) sizes it:
    ``cluster.local_num_cpus`` / ``local_num_gpus`` (null: this machine's cores, raised to what the
    workers ask for) and the custom resources the placement asks for. A Ray already initialised in
    this process (a test fixture, a notebook) is reused.
    """
    if ray.is_initialized():
        return "reusing the Ray instance already initialised in this process"
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": _worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        return f"joined the Ray cluster at {address}"
    # Authentication protects shared clusters; a private local instance does not need it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    resources: dict[str, float] = {}
    if cfg is not None:
        needed_cpus, resources = local_resources(cfg)
        if num_cpus is None:
            num_cpus = cfg.cluster.local_num_cpus or max(os.cpu_count() or 1, int(-(-needed_cpus // 1)))
        if num_gpus is None:
            num_gpus = cfg.cluster.local_num_gpus
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
             resources=resources or None, runtime_env=runtime_env)
    return f"started a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs)"
