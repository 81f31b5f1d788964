"""Tiny offline models and tokenizers for the zero-shot evaluator tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA_EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "eval"

CORPUS = [
    "Question: Which gas do plants take in from the air?\nAnswer: carbon dioxide",
    "Question: What is the boiling point of water?\nAnswer: one hundred degrees",
    "The trophy did not fit in the suitcase because the trophy was too big.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Passage text -- a passage about things.\nQuestion: is it true?\nAnswer: yes no",
    "How do I open a jar? Run the lid under hot water, then twist it off.",
]


def make_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained here on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def make_llama(vocab_size: int, seed: int = 0, max_positions: int = 2048):
    """A 2-layer random Llama (hidden 32) in float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Larger weights than the default init so log-likelihoods differ clearly between choices.
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    return model.eval()


class BigramLM(torch.nn.Module):
    """A fake causal LM: the logits at a position depend only on the token there (a table).

    It takes ``input_ids`` and ``attention_mask`` only (no ``logits_to_keep``) and returns a
    bare tensor, to exercise the evaluator's handling of non-transformers models.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def memorise(self, ids: list[int], strength: float = 10.0) -> None:
        with torch.no_grad():
            for a, b in zip(ids, ids[1:]):
                self.table[a, b] += strength

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[input_ids]


def brute_loglik(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation token | prefix), one unbatched forward, no padding."""
    ctx_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        out = model(input_ids=ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return float(sum(logp[t - 1, whole[t]] for t in range(len(ctx_ids), len(whole))))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and two threads thrash on a busy 2-core box (a test
    module uses it by importing it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()
