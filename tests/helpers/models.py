"""Tiny models built from configs (never downloaded): GPT-2, an MoE, a LightningModule around one."""

import lightning.pytorch as pl
import torch

VOCAB, CTX = 64, 48


def tiny_gpt2(attn: str = "sdpa", layers: int = 2, heads: int = 4, width: int = 32, ctx: int = CTX):
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=ctx,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


class TinyLM(pl.LightningModule):
    """training_step returns only the loss, as most users write it."""

    def __init__(self, model=None, lr: float = 1e-3):
        super().__init__()
        self.model = model if model is not None else tiny_gpt2()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


E, K = 8, 2  # experts, experts per token of tiny_moe


def tiny_moe(kind: str, experts: int = E):
    from transformers import AutoModelForCausalLM, MixtralConfig, OlmoeConfig, Qwen2MoeConfig

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts_per_tok=K,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    configs = {
        "olmoe": lambda: OlmoeConfig(num_experts=experts, **common),
        "mixtral": lambda: MixtralConfig(num_local_experts=E, **common),
        "qwen2_moe": lambda: Qwen2MoeConfig(
            num_experts=E, moe_intermediate_size=32, shared_expert_intermediate_size=32, **common
        ),
    }
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(configs[kind]())
