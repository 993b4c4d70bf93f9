"""The one exception hierarchy of edgekit.

Every error edgekit raises on purpose is an :class:`EdgekitError`. Lower-layer
errors (a runtime's own exceptions) are translated at the boundary and kept as
``__cause__``. The CLI maps :class:`UsageError` subclasses to exit code 2 and
everything else to exit code 1.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""


class UsageError(EdgekitError):
    """The caller asked for something that cannot be done as asked (CLI exit 2)."""


class ModelFileError(UsageError):
    """A model file or package is missing, unreadable, corrupt or of an unknown kind."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # pickled as made, so that it crosses from a worker process (bench's)
        return type(self), (self.path, self.problem), self.__dict__  # notes and attributes too


class InputError(UsageError, ValueError):
    """An input given to a model (or a task) does not match what it expects."""


class DeviceNotAvailableError(UsageError):
    """An explicitly requested backend or device does not exist or cannot read the model."""


class BackendError(EdgekitError):
    """A runtime failed to open or run a model (CLI exit 1)."""


class NoCandidateError(BackendError):
    """Every (backend, device) candidate failed; ``selection`` holds what each did."""

    def __init__(self, message: str, selection: object = None) -> None:
        self.selection = selection
        super().__init__(message)
