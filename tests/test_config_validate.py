from dataclasses import dataclass, field
from typing import Literal

import pytest
from omegaconf import OmegaConf

from rlinf_wm.config.validate import ConfigError, dispatch_field, require, validate


@dataclass
class SimEnv:
    env_type: Literal["sim"]
    num_envs: int = 4
    image_size: list[int] = field(default_factory=lambda: [64, 64])


@dataclass
class DreamEnv:
    env_type: Literal["dream"]
    world_model_dir: str
    guidance: float = 7.0


@dataclass
class Algo:
    group_size: int = 4
    clip_ratio_c: float | None = None


@dataclass
class Experiment:
    env: SimEnv | DreamEnv = dispatch_field("env_type", {"sim": SimEnv, "dream": DreamEnv})
    algorithm: Algo = field(default_factory=Algo)

    def check(self, path: str) -> None:
        if isinstance(self.env, SimEnv):
            require(
                self.env.num_envs % self.algorithm.group_size == 0,
                "env.num_envs",
                f"{self.env.num_envs} is not divisible by algorithm.group_size={self.algorithm.group_size}",
            )


def test_valid_config_converts_to_dataclasses():
    cfg = OmegaConf.create({"env": {"env_type": "dream", "world_model_dir": "x", "guidance": 3}, "algorithm": {}})
    exp = validate(cfg, Experiment)
    assert isinstance(exp.env, DreamEnv) and exp.env.guidance == 3.0 and isinstance(exp.env.guidance, float)
    assert exp.algorithm.group_size == 4


@pytest.mark.parametrize(
    "env, algorithm, message",
    [
        ({"env_type": "sim", "num_env": 4}, {}, "env.num_env: unknown key"),
        ({"env_type": "sim", "num_envs": "four"}, {}, "env.num_envs: expected int"),
        ({"env_type": "sim", "num_envs": True}, {}, "env.num_envs: expected int"),
        ({"env_type": "sim", "image_size": [64, "a"]}, {}, "env.image_size[1]: expected int"),
        ({"env_type": "dream"}, {}, "env.world_model_dir: required key is missing"),
        ({"env_type": "mars"}, {}, "env.env_type: unknown value 'mars'"),
        ({"env_type": "sim", "num_envs": 6}, {"group_size": 4}, "env.num_envs: 6 is not divisible"),
        ({"env_type": "sim"}, {"clip_ratio_c": "x"}, "algorithm.clip_ratio_c"),
    ],
)
def test_errors_name_the_full_key_path(env, algorithm, message):
    with pytest.raises(ConfigError) as error:
        validate(OmegaConf.create({"env": env, "algorithm": algorithm}), Experiment)
    assert message in str(error.value)


def test_interpolations_are_resolved_before_validation():
    cfg = OmegaConf.create({"root": "r", "env": {"env_type": "dream", "world_model_dir": "${root}/wm"}})
    env = validate(cfg.env, DreamEnv, "env")
    assert env.world_model_dir == "r/wm"
