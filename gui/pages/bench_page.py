"""The Benchmark page: tick artifacts x devices, run N iterations in the background (progress,
cancel), see p50/p90/p99 and throughput as a chart and a table, export CSV."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from .. import work
from ..widgets import BarChart, table


class BenchPage(QWidget):
    def __init__(self, window) -> None:
        super().__init__()
        self.window_ = window
        self.rows: list[work.BenchRow] = []
        self.rows_model: Path | str = ""  # what the rows measured
        self.job = None
        self.candidates = QListWidget()
        self.candidates.setObjectName("benchCandidates")
        self.iterations = QSpinBox(minimum=3, maximum=100_000, value=50)
        self.iterations.setSuffix(" iterations")
        self.run_button = QPushButton("Run benchmark")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        self.progress = QProgressBar()
        self.progress.setObjectName("benchProgress")
        self.step = QLabel("")
        self.step.setWordWrap(True)
        self.chart = BarChart(value_format="{:.2f} ms")
        self.chart.setObjectName("benchChart")
        self.throughput = BarChart(value_format="{:.0f} /s")
        self.results = QTableWidget()
        self.results.setObjectName("benchTable")

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.addWidget(QLabel("Artifacts and devices to compare (synthetic inputs, batch 1):"))
        ll.addWidget(self.candidates, 1)
        row = QHBoxLayout()
        for w in (self.iterations, self.run_button, self.cancel_button):
            row.addWidget(w)
        ll.addLayout(row)
        ll.addWidget(self.progress)
        ll.addWidget(self.step)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.addWidget(self.chart)
        rl.addWidget(self.throughput)
        rl.addWidget(self.results, 1)
        exp = QHBoxLayout()
        exp.addStretch(1)
        exp.addWidget(self.export_button)
        rl.addLayout(exp)
        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(split)

    def model_changed(self, loaded) -> None:
        """Another model: a benchmark of the old one stops, and its results leave the page."""
        self.candidates.clear()
        if self.job is not None:
            self.job.cancel()
        self.rows, self.rows_model = [], ""
        self.chart.set_items([])
        self.throughput.set_items([])
        self.results.setRowCount(0)
        self.export_button.setEnabled(False)
        self.step.setText("")

    def find_candidates(self, loaded) -> None:
        """List what can run the model (in a job: it verifies a package's checksums)."""
        self.step.setText("finding what can run this model…")
        running = f"{loaded.model.path.name} on {loaded.where}"

        def fill(found) -> None:
            cands, problems = found
            now = self.window_.session.loaded
            if now is None or now.info.path != loaded.info.path:  # another model since (a device switch is not)
                return
            self.candidates.clear()
            for cand in cands:
                item = QListWidgetItem(cand.label)
                item.setData(Qt.ItemDataRole.UserRole, cand)
                item.setCheckState(Qt.CheckState.Checked if cand.label == running else Qt.CheckState.Unchecked)
                self.candidates.addItem(item)
            self.step.setText(f"{len(cands)} artifact/device pairs can run this model" +
                              "".join(f"\nleft out: {p}" for p in problems))

        self.window_.jobs.submit(lambda job: work.candidates(loaded.info.path), name="Listing devices",
                                 on_result=fill,
                                 on_error=lambda e, d: self.window_.show_exception("Cannot list devices", e, d))

    def chosen(self) -> list[work.Candidate]:
        return [self.candidates.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.candidates.count())
                if self.candidates.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, labels) -> None:
        for i in range(self.candidates.count()):
            item = self.candidates.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in labels else Qt.CheckState.Unchecked)

    def start(self) -> None:
        chosen, n = self.chosen(), self.iterations.value()
        if not chosen:
            self.step.setText("Tick at least one artifact/device.")
            return
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.step.setText("starting…")

        def finished(cancelled: bool) -> None:
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.job = None
            if cancelled:
                self.step.setText("cancelled")

        measured = self.window_.session.loaded.info.path

        def show(rows) -> None:
            now = self.window_.session.loaded
            if now is not None and now.info.path == measured:  # else they belong to a model no longer open
                self.show(rows, measured)

        self.job = self.window_.jobs.submit(
            lambda job: work.benchmark(chosen, iterations=n, progress=job.progress), name="Benchmark",
            on_result=show, on_progress=self.on_progress, on_finished=finished,
            on_error=lambda e, d: self.window_.show_exception("Benchmark failed", e, d))

    def on_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(done)
        self.step.setText(text)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.step.setText("cancelling…")

    def show(self, rows: list[work.BenchRow], model: Path | str = "") -> None:
        self.rows, self.rows_model = rows, model
        ok = [r for r in rows if r.status == "ok"]
        self.chart.set_items([(r.label, r.p50_ms) for r in ok], whiskers=[(r.p90_ms, r.p99_ms) for r in ok],
                             title="Latency: p50 bar, p90 and p99 ticks (lower is better)")
        self.throughput.set_items([(r.label, r.throughput) for r in ok], title="Throughput at batch 1")
        body = [[r.artifact, r.device, r.status, *(round(v, 3) if v is not None else "-" for v in
                                                    (r.p50_ms, r.p90_ms, r.p99_ms)),
                 round(r.throughput, 1) if r.throughput else "-", r.inputs or "-", r.reason] for r in rows]
        table(["artifact", "device", "status", "p50 ms", "p90 ms", "p99 ms", "runs/s", "timed at", "reason"], body,
              widget=self.results)
        self.export_button.setEnabled(bool(rows))
        stopped = any(r.status == "cancelled" for r in rows)
        self.step.setText(f"cancelled: {len(ok)} measured before" if stopped else f"{len(ok)} of {len(rows)} measured")

    def export(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export benchmark", "benchmark.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            work.write_atomic(path, work.bench_csv(self.rows, self.rows_model))
        except OSError as e:
            self.window_.show_exception("Export failed", e)
            return
        self.step.setText(f"exported {path}")
