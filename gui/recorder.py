"""Microphone recording with QtMultimedia, when it and an input device exist.

``Recorder.available()`` says whether recording can work and, if not, why (QtMultimedia
missing, e.g. without Debian's libpulse0, or no input device); the Record button shows it.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

MAX_SECONDS = 60  # a forgotten recording stops itself


class Recorder(QObject):
    """Records mono 16-bit audio from the default input; ``finished(samples, rate)`` on stop."""

    finished = Signal(object, int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._source = self._device = self._io = None
        self._chunks: list[bytes] = []
        self._rate = 16000

    def available(self) -> tuple[bool, str]:
        try:
            from PySide6.QtMultimedia import QMediaDevices
        except ImportError as e:
            return False, (f"Qt's multimedia module cannot be loaded ({e}); on Debian or Ubuntu, "
                           f"`apt install libpulse0` usually provides what it needs")
        device = QMediaDevices.defaultAudioInput()
        if device.isNull():
            return False, "no audio input device was found"
        return True, ""

    def start(self) -> None:
        from PySide6.QtMultimedia import QAudioFormat, QAudioSource, QMediaDevices

        device = QMediaDevices.defaultAudioInput()
        fmt = QAudioFormat()
        fmt.setSampleRate(16000)
        fmt.setChannelCount(1)
        fmt.setSampleFormat(QAudioFormat.SampleFormat.Int16)
        if not device.isFormatSupported(fmt):
            fmt = device.preferredFormat()
        self._rate, self._format, self._chunks = fmt.sampleRate(), fmt, []
        self._source = QAudioSource(device, fmt, self)
        self._io = self._source.start()
        self._io.readyRead.connect(self._read)

    def _read(self) -> None:
        self._chunks.append(bytes(self._io.readAll().data()))
        limit = MAX_SECONDS * self._rate * self._format.bytesPerFrame()
        if sum(map(len, self._chunks)) > limit:
            self.stop()

    def stop(self) -> None:
        from PySide6.QtMultimedia import QAudioFormat

        if self._source is None:
            return
        self._read()
        self._source.stop()
        self._source = None
        raw = b"".join(self._chunks)
        fmt = self._format
        dtype = {QAudioFormat.SampleFormat.Int16: np.int16, QAudioFormat.SampleFormat.Int32: np.int32,
                 QAudioFormat.SampleFormat.Float: np.float32, QAudioFormat.SampleFormat.UInt8: np.uint8}[
            fmt.sampleFormat()]
        usable = len(raw) - len(raw) % (np.dtype(dtype).itemsize * fmt.channelCount())
        x = np.frombuffer(raw[:usable], dtype=dtype).reshape(-1, fmt.channelCount())
        if dtype is np.uint8:
            x = (x.astype(np.float32) - 128) / 128
        elif dtype is not np.float32:
            x = x.astype(np.float32) / np.iinfo(dtype).max
        self.finished.emit(np.ascontiguousarray(x.T if x.shape[1] > 1 else x[:, 0]), self._rate)
