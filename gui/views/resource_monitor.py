"""Memory and CPU use of this process, polled by a QTimer on the GUI thread (psutil, CUDA)."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QWidget

from ...core.model.memory import format_bytes


class ResourceMonitor(QLabel):
    def __init__(self, parent: QWidget | None = None, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.setToolTip("Memory and CPU used by Prune Studio, updated every second.")
        self._proc = None
        self._ncpu = os.cpu_count() or 1
        self._cpu, self._cpu_at = 0.0, time.monotonic()
        try:
            import psutil

            self._proc = psutil.Process()
            self._proc.cpu_percent(None)  # prime: the first call always returns 0
            self._psutil = psutil
        except Exception:  # noqa: BLE001
            self._psutil = None
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)
        self.poll()

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def poll(self) -> None:
        parts = []
        if self._proc is not None:
            try:
                rss = self._proc.memory_info().rss
                now = time.monotonic()
                if now - self._cpu_at >= 0.5:  # psutil's ratio over a few ms is noise (1500 % seen)
                    self._cpu = min(self._proc.cpu_percent(None) / self._ncpu, 100.0)
                    self._cpu_at = now
                cpu = self._cpu
                avail = self._psutil.virtual_memory().available
                parts.append(f"RAM {format_bytes(rss)} used, {format_bytes(avail)} free")
                parts.append(f"CPU {cpu:.0f} % of {self._ncpu} cores")
            except Exception:  # noqa: BLE001
                pass
        try:
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                parts.append(f"GPU {format_bytes(torch.cuda.memory_allocated())} allocated, "
                             f"{format_bytes(free)} of {format_bytes(total)} free")
        except Exception:  # noqa: BLE001
            pass
        self.setText(" · ".join(parts) or "resource use unavailable")
