"""A real TRL ``SFTTrainer`` fit with ``MechMonitorCallback``: TRL patches the forward with a fused LM head
(``model(**inputs, fused_lm_head=True)``), so full logits never exist in its training forward. The logits probe
measures the scheduled step's first rows through a shadow forward, equal to an eager, unfused computation."""

import copy

import pytest
import torch

from mechmon import InductionProbe, LogitsProbe, every
from mechmon.hf import MechMonitorCallback
from tests.helpers import CTX, VOCAB, tiny_gpt2

trl = pytest.importorskip("trl")


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({str(i): i for i in range(VOCAB)}, unk_token="0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="0", eos_token="1", unk_token="0")


@pytest.mark.parametrize("lora", [False, True])
def test_sft_trainer_logits_equal_an_eager_unfused_computation_on_the_same_rows(tmp_path, lora):
    """With ``peft_config`` (LoRA) the callback watches the ``PeftModel``; LoRA's B starts at zero, so step 1's
    forward equals the base model's."""
    from datasets import Dataset

    peft_config = None
    if lora:
        peft = pytest.importorskip("peft")
        peft_config = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM"
        )

    model = tiny_gpt2()
    before = copy.deepcopy(model).eval()  # the weights of step 1's forward, no dropout (the shadow runs in eval)
    seen = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)) if m.training else None, with_kwargs=True)
    ids = torch.randint(2, VOCAB, (32, CTX), generator=torch.Generator().manual_seed(0))
    callback = MechMonitorCallback(
        probes=[LogitsProbe(shadow_rows=3), InductionProbe(period=10, batch_size=2)], schedule=every(1),
        log_dir=tmp_path / "tb",
    )  # fmt: skip
    args = trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, report_to=[],
                         use_cpu=True, disable_tqdm=True, dataset_kwargs={"skip_prepare_dataset": True},
                         remove_unused_columns=False)  # fmt: skip
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    trainer = trl.SFTTrainer(model=model, args=args, processing_class=word_tokenizer(), train_dataset=data,
                             callbacks=[callback], peft_config=peft_config)  # fmt: skip
    trainer.train()
    assert type(trainer.model).__name__ == ("PeftModelForCausalLM" if lora else "GPT2LMHeadModel")
    assert seen[0].get("fused_lm_head") is True  # TRL's fused head: no logits in the training forward
    got = callback.engine.latest
    assert [a.rule for a in callback.alerts] == [] and not callback.engine.disabled
    reference = LogitsProbe()
    rows = {k: v[:3] for k, v in seen[0].items() if isinstance(v, torch.Tensor)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):  # the Trainer's precision
        reference.update({"logits": before(input_ids=rows["input_ids"]).logits}, {"labels": rows["labels"]})
    for key, value in reference.compute().items():
        assert got[key] == pytest.approx(value.item(), abs=1e-5), key
