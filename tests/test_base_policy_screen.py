"""benchmarks/base_policy_screen.py: the per-base row, the commands it runs, and its input checks."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("base_policy_screen", ROOT / "benchmarks" / "base_policy_screen.py")
screen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screen)


def test_row_counts_mixed_states_and_the_sharpening_ceiling():
    summary = {"num_episodes": 100, "success_rate": 0.58, "success_rate_ci95": [0.48, 0.67],
               "initial_states_by_outcome": {"always": 19, "sometimes": 20, "never": 11}}
    row = screen.screen_row(summary, demos=2, steps=320, temperature=4.0)
    assert (row["always"], row["mixed_states"], row["never"]) == (19, 20, 11)
    assert row["sharpening_ceiling"] == pytest.approx(39 / 50)
    assert "| 2 | 320 | 4 | 58 % [48.0, 67.0] | 19 / 20 / 11 | 78 % |" == screen.format_row(row)


def test_commands_name_the_base_and_retarget_another_task():
    args = SimpleNamespace(task="button-press-topdown-v3", artifacts=Path("a"), episodes=100)
    args.slug, args.retarget = screen.transfer.task_configs(args.task)
    sft = screen.sft_command(args, 2, 320, Path("o/sft"))
    assert {"sft.num_demos=2", "sft.max_steps=320", "output_dir=o/sft", "task=button-press-topdown-v3"} <= set(sft)
    evaluation = screen.eval_command(args, Path("o/sft/model"), 8.0, Path("o/eval"))
    assert {"eval.temperature=8.0", "env.eval.task=button-press-topdown-v3", "eval.deterministic=false",
            "policy_path=o/sft/model"} <= set(evaluation)
    assert not any(o.startswith("env.train.") for o in evaluation)


def test_too_few_episodes_and_missing_data_fail_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "screen"
    monkeypatch.setattr(sys, "argv", ["screen", "--episodes", "50", "--artifacts", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit):
        screen.main()
    assert "two per initial state" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["screen", "--artifacts", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit, match="no collected data"):
        screen.main()
    assert not out.exists()


def test_a_cached_evaluation_with_another_episode_count_is_refused(tmp_path):
    args = SimpleNamespace(out=tmp_path, episodes=200, temperatures=[4.0])
    (tmp_path / "sft_d2_s320" / "model").mkdir(parents=True)
    (tmp_path / "sft_d2_s320" / "model" / "model.safetensors").write_bytes(b"")  # a cached SFT run: not retrained
    (tmp_path / "eval_d2_s320_t4").mkdir()
    (tmp_path / "eval_d2_s320_t4" / "summary.json").write_text(json.dumps({"num_episodes": 100, "temperature": 4.0}))
    with pytest.raises(SystemExit, match=r"num_episodes=100 \(this run: 200\)"):
        screen.screen_base(args, demos=2, steps=320)
