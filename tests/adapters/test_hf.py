import contextlib

import pytest
import torch

from mechmon import evaluate, snapshot_forward
from mechmon.adapters import HFAdapter, HookPoint, ModuleAdapter, resolve_adapter
from mechmon.probes import InductionProbe
from tests.helpers import TinyLM, tiny_gpt2
from tests.helpers.archs import tiny_model

FAMILIES = {
    "gpt2": tiny_gpt2,
    "gpt_neox": lambda attn: tiny_model("gpt_neox", attn),
    "llama": lambda attn: tiny_model("llama", attn),  # grouped-query attention
}


def scores(model):
    adapter = HFAdapter(model)
    return evaluate(InductionProbe(period=20, batch_size=3), adapter), adapter


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sdpa_model_gives_the_same_scores_as_an_eager_model(family):
    eager_out, _ = scores(FAMILIES[family]("eager"))
    sdpa_model = FAMILIES[family]("sdpa")
    assert sdpa_model.config._attn_implementation == "sdpa"
    sdpa_out, adapter = scores(sdpa_model)
    assert sdpa_model.config._attn_implementation == "sdpa"  # restored after the probe forward
    assert adapter.n_layers == 2 and adapter.n_heads == 4
    for key, value in eager_out.items():
        torch.testing.assert_close(sdpa_out[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert 0 < eager_out["mechmon/induction/score_max"].item() < 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hook_points_and_training_mode_restored(family):
    model = FAMILIES[family]("sdpa")
    model.train()
    adapter = resolve_adapter(TinyLM(model))
    assert isinstance(adapter, HFAdapter) and adapter.model is model
    names = set(adapter.hook_points())
    assert {"blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post", "ln_final.hook_normalized", "logits"} <= names
    scores(model)
    assert model.training


def test_sdpa_tap_gives_the_eager_patterns_without_switching():
    eager, _ = scores(tiny_gpt2("eager"))
    model = tiny_gpt2("sdpa")
    adapter = HFAdapter(model)
    adapter.eager_attention = contextlib.nullcontext  # the model stays on SDPA: patterns come from the tap
    tapped = evaluate(InductionProbe(period=20, batch_size=3), adapter)
    for key, value in eager.items():
        torch.testing.assert_close(tapped[key], value, atol=1e-5, rtol=1e-5, msg=key)


def test_attention_without_probabilities_or_sdpa_raises_clearly():
    class Manual(torch.nn.Module):  # computes attention by hand and returns only its output
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), Manual(), torch.nn.Linear(8, 16))
    adapter = ModuleAdapter(model, {"blocks.0.attn.hook_pattern": "1", "logits": "2"}, 1, 1, 16)
    adapter._points["blocks.0.attn.hook_pattern"] = HookPoint(model[1], attention=True)
    probe = InductionProbe(period=4, batch_size=2)
    probe.attach(model, adapter, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="returned no probabilities and called no scaled_dot_product_attention"):
        snapshot_forward(probe, adapter)


def test_unsupported_model_lists_modules_and_points_to_docs():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(4, 4)

    with pytest.raises(RuntimeError, match=r"encoder: Linear.*ModuleAdapter.*Custom models"):
        resolve_adapter(Plain())
    with pytest.raises(TypeError):
        resolve_adapter(Plain(), adapter=lambda m: "not an adapter")
