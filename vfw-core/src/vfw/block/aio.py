"""``aio=threads``: a small pool of I/O threads that runs a batch of block requests at once.

``os.preadv``/``os.pwritev`` release the GIL, so while one request waits for the disk others
can be issued: with ``cache=none`` (O_DIRECT) a batch of 32 requests keeps up to
:data:`AIO_THREADS` of them in flight, which is what a queue depth of 32 is for. The pool is
batch-synchronous (:meth:`IOThreadPool.run` returns when every job of the batch finished):
the device completes a whole batch with one used-ring update and one interrupt, and nothing
is in flight between batches, so a device reset never races an I/O into guest RAM.

One process-wide pool (:func:`shared_pool`, QEMU has one per AioContext); threads start on
first use and are daemons.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Any

#: Threads doing I/O in the shared pool (the calling thread and 7 workers). On this
#: project's reference box (2 cores, virtio disk) O_DIRECT 4 KiB random reads scale up to ~8
#: threads and no further.
AIO_THREADS = 8

#: A job: ``fn(*args)``; the pool stores its result or the exception it raised.
Job = tuple[Callable[..., Any], tuple[Any, ...]]


class _Batch:
    """Completion state of one :meth:`IOThreadPool.run` call."""

    __slots__ = ("results", "last", "finished", "done")

    def __init__(self, n: int):
        self.results: list[Any] = [None] * n
        self.last = n - 1
        self.finished = itertools.count()  # next() is atomic under the GIL
        self.done = threading.Lock()
        self.done.acquire()


class IOThreadPool:
    """``threads`` threads doing I/O: ``threads - 1`` daemon workers pulling jobs from one
    queue (started lazily) plus the thread that called :meth:`run`, which would otherwise
    only wait."""

    def __init__(self, threads: int = AIO_THREADS):
        if threads < 1:
            raise ValueError("an I/O thread pool needs at least one thread")
        self.threads = threads
        self._queue: SimpleQueue[tuple[_Batch, int, Job] | None] = SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    def _start(self) -> None:
        with self._start_lock:
            while len(self._workers) < self.threads - 1:
                t = threading.Thread(target=self._worker, name=f"vfw-aio-{len(self._workers)}",
                                     daemon=True)
                t.start()
                self._workers.append(t)

    def _worker(self) -> None:
        get = self._queue.get
        run_one = self._run_one
        while True:
            item = get()
            if item is None:
                return
            run_one(item)

    @staticmethod
    def _run_one(item: tuple[_Batch, int, Job]) -> None:
        batch, i, (fn, args) = item
        try:
            batch.results[i] = fn(*args)
        except BaseException as exc:  # handed to the caller of run()
            batch.results[i] = exc
        if next(batch.finished) == batch.last:
            batch.done.release()

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Run every job on the pool and wait for all of them; results in job order, an
        exception object in place of the result of a job that raised."""
        if not jobs:
            return []
        if len(self._workers) < self.threads - 1:
            self._start()
        batch = _Batch(len(jobs))
        put = self._queue.put
        for i, job in enumerate(jobs):
            put((batch, i, job))
        # The caller is one of the pool's threads: it takes jobs too until none are left
        # (possibly another caller's: each result goes to its own batch), then waits.
        get = self._queue.get_nowait
        while True:
            try:
                item = get()
            except Empty:
                break
            if item is None:  # shutdown() is under way: leave the marker to a worker
                put(None)
                break
            self._run_one(item)
        batch.done.acquire()  # blocks without the GIL until the last job finished
        return batch.results

    def shutdown(self) -> None:
        """Stop the workers (after the jobs already queued)."""
        with self._start_lock:
            for _ in self._workers:
                self._queue.put(None)
            for t in self._workers:
                t.join()
            self._workers = []


_shared: IOThreadPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> IOThreadPool:
    """The process-wide pool every ``aio=threads`` drive uses."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = IOThreadPool()
    return _shared
