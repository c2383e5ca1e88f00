"""Tiny configs of Hugging Face decoder architectures, built offline from ``AutoConfig.for_model``.

Only keys the architecture's default config has are set (through its ``attribute_map``), so one table of sizes
serves every type; lists of per-layer types are cut to the layer count.
"""

import torch

SIZES = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=256,
    head_dim=16,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
    # MoE and multi-latent attention, kept tiny
    num_local_experts=4,
    num_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    shared_expert_intermediate_size=32,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    rotary_dim=8,
    num_layers=2,
    attention_types=[[["global", "local"], 1]],
    window_size=4,
    sliding_window=4,  # shorter than every test batch (12 to 17 tokens): the window masks keys
)

# types whose tiny config masks keys by a window (seen on 12 tokens): their tests must see keys it hides
SLIDING = [
    "beam", "cohere2", "cohere2_moe", "cwm", "doge", "exaone4", "gemma2", "gemma3_text", "gemma4_unified_text",
    "gpt_neo", "gpt_oss", "granite_swa", "granitemoe_swa", "ministral", "ministral3", "mistral", "mixtral",
    "modernbert-decoder", "olmo3", "phi3", "phimoe", "starcoder2", "vaultgemma",
]  # fmt: skip

# decoder-only types of transformers' causal-LM mapping covered by the matrix (dense, MoE, GQA, sliding window,
# parallel blocks, ALiBi, learned and rotary positions, soft-capping, attention sinks)
ARCHITECTURES = [
    "apertus", "apertus1p5_text", "arcee", "aria_text", "beam", "biogpt", "bitnet", "bloom", "codegen", "cohere",
    "cohere2", "cohere2_moe", "ctrl", "cwm", "diffllama", "doge", "dots1", "ernie4_5", "ernie4_5_moe",
    "exaone", "exaone4", "falcon", "falcon_h1", "flex_olmo", "flint", "gemma", "gemma2", "gemma3_text",
    "gemma4_unified_text", "glm", "glm4", "glm4_moe", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox",
    "gpt_neox_japanese", "gpt_oss", "gptj", "granite", "granite_swa", "granitemoe", "granitemoe_swa",
    "granitemoeshared", "helium", "hunyuan_v1_dense", "hunyuan_v1_moe", "hyperclovax", "internlm3", "iquestcoder",
    "jais2", "jetmoe", "lfm2", "llama", "llama4_text", "minimax_m2", "ministral", "ministral3",
    "mistral", "mixtral", "modernbert-decoder", "mpt", "nanochat", "nemotron", "olmo", "olmo2", "olmo3", "olmoe",
    "opt", "persimmon", "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss", "smollm3",
    "stablelm", "starcoder2", "vaultgemma", "xglm",
]  # fmt: skip


def tiny_config(model_type: str):
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type)
    defaults, aliases = base.to_dict(), getattr(base, "attribute_map", {})
    kwargs = {aliases.get(k, k): v for k, v in SIZES.items() if aliases.get(k, k) in defaults}
    for key, value in defaults.items():
        if key.endswith("layer_types") and isinstance(value, list):
            kwargs[key] = value[:2]
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str, attn: str | None = None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    kwargs = {"attn_implementation": attn} if attn else {}
    return AutoModelForCausalLM.from_config(tiny_config(model_type), **kwargs).eval()


def tensor_parallel_llama(model, mesh, vocab_parallel: bool = True) -> None:
    """Megatron-style tensor parallel on a Llama over a 1-d ``mesh``, as torchtitan writes it.

    Heads split by ``ColwiseParallel`` q/k/v and ``RowwiseParallel`` o; the MLP likewise; the output head
    vocabulary-parallel (``Shard(-1)`` DTensor logits, for ``loss_parallel``) or, ``vocab_parallel=False``, gathering
    its logits into a plain tensor (HF's ``colwise_rep``).
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    head = ColwiseParallel(output_layouts=Shard(-1), use_local_output=False) if vocab_parallel else None
    plan = {"lm_head": head or ColwiseParallel(output_layouts=Replicate())}
    for i in range(len(model.model.layers)):
        prefix = f"model.layers.{i}"
        plan.update({f"{prefix}.self_attn.{n}": ColwiseParallel() for n in ("q_proj", "k_proj", "v_proj")})
        plan.update({f"{prefix}.mlp.{n}": ColwiseParallel() for n in ("gate_proj", "up_proj")})
        plan.update({f"{prefix}.self_attn.o_proj": RowwiseParallel(), f"{prefix}.mlp.down_proj": RowwiseParallel()})
    parallelize_module(model, mesh, plan)
