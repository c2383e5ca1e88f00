"""Every constructor argument is validated: a wrong value raises TypeError/ValueError naming the argument."""

import inspect

import pytest
import torch

import mechmon
from mechmon import MechMonitor, Monitor
from mechmon.hf import MechMonitorCallback
from mechmon.integrations.base import OPTIONS, Integration

REQUIRED = {
    "AttentionProgressProbe": {"target": torch.eye(8)},
    "PathwayProbe": {"batch": torch.ones(4, 8, dtype=torch.long)},
}
BAD = object()


def cases():
    monitors = [MechMonitor, Monitor, MechMonitorCallback]
    classes = [mechmon.get_probe(name) for name in mechmon.list_probes()] + monitors
    for cls in classes:
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")
        if issubclass(cls, Integration):  # Monitor's options, by keyword
            for name in [*OPTIONS, "model"]:
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")
        if cls not in monitors:
            for name in ("schedule", "rules"):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


RULE = mechmon.Threshold("mechmon/logits/norm_mean", 1.0)
RULES = {
    mechmon.Threshold: {"key": "mechmon/a/b", "level": 1.0},
    mechmon.Emergence: {"key": "mechmon/a/b", "level": 1.0},
    mechmon.Collapse: {"key": "mechmon/a/b"},
    mechmon.Plateau: {"key": "mechmon/a/b"},
    mechmon.Trend: {"key": "mechmon/a/b"},
    mechmon.Compound: {"members": [RULE, RULE]},
    mechmon.Phase: {"enter": [RULE], "exit": [RULE]},
    mechmon.NonFinite: {"key": "mechmon/a/b"},
    mechmon.ModuleAdapter: {
        "model": torch.nn.Sequential(torch.nn.Linear(2, 2)),
        "points": {"logits": "0"},
        "n_layers": 0,
        "n_heads": 0,
        "vocab_size": 2,
    },
}
SCHEDULES = {mechmon.every: {"n": 5}, mechmon.at: {"steps": [1]}, mechmon.log_spaced: {"start": 1, "end": 9, "num": 3}}


def other_cases():
    for fn, required in {**RULES, **SCHEDULES}.items():
        target = fn.__init__ if isinstance(fn, type) else fn
        for name, param in inspect.signature(target).parameters.items():
            if name not in ("self", "model") and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                yield pytest.param(fn, required, name, id=f"{fn.__name__}.{name}")


@pytest.mark.parametrize("fn,required,arg", list(other_cases()))
def test_rules_schedules_and_adapters_refuse_a_wrong_value_naming_the_argument(fn, required, arg):
    with pytest.raises((TypeError, ValueError)) as err:
        fn(**{**required, arg: BAD})
    assert arg in str(err.value), str(err.value)


def test_a_point_that_is_no_canonical_name_is_refused():
    with pytest.raises(
        ValueError, match=r"ModuleAdapter\(points=...\) must be canonical capture names.*got \['logitz'\]"
    ):
        mechmon.ModuleAdapter(torch.nn.Linear(2, 2), {"logitz": ""}, n_layers=0, n_heads=0, vocab_size=2)
    with pytest.raises(TypeError, match=r"ModuleAdapter\(n_layers=...\) must be an int"):
        mechmon.ModuleAdapter(torch.nn.Linear(2, 2), {"logits": ""}, n_layers="2", n_heads=0, vocab_size=2)


@pytest.mark.parametrize("cls,arg", list(cases()))
def test_a_wrong_value_is_refused_with_a_message_naming_the_argument(cls, arg):
    kwargs = {**REQUIRED.get(cls.__name__, {}), arg: BAD}
    with pytest.raises((TypeError, ValueError)) as err:
        cls(**kwargs)
    assert arg in str(err.value), str(err.value)


def test_edges_of_closed_intervals_are_accepted_and_open_ones_refused():
    ids = torch.ones(4, 8, dtype=torch.long)
    mechmon.PathwayProbe(ids, tau=1.0, delta=0.0)  # tau in (0, 1], delta >= 0
    mechmon.CollapseProbe(flat_rel_delta=0.0)
    with pytest.raises(ValueError, match=r"PathwayProbe\(tau=...\) must be a number > 0 <= 1, got 0"):
        mechmon.PathwayProbe(ids, tau=0)
    with pytest.raises(TypeError, match=r"RankProbe\(centered=...\) must be True or False"):
        mechmon.RankProbe(centered=1)


@pytest.mark.parametrize("cls", [MechMonitor, MechMonitorCallback])
def test_an_integration_refuses_an_unknown_option_naming_it_and_the_nearest(cls):
    with pytest.raises(TypeError, match=r"got an unknown option 'schedul' \(did you mean 'schedule'\?\)"):
        cls(schedul=10)
    with pytest.raises(TypeError, match="model=.* the former name of submodule="):
        cls(model="student", submodule="student")
