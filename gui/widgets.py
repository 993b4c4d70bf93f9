"""Small drawing widgets: labelled bars, a waveform with segments, a picture, a read-only table.

They paint with the palette's roles (text, highlight, mid), so they read in light and dark
themes, and size their text from the widget font, so they scale on high-DPI screens.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)


class BarChart(QWidget):
    """Horizontal bars, one per (label, value), each with its value written beside it.

    ``maximum`` fixes the scale (1.0 for probabilities); by default the largest value fills it.
    """

    def __init__(self, parent=None, *, value_format: str = "{:.3f}") -> None:
        super().__init__(parent)
        self.items: list[tuple[str, float]] = []
        self.whiskers: list[tuple[float, ...]] = []
        self.maximum: float | None = None
        self.value_format = value_format
        self.title = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def set_items(self, items: Sequence[tuple[str, float]], *, maximum: float | None = None, title: str = "",
                  whiskers: Sequence[tuple[float, ...]] = ()) -> None:
        """``whiskers``: per item, further values (e.g. p90, p99) drawn as a line with ticks past the bar."""
        self.items, self.maximum, self.title = [(str(k), float(v)) for k, v in items], maximum, title
        self.whiskers = [tuple(float(x) for x in w) for w in whiskers]
        self.updateGeometry()
        self.update()

    def _row_height(self) -> int:
        return int(self.fontMetrics().height() * 1.7)

    def sizeHint(self) -> QSize:
        rows = len(self.items) + (1 if self.title else 0)
        return QSize(420, max(1, rows) * self._row_height() + 8)

    def minimumSizeHint(self) -> QSize:
        return QSize(200, self.sizeHint().height())

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fm = self.fontMetrics()
        row = self._row_height()
        y = 4
        if self.title:
            p.setPen(pal.color(QPalette.ColorRole.WindowText))
            p.drawText(QRectF(4, y, self.width() - 8, row), Qt.AlignmentFlag.AlignVCenter, self.title)
            y += row
        if not self.items:
            return
        label_w = min(max(fm.horizontalAdvance(k) for k, _ in self.items) + 12, self.width() * 0.45)
        value_w = max(fm.horizontalAdvance(self.value_format.format(v)) for _, v in self.items) + 12
        bar_w = max(10.0, self.width() - label_w - value_w - 8)
        top = self.maximum or max([v for _, v in self.items] + [x for w in self.whiskers for x in w]) or 1.0
        bar_color = pal.color(QPalette.ColorRole.Highlight)
        track = pal.color(QPalette.ColorRole.Mid)
        track.setAlpha(60)
        for i, (label, value) in enumerate(self.items):
            p.setPen(pal.color(QPalette.ColorRole.WindowText))
            text = fm.elidedText(label, Qt.TextElideMode.ElideRight, int(label_w - 8))
            right = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight
            p.drawText(QRectF(4, y, label_w - 8, row), right, text)
            bar = QRectF(label_w, y + row * 0.2, bar_w, row * 0.6)
            p.fillRect(bar, track)
            frac = max(0.0, min(1.0, value / top))
            p.fillRect(QRectF(bar.left(), bar.top(), bar_w * frac, bar.height()), bar_color)
            marks = self.whiskers[i] if len(self.whiskers) == len(self.items) else ()
            if marks:
                p.setPen(pal.color(QPalette.ColorRole.WindowText))
                mid = bar.center().y()
                xs = [bar.left() + bar_w * max(0.0, min(1.0, m / top)) for m in marks]
                p.drawLine(QPointF(bar.left() + bar_w * frac, mid), QPointF(xs[-1], mid))
                for x in xs:
                    p.drawLine(QPointF(x, bar.top()), QPointF(x, bar.bottom()))
            p.drawText(QRectF(label_w + bar_w + 6, y, value_w, row), Qt.AlignmentFlag.AlignVCenter,
                       self.value_format.format(value))
            y += row
        p.end()


class Waveform(QWidget):
    """A waveform (min/max envelope) with shaded spans, e.g. detected speech."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.envelope = None
        self.duration_s = 0.0
        self.spans: list[tuple[float, float]] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_waveform(self, envelope, duration_s: float, spans: Sequence[tuple[float, float]] = ()) -> None:
        self.envelope, self.duration_s, self.spans = envelope, float(duration_s), list(spans)
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(600, 160)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        pal = self.palette()
        w, h = self.width(), self.height()
        axis_h = self.fontMetrics().height() + 4
        plot_h = h - axis_h
        p.fillRect(0, 0, w, plot_h, pal.color(QPalette.ColorRole.Base))
        if self.envelope is None or not len(self.envelope) or self.duration_s <= 0:
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(QRectF(0, 0, w, plot_h), Qt.AlignmentFlag.AlignCenter, "open an audio file")
            p.end()
            return
        shade = QColor(pal.color(QPalette.ColorRole.Highlight))
        shade.setAlpha(70)
        for start, end in self.spans:
            x0, x1 = start / self.duration_s * w, end / self.duration_s * w
            p.fillRect(QRectF(x0, 0, max(1.0, x1 - x0), plot_h), shade)
        p.setPen(pal.color(QPalette.ColorRole.Text))
        mid, half = plot_h / 2, plot_h / 2 - 4
        n = len(self.envelope)
        peak = max(1e-6, float(abs(self.envelope).max()))
        for x in range(w):
            lo, hi = self.envelope[min(n - 1, int(x / w * n))]
            p.drawLine(x, int(mid - hi / peak * half), x, int(mid - lo / peak * half))
        p.setPen(pal.color(QPalette.ColorRole.WindowText))
        step = _tick_step(self.duration_s)
        t = 0.0
        while t <= self.duration_s + 1e-9:
            x = t / self.duration_s * w
            p.drawLine(int(x), plot_h, int(x), plot_h + 3)
            p.drawText(QRectF(x + 2, plot_h, 60, axis_h), Qt.AlignmentFlag.AlignVCenter, f"{t:g} s")
            t += step
        p.end()


def _tick_step(duration: float) -> float:
    for step in (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300):
        if duration / step <= 10:
            return step
    return 600.0


# Pictures are decoded at most this many pixels a side: a screen shows no more, and libjpeg then
# decodes a 48 MP photo at a fraction of its size (768 ms when decoded whole).
LARGEST_PICTURE = 2048


def decode_picture(path, largest: int = LARGEST_PICTURE):
    """``path`` as a QImage at most ``largest`` pixels a side, turned as its EXIF orientation says
    (as the model sees it); a null QImage where Qt cannot decode it. Safe off the UI thread."""
    from PySide6.QtGui import QImageReader

    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and max(size.width(), size.height()) > largest:
        reader.setScaledSize(size.scaled(largest, largest, Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    # Qt refuses pictures over its 256 MB allocation limit (a 9000x9000 PNG decodes whole before it
    # is scaled) and formats it has no plugin for: the model's own decoder shows them.
    return image if not image.isNull() else _pillow_picture(path, largest)


def _pillow_picture(path, largest: int):
    from PySide6.QtGui import QImage

    from edgekit.tasks.image import load_image

    try:
        pic = load_image(path, min_size=largest)  # what the model sees: EXIF turned, RGB, bombs refused
        pic.thumbnail((largest, largest))
    except Exception:  # noqa: BLE001 - nothing to show; the run reports the file's problem
        return QImage()
    data = pic.tobytes()
    return QImage(data, pic.width, pic.height, 3 * pic.width, QImage.Format.Format_RGB888).copy()  # owns its pixels


class Picture(QLabel):
    """A picture scaled to fit, keeping its aspect ratio."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._wanted = 0  # the latest load(): an earlier decode that ends later is dropped
        self.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.setMinimumSize(200, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setText("Open or drop a picture")

    def load(self, path, jobs) -> None:
        """Decode ``path`` on a background job and show it when done: a 48 MP JPEG still took 390 ms
        decoded small, and the window froze for it. The picture shown until then is kept."""
        self._wanted += 1
        wanted = self._wanted

        def decoded(image) -> None:
            if wanted == self._wanted:
                self.set_image(image)

        def decode(job):  # one opened meanwhile makes this one moot before it starts
            return decode_picture(path) if wanted == self._wanted else None

        jobs.submit(decode, name="Opening the picture", on_result=decoded,
                    on_error=lambda exc, details: decoded(None))  # Qt may not decode what PIL does

    def set_image(self, image) -> bool:
        """Show a decoded QImage (None or a null one: no picture)."""
        self._pixmap = None if image is None or image.isNull() else QPixmap.fromImage(image)
        self._rescale()
        return self._pixmap is not None

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is None:
            self.setPixmap(QPixmap())
            return
        self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                           Qt.TransformationMode.SmoothTransformation))


class _RightAligned(QStyledItemDelegate):
    """Draws a column's text right-aligned: one delegate per column of numbers costs nothing per
    cell, where setTextAlignment on each of 90,000 items doubled the time to fill a table."""

    def initStyleOption(self, option, index) -> None:
        super().initStyleOption(option, index)
        option.displayAlignment = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def table(headers: Sequence[str], rows: Sequence[Sequence], parent=None, *, widget: QTableWidget | None = None,
          sample_rows: int = 50) -> QTableWidget:
    """A read-only table filled with ``rows`` (strings or numbers; numbers align right).

    Filling costs the same the first time and every time after: the header is left in Interactive
    mode (the person can drag the columns), not ResizeToContents, which re-measures the columns on
    every change (refilling a 300 x 301 table froze the window 17 s). Columns are sized once, from the
    header and ``sample_rows`` rows spread over the table, at most about 60 characters wide; the
    last column stretches to the table's edge. A column of numbers is right-aligned by a delegate,
    so its items' own textAlignment() stays the default.
    """
    t = widget or QTableWidget(parent)
    header = t.horizontalHeader()
    updates, signals, sorting = t.updatesEnabled(), t.signalsBlocked(), t.isSortingEnabled()
    t.setUpdatesEnabled(False)
    t.blockSignals(True)  # no itemChanged per cell (the model's own signals keep the view consistent)
    t.setSortingEnabled(False)  # sorting would move each row as it is set
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    header.setStretchLastSection(False)
    try:
        t.clearContents()
        t.setRowCount(len(rows))
        t.setColumnCount(len(headers))
        t.setHorizontalHeaderLabels([str(h) for h in headers])
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.verticalHeader().setVisible(False)
        numbers = (int, float)
        numeric = [bool(rows) and all(isinstance(row[c], numbers) for row in rows if c < len(row))
                   for c in range(len(headers))]
        delegate = t.findChild(_RightAligned) or _RightAligned(t)
        for c, in_numbers in enumerate(numeric):  # every column: the last fill's may have been numbers
            t.setItemDelegateForColumn(c, delegate if in_numbers else None)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        set_item, new_item = t.setItem, QTableWidgetItem  # bound once: 90,000 cells make each lookup count
        for r, row in enumerate(rows):
            for c, (in_numbers, value) in enumerate(zip(numeric, row)):  # cells past the headers: none
                item = new_item("" if value is None else str(value))
                if not in_numbers and isinstance(value, numbers):  # a number among words ("-")
                    item.setTextAlignment(right)
                set_item(r, c, item)
        _size_columns(t, headers, rows, sample_rows)
        header.setStretchLastSection(True)
    finally:
        t.blockSignals(signals)
        t.setSortingEnabled(sorting)
        t.setUpdatesEnabled(updates)
    return t


def _size_columns(t: QTableWidget, headers: Sequence[str], rows: Sequence[Sequence], sample: int) -> None:
    """Each column as wide as its header and its widest cell among ``sample`` rows spread over the
    table, as the delegate measures it (what ResizeToContents would give for those rows), and at
    most about 60 characters: measuring every cell (resizeColumnsToContents) costs as much as filling
    the table again."""
    if not headers:
        return
    header, model = t.horizontalHeader(), t.model()
    option = QStyleOptionViewItem()
    option.initFrom(t.viewport())
    widest = t.fontMetrics().averageCharWidth() * 60
    grid = 1 if t.showGrid() else 0
    picked = range(0, len(rows), max(1, len(rows) // max(1, sample)))[:sample]
    advance = t.fontMetrics().horizontalAdvance
    for c in range(len(headers)):
        # Proportional fonts: the widest texts as drawn, not the longest ("model-fp32.onnx" is wider than
        # "model-int8.tflite"); the delegate then measures a few of them, with its margins
        texts = [(advance(str(rows[r][c])), r) for r in picked if c < len(rows[r]) and rows[r][c] is not None]
        delegate = t.itemDelegateForColumn(c) or t.itemDelegate()
        cells = max((delegate.sizeHint(option, model.index(r, c)).width() + grid
                     for _, r in sorted(texts)[-3:]), default=0)
        header.resizeSection(c, min(widest, max(header.sectionSizeHint(c), cells)))
