"""Guest memory: QEMU's MemoryRegion / AddressSpace / FlatView / MemoryListener in Python.

A machine's memory map is a tree (an acyclic graph, through aliases) of :class:`MemoryRegion`:

* leaves: RAM (``MemoryRegion.ram``), ROM (``MemoryRegion.rom``: RAM the guest cannot write) and
  I/O regions (``MemoryRegion.io``: read/write callbacks, for MMIO and port I/O alike);
* containers (``MemoryRegion.container``): group subregions at offsets and are transparent where
  no subregion is mapped;
* aliases (``MemoryRegion.alias``): a window ``[offset, offset + size)`` onto another region.

An :class:`AddressSpace` renders its root region into a flat view: sorted, non-overlapping
:class:`Section` objects, looked up with ``bisect``. Rendering follows QEMU's
render_memory_region: within a container, subregions are tried in descending priority, and among
equal priorities the one added (or moved, see ``set_address``) last comes first; each only fills
what the earlier ones left free; a RAM/ROM/I/O region with subregions shows itself in the holes
they leave; everything is clipped to its container's size and an alias's window; a disabled
region hides its whole subtree (an alias to a disabled region shows nothing).

Every change re-renders all address spaces, or once at the outermost exit of a
``with memory_transaction():`` block. Views are immutable and swapped in one assignment, so
vCPU threads may read while the (single, BQL-holding) configuring thread changes the map; a
reader sees either the old or the new view. Each change of an address space's view increments
its ``generation``, so a software CPU can invalidate page caches built with ``ram_section_at``.

Guest errors never raise from :meth:`AddressSpace.read` / :meth:`AddressSpace.write`: an
unassigned read gives all-ones, an unassigned write, a write to ROM and an access size an I/O
region refuses are ignored, and each is logged at debug level on the ``vfw.guest_errors``
logger. Addresses must lie in ``[0, 2**64)``: a negative address or an access reaching past
2**64 raises :class:`~vfw.errors.GuestMemoryError`. Access sizes other than 1, 2, 4 and 8 are
the caller's bug (``ValueError``).

DMA (``read_bytes``, ``write_bytes``, ``ram_view``, ``ram_views``) touches guest RAM and ROM
only: a range with any byte that is unassigned or I/O raises GuestMemoryError, before anything is
copied; devices must not DMA into MMIO. DMA writes into ROM are dropped (and logged), as the
hardware would.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import mmap
import struct
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from .errors import GuestMemoryError, MachineError

__all__ = [
    "ADDR_LIMIT",
    "AddressSpace",
    "EventFd",
    "MemoryListener",
    "MemoryRegion",
    "MemoryRegionOps",
    "RegionKind",
    "Section",
    "memory_transaction",
]

#: Guest-physical addresses are 64-bit: every access must end at or below this.
ADDR_LIMIT = 1 << 64

guest_log = logging.getLogger("vfw.guest_errors")

ReadFn = Callable[[int, int], int]
WriteFn = Callable[[int, int, int], None]

_SIZES = (1, 2, 4, 8)
_MASK: dict[int, int] = {n: (1 << (8 * n)) - 1 for n in (1, 2, 3, 4, 5, 6, 7, 8)}
_STRUCTS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
            8: struct.Struct("<Q")}
_UNPACK = {n: s.unpack_from for n, s in _STRUCTS.items()}
_PACK = {n: s.pack_into for n, s in _STRUCTS.items()}


class RegionKind(enum.Enum):
    """What a :class:`MemoryRegion` is."""

    RAM = "ram"
    ROM = "rom"
    IO = "io"
    CONTAINER = "container"
    ALIAS = "alias"


def _check_sizes(what: str, sizes: tuple[int, int]) -> tuple[int, int]:
    lo, hi = sizes
    if lo not in _SIZES or hi not in _SIZES or lo > hi:
        raise ValueError(f"{what} must be (min, max) with 1/2/4/8 and min <= max, not {sizes!r}")
    return lo, hi


class MemoryRegionOps:
    """The callbacks and access constraints of an I/O region (QEMU's MemoryRegionOps).

    ``read(offset, size) -> int`` and ``write(offset, value, size)`` get the offset within the
    region, little-endian values and sizes 1/2/4/8. ``valid_sizes`` are the access sizes the
    modelled device accepts: other sizes read all-ones and write nothing (logged).
    ``impl_sizes`` are the sizes the callbacks implement: a wider access is split into
    impl-max-sized little-endian pieces at increasing offsets, a narrower one is widened to
    impl-min (the read result is truncated, the written value zero-extended), exactly as QEMU's
    access_with_adjusted_size does. With ``unaligned=False`` an access whose offset is not a
    multiple of its size is refused like an invalid size.
    """

    __slots__ = ("direct", "impl_sizes", "read", "unaligned", "valid_sizes", "write")

    def __init__(self, read: ReadFn, write: WriteFn, valid_sizes: tuple[int, int] = (1, 8),
                 impl_sizes: tuple[int, int] = (1, 8), unaligned: bool = True):
        self.read = read
        self.write = write
        self.valid_sizes = _check_sizes("valid_sizes", valid_sizes)
        self.impl_sizes = _check_sizes("impl_sizes", impl_sizes)
        self.unaligned = unaligned
        vmin, vmax = self.valid_sizes
        imin, imax = self.impl_sizes
        # direct[size]: the access goes to the callback as is (valid and implemented).
        self.direct = tuple(n in _SIZES and vmin <= n <= vmax and imin <= n <= imax
                            for n in range(9))

    def __repr__(self) -> str:
        return (f"MemoryRegionOps(valid_sizes={self.valid_sizes}, "
                f"impl_sizes={self.impl_sizes}, unaligned={self.unaligned})")


def _io_read(region: MemoryRegion, ops: MemoryRegionOps, offset: int, size: int) -> int:
    vmin, vmax = ops.valid_sizes
    if size < vmin or size > vmax or (not ops.unaligned and offset & (size - 1)):
        guest_log.debug("invalid read of size %d at offset 0x%x of I/O region %r",
                        size, offset, region.name)
        return _MASK[size]
    imin, imax = ops.impl_sizes
    access = max(min(size, imax), imin)
    amask = _MASK[access]
    if access >= size:
        return ops.read(offset, access) & amask & _MASK[size]
    value = 0
    for i in range(0, size, access):
        value |= (ops.read(offset + i, access) & amask) << (8 * i)
    return value


def _io_write(region: MemoryRegion, ops: MemoryRegionOps, offset: int, value: int,
              size: int) -> None:
    vmin, vmax = ops.valid_sizes
    if size < vmin or size > vmax or (not ops.unaligned and offset & (size - 1)):
        guest_log.debug("invalid write of size %d at offset 0x%x of I/O region %r (value 0x%x)",
                        size, offset, region.name, value)
        return
    imin, imax = ops.impl_sizes
    access = max(min(size, imax), imin)
    if access >= size:
        ops.write(offset, value, access)
        return
    amask = _MASK[access]
    for i in range(0, size, access):
        ops.write(offset + i, (value >> (8 * i)) & amask, access)


class EventFd(NamedTuple):
    """An ioeventfd: a write of ``size`` bytes (0: any size) of ``data`` (None: any value) at
    ``offset`` of a region signals ``fd``, when an accelerator implements it."""

    offset: int
    size: int
    data: int | None
    fd: int


# --- transactions -------------------------------------------------------------------------

_txn_depth = 0
_txn_pending = False
_spaces: weakref.WeakSet[AddressSpace] = weakref.WeakSet()


def _changed() -> None:
    global _txn_pending
    _txn_pending = True
    if _txn_depth == 0:
        _commit()


def _commit() -> None:
    global _txn_depth, _txn_pending
    _txn_depth += 1  # listeners that change the map are batched into this commit
    try:
        while _txn_pending:
            _txn_pending = False
            _update_spaces(list(_spaces))
    finally:
        _txn_depth -= 1


def _update_spaces(spaces: list[AddressSpace]) -> None:
    """Update every space, even when a listener of an earlier one raises (then re-raise)."""
    for i, space in enumerate(spaces):
        try:
            space._update()
        except BaseException:
            _update_spaces(spaces[i + 1:])
            raise


@contextmanager
def memory_transaction() -> Iterator[None]:
    """Batch memory-map changes: views are re-rendered once, at the outermost exit.

    Nesting is allowed. Inside the block, accesses still see the view from before it. The views
    are re-rendered even when the block raises, so they always match the regions.
    """
    global _txn_depth
    _txn_depth += 1
    try:
        yield
    finally:
        _txn_depth -= 1
        if _txn_depth == 0 and _txn_pending:
            _commit()


# --- regions ------------------------------------------------------------------------------


def _check_int(what: str, value: int, limit: int = ADDR_LIMIT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{what} must be an integer in [0, 0x{limit:x}], not {value!r}")
    return value


class MemoryRegion:
    """A node of the memory map. Build one with the ``ram``, ``rom``, ``io``, ``container`` or
    ``alias`` constructors; ``MemoryRegion(name, size)`` is a container.

    Regions compare by identity. A region sits in at most one container at a time; use aliases
    to show it in several places.
    """

    __slots__ = (
        "__weakref__",
        "_addr",
        "_alias",
        "_alias_offset",
        "_container",
        "_enabled",
        "_eventfds",
        "_host_address",
        "_mmap",
        "_priority",
        "_readonly",
        "_size",
        "_subregions",
        "_view",
        "kind",
        "name",
        "ops",
    )

    def __init__(self, name: str, size: int):
        self.name = name
        self.kind = RegionKind.CONTAINER
        self._size = _check_int("region size", size)
        self._readonly = False
        self._enabled = True
        self._container: MemoryRegion | None = None
        self._addr = 0
        self._priority = 0
        self._subregions: list[MemoryRegion] = []  # in rendering order
        self._alias: MemoryRegion | None = None
        self._alias_offset = 0
        self.ops: MemoryRegionOps | None = None
        self._mmap: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._host_address = 0
        self._eventfds: list[EventFd] = []

    # constructors

    @classmethod
    def container(cls, name: str, size: int) -> MemoryRegion:
        """A pure container: transparent wherever no subregion is mapped."""
        return cls(name, size)

    @classmethod
    def ram(cls, name: str, size: int) -> MemoryRegion:
        """Guest RAM backed by anonymous shared host memory (``mmap.mmap(-1, size)``).

        ``size`` must be a positive multiple of the host page size. Allocation failure raises
        MachineError.
        """
        mr = cls(name, size)
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"RAM region {name!r}: size 0x{size:x} is not a positive multiple "
                             f"of the page size (0x{mmap.PAGESIZE:x})")
        try:
            mm = mmap.mmap(-1, size)
        except (OSError, OverflowError, ValueError) as exc:
            raise MachineError(f"cannot allocate {size} bytes of guest memory for {name!r}: "
                               f"{exc}") from exc
        mr.kind = RegionKind.RAM
        mr._mmap = mm
        mr._view = memoryview(mm)
        mr._host_address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        return mr

    @classmethod
    def rom(cls, name: str, size: int) -> MemoryRegion:
        """Like :meth:`ram`, but the guest cannot write it (``readonly``; writes are ignored).

        Fill it through :attr:`view`, which stays writable for the host.
        """
        mr = cls.ram(name, size)
        mr.kind = RegionKind.ROM
        mr._readonly = True
        return mr

    @classmethod
    def io(cls, name: str, size: int, read: ReadFn, write: WriteFn,
           valid_sizes: tuple[int, int] = (1, 8), impl_sizes: tuple[int, int] = (1, 8),
           unaligned: bool = True) -> MemoryRegion:
        """An MMIO / port-I/O region served by callbacks; see :class:`MemoryRegionOps`."""
        mr = cls(name, size)
        mr.kind = RegionKind.IO
        mr.ops = MemoryRegionOps(read, write, valid_sizes, impl_sizes, unaligned)
        return mr

    @classmethod
    def alias(cls, name: str, target: MemoryRegion, offset: int, size: int) -> MemoryRegion:
        """A window of ``size`` bytes onto ``target`` starting at ``target`` offset ``offset``.

        The target's own placement (container, address) does not matter; its enabled flag does.
        Aliases cannot have subregions.
        """
        if not isinstance(target, MemoryRegion):
            raise TypeError(f"alias {name!r}: target must be a MemoryRegion, not {target!r}")
        mr = cls(name, size)
        mr.kind = RegionKind.ALIAS
        mr._alias = target
        mr._alias_offset = _check_int("alias offset", offset)
        return mr

    # properties

    @property
    def size(self) -> int:
        return self._size

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def readonly(self) -> bool:
        """True for ROM and for regions (RAM, aliases) made read-only with set_readonly."""
        return self._readonly

    @property
    def is_ram(self) -> bool:
        """RAM or ROM: backed by host memory."""
        return self._view is not None

    @property
    def container_region(self) -> MemoryRegion | None:
        """The container this region is mapped in, if any."""
        return self._container

    @property
    def address(self) -> int:
        """Offset of this region within its container."""
        return self._addr

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def subregions(self) -> tuple[MemoryRegion, ...]:
        """The subregions in rendering order (highest priority, then most recently added)."""
        return tuple(self._subregions)

    @property
    def alias_target(self) -> MemoryRegion | None:
        return self._alias

    @property
    def alias_offset(self) -> int:
        return self._alias_offset

    @property
    def view(self) -> memoryview:
        """A writable memoryview of the whole host block (RAM and ROM only)."""
        if self._view is None:
            raise TypeError(f"region {self.name!r} ({self.kind.value}) has no host memory")
        return self._view

    @property
    def host_address(self) -> int:
        """Host virtual address of the block, for KVM memory slots (RAM and ROM only)."""
        if self._view is None:
            raise TypeError(f"region {self.name!r} ({self.kind.value}) has no host memory")
        return self._host_address

    @property
    def eventfds(self) -> tuple[EventFd, ...]:
        return tuple(self._eventfds)

    # changes

    def _reaches(self, other: MemoryRegion) -> bool:
        """Whether ``other`` is this region or lies below it (through subregions or aliases)."""
        stack: list[MemoryRegion] = [self]
        seen: set[int] = set()
        while stack:
            mr = stack.pop()
            if mr is other:
                return True
            if id(mr) in seen:
                continue
            seen.add(id(mr))
            stack.extend(mr._subregions)
            if mr._alias is not None:
                stack.append(mr._alias)
        return False

    def add_subregion(self, offset: int, region: MemoryRegion, priority: int = 0) -> None:
        """Map ``region`` at ``offset`` in this region; higher ``priority`` wins overlaps and,
        among equal priorities, the region added last wins (QEMU's insertion order)."""
        if self.kind is RegionKind.ALIAS:
            raise ValueError(f"alias {self.name!r} cannot have subregions")
        if not isinstance(region, MemoryRegion):
            raise TypeError(f"subregion must be a MemoryRegion, not {region!r}")
        if region._container is not None:
            raise ValueError(f"region {region.name!r} is already mapped in "
                             f"{region._container.name!r}")
        _check_int("subregion offset", offset, ADDR_LIMIT - 1)
        if not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {priority!r}")
        if region._reaches(self):
            raise ValueError(f"adding {region.name!r} to {self.name!r} would make a cycle")
        region._container = self
        region._addr = offset
        region._priority = priority
        subs = self._subregions
        for i, other in enumerate(subs):
            if priority >= other._priority:
                subs.insert(i, region)
                break
        else:
            subs.append(region)
        _changed()

    def del_subregion(self, region: MemoryRegion) -> None:
        """Unmap a subregion of this region."""
        if region._container is not self:
            raise ValueError(f"region {region.name!r} is not a subregion of {self.name!r}")
        self._subregions.remove(region)
        region._container = None
        _changed()

    def set_enabled(self, enabled: bool) -> None:
        """Show or hide this region (and everything below it)."""
        enabled = bool(enabled)
        if enabled != self._enabled:
            self._enabled = enabled
            _changed()

    def set_address(self, offset: int) -> None:
        """Move this region within its container (a PCI BAR being reprogrammed).

        Like QEMU, a move re-adds the region: it then wins over equal-priority overlaps.
        """
        _check_int("region address", offset, ADDR_LIMIT - 1)
        container = self._container
        if container is None:
            self._addr = offset
            return
        if offset == self._addr:
            return
        with memory_transaction():
            container.del_subregion(self)
            container.add_subregion(offset, self, self._priority)

    def set_alias_offset(self, offset: int) -> None:
        """Point an alias at another offset of its target (same size)."""
        if self.kind is not RegionKind.ALIAS:
            raise TypeError(f"region {self.name!r} is not an alias")
        _check_int("alias offset", offset)
        if offset != self._alias_offset:
            self._alias_offset = offset
            _changed()

    def set_readonly(self, readonly: bool) -> None:
        """Make RAM (or everything seen through an alias) read-only for the guest, or not."""
        if self.kind in (RegionKind.IO, RegionKind.CONTAINER):
            raise TypeError(f"region {self.name!r} ({self.kind.value}) cannot be read-only")
        readonly = bool(readonly)
        if readonly != self._readonly:
            self._readonly = readonly
            _changed()

    def add_eventfd(self, offset: int, size: int, data: int | None, fd: int) -> None:
        """Declare an ioeventfd (QEMU's memory_region_add_eventfd).

        Listeners get it at its absolute address in every address space where this part of
        the region is visible. The write callback still runs when no accelerator consumes it.
        """
        if size not in (0, 1, 2, 4, 8):
            raise ValueError(f"eventfd size must be 0 (any), 1, 2, 4 or 8, not {size!r}")
        _check_int("eventfd offset", offset)
        if offset + max(size, 1) > self._size:
            raise ValueError(f"eventfd at 0x{offset:x} size {size} lies outside region "
                             f"{self.name!r} (size 0x{self._size:x})")
        if data is not None:
            _check_int("eventfd data", data, _MASK[size or 8])
        ev = EventFd(offset, size, data, fd)
        if ev in self._eventfds:
            raise ValueError(f"eventfd {ev} is already registered on {self.name!r}")
        self._eventfds.append(ev)
        _changed()

    def del_eventfd(self, offset: int, size: int, data: int | None, fd: int) -> None:
        ev = EventFd(offset, size, data, fd)
        try:
            self._eventfds.remove(ev)
        except ValueError:
            raise ValueError(f"eventfd {ev} is not registered on {self.name!r}") from None
        _changed()

    def __repr__(self) -> str:
        extra = ""
        if self._alias is not None:
            extra = f" -> {self._alias.name!r}@0x{self._alias_offset:x}"
        return (f"<MemoryRegion {self.name!r} {self.kind.value} size=0x{self._size:x}"
                f"{extra}{'' if self._enabled else ' disabled'}>")


# --- flat views -----------------------------------------------------------------------------


class Section:
    """A piece of a flat view: guest addresses ``[start, start + size)`` are bytes
    ``[offset_in_region, offset_in_region + size)`` of the leaf ``region`` (RAM, ROM or I/O).

    ``readonly`` is true for ROM and for RAM seen read-only. Sections compare by value (with the
    region by identity), so listeners can keep them in sets and dicts.
    """

    __slots__ = (
        "_delta",
        "_ops",
        "_rview",
        "_wview",
        "end",
        "offset_in_region",
        "readonly",
        "region",
        "size",
        "start",
    )

    def __init__(self, start: int, size: int, region: MemoryRegion, offset_in_region: int,
                 readonly: bool):
        self.start = start
        self.size = size
        self.end = start + size
        self.region = region
        self.offset_in_region = offset_in_region
        self.readonly = readonly
        # Fast-path helpers: views of exactly this section's bytes; I/O callbacks and delta.
        self._rview: memoryview | None = None
        self._wview: memoryview | None = None
        self._delta = offset_in_region - start  # guest address + delta = offset in region
        self._ops = region.ops
        if region._view is not None:
            view = region._view[offset_in_region:offset_in_region + size]
            self._rview = view.toreadonly() if readonly else view
            self._wview = None if readonly else view

    @property
    def is_ram(self) -> bool:
        """Backed by host memory (RAM or ROM)."""
        return self._rview is not None

    @property
    def host_address(self) -> int:
        """Host virtual address of the section's first byte (RAM and ROM only)."""
        return self.region.host_address + self.offset_in_region

    @property
    def view(self) -> memoryview:
        """The section's host memory (read-only if the section is)."""
        if self._rview is None:
            raise TypeError(f"section of {self.region.name!r} has no host memory")
        return self._rview

    def _key(self) -> tuple[int, int, int, int, bool]:
        return (self.start, self.size, id(self.region), self.offset_in_region, self.readonly)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Section):
            return NotImplemented
        return self.region is other.region and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        ro = " ro" if self.readonly else ""
        return (f"<Section 0x{self.start:x}-0x{self.end - 1:x} {self.region.name!r}"
                f"@0x{self.offset_in_region:x}{ro}>")


class _Renderer:
    """Paints leaves into the gaps left by what was painted before (render_memory_region)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.pieces: list[tuple[int, int, MemoryRegion, int, bool]] = []  # start, end, ...

    def render(self, mr: MemoryRegion, base: int, lo: int, hi: int, readonly: bool) -> None:
        # base: guest address of mr's byte 0; [lo, hi): clip window
        if not mr._enabled:
            return
        lo = max(lo, base)
        hi = min(hi, base + mr._size)
        if lo >= hi:
            return
        readonly = readonly or mr._readonly
        if mr._alias is not None:
            self.render(mr._alias, base - mr._alias_offset, lo, hi, readonly)
            return
        for sub in mr._subregions:
            self.render(sub, base + sub._addr, lo, hi, readonly)
        if mr.kind is not RegionKind.CONTAINER:
            self._fill(lo, hi, mr, base, readonly)

    def _fill(self, lo: int, hi: int, mr: MemoryRegion, base: int, readonly: bool) -> None:
        starts, pieces = self.starts, self.pieces
        i = bisect_right(starts, lo)
        if i and pieces[i - 1][1] > lo:
            lo = pieces[i - 1][1]
        new: list[tuple[int, int]] = []
        while lo < hi:
            if i < len(starts) and starts[i] < hi:
                if starts[i] > lo:
                    new.append((lo, starts[i]))
                lo = max(lo, pieces[i][1])
                i += 1
            else:
                new.append((lo, hi))
                break
        for a, b in new:
            j = bisect_right(starts, a)
            starts.insert(j, a)
            pieces.insert(j, (a, b, mr, a - base, readonly))

    def sections(self) -> list[Section]:
        """The painted pieces as sections, adjacent pieces of one region merged."""
        out: list[Section] = []
        run: tuple[int, int, MemoryRegion, int, bool] | None = None
        for piece in self.pieces:
            start, end, mr, off, ro = piece
            if run is not None:
                rstart, rend, rmr, roff, rro = run
                if rend == start and rmr is mr and rro == ro and roff + (start - rstart) == off:
                    run = (rstart, end, rmr, roff, rro)
                    continue
                out.append(Section(rstart, rend - rstart, rmr, roff, rro))
            run = piece
        if run is not None:
            rstart, rend, rmr, roff, rro = run
            out.append(Section(rstart, rend - rstart, rmr, roff, rro))
        return out


def _eventfds_of(sections: list[Section]) -> list[tuple[int, int, int | None, int]]:
    found: set[tuple[int, int, int | None, int]] = set()
    for s in sections:
        lo, hi = s.offset_in_region, s.offset_in_region + s.size
        for ev in s.region._eventfds:
            if lo <= ev.offset and ev.offset + max(ev.size, 1) <= hi:
                found.add((ev.offset - s._delta, ev.size, ev.data, ev.fd))
    return sorted(found, key=lambda e: (e[0], e[1], -1 if e[2] is None else e[2], e[3]))


class MemoryListener:
    """Follows an address space's RAM/ROM sections and ioeventfds (QEMU's MemoryListener).

    Override what you need; every method is a no-op here. On each change of the map a listener
    gets ``begin()``, ``region_del`` for the RAM/ROM sections that went away, ``region_add`` for
    the new ones (a moved, resized or split section is deleted then added again),
    ``eventfd_del`` / ``eventfd_add`` likewise, then ``commit()``. ``begin``/``commit`` come
    only when something the listener sees changed. I/O sections are not reported: accesses to
    them reach the accelerator as exits and go through :meth:`AddressSpace.read` / ``write``.
    """

    def begin(self) -> None:
        """A batch of changes starts."""

    def commit(self) -> None:
        """The batch of changes is complete."""

    def region_add(self, section: Section) -> None:
        """A RAM/ROM section appeared (map it: start, size, host_address, readonly)."""

    def region_del(self, section: Section) -> None:
        """A RAM/ROM section went away."""

    def eventfd_add(self, addr: int, size: int, data: int | None, fd: int) -> None:
        """An ioeventfd became visible at guest address ``addr``."""

    def eventfd_del(self, addr: int, size: int, data: int | None, fd: int) -> None:
        """An ioeventfd went away."""


class AddressSpace:
    """Memory as seen by a CPU or a device: a root region, rendered flat.

    Reads and writes are little-endian. See the module documentation for the error rules.
    """

    def __init__(self, name: str, root: MemoryRegion):
        if not isinstance(root, MemoryRegion):
            raise TypeError(f"address space {name!r}: root must be a MemoryRegion")
        self.name = name
        self.root = root
        #: Incremented whenever the flat view changes (invalidate cached RAM pages).
        self.generation = 0
        self._listeners: list[MemoryListener] = []
        sections = self._render()
        self._flat: tuple[list[int], list[Section]] = ([s.start for s in sections], sections)
        self._eventfds = _eventfds_of(sections)
        _spaces.add(self)

    def _render(self) -> list[Section]:
        r = _Renderer()
        r.render(self.root, 0, 0, ADDR_LIMIT, False)
        return r.sections()

    def _update(self) -> None:
        sections = self._render()
        old_sections = self._flat[1]
        eventfds = _eventfds_of(sections)
        old_eventfds = self._eventfds
        if sections == old_sections and eventfds == old_eventfds:
            return
        if sections != old_sections:
            self._flat = ([s.start for s in sections], sections)
            self.generation += 1
        self._eventfds = eventfds
        if not self._listeners:
            return
        old_ram = [s for s in old_sections if s.is_ram]
        new_ram = [s for s in sections if s.is_ram]
        old_set, new_set = set(old_ram), set(new_ram)
        removed = [s for s in old_ram if s not in new_set]
        added = [s for s in new_ram if s not in old_set]
        old_ev, new_ev = set(old_eventfds), set(eventfds)
        ev_removed = [e for e in old_eventfds if e not in new_ev]
        ev_added = [e for e in eventfds if e not in old_ev]
        if not (removed or added or ev_removed or ev_added):
            return
        for listener in list(self._listeners):
            listener.begin()
            for s in removed:
                listener.region_del(s)
            for e in ev_removed:
                listener.eventfd_del(*e)
            for s in added:
                listener.region_add(s)
            for e in ev_added:
                listener.eventfd_add(*e)
            listener.commit()

    # listeners

    def add_listener(self, listener: MemoryListener) -> None:
        """Register a listener and replay the current RAM/ROM sections and ioeventfds to it."""
        if listener in self._listeners:
            raise ValueError(f"listener {listener!r} is already registered on {self.name!r}")
        self._listeners.append(listener)
        listener.begin()
        for s in self._flat[1]:
            if s.is_ram:
                listener.region_add(s)
        for e in self._eventfds:
            listener.eventfd_add(*e)
        listener.commit()

    def remove_listener(self, listener: MemoryListener) -> None:
        """Unregister a listener; it gets region_del/eventfd_del for everything it was given."""
        self._listeners.remove(listener)
        listener.begin()
        for e in self._eventfds:
            listener.eventfd_del(*e)
        for s in self._flat[1]:
            if s.is_ram:
                listener.region_del(s)
        listener.commit()

    # lookup

    @property
    def sections(self) -> tuple[Section, ...]:
        """The current flat view, sorted by address."""
        return tuple(self._flat[1])

    def _bad_range(self, addr: int, length: int) -> GuestMemoryError:
        return GuestMemoryError(f"{self.name}: guest-physical range 0x{addr:x}+0x{length:x} "
                                f"lies outside the 64-bit address space")

    def _check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > ADDR_LIMIT:
            raise self._bad_range(addr, length)

    def translate(self, addr: int) -> Section | None:
        """The section holding guest address ``addr``, or None if it is unassigned."""
        if not 0 <= addr < ADDR_LIMIT:
            raise self._bad_range(addr, 1)
        starts, secs = self._flat
        i = bisect_right(starts, addr) - 1
        if i >= 0 and addr < secs[i].end:
            return secs[i]
        return None

    def ram_section_at(self, addr: int) -> tuple[int, int, memoryview] | None:
        """(start, size, host memory) of the RAM/ROM section holding ``addr``, else None.

        For a software CPU's page cache: the view is read-only for ROM (check
        ``view.readonly`` and send writes through :meth:`write`). Drop cached views when
        :attr:`generation` changes.
        """
        s = self.translate(addr)
        if s is None or s._rview is None:
            return None
        return s.start, s.size, s._rview

    # CPU-style accesses

    def read(self, addr: int, size: int) -> int:
        """Read ``size`` (1/2/4/8) bytes at ``addr``, little-endian."""
        starts, secs = self._flat
        i = bisect_right(starts, addr) - 1
        if i >= 0:
            s = secs[i]
            if addr + size <= s.end:
                view = s._rview
                if view is not None:
                    try:
                        return _UNPACK[size](view, addr - s.start)[0]  # type: ignore[no-any-return]
                    except KeyError:
                        pass  # bad size: reported by the slow path
                else:
                    ops = s._ops
                    if ops is not None and size in _PACK:
                        offset = addr + s._delta
                        if ops.direct[size] and (ops.unaligned or not offset & (size - 1)):
                            return ops.read(offset, size) & _MASK[size]
                        return _io_read(s.region, ops, offset, size)
            elif s._ops is not None and size in _PACK and addr + s._delta + size <= s.region.size:
                # QEMU's CPU accessors send a whole access to the region holding its first
                # byte, even where a higher-priority region covers later bytes (a dword at
                # 0xcf8 is the PCI config address, a byte at 0xcf9 the reset control).
                return _io_read(s.region, s._ops, addr + s._delta, size)
        if (i < 0 or addr >= secs[i].end) and self._unassigned(starts, i, addr, size):
            guest_log.debug("%s: unassigned read of %d byte(s) at 0x%x", self.name, size, addr)
            return _MASK[size]
        return self._read_slow(addr, size)

    @staticmethod
    def _unassigned(starts: list[int], i: int, addr: int, size: int) -> bool:
        """Whether the whole access lies in the gap after section ``i`` (a common VM exit:
        probing an absent port or MMIO hole), so it needs no piecewise slow path."""
        return (size in _PACK and addr >= 0 and addr + size <= ADDR_LIMIT
                and (i + 1 >= len(starts) or addr + size <= starts[i + 1]))

    def write(self, addr: int, value: int, size: int) -> None:
        """Write the low ``size`` (1/2/4/8) bytes of ``value`` at ``addr``, little-endian."""
        starts, secs = self._flat
        i = bisect_right(starts, addr) - 1
        if i >= 0:
            s = secs[i]
            if addr + size <= s.end and size in _PACK:
                view = s._wview
                if view is not None:
                    _PACK[size](view, addr - s.start, value & _MASK[size])
                    return
                ops = s._ops
                if ops is not None:
                    offset = addr + s._delta
                    value &= _MASK[size]
                    if ops.direct[size] and (ops.unaligned or not offset & (size - 1)):
                        ops.write(offset, value, size)
                    else:
                        _io_write(s.region, ops, offset, value, size)
                    return
            elif s._ops is not None and size in _PACK and addr + s._delta + size <= s.region.size:
                # The region holding the first byte takes the whole access (see read).
                _io_write(s.region, s._ops, addr + s._delta, value & _MASK[size], size)
                return
        if (i < 0 or addr >= secs[i].end) and self._unassigned(starts, i, addr, size):
            guest_log.debug("%s: unassigned write of %d byte(s) at 0x%x (value 0x%x)",
                            self.name, size, addr, value & _MASK[size])
            return
        self._write_slow(addr, value, size)

    def _next_start(self, addr: int) -> int:
        starts = self._flat[0]
        i = bisect_right(starts, addr)
        return starts[i] if i < len(starts) else ADDR_LIMIT

    def _read_slow(self, addr: int, size: int) -> int:
        if size not in _SIZES:
            raise ValueError(f"access size must be 1, 2, 4 or 8, not {size!r}")
        self._check(addr, size)
        value = 0
        pos, end = addr, addr + size
        while pos < end:
            s = self.translate(pos)
            if s is None:
                n = min(self._next_start(pos), end) - pos
                guest_log.debug("%s: unassigned read of %d byte(s) at 0x%x", self.name, n, pos)
                piece = _MASK[n]
            else:
                n = min(s.end, end) - pos
                if s._rview is not None:
                    off = pos - s.start
                    piece = int.from_bytes(s._rview[off:off + n], "little")
                else:
                    piece = 0
                    done = 0
                    assert s._ops is not None
                    for off, k in _split(pos + s._delta, n, s._ops.valid_sizes[1]):
                        piece |= _io_read(s.region, s._ops, off, k) << (8 * done)
                        done += k
            value |= piece << (8 * (pos - addr))
            pos += n
        return value

    def _write_slow(self, addr: int, value: int, size: int) -> None:
        if size not in _SIZES:
            raise ValueError(f"access size must be 1, 2, 4 or 8, not {size!r}")
        self._check(addr, size)
        value &= _MASK[size]
        pos, end = addr, addr + size
        while pos < end:
            s = self.translate(pos)
            piece = value >> (8 * (pos - addr))
            if s is None:
                n = min(self._next_start(pos), end) - pos
                guest_log.debug("%s: unassigned write of %d byte(s) at 0x%x (value 0x%x)",
                                self.name, n, pos, piece & _MASK[n])
            else:
                n = min(s.end, end) - pos
                piece &= _MASK[n]
                if s._wview is not None:
                    off = pos - s.start
                    s._wview[off:off + n] = piece.to_bytes(n, "little")
                elif s._rview is not None:
                    guest_log.debug("%s: write of %d byte(s) at 0x%x to read-only %r ignored",
                                    self.name, n, pos, s.region.name)
                else:
                    assert s._ops is not None
                    done = 0
                    for off, k in _split(pos + s._delta, n, s._ops.valid_sizes[1]):
                        _io_write(s.region, s._ops, off, (piece >> (8 * done)) & _MASK[k], k)
                        done += k
            pos += n

    # DMA

    def _ram_pieces(self, addr: int, length: int) -> list[tuple[Section, int, int]]:
        """(section, offset in section, length) covering the range, all RAM/ROM, or raise."""
        self._check(addr, length)
        pieces: list[tuple[Section, int, int]] = []
        pos, end = addr, addr + length
        while pos < end:
            s = self.translate(pos)
            if s is None or s._rview is None:
                what = "unassigned" if s is None else f"I/O region {s.region.name!r}"
                raise GuestMemoryError(
                    f"{self.name}: guest-physical range 0x{addr:x}+0x{length:x} is not all "
                    f"guest RAM (0x{pos:x} is {what})")
            n = min(s.end, end) - pos
            pieces.append((s, pos - s.start, n))
            pos += n
        return pieces

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes of guest RAM/ROM (DMA). Non-RAM bytes raise GuestMemoryError."""
        pieces = self._ram_pieces(addr, length)
        if len(pieces) == 1:
            s, off, n = pieces[0]
            assert s._rview is not None
            return s._rview[off:off + n].tobytes()
        return b"".join(s.view[off:off + n] for s, off, n in pieces)

    def write_bytes(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM (DMA). Non-RAM bytes raise GuestMemoryError before
        anything is written; the parts that are ROM are dropped (logged)."""
        src = memoryview(data).cast("B")
        done = 0
        for s, off, n in self._ram_pieces(addr, len(src)):
            if s._wview is not None:
                s._wview[off:off + n] = src[done:done + n]
            else:
                guest_log.debug("%s: DMA write of %d byte(s) at 0x%x to read-only %r dropped",
                                self.name, n, s.start + off, s.region.name)
            done += n

    def ram_view(self, addr: int, length: int, *, writable: bool = True) -> memoryview:
        """A zero-copy view of guest RAM ``[addr, addr + length)``, which must lie in one
        RAM section (in one ROM section too if not ``writable``: the view is then read-only).

        Raises GuestMemoryError otherwise. A zero length gives an empty view.
        """
        self._check(addr, length)
        if length == 0:
            return memoryview(bytearray()) if writable else memoryview(b"")
        s = self.translate(addr)
        if s is None or s._rview is None or addr + length > s.end:
            raise GuestMemoryError(f"{self.name}: guest-physical range 0x{addr:x}+0x{length:x} "
                                   f"is not contained in one RAM region")
        if writable and s._wview is None:
            raise GuestMemoryError(f"{self.name}: guest-physical range 0x{addr:x}+0x{length:x} "
                                   f"is read-only ({s.region.name!r})")
        off = addr - s.start
        return s._rview[off:off + length]

    def ram_views(self, addr: int, length: int, *, writable: bool = True) -> list[memoryview]:
        """Like :meth:`ram_view` but the range may span several adjacent RAM sections: one
        view per section, ready for ``os.preadv``/``os.pwritev``."""
        pieces = self._ram_pieces(addr, length)
        if writable:
            for s, _off, _n in pieces:
                if s._wview is None:
                    raise GuestMemoryError(
                        f"{self.name}: guest-physical range 0x{addr:x}+0x{length:x} is "
                        f"partly read-only ({s.region.name!r})")
        return [s.view[off:off + n] for s, off, n in pieces]

    def __repr__(self) -> str:
        return f"<AddressSpace {self.name!r} root={self.root.name!r} gen={self.generation}>"


def _split(offset: int, length: int, largest: int) -> Iterator[tuple[int, int]]:
    """Cut ``length`` bytes at ``offset`` into naturally aligned accesses of 1/2/4/8 bytes, none
    larger than ``largest`` (QEMU's memory_access_size for accesses that cross sections)."""
    while length:
        n = largest
        while n > length or offset & (n - 1):
            n >>= 1
        yield offset, n
        offset += n
        length -= n

