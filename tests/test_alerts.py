import math

import pytest

from mechmon.alerts import Alert, Collapse, Emergence, NonFinite, Plateau, Threshold

K = "mechmon/x/y"


def run(rule, values):
    """Indices at which the rule fired."""
    return [i for i, v in enumerate(values) if rule.update(i, v) is not None]


@pytest.mark.parametrize(
    "values,patience,warmup,expected",
    [
        ([0.1, 0.6, 0.7, 0.8], 1, 0, [1]),
        ([0.1, 0.6, 0.7, 0.8], 2, 0, [2]),
        ([0.6, 0.7, 0.8, 0.9], 1, 2, [2]),
        ([0.1, 0.6, 0.1, 0.6, 0.7], 2, 0, [4]),
        ([0.6, 0.1, 0.6, 0.1, 0.6], 1, 0, [0, 2, 4]),  # re-arms after recovery
    ],
)
def test_threshold_fires_once_per_episode(values, patience, warmup, expected):
    assert run(Threshold(K, 0.5, patience=patience, warmup=warmup), values) == expected


def test_threshold_hysteresis_and_min_mode():
    rule = Threshold(K, 0.5, hysteresis=0.2)
    assert run(rule, [0.6, 0.4, 0.6, 0.2, 0.6]) == [0, 4]  # 0.4 is not far enough below to re-arm
    assert run(Threshold(K, 0.5, mode="min"), [0.9, 0.4, 0.3, 0.9, 0.1]) == [1, 4]


def test_nan_is_ignored_by_value_rules_and_caught_by_nonfinite():
    rule = Threshold(K, 0.5, patience=2)
    assert run(rule, [0.6, math.nan, 0.7]) == [2]  # NaN neither counts nor resets
    nf = NonFinite(K)
    assert run(nf, [1.0, math.nan, math.inf, 1.0, -math.inf]) == [1, 4]
    alert = NonFinite(K).update(7, math.nan)
    assert isinstance(alert, Alert) and alert.severity == "critical" and alert.step == 7


def test_emergence_needs_rise_over_baseline():
    rule = Emergence(K, level=0.3, min_rise=0.1, patience=2)
    assert run(rule, [0.01, 0.05, 0.35, 0.5, 0.6]) == [3]
    assert rule.baseline == 0.01
    already_high = Emergence(K, level=0.3, min_rise=0.1)
    assert run(already_high, [0.8, 0.85, 0.82]) == []


def test_collapse_against_running_max():
    rule = Collapse(K, ratio=0.5, patience=2)
    assert run(rule, [1.0, 2.0, 0.9, 0.8, 0.7, 1.5, 0.5, 0.4]) == [3, 7]


def test_plateau_like_early_stopping():
    rule = Plateau(K, mode="min", patience=3, min_delta=0.01)
    assert run(rule, [5.0, 4.0, 3.995, 3.999, 3.998, 3.0, 3.0, 3.0, 3.0]) == [4, 8]


def test_state_round_trip_neither_refires_nor_forgets():
    rule = Emergence(K, level=0.3, patience=1)
    assert run(rule, [0.01, 0.5]) == [1]
    fresh = Emergence(K, level=0.3, patience=1)
    fresh.load_state_dict(rule.state_dict())
    assert fresh.update(2, 0.6) is None and fresh.baseline == 0.01
    plateau = Plateau(K, patience=2)
    run(plateau, [3.0, 2.0])
    restored = Plateau(K, patience=2)
    restored.load_state_dict({})  # missing entries keep defaults
    restored.load_state_dict(plateau.state_dict())
    assert restored.best == 2.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: Threshold(K, 0.5, patience=0),
        lambda: Threshold(K, 0.5, warmup=-1),
        lambda: Threshold(K, 0.5, mode="up"),
        lambda: Threshold(K, 0.5, hysteresis=-1),
        lambda: Collapse(K, ratio=1.5),
        lambda: Plateau(K, min_delta=-1),
        lambda: Threshold("", 0.5),
        lambda: Threshold(K, 0.5, severity="loud"),
    ],
)
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()
