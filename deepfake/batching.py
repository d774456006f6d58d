"""Micro-batching for a served detector: many requests' pictures scored together, behind a bounded admission.

:class:`Admission` counts the inputs a server holds (being decoded, waiting or being scored) and refuses new ones
once ``capacity`` are in, so that a burst is answered "busy, retry" instead of growing memory. :class:`MicroBatcher`
runs one scoring thread: it takes the jobs that arrived (each the pictures of one input), waits at most
``max_wait`` seconds for more once the first is in, scores up to ``max_rows`` rows in one call of the model, and
hands every job its own probabilities through a :class:`concurrent.futures.Future`.

Nothing here knows about HTTP, Keras or images: the server (:mod:`deepfake.server`) gives the score function.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

ScoreFunction = Callable[[Sequence[np.ndarray]], np.ndarray]  # units (K_i, S, S, 3) -> one probability per unit


class Busy(Exception):
    """The server holds as many inputs as it may; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"busy: try again in {retry_after} s")
        self.retry_after = retry_after


class Admission:
    """At most ``capacity`` inputs held at once; :meth:`acquire` takes ``n`` slots or raises :class:`Busy`."""

    def __init__(self, capacity: int, retry_after: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.retry_after = retry_after
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def full(self) -> bool:
        return self._held >= self.capacity

    def acquire(self, n: int = 1) -> None:
        with self._lock:
            if self._held + n > self.capacity:
                raise Busy(self.retry_after)
            self._held += n

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._held = max(0, self._held - n)


@dataclass
class _Job:
    units: list[np.ndarray]
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return sum(len(u) for u in self.units)


_STOP = object()


class MicroBatcher:
    """One thread that scores the jobs of concurrent requests together (see the module docstring).

    ``score`` gets the units of every job in the batch and returns one probability per unit; each job's future
    gets the probabilities of its own units, in order (or the exception ``score`` raised).
    """

    def __init__(self, score: ScoreFunction, max_rows: int = 32, max_wait: float = 0.005):
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.score = score
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.batches = 0  # model calls made
        self.rows = 0  # rows scored
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="deepfake-scorer", daemon=True)
        self._thread.start()

    def submit(self, units: Sequence[np.ndarray]) -> Future:
        """Queue one input's units; its future resolves to their probabilities ``(len(units),)``."""
        job = _Job(list(units))
        if not job.units:
            job.future.set_result(np.zeros((0,), dtype="float64"))
            return job.future
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], object | None]:
        """``first`` and the jobs that arrive within ``max_wait`` of it, up to ``max_rows`` rows (a job larger than
        that goes alone); and what was taken but left for the next batch (a job, the stop sign, or None)."""
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP or rows + item.rows > self.max_rows:
                return jobs, item
            jobs.append(item)
            rows += item.rows
        return jobs, None

    def _loop(self) -> None:
        carried: object | None = None
        while True:
            item, carried = (carried, None) if carried is not None else (self._queue.get(), None)
            if item is _STOP:
                return
            jobs, carried = self._collect(item)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        units = [u for job in jobs for u in job.units]
        try:
            probabilities = np.asarray(self.score(units), dtype="float64").reshape(-1)
            if len(probabilities) != len(units):
                raise RuntimeError(f"the model gave {len(probabilities)} probabilities for {len(units)} pictures")
        except Exception as exc:  # noqa: BLE001 - every waiting request learns of it; the thread stays up
            log.exception("scoring a batch of %d picture(s) failed", len(units))
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.batches += 1
        self.rows += sum(job.rows for job in jobs)
        start = 0
        for job in jobs:
            job.future.set_result(probabilities[start : start + len(job.units)])
            start += len(job.units)
