import pytest
import torch

from mechmon.adapters import HFAdapter, pattern_name
from mechmon.capture import capture, resolve_names
from tests.helpers import hook_count, tiny_gpt2


def test_capture_hooks_only_inside_and_reduces():
    model = tiny_gpt2(attn="eager")
    adapter = HFAdapter(model)
    with capture(adapter, [pattern_name(0), "logits"], reduce=lambda n, t: t.sum(0)) as caps:
        assert hook_count(model) == 2
        model(torch.randint(0, 64, (2, 9)))
    assert hook_count(model) == 0
    assert caps[pattern_name(0)].shape == (4, 9, 9)
    assert caps["logits"].shape == (9, 64) and not caps["logits"].requires_grad


def test_capture_removes_hooks_on_exception_and_keeps_foreign_hooks():
    model = tiny_gpt2(attn="eager")
    foreign = model.lm_head.register_forward_hook(lambda *a: None)
    with pytest.raises(ZeroDivisionError):
        with capture(HFAdapter(model), ["logits", pattern_name(1)]):
            raise ZeroDivisionError
    assert hook_count(model) == 1
    foreign.remove()


def test_unknown_names_list_what_exists():
    adapter = HFAdapter(tiny_gpt2())
    with pytest.raises(RuntimeError, match="blocks.0.hook_resid_post"):
        resolve_names(adapter, ["blocks.9.attn.hook_pattern"])
    with pytest.raises(RuntimeError, match="offers no capture"):
        with capture(adapter, ["nope"]):
            pass
    assert resolve_names(adapter, ["blocks.*.attn.hook_pattern"]) == [pattern_name(0), pattern_name(1)]
