"""The error dialog (message, details to copy) and the About box (versions, diagnostics)."""

from __future__ import annotations

import json
import platform

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)


def error_message(exc: BaseException) -> str:
    """What the user reads: edgekit's own errors already name the file or input and the problem.

    A model no device could open says so and what each failure was, in a line each: the whole
    selection record (every candidate this build lacks, the policy in Python's words) goes to the
    details, where it buried the failures at the bottom of a dialog 630 pixels tall."""
    from edgekit.errors import DeviceNotAvailableError, EdgekitError, NoCandidateError

    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, NoCandidateError) and exc.selection is not None:
        failed = [f"• {a.spec}{f' [{a.artifact}]' if a.artifact else ''}: {a.reason}"
                  for a in exc.selection.attempts if a.status == "failed"]
        if failed:
            return "\n".join([f"{text.splitlines()[0].split(': no candidate')[0]}: no device could run it.",
                              *failed[:6], *([f"and {len(failed) - 6} more (see details)"] if len(failed) > 6 else [])])
    if isinstance(exc, DeviceNotAvailableError):
        return f"{text}\n\nChoose another device in the Device box: auto takes one that can run it."
    return text if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {text}"


def show_error(parent, title: str, message: str, details: str = "") -> ErrorDialog:
    """Show an error without blocking the caller: in ``parent``'s error dialog when one is open
    (at most one at a time; several window-modal boxes stacked up, each hiding the one before),
    else in a new one."""
    box = next((b for b in parent.findChildren(ErrorDialog) if b.isVisible()), None)
    if box is None:
        box = ErrorDialog(parent, title, message, details)
        box.open()
    else:
        box.add(title, message, details)
    return box


class ErrorDialog(QMessageBox):
    """A window-modal error box; "Copy details" copies everything.

    Errors that come while it is open are added to it: its message stays the first one (often
    the cause of the rest), a line counts the others, and the details hold each one in full.
    """

    def __init__(self, parent, title: str, message: str, details: str = "") -> None:
        super().__init__(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Close, parent)
        self.setObjectName("errorDialog")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # each error makes one: closed, it goes
        self.errors = [(title, message, details)]
        if details:
            self.setDetailedText(details)
        copy = self.addButton("Copy details", QMessageBox.ButtonRole.ActionRole)
        copy.clicked.disconnect()  # an action button would close the box; copying should not
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.everything()))

    def add(self, title: str, message: str, details: str = "") -> None:
        """Another error, shown in this box."""
        self.errors.append((title, message, details))
        more = len(self.errors) - 1
        self.setInformativeText(f"{more} more error{'s' if more > 1 else ''} came after this one: "
                                "Show Details… lists every one.")
        self.setDetailedText(self.everything())

    def everything(self) -> str:
        """Each error's title, message and details, in the order they came."""
        return "\n\n\n".join(f"{title}\n{message}\n\n{details}".strip() for title, message, details in self.errors)


def versions() -> dict:
    import PySide6
    from PySide6.QtCore import qVersion

    import edgekit
    from edgekit.devices import runtime_versions

    return {"edgekit": edgekit.__version__, "Qt": qVersion(), "PySide6": PySide6.__version__,
            "Python": platform.python_version(), **runtime_versions()}


class AboutDialog(QDialog):
    """Versions of edgekit, Qt and each runtime; "Copy diagnostics" copies `edgekit devices --json`."""

    def __init__(self, parent=None) -> None:
        from edgekit.devices import diagnostics

        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About edgekit")
        self.diagnostics = json.dumps(diagnostics(), indent=2)
        layout = QVBoxLayout(self)
        title = QLabel("<h2>edgekit</h2><p>Run machine-learning models on the device in front of you: "
                       "ONNX Runtime, OpenVINO and LiteRT behind one API.</p>")
        title.setWordWrap(True)
        layout.addWidget(title)
        rows = "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in versions().items())
        self.versions_label = QLabel(f"<table>{rows}</table>")
        self.versions_label.setWordWrap(True)
        layout.addWidget(self.versions_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy diagnostics")
        self.copy_button.setToolTip("Copies the output of `edgekit devices --json`")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.diagnostics)
