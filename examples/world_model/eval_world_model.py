"""Evaluate a trained world model open-loop on held-out episodes (PSNR/SSIM per horizon against the "repeat"
and "shuffled actions" baselines, reward-model agreement), writing eval_summary.json, a side-by-side video and an
image grid to ``eval.output_dir``:

    python examples/world_model/eval_world_model.py --config-name world_model_metaworld_drawer_open \
        [eval.num_chunks=9] [eval.guidance=1.0] [eval.output_dir=...]

Prints the headline numbers as one JSON object on the last line.
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
    from rlinf_wm.runners.eval_world_model import evaluate_world_model, headline

    summary = evaluate_world_model(config)
    logging.getLogger(__name__).info("evaluation written to %s", config.eval.output_dir)
    print(json.dumps(headline(summary)))


if __name__ == "__main__":
    main()
