"""``edgekit convert``: the converter's command line (registered by :mod:`edgekit.cli`)."""

from __future__ import annotations

import json
import sys

from edgekit.errors import UsageError

from .report import PRECISIONS, TARGETS


def add_parser(add) -> None:
    c = add("convert", "Convert and quantize a model to ONNX / OpenVINO IR / TFLite, check every artifact "
                       "against the source, and write a model package.")
    c.add_argument("source", help=".onnx, .tflite, .xml, a Hugging Face model folder, or a package folder")
    c.add_argument("--to", default=",".join(TARGETS), help=f"comma-separated targets (default {','.join(TARGETS)})")
    c.add_argument("--precision", default="fp32,fp16,int8",
                   help=f"comma-separated, from {','.join(PRECISIONS)} (default fp32,fp16,int8)")
    c.add_argument("--calib", nargs="+", metavar="DIR|FILE",
                   help="calibration data: images, audio, a .txt of lines, .npy/.npz (needed for int8)")
    c.add_argument("--check", nargs="+", metavar="DIR|FILE", help="data to check fidelity on (default: --calib)")
    c.add_argument("--task", help="the package's task, e.g. image-classification (default: from the source)")
    c.add_argument("--labels", metavar="FILE", help="class names, one per line")
    c.add_argument("--preprocess", metavar="JSON",
                   help='pre-processing, e.g. \'{"image": {"mean": [127, 127, 127], "std": [128, 128, 128]}}\'')
    c.add_argument("--out", metavar="PKG", help="package folder to write (default: SOURCE-edgekit beside it)")
    c.add_argument("--name", help="package name (default: from the source)")
    c.add_argument("--min-cosine", type=float,
                   help="an artifact whose outputs' cosine similarity to the source's is lower fails "
                        "(default: 0.999 for fp32/fp16, 0.98 for int8)")
    c.add_argument("--strict", action="store_true", help="fail, writing nothing, if any artifact is not ok")


def cmd_convert(args, emit_json, table) -> int:
    from .conversion import ConversionError, convert
    from .report import count

    try:
        preprocess = json.loads(args.preprocess) if args.preprocess else None
    except json.JSONDecodeError as e:
        raise UsageError(f"--preprocess is not valid JSON ({e})") from None
    if preprocess is not None and not (isinstance(preprocess, dict) and all(isinstance(v, dict)
                                                                         for v in preprocess.values())):
        raise UsageError('--preprocess must map a kind to settings, e.g. {"image": {"crop": 224}}')

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    calib = args.calib if args.calib is None or len(args.calib) > 1 else args.calib[0]
    check = args.check if args.check is None or len(args.check) > 1 else args.check[0]
    try:
        report = convert(args.source, to=args.to, precisions=args.precision, calibration=calib, check=check,
                         out=args.out, task=args.task, labels=args.labels, preprocess=preprocess, name=args.name,
                         min_cosine=args.min_cosine, strict=args.strict, progress=progress)
    except ConversionError as e:
        if args.json:
            emit_json({**e.report.to_dict(), "error": str(e), "exit_code": 1})  # as main() exits for it
            args.json_written = True  # the one document: main adds no other
        else:
            header, rows = e.report.table()
            print(table(rows, header))
            _hint(e.report)
        raise
    if args.json:
        emit_json(report.to_dict())
        return 0
    header, rows = report.table()
    print(table(rows, header))
    bad = [a for a in report.artifacts if not a.ok]
    print(f"\npackage: {report.out}   ({report.seconds:.0f} s; parity on {report.check.get('samples')} inputs "
          f"({report.check.get('kind')}) against {report.check.get('against')})")
    if report.check.get("warning"):
        print(f"edgekit: warning: {report.check['warning']}", file=sys.stderr)
    if bad:
        print(f"edgekit: warning: {len(bad)} of {count(len(report.artifacts), 'artifact')} not ok (see status); "
              f"use --strict to fail on that", file=sys.stderr)
    _hint(report)
    return 0


def _hint(report) -> None:
    """The converter's reasons speak of data; here, of the options that give it."""
    reasons = " ".join(a.reason or "" for a in report.artifacts) + " " + str(report.check.get("warning") or "")
    if "calibration data" in reasons:
        print("edgekit: hint: give calibration data with --calib DIR|FILES, check data with --check DIR|FILES",
              file=sys.stderr)
