"""Entry point of ``edgekit-gui`` and ``python -m gui``.

    edgekit-gui                      # an empty window; the samples are one click away
    edgekit-gui model.onnx           # open a model file or a package folder at start
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekit-gui", description="edgekit desktop app")
    parser.add_argument("model", nargs="?", help="a .onnx / .xml / .tflite file or a package folder to open")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("edgekit")
    app.setOrganizationName("edgekit")
    window = create_window(args.model)  # noqa: F841 - kept alive while the app runs
    return app.exec()


def create_window(model: str | None = None, **options):
    """The shown main window, with the exception hooks installed and ``model`` opening."""
    from .main_window import MainWindow

    window = MainWindow(**options)
    install_excepthooks(window)
    window.show()
    if model:
        window.open_path(Path(model))
    return window


def install_excepthooks(window) -> None:
    """An exception that escapes a slot, or any thread, becomes a dialog, not a crash."""
    log = logging.getLogger("edgekit.gui")

    def on_main_thread(exc_type, exc, tb) -> None:
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("unexpected error\n%s", details)
        window.show_exception("Unexpected error", exc, details)

    def on_other_thread(hook) -> None:
        details = "".join(traceback.format_exception(hook.exc_type, hook.exc_value, hook.exc_traceback))
        log.error("unexpected error in a thread\n%s", details)
        window.error_from_thread.emit("Unexpected error", hook.exc_value, details)  # queued to the UI thread

    sys.excepthook = on_main_thread
    threading.excepthook = on_other_thread


if __name__ == "__main__":
    raise SystemExit(main())
