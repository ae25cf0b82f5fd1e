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
``os.preadv``/``os.pwritev`` without a copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class VirtqueueError(Exception):
    """The driver broke the ring protocol; the device must go to DEVICE_NEEDS_RESET."""


@dataclass
class Element:
    """One popped request: the head index and its device-readable (``out``) and
    device-writable (``in_``) buffers as views of guest RAM."""

    head: int
    out: list[memoryview] = field(default_factory=list)
    in_: list[memoryview] = field(default_factory=list)
    out_len: int = 0
    in_len: int = 0


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
        if self.pending() == 0:
            return None
        assert self._avail is not None and self._desc is not None
        slot = self.last_avail_idx % self.size
        head = int(_U16.unpack_from(self._avail, 4 + 2 * slot)[0])
        if head >= self.size:
            raise VirtqueueError(f"queue {self.index}: head index {head} >= size {self.size}")
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        if self.event_idx:
            assert self._used is not None
            _U16.pack_into(self._used, 4 + 8 * self.size, self.last_avail_idx)
        return self._walk(head)

    def unpop(self) -> None:
        """Give the last popped chain back (a device that could not use it yet)."""
        self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF
        if self.event_idx:
            assert self._used is not None
            _U16.pack_into(self._used, 4 + 8 * self.size, self.last_avail_idx)

    def _walk(self, head: int) -> Element:
        assert self._desc is not None and self.mem is not None
        mem = self.mem
        elem = Element(head)
        table = self._desc
        count = self.size
        index = head
        addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * index)
        if flags & VRING_DESC_F_INDIRECT:
            if not self.indirect:
                raise VirtqueueError(f"queue {self.index}: indirect descriptor not negotiated")
            if flags & VRING_DESC_F_NEXT:
                raise VirtqueueError(f"queue {self.index}: indirect descriptor with NEXT")
            if length == 0 or length % DESC_SIZE or length // DESC_SIZE > VIRTQUEUE_MAX_SIZE:
                raise VirtqueueError(f"queue {self.index}: bad indirect table length {length}")
            try:
                table = mem.ram_view(addr, length, writable=False)
            except GuestMemoryError as exc:
                raise VirtqueueError(f"queue {self.index}: indirect table: {exc}") from None
            count = length // DESC_SIZE
            index = 0
            addr, length, flags, nxt = _DESC.unpack_from(table, 0)
            indirect = True
        else:
            indirect = False
        total = 0
        visited = 0
        seen_write = False
        while True:
            visited += 1
            if visited > count:
                raise VirtqueueError(f"queue {self.index}: descriptor chain longer than {count}"
                                     f" (a loop?)")
            if flags & VRING_DESC_F_INDIRECT:
                raise VirtqueueError(f"queue {self.index}: "
                                     + ("nested indirect table" if indirect
                                        else "indirect flag inside a chain"))
            total += length
            if total > MAX_CHAIN_BYTES:
                raise VirtqueueError(f"queue {self.index}: chain longer than 4 GiB")
            if flags & VRING_DESC_F_WRITE:
                seen_write = True
            elif seen_write:
                raise VirtqueueError(f"queue {self.index}: readable descriptor after a "
                                     f"writable one")
            if length:
                try:
                    if flags & VRING_DESC_F_WRITE:
                        elem.in_.extend(self._map(addr, length, True))
                        elem.in_len += length
                    else:
                        elem.out.extend(self._map(addr, length, False))
                        elem.out_len += length
                except GuestMemoryError as exc:
                    raise VirtqueueError(f"queue {self.index}: buffer {exc}") from None
            if not flags & VRING_DESC_F_NEXT:
                return elem
            if nxt >= count:
                raise VirtqueueError(f"queue {self.index}: next index {nxt} >= {count}")
            addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * nxt)

    def _map(self, addr: int, length: int, writable: bool) -> list[memoryview]:
        """Views of guest RAM [addr, addr + length): the last RAM section used is cached
        (until the memory map changes), anything else takes the checked slow path."""
        mem = self.mem
        assert mem is not None
        cache = self._section
        if cache is not None and cache[0] == mem.generation:
            _gen, start, end, view = cache
            if start <= addr and addr + length <= end and not (writable and view.readonly):
                return [view[addr - start:addr - start + length]]
        if 0 <= addr < 1 << 64:
            found = mem.ram_section_at(addr)
            if found is not None:
                start, size, view = found
                self._section = (mem.generation, start, start + size, view)
                if addr + length <= start + size and not (writable and view.readonly):
                    return [view[addr - start:addr - start + length]]
        return mem.ram_views(addr, length, writable=writable)

    # -- the used side --------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written."""
        assert self._used is not None
        slot = self.used_idx % self.size
        _USED_ELEM.pack_into(self._used, 4 + 8 * slot, head, written & 0xFFFFFFFF)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)

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
