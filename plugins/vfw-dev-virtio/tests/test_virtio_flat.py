"""The flat fast paths (VirtQueue.pop_batch_flat's three-descriptor chains and virtio-blk's
inline requests, pop_batch_single's one-descriptor chains) against the general walk: for
any descriptors, the same chains, views, errors, status bytes, used lengths, guest memory
and disk contents."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfw.memory import AddressSpace, MemoryRegion
from vfw_dev_virtio.virtqueue import VirtQueue, VirtqueueError, flat3_chain

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
MANY = settings(max_examples=10_000 if CI else 300, deadline=None,
                suppress_health_check=list(HealthCheck))

#: MMIO below RAM (a buffer just below RAM's start is outside it), ROM right after it (a
#: buffer across RAM's end spans two sections; a writable one in ROM is refused), a second
#: RAM section further up.
RAM_BASE, RAM_SIZE = 0x10000, 0x10000
RAM_END = RAM_BASE + RAM_SIZE
ROM_BASE, ROM_SIZE = RAM_END, 0x1000
RAM2_BASE, RAM2_SIZE = 0x30000, 0x1000
SIZE = 16
DESC, AVAIL, USED = RAM_BASE, RAM_BASE + 0x200, RAM_BASE + 0x300


def _space() -> tuple[AddressSpace, MemoryRegion]:
    root = MemoryRegion.container("root", 1 << 32)
    root.add_subregion(0, MemoryRegion.io("mmio", RAM_BASE, lambda o, s: 0,
                                          lambda o, v, s: None))
    ram = MemoryRegion.ram("ram", RAM_SIZE)
    root.add_subregion(RAM_BASE, ram)
    rom = MemoryRegion.rom("rom", ROM_SIZE)
    root.add_subregion(ROM_BASE, rom)
    root.add_subregion(RAM2_BASE, MemoryRegion.ram("ram2", RAM2_SIZE))
    rom.view[:] = os.urandom(ROM_SIZE)
    return AddressSpace("test", root), ram


SPACE, RAM = _space()
RAM.view[0x1000:] = os.urandom(RAM_SIZE - 0x1000)

ADDRS = st.one_of(
    st.integers(RAM_BASE + 0x1000, RAM_END - 1),            # inside RAM
    st.integers(RAM_END - 0x20, RAM_END + 0x20),            # across its end, into ROM
    st.integers(RAM_BASE - 0x20, RAM_BASE + 0x20),          # across its start
    st.integers(ROM_BASE, ROM_BASE + ROM_SIZE),             # ROM
    st.integers(RAM2_BASE - 0x10, RAM2_BASE + RAM2_SIZE),   # the other RAM section
    st.integers((1 << 64) - 0x20, (1 << 64) - 1),           # wraps
    st.integers(0, (1 << 64) - 1))
LENGTHS = st.one_of(st.sampled_from([0, 1, 2, 15, 16, 17, 511, 512, 4096, 0xFFFFFFFF]),
                    st.integers(0, 0x2000))
FLAGS = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 9, 0x8001, 0x8002]),
                  st.integers(0, 0xFFFF))
FIELDS = (ADDRS, LENGTHS, FLAGS, st.integers(0, 0xFFFF))
#: The layouts of a valid flat chain: read (header | data, status), write (header, data |
#: status); ROM_READ is a one-descriptor readable chain in ROM (the walker's section cache
#: moves to the ROM, where a flat chain's writable buffers must be refused).
READ, WRITE, ROM_READ = 3, 1, 0
#: Where the template puts a chain's buffers: low in RAM, at the very end of RAM (one byte
#: more is outside), in ROM.
LOW, END, IN_ROM = 0, 1, 2


def _template(i: int, layout: int, len0: int, len2: int, l1: int,
              where: int) -> list[list[int]]:
    if layout == ROM_READ:
        return [[ROM_BASE + 0x10, l1 & 0x3FF or 1, 0, 0]]
    if where == END:
        a2 = RAM_END - len2
        a1 = a2 - l1
        a0 = a1 - len0
    else:
        a0, a1, a2 = (ROM_BASE, ROM_BASE + 0x10, ROM_BASE + 0x10 + (l1 & 0x3FF)) \
            if where == IN_ROM else (RAM_BASE + 0x1000, RAM_BASE + 0x2000, RAM_BASE + 0x1800)
        l1 = l1 & 0x3FF or 1 if where == IN_ROM else l1
    return [[a0, len0, 1, i + 1], [a1, l1, layout, i + 2], [a2, len2, 2, 0]]


MUTATION = st.tuples(st.integers(0, 2), st.integers(0, 3))  # (descriptor, field)


def _queue(size: int) -> VirtQueue:
    q = VirtQueue(0, size)
    q.desc_addr, q.avail_addr, q.used_addr = DESC, AVAIL, USED
    assert q.enable(SPACE, event_idx=False, indirect=True) is None
    assert q._section is not None and q._section[1] == RAM_BASE  # primed by enable
    return q


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


def _addr(v: memoryview) -> int:
    """The host address of a view's first byte (read-only views too)."""
    b = _PyBuffer()
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(v), ctypes.byref(b), 0)
    try:
        return int(b.buf or 0)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(b))


def _norm(chain: Any, len0: int, len2: int) -> Any:
    if len(chain) == 7:
        chain = flat3_chain(chain, len0, len2)
    elif len(chain) == 4:  # Flat1: direction from the test's request (len0: 1 = write)
        head, view, off, n = chain
        v = view[off:off + n]
        chain = (head, [], [v], 0, n) if len0 else (head, [v], [], n, 0)
    head, out, in_, out_len, in_len = chain
    return (head, [(_addr(v), len(v)) for v in out], [(_addr(v), len(v)) for v in in_],
            out_len, in_len)


def _drain(q: VirtQueue, flat: tuple[int, int] | None, single: int = -1) -> list[Any]:
    got: list[Any] = []
    for _ in range(4):
        try:
            if single >= 0:
                chains = q.pop_batch_single(64, bool(single))
                flat = (single, 0)
            else:
                chains = q.pop_batch_flat(64, *flat) if flat else q.pop_batch(64)
        except VirtqueueError:
            got.append("error")
            break
        got.append([_norm(c, *(flat or (1, 1))) for c in chains])
    return got


@MANY
@given(chains=st.lists(st.tuples(st.sampled_from([READ, WRITE, READ, WRITE, ROM_READ]),
                                 st.integers(1, 0x800),
                                 st.sampled_from([LOW, LOW, END, END, IN_ROM]),
                                 st.one_of(st.just([]), st.lists(MUTATION, max_size=2))),
                       min_size=1, max_size=5),
       data=st.data(), heads=st.lists(st.integers(0, 7), min_size=1, max_size=6),
       lens=st.sampled_from([(16, 1), (1, 1), (2, 3)]), size=st.sampled_from([SIZE, 4, 2]))
def test_flat_pop_matches_general_walk(chains: Any, data: Any, heads: Any,
                                       lens: tuple[int, int], size: int) -> None:
    """Valid flat chains (consecutive, exact flags and lengths, in RAM) with up to two
    fields of any descriptor set to anything: pop_batch_flat returns what pop_batch returns
    (the same buffers at the same host addresses, the same errors), so the flat path skips
    no check."""
    RAM.view[:0x1000] = bytes(0x1000)
    starts: list[int] = []
    base = data.draw(st.sampled_from([0, 0, 0, 1, size - 3, size - 2, size - 1]))
    for j, (layout, l1, where, mutations) in enumerate(chains):
        i = (base + 3 * j) % size
        starts.append(i)
        descs = _template(i, layout, *lens, l1, where)
        for d, field in mutations:
            descs[d % len(descs)][field] = data.draw(FIELDS[field])
        for k, (a, n, f, nx) in enumerate(descs):
            struct.pack_into("<QIHH", RAM.view, DESC - RAM_BASE + 16 * ((i + k) % size),
                             a, n, f, nx)
    ring = [starts[h % len(starts)] if h < 6 else data.draw(st.integers(0, 0xFFFF))
            for h in heads]
    for k, h in enumerate(ring):
        struct.pack_into("<H", RAM.view, AVAIL - RAM_BASE + 4 + 2 * k, h)
    struct.pack_into("<H", RAM.view, AVAIL - RAM_BASE + 2, len(ring))
    general = _drain(_queue(size), None)
    flat = _drain(_queue(size), lens)
    assert flat == general


#: Field values for the exhaustive single-field test (addresses, lengths, flags, next).
BAD_VALUES = (
    (RAM_BASE - 1, RAM_BASE - 16, RAM_END - 1, RAM_END, ROM_BASE + 8, RAM2_BASE, 0,
     (1 << 64) - 1, (1 << 64) - 16),
    (0, 1, 2, 15, 17, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF),
    (0, 1, 2, 3, 4, 5, 6, 7, 9, 0x8001, 0x8002, 0x8003),
    (0, 1, 2, 3, 4, 5, 6, SIZE - 1, SIZE, 0xFFFF))


@pytest.mark.parametrize("layout", [READ, WRITE])
@pytest.mark.parametrize("where", [LOW, END])
def test_flat_pop_any_one_field_changed(layout: int, where: int) -> None:
    """Every field of every descriptor of a flat chain set to each of many values (one at a
    time): pop_batch_flat agrees with pop_batch. Also behind a readable chain in ROM (the
    section cache moves to the ROM, which a writable buffer must not be in)."""
    for d in range(3):
        for field, values in enumerate(BAD_VALUES):
            for value in values:
                for rom_first in (False, True):
                    RAM.view[:0x1000] = bytes(0x1000)
                    descs = _template(3, layout, 16, 1, 0x100, where)
                    descs[d][field] = value
                    if rom_first:
                        struct.pack_into("<QIHH", RAM.view, 0, ROM_BASE, 0x100, 0, 0)
                        descs = [[ROM_BASE + 0x100 * k, n, f, nx]
                                 for k, (_a, n, f, nx) in enumerate(descs)] \
                            if field != 0 else descs
                    for k, desc in enumerate(descs):
                        struct.pack_into("<QIHH", RAM.view, 16 * (3 + k), *desc)
                    struct.pack_into("<3H", RAM.view, 0x202, 2 if rom_first else 1,
                                     *((0, 3) if rom_first else (3, 0)))
                    got = _drain(_queue(SIZE), (16, 1))
                    assert got == _drain(_queue(SIZE), None), (d, field, value, rom_first)
                    assert got == _walked(_queue(SIZE), [0, 3] if rom_first else [3]), \
                        (d, field, value, rom_first)


def _walked(q: VirtQueue, heads: list[int]) -> list[Any]:
    """What _drain returns, from the plain one-chain walker (VirtQueue._walk, not inlined)."""
    good: list[Any] = []
    for h in heads:
        try:
            e = q._walk(h)
        except VirtqueueError:
            return [good, "error"] if good else ["error"]
        good.append(_norm((e.head, e.out, e.in_, e.out_len, e.in_len), 1, 1))
    return [good, [], [], []]


@pytest.mark.parametrize("write", [0, 1])
def test_single_pop_any_one_field_changed(write: int) -> None:
    """A one-descriptor chain (a frame, an rx buffer) with each field set to each of many
    values, alone and behind a readable chain in ROM: pop_batch_single agrees with
    pop_batch (same buffers at the same host addresses, same errors)."""
    for field, values in enumerate(BAD_VALUES):
        for value in values:
            for rom_first in (False, True):
                RAM.view[:0x1000] = bytes(0x1000)
                desc = [ROM_BASE + 0x40 if rom_first else RAM_END - 0x600, 0x600 if not
                        rom_first else 0x100, 2 if write else 0, 0]
                desc[field] = value
                struct.pack_into("<QIHH", RAM.view, 0, ROM_BASE, 0x100, 0, 0)
                struct.pack_into("<QIHH", RAM.view, 16 * 3, *desc)
                struct.pack_into("<3H", RAM.view, 0x202, 2 if rom_first else 1,
                                 *((0, 3) if rom_first else (3, 0)))
                got = _drain(_queue(SIZE), None, write)
                assert got == _drain(_queue(SIZE), None), (field, value, rom_first)
                assert got == _walked(_queue(SIZE), [0, 3] if rom_first else [3]), \
                    (field, value, rom_first)
    # and the fast path is taken at all
    RAM.view[:0x1000] = bytes(0x1000)
    struct.pack_into("<QIHH", RAM.view, 0, RAM_BASE + 0x1000, 100, 2 if write else 0, 0)
    struct.pack_into("<2H", RAM.view, 0x202, 1, 0)
    assert [len(c) for c in _queue(SIZE).pop_batch_single(8, bool(write))] == [4]


def test_flat_pop_returns_flat_tuples_for_the_common_layout() -> None:
    """The fast path is taken at all (else the property above proves nothing)."""
    RAM.view[:0x1000] = bytes(0x1000)
    for h, w in ((0, 3), (3, 1)):
        for k, d in enumerate(_template(h, w, 16, 1, 4096, LOW)):
            struct.pack_into("<QIHH", RAM.view, 16 * (h + k), *d)
    struct.pack_into("<3H", RAM.view, 0x202, 2, 0, 3)
    q = _queue(SIZE)
    chains = q.pop_batch_flat(8, 16, 1)
    assert [len(c) for c in chains] == [7, 7]
    assert [_norm(c, 16, 1)[3:] for c in chains] == [(16, 4097), (4112, 1)]


def test_flat_pop_bounds_the_chain_bytes() -> None:
    """A flat chain over 4 GiB in all is refused like by the general walk (RAM this large
    is faked: the walker's cached section claims 16 GiB; the check comes before any view)."""
    RAM.view[:0x1000] = bytes(0x1000)
    big = (1 << 32) - 16  # with 16 + 1 more bytes: just over MAX_CHAIN_BYTES
    for k, d in enumerate(_template(0, READ, 16, 1, big, LOW)):
        struct.pack_into("<QIHH", RAM.view, 16 * k, *d)
    struct.pack_into("<2H", RAM.view, 0x202, 1, 0)
    for flat in (False, True):
        q = _queue(SIZE)
        assert q._section is not None
        gen, start, _end, view = q._section
        q._section = (gen, start, start + (1 << 34), view)
        with pytest.raises(VirtqueueError, match="4 GiB"):
            q.pop_batch_flat(8, 16, 1) if flat else q.pop_batch(8)


class _Racing:
    """Stands in for the descriptor struct: a guest rewriting a descriptor between two reads
    of it (successive reads at the same offset return the scripted values in turn)."""

    def __init__(self, script: dict[int, list[tuple[int, int, int, int]]]):
        import vfw_dev_virtio.virtqueue as vq

        self.real = vq._DESC
        self.script = script
        self.size = self.real.size

    def unpack_from(self, buf: Any, off: int = 0) -> Any:
        todo = self.script.get(off)
        return todo.pop(0) if todo else self.real.unpack_from(buf, off)


@pytest.mark.parametrize("size,reads", [
    # a two-descriptor queue cannot hold a three-descriptor chain: 0 -> 1 -> 0 again
    (2, {0: [(RAM_BASE + 0x1000, 16, 1, 1), (RAM_BASE + 0x1800, 1, 2, 0)],
         16: [(RAM_BASE + 0x2000, 0x100, 3, 0)]}),
    # a descriptor that is its own next, rewritten between the reads
    (4, {0: [(RAM_BASE + 0x1000, 16, 1, 0), (RAM_BASE + 0x2000, 0x100, 3, 0)]}),
])
def test_unrolled_walk_refuses_a_rewritten_loop(monkeypatch: pytest.MonkeyPatch, size: int,
                                                reads: Any) -> None:
    """The unrolled two/three-descriptor walk reads three distinct descriptors or leaves the
    chain to the general walk (which counts what it visits), also when the guest rewrites
    a descriptor between reads so that its flags never show the loop."""
    import vfw_dev_virtio.virtqueue as vq

    RAM.view[:0x1000] = bytes(0x1000)
    struct.pack_into("<2H", RAM.view, 0x202, 1, 0)
    q = _queue(size)
    monkeypatch.setattr(vq, "_DESC", _Racing(reads))
    try:
        chains = q.pop_batch(8)
    except VirtqueueError:
        return
    # what the general walk made of the rewritten descriptors: never more than size
    assert all(len(c[1]) + len(c[2]) <= size for c in chains), chains


# --- virtio-blk: the inline fast path against the general path ------------------------------

pytestmark = pytest.mark.requires("vfw-board-pc")

IMAGE_SIZE = 64 * 1024
CAP = IMAGE_SIZE // 512


@pytest.fixture(scope="module")
def blk(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from test_virtio_blk import Blk

    path = Path(tmp_path_factory.mktemp("flat")) / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return Blk(str(path), dev_opts=",queue-size=64")


#: A valid read or write (type, sector, header length, data length, status length, data
#: flags, data in RAM), then up to two fields set to anything.
REQ_FIELDS = (
    st.sampled_from([0, 1, 4, 8, 2, 0x80000000]),
    st.one_of(st.integers(CAP - 20, CAP + 2), st.sampled_from([1 << 60, (1 << 64) - 1])),
    st.sampled_from([0, 1, 15, 17, 32]),
    st.one_of(st.sampled_from([0, 1, 20, 511, 513, 8192]), st.integers(0, 8192)),
    st.sampled_from([0, 2, 3]),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0x8003]),
    st.just(False))
REQ = st.tuples(st.booleans(), st.integers(0, CAP - 16), st.integers(1, 16),
                st.lists(st.one_of(*[st.tuples(st.just(i), s)
                                     for i, s in enumerate(REQ_FIELDS)]), max_size=2))


def _request(req: Any) -> tuple[int, int, int, int, int, int, bool]:
    write, sector, blocks, mutations = req
    fields: list[Any] = [int(write), sector, 16, 512 * blocks, 1, 1 if write else 3, True]
    for i, value in mutations:
        fields[i] = value
    return tuple(fields)  # type: ignore[return-value]


def _run(b: Any, reqs: Any) -> Any:
    b.start()
    g, q = b.guest, b.q
    first = g.next
    for k, (rtype, sector, hlen, dlen, slen, dflags, in_ram) in enumerate(reqs):
        hdr = g.alloc(32)
        st_ = g.alloc(4)
        buf = g.alloc(8192, 512)
        g.write(hdr, struct.pack("<IIQ", rtype, 0, sector) + bytes(16))
        g.write(st_, b"\xff\xff\xff\xff")
        g.write(buf, bytes([k + 1]) * 8192)
        daddr = buf if in_ram else g.ram_end - 256  # across the end of RAM
        q.write_desc(3 * k, hdr, hlen, 1, 3 * k + 1)
        q.write_desc(3 * k + 1, daddr, dlen, dflags, 3 * k + 2)
        q.write_desc(3 * k + 2, st_, slen, 2, 0)
        q.put_avail(3 * k)
    q.publish()
    q.kick()
    return (q.reap(), bytes(g.ram[first - g.ram_start:g.next - g.ram_start]),
            b.drv.status & 0x40, Path(b.path).read_bytes())


@MANY
@given(reqs=st.lists(REQ, min_size=1, max_size=8))
def test_blk_inline_requests_match_general_path(blk: Any, reqs: Any) -> None:
    """Any batch of three-descriptor requests: the inline path (plain descriptor, flat
    chains) leaves the same status bytes, used lengths, guest memory, device status and
    image contents as the general path."""
    drv = blk.dev.vdev.backend.driver
    image = Path(blk.path).read_bytes()
    reqs = [_request(r) for r in reqs]
    fast = _run(blk, reqs)
    os.pwrite(drv.fd, image, 0)
    fd, drv.plain_fd = drv.plain_fd, -1  # the general path only
    try:
        general = _run(blk, reqs)
    finally:
        drv.plain_fd = fd
    assert fast == general


def test_blk_inline_path_is_taken(blk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain read and write come as flat tuples and run inline (else the property above
    compares the general path with itself)."""
    from vfw_dev_virtio import blk as blk_mod

    shapes: list[int] = []
    real_pop = VirtQueue.pop_batch_flat

    def pop(q: VirtQueue, *a: Any) -> Any:
        chains = real_pop(q, *a)
        shapes.extend(len(c) for c in chains)
        return chains

    monkeypatch.setattr(VirtQueue, "pop_batch_flat", pop)
    fallbacks: list[int] = []
    real = blk_mod.flat3_chain
    monkeypatch.setattr(blk_mod, "flat3_chain", lambda *a: fallbacks.append(1) or real(*a))
    reap, *_ = _run(blk, [_request((False, 3, 8, [])), _request((True, 4, 1, []))])
    assert [n for _h, n in reap] == [4097, 1]
    assert shapes == [7, 7] and not fallbacks


@given(st.integers(0, 0xFFFF), st.lists(st.integers(0, SIZE - 1), max_size=SIZE))
@settings(max_examples=2000 if CI else 200, deadline=None)
def test_push_batch_heads_writes_what_push_batch_writes_with_zero_lengths(start, heads):
    # Same used ring (elements, wrap, used.idx) from the heads-only form as from the pairs.
    used = USED - RAM_BASE
    size_used = 4 + 8 * SIZE
    results = []
    for form in ("pairs", "heads"):
        q = _queue(SIZE)
        q.used_idx = start
        RAM.view[used:used + size_used] = bytes(size_used)
        if form == "pairs":
            q.push_batch([(h, 0) for h in heads])
        else:
            q.push_batch_heads(list(heads))
        results.append((q.used_idx, bytes(RAM.view[used:used + size_used])))
    assert results[0] == results[1]
    assert results[1][0] == (start + len(heads)) & 0xFFFF
