"""Supervised fine-tuning of the VLA policy on expert demonstrations.

    python examples/sft/train_sft.py --config-name sft_metaworld_drawer_open [sft.num_demos=20 ...]
"""

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from rlinf_wm.config.policy_schema import SFTRunConfig
from rlinf_wm.config.validate import validate


@hydra.main(config_path="../embodiment/config", config_name="sft_metaworld_drawer_open", version_base=None)
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    run = validate(resolved, SFTRunConfig)
    from rlinf_wm.runners.sft import run_sft  # after validation: a bad key fails before torch loads

    summary = run_sft(run, resolved_config=resolved)
    logging.getLogger(__name__).info("SFT done: %s", summary)
    print(OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in summary.items() if k != "final_metrics"})))
    print("final metrics:", summary["final_metrics"])


if __name__ == "__main__":
    main()
