"""Online memorization criterion of the grokking-pathway family (docs/metrics.md B1), host side, on numpy.

Li, Fan & Zhou, *Where to find Grokking in LLM Pretraining? Monitor Memorization-to-Generalization without Test*
(ICLR 2026), Sec. 3 and App. B.1. Offline, sample i is memorized from t*_i on if its mean token loss stays at most ε
and within δ of its final value. Online the final value is unknown, so at evaluation k a sample enters the
memorized set if ℓ_i(t_k) ≤ ε and its last ``w`` losses all lie within δ of ℓ_i(t_k); it stays there (its cohort is
the step it entered) until its loss exceeds ε + δ, which revokes it. Legend: N samples, W the stability window.
"""

from __future__ import annotations

import numpy as np

__all__ = ["memorization_step", "loss_quantile"]


def memorization_step(
    history_WN: np.ndarray,
    loss_N: np.ndarray,
    epsilon_N: np.ndarray,
    cohort_N: np.ndarray,
    step: int,
    delta: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One evaluation of the online criterion.

    Args:
        history_WN: the last W losses before this evaluation, oldest first, NaN where none was seen yet ``[W, N]``.
        loss_N: each sample's mean token loss at this evaluation, nats ``[N]``.
        epsilon_N: each sample's loss bound ε (its group's), nats ``[N]``; NaN means no bound yet (nothing enters).
        cohort_N: the step at which each sample entered the memorized set, ``-1`` if it is not in it ``[N]``.
        step: this evaluation's global step (the cohort id of samples entering now).
        delta: stability band δ in nats (0.05 in the paper).

    Returns:
        ``(history_WN, cohort_N, revoked_N)``: the window shifted by this loss, the new cohorts, and a bool mask of
        samples revoked at this evaluation (loss above ε + δ after having entered). Inputs are not modified.
    """
    history = np.concatenate([history_WN[1:], loss_N[None].astype(history_WN.dtype)], axis=0)
    with np.errstate(invalid="ignore"):
        stable = np.all(np.abs(history - loss_N) <= delta, axis=0)  # False while the window holds a NaN
        below = loss_N <= epsilon_N
        revoked = (cohort_N >= 0) & (loss_N > epsilon_N + delta)
    cohort = np.where(revoked, -1, cohort_N)
    cohort = np.where((cohort < 0) & below & stable & ~revoked, step, cohort)
    return history, cohort.astype(cohort_N.dtype), revoked


def loss_quantile(loss_N: np.ndarray, members: dict[str, np.ndarray], q: float = 0.225) -> dict[str, float]:
    """Each group's ``q``-quantile of the losses: the ε that puts ≈ q of the group under it (22.5 %, App. B.1).

    Args:
        loss_N: mean token loss per sample, nats ``[N]``.
        members: group -> row indices into ``loss_N``.
        q: quantile in (0, 1).
    """
    return {g: float(np.quantile(loss_N[rows], q)) for g, rows in members.items()}
