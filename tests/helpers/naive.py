"""Naive references, explicit loops over the definitions, shared by the formula and the probe tests."""

import torch
import torch.nn.functional as F


def naive_mean_cos(hidden, mask):
    out, valid = [], []
    for b in range(hidden.shape[0]):
        idx = [t for t in range(hidden.shape[1]) if mask[b, t]]
        pairs = [(i, j) for a, i in enumerate(idx) for j in idx[:a]]
        valid.append(len(pairs) > 0)
        cos = [F.cosine_similarity(hidden[b, i].double(), hidden[b, j].double(), dim=0) for i, j in pairs]
        out.append(float(sum(cos) / len(cos)) if cos else 0.0)
    return torch.tensor(out), torch.tensor(valid)


def naive_rankme(z, eps=1e-5, drop_smallest=False):
    sigma = torch.linalg.svdvals(z.double())  # descending, min(N, K) values
    sigma = sigma[:-1] if drop_smallest else sigma
    p = sigma / sigma.sum() + eps
    return torch.exp(-(p * p.log()).sum())


def naive_apm(pattern, target, rows):
    out = []
    for b in range(pattern.shape[0]):
        num = den = 0.0
        for h in range(pattern.shape[1]):
            for q in range(pattern.shape[2]):
                if not rows[b, q]:
                    continue
                for k in range(pattern.shape[3]):
                    a = abs(pattern[b, h, q, k].item())
                    num += a * target[q, k].item()
                    den += a
        out.append(num / den)
    return torch.tensor(out)
