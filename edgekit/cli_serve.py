"""``edgekit serve`` and ``edgekit repo add|list``: the local model service and its repository."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import EdgekitError, UsageError


def add_parsers(add) -> None:
    s = add("serve", "Serve model repositories or packages over the Open Inference Protocol (KServe v2 / Triton "
                     "HTTP), with task endpoints, versions, metrics and an optional API key.")
    s.add_argument("sources", nargs="+", metavar="REPO|PKG",
                   help="a repository (REPO/<name>/<version>/ packages), a package folder or a model file")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this device only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    s.add_argument("--device", default="auto", help="where models run, as for `edgekit run` (default auto)")
    s.add_argument("--api-key-file", metavar="F", help="require 'Authorization: Bearer <key>' with the key in F")
    s.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback address without an API key")
    s.add_argument("--max-body-mb", type=float, default=64, help="largest request body in MiB (default 64)")
    s.add_argument("--max-batch-size", type=int, default=0,
                   help="dynamic batching: join concurrent requests into runs of up to this many rows (default off)")
    s.add_argument("--max-queue-delay-ms", type=float, default=None,
                   help="dynamic batching: how long a request may wait for others (default 2; with --max-batch-size)")
    s.add_argument("--instances", type=int, default=1,
                   help="runs of each model version at the same time (default 1: each run gets every core, for "
                        "the lowest latency; N splits the cores N ways, for throughput with many clients, and on a "
                        "CPU keeps a second copy of the model with every core for a request that comes alone)")
    s.add_argument("--poll-interval", type=float, default=2.0,
                   help="seconds between repository scans for new versions (default 2; 0: only the repository API)")
    s.add_argument("--keep-alive-s", type=float, metavar="S",
                   help="seconds an idle client connection stays open (default: 65, as KServe's server)")
    s.add_argument("--body-timeout-s", type=float, metavar="S",
                   help="a request whose head takes longer than S seconds, or whose body stops arriving for S "
                        "seconds, gets 408 and its connection closed (default 60)")
    s.add_argument("--access-log", choices=["text", "json", "off"], default="text",
                   help="one log line per request on stderr (default text)")

    r = add("repo", "Manage a model repository: add a package as a new version, list models and versions.")
    actions = r.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        # --json here too (`repo list REPO --json`), without overriding `repo --json list REPO`
        sp = actions.add_parser(name, help=help, description=help, json_errors=r.json_errors)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON document on stdout")
        return sp

    a = action("add", "Copy a package into a repository as a new version (checksums verified on the copy).")
    a.add_argument("package", metavar="PKG", help="the package folder")
    a.add_argument("--repository", required=True, metavar="REPO", help="the repository folder (made if missing)")
    a.add_argument("--name", help="model name (default: the package folder's name)")
    a.add_argument("--version", type=int, help="version number (default: the next one)")
    ls = action("list", "List a repository's models and versions, with their tasks, formats and status.")
    ls.add_argument("repo", metavar="REPO", help="the repository folder")


def cmd_serve(args, emit_json, table) -> int:
    try:
        from .serve import serve
    except ImportError as e:
        raise UsageError(f"edgekit serve needs its extra: pip install 'edgekit[serve]' ({e})") from None
    from .selection import parse_policy
    from .serve.repository import MAX_INSTANCES, Batching
    from .serve.server import JsonLogFormatter

    delay_ms = 2.0 if args.max_queue_delay_ms is None else args.max_queue_delay_ms
    checks = [("--port", args.port, 0 <= args.port <= 65535, "from 0 to 65535"),
              ("--instances", args.instances, 1 <= args.instances <= MAX_INSTANCES, f"from 1 to {MAX_INSTANCES}"),
              ("--max-batch-size", args.max_batch_size, args.max_batch_size >= 0, "0 (off) or more"),
              ("--max-body-mb", args.max_body_mb, 1 / 1024 <= args.max_body_mb <= 1 << 20,
               "from 0.0009765625 (1 KiB) to 1048576"),
              ("--max-queue-delay-ms", delay_ms, 0 <= delay_ms <= 10_000, "from 0 to 10000"),
              ("--poll-interval", args.poll_interval, args.poll_interval == 0 or 0.05 <= args.poll_interval <= 86_400,
               "0 (off) or from 0.05 to 86400 seconds"),
              *[(flag, v, v is None or 0 < v <= 86_400, "over 0 and at most 86400 seconds")
                for flag, v in (("--body-timeout-s", args.body_timeout_s), ("--keep-alive-s", args.keep_alive_s))]]
    for flag, value, ok, what in checks:  # NaN fails every comparison, so it is refused too
        if not ok:
            raise UsageError(f"{flag} must be {what}, got {value}")
    if args.max_queue_delay_ms is not None and not args.max_batch_size:  # it would be ignored without a word
        raise UsageError("--max-queue-delay-ms is dynamic batching's: give --max-batch-size N too (a model's own "
                         "config.json sets both for it)")
    parse_policy(args.device)  # an unknown device is a mistake to report now, not a server of unavailable models
    _serve_logging(args.access_log, JsonLogFormatter)

    def ready(url: str) -> None:
        if args.json:  # one line a supervisor (or a test) can wait for
            print(json.dumps({"url": url, "pid": os.getpid()}), flush=True)
        else:
            print(f"edgekit serve: listening on {url} (Ctrl-C or SIGTERM to stop)", file=sys.stderr, flush=True)

    batching = Batching(args.max_batch_size, delay_ms) if args.max_batch_size else None
    return serve(args.sources, host=args.host, port=args.port, device=args.device, api_key_file=args.api_key_file,
                 allow_unauthenticated=args.allow_unauthenticated, max_body=int(args.max_body_mb * 1024 * 1024),
                 batching=batching, instances=args.instances, poll_interval=args.poll_interval,
                 on_ready=ready, **{k: v for k, v in (("keep_alive_s", args.keep_alive_s),
                                                      ("body_timeout_s", args.body_timeout_s)) if v is not None})


def _serve_logging(access: str, json_formatter) -> None:
    """Server events at INFO on stderr (the CLI's default is WARNING), and the access log as asked."""
    serve_log = logging.getLogger("edgekit.serve")
    if serve_log.getEffectiveLevel() > logging.INFO:
        serve_log.setLevel(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn")  # its own warnings ("Invalid HTTP request received.") as ours
    uvicorn_log.handlers[:] = logging.getLogger("edgekit").handlers
    uvicorn_log.setLevel(logging.WARNING)
    uvicorn_log.propagate = False
    access_log = logging.getLogger("edgekit.serve.access")
    if access == "off":
        access_log.setLevel(logging.WARNING)
    elif access == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        access_log.handlers[:] = [handler]
        access_log.propagate = False


def cmd_repo(args, emit_json, table) -> int:
    from pathlib import Path

    from .serve import repository

    if args.action == "add":
        dest = repository.add(args.package, args.repository, name=args.name, version=args.version)
        doc = {"name": dest.parent.name, "version": int(dest.name), "path": str(dest)}
        if args.json:
            emit_json(doc)
        else:
            print(f"added {doc['name']} version {doc['version']} -> {dest}")
        return 0
    repo = args.repo
    problem = repository.not_a_repository(Path(repo))
    if problem is not None:
        raise UsageError(problem)
    models = repository.scan(Path(repo))
    for m in models:  # as the server will find them: a version whose files fail their checksums is not served
        for v in m.versions:
            if not v.problem:
                try:
                    repository.verify_version(v.path)
                except EdgekitError as e:
                    v.problem = str(e)
    ignored = repository.ignored_folders(Path(repo))
    if args.json:
        emit_json({"repository": str(repo), "models": [m.to_dict() for m in models], "ignored": ignored})
        return 0
    rows = []
    for m in models:
        chosen = set(m.config.chosen([v.version for v in m.versions if not v.problem]))
        for v in m.versions or [None]:
            if v is None:
                rows.append([m.name, "-", "-", "-", m.problem or "no versions"])
                continue
            status = (f"invalid: {v.problem}" if v.problem else "ok" if v.version in chosen
                      else "ok, not in the version policy")
            rows.append([m.name, str(v.version), v.task or "-", _formats_text(v.formats), status])
        rows += [[m.name, str(n), "-", "-", "missing: named by the version policy, not in the repository"]
                 for n in m.config.missing([v.version for v in m.versions])]
    print(table(rows, ["model", "version", "task", "formats", "status"]) if rows else f"{repo}: no models")
    for m in models:  # a model whose config.json is bad: its versions are listed above, its problem here
        if m.problem and m.versions:
            print(f"{m.name}: {m.problem}")
        for item in m.ignored:
            print(f"{m.name}: ignored {item['folder']}: {item['reason']}")
    for item in ignored:
        print(f"ignored {item['folder']}: {item['reason']}")
    return 0


def _formats_text(formats: list[str]) -> str:
    """["onnx/fp32", "onnx/int8", "tflite/fp32"] -> "onnx fp32/int8, tflite fp32"."""
    by_format: dict[str, list[str]] = {}
    for item in formats:
        fmt, _, precision = item.partition("/")
        by_format.setdefault(fmt, []).append(precision)
    return ", ".join(f"{f} {'/'.join(p)}" for f, p in by_format.items()) or "-"
