"""Split virtqueues (virtio 1.x section 2.7): a walker that trusts nothing the guest wrote.

The ring areas are checked once, when the driver enables the queue: each must lie inside one
guest RAM section, sized for the queue and aligned as the spec requires; the walker then keeps
zero-copy views of them. Every descriptor is read exactly once into local integers (a guest
rewriting it concurrently cannot change what we validated), chains are bounded by the queue
size (indirect tables by their own length), nested indirect tables, out-of-order directions,
over-long chains and buffers outside guest RAM are refused. Anything that breaks the ring
protocol raises :class:`VirtqueueError`; the transport then marks the device
DEVICE_NEEDS_RESET and stops touching the queue (QEMU's virtio_error).

Buffers come back as memoryviews of guest RAM (``AddressSpace.ram_views``), ready for
``os.preadv``/``os.pwritev`` without a copy. The common layouts have flat forms that skip
making views and lists (``pop_batch_flat``: three consecutive descriptors, a block request;
``pop_batch_single``: one descriptor, a network frame or rx buffer): the same checks, done
on the values read once, with anything unusual left to the general walk.
"""

from __future__ import annotations

import struct
from itertools import chain as _itertools_chain
from typing import TYPE_CHECKING, Any

from vfw.errors import GuestMemoryError

if TYPE_CHECKING:
    from vfw.memory import AddressSpace

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16
#: The largest queue and the longest indirect table a device accepts (QEMU's VIRTQUEUE_MAX_SIZE).
VIRTQUEUE_MAX_SIZE = 1024
#: The most bytes one chain may describe.
MAX_CHAIN_BYTES = 1 << 32

_DESC = struct.Struct("<QIHH")
#: Three consecutive descriptors, flags and next of each as one u32 (the third's next skipped).
_DESC3 = struct.Struct("<QIIQIIQIH2x")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


_flatten = _itertools_chain.from_iterable
_U16S: dict[int, struct.Struct] = {}
_USED_ELEMS: dict[int, struct.Struct] = {}


def _u16s(n: int) -> struct.Struct:
    """``n`` u16s (a run of avail-ring heads), compiled once per length."""
    s = _U16S.get(n)
    if s is None:
        s = _U16S[n] = struct.Struct(f"<{n}H")
    return s


def _used_elems(n: int) -> struct.Struct:
    """``n`` used-ring elements (id, len), compiled once per length."""
    s = _USED_ELEMS.get(n)
    if s is None:
        s = _USED_ELEMS[n] = struct.Struct(f"<{2 * n}I")
    return s


def _used_zero(n: int) -> struct.Struct:
    """``n`` used-ring elements with len 0, each written as one u64 (id | 0 << 32): the heads
    pack straight in, no (id, len) pairs."""
    s = _USED_ZERO.get(n)
    if s is None:
        s = _USED_ZERO[n] = struct.Struct(f"<{n}Q")
    return s


_USED_ZERO: dict[int, struct.Struct] = {}


class VirtqueueError(Exception):
    """The driver broke the ring protocol; the device must go to DEVICE_NEEDS_RESET."""


class Element:
    """One popped request: the head index and its device-readable (``out``) and
    device-writable (``in_``) buffers as views of guest RAM. A plain slotted class: one is
    made per request, so construction must be cheap."""

    __slots__ = ("head", "out", "in_", "out_len", "in_len")

    def __init__(self, head: int, out: list[memoryview] | None = None,
                 in_: list[memoryview] | None = None, out_len: int = 0, in_len: int = 0):
        self.head = head
        self.out: list[memoryview] = [] if out is None else out
        self.in_: list[memoryview] = [] if in_ is None else in_
        self.out_len = out_len
        self.in_len = in_len

    def __repr__(self) -> str:
        return (f"Element(head={self.head}, out_len={self.out_len}, in_len={self.in_len}, "
                f"out={len(self.out)} views, in={len(self.in_)} views)")


#: A popped chain as :meth:`VirtQueue.pop_batch` returns it: (head, out, in_, out_len, in_len).
Chain = tuple[int, list[memoryview], list[memoryview], int, int]
#: A checked three-descriptor chain as :meth:`VirtQueue.pop_batch_flat` may return it:
#: (head, RAM section view, off0, off1, len1, off2, non-zero if buffer 1 is WRITE). Buffer
#: 0 (len0 bytes) is readable, buffer 2 (len2 bytes) writable, all three non-empty and
#: inside the view.
Flat3 = tuple[int, memoryview, int, int, int, int, int]


#: A checked one-descriptor chain as :meth:`VirtQueue.pop_batch_single` may return it:
#: (head, RAM section view, offset, length), non-empty, inside the view, in the direction
#: asked for.
Flat1 = tuple[int, memoryview, int, int]


def flat3_chain(e: Flat3, len0: int, len2: int) -> Chain:
    """The :data:`Chain` form of a :data:`Flat3` popped with ``len0``/``len2``."""
    head, view, o0, o1, l1, o2, write1 = e
    l0, l2 = len0, len2
    v0, v1, v2 = view[o0:o0 + l0], view[o1:o1 + l1], view[o2:o2 + l2]
    if write1:
        return head, [v0], [v1, v2], l0, l1 + l2
    return head, [v0, v1], [v2], l0 + l1, l2


def vring_need_event(event: int, new: int, old: int) -> bool:
    """EVENT_IDX: whether moving the index from ``old`` to ``new`` passes ``event``."""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, the driver (avail) area and the device (used) area."""
    return DESC_SIZE * num, 6 + 2 * num, 6 + 8 * num


class VirtQueue:
    """One split virtqueue of a device (state the transport's common config programs)."""

    def __init__(self, index: int, max_size: int):
        if not 1 <= max_size <= VIRTQUEUE_MAX_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue size {max_size} must be a power of 2 in 1..1024")
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Power-on state: disabled, full size, no vector, no ring addresses."""
        self.size = self.max_size
        self.enabled = False
        self.msix_vector = 0xFFFF
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail_idx = 0
        self.used_idx = 0
        self.signalled_used = 0
        self.signalled_used_valid = False
        self.event_idx = False
        self.indirect = False
        self.mem: AddressSpace | None = None
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._section: tuple[int, int, int, memoryview] | None = None
        #: A bad chain found behind good ones in a batch: raised by the next pop_batch,
        #: after the device completed the good ones.
        self._deferred_error: VirtqueueError | None = None

    # -- enabling ------------------------------------------------------------------------
    def enable(self, mem: AddressSpace, *, event_idx: bool, indirect: bool) -> str | None:
        """Check the programmed rings and start using them; returns why not, or None."""
        num = self.size
        if num == 0 or num & (num - 1) or num > self.max_size:
            return f"queue {self.index}: size {num} is not a power of 2 in 1..{self.max_size}"
        if self.desc_addr & 15 or self.avail_addr & 1 or self.used_addr & 3:
            return f"queue {self.index}: misaligned ring addresses"
        dlen, alen, ulen = ring_sizes(num)
        try:
            desc = mem.ram_view(self.desc_addr, dlen, writable=False)
            avail = mem.ram_view(self.avail_addr, alen, writable=False)
            used = mem.ram_view(self.used_addr, ulen, writable=True)
        except GuestMemoryError as exc:
            return f"queue {self.index}: ring outside guest RAM ({exc})"
        self.mem = mem
        self._desc, self._avail, self._used = desc, avail, used
        # The walker's section cache starts with the RAM the rings are in (buffers usually
        # are too); only a hint: every buffer is still checked against it.
        found = mem.ram_section_at(self.desc_addr)
        if found is not None:
            start, size, view = found
            self._section = (mem.generation, start, start + size, view)
        self.event_idx, self.indirect = event_idx, indirect
        self.last_avail_idx = 0
        self.used_idx = 0
        self.signalled_used_valid = False
        self.enabled = True
        return None

    @property
    def ready(self) -> bool:
        return self.enabled and self._desc is not None

    # -- the avail side -------------------------------------------------------------------
    def avail_idx(self) -> int:
        assert self._avail is not None
        return int(_U16.unpack_from(self._avail, 2)[0])

    def pending(self) -> int:
        """How many chains the driver has made available and we have not popped; raises
        VirtqueueError when avail.idx ran more than the queue size ahead."""
        if not self.ready:
            return 0
        n = (self.avail_idx() - self.last_avail_idx) & 0xFFFF
        if n > self.size:
            raise VirtqueueError(f"queue {self.index}: avail.idx moved {n} entries ahead of "
                                 f"{self.last_avail_idx} (queue size {self.size})")
        return n

    def pop(self) -> Element | None:
        """The next available chain, mapped, or None when the ring is empty."""
        chains = self.pop_batch(1)
        return Element(*chains[0]) if chains else None

    def pop_batch(self, limit: int) -> list[Chain]:
        """Up to ``limit`` available chains, mapped, in ring order (one avail.idx read and,
        with EVENT_IDX, one avail_event write for the whole batch). Each is a plain tuple
        (head, out views, in views, out bytes, in bytes): no object per request.

        A bad chain raises VirtqueueError; when good chains precede it in the batch, those
        are returned and the error is raised by the next call (the device completes them,
        then goes to DEVICE_NEEDS_RESET)."""
        return self._pop_batch(limit)

    def pop_batch_flat(self, limit: int, len0: int, len2: int) -> list[Chain | Flat3]:
        """:meth:`pop_batch`, except that a chain of three consecutive direct descriptors
        (``head``, ``head + 1``, ``head + 2``: a fresh Linux ring, a driver's fixed request
        slots) laid out as readable | readable or writable | writable, of ``len0``, any
        non-zero length and ``len2`` bytes, inside one RAM section, comes as a
        :data:`Flat3` (one 7-tuple) instead: the RAM section's view and the buffers'
        offsets in it, every check of the general walk done, no view or list made. A
        request device (virtio-blk: header, data, status) then slices only what it hands to
        a syscall. Tell them apart by ``len()`` (7 vs 5); :func:`flat3_chain` turns a Flat3
        into a Chain."""
        if len0 <= 0 or len2 <= 0:
            raise ValueError("pop_batch_flat: buffer lengths must be positive")
        return self._pop_batch(limit, len0, len2)

    def pop_batch_single(self, limit: int, write: bool) -> list[Chain | Flat1]:
        """:meth:`pop_batch`, except that a chain of one direct, non-empty descriptor inside
        one RAM section, device-writable if ``write`` else device-readable (a network frame,
        an rx buffer), comes as a :data:`Flat1` (head, RAM section view, offset, length),
        every check of the general walk done, no view or list made. Tell them apart by
        ``len()`` (4 vs 5)."""
        return self._pop_batch(limit, single=2 if write else 0)

    def _pop_batch(self, limit: int, len0: int = 0, len2: int = 0,
                   single: int = -1) -> list[Any]:
        if self._deferred_error is not None:
            err, self._deferred_error = self._deferred_error, None
            raise err
        # pending() and _refresh_section(), inlined: this runs once per batch.
        avail = self._avail
        if avail is None or not self.enabled or self._desc is None:
            return []
        size = self.size
        first = self.last_avail_idx
        n = (_U16.unpack_from(avail, 2)[0] - first) & 0xFFFF
        if n > size:
            raise VirtqueueError(f"queue {self.index}: avail.idx moved {n} entries ahead of "
                                 f"{first} (queue size {size})")
        if n == 0 or limit <= 0:
            return []
        if n > limit:
            n = limit
        slot = first & (size - 1)  # size is a power of 2 (checked by enable)
        if slot + n <= size:
            heads = _u16s(n).unpack_from(avail, 4 + 2 * slot)
        else:
            k = size - slot
            heads = (_u16s(k).unpack_from(avail, 4 + 2 * slot)
                     + _u16s(n - k).unpack_from(avail, 4))
        cache = self._section
        if cache is not None:
            mem = self.mem
            assert mem is not None
            if cache[0] != mem.generation:  # the memory map changed: drop the cached section
                cache = self._section = None
        # The walk of _walk, inlined for the common direct chain (one call per batch, not
        # per chain); indirect chains go through _walk. Same checks in the same order.
        desc = self._desc
        qi = self.index
        unpack = _DESC.unpack_from
        if cache is None:
            sstart = send = 0
            sview: memoryview | None = None
            swritable = False
        else:
            _gen, sstart, send, sview = cache
            swritable = not sview.readonly
        elems: list[Any] = []
        append = elems.append
        bound = range(size)
        big = size >= 3  # room for three distinct descriptors
        # Heads below this get the flat three-descriptor path (see pop_batch_flat).
        last3 = size - 2 if len0 and swritable else 0
        unpack3 = _DESC3.unpack_from
        max1 = MAX_CHAIN_BYTES - len0 - len2
        try:
            for head in heads:
                if head < last3:  # flat, and head + 2 is inside the table: read all three
                    # flags and next of each descriptor as one u32 (flags | next << 16).
                    addr, length, fn0, a1, l1, fn1, a2, l2, f2 = unpack3(desc, head << 4)
                    # Exact flags: NEXT to head + 1; NEXT, or WRITE|NEXT, to head + 2 (only
                    # x = 0x20001 and 0x20003 have x | 2 == 0x20003); WRITE. Nothing else
                    # set, so no INDIRECT, no readable after writable, and the chain ends
                    # at head + 2 (three distinct descriptors: no loop, size >= 3; head <
                    # last3 <= size - 2 is in range). The lengths asked for; l1 non-zero
                    # and small enough that the chain stays under MAX_CHAIN_BYTES.
                    k = head << 16
                    if (fn0 - k == 0x10001 and (fn1 - k) | 2 == 0x20003 and f2 == 2
                            and length == len0 and l2 == len2 and 0 < l1 <= max1
                            and swritable):
                        o0 = addr - sstart
                        o1 = a1 - sstart
                        o2 = a2 - sstart
                        if (o0 >= 0 and addr + length <= send and o1 >= 0
                                and a1 + l1 <= send and o2 >= 0 and a2 + l2 <= send):
                            append((head, sview, o0, o1, l1, o2, fn1 & 2))
                            continue
                    # Anything else: the paths below, with descriptor 0 as read here (the
                    # others are read again there and checked as read; nothing read here
                    # was used).
                    flags = fn0 & 0xFFFF
                    nxt = fn0 >> 16
                else:
                    if head >= size:
                        raise VirtqueueError(f"queue {qi}: head index {head} >= size {size}")
                    addr, length, flags, nxt = unpack(desc, head << 4)
                if not flags & 5 and length:
                    # One direct descriptor, neither NEXT nor INDIRECT (a network frame, an
                    # rx buffer): inside the cached section, and writable if WRITE, it needs
                    # none of the chain checks below.
                    off = addr - sstart
                    if off >= 0 and addr + length <= send and (swritable or not flags & 2):
                        assert sview is not None
                        if flags & 2 == single:  # pop_batch_single: the direction asked for
                            append((head, sview, off, length))
                            continue
                        if flags & 2:
                            append((head, [], [sview[off:off + length]], 0, length))
                        else:
                            append((head, [sview[off:off + length]], [], length, 0))
                        continue
                elif flags == 1 and length and nxt < size and nxt != head and big:
                    # A request of two or three direct descriptors, unrolled (a block
                    # request: header, data, status; a frame behind a separate header).
                    # Only exact flag values and non-empty buffers inside the cached
                    # section, writable where WRITE, are taken here; anything else falls
                    # through to the general walk below, which re-reads descriptors 1 and
                    # 2 and checks whatever it reads (nothing read here was used). At
                    # most three distinct descriptors (size >= 3), so no loop.
                    a1, l1, f1, n1 = unpack(desc, nxt << 4)
                    o0 = addr - sstart
                    o1 = a1 - sstart
                    if (o0 >= 0 and addr + length <= send and l1 and o1 >= 0
                            and a1 + l1 <= send):
                        assert sview is not None
                        if f1 == 3 or f1 == 1:  # NEXT: a third descriptor, WRITE only
                            if n1 < size and n1 != head and n1 != nxt and swritable:
                                a2, l2, f2, _n2 = unpack(desc, n1 << 4)
                                o2 = a2 - sstart
                                if (f2 == 2 and l2 and o2 >= 0 and a2 + l2 <= send
                                        and length + l1 + l2 <= MAX_CHAIN_BYTES):
                                    if f1 == 3:
                                        append((head, [sview[o0:o0 + length]],
                                                [sview[o1:o1 + l1], sview[o2:o2 + l2]],
                                                length, l1 + l2))
                                    else:
                                        append((head, [sview[o0:o0 + length],
                                                       sview[o1:o1 + l1]],
                                                [sview[o2:o2 + l2]], length + l1, l2))
                                    continue
                        elif length + l1 <= MAX_CHAIN_BYTES:
                            if f1 == 2 and swritable:
                                append((head, [sview[o0:o0 + length]], [sview[o1:o1 + l1]],
                                        length, l1))
                                continue
                            if f1 == 0:
                                append((head, [sview[o0:o0 + length], sview[o1:o1 + l1]], [],
                                        length + l1, 0))
                                continue
                if flags & VRING_DESC_F_INDIRECT:
                    e = self._walk(head)
                    append((head, e.out, e.in_, e.out_len, e.in_len))
                    if self._section is not cache:  # _walk's slow path found another section
                        cache = self._section
                        assert cache is not None
                        _gen, sstart, send, sview = cache
                        swritable = not sview.readonly
                    continue
                out: list[memoryview] = []
                in_: list[memoryview] = []
                out_len = in_len = 0
                seen_write = False
                # Flag values inlined (NEXT 1, WRITE 2, INDIRECT 4): this loop runs for every
                # descriptor. At most ``size`` descriptors, then a loop is assumed.
                for _ in bound:
                    if flags & 4:
                        raise VirtqueueError(f"queue {qi}: indirect flag inside a chain")
                    if flags & 2:
                        seen_write = True
                        in_len += length
                        if length:
                            off = addr - sstart
                            if off >= 0 and addr + length <= send and swritable:
                                assert sview is not None
                                in_.append(sview[off:off + length])
                            else:
                                in_.extend(self._map(addr, length, True))
                                cache = self._section
                                if cache is not None:
                                    _gen, sstart, send, sview = cache
                                    swritable = not sview.readonly
                    else:
                        if seen_write:
                            raise VirtqueueError(f"queue {qi}: readable descriptor after a "
                                                 f"writable one")
                        out_len += length
                        if length:
                            off = addr - sstart
                            if off >= 0 and addr + length <= send and sview is not None:
                                out.append(sview[off:off + length])
                            else:
                                out.extend(self._map(addr, length, False))
                                cache = self._section
                                if cache is not None:
                                    _gen, sstart, send, sview = cache
                                    swritable = not sview.readonly
                    if not flags & 1:
                        break
                    if nxt >= size:
                        raise VirtqueueError(f"queue {qi}: next index {nxt} >= {size}")
                    addr, length, flags, nxt = unpack(desc, nxt << 4)
                else:
                    raise VirtqueueError(f"queue {qi}: descriptor chain longer than {size}"
                                         f" (a loop?)")
                # Checked once per chain: at most ``size`` descriptors of < 4 GiB each were
                # mapped (views only, nothing copied), so the bound on the sum can wait.
                if out_len + in_len > MAX_CHAIN_BYTES:
                    raise VirtqueueError(f"queue {qi}: chain longer than 4 GiB")
                append((head, out, in_, out_len, in_len))
        except VirtqueueError as exc:
            # The bad chain stays unconsumed: last_avail_idx counts exactly the chains
            # returned, so that unpop(n) gives back precisely the last n of them.
            self.last_avail_idx = (first + len(elems)) & 0xFFFF
            if not elems:
                raise
            self._deferred_error = exc
        else:
            self.last_avail_idx = (first + n) & 0xFFFF
        if self.event_idx:
            assert self._used is not None
            _U16.pack_into(self._used, 4 + 8 * size, self.last_avail_idx)
        return elems

    def unpop(self, n: int = 1) -> None:
        """Give the last ``n`` popped chains back (a device that could not use them yet):
        the next pop walks and checks them anew. A bad chain found behind them is then met
        again by that walk, so an error deferred by pop_batch is dropped here."""
        if n <= 0:
            return
        self._deferred_error = None
        self.last_avail_idx = (self.last_avail_idx - n) & 0xFFFF
        if self.event_idx:
            assert self._used is not None
            _U16.pack_into(self._used, 4 + 8 * self.size, self.last_avail_idx)

    def _refresh_section(self) -> None:
        """Drop the cached RAM section if the memory map changed (checked once per batch:
        the map only changes under the BQL, which the caller holds for the whole walk)."""
        mem = self.mem
        assert mem is not None
        cache = self._section
        if cache is not None and cache[0] != mem.generation:
            self._section = None

    def _walk(self, head: int) -> Element:
        """Map the chain at ``head``. Each descriptor is unpacked once into locals and every
        guest-controlled value is checked before use: chain length bounded by the table
        size (loops), nested/inline INDIRECT refused, readable-after-writable refused, byte
        total bounded, every buffer inside guest RAM."""
        assert self._desc is not None and self.mem is not None
        qi = self.index
        table = self._desc
        count = self.size
        unpack = _DESC.unpack_from
        addr, length, flags, nxt = unpack(table, head << 4)
        indirect = False
        if flags & VRING_DESC_F_INDIRECT:
            if not self.indirect:
                raise VirtqueueError(f"queue {qi}: indirect descriptor not negotiated")
            if flags & VRING_DESC_F_NEXT:
                raise VirtqueueError(f"queue {qi}: indirect descriptor with NEXT")
            if length == 0 or length % DESC_SIZE or length // DESC_SIZE > VIRTQUEUE_MAX_SIZE:
                raise VirtqueueError(f"queue {qi}: bad indirect table length {length}")
            try:
                table = self.mem.ram_view(addr, length, writable=False)
            except GuestMemoryError as exc:
                raise VirtqueueError(f"queue {qi}: indirect table: {exc}") from None
            count = length // DESC_SIZE
            addr, length, flags, nxt = unpack(table, 0)
            indirect = True
        cache = self._section
        if cache is None:
            sstart = send = 0
            sview: memoryview | None = None
            swritable = False
        else:
            _gen, sstart, send, sview = cache
            swritable = not sview.readonly
        out: list[memoryview] = []
        in_: list[memoryview] = []
        out_len = in_len = 0
        visited = 0
        seen_write = False
        while True:
            visited += 1
            if visited > count:
                raise VirtqueueError(f"queue {qi}: descriptor chain longer than {count}"
                                     f" (a loop?)")
            if flags & VRING_DESC_F_INDIRECT:
                raise VirtqueueError(f"queue {qi}: "
                                     + ("nested indirect table" if indirect
                                        else "indirect flag inside a chain"))
            if out_len + in_len + length > MAX_CHAIN_BYTES:
                raise VirtqueueError(f"queue {qi}: chain longer than 4 GiB")
            if flags & VRING_DESC_F_WRITE:
                seen_write = True
                in_len += length
                if length:
                    if sstart <= addr and addr + length <= send and swritable:
                        assert sview is not None
                        in_.append(sview[addr - sstart:addr - sstart + length])
                    else:
                        in_.extend(self._map(addr, length, True))
            else:
                if seen_write:
                    raise VirtqueueError(f"queue {qi}: readable descriptor after a "
                                         f"writable one")
                out_len += length
                if length:
                    if sstart <= addr and addr + length <= send and sview is not None:
                        out.append(sview[addr - sstart:addr - sstart + length])
                    else:
                        out.extend(self._map(addr, length, False))
            if not flags & VRING_DESC_F_NEXT:
                return Element(head, out, in_, out_len, in_len)
            if nxt >= count:
                raise VirtqueueError(f"queue {qi}: next index {nxt} >= {count}")
            addr, length, flags, nxt = unpack(table, nxt << 4)

    def _map(self, addr: int, length: int, writable: bool) -> list[memoryview]:
        """Views of guest RAM [addr, addr + length) by the checked slow path; remembers the
        RAM section found so that the walker's inline fast path can use it next time.
        VirqueueError when any byte is outside guest RAM (or read-only and ``writable``)."""
        mem = self.mem
        assert mem is not None
        try:
            if 0 <= addr < 1 << 64:
                found = mem.ram_section_at(addr)
                if found is not None:
                    start, size, view = found
                    self._section = (mem.generation, start, start + size, view)
                    if addr + length <= start + size and not (writable and view.readonly):
                        return [view[addr - start:addr - start + length]]
            return mem.ram_views(addr, length, writable=writable)
        except GuestMemoryError as exc:
            raise VirtqueueError(f"queue {self.index}: buffer {exc}") from None

    # -- the used side --------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written."""
        assert self._used is not None
        slot = self.used_idx % self.size
        _USED_ELEM.pack_into(self._used, 4 + 8 * slot, head, written & 0xFFFFFFFF)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)

    def push_batch(self, done: list[tuple[int, int]]) -> None:
        """Return several (head, written) chains with one used.idx update (the driver sees
        them all at once, after every element is in place)."""
        used = self._used
        assert used is not None
        mask = self.size - 1
        idx = self.used_idx
        k = len(done)
        slot = idx & mask
        if slot + k <= mask + 1:  # one store for the run of used elements
            try:
                _used_elems(k).pack_into(used, 4 + 8 * slot, *_flatten(done))
            except struct.error:
                pass  # a length of 4 GiB: stored modulo 2**32 below
            else:
                self.used_idx = idx = (idx + k) & 0xFFFF
                _U16.pack_into(used, 2, idx)
                return
        pack = _USED_ELEM.pack_into
        for head, written in done:
            pack(used, 4 + 8 * (idx & mask), head, written & 0xFFFFFFFF)
            idx = (idx + 1) & 0xFFFF
        self.used_idx = idx
        _U16.pack_into(used, 2, idx)

    def push_batch_heads(self, heads: list[int]) -> None:
        """:meth:`push_batch` for chains the device wrote nothing into (sent frames): a list
        of heads, their used lengths 0."""
        used = self._used
        assert used is not None
        mask = self.size - 1
        idx = self.used_idx
        k = len(heads)
        slot = idx & mask
        if slot + k <= mask + 1:  # one store for the run of used elements
            _used_zero(k).pack_into(used, 4 + 8 * slot, *heads)
            idx = (idx + k) & 0xFFFF
        else:
            pack = _USED_ELEM.pack_into
            for head in heads:
                pack(used, 4 + 8 * (idx & mask), head, 0)
                idx = (idx + 1) & 0xFFFF
        self.used_idx = idx
        _U16.pack_into(used, 2, idx)

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        if not self.ready:
            return False
        assert self._avail is not None
        new = self.used_idx
        if self.event_idx:
            event = int(_U16.unpack_from(self._avail, 4 + 2 * self.size)[0])
            old = self.signalled_used
            valid = self.signalled_used_valid
            self.signalled_used = new
            self.signalled_used_valid = True
            return not valid or vring_need_event(event, new, old)
        flags = int(_U16.unpack_from(self._avail, 0)[0])
        return not flags & VRING_AVAIL_F_NO_INTERRUPT

    def set_no_notify(self, value: bool) -> None:
        """Ask the driver not to kick (used.flags) while we are already processing."""
        if self.ready and not self.event_idx:
            assert self._used is not None
            _U16.pack_into(self._used, 0, VRING_USED_F_NO_NOTIFY if value else 0)
