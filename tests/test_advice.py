"""Every built-in alert carries a "what to do" line, and docs/metrics.md shows the same line."""

from pathlib import Path

import torch

import mechmon
from mechmon import LogitsProbe, Monitor, every
from mechmon.advice import ADVICE
from mechmon.alerts import Alert, Threshold
from mechmon.events import load_run
from tests.helpers import CTX, plain_run, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]


def builtin_rule_names(tmp_path) -> set[str]:
    """The alert names of every registered probe's default rules, each probe set up on a model it applies to."""
    names = {"non_finite", "probe_failed"}  # the monitor's own
    needs = {"apm": {"target": torch.eye(CTX)}, "moe_pathway": {"batch": torch.ones(2, CTX, dtype=torch.long)}}
    probes = [mechmon.get_probe(name)(**needs.get(name, {})) for name in mechmon.list_probes()]
    unfit = ("moe_routing", "moe_pathway", "icl")  # a dense model with a short context; their rules need no set-up
    Monitor(tiny_gpt2(), probes=[p for p in probes if p.name not in unfit], log_dir=tmp_path)
    for probe in probes:
        names.update(name for rule in probe.rules() for name in rule.names)
    return names


def docs_table() -> dict[str, str]:
    """rule -> "what to do" cell of the alert table in docs/metrics.md."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[1] in ("info", "warning", "critical"):
            rows[cells[0].strip("`")] = cells[2]
    return rows


def test_every_builtin_rule_has_advice_and_no_advice_is_orphaned(tmp_path):
    assert builtin_rule_names(tmp_path) == set(ADVICE)


def test_docs_show_the_same_advice():
    assert docs_table() == ADVICE


def test_alert_takes_its_advice_by_rule_name_and_keeps_its_own():
    rule = Threshold("mechmon/attn_logits/max", 100.0, name="attention_logit_growth")
    alert = rule.update(25, 1260.0)
    assert alert.advice == ADVICE["attention_logit_growth"]
    assert "qk-norm" in alert.advice
    mine = Alert("my_rule", "mechmon/a/b", 1, 1.0, "warning", "why", advice="page the on-call")
    assert mine.advice == "page the on-call"
    assert Alert("my_rule", "mechmon/a/b", 1, 1.0, "warning", "why").advice == ""


def test_console_and_tensorboard_show_the_advice(tmp_path, capsys):
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rule = Threshold("mechmon/logits/norm_mean", 0.0, name="routing_collapse")  # a built-in name, any key
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=every(1), rules=[rule],
                      log_dir=tmp_path, console=False)  # fmt: skip
    plain_run(monitor, model, optimizer, 1)
    assert "\n  what to do: " + ADVICE["routing_collapse"] + "\n" in capsys.readouterr().err  # the alert line's next
    [(step, text)] = load_run(tmp_path).alerts
    assert step == 1 and f"*What to do:* {ADVICE['routing_collapse']}." in text
