"""Embodied RL (GRPO/PPO) of a VLA policy on Ray, in a real simulator or the world model.

    bash examples/embodiment/run_embodiment.sh metaworld_drawer_open_grpo_tinyvla_realsim [key=value ...]

or directly: ``python examples/embodiment/train_embodied_agent.py --config-name <config> [key=value ...]``.
The config is validated before Ray starts (errors name the key's full path); the resolved config is
written to ``${runner.log_dir}/config.yaml``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

# Runnable from a checkout without installing; Ray hands this sys.path to its workers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from rlinf_wm.config.embodied_schema import EmbodiedConfig, check_paths  # noqa: E402
from rlinf_wm.config.validate import ConfigError, validate  # noqa: E402
from rlinf_wm.utils.io import atomic_path  # noqa: E402


def prepare(cfg: DictConfig) -> tuple[EmbodiedConfig, dict]:
    """Validate the composed config and write it resolved to the run directory; no worker starts here."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_cfg = validate(resolved, EmbodiedConfig)
    check_paths(run_cfg)
    log_dir = Path(run_cfg.runner.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(log_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return run_cfg, resolved


@hydra.main(config_path="config", config_name="metaworld_drawer_open_grpo_tinyvla_realsim", version_base=None)
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        run_cfg, resolved = prepare(cfg)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)

    # Ray and the runner load only after the config is known to be good.
    from rlinf_wm.runners.embodied_runner import EmbodiedRunner
    from rlinf_wm.runners.ray_setup import init_ray

    print(f"[train_embodied_agent] {init_ray(run_cfg)}; log_dir={run_cfg.runner.log_dir}")
    try:
        metrics = EmbodiedRunner(run_cfg, resolved).run()
    except RuntimeError as error:
        # Worker deaths and failures arrive as messages naming the worker: print the message, keep the
        # traceback in the run directory.
        (Path(run_cfg.runner.log_dir) / "error.txt").write_text(traceback.format_exc())
        print(f"[train_embodied_agent] run failed: {error}", file=sys.stderr)
        sys.exit(1)
    keys = ("env/success_once", "eval/success_rate", "time/iteration")
    print("[train_embodied_agent] done: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics))


if __name__ == "__main__":
    main()
