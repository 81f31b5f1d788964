"""The settings that determine a self-generated calibration set (besides the model and prefix texts)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import ConfigError

__all__ = ["GenerationSettings", "PROTOCOLS"]

# How a self-generated set is made (:attr:`GenerationSettings.protocol`):
# * ``windows`` (Prune Studio's default): every sample is one calibration window of exactly
#   ``seqlen`` tokens, started from the model's document start (zero-data mode) or from a source
#   text's first tokens, end-of-text never sampled; the ``drop_top`` highest-perplexity ones dropped.
# * ``paper`` (Ji et al., ICLR 2025, as their reference code does it): every sample starts with
#   the first ``prefix_tokens`` tokens of a real text, may end early at end-of-text (so samples
#   vary in length, at most ``seqlen`` tokens), the ``drop_top`` highest-perplexity ones are
#   dropped, and the rest are joined into one token stream and cut into ``n`` windows of ``seqlen``.
PROTOCOLS = ("windows", "paper")


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that determines a self-generated set (besides the model and the prefix texts)."""

    n: int = 128  # samples generated (before filtering)
    seqlen: int = 512  # tokens per sample, prefix and start token included
    prefix_tokens: int = 2  # tokens taken from each source text (prefix mode)
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 50  # 0 disables top-k
    repetition_penalty: float = 1.2  # 1.0 disables it
    drop_top: float = 0.2  # fraction of samples with the highest perplexity that is dropped
    # Sequences decoded together. Decoding reads every weight once per step whatever the batch, so
    # larger batches give more tokens per weight read and larger, faster matrix products: on the
    # 2-core Zen 4, fp32, 128 tokens, 223 tokens/s at 32 and 326 at 64; the app's default set (79
    # samples of 512 tokens) took 237 s at 64 (two balanced batches, 40 + 39) and 158 s at 80 (one
    # batch), the same tokens (``bench/selfgen_throughput.py --app-default-batches 64,80``,
    # ``bench/results/NOTES.md``). Lowered at run time when the KV cache would not fit.
    batch_size: int = 80
    seed: int = 0
    protocol: str = "windows"
    """``windows`` (``n`` samples, each one window) or ``paper`` (``n`` windows cut from the
    joined samples of varying length); see :data:`PROTOCOLS`."""

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.n) or self.n <= 0:
            bad(f"The number of samples to generate must be a positive whole number (got {self.n!r}).")
        if not is_int(self.prefix_tokens) or self.prefix_tokens < 0:
            bad(f"The prefix length must be zero or more tokens (got {self.prefix_tokens!r}).")
        if not is_int(self.seqlen) or self.seqlen <= self.prefix_tokens or self.seqlen < 2:
            bad(
                f"The sample length ({self.seqlen!r} tokens) must be a whole number larger than the "
                f"prefix length ({self.prefix_tokens!r} tokens) and at least 2."
            )
        if not is_num(self.temperature) or self.temperature <= 0:
            bad(f"The temperature must be a number above 0 (got {self.temperature!r}).")
        if not is_num(self.top_p) or not (0 < self.top_p <= 1):
            bad(f"Top-p must be above 0 and at most 1 (got {self.top_p!r}).")
        if not is_int(self.top_k) or self.top_k < 0:
            bad(f"Top-k must be a whole number, 0 to disable it (got {self.top_k!r}).")
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad(f"The repetition penalty must be a number above 0, 1 to disable it (got {self.repetition_penalty!r}).")
        if not is_num(self.drop_top) or not (0 <= self.drop_top < 1):
            bad(f"The fraction of samples to drop must be at least 0 and below 1 (got {self.drop_top!r}).")
        if not is_int(self.batch_size) or self.batch_size <= 0:
            bad(f"The batch size must be a positive whole number (got {self.batch_size!r}).")
        if not is_int(self.seed):
            bad(f"The seed must be a whole number (got {self.seed!r}).")
        if self.protocol not in PROTOCOLS:
            bad(f"The self-generation protocol must be {' or '.join(PROTOCOLS)} (got {self.protocol!r}).")
        if self.protocol == "paper" and self.prefix_tokens < 1:
            bad("The paper's protocol starts every sample with tokens of a real text: the prefix length "
                "must be at least 1 token.")

    @property
    def num_dropped(self) -> int:
        """How many samples filtering drops: ``floor(n * drop_top)`` (``windows`` protocol; the
        ``paper`` protocol drops ``floor(k * drop_top)`` of the ``k`` samples it ends up using).

        Floor, not round: the user asked to drop *at most* that fraction, and with small ``n`` a
        round-up would drop more than asked (n=3, 20% -> 1 of 3 would be 33%). The small epsilon
        keeps 0.3 * 10 (= 2.9999999999999996 in floats) from becoming 2.
        """
        return int(math.floor(self.n * self.drop_top + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
