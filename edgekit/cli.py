"""The ``edgekit`` command: devices, info, run, bench (samples, predict, demo in cli_tasks; serve, repo in
cli_serve; convert in converters.cli).

Every command takes ``--json`` (one JSON document on stdout; logs and progress go
to stderr). Errors print one line without a traceback: exit 2 for a bad file,
input or argument, 1 for a runtime failure. Heavy modules load inside commands,
so ``edgekit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from . import __version__, cli_serve, cli_tasks
from .errors import BackendError, DeviceNotAvailableError, EdgekitError, InputError, UsageError

log = logging.getLogger("edgekit")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors also give ``--json``'s one document on stdout (when
    ``json_errors``): a script reading it learns why there is no other. Every subcommand's parser is
    one too (``add_parser`` makes them of the parent's class, with the keywords ``add`` passes)."""

    def __init__(self, *args, json_errors: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str):
        if self.json_errors:
            _emit_json({"error": message, "exit_code": 2})
            sys.stdout.flush()
        super().error(message)  # the usage and the message on stderr, exit 2


def _wants_json(argv: list[str]) -> bool:
    """``--json`` is among the options (argparse also takes a prefix of it, such as ``--js``), before
    any ``--`` (after which it would be an operand)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(len(a) >= 3 and "--json".startswith(a) for a in options)


def _parser(json_errors: bool = False) -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="edgekit", description="Run ML models on the device in front of you.",
                        json_errors=json_errors)
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, json_errors=json_errors)
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")
        return sp

    d = add("devices", "List every backend's devices, and why any known one is unavailable.")
    d.add_argument("--available", action="store_true", help="only devices that can be used here")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help=".onnx, .xml (+.bin), .tflite, or a package folder")
        sp.add_argument("--device", default="auto",
                        help="auto | fastest | cpu | gpu | npu | tpu | BACKEND | BACKEND:DEVICE (default auto)")
        sp.add_argument("--precision", default=None,
                        help="stored (default) | fp32 | fp16 | bf16 | any: reduced precision only when asked")
        sp.add_argument("--strict", action="store_true", help="fail instead of falling back")

    i = add("info", "Show a model's format, versions, size, inputs, outputs and metadata.")
    i.add_argument("model", help=".onnx, .xml (+.bin), .tflite, or a package folder")

    r = add("run", "Run a model on inputs from .npy/.npz files.")
    model_args(r)
    r.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input; FILE.npy alone for a single-input model, FILE.npz for several")
    r.add_argument("--synthetic", action="store_true", help="run on synthetic inputs instead")
    r.add_argument("--out", "-o", metavar="OUT.npz", help="write all outputs to this .npz")

    b = add("bench", "Measure load time, first inference, latency percentiles, throughput, peak RSS.")
    model_args(b)
    b.add_argument("--all-devices", action="store_true",
                   help="one row per usable candidate (instead of --device)")
    b.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                   help="inputs to time on (default: synthetic)")
    cli_tasks.add_parsers(add)
    cli_serve.add_parsers(add)
    _add_convert(add)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(json_errors=_wants_json(argv))
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not args.command:
        parser.print_help()
        return 2
    handler = {"devices": cmd_devices, "info": cmd_info, "run": cmd_run, "bench": cmd_bench,
               "samples": _task_command(cli_tasks.cmd_samples), "predict": _task_command(cli_tasks.cmd_predict),
               "demo": _task_command(cli_tasks.cmd_demo), "convert": _task_command(_cmd_convert),
               "serve": _task_command(cli_serve.cmd_serve), "repo": _task_command(cli_serve.cmd_repo)}[args.command]
    # SIGTERM (a build step's timeout, kill) ends a command as Ctrl-C does: every clean-up on the way
    # out runs, so no staging folder or child process is left. `serve` installs its own for a graceful stop.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    args.json_documents = _json_documents  # those printed before this command: it prints one
    try:
        code = handler(args) or 0
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except UsageError as e:
        return _failed(args, str(e), 2)
    except EdgekitError as e:
        return _failed(args, str(e), 1)
    except KeyboardInterrupt:
        return _stopped(args, "interrupted", 130)
    except BrokenPipeError:  # `edgekit ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a path given that cannot be written or read (/proc/x, a file where a folder goes)
        if e.filename is None:
            return _failed(args, str(e), 1)
        return _failed(args, f"{e.filename}: {e.strerror or e}", 2)
    except Terminated:
        return _stopped(args, "terminated", 128 + signal.SIGTERM)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _failed(args, message: str, code: int) -> int:
    """One line on stderr; with ``--json`` also ``{"error": ..., "exit_code": ...}`` on stdout, so a
    script reading the document learns why there is no other."""
    print(f"edgekit: error: {message}", file=sys.stderr)
    _json_failure(args, message, code)
    return code


def _stopped(args, why: str, code: int) -> int:
    """Ctrl-C (``interrupted``, 130) or SIGTERM (``terminated``, 143): one line on stderr and, with
    ``--json``, ``{"error": why, "exit_code": code}`` on stdout."""
    print(f"edgekit: {why}", file=sys.stderr)
    with contextlib.suppress(OSError):  # a reader gone with the interrupted pipeline
        _json_failure(args, why, code)
        sys.stdout.flush()
    return code


def _json_failure(args, message: str, code: int) -> None:
    """With ``--json``, the failure's document, unless the command has printed its one already."""
    written = getattr(args, "json_written", False) or _json_documents > getattr(args, "json_documents", 0)
    if getattr(args, "json", False) and not written:
        _emit_json({"error": message, "exit_code": code})


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (not caught by ``except Exception``)."""


def _terminate(signum, frame) -> None:
    """SIGTERM: end this command's child processes (a bench run, onnx2tf and what it started), which
    a signal sent to one pid does not reach, then unwind as Ctrl-C does."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.terminate()
    raise Terminated


def _add_convert(add) -> None:
    try:
        from converters.cli import add_parser
    except ImportError:  # edgekit installed without its converters package
        return
    add_parser(add)


def _cmd_convert(args, emit_json, table) -> int:
    from converters.cli import cmd_convert

    return cmd_convert(args, emit_json, table)


def _task_command(fn):
    return lambda args: fn(args, _emit_json, _table)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edgekit: %(levelname)s: %(message)s"))
    root = logging.getLogger("edgekit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


_json_documents = 0  # printed by _emit_json in this process


def _emit_json(doc) -> None:
    """``doc`` as strict JSON: a NaN or infinity, which JSON has no way to write (Python's ``NaN`` and
    ``Infinity`` break strict parsers), is written null; a command that can meet them says so beside
    (``run`` counts them)."""
    global _json_documents
    print(json.dumps(_json_safe(doc), indent=2, default=str, allow_nan=False))
    _json_documents += 1


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a NumPy scalar (float32 is no float)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --- devices ------------------------------------------------------------------------------

def cmd_devices(args) -> int:
    from .devices import devices, diagnostics

    devs = devices(available_only=args.available)
    if args.json:
        _emit_json(diagnostics(devs))
        return 0
    rows = [[d.spec, d.kind.value, "yes" if d.available else "no",
             (f"{d.name}" + (f" [{', '.join(d.capabilities)}]" if d.capabilities else ""))
             if d.available else (d.reason or "")] for d in devs]
    print(_table(rows, ["device", "kind", "available", "name [capabilities] / why not"]))
    return 0


# --- info ---------------------------------------------------------------------------------

def _on_disk(artifact) -> bool:
    """The artifact's file is there (and an OpenVINO IR's .bin beside it)."""
    from .types import Format

    ir = artifact.format is Format.OPENVINO
    return artifact.path.is_file() and (not ir or artifact.path.with_suffix(".bin").is_file())


def cmd_info(args) -> int:
    from . import formats, package
    from .model import load

    path = Path(args.model)
    if path.is_dir():
        pkg = package.read(path)
        doc = {"package": str(path), "name": pkg.name, "task": pkg.task,
               "manifest": {k: v for k, v in pkg.manifest.items() if k != "artifacts"},
               "artifacts": [{"path": a.path.name, "format": a.format.value, "precision": a.precision,
                              "layout": a.layout, "status": a.status if _on_disk(a) else "missing",
                              **package.measured(entry)}
                             for a, entry in zip(pkg.artifacts, pkg.manifest["artifacts"])]}
    else:
        fmt = formats.detect(path)
        formats.validate(path, fmt)
        doc = formats.describe(path, fmt)
    model = load(path, verify=False)
    doc["inputs"] = [s.to_dict() for s in model.inputs]
    doc["outputs"] = [s.to_dict() for s in model.outputs]
    doc["opened_with"] = f"{model.backend}:{model.device}"
    model.close()
    if args.json:
        _emit_json(doc)
        return 0
    for key, value in doc.items():
        if key in ("inputs", "outputs"):
            print(f"{key}:")
            for s in value:
                dims = "any rank" if s["shape"] is None else ", ".join(
                    "?" if d is None else str(d) for d in s["shape"])
                layout = f"  {s['layout']}" if s["layout"] else ""
                print(f"  {s['name']}: {s['dtype']}[{dims}]{layout}")
        elif key == "artifacts":
            rows = [[a["path"], a["format"], a["precision"], a["layout"] or "-",
                     f"{a['size'] / 1e6:.1f} MB" if a.get("size") else "-",
                     f"{a['cosine']:.5f}" if a.get("cosine") is not None else "-",
                     f"{a['p50_ms']:.2f}" if a.get("p50_ms") else "-",
                     a["status"] + (f": {a['reason']}" if a.get("reason") else "")] for a in value]
            print("artifacts:")
            print(_table(rows, ["path", "format", "precision", "layout", "size", "cosine", "p50 ms", "status"]))
            conversion = doc.get("manifest", {}).get("conversion") or {}
            host = conversion.get("host_id")
            if any(a.get("p50_ms") for a in value) and (host or conversion.get("host")):
                from .hostinfo import cpu_id

                if host:
                    here = "this CPU" if host == cpu_id() else f"{host}, not this CPU: not used to choose"
                else:
                    here = f"{conversion['host']}, by an edgekit that did not record the CPU's id: not used to choose"
                print(f"  (p50: measured by the converter on {here})")
        elif isinstance(value, dict):
            print(f"{key}:" + ("" if value else " -"))
            for k, v in value.items():
                if k == "labels" and isinstance(v, list) and len(v) > 8:
                    v = f"{len(v)} classes ({', '.join(map(str, v[:5]))}, ...)"
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


# --- run ----------------------------------------------------------------------------------

def _read_inputs(specs: list[str], model_inputs) -> dict:
    import numpy as np

    names = [s.name for s in model_inputs]
    feeds: dict = {}
    for item in specs:
        name, sep, file = item.partition("=")
        if not sep:
            name, file = None, item
        path = Path(file)
        if not path.is_file():
            raise InputError(f"{file}: not a regular file" if path.exists() else f"{file}: no such input file")
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "pickled" not in str(e):
                raise InputError(f"{file}: not a readable .npy/.npz file ({e})") from e
            # NumPy takes what has no .npy/.npz header for a pickle, and advises allow_pickle "if you trust
            # the file": no advice for a file that holds no arrays at all
            raise InputError(f"{file}: not a .npy/.npz file (it has neither header)") from e
        except Exception as e:
            raise InputError(f"{file}: not a readable .npy/.npz file ({e})") from e
        if isinstance(data, np.lib.npyio.NpzFile):
            given = {k: data[k] for k in data.files}
            if name is not None:  # NAME=FILE.npz: the array of that name, or the file's only one
                if name in given:
                    given = {name: given[name]}
                elif len(given) == 1:
                    given = {name: next(iter(given.values()))}
                else:
                    raise InputError(f"{file}: holds no array named {name!r} (it holds {', '.join(given)}); "
                                     f"give NAME=FILE.npz for one of those, or FILE.npz alone for all")
        elif name is None:
            if len(names) != 1:
                raise InputError(f"{file}: the model has {len(names)} inputs ({', '.join(names)}); "
                                 f"give NAME={file}")
            given = {names[0]: data}
        else:
            given = {name: data}
        twice = sorted(set(given) & set(feeds))
        if twice:
            raise UsageError(f"input {twice[0]!r} is given twice (the second time in {file})")
        feeds.update(given)
    return feeds


def _summary(arr) -> dict:
    """Shape, dtype and, for numbers, min, max and mean of the finite values (None where there are
    none) and the first 8 values (None for a NaN or infinity); ``non_finite`` counts NaN, inf and
    -inf where there are any."""
    import numpy as np

    doc = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    if arr.size and arr.dtype.kind in "fiub":
        a = arr.astype(np.float64)
        finite = np.isfinite(a)
        ok = a[finite]
        doc.update(min=float(ok.min()) if ok.size else None, max=float(ok.max()) if ok.size else None,
                   mean=float(ok.mean()) if ok.size else None,
                   first=[float(x) if np.isfinite(x) else None for x in a.ravel()[:8]])
        if not finite.all():
            doc["non_finite"] = {"nan": int(np.isnan(a).sum()), "inf": int(np.isposinf(a).sum()),
                                 "-inf": int(np.isneginf(a).sum())}
    return doc


def cmd_run(args) -> int:
    import time

    import numpy as np

    from .bench import synthetic_inputs, warmup_sizes
    from .model import load

    if args.input and args.synthetic:
        raise UsageError("give --input or --synthetic, not both")
    if args.out is not None and not args.out.strip():  # it ran and wrote nothing, silently
        raise UsageError("--out is empty: give a file name for the outputs, such as outputs.npz")
    model = load(args.model, device=args.device, precision=args.precision, strict=args.strict)
    if args.input:
        feeds = _read_inputs(args.input, model.inputs)
    elif args.synthetic:  # sizes and values from the warm-up inputs, as the benchmark takes them
        feeds = synthetic_inputs(model.inputs, warmup=warmup_sizes(model))
    else:
        expected = ", ".join(str(s) for s in model.inputs)
        raise InputError(f"no inputs: give --input NAME=FILE.npy (model inputs: {expected}) or --synthetic")
    t0 = time.perf_counter()
    outputs = model.run(feeds)
    latency_ms = (time.perf_counter() - t0) * 1e3
    written = None
    if args.out is not None:
        try:
            written = _write_npz_atomic(Path(args.out), outputs)
        except OSError as e:
            raise UsageError(f"{args.out}: cannot write outputs ({e.strerror or e})") from e
    doc = {"model": str(args.model), "backend": model.backend, "device": model.device,
           "precision": model.precision, "latency_ms": latency_ms,
           "outputs": {k: _summary(v) for k, v in outputs.items()},
           "selection": model.selection.to_dict()}
    if written:
        doc["written"] = str(written)
    if args.json:
        _emit_json(doc)
        return 0
    print(f"ran on {model.backend}:{model.device} ({model.precision}) in {latency_ms:.2f} ms")
    for name, s in doc["outputs"].items():
        stats = ""
        if "min" in s:
            first = np.asarray(outputs[name]).ravel()[:8].astype(np.float64)
            stats = (" " + " ".join(f"{k} {s[k]:.4g}" if s[k] is not None else f"{k} -" for k in ("min", "max", "mean"))
                     + f" first {np.array2string(first, precision=4)}")
            if "non_finite" in s:
                stats += " (not finite: " + ", ".join(f"{n} {k}" for k, n in s["non_finite"].items() if n) + \
                         "; min, max and mean are of the rest)"
        print(f"  {name}: {s['dtype']}{s['shape']}{stats}")
    if written:
        print(f"outputs written to {written}")
    return 0


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread
    for a moment) where Linux shows it."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o22)
        os.umask(mask)
        return mask


def _write_npz_atomic(path: Path, arrays: dict) -> Path:
    """Write ``arrays`` to ``path`` (``.npz`` added when missing) through a temporary file; the
    file gets the umask's permissions, as ``open`` would give it (mkstemp makes it 0600)."""
    import numpy as np

    if path.is_dir():
        raise UsageError(f"{path}: a folder; --out takes a file name, such as {path / 'outputs.npz'}")
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- bench --------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    import multiprocessing as mp

    from .bench import target_sizes as bench_target_sizes
    from .bench import targets as bench_targets
    from .model import load
    from .types import Precision

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    if args.all_devices and args.device != "auto":
        raise UsageError("give either --device or --all-devices, not both")
    precision = Precision.parse(args.precision)  # an unknown one is one usage error, not a failed row per device
    rows, failures, skipped, input_errors = [], [], [], []
    if args.all_devices:
        if not Path(args.model).is_dir():
            # A lone file is opened here first, as it is without --all-devices: a corrupt one is one
            # error (exit 2), not a failed row per device, each with its runtime's noise about it.
            try:
                # strict: a first device's failure is not worth a "fell back" warning here
                load(args.model, precision=args.precision, strict=True, verify=True, cache=False).close()
            except BackendError:
                pass  # a runtime's own failure: each device's row says what it met
        targets = [(str(path), spec) for path, spec in bench_targets(args.model, precision=precision, skipped=skipped)]
        if not targets:
            raise _none_can(args.model, precision, skipped) if skipped else DeviceNotAvailableError(
                f"{args.model}: no usable device can run it (see `edgekit devices`)")
    else:
        m = load(args.model, device=args.device, precision=args.precision, strict=args.strict,
                 verify=True)
        targets = [(str(m.path), f"{m.backend}:{m.device}")]
        m.close()
    feeds = None
    if args.input:
        probe = load(targets[0][0], device=targets[0][1], verify=False)
        feeds = _read_inputs(args.input, probe.inputs)
        probe.close()
    ctx = mp.get_context("spawn")  # a fresh process per candidate: its own peak RSS, no cross-talk
    sizes = {}
    if feeds is None:
        # Synthetic inputs: every candidate is timed on the same sizes, as device="fastest" times them. Read
        # in a process of its own, so that this one does not hold every artifact's memory for the run.
        with _worker(ctx) as submit:
            try:
                sizes = submit(bench_target_sizes, targets).result()
            except Exception as e:
                log.warning("each candidate is timed at its own input sizes (reading them all failed: %s)", e)
    for n, (path, spec) in enumerate(targets, 1):
        print(f"[{n}/{len(targets)}] {spec} {Path(path).name}: {args.warmup} warm-up + {args.runs} runs",
              file=sys.stderr, flush=True)
        from .bench import bench_model

        with _worker(ctx) as submit:
            fut = submit(bench_model, path, spec, precision=args.precision, runs=args.runs,
                         warmup=args.warmup, inputs=feeds, sizes=sizes.get(path))
            try:
                rows.append(fut.result())
            except DeviceNotAvailableError as e:  # it cannot meet the precision asked: passed over, as load does
                skipped.append({"device": spec, "artifact": Path(path).name, "reason": str(e)})
                print(f"  skipped: {e}", file=sys.stderr)
            except Exception as e:  # reported as a row, whatever the child died of
                message = str(e) if isinstance(e, EdgekitError) else f"{type(e).__name__}: {e}"
                failures.append({"device": spec, "artifact": Path(path).name, "error": message})
                print(f"  failed: {message}", file=sys.stderr)
                if isinstance(e, InputError):
                    input_errors.append(e)
    if args.input and input_errors and not rows and len(input_errors) == len(failures):
        raise input_errors[0]  # the --input given fits no candidate: a bad input (exit 2), as for run
    if skipped and not rows and not failures:  # none could meet the precision: the caller's, as load says it
        raise _none_can(args.model, precision, skipped)
    if args.json:
        _emit_json({"model": str(args.model), "runs": args.runs, "warmup": args.warmup,
                    "results": rows, "failures": failures, "skipped": skipped})
    else:
        header = ["device", "artifact", "precision", "load ms", "first ms", "p50 ms", "p90 ms",
                  "p99 ms", "per s", "peak RSS MB"]
        table = [[f"{r['backend']}:{r['device']}", r["artifact"], r["precision"], f"{r['load_ms']:.1f}",
                  f"{r['first_inference_ms']:.2f}", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  f"{r['p99_ms']:.3f}", f"{r['throughput_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"]
                 for r in rows]
        print(_table(table, header))
        for f in failures:
            print(f"{f['device']} {f['artifact']}: failed: {f['error']}")
        for f in skipped:
            print(f"{f['device']} {f['artifact']}: skipped: {f['reason']}")
    return 1 if not rows else 0


def _none_can(model, precision, skipped: list[dict]) -> DeviceNotAvailableError:
    why = "; ".join(dict.fromkeys(f"{s['artifact']} on {s['device']}: {s['reason']}" for s in skipped))
    return DeviceNotAvailableError(f"{model}: nothing in it can run at precision {precision.value} ({why})")


@contextlib.contextmanager
def _worker(ctx):
    """A fresh process for one job: yields ``submit(fn, *args, **kwargs)``, which gives a Future.

    The process ignores SIGINT from birth: a terminal's Ctrl-C reaches the whole process group, and
    a worker interrupted during its imports printed a traceback. This process takes the Ctrl-C and
    ends the worker; it would otherwise wait for the worker's job to finish (a Ctrl-C sent to edgekit
    alone waited for every one of bench's runs)."""
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_started)

    def submit(fn, /, *args, **kwargs):
        with _sigint_ignored():  # the worker is started here (spawn): it inherits SIG_IGN
            return pool.submit(fn, *args, **kwargs)

    try:
        yield submit
    except BaseException:  # Ctrl-C, SIGTERM (whose handler has ended the worker already), ...
        _end_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True)


def _worker_started() -> None:
    """In a bench worker: SIGINT ignored (also where it could not be ignored around its start), and a
    SIGTERM when edgekit dies (Linux), so that a worker orphaned by a kill -9 or the OOM killer does
    not run its job to the end, deaf to Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored for a moment, in which a process is started: it is born ignoring it. (A Ctrl-C
    in these few milliseconds is lost; the next one is taken.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the worker's initializer still ignores SIGINT
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _end_workers(pool) -> None:
    """End the pool's worker processes and theirs, so that shutting the pool down does not wait for
    the job they run."""
    import psutil

    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(psutil.Error, ValueError):
            worker = psutil.Process(proc.pid)
            for p in [*worker.children(recursive=True), worker]:
                p.terminate()
