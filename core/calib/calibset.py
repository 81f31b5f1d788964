"""The calibration set: token windows plus where they came from.

One :class:`CalibrationSet` represents calibration data from any source (a dataset, the user's
files, or text the model generated itself). It keeps the token ids that the pruner consumes, the
text they decode to (for previews), optional per-sample perplexity, which samples were filtered
out and why, and the provenance needed to reproduce the set. It saves to and loads from JSON
lines: the first line is a header (provenance), then one line per sample.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import CalibrationError
from ..files import atomic_path

FORMAT = "prunestudio-calibration-set"
FORMAT_VERSION = 1


@dataclass
class CalibSample:
    input_ids: list[int]
    text: str = ""
    perplexity: float | None = None
    dropped: bool = False
    drop_reason: str = ""

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash identifying a tokenizer's vocabulary (sets made for another one are refused)."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{tok}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


@dataclass
class CalibrationSet:
    samples: list[CalibSample]
    seqlen: int
    source: str = ""
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    tokenizer_name: str = ""
    tokenizer_fingerprint: str = ""

    def copy(self) -> "CalibrationSet":
        """An independent copy (samples included): later edits of one never change the other."""
        return replace(self, samples=[replace(s, input_ids=list(s.input_ids)) for s in self.samples],
                       settings=dict(self.settings))

    # ---- the samples the pruner uses --------------------------------------------------------
    def kept(self) -> list[CalibSample]:
        return [s for s in self.samples if not s.dropped]

    def __len__(self) -> int:
        return len(self.kept())

    def input_ids(self) -> torch.Tensor:
        """``[n, seqlen]`` int64 tensor of the kept samples (all must have ``seqlen`` tokens)."""
        kept = self.kept()
        if not kept:
            raise CalibrationError("The calibration set has no samples left to prune with.")
        lengths = {len(s.input_ids) for s in kept}
        if len(lengths) != 1:
            raise CalibrationError(
                f"Calibration samples have different lengths {sorted(lengths)[:5]}; "
                "every sample must have the same number of tokens."
            )
        return torch.tensor([s.input_ids for s in kept], dtype=torch.long)

    def sha256(self) -> str:
        """Hash of the kept token ids, in order: the identity of what the pruner saw."""
        h = hashlib.sha256()
        for s in self.kept():
            h.update(torch.tensor(s.input_ids, dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    # ---- statistics -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        kept = self.kept()
        ppl = [s.perplexity for s in kept if s.perplexity is not None and math.isfinite(s.perplexity)]
        mean = sum(ppl) / len(ppl) if ppl else None
        std = (sum((p - mean) ** 2 for p in ppl) / len(ppl)) ** 0.5 if ppl else None
        return {
            "samples": len(kept),
            "dropped": len(self.samples) - len(kept),
            "tokens": sum(len(s.input_ids) for s in kept),
            "ppl_mean": mean,
            "ppl_std": std,
            "distinct_2": distinct_ngram_ratio((s.input_ids for s in kept), 2),
            "distinct_4": distinct_ngram_ratio((s.input_ids for s in kept), 4),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "nsamples": len(self),
            "seqlen": self.seqlen,
            "seed": self.seed,
            "sha256": self.sha256(),
            "settings": self.settings,
            "tokenizer": self.tokenizer_name,
            "dropped": len(self.samples) - len(self),
        }

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as JSON lines, atomically (temporary file, then rename)."""
        path = Path(path)
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "seqlen": self.seqlen,
            "source": self.source,
            "seed": self.seed,
            "settings": self.settings,
            "tokenizer_name": self.tokenizer_name,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "sha256": self.sha256(),
        }
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for s in self.samples:
                f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer: Any | None = None) -> "CalibrationSet":
        """Read a saved set; refuse it if it was made for a different tokenizer."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                header = json.loads(f.readline())
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise CalibrationError(f"{path.name} is not a Prune Studio calibration set.")
                samples = []
                for lineno, line in enumerate(f, start=2):
                    if not line.strip():
                        continue
                    try:
                        d = json.loads(line)
                        if not isinstance(d, dict) or not isinstance(d.get("input_ids"), list):
                            raise ValueError("not a sample with input_ids")
                        ppl = d.get("perplexity")
                        samples.append(
                            CalibSample(
                                input_ids=[_token_id(t) for t in d["input_ids"]],
                                text=str(d.get("text", "")),
                                perplexity=float(ppl) if ppl is not None else None,
                                dropped=bool(d.get("dropped", False)),
                                drop_reason=str(d.get("drop_reason", "")),
                            )
                        )
                    except (ValueError, TypeError, OverflowError, RecursionError) as e:
                        raise CalibrationError(
                            f"Could not read calibration set {path.name}: line {lineno} is not a valid "
                            f"sample ({str(e)[:200]})."
                        ) from e
            settings = header.get("settings", {})
            cs = cls(
                samples=samples,
                seqlen=int(header.get("seqlen", 0)),
                source=str(header.get("source", "")),
                seed=int(header.get("seed", 0)),
                settings=dict(settings) if isinstance(settings, dict) else {},
                tokenizer_name=str(header.get("tokenizer_name", "")),
                tokenizer_fingerprint=str(header.get("tokenizer_fingerprint", "")),
            )
        except CalibrationError:
            raise
        except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            # ValueError covers JSONDecodeError and UnicodeDecodeError
            raise CalibrationError(f"Could not read calibration set {path.name}: {str(e)[:200]}") from e
        if tokenizer is not None and cs.tokenizer_fingerprint:
            fp = tokenizer_fingerprint(tokenizer)
            if fp != cs.tokenizer_fingerprint:
                raise CalibrationError(
                    f"{path.name} was made for another tokenizer ({cs.tokenizer_name or 'unknown'}); "
                    "its token ids mean nothing to this model. Generate or sample a new set."
                )
        if tokenizer is not None and cs.samples:
            top = max((max(s.input_ids, default=0) for s in cs.samples), default=0)
            if top >= len(tokenizer):
                raise CalibrationError(
                    f"{path.name} holds token id {top}, beyond this tokenizer's {len(tokenizer)} tokens: "
                    "it was made for another model. Generate or sample a new set."
                )
        return cs

    @staticmethod
    def is_saved_set(path: str | os.PathLike) -> bool:
        """True if ``path`` starts with a calibration-set header line."""
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline(4096)
            return f'"format": "{FORMAT}"' in first or f'"format":"{FORMAT}"' in first
        except (OSError, UnicodeDecodeError):
            return False


def _token_id(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"token id {str(t)[:40]} is not a non-negative integer")
    return t


def distinct_ngram_ratio(sequences: Iterable[list[int]], n: int) -> float | None:
    """Distinct n-grams / all n-grams over all sequences: a cheap diversity signal."""
    seen: set[tuple[int, ...]] = set()
    total = 0
    for seq in sequences:
        for i in range(len(seq) - n + 1):
            seen.add(tuple(seq[i : i + n]))
            total += 1
    return len(seen) / total if total else None
