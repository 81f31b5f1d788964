"""Typed access to the user's preferences (QSettings, INI format).

Organisation and application names are set once in :func:`app.configure_application`. Settings
are always INI files so that tests (and portable installs) can redirect them: the
``PRUNESTUDIO_SETTINGS`` environment variable naming one INI file, or
``QSettings.setPath(IniFormat, UserScope, folder)`` before the first use.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from PySide6.QtCore import QByteArray, QSettings

ORGANIZATION = "prunestudio"
APPLICATION = "prunestudio"
DISPLAY_NAME = "Prune Studio"

T = TypeVar("T")


_CACHE: dict[str, QSettings] = {}


def qsettings() -> QSettings:
    """The settings object (one per location, kept: writes are batched and synced by Qt's event
    loop and on exit, instead of a file write per value). GUI thread only."""
    path = os.environ.get("PRUNESTUDIO_SETTINGS")
    key = "file:" + path if path else "user"
    s = _CACHE.get(key)
    if s is None:
        if path:
            s = QSettings(path, QSettings.Format.IniFormat)
        else:  # QSettings.setPath(IniFormat, UserScope, ...) must come before the first use
            s = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)
        _CACHE[key] = s
    return s


def sync_all() -> None:
    for s in _CACHE.values():
        s.sync()


class Settings:
    """A thin typed wrapper: ``get(key, default)`` returns a value of ``type(default)``."""

    def __init__(self, group: str = "") -> None:
        self._group = group.strip("/")

    def _key(self, key: str) -> str:
        return f"{self._group}/{key}" if self._group else key

    def get(self, key: str, default: T) -> T:
        s = qsettings()
        k = self._key(key)
        if not s.contains(k):
            return default
        raw = s.value(k)
        try:
            if isinstance(default, bool):
                if isinstance(raw, str):
                    return raw.strip().lower() in ("1", "true", "yes", "on")  # type: ignore[return-value]
                return bool(raw)  # type: ignore[return-value]
            if isinstance(default, int):
                return int(raw)  # type: ignore[return-value]
            if isinstance(default, float):
                return float(raw)  # type: ignore[return-value]
            if isinstance(default, str):
                return "" if raw is None else str(raw)  # type: ignore[return-value]
            if isinstance(default, (list, tuple)):
                if raw is None or raw == "":
                    return type(default)()  # type: ignore[return-value]
                vals = raw if isinstance(raw, (list, tuple)) else [raw]
                return type(default)(str(v) for v in vals)  # type: ignore[return-value]
        except (TypeError, ValueError):
            return default
        return raw  # type: ignore[no-any-return]

    def set(self, key: str, value: Any) -> None:
        s = qsettings()
        if isinstance(value, tuple):
            value = list(value)
        s.setValue(self._key(key), value)

    def get_bytes(self, key: str) -> QByteArray | None:
        raw = qsettings().value(self._key(key))
        return raw if isinstance(raw, QByteArray) and not raw.isEmpty() else None

    def remove(self, key: str) -> None:
        qsettings().remove(self._key(key))

    def sync(self) -> None:
        qsettings().sync()
