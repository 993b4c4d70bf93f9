"""Prometheus metrics of one server (its own registry, so two apps in a process never mix).

Model and version labels only ever carry names of models the server knows: a request for an
unknown model is counted under the HTTP metrics by route, so clients cannot grow the label set.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Edge inference spans tens of microseconds to seconds.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    """A request's method as a label value: clients choose it, so anything else is "other"."""
    return method if method in _METHODS else "other"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        mv = ["model", "version"]
        self.requests = Counter("edgekit_inference_requests", "Inference and task requests that reached a model",
                                [*mv, "endpoint", "outcome"], registry=r)
        self.in_flight = Gauge("edgekit_inference_in_flight", "Requests queued or running on a model", mv,
                               registry=r)
        self.queue_seconds = Histogram("edgekit_inference_queue_seconds", "Time a request waited for a worker",
                                       mv, buckets=_BUCKETS, registry=r)
        self.compute_seconds = Histogram("edgekit_inference_compute_seconds",
                                         "Time a request (or the batch it joined) ran on the model", mv,
                                         buckets=_BUCKETS, registry=r)
        self.batch_size = Histogram("edgekit_inference_batch_size", "Requests per model run (dynamic batching)",
                                    mv, buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.loaded = Gauge("edgekit_model_loaded", "1 for each model version being served, with where it runs",
                            [*mv, "backend", "device", "artifact"], registry=r)
        self.http = Counter("edgekit_http_requests", "HTTP requests by route and status",
                            ["method", "route", "status"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class InferenceStats:
    """One model version's totals since it loaded, as Triton's statistics extension reports them
    (``GET /v2/models[/NAME[/versions/V]]/stats``; tritonclient's ``get_inference_statistics``).

    Durations are a count and nanoseconds. ``success`` / ``fail``: whole requests that reached the
    model, from routing to answer. As in Triton, the rest count successful requests only: ``queue``
    (the wait for a worker or a batch), ``compute_input`` / ``compute_output`` (decoding the
    request's tensors and encoding the answer, on ``/infer``), ``compute_infer`` (the model run a
    request was part of; a task endpoint's pre- and post-processing run there too).
    ``inference_count`` counts rows (a batch of 8 is 8; 1 per request for a model that cannot batch
    or a task endpoint), ``execution_count`` model runs (a dynamic batch is one). ``cache_hit`` /
    ``cache_miss`` stay 0: there is no response cache. Updated from the event loop and the workers.
    """

    DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                 "cache_hit", "cache_miss")
    MAX_BATCH_SIZES = 64  # distinct batch sizes kept in batch_stats: clients choose them

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations = {k: [0, 0] for k in self.DURATIONS}
        self._batches: dict[int, list[int]] = {}  # rows in one run -> [runs, ns]
        self._inferences = self._executions = 0
        self._last_ms = 0

    def add(self, what: str, seconds: float) -> None:
        with self._lock:
            d = self._durations[what]
            d[0] += 1
            d[1] += int(seconds * 1e9)

    def ran(self, seconds: float, queued: list[float], rows: int) -> None:
        """One model run that answered ``len(queued)`` requests (which waited ``queued`` seconds each)
        over ``rows`` inferences; only the requests it answered without an error."""
        ns = int(seconds * 1e9)
        with self._lock:
            q, c = self._durations["queue"], self._durations["compute_infer"]
            q[0] += len(queued)
            q[1] += sum(int(w * 1e9) for w in queued)
            c[0] += len(queued)
            c[1] += ns * len(queued)
            b = self._batches.get(rows)
            if b is None and len(self._batches) < self.MAX_BATCH_SIZES:
                b = self._batches[rows] = [0, 0]
            if b is not None:
                b[0] += 1
                b[1] += ns
            self._inferences += rows
            self._executions += 1
            self._last_ms = int(time.time() * 1000)

    def to_dict(self, name: str, version: str) -> dict:
        with self._lock:
            def stat(count_ns):
                return {"count": count_ns[0], "ns": count_ns[1]}
            zero = {"count": 0, "ns": 0}
            return {
                "name": name, "version": version, "last_inference": self._last_ms,
                "inference_count": self._inferences, "execution_count": self._executions,
                "inference_stats": {k: stat(v) for k, v in self._durations.items()},
                "batch_stats": [{"batch_size": rows, "compute_input": zero, "compute_infer": stat(b),
                                 "compute_output": zero} for rows, b in sorted(self._batches.items())],
            }
