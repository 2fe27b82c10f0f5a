"""Collect scripted Meta-World trajectories (expert, perturbed and random episodes) as HDF5 shards.

    python examples/collect/collect_data.py --config-name collect_metaworld_drawer_open [key=value ...]

Uses the Ray cluster at $RAY_ADDRESS, or starts a local one. Rerunning after an interruption
collects only the missing shards.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Runnable from a checkout without installing; Ray hands this sys.path to its workers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rlinf_wm.config.env_schemas import CollectConfig  # noqa: E402
from rlinf_wm.config.validate import ConfigError, validate  # noqa: E402


@hydra.main(config_path="../embodiment/config", config_name="collect_metaworld_drawer_open", version_base=None)
def main(raw_cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        cfg = validate(raw_cfg, CollectConfig)
    except ConfigError as error:
        sys.exit(f"invalid config: {error}")

    from rlinf_wm.runners.collect import format_summary, run_collection

    if cfg.num_workers > 0:
        from rlinf_wm.runners.ray_setup import init_ray

        # A local cluster just big enough for the collectors (and at least the machine's cores).
        num_cpus = max(os.cpu_count() or 1, int(cfg.num_workers * cfg.num_cpus_per_worker + 0.999))
        logging.getLogger("collect").info(init_ray(num_cpus=num_cpus))
    summary = run_collection(cfg)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
