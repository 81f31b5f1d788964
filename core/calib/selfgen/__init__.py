"""Self-generated calibration data (Ji et al., ICLR 2025, "Beware of Calibration Data for Pruning LLMs").

Two protocols (``GenerationSettings.protocol``), chosen by the user:

* ``windows`` (the default; :mod:`.generate`), described below: every sample is one calibration
  window, zero-data or from prefixes;
* ``paper`` (:mod:`.paper`): Ji et al.'s own protocol: 2-token prefixes of real text, samples that
  may end at end-of-text, the 20% with the highest perplexity dropped, the rest joined and cut
  into windows.

In the ``windows`` protocol the model writes its own calibration text. Each sample starts with the model's document start
(:func:`document_start`) followed by a short prefix (the first ``prefix_tokens`` tokens of a
source text; in zero-data mode, the product's default, no prefix at all), the model continues it
by sampling (temperature 0.6, top-p 0.95, top-k 50, repetition penalty 1.2) up to exactly
``seqlen`` tokens, and the ``drop_top`` fraction of samples with the highest perplexity under the
model is filtered out (``floor(n * drop_top)`` samples). The rest is what the pruner calibrates on.

Everything here is Qt-free. :func:`iter_generate` is a generator of :mod:`events` (the GUI shows
the text being written, and each sample's text as soon as its batch is done) that returns the
:class:`CalibrationSet`; :func:`generate_calibration_set` drains it.

Design notes
------------
* The sampling loop is our own (not ``model.generate``): left-padded prompts with an attention
  mask and explicit ``position_ids``, the KV cache (``use_cache=True``; the cache is passed back
  as ``cache=``, or ``past_key_values=`` on models whose forward() still uses that name),
  HF-equivalent logits processing (repetition penalty, temperature, top-k, then top-p), and a
  cancel check between decoding steps.
* Randomness is per *sample*, not per batch: sample ``i`` draws its uniforms from a
  ``torch.Generator`` seeded with a hash of ``(seed, i)`` and picks each token by inverse-CDF
  sampling. A sample therefore does not depend on the batch size, on its neighbours in the batch
  or on timing; only on the seed, its index and its prefix (up to float rounding of batched
  matmuls).
* The per-sample perplexity is accumulated inside the decoding loop from the model's raw
  (unprocessed) next-token distribution, so filtering costs no second forward pass. It equals
  :func:`sample_perplexities` (a plain full forward) up to float rounding.

Modules: :mod:`.settings` (what determines a set), :mod:`.prompts` (document start, suppressed
tokens, prefixes), :mod:`.sampler` (the decoding loop), :mod:`.generate` (the ``windows`` job:
generate, score, filter, and the calibration set), :mod:`.paper` (the ``paper`` job), :mod:`.job`
(:func:`iter_generate`: either, by the settings' protocol).
"""

from .generate import FilteringDone, SampleGenerated, SampleInProgress, sample_perplexities
from .job import generate_calibration_set, iter_generate
from .prompts import document_start, prefixes_from_texts, start_token, suppressed_token_ids
from .sampler import iter_sample_tokens, sample_tokens
from .settings import PROTOCOLS, GenerationSettings

__all__ = [
    "GenerationSettings",
    "PROTOCOLS",
    "SampleGenerated",
    "SampleInProgress",
    "FilteringDone",
    "iter_generate",
    "generate_calibration_set",
    "sample_perplexities",
    "sample_tokens",
    "iter_sample_tokens",
    "start_token",
    "document_start",
    "suppressed_token_ids",
    "prefixes_from_texts",
]
