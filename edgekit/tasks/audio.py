"""Audio: voice activity detection (streaming, with state) and clip classification.

    from edgekit.tasks import VoiceActivityDetector
    vad = VoiceActivityDetector("silero-vad/")
    vad.detect("speech.wav")                 # [Segment(start_s=0.93, end_s=8.6, score=0.91)]
    stream = vad.stream()                    # chunk by chunk, model state carried
    for chunk in chunks: events = stream.feed(chunk)

Audio is a path (WAV / FLAC / OGG via soundfile) or an array with its sample rate; it is
down-mixed to mono and resampled to the model's rate with soxr.
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelFileError, UsageError
from .base import LOAD_OPTIONS, Task, input_file
from .results import Category, ClassifierOptions, Segment, classifier_options, is_integer, is_number

log = logging.getLogger(__name__)

# Silero's get_speech_timestamps defaults (max_speech_duration_s None: no limit, JSON-safe).
VAD_DEFAULTS = {"threshold": 0.5, "min_speech_duration_ms": 250, "min_silence_duration_ms": 100,
                "speech_pad_ms": 30, "max_speech_duration_s": None, "neg_threshold": None}
# What each VAD parameter may be, in words and as a test.
_VAD_RULES = {
    "threshold": ("a probability from 0 to 1", lambda v: is_number(v) and 0 <= v <= 1),
    "neg_threshold": ("None or a probability from 0 to 1", lambda v: v is None or (is_number(v) and 0 <= v <= 1)),
    "min_speech_duration_ms": ("a number of milliseconds, at least 0", lambda v: is_number(v) and v >= 0),
    "min_silence_duration_ms": ("a number of milliseconds, at least 0", lambda v: is_number(v) and v >= 0),
    "speech_pad_ms": ("a number of milliseconds, at least 0", lambda v: is_number(v) and v >= 0),
    "max_speech_duration_s": ("None (no limit) or a number of seconds above 0",
                              lambda v: v is None or v == float("inf") or (is_number(v) and v > 0)),
}
_MAX_CHANNELS = 16  # an array with at most this many rows and more columns is channels x samples
MAX_SAMPLES = 2 ** 26  # samples (all channels) read from one file: 256 MiB of float32, 70 min of 16 kHz mono
# The lowest rate resampled: below it a tiny file declaring, say, 1 Hz would be resampled 16000x
# (a 10 KB WAV took 13 s and 630 MB). Telephone audio is 8 kHz.
MIN_SAMPLE_RATE = 1000


def _warn_if_cut_short(source, what: str, frames: int, sample_rate: int) -> None:
    """Warn when a WAV holds fewer frames than its header declares (a copy or upload cut short):
    libsndfile reads what is there without a word. Headers that declare no size (0, or the
    0xFFFFFFFF of a WAV written as a stream) are not warned of."""
    import struct

    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:4096]
    else:
        with Path(source).open("rb") as f:
            head = f.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos, frame_bytes = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            frame_bytes = struct.unpack_from("<H", head, pos + 20)[0]  # nBlockAlign
        elif chunk == b"data":
            if frame_bytes and 0 < size < 0x7FFFFFFF and size // frame_bytes > frames:
                log.warning("%s: cut short: its header declares %.2f s of audio, the file holds %.2f s",
                            what, size / frame_bytes / sample_rate, frames / sample_rate)
            return
        pos += 8 + size + (size & 1)


def load_audio(audio, sample_rate: int | None = None, *, target_rate: int, name: str | None = None) -> np.ndarray:
    """Mono float32 samples at ``target_rate``.

    Args:
        audio: a path (WAV/FLAC/OGG) or such a file's bytes, or an array (samples, or samples x
            channels) with ``sample_rate``, or a ``(array, sample_rate)`` tuple.

    Raises:
        InputError: unreadable/corrupt file, no samples, non-finite values, missing sample rate.
    """
    what = name or (str(audio) if isinstance(audio, (str, Path)) else "audio")
    if isinstance(audio, tuple) and len(audio) == 2:
        audio, sample_rate = audio
    if isinstance(audio, (str, Path, bytes, bytearray, memoryview)):
        import soundfile as sf

        if isinstance(audio, (str, Path)):
            source = input_file(audio, "audio")
            what = str(source)
        elif len(audio) == 0:
            raise InputError(f"{what}: empty (0 bytes)")
        else:  # an encoded file held in memory (an upload)
            source = io.BytesIO(bytes(audio))
        try:
            with sf.SoundFile(source if isinstance(source, io.BytesIO) else str(source)) as f:
                if f.channels > _MAX_CHANNELS:
                    raise InputError(f"{what}: {f.channels} channels (at most {_MAX_CHANNELS})")
                # Compressed audio can decode to thousands of times its size: read at most the limit.
                limit = MAX_SAMPLES // f.channels
                data = f.read(frames=limit + 1, dtype="float32", always_2d=True)
                sample_rate = f.samplerate
                if f.format == "WAV":
                    _warn_if_cut_short(source, what, len(data), sample_rate)
        except InputError:
            raise
        except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError on odd headers
            # libsndfile's own words, without soundfile's "Error opening <_io.BytesIO object at 0x...>: "
            why = getattr(e, "error_string", None) or str(e)
            raise InputError(f"{what}: cannot be read as audio ({' '.join(why.split()).rstrip('.')})") from e
        if len(data) > limit:
            raise InputError(f"{what}: longer than {limit / sample_rate:.0f} s ({MAX_SAMPLES} samples in all); "
                             f"feed long recordings chunk by chunk with .stream()")
    elif sample_rate is None:
        raise InputError(f"{what}: an array needs its sample rate (sample_rate=...)")
    else:
        data = audio
    data = pcm_frames(data, what)
    if data.shape[0] == 0:
        raise InputError(f"{what}: no samples (0-length audio)")
    if isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer():
        sample_rate = int(sample_rate)  # 16000.0, as a library may give it
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"{what}: invalid sample rate {sample_rate!r}")
    sample_rate = int(sample_rate)  # a NumPy int16 would overflow in the limit check below
    if sample_rate != target_rate and sample_rate < MIN_SAMPLE_RATE:
        raise InputError(f"{what}: a sample rate of {sample_rate} Hz is below {MIN_SAMPLE_RATE} Hz; "
                         f"this is not audio that can be resampled to {target_rate} Hz")
    if len(data) * target_rate > MAX_SAMPLES * sample_rate:  # checked before resampling allocates it
        raise InputError(f"{what}: {len(data)} samples at {sample_rate} Hz would be "
                         f"{len(data) * target_rate // sample_rate} at {target_rate} Hz, "
                         f"over the limit of {MAX_SAMPLES}")
    mono = _mono(data)
    if sample_rate != target_rate:
        import soxr

        mono = soxr.resample(mono, int(sample_rate), int(target_rate), quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def check_vad_params(params: dict, error) -> None:
    """Raise ``error(message)`` naming the first unknown VAD parameter or bad value in ``params``."""
    unknown = sorted(set(params) - set(VAD_DEFAULTS))
    if unknown:
        raise error(f"unknown VAD options {unknown}; known: {sorted(VAD_DEFAULTS)}")
    for name, value in params.items():
        expected, ok = _VAD_RULES[name]
        if not ok(value):
            raise error(f"{name}={value!r}: expected {expected}")


# What preprocess.audio may hold (a converter refuses others: a misspelt key would be ignored)
PREPROCESS_KEYS = ("sample_rate", "window", "context", "clip_s", "features", "n_mels", "n_fft", "hop")


def check_audio_preprocess(pp: dict, where: str) -> None:
    """Raise UsageError, naming ``where``, unless ``pp``'s sizes, clip length and features are usable."""
    for key in ("sample_rate", "window", "context", "n_mels", "n_fft", "hop"):
        v = pp.get(key)
        if v is not None and not (is_integer(v) and v > 0):
            raise UsageError(f"{where}: audio {key} {v!r} is not a positive whole number")
    clip = pp.get("clip_s")
    if clip is not None and not (is_number(clip) and clip > 0):
        raise UsageError(f"{where}: audio clip_s {clip!r} is not a positive number of seconds")
    features = pp.get("features", "waveform")
    if features not in ("waveform", "log-mel"):
        raise UsageError(f"{where}: audio features {features!r} is not 'waveform' or 'log-mel'")


def pcm_frames(samples, what: str) -> np.ndarray:
    """Numeric samples as float32 frames x channels, as :func:`load_audio` and ``VadStream.feed``
    read them: signed PCM scaled to [-1, 1), unsigned PCM (8-bit WAV) centred on its mid-scale, float
    kept as it is, and channels x samples (at most 16 rows, more columns) transposed.

    Raises:
        InputError: not numeric, not samples or samples x channels, NaN or infinite samples.
    """
    data = np.asarray(samples)
    if data.dtype.kind not in "fiu":
        raise InputError(f"{what}: expected numeric samples, got {data.dtype}")
    if data.dtype.itemsize > 4 and data.dtype.kind in "iu":  # no PCM is 64-bit: a list of ints, say
        raise InputError(f"{what}: {data.dtype} samples are no PCM format, and their scale is unknown (a "
                         f"Python list of ints becomes int64): give int16 or int32 PCM "
                         f"(np.asarray(x, np.int16)), or floats from -1 to 1")
    if data.dtype.kind == "i":  # signed PCM to [-1, 1)
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    elif data.dtype.kind == "u":  # unsigned PCM (8-bit WAV): silence sits at mid-scale
        half = float(np.iinfo(data.dtype).max + 1) / 2
        data = (data.astype(np.float32) - half) / half
    data = data.astype(np.float32, copy=False)
    if data.ndim == 1:
        data = data[:, None]
    elif data.ndim != 2:
        raise InputError(f"{what}: expected samples or samples x channels, got shape {data.shape}")
    elif data.shape[0] <= _MAX_CHANNELS < data.shape[1]:  # channels x samples, the other convention
        data = data.T
    if not np.isfinite(data).all():
        raise InputError(f"{what}: contains NaN or infinite samples")
    return data


def _mono(frames: np.ndarray) -> np.ndarray:
    return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]


class VoiceActivityDetector(Task):
    """Speech segments with Silero VAD: the same windows, context, state and thresholds as Silero's
    own ``get_speech_timestamps``, so the segments match its reference utility.

    The model takes ``input`` (window plus context) and ``state``, and ``sr`` where it has one (a
    graph made for one rate has none); it returns the probability and ``stateN``, in that order
    (OpenVINO may report the first under another name its tensor had, such as ``mean``). The state
    starts as zeros of its shape at batch 1 (see :meth:`_batch1_state`) and is carried as the model
    returns it, reshaped to its input's shape where only its batch of 1 sits elsewhere (onnx2tf's
    TFLite takes ``[2, 1, 128]`` and returns ``[1, 2, 128]``).

    Args:
        threshold, min_speech_duration_ms, min_silence_duration_ms, speech_pad_ms,
        max_speech_duration_s, neg_threshold: as in Silero's utility (defaults: the package's,
        else Silero's).

    Raises:
        UsageError: an unknown option, or a value out of range (a threshold outside [0, 1], a
            negative duration), named with its value; a state whose shape at batch 1 cannot be told;
            ModelFileError when the package's edgekit.json holds such a value.
    """

    task = "voice-activity-detection"

    def __init__(self, source, *, device: str = "auto", **options) -> None:
        load_opts = {k: options.pop(k) for k in LOAD_OPTIONS if k in options}
        check_vad_params(options, UsageError)
        super().__init__(source, device=device, **load_opts)
        with self.closed_on_error():
            where = self.metadata_source()
            pp = self.preprocess("audio")
            check_audio_preprocess(pp, where)
            self.sample_rate = pp.get("sample_rate", 16000)
            self.window = pp.get("window", 512 if self.sample_rate == 16000 else 256)
            self.context = pp.get("context", 64 if self.sample_rate == 16000 else 32)
            package_params = self.postprocess().get("vad", {})
            if not isinstance(package_params, dict):
                raise ModelFileError(where, f"postprocess.vad must be an object, not {package_params!r}")
            check_vad_params(package_params, lambda problem: ModelFileError(where, f"postprocess.vad: {problem}"))
            self.params = {**VAD_DEFAULTS, **package_params, **options}
            names = [s.name for s in self.model.inputs]
            outputs = [s.name for s in self.model.outputs]
            if not ({"input", "state"} <= set(names) <= {"input", "state", "sr"} and len(outputs) == 2):
                raise UsageError(f"{self.model.source}: not a Silero-style VAD (inputs {names}, outputs {outputs}; "
                                 f"expected input, state and optionally sr in, a probability and stateN out)")
            self._state_out = "stateN" if "stateN" in outputs else outputs[1]
            self._prob_out = next(n for n in outputs if n != self._state_out)
            state_spec = next(s for s in self.model.inputs if s.name == "state")
            self._state_shape = self._batch1_state(state_spec)
            self._sr = {"sr": np.array(self.sample_rate, dtype=np.int64)} if "sr" in names else {}

    def _batch1_state(self, spec) -> tuple[int, ...]:
        """The shape of the state at batch 1: as the package (or the file's card) declares it in
        ``warmup_inputs.state.shape``, else the model's own with its one open dim, the batch, at 1
        (Silero's ``[2, batch, 128]``, or ``[batch, 2, 128]`` had it been laid out so).

        Raises:
            UsageError: the state's rank is unknown or it leaves more than one dim open: which is the
                batch, and what size the others take, is not guessed.
            ModelFileError: a declared shape that does not fit the model's state input.
        """
        from ..bench import warmup_sizes
        from ..types import shape_text

        declared = ((warmup_sizes(self.model) or {}).get("state") or {}).get("shape")
        if declared is not None:
            fits = (isinstance(declared, list) and all(is_integer(d) and d >= 1 for d in declared)
                    and (spec.shape is None or (len(declared) == len(spec.shape) and all(
                        not isinstance(d, int) or d == n for d, n in zip(spec.shape, declared)))))
            if not fits:
                raise ModelFileError(self.metadata_source(), f"warmup_inputs.state.shape {declared!r} does not fit "
                                                             f"the model's state input {shape_text(spec.shape)}")
            return tuple(int(d) for d in declared)
        open_dims = None if spec.shape is None else [d for d in spec.shape if not isinstance(d, int)]
        if open_dims is None or len(open_dims) > 1:
            raise UsageError(f"{self.model.source}: its state input {shape_text(spec.shape)}: which dim is the batch, "
                             f"and what size the others take, cannot be told from the model; declare its shape at "
                             f"batch 1 in the package's edgekit.json, as Silero's would be: "
                             f'"warmup_inputs": {{"state": {{"shape": [2, 1, 128]}}}}')
        return tuple(d if isinstance(d, int) else 1 for d in spec.shape)

    def _step(self, window_with_context: np.ndarray, state: np.ndarray,
              record: list | None = None) -> tuple[float, np.ndarray]:
        feed = {"input": window_with_context[None], "state": state, **self._sr}
        if record is not None:
            record.append(feed)
        out = self.model.run(feed)
        prob, new_state = out[self._prob_out], out[self._state_out]
        if new_state.shape != self._state_shape:
            # The same values only where the shapes differ in where a dim of 1 (the batch) sits: onnx2tf's
            # TFLite takes [2, 1, 128] and returns [1, 2, 128]. Any other order would be scrambled by a reshape.
            if [d for d in new_state.shape if d != 1] != [d for d in self._state_shape if d != 1]:
                raise UsageError(f"{self.model.path.name}: returns its state ({self._state_out}) as "
                                 f"{new_state.shape}, its state input is {self._state_shape}: not the same "
                                 f"values in the same order, and which order is not guessed")
            new_state = new_state.reshape(self._state_shape)
        return float(np.asarray(prob).reshape(-1)[0]), new_state

    def probabilities(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """Speech probability of each ``window`` of samples (the last one zero-padded)."""
        return self._probabilities(load_audio(audio, sample_rate, target_rate=self.sample_rate))

    def feeds(self, audio, sample_rate: int | None = None) -> list[dict[str, np.ndarray]]:
        """The model's inputs at each window of a clip, as this detector feeds them (window plus
        context, the state the previous window returned): calibration and check data for converting
        the model, which random inputs cannot stand in for."""
        record: list[dict] = []
        self._probabilities(load_audio(audio, sample_rate, target_rate=self.sample_rate), record)
        return record

    def _probabilities(self, x: np.ndarray, record: list | None = None,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        state = np.zeros(self._state_shape, np.float32)
        context = np.zeros(self.context, np.float32)
        n = -(-len(x) // self.window)
        padded = np.zeros(n * self.window, np.float32)
        padded[:len(x)] = x
        probs = np.empty(n, np.float32)
        for i in range(n):
            chunk = np.concatenate([context, padded[i * self.window:(i + 1) * self.window]])
            probs[i], state = self._step(chunk, state, record)
            context = chunk[-self.context:]
            if progress is not None:
                progress(i + 1, n)
        return probs

    def detect(self, audio, sample_rate: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> list[Segment]:
        """Speech segments of a whole clip, in seconds, each with its mean speech probability.

        ``progress(done, total)`` is called after each window, as ``edgekit.bench.measure`` calls
        its own: an hour of audio is some 110,000 windows. What it raises stops the detection and
        comes out of ``detect`` (an app's Cancel).
        """
        x = load_audio(audio, sample_rate, target_rate=self.sample_rate)
        probs = self._probabilities(x, progress=progress)
        spans = speech_spans(probs, sampling_rate=self.sample_rate, window=self.window,
                             audio_length_samples=len(x), **self.params)
        out = []
        for start, end in spans:
            a, b = start // self.window, max(start // self.window + 1, -(-end // self.window))
            out.append(Segment(round(start / self.sample_rate, 3), round(end / self.sample_rate, 3),
                               float(probs[a:b].mean())))
        return out

    def stream(self) -> VadStream:
        """A streaming detector: feed chunks of any length, at the detector's sample rate; state and
        context carry over. It applies threshold, neg_threshold, min_silence_duration_ms and
        speech_pad_ms, as Silero's VADIterator does; min_speech_duration_ms and max_speech_duration_s
        are :meth:`detect`'s alone (a warning says so where they were set otherwise than the defaults)."""
        ignored = [k for k in ("min_speech_duration_ms", "max_speech_duration_s")
                   if self.params[k] != VAD_DEFAULTS[k]]
        if ignored:
            log.warning("%s: the stream does not apply %s (detect() does): a segment is reported as it "
                        "starts and ends", self.model.source, " or ".join(f"{k}={self.params[k]}" for k in ignored))
        return VadStream(self)


@dataclass
class VadStream:
    """Chunk-by-chunk VAD (Silero's VADIterator logic) over a :class:`VoiceActivityDetector`.

    ``feed(samples)`` takes samples at the detector's rate, in any dtype and layout that
    :meth:`VoiceActivityDetector.detect` takes an array in (int16 PCM is scaled to [-1, 1),
    channels are down-mixed), and returns the events completed by them: ``("start", t_s)`` and
    ``("end", t_s)``; ``probabilities`` keeps the last :data:`HISTORY` windows' probabilities
    (10 minutes at 16 kHz: a microphone stream is never closed, and kept every window it grew by
    4 MB an hour). ``close()`` ends an open segment.
    """

    HISTORY = 18_750

    vad: VoiceActivityDetector
    probabilities: deque = field(default_factory=lambda: deque(maxlen=VadStream.HISTORY))
    _buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _state: np.ndarray | None = None
    _context: np.ndarray | None = None
    _samples: int = 0
    _triggered: bool = False
    _temp_end: int = 0
    _events: list = field(default_factory=list)

    def feed(self, samples) -> list[tuple[str, float]]:
        x = _mono(pcm_frames(samples, "audio chunk"))  # the dtypes and layouts detect() takes
        v = self.vad
        if self._state is None:
            self._state = np.zeros(v._state_shape, np.float32)
            self._context = np.zeros(v.context, np.float32)
        self._buffer = np.concatenate([self._buffer, x])
        events = self._events  # kept here until returned: a run that fails loses none of them
        p = v.params
        neg = p["neg_threshold"] if p["neg_threshold"] is not None else max(p["threshold"] - 0.15, 0.01)
        min_silence = v.sample_rate * p["min_silence_duration_ms"] / 1000
        pad = v.sample_rate * p["speech_pad_ms"] / 1000
        while len(self._buffer) >= v.window:
            chunk = np.concatenate([self._context, self._buffer[:v.window]])
            prob, self._state = v._step(chunk, self._state)
            self._buffer = self._buffer[v.window:]  # only once run: a window that failed is run again
            self._context = chunk[-v.context:]
            self.probabilities.append(prob)
            self._samples += v.window
            if prob >= p["threshold"] and self._temp_end:
                self._temp_end = 0
            if prob >= p["threshold"] and not self._triggered:
                self._triggered = True
                start = max(0, self._samples - pad - v.window)
                events.append(("start", round(start / v.sample_rate, 3)))
            elif prob < neg and self._triggered:
                if not self._temp_end:
                    self._temp_end = self._samples
                if self._samples - self._temp_end >= min_silence:
                    end = self._temp_end + pad - v.window
                    self._temp_end, self._triggered = 0, False
                    events.append(("end", round(end / v.sample_rate, 3)))
        self._events = []
        return events

    def close(self) -> list[tuple[str, float]]:
        """End an open segment and reset, so the stream can start a new recording. An open segment ends
        where the audio fed ends, as :meth:`VoiceActivityDetector.detect` ends it (the samples still
        short of a window count too)."""
        fed = self._samples + len(self._buffer)
        events = [("end", round(fed / self.vad.sample_rate, 3))] if self._triggered else []
        self._buffer = np.zeros(0, np.float32)
        self._state = self._context = None
        self._samples, self._triggered, self._temp_end = 0, False, 0
        self.probabilities.clear()
        events, self._events = self._events + events, []
        return events


def speech_spans(speech_probs, *, sampling_rate: int, window: int, audio_length_samples: int,
                 threshold: float, min_speech_duration_ms: float, min_silence_duration_ms: float,
                 speech_pad_ms: float, max_speech_duration_s: float | None, neg_threshold: float | None,
                 min_silence_at_max_speech: float = 98, use_max_poss_sil_at_max_speech: bool = True
                 ) -> list[tuple[int, int]]:
    """(start, end) sample spans from per-window probabilities.

    A port of ``get_speech_timestamps_from_probs`` from silero-vad 6.2 (MIT licence,
    Silero Team), kept line for line so results match the reference; importing silero-vad
    itself would pull in PyTorch.
    """
    if max_speech_duration_s is None:
        max_speech_duration_s = float("inf")
    min_speech_samples = sampling_rate * min_speech_duration_ms / 1000
    speech_pad_samples = sampling_rate * speech_pad_ms / 1000
    max_speech_samples = sampling_rate * max_speech_duration_s - window - 2 * speech_pad_samples
    min_silence_samples = sampling_rate * min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = sampling_rate * min_silence_at_max_speech / 1000
    triggered = False
    speeches: list[dict] = []
    current: dict = {}
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    temp_end = 0
    prev_end = next_start = 0
    possible_ends: list[tuple[int, int]] = []
    for i, prob in enumerate(speech_probs):
        cur = window * i
        if prob >= threshold and temp_end:
            sil_dur = cur - temp_end
            if sil_dur > min_silence_samples_at_max_speech:
                possible_ends.append((temp_end, sil_dur))
            temp_end = 0
            if next_start < prev_end:
                next_start = cur
        if prob >= threshold and not triggered:
            triggered = True
            current["start"] = cur
            continue
        if triggered and cur - current["start"] > max_speech_samples:
            if use_max_poss_sil_at_max_speech and possible_ends:
                prev_end, dur = max(possible_ends, key=lambda x: x[1])
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                next_start = prev_end + dur
                if next_start < prev_end + cur:
                    current["start"] = next_start
                else:
                    triggered = False
                prev_end = next_start = temp_end = 0
                possible_ends = []
            elif prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
                possible_ends = []
            else:
                current["end"] = cur
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                possible_ends = []
                continue
        if prob < neg_threshold and triggered:
            if not temp_end:
                temp_end = cur
            sil_now = cur - temp_end
            if not use_max_poss_sil_at_max_speech and sil_now > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if sil_now < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            possible_ends = []
            continue
    if current and audio_length_samples - current["start"] > min_speech_samples:
        current["end"] = audio_length_samples
        speeches.append(current)
    for i, sp in enumerate(speeches):
        if i == 0:
            sp["start"] = int(max(0, sp["start"] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - sp["end"]
            if silence < 2 * speech_pad_samples:
                sp["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                sp["end"] = int(min(audio_length_samples, sp["end"] + speech_pad_samples))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - speech_pad_samples))
        else:
            sp["end"] = int(min(audio_length_samples, sp["end"] + speech_pad_samples))
    return [(int(sp["start"]), int(sp["end"])) for sp in speeches]


class AudioClassifier(Task):
    """Clip-level audio classification: waveform input, or log-mel as the package's metadata says.

    Metadata ``preprocess.audio``: ``sample_rate``, ``clip_s`` (pad/crop to this length),
    ``features`` ("waveform" or "log-mel" with ``n_mels``, ``n_fft``, ``hop``).
    """

    task = "audio-classification"

    def __init__(self, source, *, device: str = "auto", labels=None, options: ClassifierOptions | None = None,
                 preprocess: dict | None = None, **load_options) -> None:
        super().__init__(source, device=device, **load_options)
        with self.closed_on_error():
            self.pp = self.preprocess("audio", preprocess, PREPROCESS_KEYS)
            check_audio_preprocess(self.pp, str(self.model.source))
            self.sample_rate = self.pp.get("sample_rate", 16000)
            self.labels = self.class_labels(labels)
            self.options = classifier_options(options, self.labels)
            self._activate = self.activation()
            self.input_name = self.model.inputs[0].name

    def features(self, audio, sample_rate: int | None = None) -> np.ndarray:
        x = load_audio(audio, sample_rate, target_rate=self.sample_rate)
        clip = self.pp.get("clip_s")
        if clip:
            n = int(round(clip * self.sample_rate))
            x = np.pad(x, (0, max(0, n - len(x))))[:n]
        if self.pp.get("features", "waveform") == "log-mel":
            return log_mel(x, self.sample_rate, n_mels=int(self.pp.get("n_mels", 64)),
                           n_fft=int(self.pp.get("n_fft", 400)), hop=int(self.pp.get("hop", 160)))[None]
        return x[None]

    def classify(self, audio, sample_rate: int | None = None, top_k: int | None = None, *,
                 score_threshold: float | None = None, allow=None, deny=None) -> list[Category]:
        scores = self._activate(self.scores_of_one(self.features(audio, sample_rate)))
        opts = self.options.merged(top_k=top_k, score_threshold=score_threshold, allow=allow, deny=deny)
        return opts.select(scores, self.labels)


def log_mel(x: np.ndarray, sr: int, *, n_mels: int, n_fft: int, hop: int) -> np.ndarray:
    """Log-mel spectrogram (frames x n_mels), Hann window, HTK mel scale."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    points = 700 * (10 ** (np.linspace(mel(0), mel(sr / 2), n_mels + 2) / 2595) - 1)
    bins = np.floor((n_fft + 1) * points / sr).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1), np.float32)
    for m in range(1, n_mels + 1):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        if c > lo:
            fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / (c - lo)
        if hi > c:
            fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / (hi - c)
    return np.log(spec @ fb.T + 1e-6).astype(np.float32)
