"""A model repository on disk: ``REPO/<model-name>/<version>/`` with one package per version.

The layout is Triton's: integer version folders under a folder per model, and beside them
an optional ``config.json`` for what is per model rather than per version::

    REPO/
      efficientnet/
        config.json          {"version_policy": {"latest": {"num_versions": 1}},
        1/edgekit.json        "dynamic_batching": {"max_batch_size": 8, "max_queue_delay_ms": 2},
        2/edgekit.json        "instances": 1, "device": "auto"}

Versions are added by :func:`add`, which copies a package into a hidden staging folder,
verifies every checksum of the copy and then renames it into place: a server watching the
repository never sees half a version.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import formats, package
from ..errors import EdgekitError, ModelFileError, UsageError
from ..selection import parse_policy

CONFIG = "config.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION_RE = re.compile(r"[0-9]{1,9}")
MAX_VERSION = 10 ** 9 - 1
# Runs of one model at once: each holds a runtime request (OpenVINO) or an interpreter (LiteRT)
MAX_INSTANCES = 64
_POLICIES = ("latest", "all", "specific")


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: requests wait up to ``max_queue_delay_ms`` to share one run."""

    max_batch_size: int
    max_queue_delay_ms: float = 2.0


@dataclass(frozen=True)
class ModelConfig:
    """Per-model settings from ``config.json``; every field optional."""

    policy: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1  # for "latest"
    versions: tuple[int, ...] = ()  # for "specific"
    batching: Batching | None = None  # None: the server's; max_batch_size 1: off (config "dynamic_batching": null)
    instances: int | None = None  # runs of this model at the same time, each on its own thread (None: the server's)
    device: str | None = None  # overrides the server's --device for this model

    def chosen(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of ``available`` (best first)."""
        newest = sorted(available, reverse=True)
        if self.policy == "all":
            return newest
        if self.policy == "specific":
            return [v for v in newest if v in self.versions]
        return newest[: self.num_versions]

    def missing(self, available: list[int]) -> list[int]:
        """The versions a "specific" policy names that are not in ``available``."""
        return [v for v in self.versions if v not in available] if self.policy == "specific" else []

    def to_dict(self) -> dict:
        policy = ({"latest": {"num_versions": self.num_versions}} if self.policy == "latest"
                  else {"specific": {"versions": list(self.versions)}} if self.policy == "specific"
                  else {"all": {}})
        doc: dict = {"version_policy": policy}
        if self.instances:
            doc["instances"] = self.instances
        if self.batching:
            doc["dynamic_batching"] = {"max_batch_size": self.batching.max_batch_size,
                                       "max_queue_delay_ms": self.batching.max_queue_delay_ms}
        if self.device:
            doc["device"] = self.device
        return doc


def read_config(model_dir: Path) -> ModelConfig:
    """``model_dir/config.json`` as a :class:`ModelConfig` (defaults when absent)."""
    path = model_dir / CONFIG
    if not path.exists():
        return ModelConfig()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ModelFileError(path, "expected a JSON object")
    unknown = set(doc) - {"version_policy", "dynamic_batching", "instances", "device"}
    if unknown:
        raise ModelFileError(path, f"unknown keys {sorted(unknown)} (known: version_policy, dynamic_batching, "
                                   f"instances, device)")
    kwargs: dict = {}
    policy = doc.get("version_policy", {"latest": {"num_versions": 1}})
    if not (isinstance(policy, dict) and len(policy) == 1 and next(iter(policy)) in _POLICIES):
        raise ModelFileError(path, 'version_policy must be one of {"latest": {"num_versions": N}}, '
                                   '{"all": {}}, {"specific": {"versions": [...]}}')
    kind, args = next(iter(policy.items()))
    args = args if isinstance(args, dict) else {}
    kwargs["policy"] = kind
    if kind == "latest":
        kwargs["num_versions"] = _positive_int(path, "num_versions", args.get("num_versions", 1))
    elif kind == "specific":
        versions = args.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ModelFileError(path, "version_policy.specific.versions must be a non-empty list of integers")
        kwargs["versions"] = tuple(_positive_int(path, "versions", v) for v in versions)
    if "dynamic_batching" in doc and doc["dynamic_batching"] is None:
        kwargs["batching"] = Batching(1, 0.0)  # off, even when the server batches by default
    elif "dynamic_batching" in doc:
        b = doc["dynamic_batching"]
        if not isinstance(b, dict):
            raise ModelFileError(path, "dynamic_batching must be an object")
        delay = b.get("max_queue_delay_ms", 2.0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 10_000:
            raise ModelFileError(path, "dynamic_batching.max_queue_delay_ms must be between 0 and 10000")
        kwargs["batching"] = Batching(_positive_int(path, "max_batch_size", b.get("max_batch_size", 8)),
                                      float(delay))
    if doc.get("instances") is not None:  # null: the server's, as for device
        kwargs["instances"] = _positive_int(path, "instances", doc["instances"])
        if kwargs["instances"] > MAX_INSTANCES:
            raise ModelFileError(path, f"instances must be at most {MAX_INSTANCES}, got {kwargs['instances']}")
    if doc.get("device") is not None:
        if not isinstance(doc["device"], str):
            raise ModelFileError(path, "device must be a string such as \"auto\" or \"openvino:CPU\"")
        try:
            parse_policy(doc["device"])
        except UsageError as e:
            raise ModelFileError(path, str(e)) from None
        kwargs["device"] = doc["device"]
    return ModelConfig(**kwargs)


def _positive_int(path: Path, key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelFileError(path, f"{key} must be a positive integer, got {json.dumps(value)}")  # as written
    return value


@dataclass
class VersionEntry:
    """One version folder (or a lone model file) as found on disk, not loaded."""

    version: int
    path: Path
    task: str | None = None
    formats: list[str] = field(default_factory=list)
    problem: str | None = None  # why it cannot be served, found without loading it
    signature: tuple = ()  # changes when the folder, its edgekit.json or an artifact is replaced or rewritten


def signature(path: Path, files: list[Path] = ()) -> tuple:
    """What changes when ``path`` (a version folder or a model file), or one of its ``files``, is
    replaced or rewritten: a server reloads the version, and so checks its checksums again."""
    try:
        st = (path / formats.MANIFEST).stat() if path.is_dir() else path.stat()
        sig = [path.stat().st_ino, st.st_ino, st.st_mtime_ns, st.st_size]
    except OSError:
        return (None,)
    for f in files:
        try:
            fs = f.stat()
            sig += [fs.st_ino, fs.st_mtime_ns, fs.st_size]
        except OSError:
            sig.append(None)
    return tuple(sig)


def parse_version(text: str) -> int | None:
    """A version number as written in a folder name or URL: 1 to 9 ASCII digits, not 0 (``007`` is
    version 7, as Triton reads it)."""
    return int(text) if _VERSION_RE.fullmatch(text) and int(text) > 0 else None


@dataclass
class ModelEntry:
    name: str
    path: Path
    versions: list[VersionEntry]
    config: ModelConfig = field(default_factory=ModelConfig)
    problem: str | None = None  # an unreadable config.json
    ignored: list[dict] = field(default_factory=list)  # {"folder", "reason"}: folders in it that are no version

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "config": self.config.to_dict(),
                "problem": self.problem, "ignored": self.ignored,
                "missing": self.config.missing([v.version for v in self.versions]),
                "versions": [{"version": v.version, "task": v.task, "formats": v.formats,
                              "status": "invalid" if v.problem else "ok", "problem": v.problem}
                             for v in self.versions]}


def describe_version(path: Path, version: int) -> VersionEntry:
    entry = VersionEntry(version, path, signature=signature(path))
    if path.is_file():  # a lone model file given to `edgekit serve`
        entry.formats = [path.suffix.lstrip(".")]
        return entry
    try:
        pkg = package.read(path)
    except EdgekitError as e:
        entry.problem = str(e)
        return entry
    entry.signature = signature(path, [a.path for a in pkg.artifacts if a.status == "ok"])
    entry.task = pkg.task
    entry.formats = sorted({f"{a.format.value}/{a.precision}" for a in pkg.artifacts if a.status == "ok"})
    if not entry.formats:
        entry.problem = "no artifact passed conversion (every one is marked failed)"
    return entry


def scan_model(model_dir: Path) -> ModelEntry:
    """The versions under ``model_dir``: integer folder names only (hidden staging folders are skipped)."""
    versions, folders, ignored = [], {}, []
    for child in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
        number = parse_version(child.name)
        if number is None and child.is_dir() and not child.name.startswith("."):
            ignored.append({"folder": child.name,
                            "reason": "not a version folder (versions are folders named 1, 2, ...)"})
        if number is not None and child.is_dir():
            folders.setdefault(number, []).append(child.name)
            if len(folders[number]) == 1:
                versions.append(describe_version(child, number))
    for v in versions:  # "1" and "01": which one is version 1 is not for the server to guess
        if len(folders[v.version]) > 1:
            v.problem = f"{len(folders[v.version])} folders are version {v.version}: {', '.join(folders[v.version])}"
    versions.sort(key=lambda v: v.version)
    entry = ModelEntry(model_dir.name, model_dir, versions, ignored=ignored)
    try:
        entry.config = read_config(model_dir)
    except ModelFileError as e:
        entry.problem = str(e)
    return entry


def verify_version(path: Path) -> None:
    """Every artifact of the package at ``path`` against its checksum (a lone model file: nothing)."""
    if path.is_dir():
        for artifact in package.read(path).artifacts:
            if artifact.status == "ok":
                package.verify(artifact)


def is_model_folder(path: Path) -> bool:
    """A model's folder of numbered package versions and nothing else (its config.json aside): a
    version folder served alone then takes the model's name."""
    children = [c for c in path.iterdir() if not c.name.startswith(".")] if path.is_dir() else []
    return _holds_version(path) and all(parse_version(c.name) is not None or c.name == CONFIG for c in children)


def _holds_version(folder: Path) -> bool:
    try:
        return any(parse_version(c.name) is not None and (c / formats.MANIFEST).is_file() for c in folder.iterdir())
    except OSError:
        return False


def _looks_like_model_folder(path: Path) -> bool:
    """A folder that holds a version, and no folder that holds versions itself: given as a repository,
    it would serve models named "1", "2", whatever else lies beside them (a ``v3`` folder, notes)."""
    if not _holds_version(path):
        return False
    try:
        children = [c for c in path.iterdir() if not c.name.startswith(".") and c.is_dir()]
    except OSError:
        return False
    return not any(parse_version(c.name) is None and _holds_version(c) for c in children)


def not_a_repository(path: Path) -> str | None:
    """Why ``path``, given as a repository, is a model's folder in one instead (REPO/NAME for REPO:
    it would list or serve models named "1", "2"), or None."""
    if _looks_like_model_folder(path):
        return (f"{path} is a model's folder (its versions are {path}/1, ...): give the repository that "
                f"holds it, {path.parent}, or one version's package")
    return None


def is_repository(path: Path) -> bool:
    """A folder of model folders, as opposed to a package (a folder with edgekit.json)."""
    return path.is_dir() and not (path / formats.MANIFEST).exists()


def scan(repo: Path) -> list[ModelEntry]:
    """Every model folder of ``repo`` (a folder whose name is a valid model name)."""
    if not repo.is_dir():
        raise UsageError(f"{repo}: no such repository folder")
    return [scan_model(d) for d in sorted(repo.iterdir()) if d.is_dir() and name_problem(d.name) is None]


def ignored_folders(repo: Path) -> list[dict]:
    """The folders of ``repo`` that are not served as models, as {"folder", "reason"} (hidden ones are
    skipped)."""
    return [{"folder": d.name, "reason": f"not a model name: {why}"} for d in sorted(repo.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (why := name_problem(d.name)) is not None]


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a model's, or None."""
    if not NAME_RE.match(name):
        return "use letters, digits, '_', '.', '-' (at most 128, starting with a letter or digit)"
    if name == "stats":  # GET /v2/models/stats is the statistics of every model (Triton's URL)
        return "a model cannot be named 'stats': /v2/models/stats is the statistics endpoint"
    return None


def check_name(name: str, hint: str = "") -> str:
    """``name`` if it can be a model's, else a UsageError saying why (and ``hint``, what to do)."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"invalid model name {name!r}: {problem}{hint}")
    return name


def add(pkg_dir: str | Path, repo: str | Path, *, name: str | None = None, version: int | None = None) -> Path:
    """Copy the package ``pkg_dir`` into ``repo`` as a new version of ``name``; returns its folder.

    Every artifact's checksum is verified on the copy before it is renamed into place, so a
    corrupt source is refused and a reader never sees a partial version. Without ``version``,
    the next integer after the newest is taken.
    """
    src = Path(pkg_dir)
    if not src.is_dir():
        raise ModelFileError(src, "no such folder" if not src.exists() else
                             "not a package folder (a folder with edgekit.json)")
    if not (src / formats.MANIFEST).is_file() and _looks_like_model_folder(src):
        raise UsageError(f"{src} is a model's folder in a repository (its versions are {src}/1, ...): "
                         f"add one version's folder")
    package.read(src)  # refuse a source that is not a package before copying anything
    name = check_name(src.resolve().name if name is None else name, " (give another name with --name)")
    if version is not None and (not isinstance(version, int) or not 1 <= version <= MAX_VERSION):
        raise UsageError(f"version must be an integer from 1 to {MAX_VERSION}, got {version!r}")
    repo = Path(repo)
    model_dir = repo / name
    for folder, what in ((repo, "a repository"), (model_dir, f"the folder of model {name!r}")):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder}: exists and is not a folder, so it cannot be {what}")
    created = [d for d in (model_dir, repo) if not d.exists()]  # the folders a refusal removes again
    added = None
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = package.staging_dir(model_dir / "new")
    try:
        copy = staging / "pkg"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns(".*"))
        try:
            verify_version(copy)
        except ModelFileError as e:  # name the source's file, not the copy about to be removed
            where = Path(e.path)
            raise ModelFileError(src / where.relative_to(copy) if where.is_relative_to(copy) else where,
                                 e.problem) from None
        for attempt in range(100):
            v = version if version is not None else _next_version(model_dir)
            dest = model_dir / str(v)
            if v > MAX_VERSION:
                raise UsageError(f"{model_dir}: version {MAX_VERSION} is the highest a repository holds; "
                                 f"give a free one with --version")
            taken = dest.exists() or any(parse_version(d.name) == v for d in model_dir.iterdir())  # "01" is 1
            if taken:
                if version is not None:
                    raise UsageError(f"{dest}: version {v} of {name!r} exists; versions are never replaced, "
                                     f"add a new one")
                continue
            try:
                copy.rename(dest)  # fails if another writer took this number in between
            except OSError:
                if version is not None or attempt == 99:
                    raise
                continue
            added = dest
            return dest
        raise UsageError(f"{model_dir}: could not take a new version number")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if added is None:  # a refused package leaves no model ("no versions") or repository behind
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty: another writer may have added a version


def _next_version(model_dir: Path) -> int:
    """One past the highest number taken by any entry, a stray file included (it blocks the rename)."""
    numbers = [int(d.name) for d in model_dir.iterdir()
               if d.name.isascii() and d.name.isdigit() and len(d.name) <= 9]  # a timestamp backup is no version
    return max(numbers, default=0) + 1
