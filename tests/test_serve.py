"""`edgekit serve`: the real server in a subprocess on 127.0.0.1 and an ephemeral port, spoken to
with tritonclient (http) as any Triton/KServe client would, and with raw HTTP for malformed requests."""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

import edgekit
from edgekit import package
from edgekit.serve import protocol, repository
from samples import synthetic as builders

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ROOT / "samples" / "inputs"


# -- helpers ------------------------------------------------------------------------------------

class Server:
    """`edgekit serve ... --port 0 --json` in a subprocess; ready when it prints its URL."""

    def __init__(self, *args: str, timeout: float = 180) -> None:
        self.stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgekit-serve-{os.getpid()}-{id(self)}.log"
        self._stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", *args, "--port", "0", "--json"],
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT)
        line = _readline(self.proc, timeout)
        if not line:
            self.proc.kill()
            raise AssertionError(f"edgekit serve did not start:\n{self.log()}")
        self.url = json.loads(line)["url"]
        self.host = self.url.removeprefix("http://")
        self.client = tc.InferenceServerClient(self.host, concurrency=1)

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """Raw HTTP: (status, headers, parsed JSON or bytes)."""
        conn = http.client.HTTPConnection(self.host, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        try:
            return r.status, dict(r.getheaders()), json.loads(data) if data else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return r.status, dict(r.getheaders()), data

    def healthy(self) -> bool:
        return self.request("GET", "/v2/health/live")[0] == 200 and self.request("GET", "/v2/health/ready")[0] == 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._stderr.close()
        return self.proc.returncode


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


def wait_for(predicate, timeout: float = 30, what: str = "condition", interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def make_package(dest: Path, model_file: Path, name: str) -> Path:
    staging = package.staging_dir(dest)
    shutil.copy(model_file, staging / model_file.name)
    return package.publish(staging, dest, {"name": name, "artifacts": [
        {"path": model_file.name, "format": "onnx", "precision": "fp32"}]})


def mlp_package(dest: Path, seed: int) -> tuple[Path, tuple]:
    w = builders.mlp_weights(seed=seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx_file = builders.mlp_onnx(dest.parent / f"mlp-{seed}.onnx", w)
    return make_package(dest, onnx_file, "mlp"), w


def mlp_answer_is_right(host: str, xs: list, w: tuple, k: int) -> bool:
    """One client's request for ``xs[k]`` to the "mlp" model at ``host``, checked against NumPy."""
    client = tc.InferenceServerClient(host)
    try:
        got = infer(client, "mlp", {"x": xs[k]}).as_numpy("logits")
    finally:
        client.close()
    np.testing.assert_allclose(got, builders.mlp_reference(xs[k], w), rtol=1e-5, atol=1e-5)
    return True


def infer(client, model: str, arrays: dict, *, binary: bool = True, version: str = "", outputs=None, headers=None):
    inputs = []
    for name, x in arrays.items():
        dt = "BYTES" if x.dtype == object else tc.np_to_triton_dtype(x.dtype)
        i = tc.InferInput(name, list(x.shape), dt)
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    outs = [tc.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(model, inputs, model_version=version, outputs=outs, headers=headers)


def error_of(fn) -> tuple[int, str]:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return int(e.value.status()), e.value.message()


# -- the sample packages served directly -------------------------------------------------------

def image_shape(samples, batch: int = 1) -> tuple[int, ...]:
    """The input shape of the artifact `auto` picks for the image sample (the server picks the same
    one from the same edgekit.json): NCHW or NHWC, dynamic or fixed batch, as measured at build."""
    with edgekit.load(samples["image"]) as m:
        shape = m.inputs[0].shape
    return (shape[0] if isinstance(shape[0], int) else batch, *shape[1:])


@pytest.fixture(scope="module")
def served(samples):
    server = Server(str(samples["image"]), str(samples["text"]), str(samples["audio"]))
    yield server
    assert server.stop() == 0, server.log()


def test_health_and_metadata(served, samples):
    c = served.client
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "edgekit" and "binary_tensor_data" in meta["extensions"]
    image = samples["image"].name
    assert c.is_model_ready(image) and c.is_model_ready(image, "1")
    md = c.get_model_metadata(image)
    assert md["versions"] == ["1"]
    with edgekit.load(samples["image"]) as m:  # what `auto` picks here, NCHW or NHWC
        assert md["inputs"] == [{"name": "image", "datatype": "FP32", "shape": protocol.dims(m.inputs[0].shape)}]
        assert md["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": protocol.dims(m.outputs[0].shape)}]
        assert md["edgekit"]["artifact"] == m.path.name
    assert md["edgekit"]["task"] == "image-classification" and md["edgekit"]["task_endpoints"] == ["classify"]
    assert c.get_model_metadata(image, "1") == md
    text = c.get_model_metadata(samples["text"].name)
    assert [i["datatype"] for i in text["inputs"]] == ["INT64"] * 3
    assert text["edgekit"]["task_inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    index = c.get_model_repository_index()
    assert {(r["name"], r["state"]) for r in index} == {(samples[k].name, "READY") for k in samples}


def test_model_configuration_extension(served, samples):
    """tritonclient's get_model_config (and perf_analyzer, which reads it) get Triton's model config."""
    image = samples["image"].name
    config = served.client.get_model_config(image)
    assert served.client.get_model_config(image, "1") == config
    assert "model_configuration" in served.client.get_server_metadata()["extensions"]
    with edgekit.load(samples["image"]) as m:
        assert config["name"] == image and config["platform"] == f"edgekit_{m.backend}"
        assert config["max_batch_size"] == 0  # no dynamic batching: dims are whole shapes
        (image,), (logits,) = config["input"], config["output"]
        assert image == {"name": "image", "data_type": "TYPE_FP32", "dims": protocol.dims(m.inputs[0].shape),
                         "format": f"FORMAT_{m.inputs[0].layout}", "is_shape_tensor": False,
                         "allow_ragged_batch": False, "optional": False}  # Triton's image client reads format
        assert logits == {"name": "logits", "data_type": "TYPE_FP32", "dims": protocol.dims(m.outputs[0].shape),
                          "is_shape_tensor": False}
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert config["parameters"]["edgekit_artifact"] == {"string_value": m.path.name}
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["instance_group"][0]["count"] == 1 and "dynamic_batching" not in config
    text = served.client.get_model_config(samples["text"].name)
    assert [i["data_type"] for i in text["input"]] == ["TYPE_INT64"] * 3
    assert error_of(lambda: served.client.get_model_config("no-such-model"))[0] == 404


def test_infer_json_and_binary_equal_in_process(served, samples):
    with edgekit.load(samples["image"]) as m:
        x = np.random.default_rng(1).standard_normal(image_shape(samples, batch=2)).astype(np.float32)
        want = m.run(x)["logits"]
    name = samples["image"].name
    for binary in (True, False):
        got = infer(served.client, name, {"image": x}, binary=binary, outputs=["logits"]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = infer(served.client, name, {"image": x}).as_numpy("logits")  # no outputs named: all, binary
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    i = tc.InferInput("image", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    got = served.client.infer(name, [i], request_compression_algorithm="gzip").as_numpy("logits")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    with edgekit.load(samples["text"]) as m:  # INT64 tensors, JSON and binary
        ids = np.array([[101, 7592, 2088, 102], [101, 2204, 2851, 102]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        want = m.run(feeds)["sentence_embedding"]
    for binary in (True, False):
        got = infer(served.client, samples["text"].name, feeds, binary=binary).as_numpy("sentence_embedding")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_task_endpoints_answer_as_the_sdk(served, samples):
    from edgekit.tasks import ImageClassifier, TextClassifier, TextEmbedder, VoiceActivityDetector

    image, text, audio = (samples[k].name for k in ("image", "text", "audio"))
    cat = (INPUTS / "images" / "cat.jpg").read_bytes()
    status, _, doc = served.request("POST", f"/v2/models/{image}/classify?top_k=5", cat,
                                    {"Content-Type": "image/jpeg"})
    assert status == 200, doc
    with ImageClassifier(samples["image"]) as clf:
        want = [c.to_dict() for c in clf.classify(INPUTS / "images" / "cat.jpg", top_k=5)]
    assert [c["index"] for c in doc["categories"]] == [c["index"] for c in want]
    np.testing.assert_allclose([c["score"] for c in doc["categories"]], [c["score"] for c in want], rtol=1e-5)
    assert any("cat" in c["label"] for c in doc["categories"])
    # the same file as a multipart form (curl -F file=@cat.jpg)
    boundary = "edgekitboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + cat + f"\r\n--{boundary}--\r\n".encode()
    status, _, doc2 = served.request("POST", f"/v2/models/{image}/versions/1/classify?top_k=5", form,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and doc2["categories"] == doc["categories"]
    import zlib
    for encoding, packed in (("deflate", zlib.compress(form)), ("gzip", __import__("gzip").compress(form))):
        status, _, doc3 = served.request("POST", f"/v2/models/{image}/classify?top_k=5", packed, {
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Encoding": encoding})
        assert status == 200 and doc3["categories"] == doc["categories"], (encoding, doc3)

    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    status, _, doc = served.request("POST", f"/v2/models/{text}/embed", json.dumps({"texts": sentences}).encode())
    assert status == 200 and doc["shape"] == [3, 384]
    with TextEmbedder(samples["text"]) as emb:
        np.testing.assert_allclose(np.array(doc["embeddings"]), emb.embed(sentences), rtol=1e-5, atol=1e-6)
        # BYTES on the protocol's own endpoint: strings in, embeddings out
        got = infer(served.client, text, {"text": np.array([s.encode() for s in sentences], dtype=object)})
        np.testing.assert_allclose(got.as_numpy("embedding"), emb.embed(sentences), rtol=1e-5, atol=1e-6)
    labels = ["sports", "cooking", "politics"]
    body = {"text": "The striker scored twice in the final match.", "labels": labels, "top_k": 3}
    status, _, doc = served.request("POST", f"/v2/models/{text}/classify", json.dumps(body).encode())
    assert status == 200 and doc["categories"][0]["label"] == "sports"
    with TextClassifier(samples["text"], labels=labels) as clf:
        assert [c.label for c in clf.classify(body["text"], top_k=3)] == [c["label"] for c in doc["categories"]]

    speech = INPUTS / "audio" / "speech.wav"
    status, _, doc = served.request("POST", f"/v2/models/{audio}/detect", speech.read_bytes(),
                                    {"Content-Type": "audio/wav"})
    assert status == 200 and doc["segments"], doc
    with VoiceActivityDetector(samples["audio"]) as vad:
        want = [s.to_dict() for s in vad.detect(speech)]
    assert [(s["start_s"], s["end_s"]) for s in doc["segments"]] == [(s["start_s"], s["end_s"]) for s in want]
    silence = (INPUTS / "audio" / "silence.wav").read_bytes()
    status, _, doc = served.request("POST", f"/v2/models/{audio}/detect", silence)
    assert status == 200 and doc["segments"] == []
    # the wrong verb for a task, and a file that is not what the task reads
    assert served.request("POST", f"/v2/models/{audio}/classify", speech.read_bytes())[0] == 404
    status, _, doc = served.request("POST", f"/v2/models/{image}/classify", b"not an image at all")
    assert status == 400 and "image" in doc["error"]
    status, _, doc = served.request("POST", f"/v2/models/{audio}/detect", b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert status == 400 and "audio" in doc["error"]
    status, _, doc = served.request("POST", f"/v2/models/{text}/embed", b'{"texts": []}')
    assert status == 400 and "texts" in doc["error"]
    # "\udcff" is valid JSON but not valid Unicode: 400, on the task endpoints and as BYTES
    bytes_input = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\\udcff"]}]}'
    for route, body in (("embed", b'{"texts": ["ok", "\\udcff"]}'),
                        ("classify", b'{"text": "x", "labels": ["\\udcff"]}'), ("infer", bytes_input)):
        status, _, doc = served.request("POST", f"/v2/models/{text}/{route}", body)
        assert status == 400 and ("Unicode" in doc["error"] or "surrogate" in doc["error"]), (route, doc)
    # a WAV declaring 1 Hz: refused before it is resampled 16000x
    one_hz = io.BytesIO()
    sf.write(one_hz, np.zeros(5000, np.float32), 1, format="WAV")
    status, _, doc = served.request("POST", f"/v2/models/{audio}/detect", one_hz.getvalue())
    assert status == 400 and "1 Hz" in doc["error"]
    assert served.healthy()


def test_bad_requests_get_4xx_and_the_server_lives(served, samples):
    image = samples["image"].name
    c = served.client
    shape = list(image_shape(samples))
    x = np.zeros(shape, np.float32)
    checks = {
        "unknown model": (error_of(lambda: infer(c, "no-such-model", {"image": x})), 404),
        "unknown version": (error_of(lambda: infer(c, image, {"image": x}, version="7")), 404),
        "wrong shape": (error_of(lambda: infer(c, image, {"image": np.zeros([*shape[:3], 5], np.float32)})), 400),
        "wrong datatype": (error_of(lambda: infer(c, image, {"image": x.astype(np.float16)})), 400),
        "unknown input": (error_of(lambda: infer(c, image, {"pixels": x})), 400),
    }
    for what, ((status, message), want) in checks.items():
        assert status == want, (what, message)
        assert "Traceback" not in message and message, what

    def post(body: bytes, headers: dict | None = None, path: str = f"/v2/models/{image}/infer"):
        status, _, doc = served.request("POST", path, body, headers)
        assert isinstance(doc, dict) and set(doc) == {"error"} and "Traceback" not in doc["error"], doc
        return status, doc["error"]

    def binary(declared_shape: list, data: bytes, size: int | None = None):
        head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": declared_shape,
                                       "parameters": {"binary_data_size": len(data) if size is None else size}}]})
        return post(head.encode() + data, {"Inference-Header-Content-Length": str(len(head))})

    full = x.tobytes()
    assert binary(shape, full[:-4])[0] == 400  # data shorter than the shape
    assert binary(shape, full + b"\0" * 4)[0] == 400  # longer
    assert binary(shape, full, size=len(full) + 100)[0] == 400  # a size past the body
    status, message = binary([10 ** 6, *shape[1:]], full)  # 1.5e11 elements declared: refused from the header
    assert status == 400 and "bytes" in message
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": shape,
                                                   "data": [0.0] * 100_000}]}).encode())
    assert status == 400 and "150528" in message  # JSON data shorter than the shape
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": shape,
                                                   "data": [0.0] * 10}]}).encode())
    assert status == 400 and "needs 150528 values, the request sends 10" in message, message  # said "bytes"
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2 ** 41, 9],
                                                   "data": [0.0] * 10}]}).encode())
    assert status == 400 and "needs more values than the body has bytes" in message, message
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": shape,
                                                   "data": [1e39] + [0.0] * 150527}]}).encode())
    assert status == 400 and "value 1e+39 is past FP32's range (±3.4e+38)" in message, message  # was inf
    for item, problem in (({"shape": shape, "data": [0]}, "has no 'datatype'"),
                          ({"datatype": "FP32", "data": [0]}, "has no 'shape'")):
        status, message = post(json.dumps({"inputs": [{"name": "image", **item}]}).encode())
        assert status == 400 and f"input 'image' {problem}" in message, message  # said "unknown datatype 'None'"
    for value, problem in (("0", "from 1 to"), ("1000000000", "from 1 to")):
        status, message = post(b"{}", {"Inference-Header-Content-Length": value})
        assert status == 400 and problem in message, message
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                                   "shape": [10 ** 6, *shape[1:]], "data": [1.0]}]}).encode())
    assert status == 400
    assert post(b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3')[0] == 400  # malformed
    assert post(b"\xff\xfe garbage")[0] == 400
    assert post(b'{"inputs": "none"}')[0] == 400
    assert post(b"{}", {"Inference-Header-Content-Length": "abc"})[0] == 400
    assert post(b"{}", path="/v2/models/no-such-model/versions/x/infer")[0] == 404
    # an oversized body is refused from its Content-Length, before it is read
    conn = http.client.HTTPConnection(served.host, timeout=30)
    conn.putrequest("POST", f"/v2/models/{image}/infer")
    conn.putheader("Content-Length", str(65 * 1024 * 1024))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]
    conn.close()
    hostile = [b"[" * 100_000, b'{"inputs": [{"name": 1' + b"0" * 5000 + b"}]}", b'{"inputs": [{"name": [1]}]}',
               b'{"inputs": [{"name": "image", "datatype": [], "shape": [1]}]}',
               b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [' + b"9" * 5000 + b', 8], "data": [1]}]}']
    for body in hostile:
        assert post(body)[0] == 400, body[:60]
    assert post(b"[" * 100_000, path="/v2/repository/index")[0] == 400
    for version in ("%C2%B2", "9" * 5000, "0"):
        status, _, doc = served.request("GET", f"/v2/models/{image}/versions/{version}")
        assert status == 404 and "whole numbers from 1 to 999999999" in doc["error"], doc
    assert served.request("POST", f"/v2/models/{image}/classify?top_k=%C2%B2", b"x")[0] == 400
    status, _, doc = served.request("POST", f"/v2/models/{image}/classify?top_k=1&top_k=2", b"x")
    assert status == 400 and "top_k is given 2 times" in doc["error"]  # the last one was taken
    status, _, doc = served.request("POST", f"/v2/models/{image}/classify?topk=3", b"x")
    assert status == 400 and "unknown query parameter 'topk'" in doc["error"]
    for body, problem in ((b'{"text": "a", "texts": ["b"]}', "not both"), (b'{"txt": "a"}', "unknown key 'txt'")):
        status, _, doc = served.request("POST", f"/v2/models/{samples['text'].name}/embed", body)
        assert status == 400 and problem in doc["error"], doc
    status, _, doc = served.request("POST", f"/v2/models/{samples['text'].name}/classify?top_k=0", b"{}")
    assert status == 400 and "JSON body" in doc["error"]
    status, message = post(b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "decompress" in message
    import gzip
    packed = gzip.compress(b'{"inputs": []}')
    status, message = post(packed[:-12], {"Content-Encoding": "gzip"})
    assert status == 400 and "cut short" in message  # truncated: not reported as bad JSON
    status, message = post(packed + b"junk", {"Content-Encoding": "gzip"})
    assert status == 400 and "4 bytes after its compressed stream" in message
    assert post(b"{}", {"Content-Encoding": "br"})[0] == 415
    two_files = b"".join(f"--b\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"x{i}.jpg\"\r\n\r\n"
                         f"data\r\n".encode() for i in range(2)) + b"--b--\r\n"
    status, message = post(two_files, {"Content-Type": "multipart/form-data; boundary=b"},
                           path=f"/v2/models/{image}/classify")
    assert status == 400 and "files" in message.lower()
    text = samples["text"].name  # served on OpenVINO IR, which keeps no dim names: the package's are checked
    ids = np.ones((1, 600), np.int64)
    status, message = error_of(lambda: infer(c, text, {"input_ids": ids, "attention_mask": ids,
                                                       "token_type_ids": ids}))
    assert status == 400 and "'sequence' is 600, over this model's limit of 512" in message, message
    status, message = error_of(lambda: infer(c, text, {"input_ids": ids[:, :5], "attention_mask": ids[:, :7],
                                                       "token_type_ids": ids[:, :5]}))
    assert status == 400 and "disagree on dimension 'sequence'" in message, message
    status, message = post(b"{}", path=f"/v2/models/{image}/embed")
    assert status == 404 and f"model '{image}' is an image-classification model" in message, message
    status, message = post(b'{"text": "x", "labels": ["a", ""]}', path=f"/v2/models/{samples['text'].name}/classify")
    assert status == 400 and "'labels' item 1 is \"\": each label must be a non-empty string" in message, message
    status, message = post((ROOT / "samples" / "inputs" / "images" / "cat.jpg").read_bytes(),
                           path=f"/v2/models/{samples['audio'].name}/detect")
    assert status == 400 and message == "audio: cannot be read as audio (Format not recognised)", message  # was
    # "(Error opening <_io.BytesIO object at 0x7f99a6b9ab60>: Format not recognised.)"
    assert served.request("GET", f"/v2/models/{image}/infer")[0] == 405
    assert served.request("GET", "/v2/nothing-here")[0] == 404
    # the shared-memory extension is named as such, not as data missing from the body
    status, message = post(json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": shape, "parameters": {
        "shared_memory_region": "r0", "shared_memory_byte_size": len(full)}}]}).encode())
    assert status == 400 and "shared-memory extension is not supported" in message, message
    # a trailing slash is no route: no redirect built from the client's Host header
    status, headers, doc = served.request("GET", f"/v2/models/{image}/", headers={"Host": "elsewhere.example"})
    assert status == 404 and "location" not in {k.lower() for k in headers} and set(doc) == {"error"}
    # a request naming a file on disk: there is no such parameter
    status, message = post(b'{"parameters": {"config": "{}"}}', path=f"/v2/repository/models/{image}/load")
    assert status == 400 and "repository" in message
    assert served.healthy()
    assert " ERROR" not in served.log(), served.log()


def test_an_idle_kept_alive_connection_is_still_open_after_uvicorns_five_seconds(served):
    """Pooled clients (tritonclient does not retry) reuse a connection after a pause: uvicorn's default
    closed it after 5 s, and the next request died with a broken pipe."""
    conn = http.client.HTTPConnection(served.host, timeout=30)  # reconnects only when told to close
    try:
        for pause in (0, 5.5):
            time.sleep(pause)
            conn.request("GET", "/v2/health/live")  # a closed socket: RemoteDisconnected or a broken pipe
            r = conn.getresponse()
            r.read()
            assert r.status == 200 and not r.will_close
    finally:
        conn.close()


def test_sixteen_clients_every_answer_correct(served, samples):
    name = samples["image"].name
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal(image_shape(samples)).astype(np.float32) for _ in range(8)]
    with edgekit.load(samples["image"]) as m:
        want = [m.run(x)["logits"] for x in xs]

    def client_thread(k: int) -> int:
        client = tc.InferenceServerClient(served.host)
        try:
            for j in range(6):
                i = (k + j) % len(xs)
                got = infer(client, name, {"image": xs[i]}, binary=(j % 2 == 0)).as_numpy("logits")
                np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5)
            return 6
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client_thread, range(16))) == 96


def test_metrics_move(served, samples):
    name = samples["image"].name

    def sample(metric: str, **labels) -> float:
        status, _, text = served.request("GET", "/metrics")
        assert status == 200
        text = text.decode() if isinstance(text, bytes) else str(text)
        total = 0.0
        for line in text.splitlines():
            if line.startswith(metric + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = sample("edgekit_inference_requests_total", model=name, version="1", outcome="success")
    computed = sample("edgekit_inference_compute_seconds_count", model=name, version="1")
    bad = sample("edgekit_inference_requests_total", model=name, outcome="bad_request")
    shape = image_shape(samples)
    infer(served.client, name, {"image": np.zeros(shape, np.float32)})
    error_of(lambda: infer(served.client, name, {"image": np.zeros([*shape[:3], 9], np.float32)}))
    assert sample("edgekit_inference_requests_total", model=name, version="1", outcome="success") == before + 1
    assert sample("edgekit_inference_compute_seconds_count", model=name, version="1") == computed + 1
    assert sample("edgekit_inference_requests_total", model=name, outcome="bad_request") == bad + 1
    with edgekit.load(samples["image"]) as m:
        assert sample("edgekit_model_loaded", model=name, version="1", backend=m.backend, artifact=m.path.name) == 1
    assert sample("edgekit_inference_in_flight", model=name) == 0
    # the text access log names the model and the version that answered
    assert f'"POST /v2/models/{name}/infer" 200 ' in served.log()
    assert any(line.endswith(f" ms {name} v1") for line in served.log().splitlines() if "/infer\" 200" in line)
    # a body refused by the guard before routing is counted under the route it was sent to
    refused = sample("edgekit_http_requests_total", route="infer", status="413")
    conn = http.client.HTTPConnection(served.host, timeout=30)
    conn.request("POST", f"/v2/models/{name}/infer", headers={"Content-Length": str(65 * 1024 * 1024)})
    assert conn.getresponse().status == 413
    conn.close()
    assert sample("edgekit_http_requests_total", route="infer", status="413") == refused + 1


def test_statistics_extension_counts_per_version(served, samples):
    """Triton's statistics extension, read with tritonclient's own call."""
    c, name = served.client, samples["image"].name
    assert "statistics" in c.get_server_metadata()["extensions"]

    def stats(*args) -> dict:
        (one,) = c.get_inference_statistics(*args)["model_stats"]
        return one

    before = stats(name)
    shape = image_shape(samples)
    for _ in range(2):
        infer(c, name, {"image": np.zeros(shape, np.float32)})
    error_of(lambda: infer(c, name, {"image": np.zeros([*shape[:3], 9], np.float32)}))
    after = stats(name, "1")
    assert (after["name"], after["version"]) == (name, "1")
    assert after["inference_count"] == before["inference_count"] + 2 * shape[0]
    assert after["execution_count"] == before["execution_count"] + 2
    got, was = after["inference_stats"], before["inference_stats"]
    assert got["success"]["count"] == was["success"]["count"] + 2 and got["fail"]["count"] == was["fail"]["count"] + 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert got[key]["count"] == was[key]["count"] + 2 and got[key]["ns"] > was[key]["ns"], key
    # a request's whole time covers its model run
    assert got["success"]["ns"] - was["success"]["ns"] > got["compute_infer"]["ns"] - was["compute_infer"]["ns"]
    assert after["last_inference"] / 1000 == pytest.approx(time.time(), abs=60)
    assert {b["batch_size"] for b in after["batch_stats"]} >= {shape[0]}
    every = c.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == {samples[k].name for k in samples}
    for path in ("/v2/models/no-such/stats", f"/v2/models/{name}/versions/9/stats"):
        assert served.request("GET", path)[0] == 404

    # a request the model itself refuses (600 tokens, past its 512 positions) counts only as a failure;
    # 3 texts as BYTES are 3 inferences in one run
    text = samples["text"].name
    before = stats(text)
    ids = np.ones((1, 600), np.int64)
    assert error_of(lambda: infer(c, text, {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids}))[0] == 400
    after = stats(text)
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output", "success"):
        assert after["inference_stats"][key] == before["inference_stats"][key], key
    assert after["inference_count"] == before["inference_count"]
    texts = tc.InferInput("text", [3], "BYTES")
    texts.set_data_from_numpy(np.array([b"a cat", b"a dog", b"a car"], dtype=object))
    c.infer(text, [texts])
    assert stats(text)["inference_count"] == after["inference_count"] + 3
    # a model that cannot batch counts a request as one inference, whatever its first input's shape
    audio = samples["audio"].name
    before = stats(audio)["inference_count"]
    with edgekit.load(samples["audio"]) as m:
        feeds = {s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], s.dtype) for s in m.inputs}
    infer(c, audio, feeds)
    assert stats(audio)["inference_count"] == before + 1


# -- versions, policies and the repository API --------------------------------------------------

def test_repo_add_verifies_and_numbers_versions(tmp_path, models):
    from conftest import run_cli

    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repo = tmp_path / "repo"
    assert repository.add(pkg, repo).name == "1"
    r = run_cli("repo", "add", str(pkg), "--repository", str(repo), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 2
    r = run_cli("repo", "add", str(pkg), "--repository", str(repo), "--version", "2")
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr
    (pkg / "mlp-0.onnx").write_bytes((pkg / "mlp-0.onnx").read_bytes()[:-8] + b"corrupt!")
    r = run_cli("repo", "add", str(pkg), "--repository", str(repo))
    assert r.returncode == 2 and "checksum" in r.stderr
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == ["1", "2"]  # nothing half-written left
    r = run_cli("repo", "list", str(repo), "--json")
    doc = json.loads(r.stdout)
    assert [v["version"] for v in doc["models"][0]["versions"]] == [1, 2]
    r = run_cli("repo", "list", str(repo))
    assert r.returncode == 0 and "mlp" in r.stdout and "not in the version policy" in r.stdout
    (repo / "mlp" / "config.json").write_text('{"instances": 0}')  # the text table names its problem too
    r = run_cli("repo", "list", str(repo))
    assert r.returncode == 0 and "config.json: instances must be a positive integer" in r.stdout, r.stdout
    (repo / "mlp" / "config.json").unlink()
    # the error names the source's file; a refused first version leaves no empty model behind
    r = run_cli("repo", "add", str(pkg), "--repository", str(repo), "--name", "fresh")
    assert r.returncode == 2 and f"{pkg / 'mlp-0.onnx'}: checksum mismatch" in r.stderr, r.stderr
    assert not (repo / "fresh").exists()
    r = run_cli("repo", "add", str(pkg), "--repository", str(tmp_path / "new-repo"))  # nor an empty repository
    assert r.returncode == 2 and not (tmp_path / "new-repo").exists()


def test_repo_versions_as_the_server_reads_them(tmp_path, models):
    """A version "01" is version 1: adding 1 beside it made two of them and broke both. `repo list`
    verifies checksums as the server does: a damaged version 2 was "ok" and the version 1 the
    server falls back to "not in the version policy"."""
    from conftest import run_cli

    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repo = tmp_path / "repo"
    shutil.copytree(pkg, repo / "mlp" / "01")
    with pytest.raises(edgekit.UsageError, match="version 1 of 'mlp' exists"):
        repository.add(pkg, repo, version=1)
    assert repository.add(pkg, repo).name == "2"
    data = bytearray((repo / "mlp" / "2" / "mlp-0.onnx").read_bytes())
    data[-1] ^= 0xFF
    (repo / "mlp" / "2" / "mlp-0.onnx").write_bytes(bytes(data))
    r = run_cli("repo", "list", str(repo))
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("mlp")}
    assert rows["1"].rstrip().endswith(" ok") and "invalid: " in rows["2"] and "checksum mismatch" in rows["2"]


def test_infer_bodies_are_read_writable_so_runtimes_take_the_tensors_in_place():
    """A runtime copies a read-only input before it runs (OpenVINO: 0.045 ms of 1.5 for the image
    sample's 600 KB tensor), so /infer reads its body into a bytearray and views the tensors there."""
    import asyncio

    from starlette.requests import Request

    from edgekit.serve.app import _Api
    from edgekit.types import TensorSpec

    x = np.arange(12, dtype=np.float32).reshape(1, 12)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 12],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    data = header + x.tobytes()
    chunks = [data[:len(header) + 20], data[len(header) + 20:]]  # a tensor split across two reads

    async def receive() -> dict:
        more = len(chunks) > 1
        return {"type": "http.request", "body": chunks.pop(0), "more_body": more}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    body = asyncio.run(_Api._body(None, request, writable=True))
    got = protocol.parse_request(body, len(header), [TensorSpec("x", ("batch", 12), np.dtype(np.float32))]).inputs["x"]
    assert got.flags.writeable and np.shares_memory(got, np.frombuffer(body, np.uint8))
    np.testing.assert_array_equal(got, x)


def test_uint64_json_takes_its_whole_range():
    """[2**63, 0] became floats in NumPy and was refused as "non-integer values"."""
    from edgekit.serve.protocol import ProtocolError, _from_json

    u64 = np.dtype(np.uint64)
    got = _from_json([2**64 - 1, 2**63, 1, 0], "x", u64, (4,), 4)
    assert got.dtype == u64 and got.tolist() == [2**64 - 1, 2**63, 1, 0]
    for bad in ([2**64, 0, 0, 0], [-1, 2**63, 0, 0]):
        with pytest.raises(ProtocolError, match="out of range for UINT64"):
            _from_json(bad, "x", u64, (4,), 4)


@pytest.mark.parametrize("text, problem", [
    ("{bad", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"instances": 0}', "instances must be a positive integer, got 0"),
    ('{"instances": 100000}', "instances must be at most 64, got 100000"),
    ('{"instances": true}', "instances must be a positive integer, got true"),  # as JSON spells it, not True
    ('{"version_policy": {"specific": {"versions": [1, null]}}}', "versions must be a positive integer, got null"),
    ('{"version_policy": {"latest": {"num_versions": 0}}}', "num_versions must be a positive integer"),
    ('{"version_policy": {"newest": {}}}', "version_policy must be one of"),
    ('{"dynamic_batching": {"max_batch_size": -1}}', "max_batch_size must be a positive integer, got -1"),
    ('{"dynamic_batching": {"max_queue_delay_ms": 1e9}}', "max_queue_delay_ms must be between 0 and 10000"),
    ('{"device": 3}', "device must be a string"),
    ('{"device": "warp"}', "unknown device 'warp'"),
    ('{"replicas": 2}', "unknown keys ['replicas']"),
])
def test_bad_model_configs_name_the_file_and_the_problem(tmp_path, text, problem):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(edgekit.ModelFileError) as info:
        repository.read_config(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "config.json")) and problem in str(info.value)


def test_null_settings_in_a_model_config_are_the_servers(tmp_path):
    """"instances": null was refused ("got None") where "device": null meant the server's."""
    (tmp_path / "config.json").write_text('{"instances": null, "device": null}')
    config = repository.read_config(tmp_path)
    assert config.instances is None and config.device is None


def test_an_unknown_device_is_refused_before_serving(samples):
    from conftest import run_cli

    r = run_cli("serve", str(samples["audio"]), "--port", "0", "--device", "warp")
    assert r.returncode == 2 and "unknown device 'warp'" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_version_folder_served_alone_takes_its_models_name(tmp_path):
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.models import ModelManager

    pkg, _ = mlp_package(tmp_path / "repo" / "mlp" / "3", seed=1)
    (pkg.parent / "mlp-1.onnx").rename(tmp_path / "mlp-1.onnx")  # the model folder holds versions alone
    assert list(ModelManager([pkg], metrics=Metrics()).models) == ["mlp"]
    other, _ = mlp_package(tmp_path / "exports" / "2024", seed=2)  # a folder named for a year, in no repository
    assert list(ModelManager([other], metrics=Metrics()).models) == ["2024"]
    assert list(ModelManager([tmp_path / "mlp-1.onnx"], metrics=Metrics()).models) == ["mlp-1"]


def test_a_deleted_model_folder_leaves_the_index(tmp_path):
    repo = tmp_path / "repo"
    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repository.add(pkg, repo)
    repository.add(pkg, repo, name="spare")
    server = Server(str(repo), "--poll-interval", "0.2")
    try:
        c = server.client
        assert c.is_model_ready("spare")
        shutil.rmtree(repo / "spare")
        wait_for(lambda: all(r["name"] != "spare" for r in c.get_model_repository_index()), what="spare gone")
        assert not c.is_model_ready("spare") and c.is_model_ready("mlp")
        repository.add(pkg, repo, name="spare")  # and it comes back when its folder does
        wait_for(lambda: c.is_model_ready("spare"), what="spare back")
    finally:
        assert server.stop() == 0, server.log()


def test_serving_a_models_folder_instead_of_its_repository_is_refused(tmp_path, models):
    from conftest import run_cli

    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repo = tmp_path / "repo"
    repository.add(pkg, repo)
    r = run_cli("serve", str(repo / "mlp"), "--port", "0")
    assert r.returncode == 2 and f"{repo / 'mlp'} is a model's folder" in r.stderr and str(repo) in r.stderr
    assert "Traceback" not in r.stderr
    # `repo list` said so too little (it listed models "1", "2" with no versions); `repo add` of it
    # said "not a package folder", and of a missing folder the same
    r = run_cli("repo", "list", str(repo / "mlp"))
    assert r.returncode == 2 and f"{repo / 'mlp'} is a model's folder" in r.stderr and not r.stdout
    (repo / "mlp" / "v3").mkdir()  # a folder that is no version (ignored in a model) hid what the folder is
    (repo / "mlp" / "NOTES.md").write_text("mine")
    for args in (("repo", "list", str(repo / "mlp")), ("serve", str(repo / "mlp"), "--port", "0")):
        r = run_cli(*args)
        assert r.returncode == 2 and f"{repo / 'mlp'} is a model's folder" in r.stderr, (args, r.stderr)
    r = run_cli("repo", "list", str(repo))  # the repository itself still lists
    assert r.returncode == 0 and "mlp" in r.stdout, r.stderr
    shutil.copytree(pkg, pkg / "2")  # a package that holds a numbered package folder is still a package
    assert repository.add(pkg, tmp_path / "third").name == "1"
    r = run_cli("repo", "add", str(repo / "mlp"), "--repository", str(tmp_path / "other"))
    assert r.returncode == 2 and "is a model's folder in a repository" in r.stderr and "add one version's" in r.stderr
    r = run_cli("repo", "add", str(tmp_path / "nothing"), "--repository", str(tmp_path / "other"))
    assert r.returncode == 2 and r.stderr.strip().endswith("nothing: no such folder"), r.stderr
    assert not (tmp_path / "other").exists()
    r = run_cli("repo", "list", str(repo), "--name", "x")  # an option of `add` is refused, not ignored
    assert r.returncode == 2 and "unrecognized arguments: --name" in r.stderr


def test_repo_add_refuses_files_in_the_way_and_numbers_past_them(tmp_path, models):
    from conftest import run_cli

    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    (tmp_path / "a-file").write_text("x")
    for repo, name, problem in ((tmp_path / "a-file", "mlp", "a-file: exists and is not a folder"),
                                (tmp_path, "a-file", "a-file: exists and is not a folder, so it cannot be the "
                                                     "folder of model 'a-file'")):
        r = run_cli("repo", "add", str(pkg), "--repository", str(repo), "--name", name)
        assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr, r.stderr
    repo = tmp_path / "repo"
    (repo / "mlp").mkdir(parents=True)
    (repo / "mlp" / "1").write_text("a stray file")  # takes the number, so the next version is 2
    assert repository.add(pkg, repo).name == "2"
    assert repository.add(pkg, repo, version=repository.MAX_VERSION).name == str(repository.MAX_VERSION)
    with pytest.raises(edgekit.UsageError, match=f"version {repository.MAX_VERSION} is the highest"):
        repository.add(pkg, repo)
    with pytest.raises(edgekit.UsageError, match="an integer from 1 to 999999999, got 1000000000"):
        repository.add(pkg, repo, version=10 ** 9)
    with pytest.raises(edgekit.UsageError, match="invalid model name ''"):
        repository.add(pkg, repo, name="")
    with pytest.raises(edgekit.UsageError, match="cannot be named 'stats'"):  # /v2/models/stats is the statistics
        repository.add(pkg, repo, name="stats")
    # "2" and "002" are both version 2 (as Triton reads them): flagged, not guessed
    shutil.copytree(repo / "mlp" / "2", repo / "mlp" / "002")
    two = next(v for v in repository.scan_model(repo / "mlp").versions if v.version == 2)
    assert two.problem == "2 folders are version 2: 002, 2"
    (repo / "other").mkdir()
    (repo / "other" / "1700000000").mkdir()  # a timestamp-named backup does not push the numbering
    assert repository.add(pkg, repo, name="other").name == "1"


def test_repo_add_cleans_up_when_terminated(tmp_path, models):
    """SIGTERM during the copy (a build step's timeout) removes the staging copy, like Ctrl-C."""
    pkg, _ = mlp_package(tmp_path / "src" / "mlp", seed=0)
    (pkg / "padding.bin").write_bytes(os.urandom(1 << 20))
    for i in range(2000):  # enough files that the copy takes a while
        (pkg / f"padding-{i}.bin").write_bytes(b"x" * 4096)
    repo = tmp_path / "repo"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "repo", "add", str(pkg), "--repository", str(repo)],
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: proc.poll() is not None or any((repo / "mlp").glob(".new-*/pkg")),
             what="the staging copy", timeout=60, interval=0.002)
    caught_copying = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    leftovers = [p.name for p in (repo / "mlp").iterdir()] if (repo / "mlp").exists() else []
    if caught_copying:  # the usual case: the copy of 2000 files takes longer than the check above
        assert code == 128 + signal.SIGTERM and leftovers == [], (code, leftovers, proc.stderr.read())
    else:  # finished first: a whole version, nothing else
        assert code == 0 and leftovers == ["1"], (code, leftovers)
    # SIGKILL leaves the staging copy behind; the next writer removes it, since its process is gone
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "repo", "add", str(pkg), "--repository", str(repo)])
    wait_for(lambda: proc.poll() is not None or any((repo / "mlp").glob(".new-*/pkg")),
             what="the staging copy", timeout=60, interval=0.002)
    proc.kill()
    proc.wait(60)
    left = sorted((repo / "mlp").glob(".new-*"))
    if left:  # killed while copying (the usual case)
        assert left[0].name.startswith(f".new-{proc.pid}-")
    mine = package.staging_dir(repo / "mlp" / "new")  # this live process's own is never taken for abandoned
    repository.add(pkg, repo)
    assert not any(p.exists() for p in left) and mine.exists()


def test_versions_load_and_unload_while_serving(tmp_path):
    repo = tmp_path / "repo"
    pkg1, w1 = mlp_package(tmp_path / "v1" / "mlp", seed=1)
    pkg2, w2 = mlp_package(tmp_path / "v2" / "mlp", seed=2)
    repository.add(pkg1, repo)
    server = Server(str(repo), "--poll-interval", "0.2")
    try:
        c = server.client
        x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)

        def answer(version: str = "") -> np.ndarray:
            return infer(c, "mlp", {"x": x}, version=version).as_numpy("logits")

        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w1), rtol=1e-5, atol=1e-5)
        # a new version while serving: picked up without a restart; v1 answers until v2 is ready
        repository.add(pkg2, repo)
        wait_for(lambda: c.get_model_metadata("mlp")["versions"] == ["2"], what="version 2")
        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w2), rtol=1e-5, atol=1e-5)
        assert error_of(lambda: answer("1"))[0] == 503  # dropped by the "latest 1" policy
        # a version 3 with one corrupt artifact of two is reported with its reason and never replaces
        # version 2, although its other artifact would load
        bad = repo / "mlp" / ".v3-staging"
        staging = package.staging_dir(bad)
        for copy in ("a.onnx", "b.onnx"):
            shutil.copy(next((repo / "mlp" / "2").glob("*.onnx")), staging / copy)
        package.publish(staging, bad, {"name": "mlp", "artifacts": [
            {"path": "a.onnx", "format": "onnx", "precision": "fp32"},
            {"path": "b.onnx", "format": "onnx", "precision": "fp16"}]})
        (bad / "b.onnx").write_bytes((bad / "b.onnx").read_bytes()[:-8] + b"corrupt!")
        bad.rename(repo / "mlp" / "3")
        row = wait_for(lambda: next((r for r in c.get_model_repository_index()
                                     if r.get("version") == "3" and r["state"] == "UNAVAILABLE"), None), what="v3")
        assert "checksum" in row["reason"]
        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w2), rtol=1e-5, atol=1e-5)
        assert c.is_server_ready()
        # the serving version's own edgekit.json truncated in place: the loaded copy goes on serving
        manifest = repo / "mlp" / "2" / "edgekit.json"
        good_manifest = manifest.read_bytes()
        manifest.write_bytes(good_manifest[:20])
        row = wait_for(lambda: next((r for r in c.get_model_repository_index()
                                     if r.get("version") == "2" and "on disk now" in r["reason"]), None), what="v2")
        assert row["state"] == "READY" and c.get_model_metadata("mlp")["versions"] == ["2"]
        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w2), rtol=1e-5, atol=1e-5)
        manifest.write_bytes(good_manifest)
        # a config.json that does not parse: logged, shown in the index, the settings in force kept
        (repo / "mlp" / "config.json").write_text("{not json")
        row = wait_for(lambda: next((r for r in c.get_model_repository_index()
                                     if r.get("version") == "2" and "config.json" in r.get("reason", "")), None),
                       what="the config problem")
        assert row["state"] == "READY" and "the settings in force stay" in row["reason"]
        assert "config.json" in server.log() and c.get_model_metadata("mlp")["versions"] == ["2"]
        # policy "all" in config.json: every good version is served
        (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
        wait_for(lambda: c.get_model_metadata("mlp")["versions"] == ["2", "1"], what="policy all")
        np.testing.assert_allclose(answer("1"), builders.mlp_reference(x, w1), rtol=1e-5, atol=1e-5)
        # a device config.json asks for that is not here: the loaded copies go on serving, and say why
        def reasons():
            return {r["version"]: r.get("reason", "") for r in c.get_model_repository_index() if r.get("version")}

        (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}, "device": "npu"}))
        wait_for(lambda: all("config.json changed" in reasons().get(n, "") for n in ("1", "2")), what="the npu")
        assert c.is_model_ready("mlp", "2") and "npu" in reasons()["2"], reasons()
        (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
        wait_for(lambda: reasons().get("1") == reasons().get("2") == "", what="the reasons cleared")
        # the repository API: unload, then load again
        c.unload_model("mlp")
        assert not c.is_model_ready("mlp")
        status, message = error_of(answer)
        assert status == 503 and "unloaded" in message
        status, _, body = server.request("GET", "/v2/models/mlp/stats")  # was 200 with no statistics
        assert status == 503 and "unloaded" in body["error"]
        metrics = server.request("GET", "/metrics")[2].decode().splitlines()
        unavailable = [m for m in metrics if m.startswith("edgekit_inference_requests_total{")
                       and 'model="mlp"' in m and 'outcome="unavailable"' in m]
        assert unavailable and float(unavailable[0].rsplit(" ", 1)[1]) >= 1, unavailable  # was never counted
        wait_for(lambda: not [m for m in server.request("GET", "/metrics")[2].decode().splitlines()
                              if m.startswith("edgekit_inference_in_flight{") and 'model="mlp"' in m],
                 what="the unloaded versions' in-flight gauges gone")  # they stayed at 0 for good
        time.sleep(0.5)  # polling leaves an unloaded model alone
        assert not c.is_model_ready("mlp")
        c.load_model("mlp")
        assert c.is_model_ready("mlp", "2") and c.is_model_ready("mlp", "1")
        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w2), rtol=1e-5, atol=1e-5)
        # a version added while the model is unloaded: listed as the folder holds it, and not served
        c.unload_model("mlp")
        repository.add(pkg1, repo)  # version 4
        wait_for(lambda: reasons().get("4") == "unloaded", what="version 4 in the index while unloaded")
        status, message = error_of(lambda: answer("4"))
        assert status == 404 and "version 4 of 'mlp' is in the repository but not served: the model is unloaded" \
            in message, message
        (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"latest": {"num_versions": 1}}}))
        c.load_model("mlp")
        assert c.get_model_metadata("mlp")["versions"] == ["4"]
        np.testing.assert_allclose(answer(), builders.mlp_reference(x, w1), rtol=1e-5, atol=1e-5)
        assert reasons()["1"] == reasons()["2"] == "not in the version policy", reasons()  # they said "unloaded"
        with pytest.raises(InferenceServerException):
            c.load_model("mlp", config="{}")  # a client cannot hand the server a config (or files)
        assert error_of(lambda: c.load_model("nothing"))[0] == 404
        assert server.healthy()
    finally:
        assert server.stop() == 0, server.log()


def test_what_the_repository_cannot_serve_is_said(tmp_path):
    """Folders that are no model or no version, and versions a "specific" policy names but the
    repository lacks, were skipped in silence: the model went dark with "not in the version policy"."""
    from conftest import run_cli

    repo = tmp_path / "repo"
    pkg, w = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repository.add(pkg, repo)
    repository.add(pkg, repo)
    shutil.copytree(repo / "mlp" / "1", repo / "mlp" / "v3")  # not a version folder
    shutil.copytree(repo / "mlp", repo / "my model")  # not a model name
    shutil.copytree(repo / "mlp", repo / "stats")  # the statistics endpoint's name
    (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"specific": {"versions": [1, 5]}}}))
    r = run_cli("repo", "list", str(repo))
    assert r.returncode == 0, r.stderr
    assert "mlp: ignored v3: not a version folder" in r.stdout
    assert "ignored my model: not a model name: use letters" in r.stdout
    assert "ignored stats: not a model name: a model cannot be named 'stats'" in r.stdout
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("mlp ")}
    assert rows["1"].rstrip().endswith(" ok") and "not in the version policy" in rows["2"]
    assert "missing: named by the version policy" in rows["5"], r.stdout
    doc = json.loads(run_cli("repo", "list", str(repo), "--json").stdout)
    assert [i["folder"] for i in doc["ignored"]] == ["my model", "stats"] and doc["models"][0]["missing"] == [5]
    assert doc["models"][0]["ignored"] == [{"folder": "v3", "reason": "not a version folder (versions are "
                                                                       "folders named 1, 2, ...)"}]

    server = Server(str(repo), "--poll-interval", "0.2")
    try:
        c = server.client
        assert c.get_model_metadata("mlp")["versions"] == ["1"]
        index = {r["version"]: r for r in c.get_model_repository_index() if r["name"] == "mlp"}
        assert index["5"]["state"] == "UNAVAILABLE" and "named by the version policy" in index["5"]["reason"]
        log = server.log()
        assert "the version policy names version 5, which the repository does not hold (it holds versions 1, 2)" in log
        assert "v3: not a version folder" in log and "my model is not served: not a model name: use letters" in log
        assert log.count("stats is not served") == 1  # said once, not at every scan
        # the policy now names only a missing version: nothing is served, and the 503 says why
        (repo / "mlp" / "config.json").write_text(json.dumps({"version_policy": {"specific": {"versions": [5]}}}))
        wait_for(lambda: not c.is_model_ready("mlp"), what="version 1 released")
        status, message = error_of(lambda: infer(c, "mlp", {"x": np.ones((1, 8), np.float32)}))
        assert status == 503 and "the version policy names version 5, which the repository does not hold" in message
        assert server.log().count("stats is not served") == 1
        assert server.log().count("v3: not a version folder") == 1  # not again at each change of the folder
    finally:
        assert server.stop() == 0, server.log()


def test_changes_to_a_served_versions_files_are_said(tmp_path):
    """An artifact of the version being served rewritten in place (its checksum no longer holds), and a
    second folder for its number ("07" beside "7"), left the index at READY with no reason."""
    repo = tmp_path / "repo"
    pkg, w = mlp_package(tmp_path / "src" / "mlp", seed=0)
    repository.add(pkg, repo, version=7)
    (repo / "empty").mkdir()  # a model folder with no versions: said once, not skipped in silence
    server = Server(str(repo), "--poll-interval", "0.2")
    try:
        c = server.client
        x = np.ones((1, 8), np.float32)

        def reason() -> str:
            return next(r for r in c.get_model_repository_index() if r.get("version") == "7")["reason"]

        artifact = next((repo / "mlp" / "7").glob("*.onnx"))
        good = artifact.read_bytes()
        artifact.write_bytes(good + b"\0")
        wait_for(lambda: "checksum" in reason(), what="the changed artifact said")
        assert "serving the copy loaded before its folder changed" in reason() and c.is_model_ready("mlp", "7")
        np.testing.assert_allclose(infer(c, "mlp", {"x": x}).as_numpy("logits"), builders.mlp_reference(x, w),
                                   rtol=1e-5, atol=1e-5)
        artifact.write_bytes(good)
        wait_for(lambda: reason() == "", what="the artifact restored")
        shutil.copytree(repo / "mlp" / "7", repo / "mlp" / "07")
        wait_for(lambda: "2 folders are version 7: 07, 7" in reason(), what="the second folder said")
        assert c.is_model_ready("mlp", "7")
        log = server.log()
        assert log.count("empty: no versions in") == 1 and "edgekit repo add PKG --repository" in log, log
    finally:
        assert server.stop() == 0, server.log()


def test_inputs_of_no_elements_run_where_the_model_can_run_them(tmp_path):
    """A batch of 0 was refused as "more elements than the body has bytes"; an axis such as a count of
    boxes may be empty. A model that cannot run it is the client's 400, not the server's 500."""
    import onnx
    from onnx import TensorProto, helper

    pkg, _ = mlp_package(tmp_path / "mlp", seed=0)
    graph = helper.make_graph([helper.make_node("ArgMax", ["x"], ["best"], axis=0, keepdims=0)], "argmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("best", TensorProto.INT64, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "argmax.onnx")
    argmax = make_package(tmp_path / "argmax", tmp_path / "argmax.onnx", "argmax")
    server = Server(str(pkg), str(argmax))
    try:
        def send(model: str, shape: list) -> tuple:
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]}
            return server.request("POST", f"/v2/models/{model}/infer", json.dumps(doc).encode())

        status, _, doc = send("mlp", [0, 8])
        assert status == 200 and doc["outputs"][0]["shape"] == [0, 3] and doc["outputs"][0]["data"] == [], doc
        status, _, doc = send("argmax", [0, 4])  # ONNX Runtime's ArgMax refuses an empty axis
        assert status == 400 and "failed on the empty input 'x'" in doc["error"], doc
        assert server.healthy() and " ERROR" not in server.log(), server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_a_version_being_loaded_says_so():
    """A request while the only version loads was told "no versions in the repository"."""
    import asyncio

    from edgekit.serve.errors import NotReady
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.models import LOADING, ModelManager, Version

    async def ask() -> str:
        manager = ModelManager([], metrics=Metrics())
        m = manager._add_model("mlp", Path("/nonexistent"))
        m.on_disk = [1]
        m.versions[1] = Version("mlp", 1, Path("/nonexistent/1"), LOADING)
        with pytest.raises(NotReady) as e:
            manager.get("mlp")
        return str(e.value)

    assert asyncio.run(ask()) == "model 'mlp' has no version ready: version 1: loading"


def test_an_api_key_file_others_can_read_is_warned_of(tmp_path, caplog):
    from edgekit.serve.server import key_file_exposure, read_api_key

    user = 1000
    assert key_file_exposure(0o100644, user, user) == ["read"]
    assert key_file_exposure(0o100640, user, user) == ["read"]
    assert key_file_exposure(0o100620, user, user) == ["changed"]  # not "read": group may only write
    assert key_file_exposure(0o100666, user, user) == ["read", "changed"]
    assert key_file_exposure(0o100600, user, user) == key_file_exposure(0o100400, user, user) == []
    assert key_file_exposure(0o100444, 0, user) == []  # a mounted secret, root's
    assert key_file_exposure(0o100644, 0, 0) == []  # root's own: how containers running as root get keys
    assert key_file_exposure(0o100644, 2000, user) == []  # someone else's, handed over
    key = tmp_path / "key"  # the real file, read as the user running this
    key.write_text("0123456789abcdef0123\n")
    key.chmod(0o644)
    with caplog.at_level("WARNING", logger="edgekit.serve"):
        assert read_api_key(key) == "0123456789abcdef0123"
    warned = "can be read by other users" in caplog.text and "chmod 600" in caplog.text
    assert warned == (os.getuid() != 0), caplog.text


def test_datatypes_map_exactly(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    types = {"u8": TensorProto.UINT8, "i8": TensorProto.INT8, "b": TensorProto.BOOL, "h": TensorProto.FLOAT16,
             "i64": TensorProto.INT64}
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in types if n != "b"]
        + [helper.make_node("Not", ["b"], ["b_out"])],
        "types",
        [helper.make_tensor_value_info(n, t, ["batch", 4]) for n, t in types.items()],
        [helper.make_tensor_value_info(f"{n}_out", t, ["batch", 4]) for n, t in types.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "types.onnx")
    pkg = make_package(tmp_path / "types", tmp_path / "types.onnx", "types")
    server = Server(str(pkg), "--device", "onnxruntime")
    try:
        md = server.client.get_model_metadata("types")
        assert {i["name"]: i["datatype"] for i in md["inputs"]} == {
            "u8": "UINT8", "i8": "INT8", "b": "BOOL", "h": "FP16", "i64": "INT64"}
        rng = np.random.default_rng(3)
        feeds = {"u8": rng.integers(0, 255, (2, 4), dtype=np.uint8), "i8": rng.integers(-128, 127, (2, 4), np.int8),
                 "b": rng.integers(0, 2, (2, 4)).astype(bool), "h": rng.standard_normal((2, 4)).astype(np.float16),
                 "i64": rng.integers(-2 ** 40, 2 ** 40, (2, 4), np.int64)}
        for binary in (True, False):
            r = infer(server.client, "types", feeds, binary=binary)
            for n, x in feeds.items():
                got = r.as_numpy(f"{n}_out")
                assert got.dtype == x.dtype
                np.testing.assert_array_equal(got, ~x if n == "b" else x)
        status, _, doc = server.request("POST", "/v2/models/types/infer", json.dumps({"inputs": [
            {"name": n, "datatype": md_in["datatype"], "shape": [1, 4], "data": [300, 1, 2, 3]}
            for n, md_in in zip(types, md["inputs"])]}).encode())
        assert status == 400 and "range" in doc["error"]  # 300 does not fit UINT8
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("flag, value, problem", [
    ("--max-body-mb", "nan", "--max-body-mb must be from 0.0009765625 (1 KiB) to 1048576, got nan"),
    ("--max-body-mb", "inf", "--max-body-mb must be from"),
    ("--keep-alive-s", "nan", "--keep-alive-s must be over 0"),
    ("--keep-alive-s", "-1", "--keep-alive-s must be over 0"),
    ("--max-queue-delay-ms", "-2", "--max-queue-delay-ms must be from 0 to 10000, got -2.0"),
    ("--max-queue-delay-ms", "5", "--max-queue-delay-ms is dynamic batching's: give --max-batch-size N too"),
    ("--instances", "100000", "--instances must be from 1 to 64, got 100000"),
    ("--poll-interval", "nan", "--poll-interval must be 0 (off) or from 0.05 to 86400 seconds, got nan"),
    ("--port", "70000", "--port must be from 0 to 65535, got 70000"),
])
def test_serve_refuses_out_of_range_settings(tmp_path, flag, value, problem):
    from conftest import run_cli

    r = run_cli("serve", str(tmp_path), flag, value)
    assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- security -------------------------------------------------------------------------------------

def raw_exchange(host: str, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` on a fresh connection (``pause`` s apart), then read until the server closes it."""
    import socket

    h, p = host.rsplit(":", 1)
    with socket.create_connection((h, int(p)), timeout=30) as sock:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            for part in parts:
                sock.sendall(part)
                time.sleep(pause)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_connections_are_bounded_but_keep_alive_and_pipelining_work(tmp_path):
    """Trailers without end, idle connections and stray CRLFs are bounded as heads are; requests kept
    alive, pipelined, trickled or chunked are served as before."""
    pkg, _ = mlp_package(tmp_path / "mlp", seed=0)
    server = Server(str(pkg), "--body-timeout-s", "1", "--keep-alive-s", "1")
    try:
        x = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [1.0] * 8}]}).encode()
        post = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(x), x)
        live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        # kept alive, then pipelined in one send: every answer, in order
        answer = raw_exchange(server.host, post, live, post + live + post + last, pause=0.05)
        assert answer.count(b"HTTP/1.1 200") == 6 and answer.count(b'"logits"') == 3, answer[:300]
        # a head trickled in small pieces within the timeout, and a chunked body with a trailer
        trickled = [post[i:i + 7] for i in range(0, len(post), 7)]
        assert raw_exchange(server.host, *trickled, last, pause=0.005).count(b"HTTP/1.1 200") == 2
        chunked = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(x), x))
        assert raw_exchange(server.host, chunked, last).count(b"HTTP/1.1 200") == 2
        # an endless trailer: 431 before it is kept whole, and the server does not grow
        rss = psutil.Process(server.proc.pid).memory_info().rss
        endless = [b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"1\r\n{\r\n0\r\nX-T: ", *[b"a" * 65536] * 256]
        status_line, _, body = raw_exchange(server.host, *endless).partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 431") and "trailers" in json.loads(body)["error"], status_line
        assert psutil.Process(server.proc.pid).memory_info().rss - rss < 64 << 20
        # a connection that sends nothing, or only stray CRLFs, is closed after the keep-alive time
        for parts, answers in (([b""], 0), ([live, *[b"\r\n"] * 100], 1)):  # CRLFs for 10 s, one each 0.1 s
            start = time.monotonic()
            answer = raw_exchange(server.host, *parts, pause=0.1)
            assert time.monotonic() - start < 8 and answer.count(b"HTTP/1.1") == answers, answer
        assert server.healthy() and " ERROR" not in server.log(), server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_a_stalled_request_gets_408_and_an_endless_head_431(tmp_path):
    """A client that sends 5 bytes of a 100-byte body and stops, or its head a byte now and then (slowloris),
    holds no connection for good; a head past 64 KiB is refused before it is kept whole."""
    import socket

    pkg, _ = mlp_package(tmp_path / "mlp", seed=0)
    server = Server(str(pkg), "--body-timeout-s", "0.5")
    try:
        host, port = server.host.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in")
            start = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            waited = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving for 0.5 s" in answer, answer
        assert 0.4 < waited < 20, waited
        assert server.client.is_server_ready()
        x = np.ones((1, 8), np.float32)  # a body that arrives in time is unaffected
        assert infer(server.client, "mlp", {"x": x}).as_numpy("logits").shape == (1, 3)

        answer_to = functools.partial(raw_exchange, server.host)

        # a head sent slowly (a byte now and then) gets 408 within the same timeout
        start = time.monotonic()
        answer = answer_to(b"GET /v2/health/live HTTP/1.1\r\n", *[b"X-A: b\r\n"] * 20, pause=0.1)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer, answer
        assert time.monotonic() - start < 20
        # a head over 64 KiB (one endless header) gets 431 before it is kept whole
        status_line, _, body = answer_to(b"GET /v2/health/live HTTP/1.1\r\nX-Big: ",
                                         *[b"a" * 65536] * 64).partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 431") and "over the limit of 65536" in json.loads(body)["error"]
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))  # 100 KB of whole headers at once
        assert answer_to(b"GET /v2/health/live HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
        assert "Invalid HTTP request" not in server.log()  # the 431s are logged once each, with their reason
        assert server.log().count(" 431 the request head") == 2, server.log()
        # not HTTP: uvicorn's refusal, as JSON
        status_line, _, body = answer_to(b"garbage\r\n\r\n").partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 400") and set(json.loads(body)) == {"error"}
        assert "WARNING: 127.0.0.1: Invalid HTTP request received." in server.log()  # the client named
        # an endless chunk header: the connection's 431, while the handler waited for the body
        # (in one write: sent in two, a busy host let the 0.5 s body timeout answer 408 between them)
        assert answer_to(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;"
                         + b"x" * 3 * 65536).startswith(b"HTTP/1.1 431")
        # answered by the connection, counted all the same, under the status the client got and the
        # method of its request line once that is in (httptools says DELETE before it is)
        _, _, metrics = server.request("GET", "/metrics")
        counted = {}
        for line in metrics.decode().splitlines():
            if line.startswith("edgekit_http_requests_total"):
                labels = dict(x.split("=") for x in line[line.index("{") + 1:line.index("}")].split(","))
                key = tuple(labels[k].strip('"') for k in ("method", "route", "status"))
                counted[key] = float(line.split()[-1])
        assert counted.get(("GET", "other", "431")) == 2 and counted.get(("GET", "other", "408"), 0) >= 1, counted
        assert counted.get(("other", "other", "400")) == 1 and counted.get(("POST", "infer", "431")) == 1, counted
        assert not any(method == "DELETE" or status == "499" for method, _, status in counted), counted
        # 30 KB of headers is fine
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
        assert answer_to(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
                         ).startswith(b"HTTP/1.1 200")
        assert server.client.is_server_ready()
    finally:
        assert server.stop() == 0, server.log()


def test_api_key_and_binding_rules(tmp_path):
    from conftest import run_cli

    pkg, w = mlp_package(tmp_path / "mlp", seed=0)
    key = "k3y-" + "0123456789abcdef" * 2
    (tmp_path / "key").write_text(key + "\n")
    r = run_cli("serve", str(pkg), "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "API key" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "short").write_text("abc")
    r = run_cli("serve", str(pkg), "--api-key-file", str(tmp_path / "short"))
    assert r.returncode == 2 and "16 characters" in r.stderr

    server = Server(str(pkg), "--api-key-file", str(tmp_path / "key"))
    try:
        c = server.client
        x = np.ones((1, 8), np.float32)
        assert c.is_server_live() and c.is_server_ready()  # probes need no key
        status, message = error_of(lambda: infer(c, "mlp", {"x": x}))
        assert status == 401
        assert error_of(lambda: infer(c, "mlp", {"x": x}, headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert server.request("GET", "/metrics")[0] == 401
        assert server.request("GET", "/v2/models/mlp")[0] == 401
        good = {"Authorization": f"Bearer {key}"}
        got = infer(c, "mlp", {"x": x}, headers=good).as_numpy("logits")
        np.testing.assert_allclose(got, builders.mlp_reference(x, w), rtol=1e-5, atol=1e-5)
        assert server.request("GET", "/metrics", headers=good)[0] == 200
        # refusals are counted under the route the request was for: a POST to .../stats is a task
        # request (GET .../stats is the statistics), as it would be routed with the key
        assert server.request("POST", "/v2/models/mlp/stats", b"{}")[0] == 401
        _, _, metrics = server.request("GET", "/metrics", headers=good)
        refused = [line for line in metrics.decode().splitlines() if 'status="401"' in line]
        assert any('method="POST",route="task"' in line for line in refused), refused
        assert any('method="POST",route="infer"' in line for line in refused), refused
        # refused (401) before its body: an endless trailer after that ends the connection, no second answer
        rss = psutil.Process(server.proc.pid).memory_info().rss
        answer = raw_exchange(server.host, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\nX-T: ", *[b"a" * 65536] * 256)
        assert answer.startswith(b"HTTP/1.1 401") and answer.count(b"HTTP/1.1") == 1, answer[:200]
        assert psutil.Process(server.proc.pid).memory_info().rss - rss < 64 << 20
    finally:
        assert server.stop() == 0, server.log()


def test_chunked_body_over_the_limit_is_413(tmp_path):
    pkg, _ = mlp_package(tmp_path / "mlp", seed=0)
    server = Server(str(pkg), "--max-body-mb", "1")
    try:
        conn = http.client.HTTPConnection(server.host, timeout=30)
        chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB without a Content-Length
        conn.request("POST", "/v2/models/mlp/infer", body=chunks, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        assert r.status == 413 and "limit" in json.loads(r.read())["error"]
        conn.close()
        assert server.healthy()
    finally:
        assert server.stop() == 0, server.log()


def test_the_edges_of_a_connection(tmp_path):
    """A head that stopped within its first read (it was held for good), a 413 answered mid-body
    and then a stalled client (held for good), a client that half-closes after its request (got no
    answer), a %0D%0A in the path (wrote a forged access-log line), and SIGTERM while a body is
    still arriving (30 s, then a plain-text 500)."""
    import socket

    pkg, _ = mlp_package(tmp_path / "mlp", seed=0)
    server = Server(str(pkg), "--body-timeout-s", "1", "--keep-alive-s", "60", "--max-body-mb", "1")
    host, port = server.host.rsplit(":", 1)

    def exchange(data: bytes, *, half_close: bool = False) -> tuple[bytes, float]:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            start, answer = time.monotonic(), b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer, time.monotonic() - start

    try:
        answer, waited = exchange(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # one read, never ended
        assert answer.startswith(b"HTTP/1.1 408") and waited < 10, (answer, waited)
        chunk = b"8000\r\n" + b" " * 0x8000 + b"\r\n"
        answer, waited = exchange(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 40)  # then stalls
        assert answer.startswith(b"HTTP/1.1 413") and waited < 10, (answer[:100], waited)
        x = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [1.0] * 8}]}).encode()
        answer, _ = exchange(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(x), x), half_close=True)
        assert answer.startswith(b"HTTP/1.1 200") and b'"logits"' in answer, answer[:200]
        exchange(b"GET /v2/x%0D%0Aedgekit:%20INFO:%20forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert "\nedgekit: INFO: forged" not in server.log() and "/v2/x\\x0d\\x0aedgekit" in server.log()
        with socket.create_connection((host, int(port)), timeout=30) as sock:  # a body still arriving
            sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.3)
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            answer = sock.recv(65536)
            assert server.proc.wait(30) == 0 and time.monotonic() - start < 10
        assert answer.startswith(b"HTTP/1.1 503") and b"shutting down" in answer, answer
        assert "Traceback" not in server.log() and "ERROR" not in server.log(), server.log()
    finally:
        server.stop()


# -- dynamic batching and graceful shutdown --------------------------------------------------------

def test_dynamic_batching_answers_each_request_and_sigterm_finishes_in_flight(tmp_path):
    pkg, w = mlp_package(tmp_path / "mlp", seed=4)
    server = Server(str(pkg), "--max-batch-size", "16", "--max-queue-delay-ms", "300")
    try:
        md = server.client.get_model_metadata("mlp")
        assert md["edgekit"]["batching"].startswith("on")
        assert "mlp version 1 ready" in server.log() and "warm-up at batch 1-16" in server.log()
        config = server.client.get_model_config("mlp")  # as Triton writes a batching model's: no batch axis
        assert config["max_batch_size"] == 16 and [(i["name"], i["dims"]) for i in config["input"]] == [("x", [8])]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300_000
        rng = np.random.default_rng(5)
        xs = [rng.standard_normal((1 + k % 3, 8)).astype(np.float32) for k in range(12)]

        one = functools.partial(mlp_answer_is_right, server.host, xs, w)
        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(one, range(12)))
        _, _, text = server.request("GET", "/metrics")
        counts = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
                  if line.startswith("edgekit_inference_batch_size_") and 'model="mlp"' in line
                  and ("_count" in line or "_sum" in line)}
        assert counts["edgekit_inference_batch_size_sum"] == 12  # every request ran once ...
        assert counts["edgekit_inference_batch_size_count"] < 12  # ... in fewer runs than requests

        # SIGTERM while a request waits in the batcher's 300 ms window: it is answered, then exit 0
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(one, 0)
            time.sleep(0.1)
            server.proc.send_signal(signal.SIGTERM)
            assert pending.result(timeout=30)
        assert server.proc.wait(30) == 0
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_instances_run_at_once_on_a_model_loaded_for_that_concurrency(models):
    """--instances 2 on each runtime: the model is loaded with concurrency 2 and 12 clients at
    once, with and without batching, all get the right answer."""
    xs = [np.random.default_rng(k).standard_normal((1 + k % 3, 8)).astype(np.float32) for k in range(12)]
    w = builders.mlp_weights()
    for name, runtime, flags in [("mlp.xml", "openvino", []), ("mlp.onnx", "onnxruntime", ["--max-batch-size", "4"]),
                                 ("mlp.tflite", "litert", [])]:
        server = Server(str(models[name]), "--instances", "2", *flags)  # a lone file is served as "mlp"
        try:
            assert f"ready on {runtime}:" in server.log(), server.log()
            assert "x2 instances, a lone request on every core" in server.log(), server.log()
            with ThreadPoolExecutor(12) as pool:
                assert all(pool.map(functools.partial(mlp_answer_is_right, server.host, xs, w), range(12)))
        finally:
            assert server.stop() == 0, server.log()


@pytest.mark.parametrize("batching", [None, repository.Batching(4, 1)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("name", ["mlp.xml", "mlp.onnx", "mlp.tflite"])
def test_a_lone_request_runs_on_the_copy_with_every_core(models, name, batching):
    """With several instances on a CPU, a request that arrives while no other runs takes the copy
    opened for one run (every core); one that arrives while another runs takes the shared copy."""
    import asyncio

    from edgekit.serve.metrics import Metrics
    from edgekit.serve.runner import Runner

    model = edgekit.load(models[name], device="cpu", concurrency=2)
    solo = model.reopen()
    assert (solo.path, solo.backend, solo.device, solo.precision) == \
        (model.path, model.backend, model.device, model.precision)
    w = builders.mlp_weights()
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    ran, second_started = [], threading.Event()

    def run(copy, arrays):  # the copy each run took; the first run beside another waits for that one
        ran.append(copy)
        if len(ran) == 2:
            assert second_started.wait(30)
        elif len(ran) == 3:
            second_started.set()
        out = copy.run(arrays)
        np.testing.assert_allclose(out["logits"], builders.mlp_reference(x, w), rtol=1e-5, atol=1e-5)
        return out

    async def main():
        runner = Runner(model, name="mlp", version=1, metrics=Metrics(), instances=2, batching=batching,
                        solo=solo)
        if batching is None:
            send = functools.partial(runner.call, run, {"x": x})
        else:
            runner._run_batch = lambda copy, batch: [run(copy, item.arrays) for item in batch]
            send = functools.partial(runner.infer, {"x": x})
        try:
            await send()  # alone
            first = asyncio.ensure_future(send())
            async with asyncio.timeout(30):
                while len(ran) < 2:  # running, and held until the next has started
                    await asyncio.sleep(0.001)
            await send()  # beside it
            await first
            await send()  # alone again
        finally:
            await runner.close()

    asyncio.run(main())
    assert ran == [solo, solo, model, solo], ran
    for copy in (model, solo):  # closed with the runner, both
        with pytest.raises(edgekit.EdgekitError, match="this model was closed"):
            copy.run({"x": x})


def test_a_run_whose_request_is_cancelled_counts_until_it_ends(models):
    """The worker goes on with a run whose request was cancelled (a client gone, a shutdown): the
    copy with every core stays taken until it ends, not until the request is gone."""
    import asyncio

    from edgekit.serve.metrics import Metrics
    from edgekit.serve.runner import Runner

    model = edgekit.load(models["mlp.onnx"], device="cpu", concurrency=2)
    solo = model.reopen()
    x = np.ones((1, 8), np.float32)
    ran, release = [], threading.Event()

    def run(copy, arrays):
        ran.append(copy)
        if len(ran) == 1:
            assert release.wait(30)
        return copy.run(arrays)

    async def main():
        runner = Runner(model, name="mlp", version=1, metrics=Metrics(), instances=2, solo=solo)
        try:
            held = asyncio.ensure_future(runner.call(run, {"x": x}))
            async with asyncio.timeout(30):
                while not ran:
                    await asyncio.sleep(0.001)
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
            await runner.call(run, {"x": x})  # the first run still holds the copy with every core
            release.set()
            async with asyncio.timeout(30):
                while runner._running:  # counted off once the worker is done with it
                    await asyncio.sleep(0.001)
            await runner.call(run, {"x": x})
        finally:
            release.set()
            await runner.close()

    asyncio.run(main())
    assert ran == [solo, model, solo], ran


def test_no_copy_for_a_lone_request_is_opened_on_an_accelerator(models):
    """An accelerator runs one inference at a time its own way: several instances there share one
    model, as before, and no second copy takes its memory."""
    import asyncio

    from fault_backend import FaultBackend

    from edgekit import backends
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.models import ModelManager
    from edgekit.types import DeviceKind

    fake = FaultBackend("fake", {"GPU0": (DeviceKind.GPU, "ok")})
    backends.register("fake", fake)
    manager = ModelManager([models["mlp.onnx"]], metrics=Metrics(), device="gpu", instances=2)
    on_gpu = edgekit.load(models["mlp.onnx"], device="gpu", concurrency=2)
    on_cpu = edgekit.load(models["mlp.onnx"], device="onnxruntime:cpu", concurrency=2)
    served, entry = manager.models["mlp"], None
    try:
        assert asyncio.run(manager._solo(on_gpu, served, entry, 1)) is None
        assert fake.opened == ["GPU0"]  # opened once, by load
        solo = asyncio.run(manager._solo(on_cpu, served, entry, 1))
        assert solo is not None and (solo.backend, solo.device) == ("onnxruntime", "CPUExecutionProvider")
        solo.close()
    finally:
        on_gpu.close()
        on_cpu.close()


def test_a_warm_up_that_fails_only_warns_and_the_model_is_served(tmp_path):
    """A graph that claims a dynamic batch but reshapes to one row (a shape computed at run time,
    so the runtime cannot see it in advance): its warm-up at batch 2 fails. Batching is turned off,
    with the reason in the log and the metadata, and the model still answers batch-1 requests."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
         helper.make_node("Mul", ["top", "zero"], ["nought"]),
         helper.make_node("Cast", ["nought"], ["nought_i"], to=TensorProto.INT64),
         helper.make_node("Add", ["nought_i", "one_row"], ["shape"]),
         helper.make_node("Reshape", ["x", "shape"], ["y"])], "one_row",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero"),
         numpy_helper.from_array(np.array([1, 8], np.int64), "one_row")])
    pkg = make_package(tmp_path / "one", builders._save_onnx(g, tmp_path / "one.onnx"), "one")
    server = Server(str(pkg), "--max-batch-size", "4", "--max-queue-delay-ms", "1")
    try:
        log = server.log()
        assert "one version 1: dynamic batching off, a run at batch 2 failed" in log, log
        assert "one version 1 ready" in log and "warm-up at batch 1:" in log
        assert server.client.get_model_metadata("one")["edgekit"]["batching"].startswith("off: a run at batch 2")
        x = np.arange(8, dtype=np.float32)[None]
        np.testing.assert_array_equal(infer(server.client, "one", {"x": x}).as_numpy("y"), x)
        assert server.healthy()
    finally:
        assert server.stop() == 0, server.log()


def test_warm_up_runs_each_batch_size_within_its_time_budget(tmp_path):
    from edgekit.serve.runner import warm_up

    seen = []
    with edgekit.load(builders.mlp_onnx(tmp_path / "mlp.onnx", builders.mlp_weights())) as model:
        run = model.run
        model.run = lambda feeds: seen.append(feeds["x"].shape) or run(feeds)  # the real run, observed
        assert warm_up(model, range(1, 5)) == (4, None)
        assert seen == [(1, 8), (2, 8), (3, 8), (4, 8)]
        seen.clear()
        assert warm_up(model, range(1, 5), budget_s=0) == (1, None)  # out of time after the first
        assert seen == [(1, 8)]


def test_bytes_on_a_text_classifier_score_every_text_in_one_run(samples, tmp_path):
    """The BYTES form of /infer on a text-classification package: one scores row per text, as the task
    gives them (MiniLM's 384 outputs stand in for a classifier's logits)."""
    import types

    from edgekit.serve.app import _run_text_task
    from edgekit.tasks import TextClassifier

    pkg = tmp_path / "clf"
    pkg.mkdir()
    manifest = json.loads((samples["text"] / "edgekit.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] == "model-fp32.onnx"]
    for name in ("model-fp32.onnx", "tokenizer.json"):
        shutil.copy(samples["text"] / name, pkg / name)
    manifest.update(task="text-classification", labels=[f"class {i}" for i in range(384)])
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    texts = ["A man plays guitar.", "Stocks fell."]
    with TextClassifier(pkg) as clf:
        version = types.SimpleNamespace(task="text-classification", task_object=lambda model: clf)
        got = _run_text_task(clf.model, version, np.array([t.encode() for t in texts], dtype=object))["scores"]
        assert got.shape == (2, 384) and got.dtype == np.float32
        np.testing.assert_allclose(got, np.stack([clf.scores(t) for t in texts]), atol=1e-6)
