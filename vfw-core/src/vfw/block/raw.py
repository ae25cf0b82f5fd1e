"""The raw format: the image file is the disk, byte for byte (QEMU's file + raw drivers).

I/O is ``os.preadv``/``os.pwritev`` straight on the caller's buffers (guest RAM views), so no
request data is copied in Python. Discard punches holes (``fallocate`` PUNCH_HOLE) and
write-zeroes uses ZERO_RANGE, falling back to punching a hole, where the host file system can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Callable
from typing import ClassVar

from ..errors import BackendError
from ..qom import register_type
from . import BlockDriver, open_fd_checked

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

    @classmethod
    def probe(cls, header: bytes, path: str) -> int:
        return 1

    def open(self, path: str, *, readonly: bool, cache: str) -> None:
        flags = os.O_RDONLY if readonly else os.O_RDWR
        if cache in ("writethrough", "directsync"):
            flags |= os.O_DSYNC
        self.fd = open_fd_checked(path, flags)
        self.filename, self.readonly, self.cache = path, readonly, cache
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

    def preadv(self, offset: int, buffers: list[memoryview]) -> int:
        if len(buffers) > IOV_MAX:
            return self._batched(self.preadv, offset, buffers)
        total = sum(len(b) for b in buffers)
        done = os.preadv(self.fd, buffers, offset)
        while done < total:  # short read: EOF (zero-fill) or an interrupted large read
            rest = _skip(buffers, done)
            n = os.preadv(self.fd, rest, offset + done)
            if n == 0:
                for b in rest:
                    b[:] = bytes(len(b))
                break
            done += n
        return total

    def pwritev(self, offset: int, buffers: list[memoryview]) -> int:
        if len(buffers) > IOV_MAX:
            return self._batched(self.pwritev, offset, buffers)
        total = sum(len(b) for b in buffers)
        done = os.pwritev(self.fd, buffers, offset)
        while done < total:
            done += os.pwritev(self.fd, _skip(buffers, done), offset + done)
        return total

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
            os.pwrite(self.fd, zero[:n], offset + pos)
            pos += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
