"""Evaluate a policy checkpoint in the real simulator (success rate with a 95 % Wilson interval).

    python examples/embodiment/eval_embodied_agent.py --config-name eval_metaworld_drawer_open \
        policy_path=outputs/drawer-open-v3/sft/model [eval.num_episodes=100 eval.deterministic=false ...]
"""

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from rlinf_wm.config.policy_schema import EvalRunConfig
from rlinf_wm.config.validate import validate

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@hydra.main(config_path="../embodiment/config", config_name="eval_metaworld_drawer_open", version_base=None)
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    run = validate(resolved, EvalRunConfig)
    from rlinf_wm.runners.evaluate import run_evaluation  # after validation: bad keys fail fast

    summary = run_evaluation(run)
    brief = {k: v for k, v in summary.items() if k not in ("episodes", "env")}
    print(json.dumps(brief, indent=2))


if __name__ == "__main__":
    main()
