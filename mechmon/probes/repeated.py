"""The repeated-random-token probe batches (P-rep, P-rep4) the induction-family probes build at setup."""

from __future__ import annotations

import torch
from torch import Tensor

from mechmon.adapters.base import Adapter
from mechmon.functional.induction import repeated_tokens

__all__ = ["repeated_batch"]


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
