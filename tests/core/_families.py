"""Tiny random-init configurations of current model families (hidden 64, 2-4 blocks, small vocab).

Hybrid families get both layer kinds in their few blocks (their layer-type lists are set here).
Used by ``test_families.py``; the sizes are chosen so every family builds in well under a second.
"""

from __future__ import annotations

from typing import Any

V = 300  # the byte tokenizer of conftest.byte_tokenizer(300)
_COMMON = dict(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=512)
_ATTN = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4,
              mamba_expand=2, mamba_chunk_size=16)

DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma4_text", "phi3", "olmo2",
         "olmo3", "smollm3", "granite", "cohere2", "exaone4", "glm4", "gpt2", "opt")
HYBRID = ("qwen3_next", "qwen3_5_text", "granitemoehybrid", "falcon_h1", "lfm2", "nemotron_h")
FAMILIES = DENSE + HYBRID


def family_config_kwargs(family: str) -> dict[str, Any]:
    """Keyword arguments of ``AutoConfig.for_model(family, ...)`` for a tiny model of ``family``."""
    linear = dict(linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                  linear_num_key_heads=2, linear_num_value_heads=4, head_dim=16)
    table: dict[str, dict[str, Any]] = {
        "llama": dict(_ATTN, num_hidden_layers=2),
        "mistral": dict(_ATTN, num_hidden_layers=2, sliding_window=None),
        "qwen2": dict(_ATTN, num_hidden_layers=2),
        "qwen3": dict(_ATTN, num_hidden_layers=2, head_dim=16),
        "gemma2": dict(_ATTN, num_hidden_layers=2, head_dim=16, sliding_window=8),
        "gemma3_text": dict(_ATTN, num_hidden_layers=2, head_dim=16, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"]),
        "gemma4_text": dict(_ATTN, num_hidden_layers=2, head_dim=16, global_head_dim=32, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"],
                            hidden_size_per_layer_input=16, vocab_size_per_layer_input=V),
        "phi3": dict(_ATTN, num_hidden_layers=2, original_max_position_embeddings=512),
        "olmo2": dict(_ATTN, num_hidden_layers=2),
        "olmo3": dict(_ATTN, num_hidden_layers=2, sliding_window=8,
                      layer_types=["sliding_attention", "full_attention"]),
        "smollm3": dict(_ATTN, num_hidden_layers=2),
        "granite": dict(_ATTN, num_hidden_layers=2),
        "cohere2": dict(_ATTN, num_hidden_layers=2, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"]),
        "exaone4": dict(_ATTN, num_hidden_layers=2, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"]),
        "glm4": dict(_ATTN, num_hidden_layers=2, head_dim=16),
        "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512),
        "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=64),
        "qwen3_next": dict(_ATTN, num_hidden_layers=2, **linear, num_experts=0,
                           layer_types=["linear_attention", "full_attention"]),
        "qwen3_5_text": dict(_ATTN, num_hidden_layers=2, **linear,
                             layer_types=["linear_attention", "full_attention"]),
        "granitemoehybrid": dict(_ATTN, num_hidden_layers=2, **_MAMBA, num_local_experts=0,
                                 shared_intermediate_size=128, layer_types=["mamba", "attention"]),
        "falcon_h1": dict(_ATTN, num_hidden_layers=2, **_MAMBA, mamba_d_ssm=128),
        "lfm2": dict(_ATTN, num_hidden_layers=2, block_multiple_of=16, block_auto_adjust_ff_dim=False,
                     layer_types=["conv", "full_attention"]),
        "nemotron_h": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=16, n_groups=1,
                           expand=2, chunk_size=16, use_mamba_kernels=False,
                           layers_block_type=["mamba", "mlp", "attention", "mlp"]),
    }
    kw = table[family]
    common = {k: v for k, v in _COMMON.items() if family != "gpt2" or k != "max_position_embeddings"}
    return {**common, **kw}


def family_config(family: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **family_config_kwargs(family))


def family_model(family: str, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family))
    model.eval()
    return model
