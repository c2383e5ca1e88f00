"""A model whose attention patterns are forced to known induction / previous-token patterns."""

import torch
from torch import nn

from mechmon.adapters import ModuleAdapter, pattern_name


def induction_pattern(T: int, n: int, s: int) -> torch.Tensor:
    p = torch.zeros(T, T)
    p[:, 0] = 1.0
    for i in range(n):
        p[s + n + i] = 0.0
        p[s + n + i, s + i + 1] = 1.0
    return p


def prev_pattern(T: int) -> torch.Tensor:
    p = torch.zeros(T, T)
    p[0, 0] = 1.0
    for q in range(1, T):
        p[q, q - 1] = 1.0
    return p


class ForcedAttention(nn.Module):
    def __init__(self, patterns_HQK: torch.Tensor):
        super().__init__()
        self.register_buffer("patterns", patterns_HQK)

    def forward(self, x):
        T = x.shape[1]
        pattern = self.patterns[:, :T, :T].expand(x.shape[0], -1, -1, -1)
        return x, pattern


class ForcedModel(nn.Module):
    """Layer 0: head 0 perfect induction, head 1 previous token; layer 1: uniform causal."""

    def __init__(self, vocab: int, T: int, n: int, s: int, d: int = 8):
        super().__init__()
        uniform = torch.ones(T, T).tril()
        uniform = uniform / uniform.sum(-1, keepdim=True)
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            [
                ForcedAttention(torch.stack([induction_pattern(T, n, s), prev_pattern(T)])),
                ForcedAttention(torch.stack([uniform, uniform])),
            ]
        )
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = x + layer(x)[0]
        return self.head(x)


def forced_adapter(model: ForcedModel, vocab: int, bos=None) -> ModuleAdapter:
    points = {pattern_name(i): (f"layers.{i}", lambda out: out[1]) for i in range(2)}
    points["logits"] = "head"
    return ModuleAdapter(model, points, n_layers=2, n_heads=2, vocab_size=vocab, bos_token_id=bos)
