import math

import pytest
import torch

from mechmon.functional.logits import absorption_gap, measured_absorption_gap
from mechmon.functional.weights import cosines, dots_and_square_norms, global_cosine, square_norms


def tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen), torch.randn(2, 2, 2, generator=gen)]


def test_square_norms_and_dots_against_loops():
    ps, ds = tensors(0), tensors(1)
    expected = [sum(float(v) ** 2 for v in p.flatten()) for p in ps]
    torch.testing.assert_close(square_norms(ps), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    stats = dots_and_square_norms(ds, ps)
    for i, (d, p) in enumerate(zip(ds, ps, strict=True)):
        dot = sum(float(a) * float(b) for a, b in zip(d.flatten(), p.flatten(), strict=True))
        assert stats[0, i].item() == pytest.approx(dot, rel=1e-5)
        cos = dot / math.sqrt(float((d**2).sum()) * float((p**2).sum()))
        assert cosines(stats)[i].item() == pytest.approx(cos, rel=1e-5)
    flat_d, flat_p = torch.cat([d.flatten() for d in ds]), torch.cat([p.flatten() for p in ps])
    expected_global = float(flat_d @ flat_p) / float(flat_d.norm() * flat_p.norm())
    assert global_cosine(stats).item() == pytest.approx(expected_global, rel=1e-5)


def test_zero_norms_and_sign_convention():
    p = torch.ones(4)
    stats = dots_and_square_norms([torch.zeros(4), p * 2], [p, p])
    assert cosines(stats).tolist() == [0.0, 1.0]
    assert math.isnan(global_cosine(dots_and_square_norms([torch.zeros(4)], [p])).item())  # no gradient seen at all
    assert cosines(dots_and_square_norms([-p], [p])).item() == -1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_measured_absorption_gap_lies_in_the_order_dependent_band(dtype):
    cpu = torch.device("cpu")
    two = measured_absorption_gap(2, dtype, cpu).item()
    assert absorption_gap(dtype) - 0.01 <= two <= absorption_gap(dtype) + 0.06  # one other term: exactly (p+1)ln2
    v113 = measured_absorption_gap(113, dtype, cpu).item()
    assert absorption_gap(dtype) <= v113 <= absorption_gap(dtype) + math.log(112) + 0.06
    rows = torch.zeros(2, 113, dtype=torch.float64)
    rows[:, 0] = torch.tensor([v113 - 0.1, v113 + 0.01])
    from mechmon.functional.logits import softmax_collapse

    assert softmax_collapse(rows, dtype).tolist() == [False, True]


def test_chunked_norms_and_dots_equal_the_whole_tensor_and_stay_within_48_mib(monkeypatch):
    import mechmon.functional.weights as weights
    from tests.helpers.memory import LiveBytes

    p = torch.randn(3000, 2000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # 6M elements
    g = torch.randn(3000, 2000, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    whole = torch.stack([(-g.float() * p.float()).sum(), g.float().pow(2).sum(), p.float().pow(2).sum()]).double()
    monkeypatch.setattr(weights, "CHUNK", 1_000_000)  # several chunks, and a small bound to check against
    with LiveBytes([p, g]) as mode:
        stats = dots_and_square_norms([g, None], [p, p], sign=-1.0)
        norms = square_norms([p])
    torch.testing.assert_close(stats[:, 0], whole, rtol=1e-5, atol=1e-3)
    assert stats[:, 1].tolist() == [0.0, 0.0, stats[2, 0].item()] and norms[0].item() == stats[2, 0].item()
    assert mode.peak <= 3 * 4 * 1_000_000 + 4096  # three float32 chunk temporaries; the bf16 inputs are never copied
