"""The HTTP side: the Open Inference Protocol (KServe v2 / Triton) on Starlette, plus task endpoints.

    from edgekit.serve import create_app
    app = create_app(["models/"], api_key="...")     # any ASGI server runs it; `edgekit serve` uses uvicorn

Routes (``{model}`` may be followed by ``/versions/{v}``; without it the newest ready version):

    GET  /v2/health/live | /v2/health/ready | /v2              server liveness, readiness, metadata
    GET  /v2/models/{model}[/ready]                            model metadata, readiness
    GET  /v2/models/{model}/config                             Triton's model configuration
    POST /v2/models/{model}/infer                              tensors: JSON or the binary extension
    POST /v2/models/{model}/classify | embed | detect          the package's task: a file or JSON text in,
                                                               its typed result as JSON out
    GET  /v2/models[/{model}]/stats                            Triton's statistics extension (per version)
    POST /v2/repository/index | /v2/repository/models/{name}/load | /unload
    GET  /metrics                                              Prometheus

Every error is ``{"error": "..."}`` with 400 (bad request), 401 (API key), 404 (unknown
model or version), 405, 413 (body over the limit), 503 (not ready); never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
import time
import zlib

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from .. import __version__
from ..errors import EdgekitError, InputError, UsageError
from ..model import Model
from ..types import TensorSpec
from . import protocol
from .errors import NotFound, NotReady
from .metrics import Metrics, method_label
from .models import ModelManager, Version
from .repository import Batching, parse_version

log = logging.getLogger("edgekit.serve")
access_log = logging.getLogger("edgekit.serve.access")

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # Triton's default
DEFAULT_BODY_TIMEOUT_S = 60.0  # nginx's client_body_timeout
_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+
MIN_API_KEY = 16  # characters
_INLINE = 256 * 1024  # JSON smaller than this is decoded on the event loop
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes need no key; they reveal nothing
_TEXT_INPUT = [TensorSpec("text", (None,), np.dtype(object))]
_MAX_TEXTS = 4096  # texts (or zero-shot labels) in one request
_TASK_VERBS = {  # the SDK method each task endpoint runs
    "image-classification": ("classify",), "audio-classification": ("classify",),
    "text-classification": ("classify",), "text-embedding": ("embed", "classify"),  # classify: zero-shot
    "voice-activity-detection": ("detect",),
}


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class UnsupportedEncoding(Exception):
    pass


def create_app(sources, *, device: str = "auto", api_key: str | None = None, max_body: int = DEFAULT_MAX_BODY,
               batching: Batching | None = None, instances: int = 1, poll_interval: float = 2.0,
               body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> Starlette:
    """An ASGI app serving the repositories, packages and model files in ``sources``.

    Args:
        sources: repository folders (``REPO/<name>/<version>/``), package folders or model files.
        device: where models run unless a model's config.json says otherwise (as ``edgekit.load``).
        api_key: when set, every request but the health probes needs ``Authorization: Bearer <key>``.
        max_body: requests with a larger body get 413 before it is read.
        batching: dynamic batching for every model that can batch (config.json may set its own).
        instances: worker threads per model version.
        poll_interval: seconds between repository scans for new versions (0: only the repository API).
        body_timeout_s: a request whose body stops arriving for this long gets 408 and its connection
            is closed (nginx's client_body_timeout): a stalled client holds no connection for good.
    """
    if api_key is not None and len(api_key) < MIN_API_KEY:
        raise UsageError(f"an API key needs at least {MIN_API_KEY} characters")
    metrics = Metrics()
    manager = ModelManager(sources, metrics=metrics, device=device, batching=batching, instances=instances,
                           poll_interval=poll_interval)
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await manager.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await manager.stop()

    api = _Api(manager, metrics, state, max_body)
    m, mv = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    routes = [
        # inference first: every request is matched against the routes in order, and these are the many
        Route(m + "/infer", api.infer, methods=["POST"]), Route(mv + "/infer", api.infer, methods=["POST"]),
        Route("/v2/health/live", api.live, methods=["GET"]),
        Route("/v2/health/ready", api.ready, methods=["GET"]),
        Route("/v2", api.server_metadata, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/v2/models/stats", api.statistics, methods=["GET"]),  # before /v2/models/{model}
        Route("/v2/repository/index", api.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", api.load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", api.unload, methods=["POST"]),
    ]
    for prefix in (m, mv):
        routes += [
            Route(prefix, api.model_metadata, methods=["GET"]),
            Route(prefix + "/ready", api.model_ready, methods=["GET"]),
            Route(prefix + "/config", api.model_config, methods=["GET"]),
            Route(prefix + "/stats", api.statistics, methods=["GET"]),
            Route(prefix + "/{verb:str}", api.task, methods=["POST"]),
        ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    # No 307 to the path without its trailing slash: the protocol's paths have none, and Starlette
    # builds the redirect from the client's Host header (a redirect to any host it names).
    app.router.redirect_slashes = False
    app.state.manager = manager
    app.state.metrics = metrics
    app.add_middleware(_Guard, api_key=api_key, max_body=max_body, metrics=metrics, body_timeout_s=body_timeout_s,
                       routes=routes)
    return app


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own 404 (no such route) and 405 (wrong method), as protocol errors."""
    text = "no such endpoint" if exc.status_code == 404 else exc.detail
    return error(exc.status_code, f"{request.method} {request.url.path}: {text}", getattr(exc, "headers", None))


def _endpoint(route: str):
    """Map edgekit's exceptions to status codes and count the outcome per model."""
    def wrap(fn):
        @functools.wraps(fn)
        async def handler(self, request: Request) -> Response:
            request.scope["edgekit.route"] = route
            start = time.perf_counter()
            try:
                response = await fn(self, request)
                outcome = "success"
            except BodyTooLarge as e:
                response, outcome = error(413, str(e)), "bad_request"
            except BodyTimeout as e:  # the rest of the body may still come: nothing more on this connection
                response, outcome = error(408, str(e), {"Connection": "close"}), "bad_request"
            except HTTPException as e:  # Starlette's own refusals (a malformed multipart form)
                response, outcome = error(e.status_code, str(e.detail)), "bad_request"
            except UnsupportedEncoding as e:
                response, outcome = error(415, str(e)), "bad_request"
            except NotFound as e:
                response, outcome = error(404, str(e)), "bad_request"
            except NotReady as e:
                response, outcome = error(503, str(e)), "unavailable"
            except (InputError, UsageError) as e:
                response, outcome = error(400, str(e)), "bad_request"
            except ClientDisconnect:  # the client hung up before its body was in: no one to answer
                response, outcome = error(499, "the client closed the connection"), "bad_request"
            except EdgekitError as e:  # the runtime failed: the server's fault, not the caller's
                log.error("%s %s: %s", request.method, request.url.path, e)
                response, outcome = error(500, str(e)), "error"
            except Exception as e:
                log.exception("%s %s failed", request.method, request.url.path)
                response, outcome = error(500, f"internal error ({type(e).__name__})"), "error"
            served = request.scope.get("edgekit.model")
            if served is not None and route in ("infer", "task"):
                self.metrics.requests.labels(*served, route, outcome).inc()
                runner = request.scope.get("edgekit.runner")
                if runner is not None:
                    runner.stats.add("success" if outcome == "success" else "fail", time.perf_counter() - start)
            return response
        handler.route = route  # the guard labels the requests it refuses before routing by it
        return handler
    return wrap


class _Api:
    def __init__(self, manager: ModelManager, metrics: Metrics, state: dict, max_body: int) -> None:
        self.manager = manager
        self.metrics = metrics
        self.state = state
        self.max_body = max_body

    def _version(self, request: Request) -> Version:
        p = request.path_params
        try:
            v = self.manager.get(p["model"], p.get("version"))
        except NotReady:  # a model the server knows (unloaded, loading, failed): counted as unavailable
            version = parse_version(p["version"]) if p.get("version") else None
            request.scope["edgekit.model"] = (p["model"], "" if version is None else str(version))
            raise
        request.scope["edgekit.model"] = (v.name, str(v.version))
        request.scope["edgekit.runner"] = v.runner
        return v

    # -- health and metadata --------------------------------------------------------------------

    @_endpoint("health")
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    @_endpoint("health")
    async def ready(self, request: Request) -> Response:
        ok = self.state["ready"] and self.manager.ready()
        return Response(status_code=200) if ok else error(503, "not ready: no model is ready to serve")

    @_endpoint("metadata")
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "edgekit", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_repository", "model_configuration",
                                            "statistics", "edgekit_tasks"]})

    @_endpoint("metrics")
    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    @_endpoint("metadata")
    async def model_metadata(self, request: Request) -> Response:
        v = self._version(request)
        model = v.model
        served = self.manager.models[v.name].ready()
        doc = {
            "name": v.name,
            "versions": [str(x.version) for x in served],
            "platform": f"edgekit_{model.backend}",
            "inputs": [protocol.tensor_metadata(s) for s in model.inputs],
            "outputs": [protocol.tensor_metadata(s) for s in model.outputs],
            "edgekit": {"version": str(v.version), "backend": model.backend, "device": model.device,
                        "artifact": model.path.name, "precision": model.precision, "task": v.task,
                        "task_endpoints": list(_TASK_VERBS.get(v.task, ())), "batching": v.batching},
        }
        if v.task in ("text-embedding", "text-classification"):
            out = ("embedding", [-1, -1]) if v.task == "text-embedding" else ("scores", [-1, -1])
            doc["edgekit"]["task_inputs"] = [protocol.tensor_metadata(s) for s in _TEXT_INPUT]
            doc["edgekit"]["task_outputs"] = [{"name": out[0], "datatype": "FP32", "shape": out[1]}]
        return JSONResponse(doc)

    @_endpoint("metadata")
    async def model_config(self, request: Request) -> Response:
        """Triton's model configuration extension (tritonclient's get_model_config, perf_analyzer)."""
        v = self._version(request)
        served = self.manager.models[v.name]
        return JSONResponse(protocol.model_config(
            v.name, v.model, policy=served.config.to_dict()["version_policy"], batching=v.runner.batching,
            instances=v.runner.instances, task=v.task))

    @_endpoint("stats")
    async def statistics(self, request: Request) -> Response:
        """Triton's statistics extension: every ready version of every model, of one model, or one version."""
        name, version = request.path_params.get("model"), request.path_params.get("version")
        if name is None:
            versions = [v for m in self.manager.models.values() for v in m.ready()]
        elif version is None:
            self.manager.get(name)  # 404 unknown, 503 (with why) when no version is ready, as for inference
            versions = self.manager.models[name].ready()
        else:
            versions = [self.manager.get(name, version)]
        return JSONResponse({"model_stats": [v.runner.stats.to_dict(v.name, str(v.version)) for v in versions]})

    @_endpoint("ready")
    async def model_ready(self, request: Request) -> Response:
        self._version(request)  # 404 unknown, 503 not ready
        return Response(status_code=200)

    # -- inference ------------------------------------------------------------------------------

    @_endpoint("infer")
    async def infer(self, request: Request) -> Response:
        v = self._version(request)
        with v.runner.hold():  # from here the version stays loaded until this request is answered
            header = request.headers.get("inference-header-content-length")
            header_length = (_integer(header, "Inference-Header-Content-Length", 1, self.max_body)
                             if header is not None else None)
            body = await self._body(request, writable=True)
            text_task = v.task in ("text-embedding", "text-classification")
            parse = functools.partial(protocol.parse_request, body, header_length, v.model.inputs,
                                      alternative=_TEXT_INPUT if text_task else None)
            # Large JSON takes a while to decode: off the event loop, so other requests go on. Binary
            # numeric tensors cost only their JSON header (the data is viewed in place), and a thread
            # hand-off would cost more than that (0.65 ms a request measured on a Zen 1): decoded here.
            # Binary BYTES (text) are split element by element, so they count whole.
            json_part = len(body) if header_length is None or text_task else header_length
            started = time.perf_counter()
            req = parse() if json_part < _INLINE else await asyncio.to_thread(parse)
            decoded = time.perf_counter() - started
            if req.alternative:
                texts = req.inputs["text"]
                outputs = await v.runner.call(_run_text_task, v, texts, rows=texts.shape[0] if texts.ndim else 1)
            else:
                protocol.check_outputs(req, v.model.outputs)
                outputs = await v.runner.infer(req.inputs)
            encode = functools.partial(protocol.encode_response, req, v.name, str(v.version), outputs)
            size = sum(a.nbytes for a in outputs.values())
            started = time.perf_counter()
            payload, json_length = encode() if size < _INLINE // 8 else await asyncio.to_thread(encode)
            v.runner.stats.add("compute_output", time.perf_counter() - started)
            v.runner.stats.add("compute_input", decoded)  # counted for answered requests only, as Triton does
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    @_endpoint("task")
    async def task(self, request: Request) -> Response:
        v = self._version(request)
        verb = request.path_params["verb"]
        verbs = _TASK_VERBS.get(v.task)
        if verbs is None:
            raise NotFound(f"model {v.name!r} declares no task edgekit knows (task={v.task!r}); "
                           f"use /infer with tensors")
        if verb not in verbs:
            article = "an" if v.task[0] in "aeiou" else "a"
            raise NotFound(f"model {v.name!r} is {article} {v.task} model: its task endpoint is "
                           f"{' or '.join('/' + x for x in verbs)}, not /{verb}")
        # A file task's one option is ?top_k; text tasks take theirs in the JSON body. A misspelt
        # option (?topk=3) is refused rather than silently ignored.
        allowed = {"top_k"} if v.task in ("image-classification", "audio-classification") else set()
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            where = ("options go in the JSON body" if v.task.startswith("text-")
                     else f"it takes {', '.join(sorted(allowed)) or 'none'}")
            raise InputError(f"unknown query parameter {unknown[0]!r} for /{verb} ({where})")
        with v.runner.hold():
            if v.task.startswith("text-"):
                payload = await v.runner.call(_text_task, v, verb, await self._body(request))
            else:
                given = request.query_params.getlist("top_k")
                if len(given) > 1:
                    raise InputError(f"top_k is given {len(given)} times; give it once")
                top_k = 5 if not given else _integer(given[0], "top_k", 1, 1000)
                payload = await v.runner.call(_file_task, v, await self._upload(request), top_k)
        return Response(payload, media_type="application/json")

    async def _body(self, request: Request, *, writable: bool = False) -> bytes | bytearray:
        """The body, decompressed if the client compressed it (tritonclient can send gzip or deflate).

        ``writable``: a bytearray, for tensors viewed in place. OpenVINO takes a writable array's
        memory as it is (when its elements are aligned, as where the JSON header's length is a
        multiple of theirs) and copies a read-only one first: 0.045 ms of 1.5 for the 600 KB image
        tensor on the Xeon. Gathering the chunks costs the same either way (12 us). A compressed
        body is inflated into bytes, read-only.
        """
        if writable:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
        else:
            body = await request.body()
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise UnsupportedEncoding(f"Content-Encoding {encoding[:20]!r} is not supported (gzip, deflate)")
        inflate = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            data = inflate.decompress(body, self.max_body)
        except zlib.error as e:
            raise InputError(f"the {encoding} body cannot be decompressed ({e})") from None
        if inflate.unconsumed_tail:  # a small body that inflates past the limit: a zip bomb
            raise BodyTooLarge(f"the decompressed body is over the limit of {self.max_body} bytes")
        if not inflate.eof:
            raise InputError(f"the {encoding} body cannot be decompressed (it is cut short)")
        if inflate.unused_data:
            raise InputError(f"the {encoding} body holds {len(inflate.unused_data)} bytes after its compressed "
                             f"stream (one gzip member or deflate stream per request)")
        return data

    async def _upload(self, request: Request) -> bytes:
        """A file sent as the raw body, or as the one file of a multipart form (``curl -F file=@x.jpg``)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await self._body(request)
        if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
            body = await self._body(request)  # the form is parsed from the inflated body

            async def inflated() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}
            request = Request(request.scope, inflated)
        async with request.form(max_files=1, max_fields=8) as form:
            files = [f for f in form.values() if not isinstance(f, str)]
            if not files:
                raise InputError("the form holds no file (send it as a file field, e.g. curl -F file=@cat.jpg)")
            return await files[0].read()

    # -- repository extension ------------------------------------------------------------------

    @_endpoint("repository")
    async def repository_index(self, request: Request) -> Response:
        body = await self._body(request)
        doc = _json(body) if body.strip() else {}
        rows = self.manager.index()
        if doc.get("ready"):
            rows = [r for r in rows if r["state"] == "READY"]
        return JSONResponse(rows)

    @_endpoint("repository")
    async def load(self, request: Request) -> Response:
        body = await self._body(request)
        doc = _json(body) if body.strip() else {}
        if doc.get("parameters"):
            raise InputError("a load request cannot carry a config or files: edgekit serves only what is in "
                             "its repository (add versions with `edgekit repo add`)")
        await self.manager.load_model(request.path_params["model"])
        return Response(status_code=200)

    @_endpoint("repository")
    async def unload(self, request: Request) -> Response:
        await self._body(request)
        await self.manager.unload_model(request.path_params["model"])
        return Response(status_code=200)


# -- request bodies -----------------------------------------------------------------------------

def _json(body: bytes) -> dict:
    doc = protocol.loads(body)
    if not isinstance(doc, dict):
        raise InputError("the request must be a JSON object")
    return doc


_DIGITS = re.compile(r"[0-9]{1,20}")


def _integer(text: str, what: str, low: int = 0, high: int = 10 ** 9) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise InputError(f"{what} must be an integer from {low} to {high}, got {text[:24]!r}")
    return int(text)


# -- task work, on the model's worker thread ---------------------------------------------------

def _answer(v: Version, result: dict) -> bytes:
    """A task's JSON answer, encoded on the worker thread (embeddings can be large)."""
    doc = {"model_name": v.name, "model_version": str(v.version), "task": v.task, **result}
    return json.dumps(doc, separators=(",", ":")).encode()


def _file_task(model: Model, v: Version, data: bytes, top_k: int) -> bytes:
    if not data:
        raise InputError("the uploaded file is empty (0 bytes)")
    if v.task == "voice-activity-detection":
        return _answer(v, {"segments": [s.to_dict() for s in v.task_object(model).detect(data)]})
    return _answer(v, {"categories": [c.to_dict() for c in v.task_object(model).classify(data, top_k=top_k)]})


def _texts(value, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) for t in items):
        raise InputError(f"'{key}' must be a string or a non-empty list of strings")
    if len(items) > _MAX_TEXTS:
        raise InputError(f"'{key}' holds {len(items)} texts; send at most {_MAX_TEXTS} per request")
    return items


_TEXT_KEYS = {"embed": {"texts", "text"}, "classify": {"text", "top_k", "labels"}}


def _text_task(model: Model, v: Version, verb: str, body: bytes) -> bytes:
    doc = _json(body)
    unknown = sorted(set(doc) - _TEXT_KEYS[verb])
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} for /{verb} (it takes {', '.join(sorted(_TEXT_KEYS[verb]))})")
    if "text" in doc and "texts" in doc:
        raise InputError("give 'texts' (a list) or 'text' (one string), not both")
    if verb == "embed":
        vectors = v.task_object(model).embed(_texts(doc.get("texts", doc.get("text")), "texts"))
        return _answer(v, {"embeddings": vectors.tolist(), "shape": list(vectors.shape)})
    text = doc.get("text")
    if not isinstance(text, str):
        raise InputError("'text' must be a string")
    top_k = doc.get("top_k", 5)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
        raise InputError("'top_k' must be an integer from 1 to 1000")
    labels = doc.get("labels")
    if v.task == "text-embedding":  # zero-shot: the labels come with the request
        if not isinstance(labels, list) or not 0 < len(labels) <= _MAX_TEXTS:
            raise InputError(f"{v.name!r} is an embedder: zero-shot classification needs 'labels', "
                             f"a list of 1 to {_MAX_TEXTS} non-empty strings")
        bad = next((i for i, x in enumerate(labels) if not isinstance(x, str) or not x), None)
        if bad is not None:
            raise InputError(f"'labels' item {bad} is {json.dumps(labels[bad])[:40]}: each label must be a "
                             f"non-empty string")
        from ..tasks.text import TextClassifier

        clf = v.task_object(model, ("zero-shot", *labels), lambda m: TextClassifier(m, labels=labels))
    elif labels is not None:
        raise InputError(f"{v.name!r} classifies into its own labels; 'labels' is only for zero-shot embedders")
    else:
        clf = v.task_object(model)
    return _answer(v, {"categories": [c.to_dict() for c in clf.classify(text, top_k=top_k)]})


def _run_text_task(model: Model, v: Version, texts: np.ndarray) -> dict[str, np.ndarray]:
    """The BYTES form of a text task on /infer: strings in, the task's output tensor out."""
    if texts.size > _MAX_TEXTS:
        raise InputError(f"input 'text' holds {texts.size} texts; send at most {_MAX_TEXTS} per request")
    items = []
    for i, b in enumerate(texts.reshape(-1)):
        try:
            items.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"input 'text' element {i} is not UTF-8") from None
    if v.task == "text-embedding":
        return {"embedding": v.task_object(model).embed(items)}
    # one row per text, in batches (one at a time where rows depend on their batch)
    return {"scores": np.asarray(v.task_object(model).scores(items), np.float32)}


# -- the guard: API key, body limit, access log ----------------------------------------------------

class _Guard:
    """Pure ASGI middleware: it sees every request, before routing and before any body is read."""

    def __init__(self, app, *, api_key: str | None, max_body: int, metrics: Metrics,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, routes: list[Route] = ()) -> None:
        self.app = app
        self.routes = routes
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets: nothing here speaks them
            return await send({"type": "websocket.close", "code": 1008})
        start = time.perf_counter()
        status = [0]

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send_counted)
            else:
                await self.app(scope, self._limited(receive), send_counted)
        finally:  # a request the connection refused mid-body (431, 503) got that, not the app's 499
            self._log(scope, scope.get("edgekit.refused") or status[0], start)

    def _route_of(self, scope) -> str:
        """The route a request answered before its handler ran (401, 413, 405) was meant for."""
        partial = None  # the path matches but not the method: Starlette's 405, unless a route matches both
        for r in self.routes:
            match = r.matches(scope)[0]
            if match is Match.FULL:
                return getattr(r.endpoint, "route", "other")
            if match is Match.PARTIAL and partial is None:
                partial = getattr(r.endpoint, "route", "other")
        return partial or "other"

    def _refuse(self, scope) -> Response | None:
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] not in _OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                             {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return error(400, "Content-Length is not a number")
            if int(length) > self.max_body:
                return error(413, f"the request body ({int(length)} bytes) is over the limit of "
                                  f"{self.max_body} bytes")
        return None

    def _limited(self, receive):
        """Count the body as it arrives (chunked uploads carry no Content-Length), and time each wait
        for more of it (not the wait for a disconnect once the body is in)."""
        seen, more = [0], [True]
        limit, timeout = self.max_body, self.body_timeout_s

        async def receive_limited():
            if not more[0]:
                return await receive()
            try:
                if _HAS_TIMEOUT:
                    async with asyncio.timeout(timeout):
                        message = await receive()
                else:  # Python 3.10: a task per wait, a little dearer
                    message = await asyncio.wait_for(receive(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise BodyTimeout(f"the request body stopped arriving for {timeout:g} s") from None
            if message["type"] == "http.request":
                more[0] = message.get("more_body", False)
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge(f"the request body is over the limit of {limit} bytes")
            return message
        return receive_limited

    def _log(self, scope, status: int, start: float) -> None:
        ms = (time.perf_counter() - start) * 1000
        route = scope.get("edgekit.route") or self._route_of(scope)
        self.metrics.http.labels(method_label(scope["method"]), route, str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            model = scope.get("edgekit.model")
            # The path is the client's (percent-decoded): a %0D%0A in it wrote a forged line of its own
            access_log.info('%s "%s %s" %d %.2f ms%s', client[0], _printable(scope["method"]),
                            _printable(scope["path"]), status, ms,
                            f" {model[0]} v{model[1]}" if model and model[1] else f" {model[0]}" if model else "",
                            extra={"client": client[0], "method": scope["method"], "path": scope["path"],
                                   "status": status, "duration_ms": round(ms, 3), "route": route,
                                   "model": model[0] if model else None,
                                   "model_version": (model[1] or None) if model else None})


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str, limit: int = 2048) -> str:
    """``text`` for a one-line log: control characters escaped (\\x0d), at most ``limit`` characters."""
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."
