"""Runs one served model version off the event loop: a queue in front of its worker threads.

Each version has ``instances`` worker threads (Triton's instance count; default 1, since the
runtimes already spread one inference over the cores). Above 1 the model is loaded with that
``concurrency``, so that the runtime splits the cores between the runs. Requests wait in a FIFO
queue for a worker; queue and compute time are measured separately.

On a CPU, a model loaded for several runs at once keeps a second copy opened for one (``solo``): a
request that arrives while no other is running takes it and every core, so one client is answered
as fast as with one instance, and many share the cores run for run. (The int8 EfficientNet-Lite0
on a 2-core Xeon: 1.6 ms on both cores, 2.2 ms on one, so two runs on a core each get through 1.4x
the requests of runs on both cores in turn.)

With dynamic batching, requests that arrive while the model is busy (or within
``max_queue_delay_ms`` of the first) are joined along the batch axis into one run of at most
``max_batch_size`` rows and the outputs split back, as Triton's dynamic batcher does. Only
models whose every input and output has a dynamic first dimension can batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..model import Model
from .errors import NotReady
from .metrics import InferenceStats, Metrics
from .repository import Batching

log = logging.getLogger("edgekit.serve")


def batch_axis_problem(model: Model) -> str | None:
    """None if every input and output of ``model`` has a dynamic first axis (its rows), else which does not."""
    for spec in [*model.inputs, *model.outputs]:
        if spec.shape is None or not spec.shape or isinstance(spec.shape[0], int):
            return f"{spec.name} has no dynamic batch dimension ({spec})"
    return None


def can_batch(model: Model) -> str | None:
    """None if requests to ``model`` may be joined into one run along its first axis, else why not."""
    if model.cross_row:  # each client's answer would depend on the requests it was batched with
        return f"{model.cross_row}: a batch would change each request's answer"
    return batch_axis_problem(model)


# Warm-up stops starting larger batches after this long: it grows with the square of the largest
# batch, and a slow model with a large one would otherwise keep its version from serving for minutes.
WARM_UP_BUDGET_S = 10.0


def warm_up(model: Model, batch_sizes: range, warmup: dict | None = None,
            budget_s: float = WARM_UP_BUDGET_S) -> tuple[int, tuple[int, Exception] | None]:
    """Run ``model`` once at each of ``batch_sizes`` before it takes requests, as Triton's
    model_warmup does. OpenVINO compiles each new input shape on its first run (40-60 ms a batch
    size for the int8 EfficientNet-Lite0 on a 2-core Xeon), which the first requests of each
    size would otherwise wait out. ``warmup`` is the package's ``warmup_inputs``.

    Returns the largest batch size run, and None or the first batch size that failed and why: a
    graph can declare a dynamic batch it cannot run.
    """
    from ..bench import synthetic_inputs

    done, start = 0, time.perf_counter()
    for b in batch_sizes:
        if done and time.perf_counter() - start > budget_s:
            break
        try:
            model.run(synthetic_inputs(model.inputs, batch=b, warmup=warmup))
        except Exception as e:
            return done, (b, e)
        done = b
    return done, None


def _rows(arrays: dict[str, np.ndarray]) -> int:
    """Inferences in one request: its first input's batch dim (1 for a scalar or no input)."""
    first = next(iter(arrays.values()), None)
    return first.shape[0] if first is not None and first.ndim else 1


class _Item:
    __slots__ = ("arrays", "rows", "key", "future", "enqueued")

    def __init__(self, arrays: dict[str, np.ndarray], future: asyncio.Future) -> None:
        self.arrays = arrays
        self.rows = _rows(arrays)
        # Requests join one batch only when every input agrees on everything but the first dim.
        self.key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in arrays.items())
        if any(a.shape[0] != self.rows for a in arrays.values()):
            self.key = None  # inputs disagree on the batch size: run alone
        self.future = future
        self.enqueued = time.perf_counter()


class Runner:
    def __init__(self, model: Model, *, name: str, version: int, metrics: Metrics, instances: int = 1,
                 batching: Batching | None = None, solo: Model | None = None) -> None:
        self.model = model
        self.solo = solo  # ``model`` opened for one run with every core, for a request that comes alone
        self._running = 0  # runs handed to the workers and not yet finished there
        self._running_lock = threading.Lock()  # taken on the event loop and by whichever thread ends a run
        self.labels = (name, str(version))
        # This version's series, looked up once rather than on every request.
        self._in_flight = metrics.in_flight.labels(*self.labels)
        self._queue_s = metrics.queue_seconds.labels(*self.labels)
        self._compute_s = metrics.compute_seconds.labels(*self.labels)
        self._batch_size = metrics.batch_size.labels(*self.labels)
        self.stats = InferenceStats()
        self._batchable = batch_axis_problem(model) is None  # else one inference a request, whatever its shape
        self.instances = instances
        self._pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"edgekit-{name}-{version}")
        self._active = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batching = batching
        self._queue: asyncio.Queue[_Item] | None = None
        self._consumers: list[asyncio.Task] = []
        if batching is not None:
            self._queue = asyncio.Queue()
            self._consumers = [asyncio.get_running_loop().create_task(self._batch_loop())
                               for _ in range(instances)]

    # -- what handlers call -------------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self):
        """Keep this version open for one request, from before its body is read to its answer.

        Taken right after the version is looked up, with no await in between, so a version being
        unloaded is either refused here (503) or waits for the request to finish.
        """
        if self._closing:
            raise NotReady(f"version {self.labels[1]} of {self.labels[0]!r} is being unloaded")
        self._active += 1
        self._idle.clear()
        self._in_flight.inc()
        try:
            yield self
        finally:
            self._active -= 1
            self._in_flight.dec()
            if self._active == 0:
                self._idle.set()

    async def infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on checked inputs (under :meth:`hold`); batched with others when batching is on."""
        if self._queue is None:
            return await self.call(Model.run, arrays, rows=_rows(arrays) if self._batchable else 1)
        item = _Item(arrays, asyncio.get_running_loop().create_future())
        await self._queue.put(item)
        return await item.future

    async def call(self, fn: Callable, *args, rows: int = 1):
        """Run ``fn(model, *args)`` (``rows`` inferences) on one of this model's workers (under
        :meth:`hold`), ``model`` being the copy to run (:meth:`_submit`); task endpoints use it."""
        enqueued = time.perf_counter()
        return await self._submit(lambda model: self._timed(fn, (model, *args), enqueued, rows))

    def _submit(self, job: Callable[[Model], object]) -> asyncio.Future:
        """``job(model)`` on a worker, ``model`` being the copy with every core when no other run is
        going, else the one that shares them. A run counts until its worker is done with it, also
        when the request that waits for it is cancelled."""
        with self._running_lock:
            model = self.solo if self.solo is not None and self._running == 0 else self.model
            self._running += 1
        try:
            done = self._pool.submit(job, model)
        except BaseException:  # the pool is shut down: nothing to count
            self._count_off(None)
            raise
        done.add_done_callback(self._count_off)  # when its worker is done, or it is cancelled before starting
        return asyncio.wrap_future(done)

    def _count_off(self, _done) -> None:
        with self._running_lock:
            self._running -= 1

    def _timed(self, fn: Callable, args: tuple, enqueued: float, rows: int):
        start = time.perf_counter()
        self._queue_s.observe(start - enqueued)
        try:
            result = fn(*args)
        finally:
            took = time.perf_counter() - start
            self._compute_s.observe(took)
        self.stats.ran(took, [start - enqueued], rows)
        return result

    # -- dynamic batching ---------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        assert self._queue is not None and self.batching is not None
        limit, delay = self.batching.max_batch_size, self.batching.max_queue_delay_ms / 1000
        carry: _Item | None = None  # a request that did not fit the last batch starts the next one
        while True:
            first, carry = (carry, None) if carry is not None else (await self._queue.get(), None)
            batch, rows = [first], first.rows
            deadline = first.enqueued + delay
            while rows < limit and first.key is not None:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if item.future.done():  # its client went away while it waited
                    continue
                if item.key != first.key or rows + item.rows > limit:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            start = time.perf_counter()
            for item in batch:
                self._queue_s.observe(start - item.enqueued)
            self._batch_size.observe(len(batch))
            try:
                results = await self._submit(functools.partial(self._run_batch, batch=batch))
            except Exception as e:  # the pool itself failed: answer everyone rather than leave them waiting
                results = [e] * len(batch)
            finally:
                took = time.perf_counter() - start
                self._compute_s.observe(took)
            answered = [item for item, result in zip(batch, results) if not isinstance(result, BaseException)]
            if answered:
                self.stats.ran(took, [start - item.enqueued for item in answered], sum(i.rows for i in answered))
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    @staticmethod
    def _run_batch(model: Model, batch: list[_Item]) -> list:
        """Each request's outputs, or the exception its own inputs raised: one bad request in a
        batch never fails the others."""
        if len(batch) > 1:
            joined = {n: np.concatenate([item.arrays[n] for item in batch]) for n in batch[0].arrays}
            total = sum(item.rows for item in batch)
            try:
                out = model.run(joined)
            except Exception:
                out = None  # find out whose inputs it was: run them one by one below
            if out is not None and all(a.ndim and a.shape[0] == total for a in out.values()):
                cuts = np.cumsum([item.rows for item in batch])[:-1]
                parts = {n: np.split(a, cuts) for n, a in out.items()}
                return [{n: parts[n][i] for n in out} for i in range(len(batch))]
        results = []
        for item in batch:
            try:
                results.append(model.run(item.arrays))
            except Exception as e:
                results.append(e)
        return results

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self, before_model: Callable[[], None] | None = None) -> None:
        """Refuse new requests, wait for those held, stop the workers, then release the model.

        ``before_model`` (closing the task objects) runs once no worker can still be using them.
        """
        self._closing = True
        await self._idle.wait()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)  # a cancelled request's run may still be going
        try:
            if before_model is not None:
                before_model()
            await asyncio.to_thread(self.model.close)
        finally:
            if self.solo is not None:
                await asyncio.to_thread(self.solo.close)
