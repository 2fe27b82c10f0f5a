"""Imagined env-steps per second of WorldModelEnv against the real Meta-World simulator, and where the time goes.

Measured in one process, one run, interleaved (so load from other processes hits every variant alike; medians):

* imagined env-steps/s at batch 1 (a sequential loop over single envs, as a naive implementation would run them:
  each env its own sampler run per chunk), 16 and 64 (one sampler run per chunk for all envs);
* the real Meta-World env's rendered steps/s per process (``MetaWorldEnv``, 64x64, one env, stepped by chunks of
  the same K, so both produce one observation per chunk; K = 1, a render every step, is also reported);
* the DiT's achieved FLOP/s (torch's FLOP counter over one forward of the env's micro-batch) against this
  machine's fp32 matmul FLOP/s (1024^3 matmuls, from benchmarks/dit_flops.py), and against its matmul FLOP/s in
  the env's dtype;
* the env's dtype (``--dtype``, default ``auto``: bfloat16 where native) against float32 at the largest batch;
* ``torch.compile`` (``--compile``, default ``auto``: where a compiler is installed) against the eager env at the
  largest batch (every env runs one chunk first, so compiling is not timed);
* classifier-free guidance: a sampler run with w = 0 (the no-op: one branch) against a bare one-branch loop, and
  with w > 0 (both branches in one doubled-batch call) against one branch;
* the time split per chunk (DiT / decode / reward model / rest) from the env's ``timings``;
* env-steps/s at batch 64 for a few solver step counts, and with guidance limited to ``--guidance-interval``
  (default: every step but the last, at s = 0.01); quality vs either: benchmarks/wm_calibration.py;
* with ``--distilled``: every env above runs the world model's one-step student DiT (``stage=distill``), and the
  teacher env (the guided multi-step DiT) is measured beside it at the largest batch.

Models: the trained world model in ``--world-model-dir`` when it has a world_model.json, else randomly initialised
models of the default tiny config (examples/embodiment/config/model/wm_*.yaml: same shapes, same cost) with reset
frames rendered by Meta-World.

    .venv/bin/python benchmarks/wm_env_throughput.py [--world-model-dir outputs/drawer-open-v3/world_model]
        [--num-steps N] [--dtype auto|float32|bfloat16] [--compile auto|true|false] [--threads 1] [--repeats 3]
        [--distilled]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlinf_wm.envs.world_model_env import WorldModelEnv  # noqa: E402
from rlinf_wm.utils.compilation import resolve_compile  # noqa: E402
from rlinf_wm.utils.precision import resolve_dtype  # noqa: E402

TASK = "drawer-open-v3"
CONFIG = ROOT / "examples" / "embodiment" / "config"
NEVER = 2.0  # success threshold no probability reaches: no env stops during a measurement


def default_world_model_settings() -> dict:
    """chunk / window / sampler values of the shipped world-model config (what a trained model would record)."""
    cfg = OmegaConf.load(CONFIG / "world_model_metaworld_drawer_open.yaml")
    dit = cfg.train.dit
    return {
        "format_version": 1,
        "task": TASK,
        "num_cond_latent_frames": int(dit.num_cond_latent_frames),
        "chunk_size": int(dit.num_pred_latent_frames),  # per-frame tokenizer: one action per latent frame
        "action_scaler": float(dit.action_scaler),
        "sampler": OmegaConf.to_container(cfg.sampler),
    }


def random_world_model(root: Path, reset_frames: np.ndarray, instruction: str) -> Path:
    """Randomly initialised models of the default tiny config, saved in the world_model_pipeline layout."""
    from rlinf_wm.config.validate import validate
    from rlinf_wm.config.world_model_config import DiTConfig
    from rlinf_wm.config.world_model_schema import RewardModelConfig, TokenizerConfig
    from rlinf_wm.data.initial_states import InitialStates
    from rlinf_wm.data.statistics import ActionStatistics
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.reward_model import RewardModel
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.utils.checkpoint import save_model_atomic
    from rlinf_wm.utils.io import write_json_atomic

    import dataclasses

    tokenizer_cfg = validate(OmegaConf.load(CONFIG / "model" / "wm_tokenizer_per_frame.yaml"), TokenizerConfig)
    reward_cfg = validate(OmegaConf.load(CONFIG / "model" / "wm_reward_resnet.yaml"), RewardModelConfig)
    dit_cfg = validate(OmegaConf.load(CONFIG / "model" / "wm_dit_tiny.yaml"), DiTConfig).resolved(tokenizer_cfg, 4)
    save_model_atomic(VideoTokenizer(**dataclasses.asdict(tokenizer_cfg)).eval(), root / "tokenizer" / "model")
    dit = ActionDiT(**dataclasses.asdict(dit_cfg)).eval()
    with torch.no_grad():  # a fresh DiT zeroes its output layers; random weights everywhere (cost is the same)
        generator = torch.Generator().manual_seed(0)
        for parameter in dit.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_model_atomic(dit, root / "dit" / "model")
    save_model_atomic(RewardModel(**dataclasses.asdict(reward_cfg)).eval(), root / "reward_model" / "model")
    ActionStatistics.from_actions(np.random.default_rng(0).uniform(-1, 1, (1000, 4))).save(
        root / "dataset_statistics.json")
    settings = default_world_model_settings()
    InitialStates.from_frames(reset_frames, [instruction] * len(reset_frames), settings["num_cond_latent_frames"],
                              reset_ids=np.arange(len(reset_frames))).save(root / "initial_states.hdf5")
    write_json_atomic(root / "world_model.json", settings)
    return root


class Clock:
    """Wall and process-CPU seconds. On a shared machine the wall clock counts time the process waited for a core;
    process CPU time (all its threads) does not, so steps per CPU-second compare per-core efficiency robustly."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def timed_chunks(env, actions_fn, chunks: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one ``chunk_step`` over ``chunks`` calls (after one warm-up chunk)."""
    env.chunk_step(actions_fn())
    walls, cpus = [], []
    for _ in range(chunks):
        actions = actions_fn()
        with Clock() as clock:
            env.chunk_step(actions)
        walls.append(clock.wall)
        cpus.append(clock.cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model-dir", default=f"outputs/{TASK}/world_model")
    parser.add_argument("--num-steps", type=int, default=None, help="solver steps (default: the env's, as trained)")
    parser.add_argument("--guidance", type=float, default=1.0, help="w for the CFG measurement")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=[0.05, 1.0], metavar=("LOW", "HIGH"),
                        help="an env guiding only solver steps with flow time in (LOW, HIGH], against the trained one")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps-sweep", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", help="the world-model env's dtype (auto: bfloat16 where native)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile the env's DiT and decoder (auto: where a compiler is installed)")
    # 1 thread: the simulator steps on one core, so steps per CPU-second compare per-core efficiency; and one
    # thread does not spin-wait for a second core that other processes hold (which inflates CPU time)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--distilled", action="store_true",
                        help="run the world model's distilled student DiT (and time the teacher beside it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, key="--dtype")
    compiled = resolve_compile({"true": True, "false": False}.get(args.compile, args.compile), key="--compile")
    from dit_flops import count_flops

    from rlinf_wm.envs.metaworld_env import MetaWorldEnv

    real = MetaWorldEnv(TASK, num_envs=1, max_episode_steps=10**6)
    wm_dir = Path(args.world_model_dir)
    trained = (wm_dir / "world_model.json").is_file()
    tmp = None
    if not trained:
        tmp = tempfile.TemporaryDirectory()
        frames = np.stack([real.reset(ids=[i]).images[0] for i in range(8)])
        wm_dir = random_world_model(Path(tmp.name) / "world_model", frames, real.instruction)
    if args.distilled and not trained:
        parser.error(f"--distilled needs a trained world model with a distilled DiT in {wm_dir}")
    sampler = {"num_steps": args.num_steps} if args.num_steps else {}

    def make(num_envs: int, **overrides) -> WorldModelEnv:
        kwargs = dict(num_envs=num_envs, batch_size=max(args.batches + [1]), max_episode_steps=10**6,
                      reward_threshold=NEVER, sampler=dict(sampler), seed=0, dtype=str(dtype).removeprefix("torch."),
                      compile=compiled, distilled=args.distilled)
        kwargs.update(overrides)
        env = WorldModelEnv(str(wm_dir), **kwargs)
        env.reset(seed=0)
        env.chunk_step(np.zeros((num_envs, env.chunk_size, 4), np.float32))  # compiles, when compiling
        return env

    envs = {1: make(1), **{b: make(b) for b in args.batches}}
    big = max(args.batches)
    float32_env = make(big, dtype="float32") if dtype != torch.float32 else None  # compiled alike
    eager_env = make(big, compile=False) if compiled else None
    interval_env = make(big, sampler={**sampler, "guidance_interval": args.guidance_interval})
    teacher_env = make(big, distilled=False, sampler={}) if args.distilled else None
    k = envs[1].chunk_size
    num_steps = envs[1].sampler.num_steps
    rng = np.random.default_rng(0)

    def random_actions(batch: int, chunk: int = k):
        return rng.uniform(-1, 1, (batch, chunk, 4)).astype(np.float32)

    real.reset(ids=[0])
    samples: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # interleaved
        for name, steps, fn in [
            ("real_k", k, lambda: timed_chunks(real, lambda: random_actions(1), 5)),
            ("real_k1", 1, lambda: timed_chunks(real, lambda: random_actions(1, 1), 5)),
            *[(f"wm_b{b}", b * k, lambda b=b: timed_chunks(envs[b], lambda b=b: random_actions(b), 3 if b == 1 else 1))
              for b in envs],
            *([("wm_float32", big * k, lambda: timed_chunks(float32_env, lambda: random_actions(big), 1))]
              if float32_env is not None else []),
            *([("wm_eager", big * k, lambda: timed_chunks(eager_env, lambda: random_actions(big), 1))]
              if eager_env is not None else []),
            ("wm_interval", big * k, lambda: timed_chunks(interval_env, lambda: random_actions(big), 1)),
            *([("wm_teacher", big * k, lambda: timed_chunks(teacher_env, lambda: random_actions(big), 1))]
              if teacher_env is not None else []),
        ]:
            wall, cpu = fn()
            samples.setdefault(name, []).append((steps / wall, steps / cpu))
    steps_per_second = {name: statistics.median(v[0] for v in values) for name, values in samples.items()}
    steps_per_cpu_second = {name: statistics.median(v[1] for v in values) for name, values in samples.items()}

    # where the time goes, at the largest batch (one more measured chunk with fresh timings)
    envs[big].timings.clear()
    start = time.perf_counter()
    envs[big].chunk_step(random_actions(big))
    wall = time.perf_counter() - start
    t = envs[big].timings
    split = {"dit": t.dit_seconds / wall, "decode": t.decode_seconds / wall, "reward": t.reward_seconds / wall}
    split["other"] = 1.0 - sum(split.values())

    # DiT FLOP/s on the env's micro-batch shape, against measured matmul FLOP/s
    env = envs[big]
    dit = env.dit
    frames = env.num_cond_latent_frames + env.num_pred_latent_frames
    c, h = dit.latent_channels, env.tokenizer.latent_size
    x = torch.randn(big, c, frames, h, h, dtype=dtype)
    mask = torch.zeros(big, 1, frames, h, h, dtype=dtype)
    mask[:, :, : env.num_cond_latent_frames] = 1
    acts = torch.randn(big, env.chunk_size, dit.action_dim, dtype=dtype)  # with running sums when trained on them
    s = torch.rand(big, dtype=dtype)
    with torch.no_grad():
        dit.compile_forward = False  # the FLOP counter sees eager ops only; the timing below runs as the env does
        flops = count_flops(lambda: dit(x, s, acts, mask))
        dit.compile_forward = compiled
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        a_dtype, b_dtype = a.to(dtype), b.to(dtype)
        a @ b
        a_dtype @ b_dtype
        dit(x, s, acts, mask)
        peaks, peaks_cpu, peaks_dtype, forwards, forwards_cpu = [], [], [], [], []
        for _ in range(max(3, args.repeats)):  # alternating, so load hits both alike
            with Clock() as clock:
                for _ in range(5):
                    a @ b
            peaks.append(5 * 2 * 1024**3 / clock.wall)
            peaks_cpu.append(5 * 2 * 1024**3 / clock.cpu)
            with Clock() as clock:
                for _ in range(5):
                    a_dtype @ b_dtype
            peaks_dtype.append(5 * 2 * 1024**3 / clock.wall)
            with Clock() as clock:
                dit(x, s, acts, mask)
            forwards.append(clock.wall)
            forwards_cpu.append(clock.cpu)
    peak, forward = statistics.median(peaks), statistics.median(forwards)
    peak_dtype = statistics.median(peaks_dtype)
    peak_cpu, forward_cpu = statistics.median(peaks_cpu), statistics.median(forwards_cpu)

    # CFG: w = 0 (no-op, one branch) vs a bare one-branch loop; w > 0 (one doubled call) vs one branch
    from rlinf_wm.models.samplers import FlowSampler, integrate_flow

    flow = FlowSampler(**{**vars(env.sampler), "guidance": 0.0})
    x_cond = torch.randn(big, c, frames, h, h, dtype=dtype)

    def one_branch():
        no_drop = torch.zeros(big, dtype=torch.bool)
        velocity = lambda y, level: dit(y, torch.full((big,), level, dtype=dtype), acts, mask, drop_actions=no_drop)  # noqa: E731
        given = mask.expand_as(x_cond) > 0.5
        keep = lambda y: torch.where(given, x_cond, y)  # noqa: E731
        with torch.no_grad():
            return keep(integrate_flow(velocity, keep(torch.randn_like(x_cond)), flow.sigmas(), flow.solver, keep))

    def sampler_run(guidance):
        return lambda: flow.sample(dit, x_cond, mask, acts, guidance=guidance, generator=torch.Generator().manual_seed(0))

    cfg_samples: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, fn in (("one_branch", one_branch), ("w0", sampler_run(0.0)), ("w", sampler_run(args.guidance))):
            with Clock() as clock:
                fn()
            cfg_samples.setdefault(name, []).append(clock.wall)
            cfg_samples.setdefault(name + "_cpu", []).append(clock.cpu)
    cfg_seconds = {name: statistics.median(v) for name, v in cfg_samples.items()}

    # solver steps sweep at the largest batch (throughput only)
    sweep = {}
    for steps in args.steps_sweep:
        sweep_env = make(big, sampler={**sampler, "num_steps": steps})
        wall, cpu = timed_chunks(sweep_env, lambda: random_actions(big), 1)
        sweep[str(steps)] = {"steps_per_second": big * k / wall, "steps_per_cpu_second": big * k / cpu}

    results = {
        "world_model": "trained" if trained else "random default-tiny config",
        "world_model_dir": str(args.world_model_dir) if trained else None,
        "threads": args.threads,
        "chunk_size": k,
        "num_cond_latent_frames": env.num_cond_latent_frames,
        "solver": env.sampler.solver,
        "num_steps": num_steps,
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": compiled,
        "distilled": args.distilled,
        "steps_per_second": {
            "sequential_batch1": steps_per_second["wm_b1"],
            **{f"batch{b}": steps_per_second[f"wm_b{b}"] for b in args.batches},
            "real_metaworld_chunk_k": steps_per_second["real_k"],
            "real_metaworld_k1": steps_per_second["real_k1"],
        },
        "steps_per_cpu_second": {
            "sequential_batch1": steps_per_cpu_second["wm_b1"],
            **{f"batch{b}": steps_per_cpu_second[f"wm_b{b}"] for b in args.batches},
            "real_metaworld_chunk_k": steps_per_cpu_second["real_k"],
            "real_metaworld_k1": steps_per_cpu_second["real_k1"],
        },
        "load_average_1min": os.getloadavg()[0],
        "batch64_over_sequential": steps_per_second.get("wm_b64", float("nan")) / steps_per_second["wm_b1"],
        "imagined_over_real": steps_per_second[f"wm_b{big}"] / steps_per_second["real_k"],
        "dtype_over_float32": (steps_per_second[f"wm_b{big}"] / steps_per_second["wm_float32"]
                               if float32_env is not None else 1.0),
        "compiled_over_eager": (steps_per_second[f"wm_b{big}"] / steps_per_second["wm_eager"]
                                if eager_env is not None else 1.0),
        **({"teacher_batch_steps_per_second": steps_per_second["wm_teacher"],
            "distilled_over_teacher": steps_per_second[f"wm_b{big}"] / steps_per_second["wm_teacher"]}
           if teacher_env is not None else {}),
        "guidance_interval": args.guidance_interval,
        "guidance_interval_over_trained": steps_per_second["wm_interval"] / steps_per_second[f"wm_b{big}"],
        "batch64_over_sequential_cpu": steps_per_cpu_second.get("wm_b64", float("nan")) / steps_per_cpu_second["wm_b1"],
        "imagined_over_real_cpu": steps_per_cpu_second[f"wm_b{big}"] / steps_per_cpu_second["real_k"],
        "dit": {
            "batch": big,
            "gflop_per_forward": flops / 1e9,
            "forward_seconds": forward,
            "achieved_gflops": flops / forward / 1e9,
            "matmul_gflops": peak / 1e9,
            "fraction_of_matmul_peak": flops / forward / peak,
            "matmul_gflops_in_dtype": peak_dtype / 1e9,
            "fraction_of_matmul_peak_in_dtype": flops / forward / peak_dtype,
            "forward_cpu_seconds": forward_cpu,
            "matmul_gflops_per_cpu_second": peak_cpu / 1e9,
            "fraction_of_matmul_peak_cpu": flops / forward_cpu / peak_cpu,
        },
        "cfg": {
            "seconds_one_branch": cfg_seconds["one_branch"],
            "seconds_w0": cfg_seconds["w0"],
            "seconds_w": cfg_seconds["w"],
            "guidance": args.guidance,
            "w0_overhead_vs_one_branch": cfg_seconds["w0"] / cfg_seconds["one_branch"] - 1.0,
            "w_overhead_vs_one_branch": cfg_seconds["w"] / cfg_seconds["one_branch"] - 1.0,
            "w0_overhead_vs_one_branch_cpu": cfg_seconds["w0_cpu"] / cfg_seconds["one_branch_cpu"] - 1.0,
            "w_overhead_vs_one_branch_cpu": cfg_seconds["w_cpu"] / cfg_seconds["one_branch_cpu"] - 1.0,
        },
        "time_split_batch": big,
        "time_split": split,
        "chunk_seconds_batch": wall,
        "steps_sweep_batch_steps_per_second": sweep,
    }
    for line in (
        f"imagined steps/s: seq b1 {steps_per_second['wm_b1']:.1f}, "
        + ", ".join(f"b{b} {steps_per_second[f'wm_b{b}']:.1f}" for b in args.batches)
        + f" | real Meta-World K={k}: {steps_per_second['real_k']:.1f}, K=1: {steps_per_second['real_k1']:.1f}"
        + (f" | b{big} compiled / eager {results['compiled_over_eager']:.2f}x" if compiled else "")
        + f" | guidance in {args.guidance_interval} / as trained {results['guidance_interval_over_trained']:.2f}x"
        + (f" | distilled / teacher {results['distilled_over_teacher']:.2f}x" if teacher_env is not None else ""),
        f"DiT B={big} ({dtype}): {flops / forward / 1e9:.1f} GFLOP/s = {flops / forward / peak:.0%} of fp32 matmul "
        f"{peak / 1e9:.1f}, {flops / forward / peak_dtype:.0%} of {dtype} matmul {peak_dtype / 1e9:.1f}",
        f"CFG: w=0 {cfg_seconds['w0']:.2f}s, one branch {cfg_seconds['one_branch']:.2f}s, w={args.guidance} "
        f"{cfg_seconds['w']:.2f}s | split {', '.join(f'{k_}={v:.0%}' for k_, v in split.items())}",
    ):
        print(line)
    real.close()
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
