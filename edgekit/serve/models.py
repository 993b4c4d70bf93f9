"""Which model versions are served, and their loading, reloading and unloading while serving.

Sources are repositories (``REPO/<name>/<version>/``) and lone package folders (served as
version 1 of a model named after the folder). For each model the version policy picks the
versions to serve; a version that fails to load (bad checksum, corrupt artifact, unknown
format) is recorded as unavailable with its reason and the policy falls back to the next
older one, so a bad new version never replaces a good one. A new version is loaded while
the old one keeps serving; the old one is released only after the new one is ready and the
requests already sent to it have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bench import warmup_sizes
from ..errors import EdgekitError, UsageError
from ..model import Model, load
from ..tasks.base import is_known_task
from ..types import DeviceKind
from . import repository
from .errors import NotFound, NotReady
from .metrics import Metrics
from .repository import Batching, ModelConfig, VersionEntry
from .runner import Runner, can_batch, warm_up

log = logging.getLogger("edgekit.serve")

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"


def _versions_text(numbers: list[int]) -> str:
    return ("version " if len(numbers) == 1 else "versions ") + ", ".join(map(str, sorted(numbers)))


def _lone_name(path: Path) -> str:
    """A lone package's or file's model name: its folder's name, or its model's for a version folder
    given alone (``REPO/NAME/3``)."""
    if path.is_file():
        return path.stem
    path = path.resolve()
    return path.parent.name if path.name.isdigit() and repository.is_model_folder(path.parent) else path.name


@dataclass
class Version:
    name: str
    version: int
    path: Path
    state: str = LOADING
    reason: str = ""
    signature: tuple = ()
    model: Model | None = None
    runner: Runner | None = None
    task: str | None = None
    batching: str = "off"  # "off" | "on (...)" | "off: why"
    settings: tuple = ()  # (device, batching, instances) it was loaded with: a config change reloads it
    _tasks: dict = field(default_factory=dict)  # task objects by their options, built on first use
    _tasks_lock: threading.Lock = field(default_factory=threading.Lock)

    def to_index(self) -> dict:
        return {"name": self.name, "version": str(self.version), "state": self.state, "reason": self.reason}

    def task_object(self, model: Model, key: tuple = (), factory=None):
        """The task (ImageClassifier, TextEmbedder, ...) over ``model`` (this version's, or its copy
        for a lone request: runner.Runner), built once per ``key`` and copy.

        ``factory(model)`` builds it; by default the task the package declares.
        """
        key = (id(model), *key)
        with self._tasks_lock:  # worker threads (instances > 1) ask at the same time
            obj = self._tasks.get(key)
            if obj is None:
                from ..tasks.base import for_model

                if len(self._tasks) >= 16:  # zero-shot label sets come from clients: keep a few
                    self._tasks.pop(next(iter(self._tasks)))  # not closed: it does not own the model
                obj = self._tasks[key] = (factory or for_model)(model)
            return obj

    def close_tasks(self) -> None:
        with self._tasks_lock:
            for task in self._tasks.values():
                task.close()
            self._tasks.clear()


@dataclass
class ServedModel:
    name: str
    source: Path  # the model folder in a repository, or a lone package
    lone: bool = False  # a package given directly: always version 1
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[int, Version] = field(default_factory=dict)
    problem: str | None = None
    unloaded: bool = False  # unloaded through the repository API: polling leaves it alone
    on_disk: list[int] = field(default_factory=list)  # version numbers found at the last scan
    _seen: tuple = ()
    _said: set = field(default_factory=set)  # the folder's problems logged already
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready(self) -> list[Version]:
        return sorted((v for v in self.versions.values() if v.state == READY), key=lambda v: -v.version)


class ModelManager:
    def __init__(self, sources: list[str | Path], *, metrics: Metrics, device: str = "auto",
                 batching: Batching | None = None, instances: int = 1, poll_interval: float = 2.0) -> None:
        self.metrics = metrics
        self.device = device
        self.batching = batching
        self.instances = instances
        self.poll_interval = poll_interval
        self.repositories: list[Path] = []
        self.models: dict[str, ServedModel] = {}
        for s in sources:
            path = Path(s).expanduser()
            if not path.exists():
                raise UsageError(f"{path}: no such repository, package or model file")
            if repository.is_repository(path):
                problem = repository.not_a_repository(path)
                if problem is not None:
                    raise UsageError(problem)
                self.repositories.append(path)
            else:
                self._add_model(_lone_name(path), path, lone=True)
        self._poller: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self._clashes: set[str] = set()

    def _add_model(self, name: str, source: Path, *, lone: bool = False) -> ServedModel:
        if name in self.models and self.models[name].source != source:
            raise UsageError(f"two models are named {name!r}: {self.models[name].source} and {source}")
        hint = f" (rename {source.name}, or put it in a repository under a folder of that name)" if lone else ""
        return self.models.setdefault(name, ServedModel(repository.check_name(name, hint), source, lone))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._discover()
        for m in list(self.models.values()):
            await self.sync(m)
        if self.poll_interval > 0 and self.repositories:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
        for m in self.models.values():
            for v in m.versions.values():
                await self._release(v, wait=True)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._discover()
                for m in list(self.models.values()):
                    await self.sync(m)  # an unloaded model only has its folder read again, for the index
            except Exception:  # a poll must never end polling
                log.exception("repository poll failed")

    def _discover(self) -> None:
        for name, m in list(self.models.items()):  # a model folder deleted: gone once its versions are released
            if not m.lone and not m.versions and not m.source.exists() and not m._lock.locked():
                del self.models[name]
                self._clashes.discard(name)
        for repo in self.repositories:
            if not repo.is_dir():
                continue
            for d in sorted(repo.iterdir()):
                if not d.is_dir() or d.name.startswith("."):  # hidden: staging folders, .git
                    continue
                why = repository.name_problem(d.name)
                if why is not None:
                    if d.name not in self._clashes:  # said once, not at every scan
                        self._clashes.add(d.name)
                        log.warning("%s is not served: not a model name: %s", d, why)
                    continue
                known = self.models.get(d.name)
                if known is None:
                    self._add_model(d.name, d)
                elif known.source != d and d.name not in self._clashes:
                    self._clashes.add(d.name)
                    log.warning("%s is not served: a model named %r is already served from %s", d, d.name,
                                known.source)

    # -- what the API asks ----------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> Version:
        """The version to serve: the given one, or the newest ready one."""
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name!r}")
        if version is None or version == "":
            ready = m.ready()
            if not ready:
                raise NotReady(f"model {name!r} has no version ready: {self._why_not(m)}")
            return ready[0]
        number = repository.parse_version(version)
        if number is None:
            shown = version if len(version) <= 20 else version[:20] + "..."
            raise NotFound(f"model {name!r} has no version {shown!r} (versions are whole numbers from 1 "
                           f"to {repository.MAX_VERSION})")
        v = m.versions.get(number)
        if v is None and number in m.on_disk:
            raise NotFound(f"version {number} of {name!r} is in the repository but not served: "
                           f"{'the model is unloaded' if m.unloaded else 'it is not in the version policy'}")
        if v is None:
            raise NotFound(f"model {name!r} has no version {version}")
        if v.state != READY:
            raise NotReady(f"version {version} of {name!r} is {v.state.lower()}: {v.reason}")
        return v

    def _why_not(self, m: ServedModel) -> str:
        if m.unloaded:
            return "unloaded"
        if m.problem:
            return m.problem
        reasons = [f"version {v.version}: {v.reason or v.state.lower()}" for v in m.versions.values()
                   if v.reason or v.state != READY]  # a version being loaded has no reason yet
        missing = m.config.missing(m.on_disk)
        if missing:  # a "specific" policy naming versions that are not there
            reasons.append(f"the version policy names {_versions_text(missing)}, which the repository does not hold")
        if reasons:
            return "; ".join(reasons)
        return "no versions in the version policy" if m.on_disk else "no versions in the repository"

    def index(self) -> list[dict]:
        """Every version of every model, on disk or loaded, with its state and why (Triton's index)."""
        rows = []
        for m in sorted(self.models.values(), key=lambda m: m.name):
            numbers = sorted(set(m.versions) | set(m.on_disk))
            missing = m.config.missing(numbers)
            if not numbers and not missing:
                rows.append({"name": m.name, "state": UNAVAILABLE, "reason": self._why_not(m)})
            for n in numbers:
                v = m.versions.get(n)
                rows.append(v.to_index() if v is not None else
                            {"name": m.name, "version": str(n), "state": UNAVAILABLE,
                             "reason": "unloaded" if m.unloaded else "not in the version policy"})
                if m.problem:
                    note = f"{m.problem} (the settings in force stay)"
                    rows[-1]["reason"] = f"{rows[-1]['reason']}; {note}" if rows[-1].get("reason") else note
            rows += [{"name": m.name, "version": str(n), "state": UNAVAILABLE,
                      "reason": "named by the version policy, not in the repository"} for n in missing]
        return rows

    def ready(self) -> bool:
        """Serving something: at least one model has a ready version. An empty repository (a wrong
        mount, say) is live but not ready, so an orchestrator sends it no traffic."""
        return any(m.ready() for m in self.models.values())

    async def load_model(self, name: str) -> None:
        """The repository API's load: (re)read the model's folder and load its policy's versions."""
        self._discover()
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name!r}: no such folder in the repository")
        await self.sync(m, force=True)
        if not m.ready():
            raise NotReady(f"model {name!r} could not be loaded: {self._why_not(m)}")

    async def unload_model(self, name: str) -> None:
        m = self.models.get(name)
        if m is None:
            raise NotFound(f"unknown model {name!r}")
        async with m._lock:
            m.unloaded = True
            for v in list(m.versions.values()):
                await self._release(v, reason="unloaded")

    # -- syncing one model with its folder ------------------------------------------------------

    async def sync(self, m: ServedModel, *, force: bool = False) -> None:
        """Bring the served versions of ``m`` in line with its folder; ``force``: even if unloaded."""
        async with m._lock:
            if force:
                m.unloaded, m._seen = False, ()
            entries, config, problem, ignored = await asyncio.to_thread(self._scan, m)
            if m.unloaded:  # nothing is loaded, but the index lists what the folder holds now
                m.on_disk = [e.version for e in entries]
                return
            ignored = [f"{i['folder']}: {i['reason']}" for i in ignored]
            seen = (tuple((e.version, e.signature, e.problem) for e in entries), config, problem, tuple(ignored))
            if seen == m._seen:
                return
            m._seen = seen
            m.on_disk = [e.version for e in entries]
            missing = config.missing(m.on_disk) if problem is None else []
            for line in ignored:
                if line not in m._said:  # each said once, not at every change of the folder
                    log.warning("%s: ignored in %s: %s", m.name, m.source, line)
            if missing and tuple(missing) not in m._said:
                log.warning("%s: the version policy names %s, which the repository does not hold%s", m.name,
                            _versions_text(missing), f" (it holds {_versions_text(m.on_disk)})" if m.on_disk else "")
            empty = f"no versions in {m.source} (a version is a folder {m.source}/1/ holding a package: " \
                    f"add one with `edgekit repo add PKG --repository {m.source.parent}`)"
            if not entries and not m.lone and empty not in m._said:
                log.warning("%s: %s", m.name, empty)
            m._said = {*ignored, tuple(missing), *([empty] if not entries and not m.lone else [])}
            if problem is not None and problem != m.problem:
                log.warning("%s: %s; the settings in force stay", m.name, problem)
            m.problem = problem
            if problem is None:
                m.config = config
            await self._apply(m, entries)

    def _scan(self, m: ServedModel) -> tuple[list[VersionEntry], ModelConfig, str | None, list[str]]:
        if m.lone:
            return [repository.describe_version(m.source, 1)], ModelConfig(), None, []
        found = repository.scan_model(m.source)
        return found.versions, found.config, found.problem, found.ignored

    async def _apply(self, m: ServedModel, entries: list[VersionEntry]) -> None:
        on_disk = {e.version: e for e in entries}
        failed: dict[int, str] = {}  # version -> why it did not load

        def kept() -> set[int]:
            """Versions serving now whose folder changed into something that does not load: the
            loaded copy goes on serving (and counts for the policy) rather than leave a gap."""
            return {e.version for e in entries if (v := m.versions.get(e.version)) is not None
                    and v.state == READY and (e.problem or e.version in failed)}

        for e in entries:  # problems found without loading: never tried
            if e.problem:
                self._unavailable(m, e, e.problem)
        settings = self._settings(m)
        while True:
            keep = kept()
            loadable = [e.version for e in entries if e.version in keep or (not e.problem and e.version not in failed)]
            wanted = m.config.chosen(loadable)
            todo = [v for v in wanted if v not in keep and (
                v not in m.versions or m.versions[v].state != READY
                or m.versions[v].signature != on_disk[v].signature or m.versions[v].settings != settings)]
            if not todo:
                break
            for v in todo:
                problem = await self._load(m, on_disk[v], settings)
                if problem is not None:
                    failed[v] = problem
        for v in list(m.versions.values()):  # after the new ones are ready, release what the policy dropped
            if v.version not in on_disk:
                await self._release(v, reason="removed from the repository", forget=True)
            elif v.version not in wanted and (v.state == READY or v.reason == "unloaded"):
                await self._release(v, reason="not in the version policy")  # (an unloaded one: says so now)
            elif v.version in keep:
                if on_disk[v.version].problem or v.settings == settings:
                    problem = on_disk[v.version].problem or failed.get(v.version, "it does not load")
                    v.reason = f"serving the copy loaded before its folder changed; on disk now: {problem}"
                else:
                    v.reason = (f"serving the copy loaded before config.json changed; with its settings now: "
                                f"{failed.get(v.version, 'it does not load')}")
            elif v.state == READY:
                v.reason = ""  # whatever kept it serving an older copy is over

    def _settings(self, m: ServedModel) -> tuple:
        c = m.config
        batching = self.batching if c.batching is None else (c.batching if c.batching.max_batch_size > 1 else None)
        return (c.device or self.device, batching, c.instances or self.instances)

    def _unavailable(self, m: ServedModel, e: VersionEntry, reason: str) -> None:
        old = m.versions.get(e.version)
        if old is not None and old.state == READY:
            return  # _apply keeps it serving
        m.versions[e.version] = Version(m.name, e.version, e.path, UNAVAILABLE, reason, e.signature)

    async def _load(self, m: ServedModel, e: VersionEntry, settings: tuple) -> str | None:
        """Load (or reload) one version; None when it is ready, else why not."""
        device, batching, instances = settings
        old = m.versions.get(e.version)
        if old is None or old.state != READY:
            m.versions[e.version] = Version(m.name, e.version, e.path, LOADING, "", e.signature)
        started = time.perf_counter()
        try:
            # A bad checksum anywhere makes the version unavailable: load() alone would fall back to
            # another artifact, and the version would replace a good one with part of a package.
            await asyncio.to_thread(repository.verify_version, e.path)
            # Each instance runs at the same time as the others: the runtime splits the cores between them.
            model = await asyncio.to_thread(load, e.path, device=device, concurrency=instances)
        except Exception as exc:  # any failure to load is the version's problem, never the server's
            reason = str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s version %d cannot be served: %s", m.name, e.version, reason)
            if old is None or old.state != READY:
                m.versions[e.version] = Version(m.name, e.version, e.path, UNAVAILABLE, reason, e.signature)
            return reason
        why_not = can_batch(model) if batching else None
        # Batch 1 ran in load()'s first-inference check; the larger batches run here, before the
        # version is published, so that no request waits out a first run's compilation.
        sizes = range(2, (batching.max_batch_size if batching and not why_not else 1) + 1)
        warmed = time.perf_counter()
        largest, failed = await asyncio.to_thread(warm_up, model, sizes, warmup_sizes(model))
        warmed = time.perf_counter() - warmed
        solo = await self._solo(model, m, e, max(largest, 1)) if instances > 1 else None
        largest = max(largest, 1)
        if failed is not None:
            why_not = f"a run at batch {failed[0]} failed ({failed[1]})"
        if why_not:
            log.warning("%s version %d: dynamic batching off, %s", m.name, e.version, why_not)
        task = model.metadata.get("task")
        v = Version(m.name, e.version, e.path, READY, "", e.signature, model,
                    Runner(model, name=m.name, version=e.version, metrics=self.metrics, instances=instances,
                           batching=None if why_not else batching, solo=solo),
                    task=task if is_known_task(task) else None, settings=settings)
        v.batching = ("off" if not batching else f"off: {why_not}" if why_not
                      else f"on (max batch {batching.max_batch_size}, max delay {batching.max_queue_delay_ms} ms)")
        if old is not None and old.runner is not None:
            self._unpublish(old)
            self._close_later(old)
        m.versions[e.version] = v
        self.metrics.loaded.labels(*self._loaded_labels(v)).set(1)
        log.info("%s version %d ready on %s:%s [%s]%s in %.1f s (warm-up at batch %s%s: %.2f s)", m.name, e.version,
                 model.backend, model.device, model.path.name,
                 "" if instances == 1 else f" x{instances} instances{', a lone request on every core' if solo else ''}",
                 time.perf_counter() - started,
                 f"1-{largest}" if largest > 1 else largest,
                 f" of {sizes[-1]}, then out of time" if sizes and not failed and largest < sizes[-1] else "",
                 warmed)
        return None

    @staticmethod
    async def _solo(model: Model, m: ServedModel, e: VersionEntry, largest: int) -> Model | None:
        """``model`` opened again for one run at a time on every core (see runner.Runner) and warmed
        up at batch sizes 1 to ``largest``, where it runs on a CPU; None elsewhere (an accelerator runs
        one inference at a time its own way) or when that fails, which leaves the version serving as
        it is."""
        chosen = model.selection.chosen
        if chosen is None or chosen.kind is not DeviceKind.CPU:
            return None
        try:
            solo = await asyncio.to_thread(model.reopen, 1)
        except Exception as exc:
            why = str(exc)
        else:
            _, failed = await asyncio.to_thread(warm_up, solo, range(1, largest + 1), warmup_sizes(model))
            if failed is None:
                return solo
            await asyncio.to_thread(solo.close)
            why = f"a run at batch {failed[0]} failed ({failed[1]})"
        log.warning("%s version %d: a lone request shares the cores like the others (its copy with every "
                    "core: %s)", m.name, e.version, why)
        return None

    @staticmethod
    def _loaded_labels(v: Version) -> tuple:
        return (v.name, str(v.version), v.model.backend, v.model.device, v.model.path.name)

    def _unpublish(self, v: Version) -> None:
        try:
            self.metrics.loaded.remove(*self._loaded_labels(v))
        except KeyError:
            pass

    async def _release(self, v: Version, *, reason: str = "stopped", forget: bool = False,
                       wait: bool = False) -> None:
        m = self.models[v.name]
        if forget:
            m.versions.pop(v.version, None)
        else:
            m.versions[v.version] = Version(v.name, v.version, v.path, UNAVAILABLE, reason, v.signature)
        if v.runner is not None:
            log.info("%s version %d unloaded (%s)", v.name, v.version, reason)
            self._unpublish(v)
            if wait:
                await self._close(v)
            else:
                self._close_later(v)

    def _close_later(self, v: Version) -> None:
        task = asyncio.get_running_loop().create_task(self._close(v))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, v: Version) -> None:
        """Let the requests already sent to ``v`` finish, then release its runtime and its in-flight
        gauge (the counters and histograms stay: they are totals a scraper has seen)."""
        await v.runner.close(before_model=v.close_tasks)
        m = self.models.get(v.name)
        now = m.versions.get(v.version) if m is not None else None
        if now is None or now.runner is None:  # not loaded again meanwhile under the same labels
            with contextlib.suppress(KeyError):
                self.metrics.in_flight.remove(v.name, str(v.version))
