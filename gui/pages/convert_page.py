"""The Convert page: the converter's options as a form, progress per step, cancel, the final
report table, and the new package opened in one click."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from .. import work
from ..widgets import table

TARGETS = ("onnx", "openvino", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


def _path_row(edit: QLineEdit, browse) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit, 1)
    button = QPushButton("Browse…")
    button.clicked.connect(browse)
    row.addWidget(button)
    return w


class ConvertPage(QWidget):
    def __init__(self, window) -> None:
        super().__init__()
        self.window_ = window
        self.job = None
        self.report = None
        self._filled = ""  # the source this page filled in from the open model (the user's own text is kept)
        self.source = QLineEdit()
        self.source.setObjectName("convertSource")
        self.source.setPlaceholderText(".onnx / .tflite / .xml file, Hugging Face folder or package")
        self.out = QLineEdit()
        self.out.setObjectName("convertOut")
        self.out.setPlaceholderText("package folder to write (default: beside the source)")
        self.calibration = QLineEdit()
        self.calibration.setObjectName("convertCalibration")
        self.calibration.setPlaceholderText("folder of images / audio, a .txt of lines, .npy (needed for int8)")
        self.targets = {t: QCheckBox(t) for t in TARGETS}
        self.precisions = {p: QCheckBox(p) for p in PRECISIONS}
        for name in ("onnx", "openvino", "tflite"):
            self.targets[name].setChecked(True)
        for name in ("fp32", "fp16"):
            self.precisions[name].setChecked(True)
        self.precisions["int8"].setToolTip("calibrated int8 (the fast recipe of each target): needs calibration data")
        self.precisions["int8-dynamic"].setToolTip("weights-only int8: no calibration data needed")

        form_box = QGroupBox("Convert and quantize")
        form = QFormLayout(form_box)
        form.addRow("Source:", _path_row(self.source, self.browse_source))
        targets = QHBoxLayout()
        for cb in self.targets.values():
            targets.addWidget(cb)
        targets.addStretch(1)
        form.addRow("Targets:", targets)
        precs = QHBoxLayout()
        for cb in self.precisions.values():
            precs.addWidget(cb)
        precs.addStretch(1)
        form.addRow("Precisions:", precs)
        form.addRow("Calibration:", _path_row(self.calibration, self.browse_calibration))
        form.addRow("Output folder:", _path_row(self.out, self.browse_out))

        self.convert_button = QPushButton("Convert")
        self.convert_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stops the conversion now; nothing half-written is left")
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button = QPushButton("Open the new package")
        self.open_button.setObjectName("openConverted")
        self.open_button.setEnabled(False)
        self.open_button.clicked.connect(self.open_result)
        buttons = QHBoxLayout()
        for b in (self.convert_button, self.cancel_button, self.open_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setObjectName("convertProgress")
        self.step = QLabel("")
        self.step.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setObjectName("convertLog")
        self.results = QTableWidget()
        self.results.setObjectName("convertTable")

        layout = QVBoxLayout(self)
        layout.addWidget(form_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.step)
        layout.addWidget(self.log, 1)
        layout.addWidget(self.results, 2)

    def model_changed(self, loaded) -> None:
        if loaded is None or self.job:
            return
        if self.source.text().strip() in ("", self._filled):  # not a path the user typed or chose
            self._filled = str(loaded.info.path)
            self.source.setText(self._filled)

    # --- browsing ---
    def browse_source(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model to convert", "",
                                              "Models (*.onnx *.tflite *.xml);;All files (*)")
        if path:
            self.source.setText(path)

    def browse_calibration(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Calibration data folder")
        if path:
            self.calibration.setText(path)

    def browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder to put the new package in")
        if path:
            self.out.setText(str(work.package_folder_in(Path(path), self.source.text().strip())))

    # --- running ---
    def options(self) -> work.ConvertOptions:
        from converters.conversion import check_destination, default_out
        from edgekit.errors import UsageError

        source = self.source.text().strip()
        if not source:
            raise UsageError("choose a model to convert (Source)")
        targets = [t for t, cb in self.targets.items() if cb.isChecked()]
        precisions = [p for p, cb in self.precisions.items() if cb.isChecked()]
        if not targets or not precisions:
            raise UsageError("tick at least one target and one precision")
        out = Path(self.out.text().strip() or default_out(Path(source).expanduser())).expanduser()
        if not out.is_absolute():  # the app's working folder means nothing to a person: beside the source
            out = Path(source).expanduser().resolve().parent / out
        check_destination(out, source)  # the converter's own rule, before the child process starts
        return work.ConvertOptions(source, str(out), targets, precisions, self.calibration.text().strip() or None)

    def start(self) -> None:
        try:
            options = self.options()
        except Exception as e:  # noqa: BLE001 - a form error is a dialog
            self.step.setText("not started: see the message")  # not the previous conversion's last words
            self.window_.show_exception("Cannot convert", e)
            return
        self.report = None
        self.log.clear()
        self.results.setRowCount(0)
        self.open_button.setEnabled(False)
        self.convert_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.step.setText(f"converting {options.source} → {options.out}")

        def finished(cancelled: bool) -> None:
            self.job = None
            self.convert_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            if cancelled:
                self.step.setText("cancelled: nothing was written")

        def failed(exc, details) -> None:
            report = getattr(exc, "report", None)
            if report is not None:
                self.show_report(report)
            self.step.setText("conversion failed")
            self.window_.show_exception("Conversion failed", exc, details)

        self.job = self.window_.jobs.submit(
            lambda job: work.convert(options, progress=job.report, cancelled=lambda: job.cancelled), name="Conversion",
            on_result=self.done, on_progress=self.on_progress, on_finished=finished, on_error=failed)

    def on_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(done)
        self.step.setText(text)
        self.log.appendPlainText(text)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.step.setText("cancelling after the current step…")

    def done(self, report) -> None:
        self.report = report
        self.show_report(report)
        from converters.report import count

        ok = sum(a.ok for a in report.artifacts)
        self.step.setText(f"wrote {report.out}: {ok} of {count(len(report.artifacts), 'artifact')} ok "
                          f"in {report.seconds:.0f} s")
        self.open_button.setEnabled(report.written)

    def show_report(self, report) -> None:
        header, rows = report.table()
        table(header, rows, widget=self.results)

    def open_result(self) -> None:
        if self.report is not None:
            self.window_.open_path(Path(self.report.out))
