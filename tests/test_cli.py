"""The real `edgekit` command: every subcommand, text and --json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from samples.synthetic import mlp_reference


def test_devices_json_lists_every_backend_with_reasons():
    out = run_cli("devices", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    specs = {d["spec"]: d for d in doc["devices"]}
    for cpu in ("onnxruntime:CPUExecutionProvider", "openvino:CPU", "litert:CPU"):
        assert specs[cpu]["available"] and specs[cpu]["kind"] == "cpu"
    unavailable = [d for d in doc["devices"] if not d["available"]]
    assert unavailable and all(d["reason"] for d in unavailable)
    assert {"onnxruntime", "openvino", "litert"} <= set(doc["runtimes"])
    ov_cpu = specs["openvino:CPU"]
    assert ov_cpu["device_type"] in ("integrated", "discrete") and "FP32" in ov_cpu["capabilities"]


def test_devices_table():
    out = run_cli("devices")
    assert out.returncode == 0
    assert "litert:CPU" in out.stdout and "why not" in out.stdout


@pytest.mark.parametrize(("name", "fmt", "version_key"),
                         [("mlp.onnx", "onnx", "opsets"), ("mlp.xml", "openvino", "ir_version"),
                          ("mlp.tflite", "tflite", "signatures")])
def test_info_json_for_each_format(models, name, fmt, version_key):
    out = run_cli("info", str(models[name]), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["format"] == fmt and doc["size_bytes"] > 0 and version_key in doc
    assert doc["inputs"][0]["name"] == "x" and doc["inputs"][0]["shape"][1] == 8
    assert doc["outputs"][0]["name"] == "logits"


def test_info_text(models):
    out = run_cli("info", str(models["mlp.xml"]))
    assert out.returncode == 0
    assert "x: float32[?, 8]" in out.stdout and "format: openvino" in out.stdout


@pytest.mark.parametrize("name", ["mlp.onnx", "mlp.xml", "mlp.tflite"])
def test_run_with_npy_inputs_writes_npz(models, mlp_weights, tmp_path, name):
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_file = tmp_path / "out.npz"
    out = run_cli("run", str(models[name]), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out_file),
                  "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["outputs"]["logits"]["shape"] == [3, 3]
    assert doc["selection"]["chosen"] == f"{doc['backend']}:{doc['device']}"
    got = np.load(out_file)["logits"]
    np.testing.assert_allclose(got, mlp_reference(x, mlp_weights), rtol=1e-5, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]  # no temp left behind
    assert doc["written"] == str(out_file) and (out_file.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_litert_notice_goes_to_logging_not_stderr(models):
    """LiteRT printed "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ on every command
    that opened a .tflite (run, bench, convert's check, serve): it is now a debug line of edgekit's log."""
    quiet = run_cli("run", str(models["mlp.tflite"]), "--synthetic")
    assert quiet.returncode == 0 and "ran on litert:CPU" in quiet.stdout, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    debug = run_cli("-vv", "run", str(models["mlp.tflite"]), "--synthetic")
    assert "edgekit: DEBUG: LiteRT: INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in debug.stderr
    # what another thread writes to stderr meanwhile stays on stderr, as it was
    code = f"""
import os, threading, edgekit
done = threading.Event()
def chatter():
    while not done.is_set():
        os.write(2, b"another thread\\n")
threading.Thread(target=chatter, daemon=True).start()
edgekit.load({str(models["mlp.tflite"])!r}, device="litert").close()
done.set()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines and set(lines) == {"another thread"}, set(lines)


def test_run_out_names_the_file_it_wrote(models, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    out = run_cli("run", str(models["mlp.onnx"]), "-i", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o2"))
    assert out.returncode == 0 and f"outputs written to {tmp_path / 'o2.npz'}" in out.stdout
    out = run_cli("run", str(models["mlp.onnx"]), "-i", str(tmp_path / "x.npy"), "--out", str(tmp_path))
    assert out.returncode == 2 and "a folder; --out takes a file name" in out.stderr


def test_run_text_output_and_single_input_shorthand(models, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    out = run_cli("run", str(models["mlp.onnx"]), "-i", str(tmp_path / "x.npy"), "--device", "openvino")
    assert out.returncode == 0, out.stderr
    assert "ran on openvino:CPU (f32)" in out.stdout and "logits: float32[1, 3]" in out.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["--input", "x=missing.npy"], "missing.npy: no such input file"),
    ([], "no inputs: give --input"),
    (["--synthetic", "--device", "warp"], "unknown device 'warp'"),
    (["--synthetic", "--device", "onnxruntime:CUDAExecutionProvider"], "not available here"),
])
def test_run_usage_errors_exit_2_without_traceback(models, args, fragment):
    out = run_cli("run", str(models["mlp.onnx"]), *args)
    assert out.returncode == 2
    assert fragment in out.stderr and "Traceback" not in out.stderr


def test_unusable_output_paths_exit_2_naming_the_path(models, tmp_path):
    """A path the system refuses (a file where a folder goes, a folder nothing may be made in) is one line."""
    (tmp_path / "plain").write_text("not a folder")
    blocked = tmp_path / "plain" / "sub"
    for args in (["run", str(models["mlp.onnx"]), "--synthetic", "--out", str(blocked / "o.npz")],
                 ["samples", "build", "--out", str(blocked)]):
        out = run_cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert str(blocked) in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2, out.stderr  # samples build says where it builds first


def test_run_wrong_input_shape_names_the_input(models, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 9), np.float32))
    out = run_cli("run", str(models["mlp.tflite"]), "-i", f"x={tmp_path / 'x.npy'}")
    assert out.returncode == 2 and "input 'x'" in out.stderr and "dim 1 must be 8" in out.stderr


def test_bench_all_devices_json(models):
    out = run_cli("bench", str(models["mlp.onnx"]), "--all-devices", "--runs", "5", "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = {f"{r['backend']}:{r['device']}": r for r in doc["results"]}
    assert set(rows) == {"onnxruntime:CPUExecutionProvider", "openvino:CPU"}
    for r in rows.values():
        assert r["runs"] == 5
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["peak_rss_mb"] > 10
    assert "[1/2]" in out.stderr  # progress goes to stderr, JSON alone on stdout


def test_bench_default_device_table(models):
    out = run_cli("bench", str(models["mlp.tflite"]), "--runs", "3", "--warmup", "0")
    assert out.returncode == 0, out.stderr
    assert "litert:CPU" in out.stdout and "p50 ms" in out.stdout


def test_bench_with_an_input_no_candidate_takes_is_a_bad_input(models, tmp_path):
    """A mis-shaped --input is exit 2 with the problem, as for run (bench said exit 1, empty table)."""
    np.save(tmp_path / "x.npy", np.zeros((3, 5), np.float32))
    for args in ([], ["--all-devices"]):
        out = run_cli("bench", str(models["mlp.onnx"]), "--input", f"x={tmp_path / 'x.npy'}", "--runs", "2", *args)
        assert out.returncode == 2, out.stderr
        assert "edgekit: error: input 'x'" in out.stderr and "Traceback" not in out.stderr


def test_a_failed_command_with_json_says_why_on_stdout(models, tmp_path):
    out = run_cli("run", str(tmp_path / "missing.onnx"), "--synthetic", "--json")
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == 2 and "missing.onnx" in doc["error"] and doc["error"] in out.stderr


def test_strict_flag_and_runtime_failure_exit_1(models, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "unknown-op.onnx")  # a runtime that fails to open it
    out = run_cli("run", str(tmp_path / "unknown-op.onnx"), "--synthetic", "--device", "onnxruntime", "--strict")
    assert out.returncode == 1
    assert "strict" in out.stderr and "not a registered function/op" in out.stderr and "Traceback" not in out.stderr
    # a request no candidate can meet (fp16 of a file ONNX Runtime runs as stored) is the caller's: 2,
    # as for --device gpu (it was 1, a runtime failure)
    out = run_cli("run", str(models["mlp.onnx"]), "--synthetic", "--device", "onnxruntime",
                  "--precision", "fp16", "--strict")
    assert out.returncode == 2 and "at precision fp16 is not available here" in out.stderr


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("devices", "info", "run", "bench"):
        assert cmd in out.stdout


def test_info_and_run_on_a_package(models, tmp_path):

    from edgekit import formats

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(models["mlp.tflite"], pkg / "mlp.tflite")
    manifest = {"schema_version": 1, "name": "demo-mlp", "task": None, "labels": ["a", "b", "c"],
                "artifacts": [{"path": "mlp.tflite", "format": "tflite", "precision": "fp32",
                               "sha256": formats.sha256_files([pkg / "mlp.tflite"])}]}
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    out = run_cli("info", str(pkg), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["name"] == "demo-mlp" and doc["artifacts"][0]["format"] == "tflite"
    assert doc["manifest"]["labels"] == ["a", "b", "c"] and doc["inputs"][0]["name"] == "x"
    out = run_cli("run", str(pkg), "--synthetic", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["selection"]["attempts"][-1]["artifact"].startswith("mlp.tflite")
    manifest["artifacts"].append({"path": "gone.onnx", "format": "onnx", "precision": "fp32"})
    (pkg / "edgekit.json").write_text(json.dumps(manifest))  # a listed file deleted: info says so
    out = run_cli("info", str(pkg), "--json")
    assert out.returncode == 0, out.stderr
    assert [a["status"] for a in json.loads(out.stdout)["artifacts"]] == ["ok", "missing"]


def test_output_piped_into_a_closed_reader_ends_quietly(models):
    import subprocess
    import sys

    for reader in ("head -c 10", "true"):  # reads a little / reads nothing and exits
        proc = subprocess.run(f"{sys.executable} -m edgekit devices --json | {reader}", shell=True,
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_sigterm_ends_bench_and_its_child_process(models):
    """bench times each candidate in a child process, which a SIGTERM sent to edgekit alone does not
    reach: edgekit ends it, then exits 143 with one line."""
    import signal

    import psutil

    code, _, err, children = _signal_while_benchmarking(models["mlp.onnx"], signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    assert "edgekit: terminated" in err and "Traceback" not in err, err


def test_bench_all_devices_leaves_out_an_artifact_that_fails_its_checksum(models, tmp_path):

    from edgekit import formats

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name in ("mlp.onnx", "mlp.tflite"):
        shutil.copy(models[name], pkg / name)
    manifest = {"artifacts": [{"path": n, "format": n.split(".")[1], "precision": "fp32",
                               "sha256": formats.sha256_files([pkg / n])} for n in ("mlp.onnx", "mlp.tflite")]}
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    (pkg / "mlp.tflite").write_bytes((pkg / "mlp.tflite").read_bytes()[:-4] + b"oops")
    out = run_cli("bench", str(pkg), "--all-devices", "--runs", "3", "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    assert "left out of the benchmark" in out.stderr and "mlp.tflite: checksum mismatch" in out.stderr
    rows = json.loads(out.stdout)["results"]
    assert rows and all(r["artifact"].endswith("mlp.onnx") for r in rows), rows


def test_bench_all_devices_times_every_artifact_on_the_same_input_sizes(tmp_path):
    """As device="fastest" does: the ONNX artifact's open sequence was timed at 1 beside the TFLite's 6."""
    from test_fastest_and_package import _text_like_package

    out = run_cli("bench", str(_text_like_package(tmp_path)), "--all-devices", "--runs", "2", "--warmup", "0",
                  "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert {r["artifact"] for r in rows} == {"add.onnx", "add.tflite"}, rows
    assert all(r["inputs"] == {"a": [1, 6], "b": [1, 6]} for r in rows), rows


def test_bench_of_a_packages_lone_file_uses_the_packages_warmup_sizes(samples):
    """Silero's own model.onnx needs a whole window and its sample rate; [1, 1] fails in its graph.
    `run --synthetic` takes the same sizes (it failed with exit 2, blaming inputs nobody gave)."""
    out = run_cli("bench", str(samples["audio"] / "model.onnx"), "--device", "onnxruntime", "--runs", "3",
                  "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["failures"] == [] and len(doc["results"]) == 1 and doc["results"][0]["p50_ms"] > 0, doc
    out = run_cli("run", str(samples["audio"] / "model.onnx"), "--synthetic", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"]["output"]["shape"] == [1, 1]


def test_synthetic_masks_are_ones(samples):
    """An all-0 attention mask masked out every token: MiniLM's synthetic embedding was all zeros,
    and `bench` timed that degenerate input."""
    from edgekit.bench import synthetic_inputs
    from edgekit.types import TensorSpec

    out = run_cli("run", str(samples["text"]), "--synthetic", "--json")
    assert out.returncode == 0, out.stderr
    embedding = json.loads(out.stdout)["outputs"]["sentence_embedding"]
    assert embedding["max"] > 0.1, embedding
    i64 = np.dtype(np.int64)
    specs = [TensorSpec("input_ids", ("b", 4), i64), TensorSpec("attention_mask", ("b", 4), i64),
             TensorSpec("key_padding_mask", (1, 4), np.dtype(np.bool_))]
    feeds = synthetic_inputs(specs, integer=0)
    assert not feeds["input_ids"].any() and feeds["attention_mask"].all() and feeds["key_padding_mask"].all()


def test_run_arguments_that_contradict_themselves_are_refused(models, samples, tmp_path):
    """A repeated --input kept the last silently; --synthetic beside --input was ignored; /dev/null
    was "no such file"."""
    np.save(tmp_path / "a.npy", np.zeros((1, 8), np.float32))
    np.save(tmp_path / "b.npy", np.ones((1, 8), np.float32))
    model = str(models["mlp.onnx"])
    out = run_cli("run", model, "--input", f"x={tmp_path / 'a.npy'}", "--input", f"x={tmp_path / 'b.npy'}")
    assert out.returncode == 2 and f"input 'x' is given twice (the second time in {tmp_path / 'b.npy'})" in out.stderr
    out = run_cli("run", model, "--input", f"x={tmp_path / 'a.npy'}", "--synthetic")
    assert out.returncode == 2 and "give --input or --synthetic, not both" in out.stderr
    out = run_cli("run", model, "--input", "x=/dev/null")
    assert out.returncode == 2 and "/dev/null: not a regular file" in out.stderr
    out = run_cli("predict", str(samples["image"]), "/dev/null")
    assert out.returncode == 2 and "/dev/null: not a regular file" in out.stderr
    # NAME=FILE.npz took every array of the file, whatever NAME said
    np.savez(tmp_path / "one.npz", a=np.ones((1, 8), np.float32))
    np.savez(tmp_path / "two.npz", x=np.ones((1, 8), np.float32), y=np.zeros((1, 8), np.float32))
    out = run_cli("run", model, "--input", f"x={tmp_path / 'one.npz'}", "--json")
    assert out.returncode == 0, out.stderr  # the file's only array, as x
    out = run_cli("run", model, "--input", f"x={tmp_path / 'two.npz'}", "--json")
    assert out.returncode == 0, out.stderr  # its x alone: its y would be an unknown input
    out = run_cli("run", model, "--input", f"z={tmp_path / 'two.npz'}")
    assert out.returncode == 2 and "holds no array named 'z' (it holds x, y)" in out.stderr
    (tmp_path / "notes.py").write_text("print(1)\n")  # NumPy advised allow_pickle "if you trust the file"
    out = run_cli("run", model, "--input", f"x={tmp_path / 'notes.py'}")
    assert out.returncode == 2 and "notes.py: not a .npy/.npz file" in out.stderr and "pickle" not in out.stderr


def _peak_in_a_fresh_process() -> float:
    from edgekit.bench import peak_rss_mb

    return peak_rss_mb()


def test_a_benchmark_child_reports_its_own_peak_memory_not_its_parents():
    """getrusage's maxrss survives exec: a child spawned by a 500 MB parent reported 515 MB."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from edgekit.bench import peak_rss_mb

    ballast = bytearray(400 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident, not just reserved
    assert peak_rss_mb() > 400
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        child = pool.submit(_peak_in_a_fresh_process).result()
    assert 5 < child < 300, child
    del ballast


@pytest.mark.parametrize("args", [["bench", "x.onnx", "--runs", "abc", "--json"], ["info", "--json"],
                                  ["samples", "bogus", "--json"], ["devices", "--json", "--bogus"]],
                         ids=["bad-int", "missing-argument", "bad-choice", "unknown-option"])
def test_a_usage_error_with_json_gives_the_one_document_too(args):
    """argparse's errors printed the usage on stderr and nothing on stdout, where a script waits for JSON."""
    out = run_cli(*args)
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == 2 and doc["error"] and doc["error"] in out.stderr and "usage:" in out.stderr
    out = run_cli(*[a for a in args if a != "--json"])  # without --json: stdout stays empty
    assert out.returncode == 2 and out.stdout == "" and "usage:" in out.stderr


def _signal_while_benchmarking(model, sig: int, *args: str, group: bool = False, after: float = 1.0):
    """Start `edgekit bench MODEL --runs 10000000 ARGS` in a session of its own, wait until its child
    process runs (plus ``after`` seconds), send ``sig`` to edgekit alone or, as a terminal's Ctrl-C
    does, to its whole process group; return (exit code, stdout, stderr, the children seen)."""
    import subprocess
    import sys
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "bench", str(model), "--runs", "10000000", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, children = time.monotonic() + 60, []
        while not children and time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.02)
        assert children, "bench started no child process"
        time.sleep(after)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        return proc.returncode, out, err, children
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_command_with_json_says_so_on_stdout(models, sig):
    """Ctrl-C (exit 130) and SIGTERM (143) left stdout empty under --json."""
    import signal

    sig = getattr(signal, sig)
    code, out, err, _ = _signal_while_benchmarking(models["mlp.onnx"], sig, "--json", group=sig == signal.SIGINT)
    why = "interrupted" if sig == signal.SIGINT else "terminated"
    assert code == 128 + sig, err
    assert json.loads(out) == {"error": why, "exit_code": 128 + sig}, out
    assert f"edgekit: {why}" in err


def test_run_json_stays_strict_json_when_outputs_are_not_finite(models, tmp_path):
    """NaN and infinities came out as Python's NaN / Infinity, which strict JSON parsers refuse."""
    a = np.array([[np.nan, np.inf, -np.inf, 2.0]], np.float32)
    np.savez(tmp_path / "x.npz", a=a, b=np.zeros((1, 4), np.float32))
    out = run_cli("run", str(models["add.onnx"]), "--input", str(tmp_path / "x.npz"), "--json")
    assert out.returncode == 0, out.stderr

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    y = json.loads(out.stdout, parse_constant=refuse)["outputs"]["y"]
    assert y["first"] == [None, None, None, 2.0] and y["non_finite"] == {"nan": 1, "inf": 1, "-inf": 1}
    assert y["min"] == y["max"] == y["mean"] == 2.0  # of the finite values
    out = run_cli("run", str(models["add.onnx"]), "--input", str(tmp_path / "x.npz"))
    assert out.returncode == 0 and "not finite: 1 nan, 1 inf, 1 -inf" in out.stdout, out.stdout
    np.savez(tmp_path / "nan.npz", a=np.full((1, 4), np.nan, np.float32), b=np.zeros((1, 4), np.float32))
    out = run_cli("run", str(models["add.onnx"]), "--input", str(tmp_path / "nan.npz"), "--json")
    y = json.loads(out.stdout, parse_constant=refuse)["outputs"]["y"]
    assert y["min"] is None and y["non_finite"]["nan"] == 4


@pytest.mark.parametrize(("group", "after"), [(True, 0.05), (True, 1.0), (False, 1.0)],
                         ids=["ctrl-c-while-the-child-starts", "ctrl-c-while-it-times", "sigint-to-edgekit-alone"])
def test_ctrl_c_ends_bench_and_its_child_without_a_traceback(models, group, after):
    """A terminal's Ctrl-C reaches bench's child too, which printed a KeyboardInterrupt traceback from
    wherever it was (its imports); a SIGINT sent to edgekit alone left it waiting for all the runs."""
    import signal

    import psutil

    code, _, err, children = _signal_while_benchmarking(models["mlp.onnx"], signal.SIGINT, group=group, after=after)
    assert code == 130 and "edgekit: interrupted" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err

    def running(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if running(p)], alive


def test_a_bench_worker_ends_with_edgekit_killed(models):
    """A worker ignores SIGINT, so one left behind by a kill -9 (the OOM killer) ran all its runs, deaf to
    Ctrl-C: it now gets a SIGTERM when its parent dies."""
    import signal

    import psutil

    code, _, _, children = _signal_while_benchmarking(models["mlp.onnx"], signal.SIGKILL, after=0.5)
    assert code == -signal.SIGKILL
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive


def test_bench_all_devices_of_a_corrupt_file_is_one_bad_file_error(tmp_path):
    """Without --all-devices: "not a valid ONNX model", exit 2. With it: exit 1, a BrokenProcessPool row
    (the child's ModelFileError did not unpickle) and a row of TensorFlow noise from OpenVINO."""
    import pickle

    from edgekit.errors import ModelFileError

    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(bytes(range(256)) * 2)
    out = run_cli("bench", str(bad), "--all-devices", "--runs", "2", "--json")
    assert out.returncode == 2, out.stderr
    doc = json.loads(out.stdout)
    assert doc["exit_code"] == 2 and f"{bad}: not a valid ONNX model" in doc["error"], doc
    assert "BrokenProcessPool" not in out.stderr and "tensorflow" not in out.stderr.lower(), out.stderr
    assert "[1/" not in out.stderr  # refused before any device's run
    error = ModelFileError(bad, "not a valid ONNX model")
    error.add_note("a note")
    again = pickle.loads(pickle.dumps(error))
    assert (again.path, again.problem, again.__notes__) == (str(bad), "not a valid ONNX model", ["a note"])
    assert str(again) == f"{bad}: not a valid ONNX model"


def _mlp_package(models, folder):

    from edgekit import formats

    folder.mkdir()
    shutil.copy(models["mlp.onnx"], folder / "mlp.onnx")
    manifest = {"artifacts": [{"path": "mlp.onnx", "format": "onnx", "precision": "fp32",
                               "sha256": formats.sha256_files([folder / "mlp.onnx"])}]}
    (folder / "edgekit.json").write_text(json.dumps(manifest))
    return folder


def test_bench_all_devices_with_an_unknown_precision_is_one_usage_error(models, tmp_path):
    """It was exit 1 with a failed row per device; `run` says it once, exit 2."""
    for model in (_mlp_package(models, tmp_path / "pkg"), models["mlp.onnx"]):
        out = run_cli("bench", str(model), "--all-devices", "--precision", "bogus", "--runs", "2", "--json")
        assert out.returncode == 2, out.stderr
        assert json.loads(out.stdout)["error"] == \
            "unknown precision 'bogus'; choose one of: stored, fp32, fp16, bf16, any"
        assert "[1/" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bench_all_devices_lists_files_that_cannot_meet_the_precision_as_skipped(samples, tmp_path):
    """As load's selection does: they were "failed" rows beside the timed ones."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    manifest = json.loads((samples["image"] / "edgekit.json").read_text())
    keep = ("model-fp32.onnx", "model-int8.onnx")
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] in keep]
    for name in keep:
        shutil.copy(samples["image"] / name, pkg / name)
    (pkg / "edgekit.json").write_text(json.dumps(manifest))
    out = run_cli("bench", str(pkg), "--all-devices", "--precision", "fp32", "--runs", "2", "--warmup", "0", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["failures"] == [] and {r["artifact"] for r in doc["results"]} == {"model-fp32.onnx"}, doc
    assert doc["skipped"] and all(s["artifact"] == "model-int8.onnx" and "stored in int8" in s["reason"]
                                  for s in doc["skipped"]), doc
    text = run_cli("bench", str(pkg), "--all-devices", "--precision", "fp32", "--runs", "2", "--warmup", "0")
    assert text.returncode == 0 and "model-int8.onnx: skipped: " in text.stdout and "failed" not in text.stdout
    # nothing left to time: the caller's request cannot be met (exit 2, as load says it), no worker started
    (pkg / "edgekit.json").write_text(json.dumps({**manifest, "artifacts": [
        a for a in manifest["artifacts"] if a["path"] == "model-int8.onnx"]}))
    none = run_cli("bench", str(pkg), "--all-devices", "--precision", "fp32", "--runs", "2", "--json")
    assert none.returncode == 2 and "[1/" not in none.stderr and "Traceback" not in none.stderr, none.stderr
    assert json.loads(none.stdout)["error"].startswith(f"{pkg}: nothing in it can run at precision fp32 "
                                                       f"(model-int8.onnx on "), none.stdout


def test_samples_build_refuses_an_empty_only_or_out(tmp_path):
    """`--only ""` built every sample, `--out ""` built into the default folder, and image,bogus built the
    image before it refused bogus."""
    env = {"EDGEKIT_SAMPLES_DIR": str(tmp_path / "default")}
    for only, problem in (("image,,text", "--only has an empty entry ('image,,text')"), ("", "--only is empty"),
                          (" ", "--only is empty"), ("image,bogus", "unknown sample 'bogus'")):
        out = run_cli("samples", "build", "--only", only, "--out", str(tmp_path / "out"), "--json", env=env)
        assert out.returncode == 2, out.stderr
        assert json.loads(out.stdout)["error"].startswith(problem) and "image" in out.stderr
    out = run_cli("samples", "build", "--out", "", env=env)
    assert out.returncode == 2 and "--out is empty" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing built, anywhere


def test_samples_list_shows_what_only_names(samples):
    """`samples list --only image` listed every sample."""
    out = run_cli("samples", "list", "--only", "image,audio", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["sample"] for r in json.loads(out.stdout)["samples"]] == ["image", "audio"]
    out = run_cli("samples", "list", "--only", "video")
    assert out.returncode == 2 and "unknown sample 'video'" in out.stderr, out.stderr


def test_run_refuses_an_empty_out(models):
    """`--out ""` ran the model, wrote nothing and exited 0."""
    out = run_cli("run", str(models["mlp.onnx"]), "--synthetic", "--out", "", "--json")
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["error"].startswith("--out is empty")


def test_an_unreadable_manifest_is_said_to_be_unreadable(models, tmp_path):
    """A package whose edgekit.json cannot be read was "not valid JSON ([Errno 13] Permission denied: ...)";
    a model file says "cannot be read (Permission denied)", and so does it now."""
    import subprocess
    import sys

    pkg = _mlp_package(models, tmp_path / "pkg")
    prefix = []
    if os.geteuid() == 0:  # root reads a mode-000 file: run edgekit without the capabilities that let it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, with no setpriv to drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    (pkg / "edgekit.json").chmod(0)
    try:
        out = subprocess.run([*prefix, sys.executable, "-m", "edgekit", "info", str(pkg), "--json"],
                             capture_output=True, text=True, timeout=120)
    finally:
        (pkg / "edgekit.json").chmod(0o644)
    if prefix and out.returncode != 2 and "setpriv" in out.stderr:
        pytest.skip(f"setpriv cannot drop the capabilities here: {out.stderr.strip()}")
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["error"] == f"{pkg / 'edgekit.json'}: cannot be read (Permission denied)"
    assert "Traceback" not in out.stderr


def test_predict_help_describes_every_argument():
    """--device had no help; MODEL was "a package folder" only, though a converted model file works too."""
    out = run_cli("predict", "--help", env={"COLUMNS": "200"})
    assert out.returncode == 0
    assert "or a model file edgekit converted, which carries its package's card" in out.stdout, out.stdout
    assert re.search(r"--device DEVICE +auto \| fastest \| cpu \| gpu \| npu \| tpu \| BACKEND \| BACKEND:DEVICE",
                     out.stdout), out.stdout
    assert re.search(r"--precision PRECISION\s+stored \(default\) \| fp32 \| fp16 \| bf16 \| any",
                     out.stdout), out.stdout
