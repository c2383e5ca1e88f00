"""A nanoGPT-shaped model written here (Karpathy's ``model.py`` layout): fused ``c_attn``, SDPA with ``is_causal``,
``forward(idx, targets=None)`` returning ``(logits, loss)`` with only the last position's logits without targets."""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd = n_head, n_embd

    def qkv(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        return [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)]

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def explicit_pattern(self, x):
        """softmax(q kᵀ / sqrt(d) + causal mask), for tests."""
        q, k, _ = self.qkv(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        T = x.shape[1]
        return torch.softmax(scores.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")), dim=-1)


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int = 64, block_size: int = 48, n_layer: int = 2, n_head: int = 4, n_embd: int = 32):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def gpt(seed: int = 0, **kwargs) -> GPT:
    torch.manual_seed(seed)
    return GPT(**kwargs)


class Stage(nn.Module):
    """One pipeline stage of a :class:`GPT`, as torchtitan builds them: its blocks under their global indices (a
    ``ModuleDict``), the embeddings if first, the final norm and an untied copy of the head if last.
    ``Stage(model, 0, 1)`` is the whole model (the unpipelined reference)."""

    def __init__(self, model: GPT, index: int, stages: int) -> None:
        super().__init__()
        blocks = list(model.transformer.h)
        per = len(blocks) // stages
        self.first, self.last = index == 0, index == stages - 1
        self.config = SimpleNamespace(block_size=model.transformer.wpe.num_embeddings)
        self.h = nn.ModuleDict({str(i): blocks[i] for i in range(index * per, (index + 1) * per)})
        if self.first:
            self.wte, self.wpe = model.transformer.wte, model.transformer.wpe
        if self.last:
            self.ln_f = model.transformer.ln_f
            self.lm_head = nn.Linear(*reversed(model.lm_head.weight.shape), bias=False)  # untied across stages
            self.lm_head.weight.data.copy_(model.lm_head.weight.data)

    def forward(self, x):
        if self.first:
            x = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.h.values():
            x = block(x)
        return self.lm_head(self.ln_f(x)) if self.last else x
