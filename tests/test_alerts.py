import math

import pytest

from mechmon.alerts import Alert, Collapse, Compound, Emergence, NonFinite, Plateau, Threshold, Trend

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


def test_theil_sen_against_a_naive_median_of_slopes():
    from statistics import median

    from mechmon.alerts import theil_sen

    values = [1.0, 2.5, 2.0, 4.0, 9.0, 5.5]
    naive = median([(values[j] - values[i]) / (j - i) for i in range(6) for j in range(6) if j > i])
    slope, mad = theil_sen(values)
    assert slope == naive
    residuals = [v - slope * i for i, v in enumerate(values)]
    assert mad == median(abs(r - median(residuals)) for r in residuals)
    assert theil_sen([2.0, 4.0, 6.0]) == (2.0, 0.0)


def test_trend_fires_on_a_significant_rise_and_rearms():
    rule = Trend(K, window=4, z=2.0)
    flat_noise = [1.0, 1.2, 1.0, 1.2, 1.0, 1.2]  # no significant slope in any window
    rising = [1.0, 2.0, 3.0, 4.0]
    # fires as soon as the window [1.0, 1.2, 1.0, 2.0] rises beyond the noise; re-arms on the flat run
    assert run(rule, flat_noise + rising + [4.0, 4.0, 4.0, 4.0] + rising) == [7, 17]
    assert run(Trend(K, window=3, mode="min"), [5.0, 4.0, 3.0, 2.0]) == [2]


def test_compound_needs_all_members_at_once():
    cos, acc = "mechmon/nlm/cos_grad", "mechmon/logits/accuracy_frac"
    rule = Compound([Threshold(cos, 0.7, patience=2), Threshold(acc, 0.99)], name="nlm_regime")
    seq = [(0.8, 0.5), (0.8, 0.5), (0.8, 1.0), (0.9, 1.0), (0.2, 1.0), (0.8, 1.0), (0.8, 1.0)]
    fired = [i for i, (c, a) in enumerate(seq) if rule.observe(i, {cos: c, acc: a})]
    assert fired == [2, 6]
    assert rule.observe(9, {"other": 1.0}) is None
    restored = Compound([Threshold(cos, 0.7, patience=2), Threshold(acc, 0.99)], name="nlm_regime")
    restored.load_state_dict(rule.state_dict())
    assert restored.observe(10, {cos: 0.8, acc: 1.0}) is None  # still active: no re-fire after resume
    with pytest.raises(TypeError):
        rule.update(0, 1.0)
    with pytest.raises(ValueError):
        Compound([Threshold(cos, 0.7)])
    with pytest.raises(ValueError):
        Trend(K, window=2)
