"""experiments/train.py end to end on the tiny config: files, resume, bad configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py"), "--config=configs/tiny_cpu.py"]


def _run(*args, check=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([*TRAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    _run(f"--run_dir={run_dir}")
    return run_dir


def test_smoke_run_writes_checkpoints_metrics_and_events(full_run):
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["1", "2", "3"]
    records = _metrics(full_run)
    steps = [r["step"] for r in records]
    assert steps == [0, 1, 2, 3, 3]  # eval before, 3 iterations, eval after
    assert all("update/policy_loss/0" in r and "update/value_loss" in r for r in records[1:4])
    assert list((full_run / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((full_run / "config.json").read_text())
    assert config["model"]["name"] == "tiny" and config["ppo"]["algorithm"] == "marft_a"
    env = json.loads((full_run / "environment.json").read_text())
    assert env["versions"]["jax"] and env["device_kind"]
    assert (full_run / "learning_curve.png").stat().st_size > 0


def test_resume_after_interruption_is_bitwise_identical(full_run, tmp_path):
    run_dir = tmp_path / "interrupted"
    _run(f"--run_dir={run_dir}", "--stop_after=2")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]
    _run(f"--run_dir={run_dir}", "--resume")
    assert _metrics(run_dir) == _metrics(full_run)


@pytest.mark.parametrize("override, field", [
    ("--config.ppo.lr_actor=-0.1", "ppo.lr_actor"),
    ("--config.ppo.algorithm=reinforce", "ppo"),
    ("--config.team.profiles=/nonexistent/team.json", "team.profiles"),
    ("--config.lora.num_adapters=1", "lora.num_adapters"),
])
def test_bad_config_exits_2_with_one_line_naming_the_field(override, field, tmp_path):
    proc = _run(f"--run_dir={tmp_path / 'bad'}", override, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"'{field}'" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists()  # nothing half-written
