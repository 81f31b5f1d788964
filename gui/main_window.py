"""The main window: composition only - steps on the left, one panel per step, menus, shortcuts."""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMainWindow, QMessageBox, QScrollArea, QStackedWidget, QWidget

from ..core.config import SETTINGS_PRESETS
from . import dialogs, errors
from .panels.calib import CalibPanel
from .panels.eval import EvalPanel
from .panels.history import HistoryPanel
from .panels.model import ModelPanel
from .panels.prune import PrunePanel
from .panels.run import RunPanel
from .panels.steps import STEPS, StepList, step_status
from .resources import app_icon
from .settings import DISPLAY_NAME, Settings, sync_all
from .state import AppState
from .widgets import chain_tab_order
from .worker import active_workers, after_workers

QUIT_WAIT_MS = 120_000  # the longest a closed window waits for a job to leave an uninterruptible step


def quit_application() -> None:
    """Quit the event loop (a no-op outside ``exec``); looked up at call time, so tests replace it."""
    QCoreApplication.quit()


def _scrollable(w: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(w)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    return area


class MainWindow(QMainWindow):
    def __init__(self, state: AppState | None = None) -> None:
        super().__init__()
        self.state = state or AppState()
        self._closing = False  # closed while a job ran: hidden, waiting for the job to end
        self.settings = Settings("window")
        self.setWindowTitle(DISPLAY_NAME)
        self.setWindowIcon(app_icon())
        errors.sink().parent_widget = self

        self.model_panel = ModelPanel(self.state)
        self.calib_panel = CalibPanel(self.state)
        self.prune_panel = PrunePanel(self.state)
        self.run_panel = RunPanel(self.state)
        self.eval_panel = EvalPanel(self.state)
        self.history_panel = HistoryPanel(self.state)
        self.panels = {"model": self.model_panel, "calibration": self.calib_panel, "pruning": self.prune_panel,
                       "run": self.run_panel, "evaluate": self.eval_panel, "history": self.history_panel}

        self.steps = StepList()
        self.stack = QStackedWidget()
        for step in STEPS:
            panel = self.panels[step.key]
            chain_tab_order(panel)  # Tab follows the panel's reading order
            scroll = step.key in ("model", "pruning", "evaluate")
            self.stack.addWidget(_scrollable(panel) if scroll else panel)
        central = QWidget()
        lay = QHBoxLayout(central)
        lay.addWidget(self.steps)
        lay.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self.busy_label = QLabel()
        self.statusBar().addPermanentWidget(self.busy_label)

        self._menus()
        self.steps.currentRowChanged.connect(self.stack.setCurrentIndex)
        for sig in (self.state.model_changed, self.state.calib_changed, self.state.config_changed,
                    self.state.run_changed, self.state.busy_changed):
            sig.connect(self._update_steps)
        self.state.busy_changed.connect(self._busy)
        self.state.logged.connect(lambda text, _lvl: self.statusBar().showMessage(text, 8000))
        self._update_steps()
        self.steps.setCurrentRow(0)
        self._restore()

    # ---- menus and shortcuts -------------------------------------------------------------------
    def _menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        self.act_load_model = self._action("&Load model", self.model_panel.load, "Ctrl+L")
        self.act_load_recipe = self._action("&Open recipe…", self.prune_panel.load_recipe_dialog, QKeySequence.StandardKey.Open)
        self.act_save_recipe = self._action("&Save recipe…", self.prune_panel.save_recipe_dialog, QKeySequence.StandardKey.Save)
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        for a in (self.act_load_model, self.act_load_recipe, self.act_save_recipe):
            file_menu.addAction(a)
        presets = file_menu.addMenu("Settings &preset")
        presets.setToolTipsVisible(True)
        self.preset_actions: dict[str, QAction] = {}
        for name, preset in SETTINGS_PRESETS.items():
            act = self._action(preset.label, lambda name=name: self.apply_preset(name))
            act.setToolTip(preset.description)
            presets.addAction(act)
            self.preset_actions[name] = act
        file_menu.addSeparator()
        file_menu.addAction(self.act_quit)

        run_menu = mb.addMenu("&Run")
        self.act_run = self._action("&Start run", self._start_run, "Ctrl+R")
        self.act_cancel = self._action("&Cancel current job", self.state.cancel, Qt.Key.Key_Escape)
        self.act_cancel.setEnabled(False)
        run_menu.addAction(self.act_run)
        run_menu.addAction(self.act_cancel)

        view = mb.addMenu("&View")
        for i, step in enumerate(STEPS):
            act = self._action(f"&{i + 1} {step.title}", lambda _c=False, i=i: self.show_step(i), f"Ctrl+{i + 1}")
            view.addAction(act)

        help_menu = mb.addMenu("&Help")
        help_menu.addAction(self._action("Open the &log folder", self._open_logs))
        help_menu.addAction(self._action("&About Prune Studio", self._about))

    def _action(self, text: str, slot, shortcut=None) -> QAction:  # noqa: ANN001
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(lambda _checked=False: slot())
        self.addAction(act)  # shortcuts work whatever has the focus
        return act

    def apply_preset(self, name: str) -> None:
        """Set the calibration and evaluation sizes of every step from a settings preset
        (``core/config.py``: the CPU-sized defaults or the papers' settings); the method, its
        settings and the sources stay as they are."""
        preset = SETTINGS_PRESETS[name]
        self.state.apply_recipe(preset.apply(self.state.recipe()))
        self.eval_panel.apply_preset(preset)
        self.state.log(f"Settings preset: {preset.label} ({preset.description}).")

    def show_step(self, index: int) -> None:
        self.steps.setCurrentRow(index)

    def _start_run(self) -> None:
        self.show_step(3)
        self.run_panel.start()

    def _busy(self, busy: bool) -> None:
        self.act_cancel.setEnabled(busy)
        self.act_run.setEnabled(not busy)
        cur = self.state.current
        self.busy_label.setText(f"Working: {cur.name}… (Esc cancels)" if busy and cur else "")

    def _update_steps(self, *_a: object) -> None:
        self.steps.update_status(step_status(self.state))

    def _open_logs(self) -> None:
        from .logfile import log_dir
        from .panels.eval import open_folder

        open_folder(log_dir())

    def _about(self) -> None:
        from ..core import __version__

        QMessageBox.about(self, f"About {DISPLAY_NAME}",
                          f"<b>{DISPLAY_NAME}</b> {__version__}<br>Post-training pruning of language models, "
                          "with calibration data as a first-class citizen.<br>Magnitude, Wanda, SparseGPT, DSnoT "
                          "and OWL; self-generated calibration data (Ji et al., 2025).")

    # ---- geometry ------------------------------------------------------------------------------
    def _restore(self) -> None:
        geo = self.settings.get_bytes("geometry")
        ok = False
        if geo is not None:
            ok = self.restoreGeometry(geo)
            screen = self.screen()
            if ok and screen is not None and not screen.availableGeometry().intersects(self.frameGeometry()):
                ok = False
        if not ok:
            self.resize(1280, 820)
        self.show_step(self.settings.get("step", 0))

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        """Closing quits the application. While a job runs (after "Quit while working?"), the job
        is cancelled, the window hides at once and the application quits when the job has ended."""
        if self._closing:  # asked before: the job has ended since (or the wait is over)
            event.accept()
            return
        if self.state.busy:
            name = self.state.current.name if self.state.current else "a job"
            if not dialogs.confirm(self, "Quit while working?", f"Prune Studio is busy with {name}.",
                                   "Quitting cancels it.", "Cancel it and quit", "Keep working"):
                event.ignore()
                return
        self.settings.set("geometry", self.saveGeometry())
        self.settings.set("step", self.steps.currentRow())
        sync_all()
        if not active_workers():
            event.accept()
            return
        # A job runs: cancel it and hide now; quit once it has left the step it is in (a load or a
        # save is not interrupted), at most QUIT_WAIT_MS later. The GUI thread never waits here.
        self._closing = True
        event.ignore()
        self.hide()
        after_workers(self._close_after_work, QUIT_WAIT_MS)

    def _close_after_work(self) -> None:
        self.close()
        quit_application()
