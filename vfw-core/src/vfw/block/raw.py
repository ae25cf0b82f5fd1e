"""The raw format: the image file is the disk, byte for byte (QEMU's file + raw drivers).

I/O is ``os.preadv``/``os.pwritev`` straight on the caller's buffers (guest RAM views), so no
request data is copied in Python. Discard punches holes (``fallocate`` PUNCH_HOLE) and
write-zeroes uses ZERO_RANGE, falling back to punching a hole, where the host file system can.

``cache=`` as in QEMU: ``writeback`` (page cache, flush = fsync), ``none`` (O_DIRECT, flush =
fsync), ``writethrough`` (O_DSYNC), ``directsync`` (O_DIRECT + O_DSYNC), ``unsafe`` (page
cache, flush does nothing). O_DIRECT wants the offset, every length and every buffer address
aligned to the device's logical block; a request that is not (the kernel answers EINVAL) is
redone through a second descriptor without O_DIRECT (same O_DSYNC), so it never fails. That
mixes buffered and direct I/O on one file, which Linux keeps coherent as long as the two do
not run at the same time on the same pages: :meth:`RawDriver.run_batch` therefore redoes
such requests only after the batch's direct I/O has finished.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import BackendError
from ..qom import register_type
from . import BatchJob, BlockDriver, open_fd_checked
from .aio import shared_pool

IOV_MAX = 1024
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """Linux fallocate(2); OSError on failure."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@register_type
class RawDriver(BlockDriver):
    """A raw image in a host file or block device."""

    TYPE = "block-driver-raw"
    FORMAT = "raw"
    CAN_DISCARD: ClassVar[bool] = True
    CAN_WRITE_ZEROES: ClassVar[bool] = True

    def instance_init(self) -> None:
        self.fd = -1
        #: The descriptor without O_DIRECT that misaligned requests fall back to (cache=none
        #: and directsync only; opened on first need).
        self._fallback_fd = -1
        self.direct = False
        #: Requests that O_DIRECT refused and the buffered descriptor did instead (tests).
        self.fallbacks = 0

    @classmethod
    def probe(cls, header: bytes, path: str) -> int:
        return 1

    def open(self, path: str, *, readonly: bool, cache: str) -> None:
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if cache in ("writethrough", "directsync"):
            flags |= os.O_DSYNC
        self.direct = cache in ("none", "directsync")
        self._flags = flags
        if self.direct:
            try:
                self.fd = os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise BackendError(f"Could not open '{path}': {exc.strerror}") from None
                raise BackendError(f"Could not open '{path}': cache={cache} needs O_DIRECT, "
                                   f"which its file system does not support (use "
                                   f"cache=writeback or cache=writethrough)") from None
        else:
            self.fd = open_fd_checked(path, flags)
        self.filename, self.readonly, self.cache = path, readonly, cache
        # Waiting for the disk (O_DIRECT / O_DSYNC) is what a thread pool can overlap; a
        # page-cache hit is a memcpy that costs less than handing it to another thread.
        self.io_can_block = cache in ("none", "directsync", "writethrough")
        st = os.fstat(self.fd)
        if stat.S_ISBLK(st.st_mode):
            self.length = os.lseek(self.fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self.length = st.st_size
        else:
            os.close(self.fd)
            self.fd = -1
            raise BackendError(f"'{path}' is not a file or block device")
        self._is_file = stat.S_ISREG(st.st_mode)
        # O_DIRECT requests may need the fallback descriptor (EINVAL): not plain.
        self.plain_fd = -1 if self.direct else self.fd

    def set_aio(self, aio: str) -> None:
        """``aio=threads``: blocking I/O of a batch goes to the shared thread pool."""
        self.pool = shared_pool() if aio == "threads" and self.io_can_block else None

    # -- data -----------------------------------------------------------------------------
    def preadv(self, offset: int, buffers: list[memoryview]) -> int:
        if len(buffers) > IOV_MAX:
            return self._batched(self.preadv, offset, buffers)
        try:
            if len(buffers) == 1:  # the common case, without a further call
                done = os.preadv(self.fd, buffers, offset)
                if done == len(buffers[0]):
                    return done
                return done + _preadv_all(self.fd, offset + done, _skip(buffers, done))
            return _preadv_all(self.fd, offset, buffers)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
        return _preadv_all(self._fallback(), offset, buffers)

    def pwritev(self, offset: int, buffers: list[memoryview]) -> int:
        if len(buffers) > IOV_MAX:
            return self._batched(self.pwritev, offset, buffers)
        try:
            if len(buffers) == 1:
                done = os.pwritev(self.fd, buffers, offset)
                if done == len(buffers[0]):
                    return done
                return done + _pwritev_all(self.fd, offset + done, _skip(buffers, done))
            return _pwritev_all(self.fd, offset, buffers)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
        return _pwritev_all(self._fallback(), offset, buffers)

    def _fallback(self) -> int:
        """The buffered descriptor for a request O_DIRECT refused (EINVAL: misaligned)."""
        self.fallbacks += 1
        return self._buffered_fd()

    def _buffered_fd(self) -> int:
        """A descriptor without O_DIRECT (the main one unless cache=none/directsync)."""
        if not self.direct:
            return self.fd
        if self._fallback_fd < 0:
            self._fallback_fd = open_fd_checked(self.filename, self._flags)
        return self._fallback_fd

    def run_batch(self, jobs: list[BatchJob]) -> list[int | OSError]:
        """Several independent reads/writes; with ``aio=threads`` and blocking I/O they run
        on the pool (several in flight). A pool thread makes just the one syscall; whatever
        did not complete in full there (EOF, a short transfer, EINVAL from a misaligned
        O_DIRECT request) is redone here afterwards by the complete path, when no other
        request of the batch is in flight any more."""
        pool = self.pool
        if pool is None or len(jobs) < 2 or any(len(b) > IOV_MAX for _w, _o, b in jobs):
            return super().run_batch(jobs)
        fd, pread, pwrite = self.fd, os.preadv, os.pwritev
        results: list[Any] = pool.run([(pwrite if w else pread, (fd, b, o)) for w, o, b in jobs])
        for i, r in enumerate(results):
            w, o, b = jobs[i]
            if r == (len(b[0]) if len(b) == 1 else sum(len(x) for x in b)):
                continue
            if isinstance(r, BaseException):
                if not isinstance(r, OSError):
                    raise r
                if r.errno != errno.EINVAL:
                    continue  # a host I/O error: the caller reports it
            try:
                results[i] = (self.pwritev if w else self.preadv)(o, b)
            except OSError as exc:
                results[i] = exc
        return results

    @staticmethod
    def _batched(fn: Callable[[int, list[memoryview]], int], offset: int,
                 buffers: list[memoryview]) -> int:
        done = 0
        for i in range(0, len(buffers), IOV_MAX):
            done += fn(offset + done, buffers[i:i + IOV_MAX])
        return done

    def flush(self) -> None:
        if self.cache != "unsafe":
            os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        if not self._is_file:
            raise NotImplementedError("discard on block devices")
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise NotImplementedError(str(exc)) from None
            raise

    def write_zeroes(self, offset: int, length: int) -> None:
        for mode in (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE):
            if not self._is_file:
                break
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        zero = memoryview(bytes(min(length, 1 << 20)))
        pos = 0
        while pos < length:
            n = min(len(zero), length - pos)
            os.pwrite(self._buffered_fd(), zero[:n], offset + pos)
            pos += n

    def close(self) -> None:
        self.plain_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._fallback_fd >= 0:
            os.close(self._fallback_fd)
            self._fallback_fd = -1


def _preadv_all(fd: int, offset: int, buffers: list[memoryview]) -> int:
    """Fill ``buffers`` from ``offset``: short reads continue, EOF fills with zeroes."""
    done = os.preadv(fd, buffers, offset)
    if len(buffers) == 1:
        total = len(buffers[0])
        if done == total:
            return total
    else:
        total = sum(len(b) for b in buffers)
    while done < total:  # short read: EOF (zero-fill) or an interrupted large read
        rest = _skip(buffers, done)
        n = os.preadv(fd, rest, offset + done)
        if n == 0:
            for b in rest:
                b[:] = bytes(len(b))
            break
        done += n
    return total


def _pwritev_all(fd: int, offset: int, buffers: list[memoryview]) -> int:
    """Write all of ``buffers`` at ``offset`` (continuing after short writes)."""
    done = os.pwritev(fd, buffers, offset)
    total = len(buffers[0]) if len(buffers) == 1 else sum(len(b) for b in buffers)
    while done < total:
        done += os.pwritev(fd, _skip(buffers, done), offset + done)
    return total


def _skip(buffers: list[memoryview], n: int) -> list[memoryview]:
    """``buffers`` without their first ``n`` bytes."""
    out: list[memoryview] = []
    for b in buffers:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:])
        n = 0
    return out
