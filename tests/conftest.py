"""Shared fixtures: tiny random models of several architectures and an offline tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the dense-perplexity cache is off outside a test's own (see _own_ppl_cache): fixtures of wider
# scope never read or fill the user's cache
os.environ["PRUNESTUDIO_PPL_CACHE"] = "off"
# the machine-speed probe (core/model/speed.py) is kept in memory only: tests never write the user's cache
os.environ["PRUNESTUDIO_SPEED_CACHE"] = "off"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

ARCHS = ("llama", "qwen2", "mistral", "gemma", "phi3", "opt", "gpt2")

CORPUS = (
    "Pruning removes the weights that matter least. Calibration data decides which weights look "
    "important, so the choice of data matters. The model writes its own text, and we keep the "
    "samples it finds most likely. A quick brown fox jumps over the lazy dog while the cat sleeps. "
    "Numbers like 1, 2, 3 and 42 appear in text too; so do commas, full stops and questions? "
)


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny models gain nothing from threads, and on a busy machine threads spin (10-100x slower).

    Tests on the real default model (marked ``slow``) keep the machine's thread count.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _own_ppl_cache(tmp_path_factory, monkeypatch):
    """Each test gets an empty dense-perplexity cache (core/evaluate/ppl_cache.py), outside its tmp_path."""
    monkeypatch.setenv("PRUNESTUDIO_PPL_CACHE", str(tmp_path_factory.mktemp("ppl-cache") / "cache.json"))


def tiny_config(arch: str, vocab_size: int = 96):
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "mistral":
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             sliding_window=None, **common)
    if arch == "gemma":
        return GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "phi3":
        return Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                          original_max_position_embeddings=512, **common)
    if arch == "opt":
        return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=64, max_position_embeddings=512, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    raise ValueError(arch)


def tiny_model(arch: str = "llama", vocab_size: int = 96, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size))
    model.eval()
    return model


def byte_tokenizer(vocab_size: int = 96):
    """A byte-level BPE tokenizer trained offline on a tiny corpus (any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # the byte alphabet alone is 256 symbols: keep the model vocabulary in step with it
    tk.train_from_iterator([CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer(300)


@pytest.fixture
def make_model(tokenizer):
    def factory(arch: str = "llama", seed: int = 0):
        return tiny_model(arch, vocab_size=len(tokenizer), seed=seed)

    return factory


@pytest.fixture
def corpus_file(tmp_path):
    """A small text file with enough tokens for a few calibration windows."""
    p = tmp_path / "corpus.txt"
    p.write_text((CORPUS + "\n") * 60, encoding="utf-8")
    return p


def in_ci() -> bool:
    """The suite runs in CI (which sets ``CI=true`` when it runs .ci/run)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_data(sub: str = "") -> Path:
    """``../shared/data/<sub>`` beside the repository, for tests on the real evaluation data.

    Missing on a user's machine, the test is skipped with the reason (``-ra`` lists it); missing in
    CI (``CI=true``), the test fails: CI always has the data, so a skip there would hide a test
    that silently stopped running.
    """
    path = SHARED_DATA / sub if sub else SHARED_DATA
    if path.exists():
        return path
    msg = f"{path} is not present (the evaluation data kept beside the repository in ../shared/data)"
    if in_ci():
        pytest.fail(f"{msg}; CI must have it (CI=true)", pytrace=False)
    pytest.skip(msg)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shared_data(sub): needs ../shared/data/<sub>; skipped without it, failed in CI")


def pytest_runtest_setup(item):
    for mark in item.iter_markers(name="shared_data"):
        require_shared_data(*mark.args)


@pytest.fixture(scope="session")
def shared_data():
    return require_shared_data()


@pytest.fixture(scope="session")
def demo_loaded():
    """The real default model (downloaded and converted once into the user cache)."""
    from prunestudio.core.model.loading import load_model

    return load_model("demo", device="cpu", dtype="fp32")
