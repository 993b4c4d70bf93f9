"""The Model page: what is open (format, size, task, labels, inputs and outputs, a package's
artifacts with their precision and parity) and what runs it, in words."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QLabel,
    QPlainTextEdit,
    QScrollArea,
    QTableWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from edgekit.types import shape_text

from ..state import selection_in_words
from ..widgets import table


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"



class ModelPage(QScrollArea):
    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        body = QWidget()
        layout = QVBoxLayout(body)
        self.empty = QLabel("No model is open. Use File ▸ Open (Ctrl+O), drop a model or package on the "
                            "window, or click one of the samples in the toolbar.")
        self.empty.setWordWrap(True)
        layout.addWidget(self.empty)

        self.facts_box = QGroupBox("Model")
        self.facts = QFormLayout(self.facts_box)
        layout.addWidget(self.facts_box)

        self.running_box = QGroupBox("Running on")
        rl = QVBoxLayout(self.running_box)
        self.running = QLabel()
        self.running.setObjectName("selectionText")
        self.running.setWordWrap(True)
        self.running.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl.addWidget(self.running)
        self.record_toggle = QToolButton()
        self.record_toggle.setText("Show all candidates")
        self.record_toggle.setCheckable(True)
        self.record = QPlainTextEdit()
        self.record.setObjectName("selectionRecord")
        self.record.setReadOnly(True)
        self.record.setVisible(False)
        self.record.setMinimumHeight(160)
        self.record_toggle.toggled.connect(self.record.setVisible)
        self.record_toggle.toggled.connect(
            lambda on: self.record_toggle.setText("Hide the candidates" if on else "Show all candidates"))
        rl.addWidget(self.record_toggle)
        rl.addWidget(self.record)
        layout.addWidget(self.running_box)

        self.io_box = QGroupBox("Inputs and outputs")
        il = QVBoxLayout(self.io_box)
        self.io = QTableWidget()
        self.io.setObjectName("ioTable")
        il.addWidget(self.io)
        layout.addWidget(self.io_box)

        self.artifacts_box = QGroupBox("Artifacts in this package")
        al = QVBoxLayout(self.artifacts_box)
        self.artifacts = QTableWidget()
        self.artifacts.setObjectName("artifactsTable")
        al.addWidget(self.artifacts)
        layout.addWidget(self.artifacts_box)
        layout.addStretch(1)
        self.setWidget(body)
        self.show_model(None)

    def show_model(self, loaded) -> None:
        has = loaded is not None
        self.empty.setVisible(not has)
        for box in (self.facts_box, self.running_box, self.io_box):
            box.setVisible(has)
        self.artifacts_box.setVisible(has and loaded.info.is_package)
        if not has:
            return
        info, model = loaded.info, loaded.model
        while self.facts.rowCount():
            self.facts.removeRow(0)
        labels = info.labels or []
        label_text = (f"{len(labels)} classes: " + ", ".join(map(str, labels[:6])) + (", …" if len(labels) > 6 else "")
                      if labels else "-")
        rows = [("Name", info.name), ("Path", str(info.path)),
                ("Kind", "edgekit package" if info.is_package else f"{info.format} file"),
                ("Format", f"{info.format} ({model.path.name})"), ("Size", _size(info.size_bytes)),
                ("Task", info.task or "none declared (generic view)"), ("Labels", label_text)]
        if info.description:
            rows.insert(1, ("Description", info.description))
        for key in ("opsets", "producer", "ir_version"):
            if info.facts.get(key):
                rows.append((key.replace("_", " ").capitalize(), str(info.facts[key])))
        for k, v in rows:
            value = QLabel(v)
            value.setWordWrap(k == "Description")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.facts.addRow(f"{k}:", value)
        words = selection_in_words(model.selection)
        words.append(f"Opened in {loaded.load_ms:.0f} ms.")
        self.running.setText("\n".join(words))
        self.record.setPlainText(str(model.selection))
        io_rows = [[("input" if i < len(model.inputs) else "output"), s.name, shape_text(s.shape), str(s.dtype),
                    s.layout or "-"] for i, s in enumerate([*model.inputs, *model.outputs])]
        table(["", "name", "shape", "dtype", "layout"], io_rows, widget=self.io)
        self.io.setMinimumHeight(min(300, 36 + 28 * len(io_rows)))
        if info.is_package:
            art_rows = [[a["path"], a["format"], a["precision"], a.get("layout") or "-", _size(a.get("size")),
                         f"{a['cosine']:.5f}" if a.get("cosine") is not None else "-",
                         f"{a['p50_ms']:.2f}" if a.get("p50_ms") else "-",
                         a["status"] + (f": {a['reason']}" if a.get("reason") else "") +
                         (" (running)" if a["path"] == model.path.name else "")] for a in info.artifacts]
            table(["artifact", "format", "precision", "layout", "size", "cosine vs source", "p50 ms", "status"],
                  art_rows, widget=self.artifacts)
            self.artifacts.setMinimumHeight(min(420, 36 + 28 * len(art_rows)))
