"""Models found with no adapter: a nanoGPT-shaped module, several models in one module, what cannot be found."""

import lightning.pytorch as pl
import pytest
import torch

from mechmon import CollapseProbe, InductionProbe, MechMonitor, StructuralAdapter, evaluate, resolve_adapter
from mechmon.adapters import LOGITS, HFAdapter
from mechmon.functional.induction import induction_scores
from tests.helpers import VOCAB, TinyLM, make_trainer, tiny_gpt2, token_loader
from tests.helpers.archs import tiny_model
from tests.helpers.nanogpt import gpt


def test_nanogpt_is_found_and_its_patterns_equal_the_explicit_softmax():
    model = gpt().eval()
    adapter = resolve_adapter(model)
    assert isinstance(adapter, StructuralAdapter)
    assert adapter.layout.blocks == "transformer.h" and adapter.layout.final_norm == "transformer.ln_f"
    assert (adapter.n_layers, adapter.n_heads, adapter.vocab_size) == (2, 4, VOCAB)
    probe = InductionProbe(period=10, batch_size=2)
    out = evaluate(probe, adapter)
    ids = probe.probe_batch
    patterns, x = [], model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.shape[1]))
    with torch.no_grad():
        for block in model.transformer.h:
            patterns.append(block.attn.explicit_pattern(block.ln_1(x)))
            x = block(x)
        logits, _ = model(ids, targets=ids)
    want = torch.stack([induction_scores(p, 10) for p in patterns])
    torch.testing.assert_close(out["mechmon/induction/head_scores"], want, atol=1e-6, rtol=1e-5)
    # the forward without targets gives the last position only; the adapter recomputes every position
    torch.testing.assert_close(adapter.forward(ids), logits)
    assert model.training is False and LOGITS in adapter.hook_points()


class Distill(pl.LightningModule):
    """A frozen teacher registered first, the trained student second."""

    def __init__(self, freeze_teacher=True):
        super().__init__()
        self.teacher, self.student = tiny_gpt2(), tiny_gpt2()
        self.teacher.requires_grad_(not freeze_teacher)

    def training_step(self, batch, batch_idx):
        return self.student(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.student.parameters(), lr=1e-3)


def test_the_trainable_model_is_chosen_and_two_trainable_ones_fail_listing_them(tmp_path):
    module = Distill()
    assert resolve_adapter(module).model is module.student
    with pytest.raises(RuntimeError, match=r"teacher \(GPT2LMHeadModel, trainable\).*student.*submodule='student'"):
        resolve_adapter(Distill(freeze_teacher=False))
    assert resolve_adapter(Distill(freeze_teacher=False), submodule="teacher").model.transformer is not None
    with pytest.raises(ValueError, match="submodule='techer' is not a submodule"):
        resolve_adapter(module, submodule="techer")
    both = Distill(freeze_teacher=False)
    mon = MechMonitor(probes=[CollapseProbe()], schedule=2, submodule="student")
    make_trainer(tmp_path, [mon], max_steps=2).fit(both, token_loader())
    assert mon.engine.adapter.model is both.student and not mon.engine.disabled
    with pytest.warns(FutureWarning, match=r"MechMonitor\(model=...\) is now MechMonitor\(submodule=...\)"):
        old = MechMonitor(probes=[CollapseProbe()], schedule=2, model="student")  # the former name still works
    make_trainer(tmp_path / "old", [old], max_steps=2).fit(Distill(freeze_teacher=False), token_loader())
    assert type(old.engine.adapter.model).__name__ == "GPT2LMHeadModel" and old.engine.config.submodule == "student"


def test_a_single_frozen_model_is_monitored_with_a_warning():
    model = tiny_gpt2().requires_grad_(False)
    with pytest.warns(UserWarning, match="no trainable parameters"):
        assert isinstance(resolve_adapter(TinyLM(model)), HFAdapter)


@pytest.mark.parametrize("model_type", ["mamba", "xlstm", "rwkv"])
def test_models_without_attention_fail_at_setup_with_guidance(model_type):
    with pytest.raises(RuntimeError, match=r"found no adapter.*block list.*ModuleAdapter"):
        resolve_adapter(tiny_model(model_type))


class SplitAttention(torch.nn.Module):
    """SDPA attention that keeps its head count under a name mechmon does not know."""

    def __init__(self, width=16, split=2):
        super().__init__()
        self.qkv, self.split = torch.nn.Linear(width, 3 * width), split

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.split, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + y.transpose(1, 2).reshape(B, T, C)


class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.layers = torch.nn.ModuleList([SplitAttention(), SplitAttention()])
        self.norm, self.out = torch.nn.LayerNorm(16), torch.nn.Linear(16, VOCAB)

    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x))


def test_heads_are_read_from_one_tapped_forward_when_no_attribute_names_them():
    adapter = resolve_adapter(Plain())
    assert adapter.layout.attention == ("layers.0", "layers.1") and adapter.n_heads == 2
    out = evaluate(InductionProbe(period=6, batch_size=2), adapter)
    assert out["mechmon/induction/head_scores"].shape == (2, 2)


def test_a_short_context_shrinks_the_default_periods_and_the_probes_run(recwarn):
    """nanoGPT (``config.block_size``) and LitGPT (``max_seq_length``) contexts of 64: the default induction and
    prefix-matching probes fit their period (50 -> 32, 25 -> 16) instead of failing at step 1."""
    from mechmon import InductionProbe, Monitor, PrefixMatchingProbe
    from tests.helpers.nanogpt import gpt

    for context in ("config", "max_seq_length"):
        model = gpt(block_size=64)
        if context == "config":
            model.config = type("GPTConfig", (), {"block_size": 64})()
        else:
            model.max_seq_length = 64
        probes = [InductionProbe(), PrefixMatchingProbe()]
        with pytest.warns(UserWarning, match=r"context is 64 tokens, too short for the default period 50 .*period 32"):
            monitor = Monitor(model, probes=probes, schedule=1, log_dir=None)
        assert (probes[0].period, probes[1].period) == (32, 16)
        monitor.begin_batch(1)
        monitor.after_optimizer_step(1)
        monitor.close()
        assert not monitor.disabled and "mechmon/induction/score_max" in monitor.latest
        assert "mechmon/prefix_match/score_max" in monitor.latest


def test_an_explicit_period_too_long_for_the_context_fails_at_setup():
    from mechmon import InductionProbe, Monitor
    from tests.helpers.nanogpt import gpt

    model = gpt(block_size=64)
    model.max_seq_length = 64
    with pytest.raises(ValueError, match=r"InductionProbe\(period=40\) needs sequences of 80 tokens.*period=32"):
        Monitor(model, probes=[InductionProbe(period=40)], schedule=1, log_dir=None)
