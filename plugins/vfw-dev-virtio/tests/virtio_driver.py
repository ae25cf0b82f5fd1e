"""A virtio 1.x PCI driver written for the tests: it plays the guest.

It programs the device exactly as a vCPU would: configuration space through ports
0xcf8/0xcfc, the virtio structures through MMIO on the machine's memory address space, and
rings and buffers laid out in guest RAM. Nothing here calls device internals. Like a CPU, it
stores into guest RAM directly (a view of the RAM section it allocates from), so that the
benchmark measures the device rather than the DMA helpers of the address space.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from vfw.cmdline import parse_command_line
from vfw.qom import reset_root
from vfw.testing import kvm_usable
from vfw.vl import build

STATUS_ACK, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK = 1, 2, 4, 8
STATUS_NEEDS_RESET, STATUS_FAILED = 64, 128
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED = struct.Struct("<II")
VERSION_1, INDIRECT_DESC, EVENT_IDX = 32, 28, 29
_STRUCTS: dict[str, struct.Struct] = {}


def _structs(fmt: str) -> struct.Struct:
    """A compiled struct.Struct, made once per format (runs of ring entries)."""
    s = _STRUCTS.get(fmt)
    if s is None:
        s = _STRUCTS[fmt] = struct.Struct(fmt)
    return s


def accel_name() -> str:
    """KVM where /dev/kvm works, else TCG: building the machine does not run it."""
    return "kvm" if kvm_usable()[0] else "tcg"


def make_machine(*extra: str, mem: str = "64M") -> Any:
    """A pc machine built (not run) with ``extra`` command-line arguments (the previous
    test machine is finalised first)."""
    reset_root()
    return build(parse_command_line(["-M", "pc", "-accel", accel_name(), "-m", mem, *extra]))


class Guest:
    """Guest RAM and the CPU's view of I/O: a bump allocator plus port/MMIO accessors."""

    def __init__(self, machine: Any, base: int = 0x100000):
        self.machine = machine
        self.mem = machine.address_space_memory
        self.io = machine.address_space_io
        self.base = base
        self.next = base
        self.limit = machine.ram_size
        found = self.mem.ram_section_at(base)
        assert found is not None, "test guest RAM must start in a RAM section"
        start, size, view = found
        #: The RAM section allocations come from: [start, end) and its host memory.
        self.ram_start, self.ram_end, self.ram = start, start + size, view
        self.limit = min(self.limit, self.ram_end)

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.limit:
            raise MemoryError("test guest RAM exhausted")
        self.next = addr + size
        return addr

    def free_all(self) -> None:
        self.next = self.base

    def write(self, addr: int, data: bytes) -> None:
        off = addr - self.ram_start
        if off >= 0 and addr + len(data) <= self.ram_end:
            self.ram[off:off + len(data)] = data
        else:
            self.mem.write_bytes(addr, data)

    def read(self, addr: int, n: int) -> bytes:
        off = addr - self.ram_start
        if off >= 0 and addr + n <= self.ram_end:
            return self.ram[off:off + n].tobytes()
        return bytes(self.mem.read_bytes(addr, n))

    def pack(self, fmt: struct.Struct, addr: int, *values: int) -> None:
        """Store ``values`` at ``addr`` in guest RAM (a CPU store, no copy through bytes)."""
        off = addr - self.ram_start
        if off >= 0 and addr + fmt.size <= self.ram_end:
            fmt.pack_into(self.ram, off, *values)
        else:
            self.write(addr, fmt.pack(*values))

    def unpack(self, fmt: struct.Struct, addr: int) -> tuple[Any, ...]:
        off = addr - self.ram_start
        if off >= 0 and addr + fmt.size <= self.ram_end:
            return fmt.unpack_from(self.ram, off)
        return fmt.unpack(self.read(addr, fmt.size))

    # PCI configuration mechanism #1
    def cfg_read(self, devfn: int, off: int, size: int) -> int:
        self.io.write(0xCF8, 0x80000000 | devfn << 8 | (off & 0xFC), 4)
        return int(self.io.read(0xCFC + (off & 3), size))

    def cfg_write(self, devfn: int, off: int, value: int, size: int) -> None:
        self.io.write(0xCF8, 0x80000000 | devfn << 8 | (off & 0xFC), 4)
        self.io.write(0xCFC + (off & 3), value, size)


@dataclass
class UsedElem:
    head: int
    length: int


@dataclass
class DriverQueue:
    """The driver side of one split queue in guest RAM."""

    guest: Guest
    index: int
    size: int
    desc: int
    avail: int
    used: int
    notify_addr: int
    avail_idx: int = 0
    last_used: int = 0
    kicked_idx: int = 0
    free: list[int] = field(default_factory=list)
    chains: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Popped in ascending order, like a fresh Linux ring (desc[i].next = i + 1).
        self.free = list(range(self.size - 1, -1, -1))

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.guest.pack(_DESC, self.desc + 16 * i, addr, length, flags, nxt)

    def add(self, out: list[tuple[int, int]], in_: list[tuple[int, int]],
            indirect: bool = False) -> int:
        """Queue a chain (device-readable ``out`` then device-writable ``in_`` buffers)."""
        bufs = [(a, n, 0) for a, n in out] + [(a, n, F_WRITE) for a, n in in_]
        if indirect:
            table = self.guest.alloc(16 * len(bufs), 16)
            for i, (a, n, fl) in enumerate(bufs):
                nxt = i + 1 if i + 1 < len(bufs) else 0
                self.guest.pack(_DESC, table + 16 * i, a, n,
                                fl | (F_NEXT if i + 1 < len(bufs) else 0), nxt)
            head = self.free.pop()
            self.write_desc(head, table, 16 * len(bufs), F_INDIRECT, 0)
            self.chains[head] = [head]
        else:
            idx = [self.free.pop() for _ in bufs]
            for k, (a, n, fl) in enumerate(bufs):
                last = k + 1 == len(bufs)
                self.write_desc(idx[k], a, n, fl | (0 if last else F_NEXT),
                                0 if last else idx[k + 1])
            head = idx[0]
            self.chains[head] = idx
        self.put_avail(head)
        return head

    def prepare(self, out: list[tuple[int, int]], in_: list[tuple[int, int]]) -> int:
        """Write a chain that stays reserved for reuse (a driver with fixed request slots,
        e.g. the benchmark): submit it any number of times with :meth:`put_avail`; the
        device walks and checks it anew each time."""
        head = self.add(out, in_)
        self.avail_idx = (self.avail_idx - 1) & 0xFFFF  # add() queued it: take that back
        del self.chains[head]  # never returned to the free list
        return head

    def put_avail_many(self, heads: list[int]) -> None:
        """:meth:`put_avail` for several chains: consecutive ring slots in one store each
        side of the wrap (not published until :meth:`publish`)."""
        g, size = self.guest, self.size
        slot = self.avail_idx % size
        first = heads[:size - slot]
        g.pack(_structs(f"<{len(first)}H"), self.avail + 4 + 2 * slot, *first)
        if len(heads) > len(first):
            rest = heads[len(first):]
            g.pack(_structs(f"<{len(rest)}H"), self.avail + 4, *rest)
        self.avail_idx = (self.avail_idx + len(heads)) & 0xFFFF

    def reap(self) -> list[tuple[int, int]]:
        """(head, length) of every used element since the last call, without freeing
        descriptors (for chains from :meth:`prepare`)."""
        end = self.used_idx()
        n = (end - self.last_used) & 0xFFFF
        out: list[tuple[int, int]] = []
        slot = self.last_used % self.size
        while n:  # consecutive used slots in one load each side of the wrap
            k = min(n, self.size - slot)
            flat = self.guest.unpack(_structs(f"<{2 * k}I"), self.used + 4 + 8 * slot)
            out.extend(zip(flat[0::2], flat[1::2], strict=True))
            n -= k
            slot = 0
        self.last_used = end
        return out

    def reap_flat(self) -> tuple[int, ...]:
        """:meth:`reap` as one flat tuple (head, length, head, length, ...): the used ring
        read with one load each side of the wrap, no tuple per element (the benchmarks)."""
        end = self.used_idx()
        n = (end - self.last_used) & 0xFFFF
        slot = self.last_used % self.size
        self.last_used = end
        k = min(n, self.size - slot)
        flat = self.guest.unpack(_structs(f"<{2 * k}I"), self.used + 4 + 8 * slot)
        if n > k:
            flat += self.guest.unpack(_structs(f"<{2 * (n - k)}I"), self.used + 4)
        return flat

    def put_avail(self, head: int) -> None:
        self.guest.pack(_U16, self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def publish(self) -> None:
        self.guest.pack(_U16, self.avail + 2, self.avail_idx)

    def kick(self) -> None:
        self.guest.mem.write(self.notify_addr, self.index, 2)

    def kick_if_needed(self, event_idx: bool) -> bool:
        """Kick only if the device wants it, as Linux's virtqueue_kick_prepare decides: with
        EVENT_IDX when the chains published since the last decision pass the device's
        avail_event, else unless it set VRING_USED_F_NO_NOTIFY. Returns whether it kicked."""
        old, new = self.kicked_idx, self.avail_idx
        self.kicked_idx = new
        if event_idx:
            event = self.guest.unpack(_U16, self.used + 4 + 8 * self.size)[0]
            need = ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        else:
            need = not self.guest.unpack(_U16, self.used)[0] & 1
        if need:
            self.kick()
        return need

    def used_idx(self) -> int:
        return int(self.guest.unpack(_U16, self.used + 2)[0])

    def get_used(self) -> list[UsedElem]:
        out: list[UsedElem] = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.last_used % self.size
            head, length = self.guest.unpack(_USED, self.used + 4 + 8 * slot)
            out.append(UsedElem(head, length))
            self.free.extend(self.chains.pop(head, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def set_used_event(self, value: int) -> None:
        self.guest.pack(_U16, self.avail + 4 + 2 * self.size, value)


class VirtioPCIDriver:
    """Finds the virtio structures of a virtio-pci function and drives them by MMIO."""

    def __init__(self, guest: Guest, dev: Any, bar_base: int | None = None):
        self.guest = guest
        self.dev = dev
        self.devfn = dev.devfn
        if bar_base is None:
            bar_base = 0xF0000000 + 0x20000 * (dev.devfn >> 3)
        # Assign BARs like firmware: BAR1 (MSI-X) and BAR4 (64-bit), then enable decoding.
        g, d = guest, self.devfn
        g.cfg_write(d, 0x10 + 4 * 1, bar_base + 0x10000, 4)
        g.cfg_write(d, 0x10 + 4 * 4, bar_base, 4)
        g.cfg_write(d, 0x10 + 4 * 5, 0, 4)
        g.cfg_write(d, 0x04, 0x0006, 2)  # memory + bus master
        self.msix_base = bar_base + 0x10000
        self.caps: dict[int, int] = {}
        self.notify_mult = 0
        self.cfg_cap = 0
        pos = g.cfg_read(d, 0x34, 1)
        hops = 0
        while pos and hops < 48:
            cap_id = g.cfg_read(d, pos, 1)
            if cap_id == 0x09:
                cfg_type = g.cfg_read(d, pos + 3, 1)
                bar = g.cfg_read(d, pos + 4, 1)
                off = g.cfg_read(d, pos + 8, 4)
                base = g.cfg_read(d, 0x10 + 4 * bar, 4) & ~0xF
                if cfg_type == 5:
                    self.cfg_cap = pos
                elif cfg_type not in self.caps:
                    self.caps[cfg_type] = base + off
                if cfg_type == 2:
                    self.notify_mult = g.cfg_read(d, pos + 16, 4)
            elif cap_id == 0x11:
                self.msix_cap = pos
            pos = g.cfg_read(d, pos + 1, 1)
            hops += 1
        self.common = self.caps[1]
        self.queues: dict[int, DriverQueue] = {}

    # register access
    def cr(self, off: int, size: int) -> int:
        return int(self.guest.mem.read(self.common + off, size))

    def cw(self, off: int, value: int, size: int) -> None:
        self.guest.mem.write(self.common + off, value, size)

    def config_read(self, off: int, size: int) -> int:
        return int(self.guest.mem.read(self.caps[4] + off, size))

    def isr(self) -> int:
        return int(self.guest.mem.read(self.caps[3], 1))

    @property
    def status(self) -> int:
        return self.cr(0x14, 1)

    def device_features(self) -> int:
        self.cw(0x00, 0, 4)
        lo = self.cr(0x04, 4)
        self.cw(0x00, 1, 4)
        return lo | self.cr(0x04, 4) << 32

    def reset(self) -> None:
        self.cw(0x14, 0, 1)
        assert self.status == 0
        self.queues.clear()

    def negotiate(self, want: int | None = None) -> int:
        """Reset, ACK, DRIVER, accept ``want`` & offered (default: all offered)."""
        self.reset()
        self.cw(0x14, STATUS_ACK, 1)
        self.cw(0x14, STATUS_ACK | STATUS_DRIVER, 1)
        offered = self.device_features()
        feats = offered if want is None else offered & want
        self.cw(0x08, 0, 4)
        self.cw(0x0C, feats & 0xFFFFFFFF, 4)
        self.cw(0x08, 1, 4)
        self.cw(0x0C, feats >> 32, 4)
        self.cw(0x14, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK, 1)
        assert self.status & STATUS_FEATURES_OK
        self.features = feats
        return feats

    def setup_queue(self, index: int, size: int | None = None, *, vector: int = 0xFFFF
                    ) -> DriverQueue:
        self.cw(0x16, index, 2)
        maxsize = self.cr(0x18, 2)
        size = size or maxsize
        self.cw(0x18, size, 2)
        g = self.guest
        desc = g.alloc(16 * size, 4096)
        avail = g.alloc(6 + 2 * size, 2)
        used = g.alloc(6 + 8 * size, 4096)
        g.write(desc, bytes(16 * size))
        g.write(avail, bytes(6 + 2 * size))
        g.write(used, bytes(6 + 8 * size))
        for off, val in ((0x20, desc), (0x28, avail), (0x30, used)):
            self.cw(off, val & 0xFFFFFFFF, 4)
            self.cw(off + 4, val >> 32, 4)
        self.cw(0x1A, vector, 2)
        notify_off = self.cr(0x1E, 2)
        self.cw(0x1C, 1, 2)
        q = DriverQueue(g, index, size, desc, avail, used,
                        self.caps[2] + notify_off * self.notify_mult)
        self.queues[index] = q
        return q

    def driver_ok(self) -> None:
        self.cw(0x14, self.status | STATUS_DRIVER_OK, 1)

    def enable_msix(self) -> None:
        """Enable MSI-X with vector i → address 0xfee00000, data 0x40 + i, unmasked."""
        d = self.devfn
        n = (self.guest.cfg_read(d, self.msix_cap + 2, 2) & 0x7FF) + 1
        for i in range(n):
            e = self.msix_base + 16 * i
            self.guest.mem.write(e, 0xFEE00000, 4)
            self.guest.mem.write(e + 4, 0, 4)
            self.guest.mem.write(e + 8, 0x40 + i, 4)
            self.guest.mem.write(e + 12, 0, 4)
        self.guest.cfg_write(d, self.msix_cap + 2, 0x8000 | (n - 1), 2)
