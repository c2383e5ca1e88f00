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
