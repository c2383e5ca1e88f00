import math

import pytest
import torch

from mechmon.functional.collapse import effective_rank, gram_with_ones, mean_pairwise_cosine, participation_ratio
from tests.helpers.naive import naive_mean_cos, naive_rankme


def random_mask(B, T, gen):
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[:, 0] = False  # position 0 excluded, as the probes do
    mask[0, T // 2 :] = False  # right padding in row 0
    return mask


@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 16, 32), (4, 3, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_pairwise_cosine_matches_pair_loop(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    hidden = torch.randn(shape, generator=gen) + 0.5
    mask = random_mask(shape[0], shape[1], gen)
    got, valid = mean_pairwise_cosine(hidden.to(dtype), mask)
    want, want_valid = naive_mean_cos(hidden.to(dtype).float(), mask)
    assert torch.equal(valid, want_valid)
    # measured: at most 9e-8 from the float64 pair loop in all six cases, bf16 included (the sums run in float32)
    assert torch.allclose(got, want.float(), atol=1e-6, rtol=0)


def test_mean_pairwise_cosine_hand_cases():
    parallel = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])
    orthogonal = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    assert mean_pairwise_cosine(parallel, torch.ones(1, 3, dtype=torch.bool))[0].item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(orthogonal, mask)[0].item() == pytest.approx(0.0, abs=1e-7)
    cos, valid = mean_pairwise_cosine(parallel, torch.tensor([[False, True, False]]))
    assert not valid.item() and cos.item() == 0.0  # one position: no pair


def naive_gram(hidden, mask):
    rows = [torch.cat([hidden[b, t].double(), torch.ones(1, dtype=torch.float64)]) for b, t in mask.nonzero().tolist()]
    z = torch.stack(rows)
    return z.T @ z


def test_gram_with_ones_and_projection():
    gen = torch.Generator().manual_seed(0)
    hidden, mask = torch.randn(3, 6, 4, generator=gen), random_mask(3, 6, gen)
    assert torch.allclose(gram_with_ones(hidden, mask).double(), naive_gram(hidden, mask), atol=1e-5)
    proj = torch.randn(4, 2, generator=gen)
    assert torch.allclose(gram_with_ones(hidden, mask, proj).double(), naive_gram(hidden @ proj, mask), atol=1e-4)


@pytest.mark.parametrize("centered", [False, True])
def test_effective_rank_matches_rankme_on_singular_values(centered):
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 10, 6, generator=gen) @ torch.diag(torch.tensor([5.0, 3, 1, 0.5, 0.1, 0.01]))
    mask = random_mask(4, 10, gen)
    z = hidden[mask].double()
    if centered:
        z = z - z.mean(dim=0)
    got = effective_rank(gram_with_ones(hidden, mask), centered=centered)
    assert got.item() == pytest.approx(naive_rankme(z).item(), rel=1e-4)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("tokens", [2, 3, 9])
def test_effective_rank_with_fewer_tokens_than_dimensions(centered, tokens):
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, tokens, 64, generator=gen)  # float32, as the probe's Gram
    mask = torch.ones(1, tokens, dtype=torch.bool)
    z = hidden[mask].double()
    if centered:
        z = z - z.mean(dim=0)
    want = naive_rankme(z, drop_smallest=centered)  # a centered Z has rank N - 1: its last singular value is 0
    got = effective_rank(gram_with_ones(hidden, mask), centered=centered)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)  # the 64 - N zero eigenvalues add nothing


def test_effective_rank_hand_case_and_batching():
    # k orthogonal directions of equal norm: sigma equal on k dims -> RankMe = k (up to eps)
    eye = torch.eye(4)
    for k in (2, 3, 4):
        hidden = (eye[:k] * 3.0).unsqueeze(0)
        value = effective_rank(gram_with_ones(hidden, torch.ones(1, k, dtype=torch.bool))).item()
        assert value == pytest.approx(k, rel=1e-3)
    stacked = torch.stack(
        [gram_with_ones((eye[:k] * 3.0).unsqueeze(0), torch.ones(1, k, dtype=torch.bool)) for k in (1, 2, 4)]
    )
    one, two, four = effective_rank(stacked).tolist()  # one token has no rank to measure: NaN, not "collapsed"
    assert math.isnan(one) and [two, four] == pytest.approx([2.0, 4.0], rel=1e-3)


def test_participation_ratio_matches_eigenvalues():
    gen = torch.Generator().manual_seed(2)
    hidden, mask = torch.randn(2, 12, 5, generator=gen), random_mask(2, 12, gen)
    z = hidden[mask].double()
    cov = (z - z.mean(0)).T @ (z - z.mean(0))
    lam = torch.linalg.eigvalsh(cov)
    want = lam.sum() ** 2 / (lam**2).sum()
    assert participation_ratio(gram_with_ones(hidden, mask)).item() == pytest.approx(want.item(), rel=1e-5)
    # isotropic in 2 dims -> PR = 2
    pts = torch.tensor([[[1.0, 0], [-1, 0], [0, 1], [0, -1]]])
    assert participation_ratio(gram_with_ones(pts, torch.ones(1, 4, dtype=torch.bool))).item() == pytest.approx(2.0)
    assert math.isnan(participation_ratio(torch.zeros(3, 3)).item())  # no token: NaN, never a plausible 0
