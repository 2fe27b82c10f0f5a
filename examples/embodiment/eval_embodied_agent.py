"""Evaluate a policy checkpoint in the real simulator (success rate with a 95 % Wilson interval).

    python examples/embodiment/eval_embodied_agent.py --config-name eval_metaworld_drawer_open \
        policy_path=outputs/drawer-open-v3/sft/model [eval.num_episodes=100 eval.deterministic=false ...]

Writes ${eval.output_dir}/summary.json and a few episode videos. Uses the Ray cluster at
$RAY_ADDRESS, or starts a local one (eval.num_workers=0 runs in this process without Ray).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Runnable from a checkout without installing; Ray hands this sys.path to its workers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rlinf_wm.config.policy_schema import EvalRunConfig  # noqa: E402
from rlinf_wm.config.validate import ConfigError, validate  # noqa: E402


@hydra.main(config_path="../embodiment/config", config_name="eval_metaworld_drawer_open", version_base=None)
def main(raw_cfg: DictConfig) -> None:
    try:
        run = validate(raw_cfg, EvalRunConfig)
    except ConfigError as error:
        sys.exit(f"invalid config: {error}")
    from rlinf_wm.runners.evaluate import run_evaluation  # after validation: bad keys fail fast

    summary = run_evaluation(run)
    brief = {k: v for k, v in summary.items() if k not in ("episodes", "env")}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
