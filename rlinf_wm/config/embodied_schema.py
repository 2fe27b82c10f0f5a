"""Schema of an embodied RL experiment (``examples/embodiment/config/<experiment>.yaml``).

The top level composes sections owned elsewhere: ``env.train`` / ``env.eval`` (one schema per
``env_type``, from :data:`rlinf_wm.config.env_schemas.ENV_SCHEMAS`), ``policy.model``
(:class:`TinyVLAConfig`) and ``algorithm`` (:class:`AlgorithmConfig`). This module adds the runner,
the learner (``actor``) and the Ray placement (``cluster``), and the rules that span sections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.env_schemas import ENV_SCHEMAS, IMAGINED_ENV_TYPES, check_env_task
from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.config.validate import ConfigError, dispatch_field, key_path, require


@dataclass
class RunnerConfig:
    log_dir: str = "logs/embodied"  # run_embodiment.sh sets a fresh timestamped directory
    max_iterations: int = 100
    # stop after the iteration in which this many env steps (summed over envs) have been collected; null = no
    # budget. Compares runs by the data they consumed, e.g. real-sim RL with as many steps as a world model saw.
    max_env_steps: int | None = None
    eval_interval: int = 10  # evaluate in the real simulator every N iterations (and after the last); 0 = never
    eval_episodes: int = 20  # episodes from initial states 0..N-1 (cycling), the same states every time
    # null: the policy's mean actions. A number: actions sampled at that temperature (the same sampling seed every
    # evaluation). Sampled at the rollouts' policy.temperature, the evaluation measures the policy RL trains, so
    # calibration/imagined_minus_real_success compares like with like.
    eval_temperature: float | None = None
    eval_workers: int = 1  # Ray actors running them, cluster.env.num_cpus each (0 = in the driver process)
    eval_videos: int = 2  # episodes recorded per evaluation under <log_dir>/eval/iter_N
    save_interval: int = 10  # checkpoint every N iterations (and after the last); 0 = only after the last
    seed: int = 0  # every reset id, reset seed and sampling seed derives from (seed, iteration, ...)
    resume_dir: str | None = None  # a checkpoints/iter_N directory, or a previous run's log_dir (latest)
    logger: Literal["tensorboard", "wandb"] = "tensorboard"
    wandb_project: str = "rlinf_wm"
    experiment_name: str | None = None  # W&B run name; default: the log_dir's name
    max_worker_restarts: int = 3  # restarts of crashed env/rollout workers per rollout round before giving up
    progress_bar: bool = True

    def check(self, path: str) -> None:
        for name in ("max_iterations", "eval_episodes"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "eval_workers", "eval_videos", "max_worker_restarts"):
            require(getattr(self, name) >= 0, f"{path}.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.eval_temperature is not None:
            require(self.eval_temperature > 0, f"{path}.eval_temperature",
                    f"must be > 0 or null (mean actions), got {self.eval_temperature}")
        if self.max_env_steps is not None:
            require(self.max_env_steps >= 1, f"{path}.max_env_steps", f"must be >= 1 or null, got {self.max_env_steps}")


@dataclass
class ActorConfig:
    """The learner. Clipping, epochs, minibatches and the value-head lr are in ``algorithm``."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    # Move weights and optimizer state to CPU while rollouts run (frees the accelerator for the
    # world model and the rollout policy when colocated).
    offload: bool = False
    # Policy modules RL leaves as they are, by parameter-name prefix (e.g. [image_encoder], as for a large
    # pretrained vision backbone). Frozen parameters get no gradient and no optimizer state.
    frozen_modules: list[str] = field(default_factory=list)

    def check(self, path: str) -> None:
        require(self.lr > 0, f"{path}.lr", f"must be > 0, got {self.lr}")
        require(all(isinstance(m, str) and m for m in self.frozen_modules), f"{path}.frozen_modules",
                f"must be a list of module names (parameter-name prefixes), got {self.frozen_modules}")
        require(self.weight_decay >= 0, f"{path}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), f"{path}.adam_betas",
                f"must be two numbers in [0, 1), got {self.adam_betas}")
        require(self.adam_eps > 0, f"{path}.adam_eps", f"must be > 0, got {self.adam_eps}")


@dataclass
class WorkerGroupConfig:
    """Ray resources of one component's workers (each worker asks for ``num_cpus``/``num_gpus``)."""

    num_workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Custom Ray resources each worker needs, e.g. {env_node: 1} to pin env workers to the nodes
    # started with `ray start --resources '{"env_node": 8}'`.
    resources: dict[str, float] = field(default_factory=dict)

    def check(self, path: str) -> None:
        require(self.num_workers >= 1, f"{path}.num_workers", f"must be >= 1, got {self.num_workers}")
        require(self.num_cpus >= 0, f"{path}.num_cpus", f"must be >= 0, got {self.num_cpus}")
        require(self.num_gpus >= 0, f"{path}.num_gpus", f"must be >= 0, got {self.num_gpus}")
        for name, amount in self.resources.items():
            require(amount > 0, f"{path}.resources.{name}", f"must be > 0, got {amount}")

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {k: v for k, v in bundle.items() if v > 0}


@dataclass
class ClusterConfig:
    # colocated: one placement-group bundle holds every worker; idle components offload.
    # disaggregated: one bundle per worker, placed by its resources (nodes, GPUs); nothing offloads.
    mode: Literal["colocated", "disaggregated"] = "colocated"
    env: WorkerGroupConfig = field(default_factory=lambda: WorkerGroupConfig(num_workers=2, num_cpus=0.5))
    rollout: WorkerGroupConfig = field(default_factory=lambda: WorkerGroupConfig(num_cpus=0.5))
    actor: WorkerGroupConfig = field(default_factory=WorkerGroupConfig)
    # Size of the Ray instance started when RAY_ADDRESS is unset (null: all cores of this machine).
    local_num_cpus: int | None = None
    local_num_gpus: int = 0
    placement_timeout_s: float = 120.0

    def check(self, path: str) -> None:
        require(self.actor.num_workers == 1, f"{path}.actor.num_workers",
                f"one learner is supported (data-parallel learners are not implemented), got {self.actor.num_workers}")
        require(self.rollout.num_workers <= self.env.num_workers, f"{path}.rollout.num_workers",
                f"{self.rollout.num_workers} rollout workers would leave some idle: at most "
                f"{path}.env.num_workers={self.env.num_workers} (each serves whole env batches)")
        require(self.placement_timeout_s > 0, f"{path}.placement_timeout_s", "must be > 0")

    @property
    def offload_idle(self) -> bool:
        return self.mode == "colocated"


@dataclass
class PolicySection:
    model: TinyVLAConfig = field(default_factory=TinyVLAConfig)  # architecture of a fresh policy (path: null)
    path: str | None = None  # save_pretrained directory (the SFT checkpoint); its config.json wins over `model`
    temperature: float = 1.0  # rollout sampling temperature; the learner scores tokens at the same one

    def check(self, path: str) -> None:
        require(self.temperature > 0, f"{path}.temperature", f"must be > 0, got {self.temperature}")
        if self.path is None:
            self.model.check_complete(f"{path}.model")


@dataclass
class EnvSection:
    train: Any = dispatch_field("env_type", ENV_SCHEMAS)
    eval: Any = dispatch_field("env_type", ENV_SCHEMAS)


@dataclass
class EmbodiedConfig:
    task: str
    artifacts_dir: str
    env: EnvSection
    policy: PolicySection
    algorithm: AlgorithmConfig
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self, path: str) -> None:
        at = key_path(path)
        train, evaluation = self.env.train, self.env.eval
        require(evaluation.env_type not in IMAGINED_ENV_TYPES, at("env.eval.env_type"),
                f"evaluation must run in a real simulator, got {evaluation.env_type!r}")
        for name, env in (("train", train), ("eval", evaluation)):
            check_env_task(env, self.task, at(f"env.{name}"))
        workers = self.cluster.env.num_workers
        require(train.num_envs % workers == 0, at("env.train.num_envs"),
                f"{train.num_envs} envs cannot be split evenly over cluster.env.num_workers={workers}")
        per_worker = train.num_envs // workers
        require(per_worker % self.algorithm.group_size == 0, at("env.train.num_envs"),
                f"{train.num_envs} envs over {workers} env workers gives {per_worker} per worker, not divisible "
                f"by algorithm.group_size={self.algorithm.group_size} (a GRPO group must live in one env batch)")
        # The env's graded rewards reach the advantages only through reward_type=sum; with `success` they are
        # silently replaced by the 0/1 outcome (a run in docs/results.md, 2026-12-03, was lost to this).
        if getattr(train, "reward_type", None) == "relative":
            require(self.algorithm.reward_type == "sum", at("algorithm.reward_type"),
                    "env.train.reward_type=relative gives graded rewards, which only algorithm.reward_type=sum uses; "
                    f"got {self.algorithm.reward_type!r}")
        if self.algorithm.uses_critic and self.policy.path is None:
            require(self.policy.model.value_head, at("policy.model.value_head"), "PPO needs a value head")
        if self.runner.logger == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError as error:
                raise ConfigError(f"{at('runner.logger')}: 'wandb' is not installed ({error}); use tensorboard") from None


def check_paths(cfg: EmbodiedConfig) -> None:
    """Files the run needs must exist: checked before Ray starts, naming the key that points there."""
    if cfg.policy.path is not None:
        from rlinf_wm.models.policy import resolve_policy_dir

        try:
            resolve_policy_dir(cfg.policy.path)
        except FileNotFoundError as error:
            raise ConfigError(f"policy.path: {error}; run SFT first, or set policy.path=null for a fresh policy") from None
    if cfg.runner.resume_dir is not None and not os.path.isdir(cfg.runner.resume_dir):
        raise ConfigError(f"runner.resume_dir: {cfg.runner.resume_dir} is not a directory")
    for name in ("train", "eval"):
        env = getattr(cfg.env, name)
        world_model_dir = getattr(env, "world_model_dir", None)
        if world_model_dir is not None and not os.path.isdir(world_model_dir):
            raise ConfigError(f"env.{name}.world_model_dir: {world_model_dir} does not exist; train the world model first")
