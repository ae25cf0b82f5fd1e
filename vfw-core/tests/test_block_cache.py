"""-drive cache= and aio=: open flags, flush semantics, O_DIRECT alignment fallback, the pool."""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vfw import block
from vfw.block import raw
from vfw.block.aio import IOThreadPool
from vfw.block.raw import RawDriver
from vfw.errors import OptionError
from vfw.options import Opts, OptsGroup
from vfw.testing import need

SIZE = 256 * 1024


def _opts(**items: str) -> Opts:
    items.setdefault("if", "none")
    return Opts(OptsGroup("drive"), id=items.pop("id", None),
                items=[(k.replace("_", "-").replace("--", "."), v) for k, v in items.items()])


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SIZE))
    probe = os.open(path, os.O_RDONLY)
    os.close(probe)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        need(False, "the temporary directory's file system has no O_DIRECT")
    os.close(fd)
    return str(path)


def _aligned(n: int) -> memoryview:
    """Page-aligned memory, like guest RAM."""
    return memoryview(mmap.mmap(-1, n))


def _open(image: str, cache: str) -> RawDriver:
    drv = block.open_image(image, "raw", cache=cache)
    assert isinstance(drv, RawDriver)
    return drv


@pytest.mark.parametrize("cache,direct,dsync", [
    ("writeback", False, False), ("none", True, False), ("writethrough", False, True),
    ("directsync", True, True), ("unsafe", False, False)])
def test_cache_mode_open_flags(image: str, cache: str, direct: bool, dsync: bool) -> None:
    drv = _open(image, cache)
    fl = fcntl.fcntl(drv.fd, fcntl.F_GETFL)
    assert bool(fl & os.O_DIRECT) == direct and bool(fl & os.O_DSYNC) == dsync
    assert drv.io_can_block == (cache in ("none", "writethrough", "directsync"))
    drv.close()


@pytest.mark.parametrize("cache,syncs", [("writeback", 1), ("none", 1), ("writethrough", 1),
                                         ("directsync", 1), ("unsafe", 0)])
def test_flush_fsyncs_except_unsafe(image: str, cache: str, syncs: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(raw.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    drv = _open(image, cache)
    buf = _aligned(4096)
    buf[:] = b"w" * 4096
    drv.pwritev(8192, [buf])
    drv.flush()
    assert calls == [drv.fd] * syncs
    assert Path(image).read_bytes()[8192:12288] == b"w" * 4096
    drv.close()


@pytest.mark.parametrize("cache", ["none", "directsync"])
def test_direct_misaligned_requests_fall_back(image: str, cache: str) -> None:
    """O_DIRECT refuses misaligned buffers, offsets and lengths; such requests still work."""
    data = Path(image).read_bytes()
    drv = _open(image, cache)
    page = _aligned(8192)
    assert drv.preadv(4096, [page[:4096]]) == 4096 and drv.fallbacks == 0
    assert page[:4096] == data[4096:8192]
    odd = page[1:513]  # not 512-aligned in memory (some kernels accept it, some do not)
    assert drv.preadv(512, [odd]) == 512
    assert odd == data[512:1024]
    small = bytearray(100)  # length and offset not multiples of 512: always refused
    before = drv.fallbacks
    assert drv.preadv(700, [memoryview(small)]) == 100 and bytes(small) == data[700:800]
    assert drv.fallbacks == before + 1
    payload = os.urandom(512)
    page[1:513] = payload
    assert drv.pwritev(1024, [page[1:513]]) == 512
    tail = _aligned(4096)
    assert drv.preadv(SIZE - 512, [tail]) == 4096  # past EOF: zeroes, through the fallback
    assert tail[:512] == data[SIZE - 512:] and tail[512:] == bytes(3584)
    drv.flush()
    assert Path(image).read_bytes()[1024:1536] == payload
    drv.close()


def test_pool_keeps_several_requests_in_flight(image: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """aio=threads with cache=none: a batch runs concurrently; misaligned jobs are redone
    afterwards; results come back in order."""
    in_flight = [0, 0]  # now, most
    lock = threading.Lock()
    real = os.preadv

    def slow_preadv(fd: int, bufs: Any, off: int) -> int:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.005)  # a slow disk
        try:
            return real(fd, bufs, off)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(raw.os, "preadv", slow_preadv)
    data = Path(image).read_bytes()
    drv = _open(image, "none")
    drv.set_aio("threads")
    assert drv.pool is not None
    area = _aligned(33 * 4096)
    jobs: list[block.BatchJob] = [(False, 4096 * k, [area[4096 * k:4096 * (k + 1)]])
                                  for k in range(32)]
    jobs.append((False, 700, [area[32 * 4096:32 * 4096 + 512]]))  # misaligned offset
    jobs.append((False, SIZE, [area[:512]]))  # past EOF: zero-filled, not an error
    t0 = time.perf_counter()
    results = drv.run_batch(jobs)
    elapsed = time.perf_counter() - t0
    assert results[:33] == [4096] * 32 + [512] and results[33] == 512
    assert area[4096:32 * 4096] == data[4096:32 * 4096]
    assert area[32 * 4096:32 * 4096 + 512] == data[700:1212]
    assert in_flight[1] > 1 and elapsed < 32 * 0.005
    assert drv.fallbacks >= 1
    drv.close()


def test_pool_not_used_for_the_page_cache(image: str) -> None:
    drv = _open(image, "writeback")
    drv.set_aio("threads")
    assert drv.pool is None  # a memcpy is cheaper than a thread hand-off
    drv.close()


def test_pool_results_and_errors() -> None:
    pool = IOThreadPool(3)
    try:
        def job(x: int) -> int:
            if x == 5:
                raise OSError(5, "boom")
            return x * 2

        out = pool.run([(job, (i,)) for i in range(10)])
        assert out[:5] == [0, 2, 4, 6, 8] and isinstance(out[5], OSError)
        assert out[6:] == [12, 14, 16, 18]
        assert pool.run([]) == []
    finally:
        pool.shutdown()


def test_drive_cache_and_aio_options(image: str) -> None:
    def mode(**kw: str) -> str:
        return block.drive_cache_mode(_opts(file=image, **kw))

    assert mode() == "writeback" and mode(cache="none") == "none"
    assert mode(cache__direct="on") == "none"
    assert mode(cache="writethrough", cache__direct="on") == "directsync"
    assert mode(cache="none", cache__direct="off") == "writeback"
    assert mode(cache__no_flush="on") == "unsafe"
    with pytest.raises(OptionError) as exc:
        mode(cache="bogus")
    msg = str(exc.value)
    assert "cache=bogus" in msg and "writeback" in msg and "\n" not in msg
    b = block.drive_from_opts(_opts(file=image, format="raw", cache="none", aio="threads"), 0)
    assert isinstance(b.driver, RawDriver) and b.driver.direct and b.driver.pool is not None
    b.close()
    with pytest.raises(OptionError, match="aio=native: vfw supports only aio=threads"):
        block.drive_from_opts(_opts(file=image, format="raw", aio="native"), 0)


def test_no_o_direct_support_is_a_clear_error(image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without O_DIRECT (open says EINVAL): the message names cache= and what
    to use instead."""
    import errno

    from vfw.errors import BackendError

    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(raw.os, "open", no_direct)
    with pytest.raises(BackendError, match="cache=none needs O_DIRECT.*cache=writeback"):
        block.open_image(image, "raw", cache="none")
    drv = _open(image, "writethrough")  # no O_DIRECT needed
    drv.close()
