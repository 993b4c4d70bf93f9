"""Prometheus metrics of one server (its own registry, so two apps in a process never mix).

Model and version labels only ever carry names of models the server knows: a request for an
unknown model is counted under the HTTP metrics by route, so clients cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Edge inference spans tens of microseconds to seconds.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
