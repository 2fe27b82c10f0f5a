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


def _local_custom_resources(cluster) -> dict[str, float]:
    """Custom resources the config asks for, so a one-machine run of a multi-node config still places."""
    total: Counter = Counter()
    for group in (cluster.env, cluster.rollout, cluster.actor):
        for name, amount in group.resources.items():
            total[name] += amount * group.num_workers
    return dict(total)


def init_ray(cluster=None, address: str | None = None) -> str:
    """Start or join Ray and return a one-line description of where we are.

    ``address`` (else ``RAY_ADDRESS``) joins an existing cluster (started with ray_utils/start_ray.sh).
    Otherwise a local instance is started with ``address="local"``, so a stray cluster on this
    machine is never joined by accident; it is sized by ``cluster.local_num_cpus``/``local_num_gpus``
    and given the custom resources ``cluster`` asks for. A Ray already initialised in this process
    (a test fixture, a notebook) is reused.
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
    num_cpus = getattr(cluster, "local_num_cpus", None)
    num_gpus = getattr(cluster, "local_num_gpus", None)
    resources = _local_custom_resources(cluster) if cluster is not None else {}
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus,
             resources=resources or None, runtime_env=runtime_env)
    return f"started a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs)"
