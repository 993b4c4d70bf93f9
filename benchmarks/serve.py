"""`edgekit serve` against in-process ``Model.run`` on the image sample package, side by side.

    python benchmarks/serve.py [--quick] [--json]

The server runs as a user starts it (``edgekit serve PKG --port 0 --json``, a subprocess) and is
driven with tritonclient.http and binary tensors; the in-process model is the artifact the server
reports in its metadata, on the same device. FP32 [N,3,224,224] in (or [N,224,224,3] where the
artifact is a TFLite one), ``logits`` out.

- latency: concurrency 1, batch 1, blocks of 20 server and in-process calls alternated; p50/p99
  of each and the difference. Goal: added p50 <= 1 ms (without dynamic batching). Beside
  tritonclient, a plain ``http.client`` sends the same binary request, and the same client times a
  bare ASGI app on the same uvicorn (uvloop, httptools) that reads the request and answers as many
  bytes, with and without one hand-off to a worker thread: the floor the HTTP stack sets before
  edgekit does anything. And ``edgekit serve`` itself on a model that only slices its input to the
  1000 outputs (ONNX Runtime, tens of microseconds): what edgekit's own path costs over the floors.
- throughput: inferences/s from 1, 4, 8 and 16 client threads (a client each: tritonclient, and
  in windows of their own http.client sending the same request) against sequential
  in-process runs in windows alternated with them, without dynamic batching, with 8 rows/2 ms
  and 16 rows/4 ms, and with two instances (``--instances 2``: the runtime divides the cores
  between two runs at once, and a request that comes alone takes a copy with every core); CPU time
  per inference of each side. Goal: >= 90 % of in-process at 8 clients, judged for each client: the
  clients share the cores with the server, and tritonclient spends about twice http.client's CPU on
  a request. The latency goal is judged on the server without batching, with one instance and with two.
- soak: 20,000 requests from 16 threads to a server with batching 8/2 and a 4 MiB body limit:
  ~70 % good (binary and JSON infer at batch 1 and 2, a picture to /classify), checked against
  in-process results (1e-4 relative); ~30 % bad, each of which must get its 4xx. The server must
  then be live, have grown < 10 % in RSS since request 1,000, log no ERROR line and exit 0 on SIGTERM.
Every server runs with ``--access-log off``.

``--split-cores`` gives the servers the first half of this process's CPUs and keeps the second half
for the clients and the in-process runs, so each side's model has the same cores and no client
competes with a server (on a device, the calling app has cores of its own). ``--no-soak`` skips the soak.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGEKIT_SAMPLES_DIR", str(ROOT / "samples" / "build"))  # as the Makefile sets it

import edgekit  # noqa: E402
from edgekit.hostinfo import cpu_count, cpu_name  # noqa: E402
from edgekit.tasks import ImageClassifier  # noqa: E402
from samples.build import INPUTS, build, sample_path  # noqa: E402

EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
MODEL = "efficientnet-lite0"  # a package served directly is named after its folder, version 1
# The servers compared, by their settings: dynamic batching (rows / ms), and two instances, for which
# the runtime splits the cores between two runs at once (OpenVINO's THROUGHPUT hint, two streams)
# while a request that comes alone runs on a second copy with every core.
BATCHING = {"off": [], "8/2": ["--max-batch-size", "8", "--max-queue-delay-ms", "2"],
            "16/4": ["--max-batch-size", "16", "--max-queue-delay-ms", "4"],
            "off, 2 instances": ["--instances", "2"]}
CONCURRENCY = (1, 4, 8, 16)
GOAL_ADDED_MS, GOAL_RATIO = 1.0, 0.90


class Server:
    """``edgekit serve`` in a subprocess: started on ``--port 0``, stopped with SIGTERM."""

    cpus: set[int] | None = None  # --split-cores: the servers' CPUs

    def __init__(self, source: Path, *flags: str) -> None:
        self._start([EDGEKIT, "serve", str(source), "--port", "0", "--json", *flags], " ".join(flags))

    def _start(self, argv: list[str], flags: str) -> None:
        """Run ``argv`` (pinned under --split-cores) and read the JSON line with its URL and pid."""
        self.flags = flags
        self.log = tempfile.TemporaryFile("w+")
        pin = [] if self.cpus is None else ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))]
        self.proc = subprocess.Popen([*pin, *argv], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"{' '.join(argv[:3])} did not start: {self.log.read()}")
        doc = json.loads(line)
        self.host, self.pid = doc["url"].split("://", 1)[1], doc["pid"]

    def client(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.host, connection_timeout=60, network_timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=60)
        try:
            return request(conn, "GET", path)
        finally:
            conn.close()

    def stop(self) -> dict:
        """SIGTERM; the exit code, and the stderr lines at ERROR level or not in the CLI's format."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.seek(0)
        lines = self.log.read().splitlines()
        errors = [s for s in lines if s.startswith(("edgekit: ERROR:", "edgekit: CRITICAL:"))]
        odd = [s for s in lines if not s.startswith("edgekit: ")]  # tracebacks, uvicorn's own lines
        heads = Counter(s for s in errors + odd if s and not s[0].isspace())  # a traceback's first and last
        return {"exit_code": code, "stderr_lines": len(lines), "error_lines": len(errors),
                "unformatted_lines": len(odd), "most_common": heads.most_common(8)}


def cpu_s(pid: int | None = None) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | list = b"",
            headers: dict | None = None) -> tuple[int, bytes]:
    """One HTTP request on a kept-alive connection (a list body goes chunked); reconnects once if dropped."""
    for attempt in (0, 1):
        try:
            conn.request(method, path, body=iter(body) if isinstance(body, list) else body, headers=headers or {},
                         encode_chunked=isinstance(body, list))
            r = conn.getresponse()
            return r.status, r.read()
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            if attempt:
                raise
    raise AssertionError


def raw(host: str, payload: bytes, *, hang_up: bool) -> int | None:
    """Bytes on a fresh socket: the status of the reply, or None when we hang up without reading one."""
    h, p = host.rsplit(":", 1)
    with socket.create_connection((h, int(p)), timeout=60) as s:
        s.sendall(payload)
        if hang_up:
            return None
        reply = s.recv(64)
    return int(reply.split()[1]) if reply.startswith(b"HTTP/1.1 ") else -1


def start(fn, n: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def infer(client, x: np.ndarray, *, binary: bool = True, version: str = "", model: str = MODEL) -> np.ndarray:
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    return client.infer(model, [inp], model_version=version, outputs=[out]).as_numpy("logits")


def latency(model, srv: Server, x: np.ndarray, calls: int, block: int = 20, floors: dict | None = None) -> dict:
    """Per-call times at concurrency 1: blocks of in-process calls, tritonclient calls, the same request by
    http.client, and (``floors``) the bare stack; the order turned round each round."""
    client = srv.client()
    body, headers = binary_body(list(x.shape), x.tobytes(), outputs=True)
    conns = {"raw": http.client.HTTPConnection(srv.host, timeout=60)}
    conns.update({n: http.client.HTTPConnection(f.host, timeout=60) for n, f in (floors or {}).items()})

    def post(name: str) -> None:
        model_name = SLICE_MODEL if name == "no_model" else MODEL
        status, _ = request(conns[name], "POST", f"/v2/models/{model_name}/infer", body, headers)
        assert status == 200, status

    fns = {"in_process": lambda: model.run({"image": x}), "server": lambda: infer(client, x),
           **{n: functools.partial(post, n) for n in conns}}
    # tritonclient against the bare app and the slice-only model too: what the client itself costs
    tritons = {n: floors[n].client() for n in ("floor", "no_model") if n in (floors or {})}
    fns.update({f"{n}_triton": functools.partial(infer, c, x, model=SLICE_MODEL if n == "no_model" else MODEL)
                for n, c in tritons.items()})
    times: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in ("server", "raw")}  # the client's own CPU a call
    order = list(fns)
    for _ in range(block):
        for fn in fns.values():
            fn()
    for r in range(max(2, calls // block)):
        for name in order if r % 2 == 0 else order[::-1]:
            fn, out, used = fns[name], times[name], cpu.get(name)
            for _ in range(block):
                c0, t0 = time.thread_time(), time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
                if used is not None:
                    used.append(time.thread_time() - c0)
    for c in (client, *tritons.values(), *conns.values()):
        c.close()
    doc = {n: {f"p{q}_ms": float(np.percentile(t, q)) * 1e3 for q in (50, 99)} for n, t in times.items()}
    a = doc["in_process"]
    doc.update({f"added_{k}": doc["server"][k] - a[k] for k in ("p50_ms", "p99_ms")})
    doc.update({f"raw_added_{k}": doc["raw"][k] - a[k] for k in ("p50_ms", "p99_ms")})
    doc["calls"] = len(times["server"])
    doc["client_cpu_ms"] = {n: float(np.median(c)) * 1e3 for n, c in cpu.items()}
    return doc


SLICE_MODEL = "slice-only"


def slice_model(folder: Path, shape: tuple) -> Path:
    """An ONNX model taking the image model's input and returning its first 1000 values as
    ``logits``: edgekit's whole request path with next to no inference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ints = {n: numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("s", [0]), ("e", [1000]), ("a", [1]))}
    g = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("Slice", ["flat", "s", "e", "a"], ["logits"])], SLICE_MODEL,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 1000])], list(ints.values()))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / f"{SLICE_MODEL}.onnx"
    onnx.save(model, str(path))
    return path


def floor_server(hop: bool) -> int:
    """``--floor-server``: a bare ASGI app on uvicorn configured as ``edgekit serve`` runs it. It reads
    the whole body and answers as many bytes as edgekit's binary reply to the benchmark's request."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import uvicorn

    pool = ThreadPoolExecutor(1)
    head = json.dumps({"model_name": MODEL, "model_version": "1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, 1000], "parameters": {"binary_data_size": 4000}}]})
    reply = head.encode() + bytes(4000)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if hop:
            await asyncio.get_running_loop().run_in_executor(pool, len, body)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"), (b"content-length", str(len(reply)).encode()),
            (b"inference-header-content-length", str(len(head)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    from edgekit.serve.server import KEEP_ALIVE_S

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    print(json.dumps({"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "pid": os.getpid()}), flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="auto", http="auto",
                            server_header=False, timeout_keep_alive=KEEP_ALIVE_S)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


class FloorServer(Server):
    """This script's ``--floor-server``: the bare app, started and stopped like ``edgekit serve``."""

    def __init__(self, *, hop: bool) -> None:  # noqa: D107
        self._start([sys.executable, __file__, "--floor-server", "hop" if hop else "plain"],
                    "bare uvicorn app" + (", one thread hand-off" if hop else ""))


def local_rate(model, x: np.ndarray, seconds: float) -> tuple[float, float]:
    """Sequential Model.run: inferences/s and this process's CPU ms per inference."""
    n, c0, t0 = 0, cpu_s(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run({"image": x})
        n += 1
    return n / (time.perf_counter() - t0), (cpu_s() - c0) / n * 1e3


def server_rate(srv: Server, x: np.ndarray, threads: int, seconds: float, *,
                lean: bool = False) -> tuple[float, float, float]:
    """Inferences/s from ``threads`` client threads for ``seconds``; server and client CPU ms per inference.

    Each thread is a tritonclient, or (``lean``) an http.client connection sending the same binary
    request: a client that spends less of the shared cores on itself.
    """
    # a client that fails before the clock starts breaks the barrier rather than leaving the run waiting
    done, stop, ready = [0] * threads, threading.Event(), threading.Barrier(threads + 1, timeout=120)
    body, headers = binary_body(list(x.shape), x.tobytes(), outputs=True)

    def work(i: int) -> None:
        if lean:
            conn = http.client.HTTPConnection(srv.host, timeout=60)

            def call() -> None:
                status, text = request(conn, "POST", f"/v2/models/{MODEL}/infer", body, headers)
                assert status == 200, text[:200]
        else:
            client = srv.client()
            call = functools.partial(infer, client, x)
        call()  # connect and warm before the clock starts
        ready.wait()
        while not stop.is_set():
            call()
            done[i] += 1
        (conn if lean else client).close()

    pool = start(work, threads)
    ready.wait()
    s0, c0, t0 = cpu_s(srv.pid), cpu_s(), time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    n = sum(done)
    return n / (time.perf_counter() - t0), (cpu_s(srv.pid) - s0) / n * 1e3, (cpu_s() - c0) / n * 1e3


def throughput(model, servers: dict[str, Server], x: np.ndarray, rounds: int, seconds: float) -> list[dict]:
    """Windows of in-process runs, tritonclient and http.client clients side by side (the order turned
    round each round); medians of rates and ratios."""
    runs: dict = {(n, c): [] for n in servers for c in CONCURRENCY}
    for r in range(rounds):
        for c in CONCURRENCY:
            for n, srv in servers.items():
                windows = {"local": functools.partial(local_rate, model, x, seconds),
                           "triton": functools.partial(server_rate, srv, x, c, seconds),
                           "lean": functools.partial(server_rate, srv, x, c, seconds, lean=True)}
                order = list(windows)[r % 3:] + list(windows)[:r % 3]  # with the reversal: all 6 orders
                got = {k: windows[k]() for k in (order if r % 2 == 0 else order[::-1])}
                local, remote, lean = got["local"], got["triton"], got["lean"]
                runs[n, c].append((*local, *remote, remote[0] / local[0], *lean, lean[0] / local[0]))
        print(f"  throughput round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    keys = ("in_process_per_s", "in_process_cpu_ms", "server_per_s", "server_cpu_ms", "client_cpu_ms", "ratio",
            "raw_per_s", "raw_server_cpu_ms", "raw_client_cpu_ms", "raw_ratio")
    return [{"batching": n, "concurrency": c, **{k: statistics.median(v) for k, v in zip(keys, zip(*runs[n, c]))}}
            for (n, c) in runs]


def binary_body(shape: list, data: bytes, *, size: int | None = None, datatype: str = "FP32",
                outputs: bool = False) -> tuple[bytes, dict]:
    """An infer request with binary input data (``outputs``: asking for binary logits, as tritonclient does)."""
    doc = {"inputs": [{"name": "image", "datatype": datatype, "shape": shape,
                       "parameters": {"binary_data_size": len(data) if size is None else size}}]}
    if outputs:
        doc["outputs"] = [{"name": "logits", "parameters": {"binary_data": True}}]
    head = json.dumps(doc)
    return head.encode() + data, {"Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream"}


def multipart(*files: bytes) -> tuple[bytes, dict]:
    parts = [b'--B\r\nContent-Disposition: form-data; name="f%d"; filename="f%d.jpg"\r\n\r\n%s\r\n' % (i, i, f)
             for i, f in enumerate(files)]
    return b"".join(parts) + b"--B--\r\n", {"Content-Type": "multipart/form-data; boundary=B"}


def bad_requests(x: np.ndarray, over_limit: int) -> dict:
    """Requests the server must refuse: kind -> (status, path or None for a raw socket, body, headers)."""
    data, shape, octets = x.tobytes(), list(x.shape), {"Content-Type": "application/octet-stream"}
    huge = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1000000, *shape[1:]],
                                   "data": [0.0, 1.0, 2.0]}]}).encode()
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    return {
        "unknown model": (404, "/v2/models/no-such-model/infer", *binary_body(shape, data)),
        "unknown version": (404, f"/v2/models/{MODEL}/versions/7/infer", *binary_body(shape, data)),
        "wrong shape": (400, "/infer", *binary_body([*shape[:-1], shape[-1] - 1], data[:-x.nbytes // shape[-1]])),
        "wrong datatype": (400, "/infer", *binary_body(shape, x.astype(np.float64).tobytes(), datatype="FP64")),
        "binary shorter than declared": (400, "/infer", *binary_body(shape, data[:-4], size=len(data))),
        "binary longer than declared": (400, "/infer", *binary_body(shape, data + bytes(4), size=len(data))),
        "binary size != shape": (400, "/infer", *binary_body(shape, data[:-4])),
        "malformed JSON": (400, "/infer", b'{"inputs": [{"name": "image", "datatype": ', {}),
        "huge shape, tiny binary": (400, "/infer", *binary_body([1000000, *shape[1:]], data[:16])),
        "huge shape, tiny JSON": (400, "/infer", huge, {"Content-Type": "application/json"}),
        "body over the limit": (413, "/infer", bytes(over_limit), octets),
        "chunked body over the limit": (413, "/infer", [bytes(2**16)] * (over_limit // 2**16), octets),
        "garbage upload to /classify": (400, "/classify", np.random.default_rng(1).bytes(4096), octets),
        "multipart with two files": (400, "/classify", *multipart(b"a", b"b")),
        "not HTTP": (400, None, b"GARBAGE \x01\x02\r\n\r\n", None),
        "head over 64 KiB": (431, None, b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                             None),
        "client gone mid-body": (None, None, head + data[:4096], None),
    }


GOOD = {"binary": 45, "binary, version 1": 10, "binary, batch 2": 8, "json": 3, "classify": 2,
        "classify, multipart": 2}  # weights, %; bad requests share 30 %


def soak(model, srv: Server, n: int, threads: int, warm_at: int, over_limit: int) -> dict:
    rng = np.random.default_rng(0)
    pool = (np.round(rng.standard_normal((16, *model.inputs[0].shape[1:])) * 8) / 8).astype(np.float32)[:, None]
    refs = [model.run({"image": x})["logits"] for x in pool]
    picture = (INPUTS / "images" / "cat.jpg").read_bytes()
    expected = ImageClassifier(model).classify(picture, top_k=5)
    bad = bad_requests(pool[0], over_limit)
    good = dict(GOOD)
    if isinstance(model.inputs[0].shape[0], int):  # a batch-1 artifact (TFLite): two rows are a wrong shape
        del good["binary, batch 2"]
        two = binary_body([2, *pool[0].shape[1:]], pool[0].tobytes() * 2)
        bad["batch 2 on a batch-1 model"] = (400, "/infer", *two)
    weights = np.array([*good.values(), *[30 / len(bad)] * len(bad)])
    jobs = list(rng.choice([*good, *bad], size=n, p=weights / weights.sum()))
    tallies = [(Counter(), Counter(), Counter()) for _ in range(threads)]  # sent, right, problems
    progress, rss = itertools.count(1), {"samples": []}
    prefix = f"/v2/models/{MODEL}"

    def check(kind: str, client, conn, r: np.random.Generator) -> str | None:
        """None when the answer is right, else what was wrong."""
        if kind in bad:
            want, path, body, headers = bad[kind]
            if path is None:
                status, text = raw(srv.host, body, hang_up=want is None), b"{}"
            else:
                status, text = request(conn, "POST", path if path.startswith("/v2") else prefix + path, body, headers)
            ok = status == want and (want is None or path is None or "error" in json.loads(text))
            return None if ok else f"{status} (want {want}): {text[:100]!r}"
        if kind.startswith("classify"):
            body, headers = multipart(picture) if kind.endswith("multipart") else (picture, {})
            status, text = request(conn, "POST", prefix + "/classify?top_k=5", body, headers)
            got = json.loads(text).get("categories", []) if status == 200 else []
            ok = [c["index"] for c in got] == [c.index for c in expected] and np.allclose(
                [c["score"] for c in got], [c.score for c in expected], rtol=1e-4, atol=1e-6)
            return None if ok else f"{status}: {text[:100]!r}"
        idx = r.choice(len(pool), 2 if kind.endswith("batch 2") else 1, replace=False)
        x, ref = np.concatenate([pool[i] for i in idx]), np.concatenate([refs[i] for i in idx])
        try:
            y = infer(client, x, binary=kind != "json", version="1" if kind.endswith("version 1") else "")
        except httpclient.InferenceServerException as e:
            return f"{e.status()}: {e.message()[:100]}"
        err = float(np.abs(y - ref).max() / np.abs(ref).max()) if y.shape == ref.shape else np.inf
        return None if err <= 1e-4 else f"relative difference {err:.2e}, shape {y.shape}"

    def work(i: int) -> None:
        client, conn = srv.client(), http.client.HTTPConnection(srv.host, timeout=60)
        r, (sent, right, problems) = np.random.default_rng(100 + i), tallies[i]
        for kind in jobs[i::threads]:
            try:
                problem = check(kind, client, conn, r)
            except Exception as e:  # a dropped connection or an unreadable answer is a failure too
                problem = f"{type(e).__name__}: {e}"
            sent[kind] += 1
            right[kind] += problem is None
            if problem is not None:
                problems[kind, problem[:100]] += 1
            k = next(progress)
            if k == warm_at:
                rss["warm"] = psutil.Process(srv.pid).memory_info().rss
            if k % 1000 == 0:
                rss["samples"].append(round(psutil.Process(srv.pid).memory_info().rss / 2**20, 1))
        client.close()
        conn.close()

    t0 = time.perf_counter()
    for t in start(work, threads):
        t.join()
    elapsed = time.perf_counter() - t0
    sent, right, problems = (sum((t[j] for t in tallies), Counter()) for j in range(3))
    end = psutil.Process(srv.pid).memory_info().rss
    warm = rss.get("warm", end)
    return {"requests": sum(sent.values()), "threads": threads, "seconds": elapsed,
            "good_sent": sum(sent[k] for k in good), "good_right": sum(right[k] for k in good),
            "bad_sent": sum(sent[k] for k in bad), "bad_right": sum(right[k] for k in bad),
            "by_kind": {k: [right[k], sent[k]] for k in [*good, *bad]},
            "problems": [{"kind": k, "problem": p, "count": c} for (k, p), c in problems.items()],
            "live": srv.get("/v2/health/live")[0] == 200, "ready": srv.get("/v2/health/ready")[0] == 200,
            "rss_warm_mb": warm / 2**20, "rss_end_mb": end / 2**20, "rss_every_1000_mb": rss["samples"],
            "rss_growth_pct": (end / warm - 1) * 100}


def run(args) -> dict:
    pkg = sample_path("image")
    if not (pkg / "edgekit.json").exists():
        build(kinds=["image"])
    servers: dict[str, Server] = {}
    stops: dict = {}
    try:
        for n, flags in BATCHING.items():
            servers[n] = Server(pkg, *flags, "--access-log", "off")
        ek = json.loads(servers["off"].get(f"/v2/models/{MODEL}")[1])["edgekit"]
        model = edgekit.load(pkg / ek["artifact"], device=f"{ek['backend']}:{ek['device']}", strict=True)
        x = np.random.default_rng(0).standard_normal((1, *model.inputs[0].shape[1:])).astype(np.float32)
        np.testing.assert_allclose(infer(servers["off"].client(), x), model.run({"image": x})["logits"], rtol=1e-4)
        cores = cpu_count() if args.split is None else len(args.split["server"]) + len(args.split["client"])
        doc = {"cpu": cpu_name(), "cores": cores, "split": args.split, "package": str(pkg),
               "artifact": ek["artifact"],
               "backend": ek["backend"], "device": ek["device"], "precision": ek["precision"],
               "servers": {n: s.flags for n, s in servers.items()}}
        floors: dict[str, Server] = {}
        scratch = tempfile.TemporaryDirectory()
        try:
            floors["floor"], floors["floor_hop"] = FloorServer(hop=False), FloorServer(hop=True)
            floors["no_model"] = Server(slice_model(Path(scratch.name), x.shape), "--access-log", "off")
            doc["latency"] = {n: latency(model, s, x, args.calls, floors=floors if n == "off" else None)
                              for n, s in servers.items()}
        finally:
            for f in floors.values():
                f.proc.terminate()
                f.proc.wait(60)
            scratch.cleanup()
        print("  latency done", file=sys.stderr, flush=True)
        doc["throughput"] = throughput(model, servers, x, args.rounds, args.seconds)
    finally:
        stops = {n: s.stop() for n, s in servers.items()}
    doc["stopped"] = stops
    if args.no_soak:
        return doc
    srv = Server(pkg, *BATCHING["8/2"], "--access-log", "off", "--max-body-mb", str(args.max_body_mb))
    try:
        chose = json.loads(srv.get(f"/v2/models/{MODEL}")[1])["edgekit"]["artifact"]
        if chose != ek["artifact"]:
            raise RuntimeError(f"the soak server chose {chose}, the others {ek['artifact']}")
        over = int(args.max_body_mb * 2**20) + 2**20
        doc["soak"] = {"server": srv.flags, **soak(model, srv, args.requests, 16, min(1000, args.requests // 4), over)}
    finally:
        stops["soak"] = srv.stop()
    doc["stopped"] = stops
    return doc


def goals(doc: dict) -> dict:
    stops = doc["stopped"]
    g = {}
    for name in ("off", "off, 2 instances"):  # the latency goal is set without batching
        r = doc["latency"].get(name)
        if r is None:
            continue
        g[f"added p50 <= {GOAL_ADDED_MS:g} ms ({name}, tritonclient)"] = r["added_p50_ms"] <= GOAL_ADDED_MS
        # the same request from http.client: less of the client's own time in it
        g[f"added p50 <= {GOAL_ADDED_MS:g} ms ({name}, http.client)"] = r["raw_added_p50_ms"] <= GOAL_ADDED_MS
    for r in doc["throughput"]:
        if r["concurrency"] == 8:
            goal = f"8 clients, {r['batching']}: >= {GOAL_RATIO:.0%} of in-process"
            g[f"{goal} (tritonclient)"] = r["ratio"] >= GOAL_RATIO
            g[f"{goal} (http.client)"] = r["raw_ratio"] >= GOAL_RATIO
    g["every server exited 0 on SIGTERM"] = all(v["exit_code"] == 0 for v in stops.values())
    if "soak" not in doc:
        return g
    s = doc["soak"]
    g.update({"soak: every good request answered right": s["good_right"] == s["good_sent"],
              "soak: every bad request refused with its status": s["bad_right"] == s["bad_sent"],
              "soak: live and ready at the end": s["live"] and s["ready"],
              "soak: RSS growth < 10 %": s["rss_growth_pct"] < 10,
              "soak: no ERROR line on stderr": stops["soak"]["error_lines"] == 0})
    return g


def md(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |\n| --- |" + " ---: |" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


def report(doc: dict) -> None:
    split = doc.get("split")
    where = (f"servers on CPUs {split['server']}, clients and in-process runs on CPUs {split['client']}"
             if split else "servers, clients and in-process runs share every CPU")
    print(f"\nedgekit serve vs in-process Model.run: {doc['artifact']} of {doc['package']} on {doc['backend']}:"
          f"{doc['device']} ({doc['precision']}); {doc['cpu']}, {doc['cores']} cores ({where}); "
          f"servers: --access-log off\n")
    print("Latency, 1 client, batch 1, tritonclient.http binary tensors, ms:\n")
    md(["server", "calls", "in-process p50 / p99", "server p50 / p99", "added p50 / p99",
        "added p50 / p99, http.client"],
       [[n, r["calls"], f"{r['in_process']['p50_ms']:.2f} / {r['in_process']['p99_ms']:.2f}",
         f"{r['server']['p50_ms']:.2f} / {r['server']['p99_ms']:.2f}",
         f"{r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f}",
         f"{r['raw_added_p50_ms']:+.2f} / {r['raw_added_p99_ms']:+.2f}"] for n, r in doc["latency"].items()])
    r = doc["latency"]["off"]
    if "floor" in r:
        print("\nWhere the added time goes (no batching; the same binary request, p50 / p99 ms; the floors are a bare "
              "ASGI app on the same uvicorn that reads the body and answers as many bytes):\n")
        base = r["in_process"]["p50_ms"]
        added = {"raw", "server"}  # the floors run no model: their whole round trip is what the stack costs
        md(["path", "p50 / p99", "over in-process p50"],
           [[what, f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}",
             f"{r[k]['p50_ms'] - base:+.2f}" if k in added else ""]
            for k, what in (("in_process", "in-process Model.run"), ("floor", "floor: bare uvicorn, http.client"),
                            ("floor_triton", "floor: bare uvicorn, tritonclient"),
                            ("floor_hop", "floor + one thread hand-off"),
                            ("no_model", "edgekit serve, a model that only slices its input, http.client"),
                            ("no_model_triton", "edgekit serve, a model that only slices its input, tritonclient"),
                            ("raw", "edgekit serve, http.client"),
                            ("server", "edgekit serve, tritonclient")) if k in r])
        c = r.get("client_cpu_ms")  # absent from runs of an earlier revision
        if c:
            print(f"\nThe client's own CPU a call (its thread, median): tritonclient {c['server']:.2f} ms, "
                  f"http.client {c['raw']:.2f} ms. The difference is client work on the request's path.")
    print("\nThroughput of batch-1 requests, medians (in-process: sequential Model.run); CPU ms per inference:\n")
    md(["server", "clients", "in-process /s", "tritonclient: server /s", "server / in-process", "CPU in-process",
        "CPU server", "CPU client", "http.client: server /s", "server / in-process", "CPU server", "CPU client"],
       [[r["batching"], r["concurrency"], f"{r['in_process_per_s']:.0f}", f"{r['server_per_s']:.0f}",
         f"{r['ratio']:.0%}", f"{r['in_process_cpu_ms']:.2f}", f"{r['server_cpu_ms']:.2f}",
         f"{r['client_cpu_ms']:.2f}", f"{r['raw_per_s']:.0f}", f"{r['raw_ratio']:.0%}",
         f"{r['raw_server_cpu_ms']:.2f}", f"{r['raw_client_cpu_ms']:.2f}"] for r in doc["throughput"]])
    codes = ", ".join(f"{n} {v['exit_code']}" for n, v in doc["stopped"].items())
    if "soak" not in doc:
        print(f"\nexit codes on SIGTERM: {codes}")
        print_goals(doc)
        return
    s, st = doc["soak"], doc["stopped"]["soak"]
    print(f"\nSoak ({s['server']}): {s['requests']} requests from {s['threads']} threads in {s['seconds']:.0f} s\n")
    md(["request", "right / sent"], [[k, f"{ok} / {n}"] for k, (ok, n) in s["by_kind"].items()])
    for p in s["problems"]:
        print(f"  WRONG {p['count']}x {p['kind']}: {p['problem']}")
    print(f"\nlive {s['live']}, ready {s['ready']}; RSS {s['rss_warm_mb']:.0f} MiB at request 1000 -> "
          f"{s['rss_end_mb']:.0f} MiB at the end ({s['rss_growth_pct']:+.1f} %); stderr: {st['stderr_lines']} lines, "
          f"{st['error_lines']} at ERROR, {st['unformatted_lines']} not in the CLI's format")
    for line, count in st["most_common"]:
        print(f"  stderr {count}x: {line[:150]}")
    print(f"exit codes on SIGTERM: {codes}")
    print_goals(doc)


def print_goals(doc: dict) -> None:
    print("\nGoals (the http.client lines carry less of the client's own work, 0.2 ms of CPU a call; "
          "the tritonclient lines more, 0.4 ms):")
    for name, ok in doc["goals"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--calls", type=int, default=2000, help="latency: timed calls of each side per server")
    ap.add_argument("--rounds", type=int, default=6,
                    help="throughput: windows of each side per setting (6 runs the three sides in every order)")
    ap.add_argument("--seconds", type=float, default=1.0, help="throughput: seconds per window")
    ap.add_argument("--requests", type=int, default=20000, help="soak: requests")
    ap.add_argument("--max-body-mb", type=float, default=4, help="soak: the server's body limit")
    ap.add_argument("--split-cores", action="store_true",
                    help="servers on the first half of the CPUs; clients and in-process runs on the rest")
    ap.add_argument("--no-soak", action="store_true", help="latency and throughput only")
    ap.add_argument("--floor-server", choices=["plain", "hop"], help=argparse.SUPPRESS)  # the bare app, run by itself
    args = ap.parse_args()
    if args.floor_server:
        return floor_server(args.floor_server == "hop")
    args.split = None
    if args.split_cores:
        if not hasattr(os, "sched_setaffinity") or shutil.which("taskset") is None:
            ap.error("--split-cores needs Linux's sched_setaffinity and taskset (util-linux)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--split-cores needs at least 2 CPUs")
        half = len(cpus) // 2
        args.split = {"server": cpus[:half], "client": cpus[half:]}
        Server.cpus = set(args.split["server"])
        os.sched_setaffinity(0, args.split["client"])  # before any runtime or client thread starts
    if args.quick:
        args.calls, args.rounds, args.seconds, args.requests = 200, 1, 0.3, 1200
    doc = run(args)
    doc["goals"] = goals(doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        report(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
