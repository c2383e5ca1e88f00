"""Head turnover: the overlaps against a Jaccard computed by hand, the emerged set, a resumed tracker, and the
``head_turnover`` alert on a model whose induction head moves to another layer while the score stays at 1."""

import math

import numpy as np
import torch

from mechmon import InductionProbe, Monitor
from mechmon.turnover import Turnover
from tests.helpers.forced import ForcedModel, forced_adapter, induction_pattern


def scores(*best: int, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    """``[2, 4]`` scores: the flat heads ``best`` at ``high`` (slightly decreasing), the others at ``low``."""
    s = np.full(8, low)
    for rank, head in enumerate(best):
        s[head] = high - 0.01 * rank
    return s.reshape(2, 4)


def test_overlaps_equal_a_jaccard_by_hand_and_the_emerged_set_freezes_after_two_evaluations_at_the_level():
    t = Turnover(k=2, level=0.5)
    low = scores(0, 1, high=0.3)  # below the level
    assert t.update(low) == {}  # nothing to compare with yet
    assert t.update(scores(1, 2)) == {"turnover_jaccard": 1 / 3}  # {0,1} vs {1,2}: 1 shared of 3
    out = t.update(scores(1, 2))  # the second evaluation at the level: the set {1, 2} freezes
    assert out == {"turnover_jaccard": 1.0, "turnover_jaccard_emerged": 1.0}
    out = t.update(scores(5, 6))  # another pair of heads does the job now
    assert out == {"turnover_jaccard": 0.0, "turnover_jaccard_emerged": 0.0}
    assert t.update(scores(2, 6)) == {"turnover_jaccard": 1 / 3, "turnover_jaccard_emerged": 1 / 3}
    assert t.update(np.full((2, 4), math.nan)) == {}  # nothing measured: nothing changes


def test_a_family_without_a_level_gives_only_the_overlap_with_the_previous_evaluation():
    t = Turnover(k=1, level=None)
    t.update(scores(3))
    assert t.update(scores(3)) == {"turnover_jaccard": 1.0}


def test_a_restored_tracker_goes_on_as_the_one_it_was_saved_from():
    a, b = Turnover(k=2, level=0.5), Turnover(k=2, level=0.5)
    for s in (scores(0, 1), scores(0, 1), scores(0, 4)):
        a.update(s)
    b.load(a.state())
    expected = {"turnover_jaccard": 1 / 3, "turnover_jaccard_emerged": 0.0}
    assert b.update(scores(4, 5)) == a.update(scores(4, 5)) == expected


def test_head_turnover_fires_when_the_induction_head_moves_while_the_score_stays_up():
    n, vocab = 8, 32
    model = ForcedModel(vocab, T=2 * n, n=n, s=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = InductionProbe(period=n, batch_size=2, top_k=1, ablate_k=0)
    monitor = Monitor(model, optimizer=optimizer, adapter=forced_adapter(model, vocab), probes=[probe], schedule=1,
                      budget=None, log_dir=None)  # fmt: skip
    seen = []
    for step in range(1, 7):
        if step == 4:  # the induction head moves from layer 0 head 0 to layer 1 head 1
            model.layers[0].patterns[0], model.layers[1].patterns[1] = (
                model.layers[1].patterns[1].clone(),
                induction_pattern(2 * n, n, 0),
            )
        with monitor.step(step):
            model(torch.randint(0, vocab, (2, 2 * n))).sum().backward()
            optimizer.step()
        stats = ("turnover_jaccard", "turnover_jaccard_emerged")
        seen.append({k: monitor.latest.get(f"mechmon/induction/{k}") for k in stats})
    monitor.close()
    assert monitor.latest["mechmon/induction/score_max"] == 1.0
    assert seen[2] == {"turnover_jaccard": 1.0, "turnover_jaccard_emerged": 1.0}  # frozen at step 2
    assert seen[3] == {"turnover_jaccard": 0.0, "turnover_jaccard_emerged": 0.0}
    assert seen[4] == {"turnover_jaccard": 1.0, "turnover_jaccard_emerged": 0.0}
    fired = [(a.rule, a.step, a.severity) for a in monitor.alerts if a.rule == "head_turnover"]
    assert fired == [("head_turnover", 4, "info")]  # once: it re-arms only when the old heads return
