"""The ``mechmon`` command on a real run folder, as a user runs it."""

import subprocess
import sys
from pathlib import Path

from mechmon import LogitsProbe, MechMonitor, Threshold
from tests.helpers import TinyLM, make_trainer, mechmon_command, token_loader

ROOT = Path(__file__).resolve().parents[1]


def test_summary_renders_the_alerts_and_a_missing_folder_is_one_line_and_exit_code_2(tmp_path):
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    trainer = make_trainer(tmp_path, [MechMonitor(probes=[LogitsProbe()], schedule=2, rules=[marker])], max_steps=2)
    trainer.fit(TinyLM(), token_loader())
    done = mechmon_command("summary", str(tmp_path / "tb"))
    assert done.returncode == 0, done.stderr
    assert "marker" in done.stdout and "**" not in done.stdout and "`" not in done.stdout  # Markdown rendered
    assert "mechmon/logits/norm_mean" in done.stdout
    missing = mechmon_command("summary", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"mechmon summary: no TensorBoard event file under {tmp_path / 'nowhere'}"
    ]


def test_probes_lists_every_registered_probe():
    import mechmon

    done = mechmon_command("probes")
    assert done.returncode == 0
    names = mechmon.list_probes()
    assert len(names) >= 16  # the built-in probes registered themselves
    for name in names:  # with what each reads: weights for WeightsProbe, gradients for NLMProbe, ...
        assert f"{name} ({mechmon.get_probe(name).source.replace('_', ' ')})" in done.stdout, name
    assert "weights (weights)" in done.stdout and "nlm (gradients)" in done.stdout


def test_help_answers_without_importing_torch():
    code = (
        "import sys\nfrom mechmon.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "usage: mechmon" in done.stdout and done.stdout.strip().endswith("torch not loaded")
