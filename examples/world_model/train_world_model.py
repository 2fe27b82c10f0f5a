"""Train the world model (tokenizer -> latents -> DiT, and the reward model) into ``world_model_dir``.

    python examples/world_model/train_world_model.py --config-name world_model_metaworld_drawer_open \
        [stage=tokenizer|encode|dit|generate|reward|all] [force=true] [train.dit.steps=...]

Stages whose outputs exist are skipped (``force=true`` reruns them); an interrupted stage resumes from its last
checkpoint. Prints one JSON object (per-stage status and wall time) as the last line.
"""

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

# Runnable from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlinf_wm.config.validate import validate  # noqa: E402
from rlinf_wm.config.world_model_config import WorldModelConfig  # noqa: E402


@hydra.main(config_path="../embodiment/config", config_name="world_model_metaworld_drawer_open", version_base=None)
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    config = validate(resolved, WorldModelConfig)
    from rlinf_wm.runners.world_model_pipeline import run_stage  # after validation: a bad key fails before torch loads

    report = run_stage(config)
    logging.getLogger(__name__).info("world model %s: %s", config.stage, report)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
