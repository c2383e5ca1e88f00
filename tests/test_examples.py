"""Every example runs end to end from its own entry point (a few steps): exit 0, its table, its event files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_attention_instability_example_prints_the_table_and_writes_the_plot(tmp_path):
    args = ["--steps", "4", "--every", "2", "--runs", "llama@3e-2", "qwen3@3e-2", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "attention_instability.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| llama@3e-2") or line.startswith("| qwen3")]
    assert len(rows) == 2 and (tmp_path / "attention_instability.png").stat().st_size > 10_000


SMOKE = {  # a few steps each, from the examples' own entry points (the README's commands with smaller numbers)
    "grokking_collapse.py": ["--runs", "ab", "--max-steps", "4", "--every", "2"],
    "loss_plateau.py": ["--max-steps", "4", "--every", "2"],
    "stdlib_induction.py": ["--max-steps", "4", "--every", "2"],
    "stdlib_moe_pathways.py": [
        "--max-steps",
        "4",
        "--every",
        "2",
        "--train-windows",
        "16",
        "--probe-windows",
        "8",
        "--epsilon-at",
        "2",
    ],  # fmt: skip
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_every_example_runs_end_to_end_in_a_smoke_run(tmp_path, script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *SMOKE[script], "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tensorboard --logdir" in done.stdout and list((tmp_path / "out").rglob("events.out.tfevents.*"))


def test_the_demo_ends_with_its_alerts_and_commands_that_work_as_printed_in_a_fresh_shell(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stdlib_induction.py"), *SMOKE["stdlib_induction.py"], "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-3:]  # on screen at the end, whatever the terminal's height
    assert last[0].startswith(("alerts (", "no alert fired", "  step")) and "Custom Scalars" in last[-1]
    summary = last[-2].split(": ", 1)[1]
    fresh = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # a new shell of this user: nothing else inherited
    ran = subprocess.run(summary, shell=True, capture_output=True, text=True, timeout=120, env=fresh, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]


def test_the_plateau_example_says_when_it_was_cut_short_and_gives_each_run_its_own_folder(tmp_path):
    args = [str(ROOT / "examples" / "loss_plateau.py"), "--max-steps", "6", "--every", "2", "--max-minutes", "0.001"]
    for _ in range(2):
        done = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "cut short: stopped at step" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "mws").iterdir()) == ["version_0", "version_1"]
