import pytest
import torch

from mechmon import evaluate
from mechmon.probes import InductionProbe
from tests.helpers.forced import ForcedModel, forced_adapter


def run_probe(probe, adapter, times=1):
    return evaluate(probe, adapter, forwards=times)


@pytest.mark.parametrize("bos", [None, 0])
def test_forced_patterns_give_known_scores(bos):
    n, vocab = 12, 40
    s = int(bos is not None)
    model = ForcedModel(vocab, s + 2 * n, n, s)
    out = run_probe(InductionProbe(period=n, batch_size=3, bos_token_id=bos), forced_adapter(model, vocab, bos))
    assert out["mechmon/induction/score_max"].item() == pytest.approx(1.0)
    assert out["mechmon/induction/head_scores"].argmax().item() == 0  # the best head, named in the heatmap's title
    assert out["mechmon/prev_token/score_max"].item() == pytest.approx(1.0)
    assert out["mechmon/induction/head_scores"].shape == (2, 2)
    uniform = sum(1 / (s + n + i + 1) for i in range(n)) / n
    assert out["mechmon/induction/score_max/L01"].item() == pytest.approx(uniform, rel=1e-5)
    assert out["mechmon/induction/n_heads_ge_0p4"].item() == 1
    topk = (1 + 2 * uniform) / 4  # heads 1, u, u, 0
    assert out["mechmon/induction/score_topk_mean"].item() == pytest.approx(topk, rel=1e-5)


def test_two_forwards_equal_one_and_reset_is_in_place():
    n, vocab = 10, 30
    adapter = forced_adapter(ForcedModel(vocab, 2 * n, n, 0), vocab)
    probe = InductionProbe(period=n, batch_size=2)
    once = run_probe(probe, adapter)
    twice = run_probe(probe, adapter, times=2)
    for key in once:
        torch.testing.assert_close(once[key], twice[key])
    state = probe.induction_sum_LH
    probe.reset()
    assert probe.induction_sum_LH is state and state.sum().item() == 0 and probe.count.item() == 0


def test_vocabulary_too_small_raises_in_setup():
    adapter = forced_adapter(ForcedModel(20, 100, 50, 0), 20)
    with pytest.raises(
        ValueError,
        match=r"InductionProbe\(period=50\) needs 50 distinct token ids, the vocabulary offers 20; pass "
        r"InductionProbe\(period=20\)",
    ):
        InductionProbe(period=50).attach(adapter.model, adapter, torch.device("cpu"))


@pytest.mark.parametrize("kwargs", [{"period": 1}, {"batch_size": 0}, {"level": 1.5}, {"top_k": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        InductionProbe(**kwargs)


def test_prefix_matching_on_an_sdpa_gpt2_equals_its_eager_twins_patterns():
    from mechmon import PrefixMatchingProbe
    from mechmon.functional.induction import prefix_matching_scores
    from tests.helpers import tiny_gpt2

    probe = PrefixMatchingProbe(period=10, batch_size=3)
    out = evaluate(probe, tiny_gpt2("sdpa"))
    with torch.no_grad():
        patterns = tiny_gpt2("eager").eval()(input_ids=probe.probe_batch, output_attentions=True).attentions
    expected = torch.stack([prefix_matching_scores(p, 10, 4) for p in patterns])
    assert probe.probe_batch.shape == (3, 40) and torch.equal(probe.probe_batch[:, :10], probe.probe_batch[:, 30:])
    torch.testing.assert_close(out["mechmon/prefix_match/head_scores"], expected, rtol=1e-4, atol=1e-6)


def test_prefix_matching_on_a_short_context_fits_its_default_period_and_refuses_an_explicit_one():
    from mechmon import PrefixMatchingProbe
    from tests.helpers import tiny_gpt2  # context 48: four copies of 25 do not fit

    probe = PrefixMatchingProbe()
    with pytest.warns(UserWarning, match=r"context is 48 tokens, too short for the default period 25 .*period 12"):
        out = evaluate(probe, tiny_gpt2())
    assert probe.period == 12 and out["mechmon/prefix_match/head_scores"].shape == (2, 4)
    with pytest.raises(ValueError, match=r"PrefixMatchingProbe\(period=25\) needs sequences of 100 tokens.*period=12"):
        evaluate(PrefixMatchingProbe(period=25), tiny_gpt2())
