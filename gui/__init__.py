"""Prune Studio's desktop app (PySide6 + pyqtgraph): a window over the engine in ``prunestudio.core``.

See ARCHITECTURE.md for its layers (helpers, views, state, panels, window)."""
