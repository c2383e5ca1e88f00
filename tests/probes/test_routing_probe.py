"""RoutingProbe on HF MoE models built from small configs (never downloaded), hooked at the gate module."""

import math

import pytest
import torch

from mechmon import MechMonitor, RoutingProbe, every
from mechmon.adapters import HFAdapter
from mechmon.functional.routing import load_stats
from mechmon.naming import KEY_RE
from tests.helpers import (
    VOCAB,
    E,
    K,
    TinyLM,
    hook_count,
    make_trainer,
    read_events,
    scalar_steps,
    tiny_gpt2,
    tiny_moe,
    token_loader,
)


@pytest.mark.parametrize("kind", ["olmoe", "mixtral", "qwen2_moe"])
def test_probe_matches_router_outputs_of_the_forward(kind):
    model = tiny_moe(kind).eval()
    adapter = HFAdapter(model)
    probe = RoutingProbe()
    probe.attach(model, adapter, torch.device("cpu"))
    ids = torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    seen = {}
    gates = [model.get_submodule(f"model.layers.{i}.mlp.gate") for i in range(2)]
    handles = [g.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, out)) for i, g in enumerate(gates)]
    from mechmon.capture import capture, resolve_names

    with torch.no_grad(), capture(adapter, resolve_names(adapter, probe.requires)) as caps:
        model(input_ids=ids)
        probe.update(caps)
    for h in handles:
        h.remove()
    out = probe.compute()
    counts = torch.stack([torch.bincount(seen[i][2].flatten(), minlength=E) for i in range(2)])
    assert torch.equal(probe.counts_LE, counts) and counts.sum().item() == 2 * 30 * K
    p = torch.softmax(seen[1][0].float(), -1)
    want = (-(p * p.log()).sum(-1) / torch.log(torch.tensor(float(E)))).mean()
    assert out["mechmon/moe_routing/entropy/L01"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["mechmon/moe_routing/load_cv"].item() == pytest.approx(load_stats(counts)["load_cv"].mean().item())
    assert out["mechmon/moe_routing/expert_load"].shape == (2, E)
    assert hook_count(model) == 0


def test_fit_writes_routing_keys(tmp_path):
    model = TinyLM(tiny_moe("olmoe"))
    mon = MechMonitor(probes=[RoutingProbe()], schedule=every(2), image_schedule=every(4))
    make_trainer(tmp_path, [mon], max_steps=4, accumulate_grad_batches=2).fit(model, token_loader())
    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()["scalars"]
    for key in ["entropy", "entropy/L00", "entropy/L01", "load_cv", "max_load_ratio", "dead_frac", "dead_experts/L01"]:
        assert KEY_RE.match(f"mechmon/moe_routing/{key}") and f"mechmon/moe_routing/{key}" in tags, key
        assert scalar_steps(acc, f"mechmon/moe_routing/{key}") == [1, 2, 4]
    assert all(0 <= e.value <= 1 for e in acc.Scalars("mechmon/moe_routing/entropy"))
    assert [e.step for e in acc.Images("mechmon/moe_routing/expert_load")] == [1, 4]
    assert not mon.engine.disabled and hook_count(model) == 0


def test_dense_model_gets_a_clear_error(tmp_path):
    mon = MechMonitor(probes=[RoutingProbe()], schedule=every(2))
    with pytest.raises(RuntimeError, match="hook_router_logits"):
        make_trainer(tmp_path, [mon], max_steps=2).fit(TinyLM(tiny_gpt2()), token_loader())


def test_bad_levels():
    with pytest.raises(ValueError):
        RoutingProbe(dead_level=1.5)


def test_custom_moe_layer_through_module_adapter():
    from torch import nn

    from mechmon.adapters import ModuleAdapter
    from mechmon.capture import capture, resolve_names

    class Router(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4, bias=False)

        def forward(self, h):
            logits = self.proj(h.reshape(-1, 8))
            return logits, logits.topk(1, dim=-1).indices

    class TinyMoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.router, self.head = nn.Embedding(16, 8), Router(), nn.Linear(8, 16)

        def forward(self, ids):
            h = self.emb(ids)
            self.router(h)
            return self.head(h)

    points = {
        "blocks.0.mlp.hook_router_logits": ("router", lambda out: out[0]),
        "blocks.0.mlp.hook_expert_indices": ("router", lambda out: out[1]),
        "logits": "head",
    }
    model = TinyMoE()
    adapter = ModuleAdapter(model, points, n_layers=1, n_heads=0, vocab_size=16, n_experts=4, top_k=1)
    probe = RoutingProbe()
    probe.attach(model, adapter, torch.device("cpu"))
    with torch.no_grad(), capture(adapter, resolve_names(adapter, probe.requires)) as caps:
        model(torch.randint(0, 16, (2, 5)))
        probe.update(caps)
    assert probe.counts_LE.sum().item() == 10 and 0 <= probe.compute()["mechmon/moe_routing/entropy"].item() <= 1


def test_the_extra_peak_memory_of_an_update_is_bounded_by_64_mib_plus_a_tenth_of_the_captures():
    from mechmon.adapters.base import expert_indices_name, router_name
    from tests.helpers.memory import LiveBytes

    N, E_, k = 2**18, 64, 4  # a one-hot of the indices alone would be N·k·E·8 bytes = 512 MiB
    model = tiny_moe("olmoe", experts=E_)
    probe = RoutingProbe()
    probe.attach(model, HFAdapter(model), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(N, E_, generator=gen)
    indices = torch.randint(0, E_, (N, k), generator=gen)
    caps = {router_name(i): logits for i in range(2)} | {expert_indices_name(i): indices for i in range(2)}
    with LiveBytes([logits, indices, probe.entropy_L2, probe.counts_LE]) as mode:
        probe.update(caps)
    read = 2 * (logits.numel() * 4 + indices.numel() * 8)
    assert 0 < mode.peak <= 64 * 2**20 + read // 10, mode.peak / 2**20
    assert probe.counts_LE[0].tolist() == torch.bincount(indices.flatten(), minlength=E_).tolist()
    log_p = torch.log_softmax(logits.double(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum() / math.log(E_)
    assert probe.entropy_L2[0].tolist() == pytest.approx([entropy.item(), N], rel=1e-4)
