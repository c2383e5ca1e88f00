"""The repeated-random-token probe batches (P-rep, P-rep4) the induction-family probes build at setup."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mechmon.adapters.base import Adapter
from mechmon.checks import integer, number
from mechmon.functional.induction import repeated_tokens

__all__ = ["check_repeated_args", "fit_period", "repeated_batch"]


def check_repeated_args(
    owner: str, period: int | None, batch_size: int, seed: int, bos_token_id: int | None, level: float, top_k: int
) -> None:
    """Validate the arguments the repeated-batch probes share.

    Raises:
        TypeError, ValueError: naming ``owner`` and the argument.
    """
    if period is not None:
        integer(owner, "period", period, 2)
    for arg, value, low in (("batch_size", batch_size, 1), ("top_k", top_k, 1)):
        integer(owner, arg, value, low)
    integer(owner, "seed", seed)
    if bos_token_id is not None:
        integer(owner, "bos_token_id", bos_token_id, 0)
    number(owner, "level", level, 0, 1)


def fit_period(adapter: Adapter, owner: str, period: int | None, default: int, copies: int, offset: int) -> int:
    """The period to use: ``period`` as given, or (``None``) the largest up to ``default`` that fits the context.

    Rule: with ``period=None`` the period is ``default``, shrunk to ``(context - offset) // copies`` when the model's
    context (``adapter.max_positions``, where known) is shorter, with one warning; an explicit ``period`` is never
    changed.

    Raises:
        ValueError: with ``period=None``, when the context cannot hold ``copies`` copies of a period of 2 (an explicit
            period too long is refused by :func:`repeated_batch`, naming the period that fits).
    """
    context = adapter.max_positions
    most = None if context is None else (context - offset) // copies
    if period is not None or most is None or most >= default:
        return default if period is None else period
    if most < 2:
        raise ValueError(
            f"{owner} needs {copies} copies of at least 2 tokens, but the model's context is {context} tokens; "
            f"leave {owner} out for this model"
        )
    warnings.warn(
        f"mechmon: {owner}: the model's context is {context} tokens, too short for the default period {default} "
        f"({copies} copies): period {most} is used (pass {owner}(period={most}) to silence this)",
        stacklevel=3,
    )
    return most


def repeated_batch(
    adapter: Adapter, owner: str, period: int, copies: int, batch_size: int, seed: int, bos_token_id: int | None
) -> Tensor:
    """``[batch_size, s + copies·period]`` seeded ids drawn without replacement (special ids excluded), on CPU.

    Raises:
        ValueError: when the model's context or vocabulary is too small, naming the argument to lower.
    """
    offset = int(bos_token_id is not None)
    length = offset + copies * period
    if adapter.max_positions is not None and length > adapter.max_positions:
        most = (adapter.max_positions - offset) // copies
        raise ValueError(
            f"{owner}(period={period}) needs sequences of {length} tokens, but the model's context is "
            f"{adapter.max_positions}; pass {owner}(period={most}) or less"
        )
    excluded = {bos_token_id, adapter.bos_token_id} - {None}
    allowed = torch.tensor([i for i in range(adapter.vocab_size) if i not in excluded], dtype=torch.long)
    if allowed.numel() < period:
        raise ValueError(
            f"{owner}(period={period}) needs {period} distinct token ids, the vocabulary offers "
            f"{allowed.numel()}; pass {owner}(period={allowed.numel()}) or less (>= 2)"
        )
    gen = torch.Generator().manual_seed(seed)
    return repeated_tokens(batch_size, period, allowed, gen, bos_token_id, copies=copies)
