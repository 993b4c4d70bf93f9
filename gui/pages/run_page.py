"""The Run page: one view per kind of task (image, text, audio) and a generic view for models
without a task. Each view gathers its input, runs a job from ``gui.work`` and draws the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from edgekit.types import shape_text

from .. import work
from ..widgets import BarChart, Picture, Waveform, table

IMAGE_FILTER = "Images (*.jpg *.jpeg *.png *.bmp *.gif *.webp *.tif *.tiff);;All files (*)"
AUDIO_FILTER = "Audio (*.wav *.flac *.ogg);;All files (*)"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})


def _latency_text(result) -> str:
    return f"{result.latency_ms:.1f} ms on {result.where} (pre-processing, inference and post-processing)"


class _TaskView(QWidget):
    """Shared by the views: the window (jobs, session, errors), a status line, Run and Cancel buttons."""

    kind = ""

    def __init__(self, window) -> None:
        super().__init__()
        self.window_ = window
        self.busy = False
        self.pending = False  # asked to run while running: runs again, on the latest input, after
        self.job = None  # the run under way
        self.model_path: Path | None = None  # of the model shown: the same again is a device switch
        self.switched = False
        self.status = QLabel("")
        self.status.setObjectName("runStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the model (Ctrl+R)")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run at its next line, batch or audio window; no result is shown")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)

    def run(self) -> None:
        raise NotImplementedError

    def submit(self, name: str, fn, on_result) -> None:
        """Run ``fn(loaded, progress)`` in a job; ``progress`` is its cancellation point."""
        loaded = self.window_.session.loaded
        if loaded is None:
            return
        if self.busy:  # one run at a time: a picture dropped meanwhile (or Ctrl+R) runs when this one ends
            self.pending = True
            self.status.setText("running… (then again, on the latest input)")
            return
        self.busy = True
        self.status.setText("running…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

        def current() -> bool:  # the model this run started on is still the one shown
            return self.window_.session.loaded is loaded

        def done(result) -> None:
            if not current() or job.cancelled:  # Cancel pressed after the run ended, before this came
                return
            self.window_.session.set_result(result)
            on_result(result)
            self.status.setText(_latency_text(result))

        def failed(exc, details) -> None:
            if not current():  # the model was replaced (and closed) under this run
                return
            self.status.setText("failed: see the message")
            self.clear_results()  # the last run's results would read as this one's
            self.window_.show_exception(f"{name} failed", exc, details)

        def progress(_done, _total, text) -> None:
            if current() and not job.cancelled:  # not over "cancelling…"
                self.status.setText(f"running… {text}")

        def finished(cancelled: bool) -> None:
            cancelled = cancelled or job.cancelled
            self.busy, self.job = False, None
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            if cancelled and current():
                self.status.setText("cancelled")
                self.clear_results()  # as after a failure: the last run's results would read as this one's
            if self.pending:
                self.pending = False
                self.run()

        def call(j):
            result = fn(loaded, j.progress)
            j.check()  # Cancel pressed during the last inference: its result is not shown either
            return result

        job = self.job = self.window_.jobs.submit(call, name=name, on_result=done, on_error=failed,
                                                  on_progress=progress, on_finished=finished)

    def cancel(self) -> None:
        """Stop the run at its next cancellation point; a run asked for meanwhile is dropped too."""
        if self.job is not None:
            self.job.cancel()
            self.pending = False
            self.status.setText("cancelling…")

    def model_changed(self, loaded) -> None:
        """Another model, or the same on another device (a switch). A run under way is stopped (its model
        is closed); after a switch it runs again, on the new device, when it has stopped."""
        path = None if loaded is None else loaded.info.path
        self.switched = path is not None and path == self.model_path
        self.model_path = path
        # again after a switch: a run under way, unless the user cancelled it (a second switch keeps "again")
        again = self.switched and (self.pending or (self.busy and not (self.job is not None and self.job.cancelled)))
        if self.job is not None:
            self.job.cancel()
        self.pending = again
        self.status.setText(f"running… again, on {loaded.where}" if again else "")

    def clear_results(self) -> None:
        """Take the last results off the page."""

    # Views that take files (pictures, sounds) set these.
    file_title, file_filter, file_suffixes = "", "", frozenset()

    def choose(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, self.file_title, "", self.file_filter)
        if path:
            self.open_file(Path(path))

    def accepts_file(self, path: Path) -> bool:
        return path.suffix.lower() in self.file_suffixes

    def open_file(self, path: Path) -> None:
        pass


class ImageTaskView(_TaskView):
    kind = "image"
    file_title, file_filter, file_suffixes = "Open a picture", IMAGE_FILTER, IMAGE_SUFFIXES

    def __init__(self, window) -> None:
        super().__init__(window)
        self.image_path: Path | None = None
        self.picture = Picture()
        self.picture.setObjectName("picture")
        open_button = QPushButton("Open picture…")
        open_button.clicked.connect(self.choose)
        self.top_k = QSpinBox(minimum=1, maximum=20, value=5)
        self.top_k.setPrefix("top ")
        self.bars = BarChart()
        self.bars.setObjectName("imageBars")
        controls = QHBoxLayout()
        for w in (open_button, self.top_k, self.run_button, self.cancel_button):
            controls.addWidget(w)
        controls.addStretch(1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.addWidget(self.bars)
        rl.addWidget(self.status)
        rl.addStretch(1)
        split = QSplitter()
        split.addWidget(self.picture)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(split, 1)

    def open_file(self, path: Path) -> None:
        self.image_path = Path(path)
        self.picture.load(path, self.window_.jobs)  # Qt may not decode every format PIL does; the model still runs
        self.run()

    def run(self) -> None:
        if self.image_path is None:
            self.status.setText("Open or drop a picture first.")
            return
        path, k = self.image_path, self.top_k.value()
        self.submit("Classifying the picture", lambda loaded, _progress: work.run_image(loaded, path, top_k=k),
                    self.show)

    def show(self, result: work.ImageResult) -> None:
        self.bars.set_items([(c.label, c.score) for c in result.categories], maximum=1.0,
                            title=f"Top {len(result.categories)}: {result.image.name}")

    def model_changed(self, loaded) -> None:
        super().model_changed(loaded)
        self.clear_results()

    def clear_results(self) -> None:
        self.bars.set_items([])


class TextTaskView(_TaskView):
    kind = "text"

    def __init__(self, window) -> None:
        super().__init__(window)
        self.editor = QPlainTextEdit()
        self.editor.setObjectName("textInput")
        self.editor.setPlaceholderText("One sentence per line")
        self.labels = QLineEdit()
        self.labels.setObjectName("zeroShotLabels")
        self.labels.setPlaceholderText("Zero-shot labels, comma-separated (e.g. sports, finance, weather)")
        self.labels_label = QLabel("Labels:")
        self.results = QWidget()
        self.results_layout = QVBoxLayout(self.results)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.results)
        self.similarity = QTableWidget()
        self.similarity.setObjectName("similarityTable")
        self.results_layout.addWidget(self.similarity)
        self.results_layout.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.labels_label)
        row.addWidget(self.labels, 1)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.editor, 1)
        ll.addLayout(row)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(left)
        split.addWidget(scroll)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(split, 1)
        layout.addWidget(self.status)

    def model_changed(self, loaded) -> None:
        super().model_changed(loaded)
        from edgekit.tasks import TextEmbedder

        embedder = loaded is not None and isinstance(loaded.task, TextEmbedder)
        self.labels.setVisible(embedder)
        self.labels_label.setVisible(embedder)
        self._clear()
        if loaded is not None and not self.editor.toPlainText().strip():
            self.editor.setPlainText(_sample_text())

    def clear_results(self) -> None:
        self._clear()

    def _clear(self) -> None:
        while self.results_layout.count() > 2:  # keep the similarity table and the stretch
            item = self.results_layout.takeAt(1)
            if item.widget():
                item.widget().deleteLater()
        self.similarity.clear()
        self.similarity.setRowCount(0)
        self.similarity.setColumnCount(0)

    def run(self) -> None:
        texts = self.editor.toPlainText().splitlines()
        labels = [s.strip() for s in self.labels.text().split(",") if s.strip()] if not self.labels.isHidden() else []
        self.submit("Running the text model",
                    lambda loaded, progress: work.run_text(loaded, texts, labels=labels, progress=progress), self.show)

    def show(self, result: work.TextResult) -> None:
        self._clear()
        shown = MAX_TABLE_TEXTS if result.similarity is not None else MAX_CHARTS
        if len(result.texts) > shown:  # filling the UI thread's widgets grows with the square of the texts
            note = QLabel(f"Showing the first {shown} of {len(result.texts)} texts: a window this size shows no "
                          f"more, and filling it would hold the window for seconds.")
            note.setWordWrap(True)
            self.results_layout.insertWidget(1, note)
        if result.similarity is not None:
            self.similarity.setVisible(True)
            n = min(len(result.texts), MAX_TABLE_TEXTS)
            short = [t if len(t) <= 40 else t[:39] + "…" for t in result.texts]
            rows = [[short[i], *(round(float(result.similarity[i, j]), 3) for j in range(n))] for i in range(n)]
            table(["cosine similarity", *(f"{j + 1}" for j in range(n))], rows, widget=self.similarity)
            for i, text in enumerate(result.texts[:n]):  # the whole texts: a row's first cell, a column's header
                self.similarity.item(i, 0).setToolTip(text)  # (a tooltip per cell cost 0.25 s at 300 lines)
                self.similarity.horizontalHeaderItem(i + 1).setToolTip(text)
            self.similarity.setMinimumHeight(min(400, 30 + 30 * n))
            return
        self.similarity.setVisible(False)
        for i, (text, cats) in enumerate(zip(result.texts[:MAX_CHARTS], result.categories)):
            chart = BarChart()
            chart.setObjectName(f"textBars{i}")
            probabilities = all(0.0 <= c.score <= 1.0 for c in cats) and not result.zero_shot
            # Cosines on the same scale (to 1) as probabilities, so that texts compare: scaled to each
            # text's best, a similarity of 0.007 filled the bar
            cosines = result.zero_shot and all(-1.0 <= c.score <= 1.0 for c in cats)
            chart.set_items([(c.label, c.score) for c in cats], maximum=1.0 if probabilities or cosines else None,
                            title=text if probabilities else f"{text}   (cosine similarity to each label)")
            self.results_layout.insertWidget(self.results_layout.count() - 1, chart)


# What one result puts on screen: a similarity table of n texts is n x n cells, filled on the UI thread
# (300 take about 0.45 s on 2 cores, 2000 took 19 s and 2.7 GB); a bar chart per text is a widget each.
MAX_TABLE_TEXTS = 300
MAX_CHARTS = 200
MAX_SEGMENTS = 20  # speech segments listed in words (the waveform marks them all)


def _sample_text() -> str:
    return ("A man is playing a guitar on stage.\nSomeone performs music with a guitar.\n"
            "The stock market fell sharply today.\nThe team won the championship final.")


class AudioTaskView(_TaskView):
    kind = "audio"
    file_title, file_filter, file_suffixes = "Open audio", AUDIO_FILTER, AUDIO_SUFFIXES

    def __init__(self, window) -> None:
        super().__init__(window)
        self.audio_path: Path | None = None
        self.recorded: tuple[np.ndarray, int] | None = None
        self.discard_recording = False
        open_button = QPushButton("Open audio…")
        open_button.clicked.connect(self.choose)
        from ..recorder import Recorder

        self.recorder = Recorder(self)
        self.record_button = QPushButton("Record")
        self.record_button.setObjectName("recordButton")
        self.record_button.setCheckable(True)
        available, why = self.recorder.available()
        self.record_button.setEnabled(available)
        self.record_button.setToolTip("Record from the microphone; press again to stop" if available
                                      else f"Recording is unavailable: {why}")
        self.record_button.toggled.connect(self.toggle_recording)
        self.recorder.finished.connect(self.recorded_audio)
        self.record_note = QLabel("" if available else f"Recording unavailable: {why}")
        self.record_note.setObjectName("recordNote")
        self.record_note.setWordWrap(True)
        self.waveform = Waveform()
        self.waveform.setObjectName("waveform")
        self.bars = BarChart()
        self.summary = QLabel("")
        self.summary.setObjectName("audioSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        controls = QHBoxLayout()
        for w in (open_button, self.record_button, self.run_button, self.cancel_button):
            controls.addWidget(w)
        controls.addWidget(self.record_note, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.waveform, 2)
        layout.addWidget(self.summary)
        layout.addWidget(self.bars)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def open_file(self, path: Path) -> None:
        self.audio_path, self.recorded = Path(path), None
        self.run()

    def toggle_recording(self, on: bool) -> None:
        if on:
            self.record_button.setText("Stop")
            self.recorder.start()
        else:
            self.record_button.setText("Record")
            self.recorder.stop()

    def recorded_audio(self, samples: np.ndarray, rate: int) -> None:
        self.record_button.blockSignals(True)  # the recorder may have stopped itself (time limit)
        self.record_button.setChecked(False)
        self.record_button.setText("Record")
        self.record_button.blockSignals(False)
        if self.discard_recording:
            self.discard_recording = False
            return
        self.recorded, self.audio_path = (samples, rate), None
        self.run()

    def run(self) -> None:
        if self.recorded is not None:
            (audio, rate), name = self.recorded, "recording"
        elif self.audio_path is not None:
            audio, rate, name = self.audio_path, None, self.audio_path.name
        else:
            self.status.setText("Open or drop a WAV, FLAC or OGG file first.")
            return
        self.submit("Running the audio model",
                    lambda loaded, progress: work.run_audio(loaded, audio, rate, name=name, progress=progress),
                    self.show)

    def show(self, result: work.AudioResult) -> None:
        spans = [(s.start_s, s.end_s) for s in result.segments or []]
        self.waveform.set_waveform(result.envelope, result.duration_s, spans)
        if result.segments is not None:
            # a long recording has hundreds of segments: the label grew past the page, which does not scroll
            found = "; ".join(f"{s.start_s:.2f}–{s.end_s:.2f} s (p {s.score:.2f})"
                              for s in result.segments[:MAX_SEGMENTS])
            if len(result.segments) > MAX_SEGMENTS:
                found += (f"; and {len(result.segments) - MAX_SEGMENTS} more segments, to "
                          f"{result.segments[-1].end_s:.2f} s (all are marked on the waveform)")
            self.summary.setText(f"{result.audio}, {result.duration_s:.2f} s: " +
                                 (f"speech at {found}" if result.segments else "no speech found"))
            self.bars.set_items([])
        else:
            self.summary.setText(f"{result.audio}, {result.duration_s:.2f} s")
            self.bars.set_items([(c.label, c.score) for c in result.categories or []], maximum=1.0)

    def model_changed(self, loaded) -> None:
        super().model_changed(loaded)
        if self.record_button.isChecked():
            self.discard_recording = True  # it was for the previous model
            self.record_button.setChecked(False)  # stops the recording
        self.clear_results()

    def clear_results(self) -> None:
        self.waveform.set_waveform(None, 0.0)
        self.summary.setText("")
        self.bars.set_items([])
        self.waveform.set_waveform(None, 0)


class GenericTaskView(_TaskView):
    """Models without a known task: inputs from .npy files (synthetic where none is chosen)."""

    kind = "generic"

    def __init__(self, window) -> None:
        super().__init__(window)
        self.files: dict[str, str | None] = {}
        self.specs: dict[str, tuple] = {}  # the shown model's inputs: name -> (shape, dynamic dims None; dtype; layout)
        self.inputs = QTableWidget()
        self.inputs.setObjectName("genericInputs")
        self.outputs = QTableWidget()
        self.outputs.setObjectName("genericOutputs")
        self.note = note = QLabel("")
        note.setObjectName("genericNote")
        note.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addWidget(QLabel("Inputs"))
        layout.addWidget(self.inputs, 1)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.status, 1)
        layout.addLayout(row)
        layout.addWidget(QLabel("Outputs"))
        layout.addWidget(self.outputs, 2)

    def model_changed(self, loaded) -> None:
        super().model_changed(loaded)
        specs = loaded.model.inputs if loaded is not None else []
        # The files chosen stay for the same model on another device, for inputs it takes alike (an
        # artifact of the package may take another layout: a TFLite file NHWC beside its NCHW ONNX)
        taken = {s.name: (_fixed(s.shape), s.dtype, s.layout) for s in specs}
        same = {n for n, t in taken.items() if t == self.specs.get(n)} if self.switched else set()
        self.files = {name: f for name, f in self.files.items() if name in same}
        self.specs = taken
        why = (f"Its task ({loaded.info.task}) cannot run here: {loaded.task_problem}. It runs on tensors instead"
               if loaded is not None and loaded.task_problem else "This model declares no task")
        self.note.setText(f"{why}: give each input a .npy file (Choose…), or run it on synthetic inputs. Outputs "
                          f"are shown as shape, dtype, statistics and first values.")
        table(["input", "shape", "dtype", "data", ""],
              [[s.name, shape_text(s.shape), str(s.dtype), Path(self.files[s.name]).name
                if self.files.get(s.name) else "synthetic", ""] for s in specs], widget=self.inputs)
        for r, spec in enumerate(specs):
            button = QPushButton("Choose .npy…")
            button.clicked.connect(lambda _=False, n=spec.name, row=r: self.choose(n, row))
            self.inputs.setCellWidget(r, 4, button)
        table(["output", "shape", "dtype", "min", "max", "mean", "std", "first values"], [], widget=self.outputs)

    def clear_results(self) -> None:
        self.outputs.setRowCount(0)

    def choose(self, name: str, row: int) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Data for input {name}", "", "NumPy arrays (*.npy *.npz)")
        if path:
            self.set_file(name, path)

    def accepts_file(self, path: Path) -> bool:
        """A dropped .npy feeds a model of one input; a .npz, every input it names (or the one)."""
        loaded = self.window_.session.loaded
        inputs = loaded.model.inputs if loaded is not None else []
        suffix = path.suffix.lower()
        return bool(inputs) and (suffix == ".npz" or (suffix == ".npy" and len(inputs) == 1))

    def open_file(self, path: Path) -> None:
        for spec in self.window_.session.loaded.model.inputs:
            self.set_file(spec.name, str(path))

    def set_file(self, name: str, path: str) -> None:
        self.files[name] = path
        for r in range(self.inputs.rowCount()):
            if self.inputs.item(r, 0).text() == name:
                self.inputs.item(r, 3).setText(Path(path).name)

    def run(self) -> None:
        files = dict(self.files)
        self.submit("Running the model", lambda loaded, _progress: work.run_generic(loaded, files), self.show)

    def show(self, result: work.GenericResult) -> None:
        rows = [[o.name, shape_text(o.shape), o.dtype, *(_num(o.stats.get(k)) for k in ("min", "max", "mean", "std")),
                 ", ".join(_num(v) for v in o.head) + (" …" if len(o.head) == 8 else "")] for o in result.outputs]
        table(["output", "shape", "dtype", "min", "max", "mean", "std", "first values"], rows, widget=self.outputs)



def _fixed(shape) -> tuple | None:
    """A shape with its dynamic dims alike (one runtime names them, another leaves them None)."""
    return None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


class RunPage(QStackedWidget):
    """Shows the view that fits the loaded model's task."""

    VIEW_OF_TASK = {"image-classification": "image", "text-embedding": "text", "text-classification": "text",
                    "voice-activity-detection": "audio", "audio-classification": "audio"}

    def __init__(self, window) -> None:
        super().__init__()
        self.empty = QLabel("Open a model (File ▸ Open, or one of the samples in the toolbar) to run it here.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.views = {"image": ImageTaskView(window), "text": TextTaskView(window), "audio": AudioTaskView(window),
                      "generic": GenericTaskView(window)}
        self.addWidget(self.empty)
        for v in self.views.values():
            self.addWidget(v)

    @property
    def current(self) -> _TaskView | None:
        w = self.currentWidget()
        return w if isinstance(w, _TaskView) else None

    def model_changed(self, loaded) -> None:
        view = None if loaded is None else self.views[
            self.VIEW_OF_TASK.get(loaded.info.task or "", "generic") if loaded.task else "generic"]
        for other in self.views.values():  # the view that showed the previous model lets it go (and its run)
            if other is not view and other.model_path is not None:
                other.model_changed(None)
        if view is None:
            self.setCurrentWidget(self.empty)
            return
        view.model_changed(loaded)
        self.setCurrentWidget(view)
