import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mechmon.adapters import ModuleAdapter
from mechmon.probes import NLMProbe, WeightsProbe


def homogeneous_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 5, bias=False))


def setup(probe, model):
    adapter = ModuleAdapter(model, {"logits": "2"}, n_layers=0, n_heads=0, vocab_size=5)
    probe.attach(model, adapter, torch.device("cpu"))
    return probe


def test_nlm_cosine_matches_the_euler_identity_on_a_homogeneous_mlp():
    # f(αθ) = α² f(θ), so <-∇L, θ> = -2 Σ_n <∂L/∂z_n, z_n> = -(2/N) Σ_n (E_softmax[z_n] - z_n,y)
    model = homogeneous_mlp()
    x, y = torch.randn(32, 6), torch.randint(0, 5, (32,))
    z = model(x)
    F.cross_entropy(z, y).backward()
    probe = setup(NLMProbe(update_form=False), model)
    probe.before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))
    out = probe.compute()
    with torch.no_grad():
        dot = -(2 / 32) * ((z.softmax(-1) * z).sum(-1) - z.gather(1, y[:, None]).squeeze(1)).sum()
        g_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        w_norm = torch.cat([p.flatten() for p in model.parameters()]).norm()
    assert out["mechmon/nlm/cos_grad"].item() == pytest.approx((dot / (g_norm * w_norm)).item(), rel=1e-4)
    assert out["mechmon/nlm/par_frac"].item() == pytest.approx(out["mechmon/nlm/cos_grad"].item() ** 2, rel=1e-6)
    assert "mechmon/nlm/cos_grad/2.weight" in out


def test_memorised_data_drives_the_gradient_along_the_weights():
    model = homogeneous_mlp(1)
    x = torch.randn(16, 6)
    with torch.no_grad():
        y = model(x).argmax(-1)  # every sample already classified correctly
    F.cross_entropy(model(x), y).backward()
    probe = setup(NLMProbe(update_form=False), model)
    probe.before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))
    assert probe.compute()["mechmon/nlm/cos_grad"].item() > 0  # descent grows the weights: naive loss minimization


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_update_cosine_removes_decoupled_decay(weight_decay):
    model = homogeneous_mlp(2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=weight_decay)
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    F.cross_entropy(model(x), y).backward()
    probe = setup(NLMProbe(), model)
    before = model[2].weight.detach().clone()
    probe.before_optimizer_step(opt)
    opt.step()
    probe.evaluate()
    step = model[2].weight.detach() - before + 0.01 * weight_decay * before
    expected = float((step * before).sum() / (step.norm() * before.norm()))
    assert probe.compute()["mechmon/nlm/cos_update"].item() == pytest.approx(expected, rel=1e-4)
    assert probe._before == []  # the pre-step copy is freed


def test_non_finite_gradients_are_skipped_on_the_device():
    model = homogeneous_mlp()
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    probe = setup(NLMProbe(update_form=False), model)
    probe.before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))
    assert math.isnan(probe.compute()["mechmon/nlm/cos_grad"].item())  # skipped on the device: NaN, not 0


def test_weight_norms_and_growth():
    model = homogeneous_mlp()
    probe = setup(WeightsProbe(params=["0.*", "2.weight"]), model)
    probe.evaluate()
    first = probe.compute()
    expected = torch.cat([p.flatten() for p in model.parameters()]).norm().item()
    assert first["mechmon/weights/norm"].item() == pytest.approx(expected, rel=1e-6)
    assert first["mechmon/weights/norm/0.weight"].item() == pytest.approx(model[0].weight.norm().item(), rel=1e-6)
    assert "mechmon/weights/norm_growth" not in first  # no previous evaluation to compare with
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    probe.reset()
    probe.evaluate()
    assert probe.compute()["mechmon/weights/norm_growth"].item() == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="no parameter matches"):
        setup(WeightsProbe(params=["nope*"]), model)


@pytest.mark.parametrize("probe_cls", [WeightsProbe, NLMProbe])
def test_params_must_be_a_list_of_globs(probe_cls):
    with pytest.raises(TypeError, match="list of glob strings"):
        probe_cls(params="2.weight")
    with pytest.raises(TypeError):
        probe_cls(params=[3])


def test_gradient_and_weight_probes_stay_within_48_mib_on_large_parameters():
    from tests.helpers.memory import LiveBytes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096, bias=False), nn.ReLU(), nn.Linear(4096, 5, bias=False))  # 64 MiB
    model(torch.randn(2, 4096)).sum().backward()  # 64 MiB of gradients
    nlm, weights = setup(NLMProbe(update_form=False, params=["0.weight"]), model), setup(WeightsProbe(), model)
    known = [*model.parameters(), *(p.grad for p in model.parameters())]
    with LiveBytes(known) as mode:
        nlm.before_optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))
        weights.evaluate()
    assert mode.peak <= 48 * 2**20  # before: every gradient negated at once, then products and squares of each
    big, g = model[0].weight.double(), model[0].weight.grad.double()
    expected = (-g * big).sum() / (g.norm() * big.norm())  # near 0 here: compared in absolute terms, to float64
    assert nlm.compute()["mechmon/nlm/cos_grad/0.weight"].item() == pytest.approx(expected.item(), abs=1e-6)
