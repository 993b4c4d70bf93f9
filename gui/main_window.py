"""The main window: menus, toolbar (open, samples, device, run), the four pages, drag and drop.

It owns the :class:`Session` (state) and the :class:`Jobs` (background work) and connects
them to the pages; every slow call goes through ``jobs.submit``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from pathlib import Path

import shiboken6
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QLabel,
    QMainWindow,
    QProgressBar,
    QTabWidget,
    QToolBar,
)

from edgekit.errors import UsageError

from . import dialogs
from .jobs import Jobs
from .pages.bench_page import BenchPage
from .pages.convert_page import ConvertPage
from .pages.model_page import ModelPage
from .pages.run_page import RunPage
from .state import Session, is_model_path, open_model

log = logging.getLogger("edgekit.gui")

SAMPLES = (("image", "Image sample", "EfficientNet-Lite0: classify pictures"),
           ("text", "Text sample", "MiniLM-L6-v2: sentence similarity and zero-shot labels"),
           ("audio", "Audio sample", "Silero VAD: find speech in audio"))
MODEL_FILTER = "Models (*.onnx *.xml *.tflite);;All files (*)"


class SettingsStore(MutableMapping):
    """QSettings as the plain mapping :class:`Session` expects."""

    def __init__(self, settings: QSettings) -> None:
        self.q = settings

    def __getitem__(self, key):
        if not self.q.contains(key):
            raise KeyError(key)
        return self.q.value(key)

    def __setitem__(self, key, value) -> None:
        self.q.setValue(key, value)
        self.q.sync()

    def __delitem__(self, key) -> None:
        self.q.remove(key)

    def __iter__(self):
        return iter(self.q.allKeys())

    def __len__(self) -> int:
        return len(self.q.allKeys())


class MainWindow(QMainWindow):
    error_from_thread = Signal(str, object, str)

    def __init__(self, settings: QSettings | None = None, samples_dir: Path | None = None) -> None:
        super().__init__()
        self.setWindowTitle("edgekit")
        self.setObjectName("mainWindow")
        self.setAcceptDrops(True)
        self.resize(1180, 780)
        self.session = Session(SettingsStore(settings or QSettings("edgekit", "edgekit-gui")))
        self.jobs = Jobs()
        self.jobs.failed.connect(lambda name, e, d: self.show_exception(f"{name} failed", e, d))
        self.error_from_thread.connect(self.show_exception)
        self.samples_dir = samples_dir
        self._last_error = None
        self.devices_known = False
        self._opening = 0  # the number of the latest Open: results of earlier ones are dropped
        self._loaded_device: str | None = None  # the device setting the loaded model was opened with
        self._building: set[str] = set()
        self._shown_path: Path | None = None  # the model the pages show (a device switch keeps it)

        self.model_page = ModelPage()
        self.run_page = RunPage(self)
        self.bench_page = BenchPage(self)
        self.convert_page = ConvertPage(self)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("pages")
        self.tabs.setDocumentMode(True)
        for page, title in ((self.model_page, "Model"), (self.run_page, "Run"), (self.bench_page, "Benchmark"),
                            (self.convert_page, "Convert")):
            self.tabs.addTab(page, title)
        self.setCentralWidget(self.tabs)

        self._build_actions()
        self._build_status()
        self.session.model_changed.connect(self._model_changed)
        self.session.recent_changed.connect(lambda _r: self._fill_recent())
        self._fill_recent()
        self._model_changed(None)
        self.load_devices()

    # --- building the window ---
    def _build_actions(self) -> None:
        self.open_action = QAction("&Open model file…", self, shortcut=QKeySequence.StandardKey.Open,
                                   triggered=self.choose_model)
        self.open_action.setToolTip("Open a .onnx, .xml or .tflite model (Ctrl+O)")
        self.open_dir_action = QAction("Open &package folder…", self, shortcut="Ctrl+Shift+O",
                                       triggered=self.choose_package)
        self.run_action = QAction("&Run", self, shortcut="Ctrl+R", triggered=self.run_current)
        self.run_action.setToolTip("Run the model on the current input (Ctrl+R)")
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close)
        about_action = QAction("&About edgekit", self, triggered=self.show_about)
        self.sample_actions = {}
        for kind, title, tip in SAMPLES:
            action = QAction(title, self, triggered=lambda _=False, k=kind: self.open_sample(k))
            action.setToolTip(tip)
            self.sample_actions[kind] = action

        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_dir_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        samples_menu = file_menu.addMenu("&Samples")
        for action in self.sample_actions.values():
            samples_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        self.menuBar().addMenu("&Model").addAction(self.run_action)
        self.menuBar().addMenu("&Help").addAction(about_action)

        bar = QToolBar("Main")
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        bar.addAction(self.open_action)
        bar.addSeparator()
        for action in self.sample_actions.values():
            bar.addAction(action)
        bar.addSeparator()
        bar.addWidget(QLabel(" Device: "))
        self.device_combo = QComboBox()
        self.device_combo.setObjectName("deviceCombo")
        self.device_combo.setMinimumContentsLength(22)
        self.device_combo.setToolTip("auto: the best device available; fastest: measure each and keep the fastest")
        self.device_combo.currentIndexChanged.connect(self._device_picked)
        bar.addWidget(self.device_combo)
        bar.addSeparator()
        bar.addAction(self.run_action)
        self.addToolBar(bar)

    def _build_status(self) -> None:
        self.where_label = QLabel("no model")
        self.where_label.setObjectName("whereLabel")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setVisible(False)
        self.statusBar().addPermanentWidget(self.where_label)
        self.statusBar().addPermanentWidget(self.busy)
        self.jobs.busy_changed.connect(self.busy.setVisible)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = [p for p in self.session.recent if Path(p).exists()]  # moved or deleted ones drop out
        for path in recent:
            self.recent_menu.addAction(path, lambda p=path: self.open_path(Path(p)))
        self.recent_menu.setEnabled(bool(recent))

    # --- devices ---
    def load_devices(self) -> None:
        """Discover devices in the background (importing the runtimes takes a moment)."""
        import edgekit

        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem("auto", "auto")
        self.device_combo.blockSignals(False)
        self.jobs.submit(lambda job: edgekit.devices(), name="Finding devices", on_result=self._fill_devices)

    def _fill_devices(self, devices) -> None:
        combo = self.device_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("auto", "auto")
        combo.setItemData(0, "the best device available, with fallback", Qt.ItemDataRole.ToolTipRole)
        combo.addItem("fastest", "fastest")
        combo.setItemData(1, "measure every device once and keep the fastest", Qt.ItemDataRole.ToolTipRole)
        for d in devices:
            text = d.spec if d.available else f"{d.spec} (unavailable)"
            combo.addItem(text, d.spec)
            i = combo.count() - 1
            combo.setItemData(i, d.name if d.available else f"unavailable: {d.reason}", Qt.ItemDataRole.ToolTipRole)
            if not d.available:
                combo.model().item(i).setEnabled(False)
        index = combo.findData(self.session.device)
        if index < 0 or not combo.model().item(index).isEnabled():  # a saved device that is gone
            index = 0
            self.session.set_device("auto")
        combo.setCurrentIndex(index)
        combo.blockSignals(False)
        self.devices_known = True

    def _device_picked(self, index: int) -> None:
        device, previous = self.device_combo.itemData(index), self.session.device
        if not device or device == previous:
            return
        self.session.set_device(device)
        if self.session.loaded is not None:
            self.open_path(self.session.loaded.info.path, fallback_device=previous)

    def _revert_device(self, device: str) -> None:
        self.session.set_device(device)
        self.device_combo.blockSignals(True)
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(device)))
        self.device_combo.blockSignals(False)

    def set_device(self, spec: str) -> None:
        """Pick ``spec`` in the device box (as a person would)."""
        index = self.device_combo.findData(spec)
        if index < 0:
            raise ValueError(f"no device {spec!r} in the list")
        self.device_combo.setCurrentIndex(index)

    # --- opening ---
    def choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a model", "", MODEL_FILTER)
        if path:  # "All files" lets a picture or sound be picked: it goes where a dropped one goes
            self.open_dropped(Path(path))

    def choose_package(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a package folder (with edgekit.json)")
        if path:
            self.open_path(Path(path))

    def open_path(self, path: Path, *, fallback_device: str | None = None) -> None:
        """Open a model file or package on the chosen device, in the background. Only the latest
        Open counts; if it was a device switch that failed, the previous device comes back."""
        path, device = Path(path), self.session.device
        self._opening += 1
        number = self._opening
        self.statusBar().showMessage(f"opening {path.name} on {device}…")

        def opened(loaded) -> None:
            if number != self._opening:  # the user opened something else meanwhile
                loaded.close()
                return
            previous = self.session.loaded
            self.session.set_loaded(loaded)
            self._loaded_device = device
            if previous is None or previous.info.path != loaded.info.path:  # a new model: go and run it
                self.tabs.setCurrentWidget(self.run_page)
            self.statusBar().showMessage(f"opened {path.name} in {loaded.load_ms:.0f} ms", 5000)

        def failed(exc, details) -> None:
            if number != self._opening:
                return
            self.statusBar().clearMessage()
            if fallback_device is not None:  # a device switch failed: back to what the loaded model runs with
                self._revert_device(self._loaded_device if self.session.loaded is not None else fallback_device)
            on = "" if device == "auto" else f" on {device}"
            self.show_exception(f"Cannot open {path.name}{on}", exc, details)

        self.jobs.submit(lambda job: open_model(path, device), name=f"Opening {path.name}",
                         on_result=opened, on_error=failed)

    def open_sample(self, kind: str) -> None:
        """Open a sample package, building it first (once, a few minutes) if it is not there."""
        from edgekit import package
        from samples.build import sample_path

        from .work import build_sample

        path = sample_path(kind, self.samples_dir)
        try:
            package.read(path)
        except Exception:  # noqa: BLE001 - not built (or broken): build it
            if kind in self._building:
                return
            self._building.add(kind)
            self.statusBar().showMessage(f"building the {kind} sample (once; a few minutes)…")

            def failed(exc, details) -> None:
                self.statusBar().clearMessage()
                self.show_exception(f"Cannot build the {kind} sample", exc, details)

            self.jobs.submit(lambda job: build_sample(kind, self.samples_dir, progress=job.report,
                                                      cancelled=lambda: job.cancelled),
                             name=f"Building the {kind} sample",
                             on_progress=lambda _d, _t, line: self.statusBar().showMessage(line),
                             on_result=lambda _r: self.open_path(path), on_error=failed,
                             on_finished=lambda _c: self._building.discard(kind))
            return
        self.open_path(path)

    def _model_changed(self, loaded) -> None:
        # Another model resets the benchmark page; the same one on another device (a device switch)
        # keeps its benchmark running and its results: it measures every artifact and device anyway.
        new_model = loaded is None or loaded.info.path != self._shown_path
        self._shown_path = None if loaded is None else loaded.info.path
        self.model_page.show_model(loaded)
        self.run_page.model_changed(loaded)
        if new_model:
            self.bench_page.model_changed(loaded)
        self.convert_page.model_changed(loaded)
        self.run_action.setEnabled(loaded is not None)
        if loaded is None:
            self.where_label.setText("no model")
            self.setWindowTitle("edgekit")
            return
        self.where_label.setText(f"{loaded.info.name}: {loaded.model.path.name} on {loaded.where}")
        if new_model:
            self.bench_page.find_candidates(loaded)
        self.setWindowTitle(f"{loaded.info.name} — edgekit")

    # --- running ---
    def run_current(self) -> None:
        view = self.run_page.current
        if view is not None:
            self.tabs.setCurrentWidget(self.run_page)
            view.run()

    # --- drag and drop ---
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_dropped(paths[0])

    def open_dropped(self, path: Path) -> None:
        """A model or package is opened; a picture or sound goes to the running model's view."""
        if is_model_path(path):
            self.open_path(path)
            return
        view = self.run_page.current
        if view is not None and view.accepts_file(path):
            self.tabs.setCurrentWidget(self.run_page)
            view.open_file(path)
            return
        self.show_exception("Cannot use this file", UsageError(
            f"{path.name}: not a model (.onnx, .xml, .tflite or a package folder)" +
            (", nor an input the open model takes" if self.session.loaded else "; open a model first")))

    # --- dialogs ---
    @property
    def last_error(self):
        """The error dialog shown last, until it is closed (and so deleted); then None."""
        box = self._last_error
        return box if box is not None and shiboken6.isValid(box) else None

    @last_error.setter
    def last_error(self, box) -> None:
        self._last_error = box

    def show_exception(self, title: str, exc: BaseException, details: str = ""):
        log.info("%s: %s", title, exc)
        self.last_error = dialogs.show_error(self, title, dialogs.error_message(exc), details)
        return self.last_error

    def show_about(self) -> None:
        self.about = dialogs.AboutDialog(self)
        self.about.open()

    def showEvent(self, event) -> None:
        self.jobs.closed = False  # shown again after a close: jobs deliver again
        super().showEvent(event)

    def closeEvent(self, event) -> None:
        self.hide()
        self.jobs.close()  # running jobs stop at their next step; a conversion cleans up after itself
        if not self.jobs.wait(60_000):
            log.warning("background work did not stop within 60 s; models stay open until it does")
        else:
            self.session.close()
        super().closeEvent(event)
