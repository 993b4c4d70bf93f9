"""Model packages: a folder with one model in several formats/precisions and ``edgekit.json``.

The converters write packages; :func:`edgekit.load` reads them, verifies each
artifact's checksum and lets selection pick artifact and device together.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import formats
from .errors import ModelFileError, UsageError
from .hostinfo import cpu_id
from .types import Format

log = logging.getLogger("edgekit")

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: Format
    precision: str  # "fp32" | "fp16" | "int8" | ...
    sha256: str | None = None
    layout: str | None = None
    status: str = "ok"  # "ok" | "failed" (parity or conversion failed; never chosen)
    reason: str | None = None
    latency_ms: float | None = None  # p50 measured by the converter on its own runtime, on this CPU only

    @property
    def label(self) -> str:
        return f"{self.path.name} {self.precision}"


@dataclass
class Declared:
    """What the source model declared of its inputs and outputs, for every artifact made from it
    (OpenVINO IR and TFLite keep no dim names, and onnx2tf may reorder inputs and move size-1 dims):
    from a package's edgekit.json, or from the card embedded in a lone file."""

    dim_names: dict[str, tuple] = field(default_factory=dict)  # input -> ((name or None per axis), layout)
    dim_max: dict[str, int] = field(default_factory=dict)  # dim name -> largest size
    input_order: tuple[str, ...] = ()  # the source's input names in its order (TFLite may sort them otherwise)
    value_range: dict[str, tuple] = field(default_factory=dict)  # input -> (lowest, highest) value it takes
    # The source's output shapes (a size, or None where a dim is named or unknown): an artifact that
    # only moved a size-1 dim of an output gives it back in this shape.
    output_shapes: dict[str, tuple] = field(default_factory=dict)
    # Inputs the source declared as scalars (shape []): onnx2tf makes them one-element vectors.
    scalars: frozenset[str] = frozenset()
    output_order: tuple[str, ...] = ()  # the source's output names in its order (TFLite sorts them by name)
    output_dim_names: dict[str, tuple] = field(default_factory=dict)  # output -> ((name or None per axis), None)


@dataclass
class Package:
    root: Path
    manifest: dict
    artifacts: list[Artifact] = field(default_factory=list)
    declared: Declared = field(default_factory=Declared)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.root.name)

    @property
    def task(self) -> str | None:
        return self.manifest.get("task")


def read(folder: Path) -> Package:
    """Read and check ``folder/edgekit.json``. An artifact's file is checked when it is opened
    (:func:`verify`): a missing or damaged one is passed over for the package's others."""
    manifest_path = folder / formats.MANIFEST
    if not manifest_path.is_file():
        raise ModelFileError(folder, f"a folder is a model only as a package, and this one has no "
                                     f"{formats.MANIFEST}")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except OSError as e:  # as a model file says it (formats.validate), not "not valid JSON"
        raise ModelFileError(manifest_path, f"cannot be read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ModelFileError(manifest_path, f"not valid JSON ({e})") from e
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(manifest_path, f"not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise ModelFileError(manifest_path, "no 'artifacts' list")
    _check_fields(manifest, manifest_path)
    version = manifest.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ModelFileError(manifest_path, f"schema_version {version!r} is newer than this edgekit "
                                            f"reads ({SCHEMA_VERSION}); upgrade edgekit")
    root = folder.resolve()
    measured_here = _measured_on_this_host(manifest)
    artifacts = []
    for i, entry in enumerate(manifest["artifacts"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ModelFileError(manifest_path, f"artifact #{i} has no 'path' string")
        rel = Path(entry["path"])
        path = (folder / rel)
        if rel.is_absolute() or ".." in rel.parts or root not in path.resolve().parents:
            raise ModelFileError(manifest_path, f"artifact path {entry['path']!r} leaves the package")
        if entry.get("format"):
            try:
                fmt = Format(entry["format"])
            except ValueError:
                allowed = ", ".join(f.value for f in Format)
                raise ModelFileError(manifest_path, f"artifact {entry['path']!r} has unknown format "
                                                    f"{entry['format']!r} (one of: {allowed})") from None
        else:
            fmt = formats.detect(path)
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise ModelFileError(manifest_path, f"artifact {entry['path']!r}: sha256 must be 64 hex digits")
        artifacts.append(Artifact(path=path, format=fmt, precision=str(entry.get("precision", "fp32")),
                                  sha256=sha.lower() if sha else None, layout=entry.get("layout"),
                                  status=str(entry.get("status", "ok")), reason=entry.get("reason"),
                                  latency_ms=_p50(entry) if measured_here else None))
    if not artifacts:
        raise ModelFileError(manifest_path, "the package lists no artifacts")
    return Package(folder, manifest, artifacts, declared(manifest, manifest_path))


# The manifest's fields that the tasks and the server read, and the JSON type each must have.
_FIELD_TYPES = {"name": (str, "a string"), "version": ((str, int), "a string"), "task": (str, "a string"),
                "description": (str, "a string"), "preprocess": (dict, "an object"),
                "postprocess": (dict, "an object"), "warmup_inputs": (dict, "an object"),
                "labels": (list, "a list of strings")}


def _check_fields(manifest: dict, where: Path) -> None:
    """Refuse a manifest whose fields have the wrong JSON type (null counts as absent)."""
    for key, (kind, what) in _FIELD_TYPES.items():
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            raise ModelFileError(where, f"'{key}' must be {what}, not {json.dumps(value)[:80]}")
    labels = manifest.get("labels")
    if labels is not None and not all(isinstance(x, str) for x in labels):
        bad = next(x for x in labels if not isinstance(x, str))
        raise ModelFileError(where, f"'labels' must be a list of strings; it holds {json.dumps(bad)[:80]}")


def declared(manifest: dict, where: Path) -> Declared:
    """The ``inputs``, ``dims``, ``values`` and ``outputs`` of a manifest or card; ModelFileError
    naming ``where`` for a malformed one."""
    try:
        ranges = parse_values(manifest.get("values"))
    except ValueError as e:
        raise ModelFileError(where, str(e)) from None
    names, limits, order = _declared_dims(manifest, where)
    try:
        outputs, output_names = _declared_outputs(manifest, where)
    except ModelFileError as e:  # output shapes are a convenience (packages before them may hold anything there)
        log.warning("%s", e)
        outputs, output_names = {}, {}
    scalars = frozenset(s["name"] for s in _tensor_specs(manifest, "inputs", where) if s["shape"] == [])
    try:
        out_order = tuple(s["name"] for s in _tensor_specs(manifest, "outputs", where))
    except ModelFileError:  # warned of above
        out_order = ()
    return Declared(names, limits, order, ranges, outputs, scalars, out_order, output_names)


def _declared_dims(manifest: dict, where: Path) -> tuple[dict[str, tuple], dict[str, int], tuple[str, ...]]:
    """``inputs`` (the source's input specs: named dims, and their order) and ``dims``
    (``{"sequence": {"max": 512}}``)."""
    names: dict[str, tuple] = {}
    specs = _tensor_specs(manifest, "inputs", where)
    for spec in specs:
        shape = spec["shape"]
        if shape:  # null or []: a scalar, or a rank the runtime did not know; nothing to name
            names[spec["name"]] = (tuple(d if isinstance(d, str) and d else None for d in shape), spec.get("layout"))
    try:
        limits = parse_dims(manifest.get("dims"))
    except ValueError as e:
        raise ModelFileError(where, str(e)) from None
    return names, limits, tuple(spec["name"] for spec in specs)


def _tensor_specs(manifest: dict, key: str, where: Path) -> list[dict]:
    """``manifest[key]`` ("inputs" or "outputs"): a list of {"name": str, "shape": list or null, ...}."""
    specs = manifest.get(key) or []
    if not isinstance(specs, list):
        raise ModelFileError(where, f"'{key}' must be a list of {key[:-1]} specs")
    for spec in specs:
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and "shape" in spec
                and isinstance(spec["shape"], (list, type(None)))):
            raise ModelFileError(where, f"'{key}' entry {spec!r:.80} needs a 'name' and a 'shape' list (or null)")
    return specs


def _declared_outputs(manifest: dict, where: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """``outputs`` (the source's output specs) as {name: shape}, a named dim as None, and their dim
    names as ``Declared.output_dim_names`` has them; rankless ones left out."""
    shapes, names = {}, {}
    for spec in _tensor_specs(manifest, "outputs", where):
        if spec["shape"] is not None:
            shapes[spec["name"]] = tuple(d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None
                                         for d in spec["shape"])
            dim_names = tuple(d if isinstance(d, str) and d else None for d in spec["shape"])
            if any(dim_names):
                names[spec["name"]] = (dim_names, None)
    return shapes, names


def parse_values(values) -> dict[str, tuple]:
    """A manifest's ``values`` (``{"input_ids": {"min": 0, "max": 30521}}``: the ids a transformer's
    embedding tables hold) as {input: (min, max)}; ValueError names the problem."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError("'values' must map input names to {\"min\": m, \"max\": n}")
    ranges = {}
    for name, info in values.items():
        lo, hi = (info.get("min"), info.get("max")) if isinstance(info, dict) else (None, None)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo > hi:
            raise ValueError(f"values[{name!r}] must be {{\"min\": m, \"max\": n}} with m <= n, not {info!r}")
        ranges[name] = (lo, hi)
    return ranges


def parse_dims(dims) -> dict[str, int]:
    """A manifest's ``dims`` (``{"sequence": {"max": 512}}``) as {name: max}; ValueError names the problem."""
    if dims is None:
        return {}
    if not isinstance(dims, dict):
        raise ValueError("'dims' must map dimension names to {\"max\": size}")
    limits = {}
    for dim, info in dims.items():
        top = info.get("max") if isinstance(info, dict) else None
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ValueError(f"dims[{dim!r}] must be {{\"max\": a positive integer}}, not {info!r}")
        limits[dim] = top
    return limits


def _measured_on_this_host(manifest: dict) -> bool:
    """Whether the converter's latencies in ``manifest`` were measured on a CPU like this one: same name,
    cores and ISA features (``conversion.host_id``). A manifest with only a CPU name (edgekit before
    host_id) does not count: the same name covers chips that rank artifacts differently."""
    conversion = manifest.get("conversion")
    return isinstance(conversion, dict) and conversion.get("host_id") == cpu_id()


def _p50(entry: dict) -> float | None:
    latency = entry.get("latency_ms")
    p50 = latency.get("p50") if isinstance(latency, dict) else None
    return float(p50) if isinstance(p50, (int, float)) and p50 > 0 else None


def measured(entry: dict) -> dict:
    """Size, parity and converter latency of a manifest artifact entry, where recorded and well-formed."""
    def number(x):
        return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    parity = entry.get("parity") if isinstance(entry.get("parity"), dict) else {}
    latency = entry.get("latency_ms") if isinstance(entry.get("latency_ms"), dict) else {}
    out = {"size": number(entry.get("size")), "cosine": number(parity.get("cosine")),
           "p50_ms": number(latency.get("p50")), "reason": entry.get("reason")}
    return {k: v for k, v in out.items() if v is not None}


def verify(artifact: Artifact) -> None:
    """Compare the artifact's checksum with the manifest's, then validate the file."""
    if artifact.sha256 and artifact.path.is_file():
        digest = formats.sha256_files(formats.model_files(artifact.path, artifact.format))
        if digest != artifact.sha256:
            raise ModelFileError(artifact.path, f"checksum mismatch: edgekit.json says "
                                                f"{artifact.sha256[:12]}…, the file is {digest[:12]}…")
    formats.validate(artifact.path, artifact.format)


def staging_dir(dest: Path) -> Path:
    """A fresh temporary folder beside ``dest`` (same filesystem, so publishing is a rename).

    Its name carries this host and process (``.NAME-<pid>-<host>-...``), so that one left behind by
    a process that was killed outright (SIGKILL, power loss) is removed by the next writer: see
    :func:`remove_abandoned`. Folders of older edgekits, without that mark, are left alone.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(dest)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-{_owner()}-"))


def _owner() -> str:
    """This process as a staging folder's name gives it: ``<pid>-<where>`` (see :func:`_where`)."""
    return f"{os.getpid()}-{_where()}"


@functools.lru_cache(maxsize=1)
def _where() -> str:
    """A hash of this host and the pid namespace its pids belong to: a writer in another container
    on a shared folder is never taken for gone."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha1(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


def remove_abandoned(dest: Path) -> list[Path]:
    """Remove the staging folders beside ``dest`` whose process (on this host and in this pid
    namespace) has gone; returns them. A package that a killed ``publish`` had moved aside while
    ``dest`` was missing is moved back, not removed."""
    import psutil

    mark = re.compile(rf"\.{re.escape(dest.name)}-([0-9]+)-{_where()}-(old-)?")
    removed = []
    with contextlib.suppress(OSError):
        for child in dest.parent.iterdir():
            found = mark.match(child.name)
            if not found or not child.is_dir() or psutil.pid_exists(int(found.group(1))):
                continue
            if found.group(2) and (child / "pkg").is_dir() and not os.path.lexists(dest):
                os.replace(child / "pkg", dest)  # killed between publish's two renames: the old package
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def publish(staging: Path, dest: Path, manifest: dict) -> Path:
    """Finish a package built in ``staging`` and move it to ``dest`` in one rename.

    Fills in each artifact's sha256 and size, writes edgekit.json last, then replaces
    ``dest``. Readers never see a half-written package; on any error ``staging`` is removed
    and ``dest`` is left as it was.
    """
    try:
        for entry in manifest["artifacts"]:
            path = staging / entry["path"]
            fmt = Format(entry["format"])
            files = formats.model_files(path, fmt)
            entry["sha256"] = formats.sha256_files(files)
            entry["size"] = sum(f.stat().st_size for f in files)
        manifest.setdefault("schema_version", SCHEMA_VERSION)
        tmp_manifest = staging / (formats.MANIFEST + ".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False),
                                encoding="utf-8")
        os.replace(tmp_manifest, staging / formats.MANIFEST)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it 0700; a package is as readable as any folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if dest.exists() or dest.is_symlink():
        # Only a package (or an empty folder) is replaced: never a file or a folder of other files,
        # whatever a caller checked before (something may have been put there since).
        if dest.is_symlink() or not dest.is_dir() or not ((dest / formats.MANIFEST).is_file()
                                                          or not any(dest.iterdir())):
            shutil.rmtree(staging, ignore_errors=True)
            raise UsageError(f"{dest}: not replaced, since it is not an edgekit package or an empty folder")
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-{_owner()}-old-")) / "pkg"
    try:
        if old is not None:
            os.replace(dest, old)
        os.replace(staging, dest)
    except BaseException:
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)  # put the previous package back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    return dest
