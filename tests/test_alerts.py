import math

import pytest

from mechmon.alerts import Alert, Collapse, Compound, Emergence, NonFinite, Phase, Plateau, Threshold, Trend

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
    assert NonFinite(K).update(7, math.nan, measured=False) is None  # nothing measured yet: warned, not alerted
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


def test_plateau_relative_delta_counts_small_improvements_as_flat():
    rule = Plateau(K, min_rel_delta=0.01, patience=3)
    # each value is less than 1 % below the best (2.83, then 1.0), so flat from the second value of each run
    assert run(rule, [2.83, 2.825, 2.82, 2.815, 1.0, 0.995, 0.993, 0.992]) == [3, 7]
    # a slow decline that adds up to more than 1 % is an improvement and resets the count
    assert run(Plateau(K, min_rel_delta=0.01, patience=3), [2.83, 2.82, 2.81, 2.80, 2.79, 2.78]) == []
    absolute = Plateau(K, min_delta=0.005, patience=3)
    assert run(absolute, [2.83, 2.82, 2.81, 2.80]) == []  # each beats the best by more than 0.005
    with pytest.raises(ValueError, match="min_rel_delta"):
        Plateau(K, min_rel_delta=-0.1)


def test_collapse_margin_below_running_max():
    rule = Collapse(K, ratio=1.0, margin=0.1)
    # 0.84 < 0.95 - 0.1 fires; 0.97 re-arms and raises the max; 0.8 < 0.97 - 0.1 fires again
    assert run(rule, [0.5, 0.95, 0.9, 0.86, 0.84, 0.5, 0.97, 0.8]) == [4, 7]
    assert run(Collapse(K, ratio=1.0, margin=0.1), [0.5, 0.95, 0.86, 0.9]) == []
    with pytest.raises(ValueError, match="margin"):
        Collapse(K, ratio=1.0)


def plateau_phase():
    loss, cos = "mechmon/c/loss", "mechmon/c/cos"
    enter = [Plateau(loss, min_rel_delta=0.01, patience=2), Threshold(cos, 0.9, patience=2)]
    exit_ = [Collapse(cos, ratio=1.0, margin=0.1), Collapse(loss, ratio=0.8)]
    return Phase(enter, exit_, name="plateau_start", exit_name="plateau_exit"), loss, cos


def feed(rule, loss_key, cos_key, losses, cosines):
    out = []
    for i, (loss, cos) in enumerate(zip(losses, cosines, strict=True)):
        alert = rule.observe(i, {loss_key: loss, cos_key: cos})
        out += [(i, alert.rule)] if alert else []
    return out


def test_phase_enters_once_exits_once_and_rearms():
    rule, loss, cos = plateau_phase()
    losses = [3.0, 2.8, 2.8, 2.8, 2.8, 2.8, 2.0, 0.5, 0.5, 0.5, 0.5]
    cosines = [0.3, 0.92, 0.95, 0.96, 0.96, 0.95, 0.9, 0.3, 0.3, 0.3, 0.3]
    assert feed(rule, loss, cos, losses, cosines) == [(3, "plateau_start"), (6, "plateau_exit")]
    assert rule.names == ("plateau_start", "plateau_exit") and not rule.inside
    # a second plateau fires again: the loss has been flat since index 7, the cosine is high for 2 evaluations
    assert feed(rule, loss, cos, [0.5, 0.5, 0.5, 0.1], [0.95, 0.95, 0.95, 0.95]) == [
        (1, "plateau_start"),
        (3, "plateau_exit"),
    ]


def test_phase_exit_statistics_start_at_entry_and_round_trip():
    rule, loss, cos = plateau_phase()
    # a high loss long before the plateau must not count as the plateau's level for the drop test
    losses, cosines = [9.0, 2.8, 2.8, 2.8, 2.7], [0.95, 0.95, 0.95, 0.95, 0.95]
    assert feed(rule, loss, cos, losses, cosines) == [(3, "plateau_start")]
    saved = rule.state_dict()
    twin, _, _ = plateau_phase()
    twin.load_state_dict(saved)
    assert twin.inside and feed(twin, loss, cos, [2.7, 2.0], [0.95, 0.95]) == [(1, "plateau_exit")]
    assert feed(rule, loss, cos, [2.7], [0.8]) == [(0, "plateau_exit")]  # cosine fell 0.15 below its max


def test_phase_validation():
    rule = Threshold(K, 0.5)
    with pytest.raises(ValueError, match="enter"):
        Phase([], [rule])
    with pytest.raises(ValueError, match="exit_name"):
        Phase([rule], [Threshold(K, 0.1)], exit_name="bad name")
    with pytest.raises(TypeError):
        plateau_phase()[0].update(0, 1.0)


def test_collapse_warmup_values_do_not_set_the_running_max():
    # an initial 67 (random init) followed by 17 and a slow rise: quiet with warmup=1, fires without it
    values = [67.0, 17.0, 23.0, 27.0, 30.0]
    assert run(Collapse(K, ratio=0.5, patience=2, warmup=1), values) == []
    assert run(Collapse(K, ratio=0.5, patience=2), values) == [2]


def rankme_rule():
    """The default ``dimensional_collapse`` rule on ``repr_rank/rankme`` of a real, set-up ``RankProbe``."""
    from mechmon import Monitor, RankProbe
    from tests.helpers import tiny_gpt2

    monitor = Monitor(tiny_gpt2(), probes=[RankProbe()], log_dir=None)
    monitor.close()
    [rule] = [r for r in monitor.probes[0].rules() if r.key == "mechmon/repr_rank/rankme"]
    return rule


def test_the_early_training_rankme_drop_does_not_warn_and_a_later_sustained_collapse_does():
    # a healthy HF run evaluated every 10 steps: 48 at init, 34.9 at step 10, 14.8 at 20, the trough, then training
    # builds rank back up; the warmup alone let 34.9 set the running max, so 14.8 and 15.1 warned
    early = [48.0, 34.9, 14.8, 15.1, 18.0, 24.0, 31.0, 36.0, 40.0]
    assert run(rankme_rule(), early) == []
    assert run(Collapse(K, ratio=0.5, patience=2, warmup=1), early) == [3]  # the rule before the trough rise
    collapsed = early + [38.0, 17.0, 15.0, 14.0]  # later: below half of the 40 training built, for 2 evaluations
    assert run(rankme_rule(), collapsed) == [11]
    assert run(rankme_rule(), early + [38.0, 17.0, 30.0, 18.0]) == []  # one low evaluation is not sustained


def test_collapse_rise_arms_after_the_trough_in_either_mode_and_round_trips():
    assert run(Collapse(K, ratio=0.5, patience=1, rise=0.1), [10.0, 4.0, 4.2, 4.5, 9.0, 4.0]) == [5]
    assert run(Collapse(K, ratio=0.5, mode="min", patience=1, rise=0.1), [1.0, 3.0, 2.9, 2.5, 1.0, 2.5]) == [5]
    rule = Collapse(K, ratio=0.5, patience=1, rise=0.1)
    run(rule, [10.0, 4.0, 4.5])
    again = Collapse(K, ratio=0.5, patience=1, rise=0.1)
    again.load_state_dict(rule.state_dict())
    assert (again.trough, again.armed, again.extreme) == (4.0, True, 4.5)
    with pytest.raises(ValueError, match="rise"):
        Collapse(K, rise=0)
