"""One way to run work off the UI thread: ``Jobs.submit(fn, ...)``.

    jobs = Jobs()
    job = jobs.submit(lambda job: slow(progress=job.progress), name="benchmark",
                      on_result=show, on_progress=bar.update, on_error=dialog)
    job.cancel()        # the function stops at its next job.check() / job.progress()

``fn(job)`` runs on a worker thread. Result, progress and errors come back on the main
thread through queued Qt signals, so the callbacks may touch widgets (napari's
``create_worker``, Anki's task manager). An exception in ``fn`` is never lost: it goes to
``on_error`` (or, without one, to ``Jobs.failed``, which the main window shows as a dialog).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal, Slot

from edgekit.errors import UsageError

log = logging.getLogger("edgekit.gui")


class Cancelled(Exception):
    """Raised inside a job's function when the user cancelled it."""


class _Signals(QObject):
    progress = Signal(int, int, str)
    result = Signal(object)
    error = Signal(object, str)
    finished = Signal(bool)  # True when cancelled


class _Relay(QObject):
    """Lives on the main thread; its slots call the job's callbacks there."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job

    @Slot(int, int, str)
    def progress(self, done: int, total: int, text: str) -> None:
        if self.job.on_progress and not self.job.owner.closed:
            self.job.on_progress(done, total, text)

    @Slot(object)
    def result(self, value) -> None:
        if self.job.owner.closed:  # the window went: nothing to show it in (a model opened late is closed)
            close = getattr(value, "close", None)
            if callable(close):
                close()
            return
        if self.job.on_result:
            self.job.on_result(value)

    @Slot(object, str)
    def error(self, exc, details: str) -> None:
        self.job.error = exc
        if self.job.owner.closed:
            log.info("%s failed after the window closed: %s", self.job.name, exc)
            return
        if self.job.on_error:
            self.job.on_error(exc, details)
        else:
            self.job.owner.failed.emit(self.job.name, exc, details)

    @Slot(bool)
    def finished(self, cancelled: bool) -> None:
        self.job.owner._finished(self.job)
        if self.job.on_finished:
            self.job.on_finished(cancelled)


class Job:
    """A function running on the pool; ``cancel()`` asks it to stop.

    The pool is given ``job.run`` (a callable), not the job itself as a QRunnable: a runnable the
    pool must not delete is kept by PySide for the life of the pool, and every finished job held
    its function and callbacks, and with them the models they refer to (a closed model per open).
    """

    def __init__(self, owner: Jobs, fn: Callable[[Job], object], name: str) -> None:
        self.owner, self.fn, self.name = owner, fn, name
        self.on_result = self.on_error = self.on_progress = self.on_finished = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self.signals = _Signals()
        self._relay = _Relay(self)
        self.signals.progress.connect(self._relay.progress)
        self.signals.result.connect(self._relay.result)
        self.signals.error.connect(self._relay.error)
        self.signals.finished.connect(self._relay.finished)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user cancelled (call it between steps)."""
        if self._cancel.is_set():
            raise Cancelled(self.name)

    def progress(self, done: int, total: int, text: str = "") -> None:
        """Report progress (from the worker thread); also a cancellation point."""
        self.check()
        self.signals.progress.emit(int(done), int(total), str(text))

    def report(self, done: int, total: int, text: str = "") -> None:
        """Report progress without the cancellation check (for work that stops on its own terms)."""
        self.signals.progress.emit(int(done), int(total), str(text))

    def run(self) -> None:  # on the worker thread
        cancelled = False
        try:
            self.check()  # cancelled while queued (the window is closing)
            value = self.fn(self)
            if value is None and self.cancelled:  # stopped early with nothing to show
                raise Cancelled(self.name)
            self.signals.result.emit(value)  # a result, even one that came in just as Cancel was pressed
        except Cancelled:
            cancelled = True
        except BaseException as e:  # noqa: BLE001 - every failure must reach the user, not kill the thread
            log.warning("%s failed: %s", self.name, e)
            # the caller's mistakes (a missing file, empty text) need no traceback: the message says it all
            details = getattr(e, "details", None) or (str(getattr(e, "selection", "") or "") if isinstance(
                e, UsageError) else "".join(traceback.format_exception(e)))
            self.signals.error.emit(e, details)
        finally:
            self.done.set()
            self.signals.finished.emit(cancelled)


class Jobs(QObject):
    """The app's background jobs, on one thread pool."""

    busy_changed = Signal(bool)
    failed = Signal(str, object, str)  # job name, exception, details: for jobs without on_error

    def __init__(self, max_threads: int = 4) -> None:  # a benchmark and a conversion leave room to open and run
        super().__init__()
        self.pool = QThreadPool()
        self.pool.setMaxThreadCount(max_threads)
        self.running: list[Job] = []
        self.closed = False  # after close(): results, progress and errors are dropped

    def submit(self, fn: Callable[[Job], object], *, name: str, on_result=None, on_error=None,
               on_progress=None, on_finished=None) -> Job:
        """Run ``fn(job)`` in the background; the callbacks run on the main thread."""
        job = Job(self, fn, name)
        job.on_result, job.on_error, job.on_progress, job.on_finished = on_result, on_error, on_progress, on_finished
        self.running.append(job)
        if len(self.running) == 1:
            self.busy_changed.emit(True)
        self.pool.start(job.run)
        return job

    def _finished(self, job: Job) -> None:
        # Called from the job's own relay slot: drop our reference only after that slot has
        # returned, or the relay would be deleted while Qt is still delivering to it.
        QTimer.singleShot(0, lambda: self._forget(job))

    def _forget(self, job: Job) -> None:
        if job in self.running:
            self.running.remove(job)
            if not self.running:
                self.busy_changed.emit(False)

    def cancel_all(self) -> None:
        self.pool.clear()  # drop jobs that have not started
        for job in list(self.running):
            job.cancel()

    def close(self) -> None:
        """Cancel everything, and drop what jobs still deliver (the window is closing)."""
        self.closed = True
        self.cancel_all()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until every job's function has returned (used when closing the app)."""
        return self.pool.waitForDone(msecs)
