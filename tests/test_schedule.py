import pytest

from mechmon.schedule import as_schedule, at, every, log_spaced, union


def steps(schedule, n=30):
    return [s for s in range(n) if schedule(s)]


def test_every_and_first():
    assert steps(every(10)) == [0, 1, 10, 20]
    assert steps(every(10, first=False)) == [0, 10, 20]
    assert steps(every(10, offset=3, first=False)) == [3, 13, 23]
    assert repr(every(5)) == "every(5, offset=0, first=True)"


def test_at_log_spaced_union():
    assert steps(at([3, 7])) == [3, 7]
    ls = log_spaced(1, 1000, 4)
    assert [s for s in range(1001) if ls(s)] == [1, 10, 100, 1000]
    assert steps(union(at([2]), every(25, first=False))) == [0, 2, 25]
    assert "log_spaced(1, 1000, 4)" in repr(union(ls))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: every(0),
        lambda: every(2, offset=-1),
        lambda: at([-1]),
        lambda: log_spaced(0, 10, 3),
        lambda: log_spaced(5, 5, 3),
        lambda: union(),
    ],
)
def test_validation(bad):
    with pytest.raises(ValueError):
        bad()


def test_as_schedule():
    assert steps(as_schedule(15)) == [0, 1, 15]
    with pytest.raises(TypeError):
        as_schedule("often")
    with pytest.raises(TypeError):
        as_schedule(True)
