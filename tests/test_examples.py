"""The attention-instability example runs end to end (a few steps), prints its table and writes its plot."""

import os
import subprocess
import sys
from pathlib import Path

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
