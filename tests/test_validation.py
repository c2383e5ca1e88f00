"""Every constructor argument is validated: a wrong value raises TypeError/ValueError naming the argument."""

import inspect

import pytest
import torch

import mechmon
from mechmon import MechMonitor, Monitor
from mechmon.hf import MechMonitorCallback

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
        if cls not in monitors:
            for name in ("schedule", "rules"):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


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
