"""virtio-blk batches: QD 32 through the aio=threads pool (cache=none), flush ordering and
durability per cache mode, a bad chain in the middle of a batch."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_virtio_blk import T_FLUSH, T_IN, T_OUT, Blk
from virtio_driver import STATUS_NEEDS_RESET

from vfw.block import raw
from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")

SIZE = 1 << 20
HDR = struct.Struct("<IIQ")


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(SIZE))
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        need(False, "the temporary directory's file system has no O_DIRECT")
    return str(path)


def _queue(b: Blk, reqs: list[tuple[int, int, bytes | int]]) -> list[tuple[int, int, int]]:
    """Lay out (type, sector, payload bytes | read length) requests in guest RAM and make
    them available with one avail.idx update; returns (header, buffer, status) addresses."""
    g, q = b.guest, b.q
    out = []
    for rtype, sector, data in reqs:
        hdr, st = g.alloc(16), g.alloc(1)
        n = data if isinstance(data, int) else len(data)
        buf = g.alloc(max(n, 1) + 1, 4096) + 1  # odd guest address: O_DIRECT may refuse it
        g.write(hdr, HDR.pack(rtype, 0, sector))
        g.write(st, b"\xff")
        if rtype == T_OUT:
            assert isinstance(data, bytes)
            g.write(buf, data)
            q.add([(hdr, 16), (buf, n)], [(st, 1)])
        elif n:
            q.add([(hdr, 16)], [(buf, n), (st, 1)])
        else:
            q.add([(hdr, 16)], [(st, 1)])
        out.append((hdr, buf, st))
    q.publish()
    return out


@pytest.mark.parametrize("cache", ["writeback", "none", "directsync"])
def test_qd32_batch_reads_and_writes(image: str, cache: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """32 requests in one kick: all complete correctly, in one used-ring update; with
    O_DIRECT several are in flight at once (aio=threads)."""
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real = os.preadv

    def slow_preadv(fd: int, bufs: Any, off: int) -> int:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.002)
        try:
            return real(fd, bufs, off)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(raw.os, "preadv", slow_preadv)
    b = Blk(image, drive_opts=f",cache={cache}")
    before = Path(image).read_bytes()
    writes = {64 + 16 * k: os.urandom(4096) for k in range(16)}
    reqs: list[tuple[int, int, bytes | int]] = []
    for k, (sector, data) in enumerate(writes.items()):
        reqs.append((T_OUT, sector, data))
        reqs.append((T_IN, 1024 + 8 * k, 4096))
    addrs = _queue(b, reqs)
    b.q.kick()
    used = b.q.get_used()
    assert len(used) == 32 and not b.drv.status & STATUS_NEEDS_RESET
    g = b.guest
    for (rtype, sector, _data), (_hdr, buf, st), u in zip(reqs, addrs, used, strict=True):
        assert g.read(st, 1) == b"\0"
        if rtype == T_IN:
            assert u.length == 4097 and g.read(buf, 4096) == before[512 * sector:][:4096]
    after = Path(image).read_bytes()
    for sector, data in writes.items():
        assert after[512 * sector:512 * sector + 4096] == data
    assert (most[0] > 1) == (cache != "writeback")


@pytest.mark.parametrize("cache,syncs", [("writeback", 1), ("none", 1), ("writethrough", 1),
                                         ("unsafe", 0)])
def test_flush_follows_queued_writes_and_precedes_status(
        image: str, cache: str, syncs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLUSH behind 8 writes in the same batch: fsync runs after all of them reached the file
    and before the flush's status byte is written (cache=unsafe: no fsync at all)."""
    b = Blk(image, drive_opts=f",cache={cache}")
    writes = [(256 + 8 * k, os.urandom(4096)) for k in range(8)]
    reqs: list[tuple[int, int, bytes | int]] = [(T_OUT, s, d) for s, d in writes]
    reqs.append((T_FLUSH, 0, 0))
    seen: list[tuple[bool, bytes]] = []
    real_fsync = os.fsync
    flush_status: list[int] = []

    def checking_fsync(fd: int) -> None:
        content = Path(image).read_bytes()
        seen.append((all(content[512 * s:512 * s + 4096] == d for s, d in writes),
                     b.guest.read(flush_status[0], 1)))
        real_fsync(fd)

    monkeypatch.setattr(raw.os, "fsync", checking_fsync)
    addrs = _queue(b, reqs)
    flush_status.append(addrs[-1][2])
    b.q.kick()
    assert len(b.q.get_used()) == 9
    assert b.guest.read(addrs[-1][2], 1) == b"\0"
    assert seen == [(True, b"\xff")] * syncs


def test_bad_chain_mid_batch_completes_the_good_ones(image: str) -> None:
    b = Blk(image, drive_opts=",cache=none")
    addrs = _queue(b, [(T_IN, 0, 512)])
    q = b.q
    head = q.free.pop()
    q.write_desc(head, addrs[0][0], 16, 1, head)  # a descriptor that chains to itself
    q.put_avail(head)
    q.publish()
    q.kick()
    assert b.drv.status & STATUS_NEEDS_RESET
    used = q.get_used()
    assert [u.length for u in used] == [513] and b.guest.read(addrs[0][2], 1) == b"\0"
    b.start()
    assert b.request(T_IN, 0, in_len=512)[0] == 0
