"""Supervised fine-tuning of the VLA policy on expert demonstrations.

    python examples/sft/train_sft.py --config-name sft_metaworld_drawer_open [sft.num_demos=20 ...]

Writes ${output_dir}/model (the policy), checkpoints/, tensorboard/, config.yaml and summary.json;
rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

# Runnable from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from rlinf_wm.config.policy_schema import SFTRunConfig  # noqa: E402
from rlinf_wm.config.validate import ConfigError, validate  # noqa: E402


@hydra.main(config_path="../embodiment/config", config_name="sft_metaworld_drawer_open", version_base=None)
def main(raw_cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    resolved = OmegaConf.to_container(raw_cfg, resolve=True)
    try:
        run = validate(resolved, SFTRunConfig)
    except ConfigError as error:
        sys.exit(f"invalid config: {error}")
    from rlinf_wm.runners.sft import run_sft  # after validation: a bad key fails before torch loads

    summary = run_sft(run, resolved_config=resolved)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
