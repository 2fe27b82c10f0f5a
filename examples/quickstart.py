"""One command from a fresh clone to "RL in the world model improved real-simulator success".

Runs every stage whose output is missing or stale (made with other settings, or from a rebuilt input):
collect (scripted experts) -> SFT base policy -> evaluate base in the real simulator (its episodes are
recorded) -> train the world model on both -> GRPO in the world model -> evaluate after RL in the real
simulator, then prints a table. The world model trains on the base policy's real rollouts too: from scripted
data alone it judged nearly every policy episode a success (it had never seen the policy's failures). On
Meta-World it also trains on near misses that fail (collect_near_misses: the expert aiming beside the object).

    python examples/quickstart.py [--task drawer-open-v3|libero_spatial] [--smoke] [--force STAGE ...]
                                  [--override STAGE:KEY=VALUE ...]

``--smoke`` shrinks every stage to seconds (used by CI); it writes under outputs-smoke/ so it never
mixes with a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "examples" / "embodiment" / "config"  # every stage's Hydra configs


@dataclass(frozen=True)
class TaskConfigs:
    """Where a task's configs are: collect_<prefix>, sft_<prefix>, eval_<prefix>, world_model_<prefix> and
    <prefix>_grpo_tinyvla under examples/embodiment/config/."""

    prefix: str
    smoke_eval_envs: int  # envs per evaluation batch at smoke size (a LIBERO scene is ~1.5 GB)
    # The policy samples at this temperature in GRPO's rollouts and in both real-simulator evaluations, so the
    # base's recorded episodes (world-model training data) and both success rates are of the policy RL trains.
    temperature: float = 1.0
    # World-model replays of the base policy's recorded episodes, labelled with their real outcome, that the reward
    # model also trains on (train.reward_generated_episodes; 0 = none): it then judges generated frames, where the
    # world model's false successes are. Needs a per-frame tokenizer.
    reward_replays: int = 0
    # DiT steps of each later round's refit (--rounds): it continues from the previous round's DiT
    refine_dit_steps: int = 500
    # GRPO's KL penalty towards the round's start policy in later rounds: the refit model is only right near the
    # policy it was refit on; without it round 2 exploited the model (41 % real), with 1.0 it reached 53 %
    # (docs/results.md, 2026-12-04 sixth session)
    refine_kl_coef: float = 1.0
    # episodes of the mean-action evaluations: the GRPO config's runner.eval_episodes, whose end-of-run evaluation
    # (mean actions from initial states 0..n-1) the base's is compared with
    deterministic_episodes: int = 50
    # the configs are another task's: every stage's env gets this task (env.task, env.train.task, env.eval.task)
    retarget_env: bool = False
    # a collection of near misses that fail (collect_<prefix>_near_misses) joins the world model's data: the
    # counterexamples to the false successes GRPO exploits (Meta-World's scripted experts aim them)
    near_misses: bool = False
    # the world-model config's state model (train.state), which the env runs, is kept; the other tasks train none
    # (train.state.steps=0): its success rule, the object at the goal, is drawer-open's and not every task's
    state_model: bool = False


TASKS = {
    # The Gaussian-head base is nearly deterministic at 1 (docs/results.md, 2026-12-02)
    "drawer-open-v3": TaskConfigs("metaworld_drawer_open", smoke_eval_envs=4, temperature=4.0, reward_replays=100,
                                  near_misses=True, state_model=True),
    "libero_spatial": TaskConfigs("libero_spatial", smoke_eval_envs=1, deterministic_episodes=10),  # needs the libero extra
}


@dataclass
class Stage:
    name: str
    launcher: list[str]  # the command up to the Hydra config name
    config: str          # its config under examples/embodiment/config
    overrides: list[str]
    output_dir: Path   # everything it writes: emptied before a finished stage is rebuilt
    done_marker: Path  # written last by the stage: its output is complete
    smoke_overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    also_needs: Path | None = None  # an output that only some settings write (a cached stage without it reruns)
    needs: tuple[str, ...] = ()  # the stages whose outputs it reads: a rebuilt one makes it stale
    # it records its parts' settings and inputs and reruns only the stale ones (the world-model pipeline): a changed
    # setting or input reruns it on its output, which only --force empties
    caches_itself: bool = False

    @property
    def command(self) -> list[str]:
        return [*self.launcher, self.config, *self.overrides]

    def done(self) -> bool:
        return self.done_marker.exists() and (self.also_needs is None or self.also_needs.exists())

    def fingerprint(self) -> str:
        """Of a stage that caches itself: its done marker and per-part timings, which any part that ran rewrites."""
        import hashlib

        files = (self.done_marker, self.output_dir / "timings.json")
        return hashlib.sha256(b"".join(f.read_bytes() if f.is_file() else b"-" for f in files)).hexdigest()


def task_configs(task: str) -> TaskConfigs:
    """A task's configs; any other Meta-World task runs the drawer-open configs retargeted to it."""
    if task in TASKS:
        return TASKS[task]
    from rlinf_wm.envs.metaworld_env import available_tasks

    if task in available_tasks():
        return replace(TASKS["drawer-open-v3"], retarget_env=True, state_model=False)
    raise SystemExit(f"quickstart: no configs for task {task!r}; known: {sorted(TASKS)} and every Meta-World task "
                     f"({', '.join(available_tasks())})")


def build_stages(task: str, artifacts: Path, rounds: int = 1) -> list[Stage]:
    """The stages in order. Each round after the first is a Dyna-style refit: the world model is refined on the
    real rollouts recorded by the previous round's evaluation (the RL policy's own states, where it exploited the
    model), then GRPO continues from the previous round's policy in it."""
    if rounds < 1:
        raise SystemExit(f"quickstart: --rounds must be >= 1, got {rounds}")
    configs = task_configs(task)
    prefix = configs.prefix
    temperature = f"eval.temperature={configs.temperature}"
    smoke_eval = ["eval.num_episodes=4", "env.eval.max_episode_steps=16", "eval.num_workers=0",
                  f"env.eval.num_envs={configs.smoke_eval_envs}"]
    python = sys.executable
    common = [f"task={task}", f"artifacts_dir={artifacts}"]
    # the env keys of each kind of stage that name the task (the configs' env YAMLs are another task's)
    retarget = {kind: [f"{key}={task}" for key in keys] if configs.retarget_env else []
                for kind, keys in {"collect": ["env.task"], "eval": ["env.eval.task"],
                                   "grpo": ["env.train.task", "env.eval.task"]}.items()}
    replays, smoke_replays = [], []
    if configs.reward_replays:
        replays = [f"train.reward_generated_episodes={configs.reward_replays}", "train.reward_generated_kinds=[policy]"]
        smoke_replays = ["train.reward_generated_episodes=2"]
    state_model = [] if configs.state_model else ["train.state.steps=0"]
    smoke_state = ["++train.state.steps=2", "++train.state.horizon=4"] if configs.state_model else []

    def python_script(script: str) -> list[str]:
        return [python, script, "--config-name"]

    # a sampled evaluation records its episodes when a world model trains on them (the base's, and every round's
    # but the last): rendering every step costs it 2.6x the time
    def evaluation(name: str, policy: Path, out: Path, policy_stage: str, record: bool = True,
                   settings=(temperature,)) -> Stage:
        recording = ["eval.save_episodes=true"] if record else []
        return Stage(
            name, python_script("examples/embodiment/eval_embodied_agent.py"), f"eval_{prefix}",
            [*common, *retarget["eval"], f"policy_path={policy}", f"eval.output_dir={out}", *recording, *settings],
            out, out / "summary.json",
            smoke_eval,
            also_needs=out / "episodes" / "shard_00000.hdf5" if record else None,  # evaluate.EPISODES_FILE
            needs=(policy_stage,),
        )

    def world_model(name: str, out: Path, rollouts: dict[str, Path], refine: list[str], needs: tuple[str, ...]) -> Stage:
        return Stage(
            name, python_script("examples/world_model/train_world_model.py"), f"world_model_{prefix}",
            ["stage=all", *common, f"world_model_dir={out}", f"extra_data_dirs=[{','.join(map(str, rollouts.values()))}]",
             *replays, *state_model, *refine],
            out, out / "world_model.json",
            ["++train.tokenizer.steps=4", "++train.tokenizer.batch_size=4", "++train.reward.steps=4",
             "++train.reward.batch_size=8", "++train.dit.steps=4", "++train.dit.batch_size=4", "progress=false",
             "++train.dit.compile=false", "++train.distill.steps=2", "++train.distill.num_pairs=4",
             "++train.distill.pair_batch_size=4", "++train.distill.batch_size=4", "++train.distill.heldout_pairs=2",
             "++train.distill.compile=false", *smoke_replays, *smoke_state],  # compiling: longer than the 4 steps
            needs=("collect", *rollouts, *needs), caches_itself=True,
        )

    def grpo(name: str, out: Path, world_model_dir: Path, policy: list[str], needs: tuple[str, str]) -> Stage:
        return Stage(
            name, ["bash", "examples/embodiment/run_embodiment.sh"], f"{prefix}_grpo_tinyvla",
            [*common, *retarget["grpo"], f"policy.temperature={configs.temperature}",
             f"env.train.world_model_dir={world_model_dir}", *policy],
            out, out / "final" / "model" / "model.safetensors",
            ["runner.max_iterations=1", "runner.eval_interval=0", "env.train.num_envs=4", "algorithm.group_size=2",
             "env.train.max_episode_steps=8", "env.train.sampler.num_steps=2", "runner.progress_bar=false",
             "env.train.compile=false"],
            env={"LOG_DIR": str(out)},
            needs=needs,
        )

    def collection(name: str, config: str, out: Path, smoke: list[str]) -> Stage:
        return Stage(name, python_script("examples/collect/collect_data.py"), config, [*common, *retarget["collect"]],
                     out, out / "dataset_statistics.json", [*smoke, "progress_bar=false"])

    stages = [collection("collect", f"collect_{prefix}", artifacts / "data",
                         ["num_episodes=5", "episodes_per_shard=5", "env.max_episode_steps=110"])]
    rollouts = {"eval_base": artifacts / "eval_base" / "episodes"}  # the recorded real rollouts, by the stage writing them
    if configs.near_misses:
        stages.append(collection("collect_near_misses", f"collect_{prefix}_near_misses", artifacts / "near_misses",
                                 ["num_episodes=2", "episodes_per_shard=2", "env.max_episode_steps=16"]))
        rollouts["collect_near_misses"] = artifacts / "near_misses"
    sft = artifacts / "sft" / "model"
    stages += [
        Stage("sft", python_script("examples/sft/train_sft.py"), f"sft_{prefix}", list(common), sft.parent,
              sft / "model.safetensors", ["sft.max_steps=5", "sft.num_demos=-1"], needs=("collect",)),
        evaluation("eval_base", sft, artifacts / "eval_base", "sft"),
        # mean actions from initial states 0..n-1 once each: the protocol of GRPO's own end-of-run evaluation
        evaluation("eval_base_deterministic", sft, artifacts / "eval_base_deterministic", "sft",
                   record=False, settings=("eval.deterministic=true", f"eval.num_episodes={configs.deterministic_episodes}",
                                           "eval.num_videos=0")),
    ]
    world_model_dir, rl_dir, eval_dir = artifacts / "world_model", artifacts / "rl_grpo_wm", artifacts / "eval_rl"
    stages += [
        world_model("world_model", world_model_dir, rollouts, [], ()),
        grpo("grpo_world_model", rl_dir, world_model_dir, [], ("world_model", "sft")),
        evaluation("eval_rl", rl_dir / "final" / "model", eval_dir, "grpo_world_model", record=rounds > 1),
    ]
    previous = ""  # the previous round's stage-name suffix
    for r in range(2, rounds + 1):
        rollouts = {**rollouts, f"eval_rl{previous}": eval_dir / "episodes"}
        refined = artifacts / f"world_model_r{r}"
        next_rl, eval_dir = artifacts / f"rl_grpo_wm_r{r}", artifacts / f"eval_rl_r{r}"
        stages += [
            world_model(f"world_model_r{r}", refined, rollouts,
                        [f"refine_from={world_model_dir}", f"train.dit.steps={configs.refine_dit_steps}"],
                        (f"world_model{previous}",)),
            grpo(f"grpo_world_model_r{r}", next_rl, refined,
                 [f"policy.path={rl_dir / 'final'}", f"algorithm.kl_coef={configs.refine_kl_coef}"],
                 (f"world_model_r{r}", f"grpo_world_model{previous}")),
            evaluation(f"eval_rl_r{r}", next_rl / "final" / "model", eval_dir, f"grpo_world_model_r{r}", record=r < rounds),
        ]
        world_model_dir, rl_dir, previous = refined, next_rl, f"_r{r}"
    return stages


class MemorySampler(threading.Thread):
    """Peak resident memory of this process tree plus Ray's processes (sampled every 0.5 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_bytes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while True:  # at least one sample, even when every stage is cached
            total = 0
            try:
                processes = [me, *me.children(recursive=True)]
                processes += [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("ray::")]
                seen = set()
                for p in processes:
                    if p.pid in seen:
                        continue
                    seen.add(p.pid)
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak_bytes = max(self.peak_bytes, total)
            if self._halt.wait(0.5):
                break

    def stop(self) -> None:
        self._halt.set()


def run_stage(stage: Stage, log_dir: Path, env: dict) -> float:
    command = stage.command
    env = {**env, **stage.env}
    log_path = log_dir / f"{stage.name}.log"
    print(f"[quickstart] {stage.name}: {shlex.join(command)}  (log: {log_path})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"[quickstart] stage {stage.name} failed (exit {result.returncode}); last lines of {log_path}:\n{tail}")
    if not stage.done():
        raise SystemExit(f"[quickstart] stage {stage.name} finished but did not write {stage.done_marker}"
                         + (f" and {stage.also_needs}" if stage.also_needs else ""))
    return elapsed


def stage_settings(stage: Stage) -> dict:
    """The stage's composed Hydra config, interpolations unresolved and the repository's path as <root>: what its
    output was made with."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(stage.config, overrides=stage.overrides)
    settings = OmegaConf.to_container(config, resolve=False)
    for section in (settings, settings.get("runner", {})):  # progress bars change no output
        for key in ("progress", "progress_bar"):
            section.pop(key, None)
    return json.loads(json.dumps(settings, sort_keys=True).replace(str(ROOT), "<root>"))


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(old: dict, new: dict, limit: int = 4) -> str:
    old, new = flatten(old), flatten(new)
    changes = [f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
               for key in sorted(set(old) | set(new)) if old.get(key, "<unset>") != new.get(key, "<unset>")]
    return ", ".join(changes[:limit]) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def stale_reason(stage: Stage, record: dict | None, current: dict, rebuilt: set[str], forced: bool) -> str | None:
    """Why the stage has to run (None: its output is current). ``record`` is what its output was made with."""
    if not stage.done_marker.exists():
        return "no complete output yet"
    if not stage.done():
        return f"its output lacks {stage.also_needs}, which these settings need"
    if forced:
        return "forced"
    if record is None:  # made before the quickstart recorded settings: only a rebuilt input is known to matter
        changed = rebuilt.intersection(stage.needs)
        return f"rebuilt input(s): {', '.join(sorted(changed))}" if changed else None
    if not record.get("complete"):
        return "its last run did not finish"
    if record["config"] != current["config"]:
        return f"settings changed ({changed_settings(record['config'], current['config'])})"
    changed = [name for name in stage.needs if record["inputs"].get(name) != current["inputs"].get(name)]
    return f"rebuilt input(s): {', '.join(changed)}" if changed else None


def run_stages(stages: list[Stage], force: set[str], log_dir: Path, env: dict) -> dict[str, float | None]:
    """Run every stage whose output is missing, forced or stale (made with other settings, or from an input
    rebuilt since), in order; returns each stage's wall time (None: cached). Each stage's settings and the runs of
    its inputs are recorded in ``<log_dir>/<stage>.settings.json``."""
    from rlinf_wm.utils.io import read_json, write_json_atomic

    def record_path(stage: Stage) -> Path:
        return log_dir / f"{stage.name}.settings.json"

    records = {s.name: read_json(record_path(s)) if record_path(s).is_file() else None for s in stages}
    rebuilt: set[str] = set()
    wall_times: dict[str, float | None] = {}
    for stage in stages:
        current = {"config": stage_settings(stage),
                   "inputs": {name: (records.get(name) or {}).get("run") for name in stage.needs}}
        record = records[stage.name]
        reason = stale_reason(stage, record, current, rebuilt, stage.name in force)
        if reason is None:
            unknown = "; its settings were not recorded, --force it after a config change" if record is None else ""
            print(f"[quickstart] {stage.name}: cached ({stage.done_marker}{unknown})", flush=True)
            wall_times[stage.name] = None
            continue
        print(f"[quickstart] {stage.name}: runs: {reason}", flush=True)
        # an interrupted run resumes only with its settings and inputs and unforced; anything else starts afresh
        resumes = (not stage.done() and record is not None and record["config"] == current["config"]
                   and record["inputs"] == current["inputs"] and stage.name not in force)
        if not resumes and (stage.name in force or not stage.caches_itself):
            shutil.rmtree(stage.output_dir, ignore_errors=True)
        before = stage.fingerprint() if stage.caches_itself else None
        write_json_atomic(record_path(stage), {**current, "complete": False})
        wall_times[stage.name] = run_stage(stage, log_dir, env)
        # a stage that caches itself and found every part current keeps its run: the stages reading it stay current
        unchanged = before is not None and bool((record or {}).get("run")) and stage.fingerprint() == before
        if unchanged:
            print(f"[quickstart] {stage.name}: every part was current; the stages reading it stay cached", flush=True)
        records[stage.name] = {**current, "complete": True,
                              "run": record["run"] if unchanged else uuid.uuid4().hex,  # later stages' input record
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(record_path(stage), records[stage.name])
        if not unchanged:
            rebuilt.add(stage.name)
    return wall_times


def read_summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def format_rate(summary: dict) -> str:
    if not summary:
        return "n/a"
    rate = summary.get("success_rate")
    low, high = summary.get("success_rate_ci95", (float("nan"), float("nan")))
    n = summary.get("num_episodes")
    return f"{100 * rate:5.1f} %  [{100 * low:.1f}, {100 * high:.1f}]  (n={n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="drawer-open-v3",
                        help=f"{' | '.join(sorted(TASKS))} | any other Meta-World task (with drawer-open's configs)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings for CI (seconds per stage)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="RL rounds; each after the first refines the world model on the last policy's real rollouts")
    parser.add_argument("--force", nargs="*", default=[], help="stages to rebuild even when current (the stages reading them follow)")
    parser.add_argument("--override", nargs="*", default=[], metavar="STAGE:KEY=VALUE",
                        help="a Hydra override for one stage, e.g. world_model:train.dit.steps=1500")
    args = parser.parse_args()

    configs = task_configs(args.task)  # before anything is written for a misspelt task
    artifacts = ROOT / ("outputs-smoke" if args.smoke else "outputs") / args.task
    log_dir = artifacts / "quickstart_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable}
    stages = build_stages(args.task, artifacts, args.rounds)
    if args.smoke:  # before the --override ones, which win
        for stage in stages:
            stage.overrides += stage.smoke_overrides
    by_name = {s.name: s for s in stages}
    unknown = set(args.force) - set(by_name)
    if unknown:
        raise SystemExit(f"quickstart: unknown stage(s) {sorted(unknown)}; stages: {list(by_name)}")
    for item in args.override:
        name, _, override = item.partition(":")
        if name not in by_name or "=" not in override:
            raise SystemExit(f"quickstart: --override {item!r} is not STAGE:KEY=VALUE with a stage of {list(by_name)}")
        by_name[name].overrides.append(override)

    sampler = MemorySampler()
    sampler.start()
    total_start = time.perf_counter()
    wall_times = run_stages(stages, set(args.force), log_dir, env)
    sampler.stop()
    sampler.join()
    total = time.perf_counter() - total_start

    base = read_summary(artifacts / "eval_base" / "summary.json")
    suffixes = [""] + [f"_r{r}" for r in range(2, args.rounds + 1)]  # the stage and directory names of each round
    after = [read_summary(artifacts / f"eval_rl{suffix}" / "summary.json") for suffix in suffixes]
    rl_metrics = [read_summary(artifacts / f"rl_grpo_wm{suffix}" / "summary.json").get("last_metrics", {})
                  for suffix in suffixes]
    imagined = rl_metrics[-1].get("env/success_once")
    # GRPO's end-of-run evaluation, in the shape of an evaluation summary
    after_deterministic = [{"success_rate": m["eval/success_rate"], "num_episodes": int(m["eval/num_episodes"]),
                            "success_rate_ci95": (m["eval/success_rate_lower"], m["eval/success_rate_upper"])}
                           if "eval/success_rate" in m else {} for m in rl_metrics]
    base_deterministic = read_summary(artifacts / "eval_base_deterministic" / "summary.json")
    temperature = f"T={configs.temperature:g}"
    label = [f"after GRPO in the world model{f' round {r}' if args.rounds > 1 else ''}" for r in range(1, args.rounds + 1)]
    table = [(f"base policy (SFT), real success, {temperature}", format_rate(base))]
    table += [(f"{name}, real success, {temperature}", format_rate(rate)) for name, rate in zip(label, after)]
    table += [("base policy (SFT), real success, mean actions", format_rate(base_deterministic))]
    table += [(f"{name}, real success, mean actions", format_rate(rate)) for name, rate in zip(label, after_deterministic)]
    table += [("imagined success, last RL iteration", "n/a" if imagined is None else f"{100 * imagined:5.1f} %")]
    table += [(f"wall time: {name}", "cached" if t is None else f"{t / 60:.1f} min") for name, t in wall_times.items()]
    table += [("wall time: total", f"{total / 60:.1f} min"), ("peak memory (process tree + Ray)", f"{sampler.peak_bytes / 2**30:.2f} GiB")]
    # the same commit builds other models on other CPUs: a table names its machine (torch is imported only now, after
    # the memory sampler stopped)
    from rlinf_wm.utils.io import write_json_atomic
    from rlinf_wm.utils.machine import describe_machine, machine_label

    machine = describe_machine()
    table += [("machine", machine_label(machine))]
    width = max(len(k) for k, _ in table)
    print("\n" + "\n".join(f"| {k:<{width}} | {v} |" for k, v in table))
    result = {"task": args.task, "smoke": args.smoke, "rounds": args.rounds, "base": base,
              "after_rl": after[-1], "after_rl_by_round": after,
              "base_deterministic": base_deterministic, "after_rl_deterministic_by_round": after_deterministic,
              "imagined_success": imagined,
              "wall_time_s": wall_times, "total_s": total, "peak_memory_bytes": sampler.peak_bytes, "machine": machine}
    write_json_atomic(artifacts / "quickstart.json", result)


if __name__ == "__main__":
    main()
