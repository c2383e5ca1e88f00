import numpy as np
import pytest

from mechmon.functional.memorization import loss_quantile, memorization_step


def run(losses, eps=1.0, delta=0.05, window=3):
    """Feed a [K, N] loss table through the criterion; return cohorts and revocations after each evaluation."""
    losses = np.asarray(losses, dtype=np.float64)
    history = np.full((window, losses.shape[1]), np.nan)
    cohort = np.full(losses.shape[1], -1, dtype=np.int64)
    seen = []
    for k, loss in enumerate(losses):
        history, cohort, revoked = memorization_step(history, loss, np.full(len(loss), eps), cohort, 10 * k, delta)
        seen.append((cohort.tolist(), revoked.tolist()))
    return seen


def test_enters_after_window_stable_evaluations_below_epsilon():
    # sample 0: below eps and flat from evaluation 0 -> enters once the window (3) is full, at evaluation 2 (step 20)
    # sample 1: below eps but drifting by 0.1 per evaluation -> never stable within 0.05
    # sample 2: flat but above eps -> never
    # sample 3: flat below eps from evaluation 1 on -> window full of stable values at evaluation 3 (step 30)
    seen = run([[0.5, 0.9, 1.2, 2.0], [0.5, 0.8, 1.2, 0.5], [0.51, 0.7, 1.2, 0.5], [0.5, 0.6, 1.2, 0.5]])
    assert [c for c, _ in seen] == [[-1, -1, -1, -1], [-1, -1, -1, -1], [20, -1, -1, -1], [20, -1, -1, 30]]


def test_revoked_above_epsilon_plus_delta_then_may_reenter():
    # in at step 20; 1.04 is within eps + delta (stays); 1.2 revokes; flat 0.3 again -> re-enters with a new cohort
    seen = run([[0.3], [0.3], [0.3], [1.04], [1.2], [0.3], [0.3], [0.3]])
    cohorts = [c[0] for c, _ in seen]
    revoked = [r[0] for _, r in seen]
    assert cohorts == [-1, -1, 20, 20, -1, -1, -1, 70]
    assert revoked == [False, False, False, False, True, False, False, False]


def test_no_epsilon_means_nobody_enters():
    history, cohort, _ = memorization_step(
        np.zeros((3, 2)), np.zeros(2), np.full(2, np.nan), np.full(2, -1, dtype=np.int64), 5
    )
    assert cohort.tolist() == [-1, -1] and history.shape == (3, 2)


def test_loss_quantile_puts_the_share_under_epsilon_per_group():
    loss = np.arange(40, dtype=np.float64)
    members = {"a": np.arange(0, 20), "b": np.arange(20, 40)}
    eps = loss_quantile(loss, members, 0.225)
    assert eps == {"a": pytest.approx(np.quantile(loss[:20], 0.225)), "b": pytest.approx(20 + 19 * 0.225)}
    assert (loss[:20] <= eps["a"]).mean() == pytest.approx(0.25)  # 5 of 20: the nearest share a quantile allows
