"""Tiny offline tokenizers and random causal LMs for the self-generation and similarity tests."""

from __future__ import annotations

import torch

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model writes its own calibration text",
    "pruning removes weights that matter least for the output",
    "calibration data decides which weights look important",
    "the cat sat on the mat and looked at the dog",
    "language models learn the statistics of their training data",
    "every sample must have the same number of tokens",
    "we drop the samples with the highest perplexity",
    "self generated text looks like the data the model was trained on",
    "one two three four five six seven eight nine ten",
]


def _words() -> list[str]:
    seen: dict[str, None] = {".": None}  # "." makes the gpt2-style lead-in ".\n\n" encodable
    for s in SENTENCES:
        for w in s.split():
            seen.setdefault(w, None)
    return list(seen)


def make_tokenizer(style: str = "llama"):
    """A word-level fast tokenizer.

    ``style="llama"``: ``<unk> <s> </s> <pad>`` and a post-processor that puts ``<s>`` in front of
    every encoded text (like Llama). ``style="gpt2"``: a single ``<|endoftext|>`` token that is
    bos, eos and pad, and nothing added when encoding (like GPT-2).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style == "llama":
        specials = ["<unk>", "<s>", "</s>", "<pad>"]
    elif style == "gpt2":
        specials = ["<unk>", "<|endoftext|>"]
    else:
        raise ValueError(style)
    vocab = {tok: i for i, tok in enumerate(specials + _words())}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if style == "llama":
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<|endoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


def make_model(arch: str, tokenizer, seed: int = 0, init: float = 0.4):
    """A 2-layer, hidden-32 random causal LM whose vocabulary matches ``tokenizer``.

    ``init`` (weight std) is large so that next-token distributions are peaked enough for
    argmax-based comparisons to be robust to float rounding.
    """
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        OPTConfig,
        Qwen2Config,
    )

    torch.manual_seed(seed)
    v = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          initializer_range=init, **ids)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          initializer_range=init, **ids)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                         initializer_range=init, **ids)
    elif arch == "opt":
        cfg = OPTConfig(vocab_size=v, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                        init_std=init, **ids)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model
