"""Whether this machine can run Prune Studio: the checks of ``prunestudio doctor``.

Each check returns a :class:`Check` (ok, warning or problem, one sentence, and the commands that fix
it when there are any). The Qt check never imports Qt: it starts a tiny Python process that creates
a ``QGuiApplication`` on the platform the user would get, so the desktop app's launcher can run it
before Qt starts and print the missing system libraries and their install commands instead of Qt's
abort ("could not load the Qt platform plugin xcb"). Nothing here prints; ``core/cli/doctor.py``
and ``gui/app.py`` show the results.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

from .memory import format_bytes

__all__ = ["Check", "OK", "WARNING", "PROBLEM", "PACKAGES", "run_checks", "blocking",
           "check_qt_platform", "missing_libraries", "install_commands", "qt_platform_name",
           "platform_plugin", "default_export_parent"]

OK, WARNING, PROBLEM = "ok", "warning", "problem"

GIB = 2**30


@dataclass(frozen=True)
class Check:
    """One line of the doctor's answer: ``level`` is ok, warning (works, but worth knowing) or
    problem (something the user must fix first); ``fixes`` are shell commands that fix it."""

    name: str
    level: Literal["ok", "warning", "problem"]
    sentence: str
    fixes: tuple[str, ...] = ()


def blocking(checks: Sequence[Check]) -> bool:
    """Whether any check found a problem."""
    return any(c.level == PROBLEM for c in checks)


# ------------------------------------------------------------------------------------------------
# the Qt platform plugin
# ------------------------------------------------------------------------------------------------
# soname -> (apt, dnf, pacman) package. Qt's xcb plugin needs these beyond a bare X11 client;
# some Qt 6 builds open libxcb-cursor at run time, where ldd cannot see it: see _runtime_missing.
PACKAGES: dict[str, tuple[str, str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util", "xcb-util"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb", "libx11"),
    "libX11.so.6": ("libx11-6", "libX11", "libx11"),
    "libSM.so.6": ("libsm6", "libSM", "libsm"),
    "libICE.so.6": ("libice6", "libICE", "libice"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl", "libglvnd"),
    "libGL.so.1": ("libgl1", "libglvnd-glx", "libglvnd"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx", "libglvnd"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype", "freetype2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs", "dbus"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client", "wayland"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor", "wayland"),
    "libwayland-egl.so.1": ("libwayland-egl1", "libwayland-egl", "wayland"),
}
MANAGERS = (("apt", "sudo apt install"), ("dnf", "sudo dnf install"), ("pacman", "sudo pacman -S"))

_PROBE = ("import sys\n"
          "from PySide6.QtGui import QGuiApplication\n"
          "app = QGuiApplication([sys.argv[0]])\n"
          "print(app.platformName())\n")


def qt_platform_name(env: Mapping[str, str] | None = None, platform: str | None = None) -> str:
    """The Qt platform the user would get: ``QT_QPA_PLATFORM``'s first choice if set (``xcb;wayland``
    -> xcb, ``vnc:size=800x600`` -> vnc), else xcb on Linux, cocoa on macOS, windows on Windows."""
    env = os.environ if env is None else env
    value = (env.get("QT_QPA_PLATFORM") or "").strip()
    if value:
        return value.split(";")[0].split(":")[0].strip()
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return "xcb"
    return {"darwin": "cocoa", "win32": "windows"}.get(platform, platform)


def _pyside_dir() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def platform_plugin(platform: str, pyside_dir: Path | None = None) -> Path | None:
    """PySide6's plugin file for ``platform`` (``xcb`` -> ``.../plugins/platforms/libqxcb.so``), or
    None when PySide6 or the plugin is not there. Found without importing PySide6."""
    base = pyside_dir or _pyside_dir()
    if base is None:
        return None
    for plugins in (base / "Qt" / "plugins" / "platforms", base / "plugins" / "platforms"):
        for name in (f"libq{platform}.so", f"libq{platform}.dylib", f"q{platform}.dll"):
            if (plugins / name).is_file():
                return plugins / name
    return None


def missing_libraries(ldd_output: str) -> tuple[str, ...]:
    """The sonames ``ldd`` reported as ``not found``, in order, each once."""
    found: list[str] = []
    for line in ldd_output.splitlines():
        m = re.match(r"\s*(\S+)\s*=>\s*not found", line)
        if m and m.group(1) not in found:
            found.append(m.group(1))
    return tuple(found)


def install_commands(sonames: Sequence[str]) -> tuple[str, ...]:
    """``sudo apt install ...``, ``sudo dnf install ...``, ``sudo pacman -S ...`` for the packages
    that provide ``sonames`` (those of :data:`PACKAGES`; an unknown soname has no command)."""
    known = [PACKAGES[s] for s in sonames if s in PACKAGES]
    if not known:
        return ()
    out = []
    for i, (_manager, command) in enumerate(MANAGERS):
        pkgs = list(dict.fromkeys(p[i] for p in known))
        out.append(f"{command} {' '.join(pkgs)}")
    return tuple(out)


def _run_ldd(plugin: Path, ldd: str) -> str:
    try:
        proc = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout + proc.stderr


def _loadable(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def _runtime_missing(platform: str, can_load: Callable[[str], bool]) -> tuple[str, ...]:
    """Libraries Qt may open at run time, where ldd cannot see them: libxcb-cursor for xcb. (Qt's
    own hint "xcb-cursor0 or libxcb-cursor0 is needed" is printed on any xcb failure, so it proves
    nothing: the library is tried instead.)"""
    if platform == "xcb" and not can_load("libxcb-cursor.so.0"):
        return ("libxcb-cursor.so.0",)
    return ()


def _qt_reason(output: str) -> str:
    """The most telling line of Qt's output (its own message is long and generic)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "could not connect to display" in ln.lower() or "could not find the qt platform plugin" in ln.lower():
            return ln
    for ln in lines:
        if ln.startswith("qt.qpa") or "platform plugin" in ln:
            return ln
    return lines[-1] if lines else "no output"


def check_qt_platform(env: Mapping[str, str] | None = None, python: str | None = None,
                      plugin: Path | None = None, ldd: str = "ldd", timeout: float = 60.0,
                      can_load: Callable[[str], bool] = _loadable) -> Check:
    """Whether the desktop app's Qt platform plugin loads: a ``python -c`` that creates a
    ``QGuiApplication`` with ``env`` (default: this process's environment, so the platform the user
    would get). On failure on Linux, ``ldd`` on the platform's plugin (or ``plugin``) names the
    missing system libraries and the sentence gives the apt, dnf and pacman commands that install
    them; with no library missing and no display it says so."""
    env = dict(os.environ if env is None else env)
    name = "Qt platform"
    platform = qt_platform_name(env)
    if _pyside_dir() is None:
        return Check(name, WARNING, "PySide6 is not installed, so the desktop app cannot start (the command "
                     "line works without it); install it with: pip install -e \".[gui]\".",
                     ("pip install -e \".[gui]\"",))
    if getattr(sys, "frozen", False) and python is None:
        return Check(name, OK, "not checked in the packaged app (it starts Qt itself).")
    try:
        proc = subprocess.run([python or sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        return Check(name, WARNING, f"starting Qt on the '{platform}' platform did not finish in {timeout:.0f} s; "
                     "the desktop app may hang at start.")
    except OSError as e:
        return Check(name, WARNING, f"could not start Python to check Qt ({e}).")
    if rc == 0:
        got = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else platform
        return Check(name, OK, f"the '{got}' platform plugin loads.")
    missing: tuple[str, ...] = ()
    if sys.platform.startswith("linux") or plugin is not None:
        target = plugin or platform_plugin(platform)
        if target is not None:
            missing = missing_libraries(_run_ldd(target, ldd))
        missing = tuple(dict.fromkeys(_runtime_missing(platform, can_load) + missing))
    if missing:
        fixes = install_commands(missing)
        known = [s for s in missing if s in PACKAGES]
        unknown = [s for s in missing if s not in PACKAGES]
        pkgs = ", ".join(dict.fromkeys(PACKAGES[s][0] for s in known))
        libs = (f"the system libraries {', '.join(missing)} are missing" if len(missing) > 1
                else f"the system library {missing[0]} is missing")
        sentence = f"Qt cannot load its '{platform}' platform plugin: {libs}"
        if known:
            sentence += (f" (Debian/Ubuntu packages {pkgs}); install them with one of the commands below, "
                         "then start Prune Studio again.")
        else:
            sentence += "; install the packages that provide them with your system's package manager."
        if unknown and known:
            sentence = sentence[:-1] + f"; {', '.join(unknown)} come(s) from packages this check does not know."
        return Check(name, PROBLEM, sentence, fixes)
    display_var = {"xcb": "DISPLAY", "wayland": "WAYLAND_DISPLAY"}.get(platform)
    if display_var and not env.get(display_var):
        return Check(name, PROBLEM, f"no display to open a window on ({display_var} is not set): the desktop "
                     "app needs a graphical session; the command line (prunestudio prune ...) works without "
                     "one, and QT_QPA_PLATFORM=offscreen starts the app without a window.")
    return Check(name, PROBLEM, f"Qt cannot start on the '{platform}' platform: {_qt_reason(output)}")


# ------------------------------------------------------------------------------------------------
# torch, device, CPU
# ------------------------------------------------------------------------------------------------
def check_torch() -> Check:
    """torch's version and build: CUDA (its version, whether a GPU is visible) or CPU only."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return Check("torch", OK, f"torch {torch.__version__} with Apple MPS.")
        return Check("torch", OK, f"torch {torch.__version__}, a CPU-only build: runs use the CPU.")
    if torch.cuda.is_available():
        return Check("torch", OK, f"torch {torch.__version__} built for CUDA {cuda}; "
                     f"{torch.cuda.device_count()} GPU(s) visible.")
    return Check("torch", WARNING, f"torch {torch.__version__} is built for CUDA {cuda} but sees no GPU "
                 "(no driver, or CUDA_VISIBLE_DEVICES hides it): runs use the CPU.")


def check_device() -> Check:
    """The device ``auto`` picks and, for a GPU, its memory and bf16 support."""
    import torch

    from .devices import resolve_device

    dev = resolve_device("auto")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        bf16 = "supports bf16" if torch.cuda.is_bf16_supported() else "has no bf16 (fp16 is used)"
        return Check("device", OK, f"{dev}: {props.name}, {format_bytes(props.total_memory)}, {bf16}.")
    if dev.type == "mps":
        return Check("device", OK, "mps: the Apple GPU (fp16).")
    return Check("device", OK, "cpu (no GPU found): the default dtype there is fp32.")


def check_cpu_bf16() -> Check:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX): without them bf16 on the CPU is
    emulated and about five times slower than fp32 (:func:`devices.slow_dtype_warning`)."""
    import torch

    from .devices import slow_dtype_warning

    note = slow_dtype_warning(torch.device("cpu"), torch.bfloat16)
    if note is None:
        return Check("CPU bf16", OK, "the CPU has bfloat16 instructions: bf16 runs at full speed on the CPU.")
    return Check("CPU bf16", OK, "no bfloat16 instructions (AVX512-BF16 or AMX): keep the default fp32 on "
                 "the CPU; bf16 there is emulated and about five times slower (it only saves memory).")


def _cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(load: float | None = None) -> Check:
    """torch's thread count against the CPUs this process may use and their current load (threads
    that wait on busy cores make CPU runs many times slower)."""
    import torch

    threads, cpus = torch.get_num_threads(), _cpus_available()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
    text = f"torch uses {threads} thread(s) on {cpus} CPU(s) available to this process"
    if load is not None:
        text += f" (load {load:.1f})"
    if threads > cpus:
        return Check("threads", WARNING, text + ": more threads than CPUs slows CPU runs; set "
                     f"OMP_NUM_THREADS={cpus}.")
    if load is not None and load > cpus + 0.5:
        return Check("threads", WARNING, text + ": other processes keep the CPUs busy, so CPU runs will be "
                     "slower than usual.")
    return Check("threads", OK, text + ".")


# ------------------------------------------------------------------------------------------------
# memory, disk, folders
# ------------------------------------------------------------------------------------------------
def check_memory(available: int | None = None) -> Check:
    """Free host memory: the default model's run needs about 1 GiB (problem below that), larger
    catalogue models several (warning below 4 GiB)."""
    if available is None:
        from .memory import available_memory

        available = available_memory("cpu")["host_available"]
    if available is None:
        return Check("memory", WARNING, "free memory could not be read (psutil is missing).")
    text = f"{format_bytes(available)} free"
    if available < 1 * GIB:
        return Check("memory", PROBLEM, text + ": the default model needs about 1 GiB; close other programs.")
    if available < 4 * GIB:
        return Check("memory", WARNING, text + ": enough for the default model; models of a billion parameters "
                     "and more need several GiB.")
    return Check("memory", OK, text + ".")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(folder: Path, free: int | None = None) -> Check:
    """Free disk space where the cache lives: the default model takes about 0.6 GiB (problem below 1
    GiB), the 1.5B catalogue model about 7 GB (warning below 8 GiB)."""
    if free is None:
        try:
            free = shutil.disk_usage(_existing(folder)).free
        except OSError as e:
            return Check("disk", WARNING, f"free space at {folder} could not be read ({e}).")
    text = f"{format_bytes(free)} free at {folder}"
    if free < 1 * GIB:
        return Check("disk", PROBLEM, text + ": the default model needs about 0.6 GiB there; free some space "
                     "or point PRUNESTUDIO_CACHE at another disk.")
    if free < 8 * GIB:
        return Check("disk", WARNING, text + ": enough for the default model; the larger catalogue models "
                     "need up to 7 GB.")
    return Check("disk", OK, text + ".")


def check_writable(name: str, folder: Path, hint: str) -> Check:
    """Whether files can be written in ``folder`` (or, when it does not exist yet, created in its
    nearest existing parent): a temporary file is written and removed."""
    target = _existing(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".prunestudio-doctor-"):
            pass
    except OSError as e:
        return Check(name, PROBLEM, f"{target} is not writable ({e.strerror or e}); {hint}")
    if target != folder.absolute():
        return Check(name, OK, f"{folder} will be created (its parent {target} is writable).")
    return Check(name, OK, f"{folder} is writable.")


def default_export_parent() -> Path:
    """Where the desktop app suggests export folders by default."""
    return Path.home() / "prunestudio-exports"


def run_checks(cache_dir: Path | None = None, export_dir: Path | None = None, qt: bool = True) -> tuple[Check, ...]:
    """Every check, in the order the doctor shows them (``qt=False`` leaves out the Qt check)."""
    from .catalog import cache_root

    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    export = Path(export_dir) if export_dir is not None else default_export_parent()
    checks = [check_qt_platform()] if qt else []
    checks += [check_torch(), check_device(), check_cpu_bf16(), check_threads(), check_memory(),
               check_disk(cache),
               check_writable("cache folder", cache, "set PRUNESTUDIO_CACHE to a folder you can write."),
               check_writable("export folder", export, "choose another export folder.")]
    return tuple(checks)
