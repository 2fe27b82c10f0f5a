"""Which SFT base policy leaves GRPO something to learn? Trains bases and sorts their failures.

For every (demos, SFT steps) pair it trains an SFT policy on the quickstart's collected data and evaluates it in the
real simulator at every ``--temperatures`` value, then reports per base and temperature: success (95 % Wilson
interval) and the initial states that always / sometimes / never succeed. GRPO learns only from groups whose
outcomes differ, so

* ``mixed_states``        are the states that give it a gradient, and
* ``sharpening_ceiling``  (states with at least one success) is what it reaches by making them always succeed;
                          beyond it the policy needs a behaviour its samples never showed (e.g. the 1-demo drawer-open
                          base fails on drawer positions far from its demo at every temperature: docs/results.md).

Every piece is cached under ``--out`` (a finished SFT run or evaluation is not redone).

    .venv/bin/python benchmarks/base_policy_screen.py [--task drawer-open-v3] [--demos 1 2] [--sft-steps 320 1000]
        [--temperatures 4 8] [--episodes 100] [--artifacts outputs/<task>] [--out outputs/<task>/base_screen]

Needs the task's collected data (``examples/quickstart.py --task <task>`` or its collect stage). Prints a table,
then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import transfer  # noqa: E402  (sets the env (MUJOCO_GL, Ray) for the subprocesses; task_configs, run_logged)

NUM_INITIAL_STATES = 50  # Meta-World's fixed evaluation states; evaluation episodes cycle through them


def screen_row(summary: dict, demos: int, steps: int, temperature: float) -> dict:
    """One base at one temperature, from the evaluator's ``summary.json``."""
    outcomes = summary["initial_states_by_outcome"]
    states = sum(outcomes.values())
    return {
        "demos": demos, "sft_steps": steps, "temperature": temperature,
        "episodes": summary["num_episodes"],
        "success_rate": summary["success_rate"], "ci95": summary["success_rate_ci95"],
        "always": outcomes["always"], "mixed_states": outcomes["sometimes"], "never": outcomes["never"],
        "sharpening_ceiling": (outcomes["always"] + outcomes["sometimes"]) / states,
    }


def sft_command(args, demos: int, steps: int, out_dir: Path) -> list[str]:
    return [sys.executable, "examples/sft/train_sft.py", "--config-name", f"sft_metaworld_{args.slug}",
            f"task={args.task}", f"artifacts_dir={args.artifacts}", f"sft.num_demos={demos}", f"sft.max_steps={steps}",
            f"sft.save_every={steps}", f"output_dir={out_dir}"]


def eval_command(args, policy_dir: Path, temperature: float, out_dir: Path) -> list[str]:
    return [sys.executable, "examples/embodiment/eval_embodied_agent.py", "--config-name", f"eval_metaworld_{args.slug}",
            f"task={args.task}", f"artifacts_dir={args.artifacts}",
            *[o for o in args.retarget if o.startswith("env.eval.")],
            f"policy_path={policy_dir}", f"eval.output_dir={out_dir}", f"eval.num_episodes={args.episodes}",
            "eval.deterministic=false", f"eval.temperature={temperature}", "eval.num_videos=0"]


def screen_base(args, demos: int, steps: int) -> list[dict]:
    sft_dir = args.out / f"sft_d{demos}_s{steps}"
    if not (sft_dir / "model" / "model.safetensors").is_file():
        seconds = transfer.run_logged(sft_command(args, demos, steps, sft_dir), args.out / f"{sft_dir.name}.log")
        print(f"[screen] SFT {demos} demos, {steps} steps: {seconds:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for temperature in args.temperatures:
        eval_dir = args.out / f"eval_d{demos}_s{steps}_t{temperature:g}"
        summary_path = eval_dir / "summary.json"
        if not summary_path.is_file():
            transfer.run_logged(eval_command(args, sft_dir / "model", temperature, eval_dir), args.out / f"{eval_dir.name}.log")
        summary = json.loads(summary_path.read_text())
        transfer.require_same_settings(summary_path, summary, {"num_episodes": args.episodes, "temperature": temperature})
        rows.append(screen_row(summary, demos, steps, temperature))
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    low, high = row["ci95"]
    return (f"| {row['demos']} | {row['sft_steps']} | {row['temperature']:g} | {100 * row['success_rate']:.0f} % "
            f"[{100 * low:.1f}, {100 * high:.1f}] | {row['always']} / {row['mixed_states']} / {row['never']} | "
            f"{100 * row['sharpening_ceiling']:.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="drawer-open-v3")
    parser.add_argument("--demos", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sft-steps", type=int, nargs="+", default=[1000])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0])
    parser.add_argument("--episodes", type=int, default=2 * NUM_INITIAL_STATES)
    parser.add_argument("--artifacts", type=Path, default=None, help="default: outputs/<task>")
    parser.add_argument("--out", type=Path, default=None, help="default: <artifacts>/base_screen")
    args = parser.parse_args()
    if args.episodes < 2 * NUM_INITIAL_STATES:
        parser.error(f"--episodes {args.episodes}: needs >= {2 * NUM_INITIAL_STATES} (two per initial state) to tell "
                     "mixed states from always / never ones")
    args.slug, args.retarget = transfer.task_configs(args.task)
    args.artifacts = args.artifacts or ROOT / "outputs" / args.task
    if not (args.artifacts / "data" / "dataset_statistics.json").is_file():
        raise SystemExit(f"[screen] no collected data in {args.artifacts / 'data'}: run "
                         f"`examples/quickstart.py --task {args.task}` (or its collect stage) first")
    args.out = args.out or args.artifacts / "base_screen"
    args.out.mkdir(parents=True, exist_ok=True)

    print("| demos | SFT steps | temperature | success | states always / mixed / never | sharpening ceiling |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = [row for demos in args.demos for steps in args.sft_steps for row in screen_base(args, demos, steps)]
    print(json.dumps({"task": args.task, "episodes": args.episodes, "rows": rows}))


if __name__ == "__main__":
    main()
