"""The split-ring walker against well-formed chains and against arbitrary guest garbage."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfw.memory import AddressSpace, MemoryRegion
from vfw_dev_virtio.virtqueue import (
    VirtQueue,
    VirtqueueError,
    vring_need_event,
)

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
MANY = settings(max_examples=10_000 if CI else 300, deadline=None,
                suppress_health_check=list(HealthCheck))

RAM_SIZE = 0x10000
MMIO_BASE = 0x10000
SIZE = 8
DESC, AVAIL, USED = 0x0, 0x100, 0x200


def _space() -> tuple[AddressSpace, MemoryRegion]:
    root = MemoryRegion.container("root", 1 << 32)
    ram = MemoryRegion.ram("ram", RAM_SIZE)
    root.add_subregion(0, ram)
    root.add_subregion(MMIO_BASE, MemoryRegion.io("mmio", 0x1000, lambda o, s: 0,
                                                  lambda o, v, s: None))
    return AddressSpace("test", root), ram


SPACE, RAM = _space()


def _fresh(size: int = SIZE, *, indirect: bool = True, event_idx: bool = False) -> VirtQueue:
    RAM.view[:0x1000] = bytes(0x1000)
    q = VirtQueue(0, size)
    q.desc_addr, q.avail_addr, q.used_addr = DESC, AVAIL, USED
    assert q.enable(SPACE, event_idx=event_idx, indirect=indirect) is None
    return q


def _desc(i: int, addr: int, length: int, flags: int, nxt: int, table: int = DESC) -> None:
    struct.pack_into("<QIHH", RAM.view, table + 16 * i, addr, length, flags, nxt)


def _avail(heads: list[int], idx: int | None = None) -> None:
    for k, h in enumerate(heads):
        struct.pack_into("<H", RAM.view, AVAIL + 4 + 2 * (k % SIZE), h)
    struct.pack_into("<H", RAM.view, AVAIL + 2, len(heads) if idx is None else idx)


def test_simple_chain_out_then_in() -> None:
    q = _fresh()
    _desc(0, 0x1000, 16, 1, 3)
    _desc(3, 0x2000, 100, 2 | 1, 5)
    _desc(5, 0x3000, 1, 2, 0)
    _avail([0])
    e = q.pop()
    assert e is not None and e.head == 0
    assert e.out_len == 16 and e.in_len == 101 and len(e.in_) == 2
    assert q.pop() is None
    q.push(0, 101)
    assert struct.unpack_from("<HHII", RAM.view, USED) == (0, 1, 0, 101)


def test_indirect_table() -> None:
    q = _fresh()
    _desc(0, 0x800, 32, 4, 0)
    _desc(0, 0x1000, 16, 1, 1, table=0x800)
    _desc(1, 0x2000, 8, 2, 0, table=0x800)
    _avail([0])
    e = q.pop()
    assert e is not None and e.out_len == 16 and e.in_len == 8


@pytest.mark.parametrize("case", ["loop", "next-oob", "nested-indirect", "indirect-len",
                                  "outside-ram", "mmio", "order", "head-oob", "avail-jump",
                                  "indirect-not-negotiated", "overflow"])
def test_hostile_chains_raise(case: str) -> None:
    q = _fresh(indirect=case != "indirect-not-negotiated")
    if case == "loop":
        _desc(0, 0x1000, 1, 1, 1)
        _desc(1, 0x1000, 1, 1, 0)
    elif case == "next-oob":
        _desc(0, 0x1000, 1, 1, SIZE)
    elif case == "nested-indirect":
        _desc(0, 0x800, 16, 4, 0)
        _desc(0, 0x900, 16, 4, 0, table=0x800)
    elif case == "indirect-len":
        _desc(0, 0x800, 17, 4, 0)
    elif case == "outside-ram":
        _desc(0, RAM_SIZE - 4, 8, 0, 0)
    elif case == "mmio":
        _desc(0, MMIO_BASE, 8, 0, 0)
    elif case == "order":
        _desc(0, 0x1000, 8, 2 | 1, 1)
        _desc(1, 0x1000, 8, 0, 0)
    elif case == "head-oob":
        _avail([SIZE + 3])
    elif case == "avail-jump":
        _avail([0], idx=SIZE + 1)
    elif case == "indirect-not-negotiated":
        _desc(0, 0x800, 16, 4, 0)
    elif case == "overflow":
        _desc(0, (1 << 64) - 8, 16, 0, 0)
    if case not in ("head-oob", "avail-jump"):
        _avail([0])
    with pytest.raises(VirtqueueError):
        q.pop()


@pytest.mark.parametrize("field,value", [("size", 0), ("size", 3), ("size", 16),
                                         ("desc_addr", 8), ("used_addr", 2),
                                         ("desc_addr", RAM_SIZE - 16),
                                         ("avail_addr", MMIO_BASE)])
def test_enable_refuses_bad_rings(field: str, value: int) -> None:
    q = VirtQueue(0, SIZE)
    q.desc_addr, q.avail_addr, q.used_addr = DESC, AVAIL, USED
    setattr(q, field, value)
    assert q.enable(SPACE, event_idx=False, indirect=False) is not None
    assert not q.ready


def test_event_idx_suppression() -> None:
    q = _fresh(event_idx=True)
    _desc(0, 0x1000, 4, 0, 0)
    _avail([0, 0, 0])
    for _ in range(3):
        e = q.pop()
        assert e is not None
        q.push(e.head, 0)
    # avail_event written after each pop
    assert struct.unpack_from("<H", RAM.view, USED + 4 + 8 * SIZE)[0] == 3
    struct.pack_into("<H", RAM.view, AVAIL + 4 + 2 * SIZE, 10)  # used_event far ahead
    assert q.should_notify()  # first notification always goes
    q.push(0, 0)
    assert not q.should_notify()
    assert vring_need_event(0, 1, 0) and not vring_need_event(5, 3, 2)


# --- property tests ------------------------------------------------------------------------

def _fold(raw: bytes, slots: int) -> list[tuple[int, int, int, int]]:
    """Random descriptor bytes, half of them folded near guest RAM so chains get long."""
    out = []
    for i in range(slots):
        a, n, f, nx = struct.unpack_from("<QIHH", raw, 16 * i)
        if not a >> 63:
            a, n, f, nx = a % (RAM_SIZE + 0x200), n % 0x300, f & 7, nx % (SIZE + 2)
        out.append((a, n, f, nx))
    return out


@MANY
@given(table=st.binary(min_size=16 * SIZE, max_size=16 * SIZE),
       indirect=st.binary(min_size=0, max_size=16 * 8),
       heads=st.binary(min_size=2, max_size=2 * SIZE),
       avail_idx=st.integers(0, 0xFFFF), negotiated=st.booleans())
def test_walker_never_crashes_on_garbage(table: Any, indirect: Any, heads: Any, avail_idx: Any, negotiated: Any) -> None:
    """Any ring content: pop returns chains inside guest RAM or raises VirtqueueError."""
    q = _fresh(indirect=negotiated, event_idx=negotiated)
    for i, (a, n, f, nx) in enumerate(_fold(table, SIZE)):
        _desc(i, a, n, f, nx)
    for i, (a, n, f, nx) in enumerate(_fold(indirect, len(indirect) // 16)):
        _desc(i, a, n, f, nx, table=0x800)
    ring = [h % (SIZE + 1) if h & 0x8000 == 0 else h
            for h in struct.unpack(f"<{len(heads) // 2}H", heads[:len(heads) // 2 * 2])]
    _avail(ring, idx=avail_idx if avail_idx & 1 else len(ring))
    popped = 0
    try:
        while True:
            e = q.pop()
            if e is None:
                break
            popped += 1
            assert popped <= SIZE
            assert len(e.out) + len(e.in_) <= 1024
            assert e.out_len + e.in_len <= 1 << 32
            for v in e.out + e.in_:
                assert v.obj is not None  # a view of guest RAM, never a copy
            q.push(e.head, e.in_len)
    except VirtqueueError:
        pass


def _reference(table: list[tuple[int, int, int, int]], head: int) -> tuple[int, int] | None:
    """(out_len, in_len) a correct walker must find for a direct chain, None if invalid."""
    seen = 0
    i = head
    out_len = in_len = 0
    seen_in = False
    while True:
        seen += 1
        if seen > SIZE:
            return None
        a, n, f, nx = table[i]
        if f & 4:
            return None
        if n and (a + n > RAM_SIZE):
            return None
        if f & 2:
            in_len += n
            seen_in = True
        else:
            if seen_in:
                return None
            out_len += n
        if not f & 1:
            return out_len, in_len
        if nx >= SIZE:
            return None
        i = nx


@settings(max_examples=2_000 if CI else 200, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(raw=st.binary(min_size=8 * SIZE, max_size=8 * SIZE), head=st.integers(0, SIZE - 1))
def test_walker_matches_reference(raw: Any, head: Any) -> None:
    """Chains of in-RAM buffers: exactly the lengths a straightforward walker finds."""
    table = [(0x1000 + 0x10 * a, n * 8, f & 3, nx % (SIZE + 1))
             for a, n, f, nx in struct.iter_unpack("<HHHH", raw)]
    table = [(min(a, RAM_SIZE), n, f, nx) for a, n, f, nx in table]
    q = _fresh()
    for i, d in enumerate(table):
        _desc(i, *d)
    _avail([head])
    expected = _reference(table, head)
    try:
        e = q.pop()
    except VirtqueueError:
        assert expected is None
        return
    assert e is not None and expected == (e.out_len, e.in_len)
