import pytest

from mechmon.naming import KEY_RE, head_scope, layer_scope, metric_key


def test_keys():
    assert metric_key("induction", "score_max") == "mechmon/induction/score_max"
    assert metric_key("induction", "score_max", layer_scope(3)) == "mechmon/induction/score_max/L03"
    assert metric_key("x", "y", head_scope(1, 12), namespace="mm") == "mm/x/y/L01H12"
    assert KEY_RE.match("mechmon/moe_routing/load_cv/math.L03")


@pytest.mark.parametrize("probe,stat", [("Induction", "x"), ("a", "Score"), ("a", "b/c"), ("a", "")])
def test_bad_keys(probe, stat):
    with pytest.raises(ValueError):
        metric_key(probe, stat)
