"""``prunestudio doctor`` and its checks (core/model/system_checks.py): the Qt platform check names
missing system libraries with their apt, dnf and pacman packages; everything is ok on this machine
with the offscreen platform; the exit status says whether something blocks; the GUI launcher
prints the sentence instead of Qt's abort."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prunestudio.core.cli.commands import main
from prunestudio.core.model import system_checks as sc

pytest.importorskip("PySide6")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="a fake ldd is a shell script")

# what ldd prints for Qt's xcb plugin on a Debian machine without xcb-util-cursor and xcb-util-wm
LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f3a)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f3a1b)
\tlibxcb-icccm.so.4 => not found
\tlibfoo-unknown.so.7 => not found
"""

BROKEN_PLATFORM = "prunestudio-no-such-platform"


def _fake_ldd(tmp_path: Path, text: str) -> str:
    script = tmp_path / "ldd"
    out = tmp_path / "ldd-output.txt"
    out.write_text(text)
    script.write_text(f"#!/bin/sh\ncat '{out}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def test_ldd_output_is_read_into_missing_sonames_each_once():
    assert sc.missing_libraries(LDD_OUTPUT) == ("libxcb-cursor.so.0", "libxcb-icccm.so.4", "libfoo-unknown.so.7")
    assert sc.missing_libraries("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n\tnot a dynamic executable\n") == ()


def test_install_commands_for_apt_dnf_and_pacman():
    cmds = sc.install_commands(["libxcb-cursor.so.0", "libxcb-keysyms.so.1", "libxkbcommon-x11.so.0",
                                "libfoo-unknown.so.7"])
    assert cmds == ("sudo apt install libxcb-cursor0 libxcb-keysyms1 libxkbcommon-x11-0",
                    "sudo dnf install xcb-util-cursor xcb-util-keysyms libxkbcommon-x11",
                    "sudo pacman -S xcb-util-cursor xcb-util-keysyms libxkbcommon-x11")
    # two sonames of one package give the package once
    assert sc.install_commands(["libxcb-randr.so.0", "libxcb-shape.so.0"])[0] == "sudo apt install libxcb-randr0 libxcb-shape0"
    assert sc.install_commands(["libxcb-randr.so.0", "libxcb-shape.so.0"])[1] == "sudo dnf install libxcb"
    assert sc.install_commands(["libfoo-unknown.so.7"]) == ()


def test_platform_the_user_would_get():
    assert sc.qt_platform_name({}, platform="linux") == "xcb"
    assert sc.qt_platform_name({"QT_QPA_PLATFORM": "wayland;xcb"}, platform="linux") == "wayland"
    assert sc.qt_platform_name({"QT_QPA_PLATFORM": "vnc:size=800x600"}, platform="linux") == "vnc"
    assert sc.qt_platform_name({}, platform="darwin") == "cocoa"
    plugin = sc.platform_plugin("offscreen")
    assert plugin is not None and plugin.is_file() and "offscreen" in plugin.name
    assert sc.platform_plugin(BROKEN_PLATFORM) is None


@posix_only
def test_a_plugin_that_cannot_load_names_the_missing_libraries_and_install_commands(tmp_path):
    fake_plugin = tmp_path / f"libq{BROKEN_PLATFORM}.so"
    fake_plugin.write_bytes(b"not an ELF file")
    check = sc.check_qt_platform(env=_env(QT_QPA_PLATFORM=BROKEN_PLATFORM), plugin=fake_plugin,
                                 ldd=_fake_ldd(tmp_path, LDD_OUTPUT), can_load=lambda s: True)
    assert check.level == sc.PROBLEM
    assert "libxcb-cursor.so.0, libxcb-icccm.so.4, libfoo-unknown.so.7 are missing" in check.sentence
    assert "libxcb-cursor0, libxcb-icccm4" in check.sentence
    assert "libfoo-unknown.so.7 come(s) from packages this check does not know" in check.sentence
    assert check.fixes == ("sudo apt install libxcb-cursor0 libxcb-icccm4",
                           "sudo dnf install xcb-util-cursor xcb-util-wm",
                           "sudo pacman -S xcb-util-cursor xcb-util-wm")


@posix_only
def test_xcb_without_display_or_with_a_library_opened_at_run_time(tmp_path):
    env = _env(QT_QPA_PLATFORM="xcb", DISPLAY=None, WAYLAND_DISPLAY=None)
    nothing_missing = _fake_ldd(tmp_path, "\tlibxcb.so.1 => /lib/libxcb.so.1 (0x1)\n")
    check = sc.check_qt_platform(env=env, ldd=nothing_missing, can_load=lambda s: True)
    assert check.level == sc.PROBLEM and "no display" in check.sentence and "DISPLAY is not set" in check.sentence
    assert check.fixes == ()
    # libxcb-cursor, which some Qt builds open at run time, is named although ldd does not list it
    check = sc.check_qt_platform(env=env, ldd=nothing_missing, can_load=lambda s: s != "libxcb-cursor.so.0")
    assert check.level == sc.PROBLEM and "the system library libxcb-cursor.so.0 is missing" in check.sentence
    assert check.fixes[0] == "sudo apt install libxcb-cursor0"


def test_a_real_plugin_file_that_is_not_a_library_gives_qts_reason(tmp_path):
    fake_plugin = tmp_path / f"libq{BROKEN_PLATFORM}.so"
    fake_plugin.write_bytes(b"not an ELF file")
    check = sc.check_qt_platform(env=_env(QT_QPA_PLATFORM=BROKEN_PLATFORM), plugin=fake_plugin,
                                 can_load=lambda s: True)
    assert check.level == sc.PROBLEM
    assert f"Qt cannot start on the '{BROKEN_PLATFORM}' platform" in check.sentence
    assert BROKEN_PLATFORM in check.sentence.split(":", 1)[1]  # Qt's own line names the platform


def test_everything_is_ok_here_with_the_offscreen_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    checks = sc.run_checks(cache_dir=tmp_path / "cache", export_dir=tmp_path / "exports")
    by_name = {c.name: c for c in checks}
    assert list(by_name) == ["Qt platform", "torch", "device", "CPU bf16", "threads", "memory", "disk",
                             "cache folder", "export folder"]
    assert by_name["Qt platform"].level == sc.OK and "'offscreen'" in by_name["Qt platform"].sentence
    import torch

    assert torch.__version__ in by_name["torch"].sentence
    assert not sc.blocking(checks), [c for c in checks if c.level == sc.PROBLEM]
    assert "will be created" in by_name["export folder"].sentence
    assert not (tmp_path / "exports").exists()  # the check writes nothing that stays
    (tmp_path / "cache").mkdir()
    assert sc.check_writable("cache folder", tmp_path / "cache", "").sentence.endswith("is writable.")
    assert list((tmp_path / "cache").iterdir()) == []


def test_thresholds_of_memory_disk_threads_and_folders(tmp_path):
    gib = 2**30
    assert sc.check_memory(available=gib // 2).level == sc.PROBLEM
    assert sc.check_memory(available=2 * gib).level == sc.WARNING
    assert sc.check_memory(available=16 * gib).level == sc.OK
    assert sc.check_disk(tmp_path, free=gib // 2).level == sc.PROBLEM
    assert "PRUNESTUDIO_CACHE" in sc.check_disk(tmp_path, free=gib // 2).sentence
    assert sc.check_disk(tmp_path, free=4 * gib).level == sc.WARNING
    assert sc.check_disk(tmp_path, free=100 * gib).level == sc.OK
    assert sc.check_threads(load=1000.0).level == sc.WARNING
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    bad = sc.check_writable("export folder", a_file / "exports", "choose another export folder.")
    assert bad.level == sc.PROBLEM and "not writable" in bad.sentence and "choose another" in bad.sentence


def test_cli_exit_status_0_when_nothing_blocks_1_otherwise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNESTUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert main(["doctor", "--export-dir", str(tmp_path / "exports")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok       Qt platform: the 'offscreen' platform plugin loads.")
    assert len([ln for ln in out.splitlines() if ln.split()[0] in ("ok", "warning", "problem")]) == 9

    monkeypatch.setenv("QT_QPA_PLATFORM", BROKEN_PLATFORM)
    assert main(["doctor", "--export-dir", str(tmp_path / "exports")]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"problem  Qt platform: Qt cannot start on the '{BROKEN_PLATFORM}' platform")
    assert "Fix the problems above" in out
    assert main(["doctor", "--no-qt", "--json", "--export-dir", str(tmp_path / "exports")]) == 0
    import json

    assert [c["name"] for c in json.loads(capsys.readouterr().out)][0] == "torch"


def test_the_gui_launcher_prints_the_sentence_instead_of_qts_abort(tmp_path):
    env = _env(QT_QPA_PLATFORM=BROKEN_PLATFORM, PRUNESTUDIO_LOG_DIR=str(tmp_path / "logs"),
               PRUNESTUDIO_SETTINGS=str(tmp_path / "s.ini"), PRUNESTUDIO_DATA=str(tmp_path / "d"))
    proc = subprocess.run([sys.executable, "-m", "prunestudio.gui"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"Prune Studio cannot start. Qt cannot start on the '{BROKEN_PLATFORM}'")
    assert "This application failed to start" not in proc.stderr  # Qt itself never ran in this process


def test_torch_and_device_lines_on_a_cuda_machine(monkeypatch):
    """The CUDA branch, with torch's CUDA queries answered as a 2-GPU machine would."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda dev: SimpleNamespace(name=f"Fake GPU {torch.device(dev).index}", total_memory=80 * 2**30))
    assert sc.check_torch().sentence == f"torch {torch.__version__} built for CUDA 12.8; 2 GPU(s) visible."
    assert sc.check_device().sentence == "cuda:1: Fake GPU 1, 80.0 GiB, supports bf16."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sc.check_torch().level == sc.WARNING and "sees no GPU" in sc.check_torch().sentence
