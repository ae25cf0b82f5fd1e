"""Tests for vfw.memory: regions, rendering, dispatch, DMA, listeners, transactions."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import mmap
import os
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfw.errors import GuestMemoryError
from vfw.memory import (
    ADDR_LIMIT,
    AddressSpace,
    MemoryListener,
    MemoryRegion,
    RegionKind,
    Section,
    memory_transaction,
)

PAGE = mmap.PAGESIZE


class Device:
    """An I/O region's callbacks that record every access and answer from a register file."""

    def __init__(self, size: int = 0x100) -> None:
        self.mem = bytearray(size + 8)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return int.from_bytes(self.mem[offset:offset + size], "little")

    def write(self, offset: int, value: int, size: int) -> None:
        self.writes.append((offset, value, size))
        self.mem[offset:offset + size] = value.to_bytes(size, "little")

    def region(self, name: str, size: int, **kw: object) -> MemoryRegion:
        return MemoryRegion.io(name, size, self.read, self.write, **kw)  # type: ignore[arg-type]


class Recorder(MemoryListener):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def begin(self) -> None:
        self.events.append(("begin",))

    def commit(self) -> None:
        self.events.append(("commit",))

    def region_add(self, section: Section) -> None:
        self.events.append(("add", section.start, section.size, section.region.name,
                            section.offset_in_region, section.readonly))

    def region_del(self, section: Section) -> None:
        self.events.append(("del", section.start, section.size, section.region.name,
                            section.offset_in_region, section.readonly))

    def eventfd_add(self, addr: int, size: int, data: int | None, fd: int) -> None:
        self.events.append(("evadd", addr, size, data, fd))

    def eventfd_del(self, addr: int, size: int, data: int | None, fd: int) -> None:
        self.events.append(("evdel", addr, size, data, fd))

    def take(self) -> list[tuple[object, ...]]:
        out, self.events = self.events, []
        return out


def owner(space: AddressSpace, addr: int) -> tuple[str, int] | None:
    s = space.translate(addr)
    if s is None:
        return None
    return s.region.name, addr - s.start + s.offset_in_region


def layout(space: AddressSpace) -> list[tuple[int, int, str, int]]:
    return [(s.start, s.size, s.region.name, s.offset_in_region) for s in space.sections]


def machine(size: int = 1 << 64) -> tuple[MemoryRegion, AddressSpace]:
    root = MemoryRegion.container("system", size)
    return root, AddressSpace("memory", root)


# --- regions --------------------------------------------------------------------------------


def test_ram_region_is_shareable_host_memory() -> None:
    ram = MemoryRegion.ram("pc.ram", 4 * PAGE)
    assert ram.kind is RegionKind.RAM and ram.is_ram and not ram.readonly
    assert ram.size == 4 * PAGE and ram.name == "pc.ram"
    assert len(ram.view) == 4 * PAGE and not ram.view.readonly
    ram.view[10] = 0x5A
    assert ctypes.c_uint8.from_address(ram.host_address + 10).value == 0x5A
    ctypes.c_uint8.from_address(ram.host_address + 11).value = 0xA5
    assert ram.view[11] == 0xA5


@pytest.mark.parametrize("size", [0, 1, PAGE + 1, -PAGE])
def test_ram_size_must_be_whole_pages(size: int) -> None:
    with pytest.raises(ValueError):
        MemoryRegion.ram("bad", size)


def test_non_ram_regions_have_no_host_memory() -> None:
    dev = Device()
    for mr in (dev.region("io", 16), MemoryRegion.container("c", 16)):
        assert not mr.is_ram
        with pytest.raises(TypeError):
            mr.view  # noqa: B018
        with pytest.raises(TypeError):
            mr.host_address  # noqa: B018


def test_bad_io_sizes_are_rejected() -> None:
    dev = Device()
    with pytest.raises(ValueError):
        dev.region("io", 16, valid_sizes=(3, 4))
    with pytest.raises(ValueError):
        dev.region("io", 16, impl_sizes=(4, 2))


def test_subregion_misuse() -> None:
    a = MemoryRegion.container("a", 0x100)
    b = MemoryRegion.container("b", 0x100)
    a.add_subregion(0, b)
    with pytest.raises(ValueError, match="already mapped"):
        MemoryRegion.container("c", 0x100).add_subregion(0, b)
    with pytest.raises(ValueError, match="cycle"):
        b.add_subregion(0, a)
    with pytest.raises(ValueError, match="cycle"):
        a.add_subregion(0, a)
    alias_of_a = MemoryRegion.alias("alias-a", a, 0, 0x10)
    with pytest.raises(ValueError, match="cycle"):
        b.add_subregion(0, alias_of_a)  # b -> alias -> a -> b
    with pytest.raises(ValueError):
        alias_of_a.add_subregion(0, MemoryRegion.container("x", 1))
    with pytest.raises(ValueError):
        b.del_subregion(MemoryRegion.container("stranger", 1))
    with pytest.raises(ValueError):
        a.add_subregion(-1, MemoryRegion.container("neg", 1))
    with pytest.raises(ValueError):
        a.add_subregion(ADDR_LIMIT, MemoryRegion.container("far", 1))


# --- rendering ------------------------------------------------------------------------------


def test_higher_priority_wins() -> None:
    root, space = machine()
    dev = Device()
    ram = MemoryRegion.ram("ram", PAGE)
    io = dev.region("io", 0x100)
    root.add_subregion(0, ram)
    root.add_subregion(0x80, io, priority=1)
    assert layout(space) == [(0, 0x80, "ram", 0), (0x80, 0x100, "io", 0),
                             (0x180, PAGE - 0x180, "ram", 0x180)]
    root.del_subregion(io)
    root.add_subregion(0x80, io, priority=-1)
    assert layout(space) == [(0, PAGE, "ram", 0)]


def test_equal_priority_later_added_wins() -> None:
    root, space = machine(0x1000)
    dev = Device()
    first = dev.region("first", 0x100)
    second = dev.region("second", 0x100)
    root.add_subregion(0, first)
    root.add_subregion(0x80, second)
    assert owner(space, 0x90) == ("second", 0x10)
    # moving re-adds the region (QEMU semantics): the moved one is now the latest
    first.set_address(0x40)
    assert owner(space, 0x90) == ("first", 0x50)
    assert owner(space, 0x100) == ("first", 0xC0)
    assert owner(space, 0x150) == ("second", 0xD0)
    assert owner(space, 0x20) is None


def test_qemu_doc_example_pure_container_is_transparent() -> None:
    # docs/devel/memory.rst, "Overlapping regions and priority"
    a = MemoryRegion.container("A", 0x8000)
    space = AddressSpace("as", a)
    dev = Device()
    b = MemoryRegion.container("B", 0x4000)
    c = dev.region("C", 0x6000)
    a.add_subregion(0x2000, b, priority=2)
    a.add_subregion(0, c, priority=1)
    b.add_subregion(0, dev.region("D", 0x1000))
    b.add_subregion(0x2000, dev.region("E", 0x1000))
    assert layout(space) == [(0, 0x2000, "C", 0), (0x2000, 0x1000, "D", 0),
                             (0x3000, 0x1000, "C", 0x3000), (0x4000, 0x1000, "E", 0),
                             (0x5000, 0x1000, "C", 0x5000)]


def test_qemu_doc_example_io_region_with_subregions_shows_in_holes() -> None:
    a = MemoryRegion.container("A", 0x8000)
    space = AddressSpace("as", a)
    dev = Device()
    b = dev.region("B", 0x4000)
    a.add_subregion(0x2000, b, priority=2)
    a.add_subregion(0, dev.region("C", 0x6000), priority=1)
    b.add_subregion(0, dev.region("D", 0x1000))
    b.add_subregion(0x2000, dev.region("E", 0x1000))
    assert layout(space) == [(0, 0x2000, "C", 0), (0x2000, 0x1000, "D", 0),
                             (0x3000, 0x1000, "B", 0x1000), (0x4000, 0x1000, "E", 0),
                             (0x5000, 0x1000, "B", 0x3000)]


def test_subregions_are_clipped_to_their_container() -> None:
    root, space = machine(0x10000)
    bus = MemoryRegion.container("bus", 0x1000)
    root.add_subregion(0x4000, bus)
    ram = MemoryRegion.ram("big", 4 * PAGE)
    bus.add_subregion(0x800, ram)
    assert layout(space) == [(0x4800, 0x800, "big", 0)]
    # the address space's root clips too
    root.add_subregion(0xF000, MemoryRegion.ram("top", 4 * PAGE))
    assert layout(space)[-1] == (0xF000, 0x1000, "top", 0)


def test_alias_maps_into_target_with_offset() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("pc.ram", 4 * PAGE)
    lo = MemoryRegion.alias("ram-below-4g", ram, 0, 2 * PAGE)
    hi = MemoryRegion.alias("ram-above-4g", ram, 2 * PAGE, 2 * PAGE)
    root.add_subregion(0, lo)
    root.add_subregion(1 << 32, hi)
    assert layout(space) == [(0, 2 * PAGE, "pc.ram", 0),
                             ((1 << 32), 2 * PAGE, "pc.ram", 2 * PAGE)]
    space.write((1 << 32) + 8, 0x1122334455667788, 8)
    assert ram.view[2 * PAGE + 8] == 0x88
    s = space.translate(1 << 32)
    assert s is not None and s.host_address == ram.host_address + 2 * PAGE
    assert lo.alias_target is ram and hi.alias_offset == 2 * PAGE


def test_alias_clips_and_ignores_target_placement() -> None:
    root, space = machine(0x100000)
    dev = Device(0x2000)
    pci = MemoryRegion.container("pci", 1 << 32)
    bar = dev.region("bar", 0x1000)
    pci.add_subregion(0xE000_0000, bar)
    hole = MemoryRegion.alias("pci-hole", pci, 0xE000_0000, 0x800)
    root.add_subregion(0x10000, hole)
    assert layout(space) == [(0x10000, 0x800, "bar", 0)]
    # a BAR moved outside the window disappears from the system view
    bar.set_address(0xD000_0000)
    assert layout(space) == []
    # alias of an alias of a RAM region, with offsets adding up
    ram = MemoryRegion.ram("ram", 2 * PAGE)
    inner = MemoryRegion.alias("inner", ram, 0x100, PAGE)
    outer = MemoryRegion.alias("outer", inner, 0x10, 0x20)
    root.add_subregion(0x40000, outer)
    assert owner(space, 0x40000) == ("ram", 0x110)
    assert owner(space, 0x4001F) == ("ram", 0x12F)
    assert owner(space, 0x40020) is None


def test_alias_to_disabled_region_shows_nothing() -> None:
    root, space = machine(0x10000)
    ram = MemoryRegion.ram("ram", PAGE)
    root.add_subregion(0x2000, MemoryRegion.alias("window", ram, 0, PAGE))
    assert owner(space, 0x2000) == ("ram", 0)
    ram.set_enabled(False)
    assert space.translate(0x2000) is None
    ram.set_enabled(True)
    assert owner(space, 0x2001) == ("ram", 1)
    alias = MemoryRegion.alias("window2", ram, 0, 0x10)
    alias.set_alias_offset(0x20)
    root.add_subregion(0x8000, alias)
    assert owner(space, 0x8000) == ("ram", 0x20)
    alias.set_alias_offset(0x40)
    assert owner(space, 0x8000) == ("ram", 0x40)
    with pytest.raises(TypeError):
        ram.set_alias_offset(0)


def test_set_enabled_hides_subtree() -> None:
    root, space = machine(0x10000)
    dev = Device()
    vga = MemoryRegion.container("vga", 0x2000)
    vga.add_subregion(0x100, dev.region("regs", 0x10))
    low = MemoryRegion.ram("low", 0x10000)
    root.add_subregion(0, low)
    root.add_subregion(0xA000, vga, priority=1)
    assert owner(space, 0xA100) == ("regs", 0)
    assert owner(space, 0xA000) == ("low", 0xA000)  # transparent container
    gen = space.generation
    vga.set_enabled(False)
    assert owner(space, 0xA100) == ("low", 0xA100)
    assert layout(space) == [(0, 0x10000, "low", 0)]  # merged back into one section
    assert space.generation == gen + 1
    vga.set_enabled(False)  # no change, no new view
    assert space.generation == gen + 1
    assert not vga.enabled


def test_pci_bar_moves() -> None:
    root, space = machine()
    dev = Device(0x1000)
    bar = dev.region("bar0", 0x1000)
    root.add_subregion(0xFEB0_0000, bar, priority=1)
    space.write(0xFEB0_0010, 0xAB, 1)
    gen = space.generation
    bar.set_address(0xFEC0_0000)
    assert space.generation == gen + 1
    assert bar.address == 0xFEC0_0000 and bar.priority == 1
    assert space.translate(0xFEB0_0010) is None
    assert space.read(0xFEC0_0010, 1) == 0xAB
    assert dev.writes == [(0x10, 0xAB, 1)] and dev.reads == [(0x10, 1)]
    # an unmapped region just remembers its address
    loose = dev.region("loose", 0x10)
    loose.set_address(0x1234)
    assert loose.address == 0x1234 and loose.container_region is None


def test_readonly_alias_and_set_readonly() -> None:
    root, space = machine(0x100000)
    ram = MemoryRegion.ram("ram", 2 * PAGE)
    root.add_subregion(0, ram)
    shadow = MemoryRegion.alias("shadow", ram, 0, PAGE)
    shadow.set_readonly(True)
    root.add_subregion(0x10000, shadow)
    s = space.translate(0x10000)
    assert s is not None and s.readonly
    space.write(0x10000, 0xFF, 1)
    assert ram.view[0] == 0
    ram.set_readonly(True)
    assert all(s.readonly for s in space.sections)
    with pytest.raises(TypeError):
        MemoryRegion.container("c", 1).set_readonly(True)


# --- accesses ---------------------------------------------------------------------------------


def test_ram_reads_and_writes_are_little_endian() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", PAGE)
    root.add_subregion(0x10000, ram)
    space.write(0x10000, 0x0807060504030201, 8)
    assert bytes(ram.view[:8]) == bytes(range(1, 9))
    assert space.read(0x10000, 1) == 0x01
    assert space.read(0x10001, 2) == 0x0302
    assert space.read(0x10003, 4) == 0x07060504
    assert space.read(0x10000, 8) == 0x0807060504030201
    space.write(0x10004, 0x1_FFFF_ABCD, 2)  # only the low bytes are written
    assert space.read(0x10000, 8) == 0x0807ABCD04030201
    space.write(0x10000, -1, 4)
    assert space.read(0x10000, 4) == 0xFFFFFFFF


def test_rom_is_read_only_for_the_guest(caplog: pytest.LogCaptureFixture) -> None:
    root, space = machine()
    bios = MemoryRegion.rom("pc.bios", PAGE)
    assert bios.readonly and bios.kind is RegionKind.ROM
    bios.view[:4] = b"\xea\x5b\xe0\x00"  # the host fills it
    root.add_subregion(0xFFFF_F000, bios)
    assert space.read(0xFFFF_F000, 4) == 0x00E05BEA
    with caplog.at_level(logging.DEBUG, logger="vfw.guest_errors"):
        space.write(0xFFFF_F000, 0, 4)
        space.write_bytes(0xFFFF_F000, b"\0\0")
    assert space.read(0xFFFF_F000, 4) == 0x00E05BEA
    assert len(caplog.records) == 2
    assert all(r.name == "vfw.guest_errors" for r in caplog.records)


def test_unassigned_accesses_are_all_ones_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    _root, space = machine()
    with caplog.at_level(logging.DEBUG, logger="vfw.guest_errors"):
        assert space.read(0x1000, 1) == 0xFF
        assert space.read(0x1000, 2) == 0xFFFF
        assert space.read(0x1000, 4) == 0xFFFFFFFF
        assert space.read(ADDR_LIMIT - 8, 8) == (1 << 64) - 1
        space.write(0x1000, 0x12345678, 4)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 5
    assert "unassigned write" in caplog.records[-1].getMessage()


def test_partly_assigned_access_mixes_bytes_and_ones() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", PAGE)
    root.add_subregion(0, ram)
    ram.view[PAGE - 2:PAGE] = b"\x11\x22"
    assert space.read(PAGE - 2, 4) == 0xFFFF2211
    space.write(PAGE - 1, 0xAABB, 2)
    assert ram.view[PAGE - 1] == 0xBB
    # RAM followed by an I/O region: the I/O part goes through the callbacks
    dev = Device()
    root.add_subregion(PAGE, dev.region("io", 0x10))
    dev.mem[0:2] = b"\x33\x44"
    assert space.read(PAGE - 2, 4) == 0x4433BB11
    assert dev.reads == [(0, 2)]
    space.write(PAGE - 1, 0x01020304, 4)
    assert dev.writes == [(0, 0x0203, 2), (2, 0x01, 1)]  # split into aligned pieces
    assert ram.view[PAGE - 1] == 0x04


def test_io_offsets_are_region_relative() -> None:
    root, space = machine(0x10000)
    dev = Device()
    serial = dev.region("serial", 8)
    root.add_subregion(0x3F8, serial)
    space.write(0x3FD, 0x60, 1)
    assert space.read(0x3FD, 1) == 0x60
    assert dev.writes == [(5, 0x60, 1)] and dev.reads == [(5, 1)]
    root.add_subregion(0x2F8, MemoryRegion.alias("serial-alias", serial, 4, 4))
    assert space.read(0x2F9, 1) == 0x60
    assert dev.reads[-1] == (5, 1)


def test_wide_access_is_split_into_impl_sized_pieces() -> None:
    root, space = machine(0x10000)
    dev = Device()
    root.add_subregion(0x1000, dev.region("regs", 0x10, impl_sizes=(1, 4)))
    space.write(0x1000, 0x1122334455667788, 8)
    assert dev.writes == [(0, 0x55667788, 4), (4, 0x11223344, 4)]
    assert space.read(0x1000, 8) == 0x1122334455667788
    assert dev.reads == [(0, 4), (4, 4)]
    dev.reads.clear()
    assert space.read(0x1002, 2) == 0x5566  # within impl sizes: passed as is
    assert dev.reads == [(2, 2)]


def test_byte_wide_implementation() -> None:
    root, space = machine(0x10000)
    dev = Device()
    root.add_subregion(0x1000, dev.region("regs", 0x10, impl_sizes=(1, 1)))
    space.write(0x1000, 0xAABBCCDD, 4)
    assert dev.writes == [(0, 0xDD, 1), (1, 0xCC, 1), (2, 0xBB, 1), (3, 0xAA, 1)]
    assert space.read(0x1001, 2) == 0xBBCC


def test_narrow_access_is_widened_like_qemu() -> None:
    root, space = machine(0x10000)
    dev = Device()
    root.add_subregion(0x1000, dev.region("regs", 0x10, impl_sizes=(4, 4)))
    dev.mem[0:4] = b"\x01\x02\x03\x04"
    assert space.read(0x1000, 1) == 0x01
    assert space.read(0x1000, 2) == 0x0201
    assert dev.reads == [(0, 4), (0, 4)]
    space.write(0x1000, 0x1FF, 2)  # written zero-extended to 4 bytes (no read-modify-write)
    assert dev.writes == [(0, 0x1FF, 4)]


def test_invalid_sizes_are_rejected(caplog: pytest.LogCaptureFixture) -> None:
    root, space = machine(0x10000)
    dev = Device()
    root.add_subregion(0x1000, dev.region("regs", 0x10, valid_sizes=(4, 4)))
    dev.mem[0:8] = bytes(range(8))
    with caplog.at_level(logging.DEBUG, logger="vfw.guest_errors"):
        assert space.read(0x1000, 1) == 0xFF
        assert space.read(0x1000, 8) == (1 << 64) - 1
        space.write(0x1000, 0, 2)
    assert dev.reads == [] and dev.writes == []
    assert len(caplog.records) == 3
    assert "invalid read of size 1" in caplog.records[0].getMessage()
    assert space.read(0x1000, 4) == 0x03020100


def test_unaligned_accesses_can_be_refused() -> None:
    root, space = machine(0x10000)
    dev = Device()
    root.add_subregion(0x1000, dev.region("strict", 0x10, unaligned=False))
    root.add_subregion(0x2000, dev.region("lax", 0x10))
    assert space.read(0x1002, 4) == 0xFFFFFFFF
    assert space.read(0x2002, 4) == 0
    assert dev.reads == [(2, 4)]


def test_callback_results_are_masked() -> None:
    root, space = machine(0x10000)
    root.add_subregion(0, MemoryRegion.io("ones", 0x10, lambda o, s: -1, lambda o, v, s: None))
    assert space.read(0, 2) == 0xFFFF
    assert space.read(0, 8) == (1 << 64) - 1


@pytest.mark.parametrize(("addr", "size"), [(-1, 1), (-(1 << 70), 4), (ADDR_LIMIT, 1),
                                            (ADDR_LIMIT - 2, 4), (ADDR_LIMIT - 1, 8),
                                            (1 << 80, 8)])
def test_hostile_addresses_raise_guest_memory_error(addr: int, size: int) -> None:
    root, space = machine()
    root.add_subregion(0, MemoryRegion.ram("ram", PAGE))
    with pytest.raises(GuestMemoryError):
        space.read(addr, size)
    with pytest.raises(GuestMemoryError):
        space.write(addr, 0, size)
    with pytest.raises(GuestMemoryError):
        space.read_bytes(addr, size)
    with pytest.raises(GuestMemoryError):
        space.write_bytes(addr, bytes(size))
    with pytest.raises(GuestMemoryError):
        space.ram_view(addr, size)


def test_last_bytes_of_the_address_space() -> None:
    root, space = machine()
    root.add_subregion(ADDR_LIMIT - PAGE, MemoryRegion.ram("top", PAGE))
    space.write(ADDR_LIMIT - 8, 0x0123456789ABCDEF, 8)
    assert space.read(ADDR_LIMIT - 8, 8) == 0x0123456789ABCDEF
    assert space.read(ADDR_LIMIT - 1, 1) == 0x01
    assert len(space.ram_view(ADDR_LIMIT - PAGE, PAGE)) == PAGE
    assert space.ram_view(ADDR_LIMIT, 0).nbytes == 0
    with pytest.raises(GuestMemoryError):
        space.translate(ADDR_LIMIT)
    with pytest.raises(GuestMemoryError):
        space.translate(-1)


@pytest.mark.parametrize("size", [0, 3, 16])
def test_bad_access_sizes_are_bugs(size: int) -> None:
    root, space = machine()
    root.add_subregion(0, MemoryRegion.ram("ram", PAGE))
    root.add_subregion(PAGE, Device().region("io", 0x10))
    for addr in (0, PAGE, 2 * PAGE):
        with pytest.raises(ValueError):
            space.read(addr, size)
        with pytest.raises(ValueError):
            space.write(addr, 0, size)


# --- DMA --------------------------------------------------------------------------------------


def test_ram_view_is_zero_copy_and_bounded() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", 2 * PAGE)
    root.add_subregion(0x100000, ram)
    view = space.ram_view(0x100010, 16)
    view[:] = b"A" * 16
    assert bytes(ram.view[0x10:0x20]) == b"A" * 16
    assert len(space.ram_view(0x100000, 2 * PAGE)) == 2 * PAGE
    assert len(space.ram_view(0x200000, 0)) == 0  # empty: anywhere valid
    for addr, length in [(0x100000 + 2 * PAGE - 1, 2), (0xFFFFF, 2), (0x100000 + 2 * PAGE, 1),
                         (0x100000, -1), (0x100000, 1 << 64), (ADDR_LIMIT - 1, 2),
                         (-5, 1), (0, 1)]:
        with pytest.raises(GuestMemoryError, match="0x"):
            space.ram_view(addr, length)


def test_ram_view_needs_one_section() -> None:
    root, space = machine()
    root.add_subregion(0, MemoryRegion.ram("a", PAGE))
    root.add_subregion(PAGE, MemoryRegion.ram("b", PAGE))
    with pytest.raises(GuestMemoryError, match=f"0x{PAGE - 4:x}\\+0x8"):
        space.ram_view(PAGE - 4, 8)
    views = space.ram_views(PAGE - 4, 8)
    assert [len(v) for v in views] == [4, 4]


def test_ram_view_of_rom() -> None:
    root, space = machine()
    rom = MemoryRegion.rom("rom", PAGE)
    rom.view[0] = 7
    root.add_subregion(0xF0000, rom)
    with pytest.raises(GuestMemoryError, match="read-only"):
        space.ram_view(0xF0000, 4)
    view = space.ram_view(0xF0000, 4, writable=False)
    assert view.readonly and view[0] == 7
    with pytest.raises(GuestMemoryError, match="read-only"):
        space.ram_views(0xF0000, 4)
    assert space.ram_views(0xF0000, 4, writable=False)[0].readonly


def test_dma_refuses_mmio_and_holes() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", PAGE)
    dev = Device()
    root.add_subregion(0, ram)
    root.add_subregion(PAGE, dev.region("mmio", 0x100))
    with pytest.raises(GuestMemoryError, match="mmio"):
        space.write_bytes(PAGE - 4, b"x" * 8)
    assert bytes(ram.view[PAGE - 4:PAGE]) == b"\0" * 4  # nothing written
    assert dev.writes == []
    with pytest.raises(GuestMemoryError, match="unassigned"):
        space.read_bytes(PAGE + 0x200, 0x20)
    with pytest.raises(GuestMemoryError):
        space.ram_view(PAGE, 1)
    with pytest.raises(GuestMemoryError):
        space.read_bytes(1 << 40, 1)
    assert space.read_bytes(PAGE + 0x1000, 0) == b""


def test_dma_spans_adjacent_ram_sections() -> None:
    root, space = machine()
    a, b = MemoryRegion.ram("a", PAGE), MemoryRegion.ram("b", PAGE)
    root.add_subregion(0, a)
    root.add_subregion(PAGE, b)
    space.write_bytes(PAGE - 3, b"abcdef")
    assert bytes(a.view[PAGE - 3:]) == b"abc" and bytes(b.view[:3]) == b"def"
    assert space.read_bytes(PAGE - 3, 6) == b"abcdef"
    assert space.read_bytes(0, 4) == b"\0\0\0\0"
    space.write_bytes(8, bytearray(b"xy"))
    space.write_bytes(10, memoryview(b"zw"))
    assert space.read_bytes(8, 4) == b"xyzw"


def test_ram_views_feed_preadv() -> None:
    root, space = machine()
    a, b = MemoryRegion.ram("a", PAGE), MemoryRegion.ram("b", PAGE)
    root.add_subregion(0x10000, a)
    root.add_subregion(0x10000 + PAGE, b)
    with tempfile.TemporaryFile() as f:
        f.write(b"0123456789")
        f.flush()
        n = os.preadv(f.fileno(), space.ram_views(0x10000 + PAGE - 5, 10), 0)
    assert n == 10
    assert space.read_bytes(0x10000 + PAGE - 5, 10) == b"0123456789"


def test_ram_section_at_for_software_cpus() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", 2 * PAGE)
    bios = MemoryRegion.rom("bios", PAGE)
    root.add_subregion(0, ram)
    root.add_subregion(0xF0000, bios)
    root.add_subregion(0x1000_0000, Device().region("io", 0x10))
    start, size, view = space.ram_section_at(PAGE + 5)  # type: ignore[misc]
    assert (start, size, len(view)) == (0, 2 * PAGE, 2 * PAGE) and not view.readonly
    view[PAGE + 5] = 0x42
    assert space.read(PAGE + 5, 1) == 0x42
    rom_hit = space.ram_section_at(0xF0000)
    assert rom_hit is not None and rom_hit[2].readonly
    assert space.ram_section_at(0x1000_0000) is None
    assert space.ram_section_at(0x2000_0000) is None
    gen = space.generation
    root.add_subregion(0x800, Device().region("overlay", 0x10), priority=1)
    assert space.generation == gen + 1
    assert space.ram_section_at(0) == (0, 0x800, space.ram_section_at(0)[2])  # type: ignore[index]
    with pytest.raises(GuestMemoryError):
        space.ram_section_at(-1)


# --- listeners, transactions, eventfds ----------------------------------------------------------


def test_listener_replay_and_diffs() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", 4 * PAGE)
    rom = MemoryRegion.rom("rom", PAGE)
    root.add_subregion(0, ram)
    root.add_subregion(0xF0000, rom)
    root.add_subregion(0x100000, Device().region("io", 0x10))
    rec = Recorder()
    space.add_listener(rec)
    assert rec.take() == [("begin",), ("add", 0, 4 * PAGE, "ram", 0, False),
                          ("add", 0xF0000, PAGE, "rom", 0, True), ("commit",)]
    # an I/O overlay splits the RAM section: old one removed, pieces added
    overlay = Device().region("overlay", PAGE)
    root.add_subregion(PAGE, overlay, priority=1)
    assert rec.take() == [("begin",), ("del", 0, 4 * PAGE, "ram", 0, False),
                          ("add", 0, PAGE, "ram", 0, False),
                          ("add", 2 * PAGE, 2 * PAGE, "ram", 2 * PAGE, False), ("commit",)]
    # I/O-only changes are not reported
    overlay.set_address(0x200000)
    events = rec.take()
    assert events == [("begin",), ("del", 0, PAGE, "ram", 0, False),
                      ("del", 2 * PAGE, 2 * PAGE, "ram", 2 * PAGE, False),
                      ("add", 0, 4 * PAGE, "ram", 0, False), ("commit",)]
    overlay.set_address(0x300000)
    assert rec.take() == []
    space.remove_listener(rec)
    assert rec.take() == [("begin",), ("del", 0, 4 * PAGE, "ram", 0, False),
                          ("del", 0xF0000, PAGE, "rom", 0, True), ("commit",)]
    root.del_subregion(rom)
    assert rec.take() == []
    with pytest.raises(ValueError):
        space.remove_listener(rec)


def test_listener_sections_give_kvm_what_it_needs() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", 2 * PAGE)
    root.add_subregion(1 << 32, MemoryRegion.alias("high", ram, PAGE, PAGE))
    seen: list[Section] = []

    class Kvm(MemoryListener):
        def region_add(self, section: Section) -> None:
            seen.append(section)

    space.add_listener(Kvm())
    (s,) = seen
    assert (s.start, s.size, s.readonly) == (1 << 32, PAGE, False)
    assert s.host_address == ram.host_address + PAGE
    assert s.view.nbytes == PAGE and s.is_ram
    assert s == Section(1 << 32, PAGE, ram, PAGE, False) and len({s, seen[0]}) == 1
    assert "ram" in repr(s)


def test_transaction_renders_once() -> None:
    root, space = machine()
    rec = Recorder()
    space.add_listener(rec)
    rec.take()
    gen = space.generation
    a, b = MemoryRegion.ram("a", PAGE), MemoryRegion.ram("b", PAGE)
    with memory_transaction():
        root.add_subregion(0, a)
        with memory_transaction():
            root.add_subregion(PAGE, b)
            b.set_address(2 * PAGE)
        assert space.generation == gen  # still the old view inside the transaction
        assert space.translate(0) is None
        assert space.read(0, 4) == 0xFFFFFFFF
    assert space.generation == gen + 1
    assert rec.take() == [("begin",), ("add", 0, PAGE, "a", 0, False),
                          ("add", 2 * PAGE, PAGE, "b", 0, False), ("commit",)]
    # a no-op transaction changes nothing
    with memory_transaction():
        a.set_enabled(False)
        a.set_enabled(True)
    assert space.generation == gen + 1 and rec.take() == []


def test_transaction_commits_even_when_the_body_raises() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", PAGE)
    with pytest.raises(RuntimeError), memory_transaction():
        root.add_subregion(0, ram)
        raise RuntimeError("boom")
    assert owner(space, 0) == ("ram", 0)


def test_all_address_spaces_follow_changes() -> None:
    ram = MemoryRegion.ram("ram", PAGE)
    sysmem = MemoryRegion.container("sys", 1 << 32)
    dma_root = MemoryRegion.container("dma", 1 << 32)
    cpu = AddressSpace("cpu", sysmem)
    dma = AddressSpace("dma", dma_root)
    sysmem.add_subregion(0x1000, MemoryRegion.alias("ram-cpu", ram, 0, PAGE))
    dma_root.add_subregion(0x8000, MemoryRegion.alias("ram-dma", ram, 0, PAGE))
    cpu.write(0x1000, 0xBEEF, 2)
    assert dma.read(0x8000, 2) == 0xBEEF
    ram.set_enabled(False)
    assert cpu.translate(0x1000) is None and dma.translate(0x8000) is None


def test_eventfds_are_reported_at_absolute_addresses() -> None:
    root, space = machine()
    dev = Device(0x1000)
    bar = dev.region("virtio-notify", 0x1000)
    bar.add_eventfd(0x10, 2, 0, 42)
    bar.add_eventfd(0x20, 0, None, 43)
    rec = Recorder()
    space.add_listener(rec)
    assert rec.take() == [("begin",), ("commit",)]  # not mapped yet
    root.add_subregion(0xFE00_0000, bar)
    assert rec.take() == [("begin",), ("evadd", 0xFE00_0010, 2, 0, 42),
                          ("evadd", 0xFE00_0020, 0, None, 43), ("commit",)]
    bar.set_address(0xFD00_0000)
    assert rec.take() == [("begin",), ("evdel", 0xFE00_0010, 2, 0, 42),
                          ("evdel", 0xFE00_0020, 0, None, 43),
                          ("evadd", 0xFD00_0010, 2, 0, 42),
                          ("evadd", 0xFD00_0020, 0, None, 43), ("commit",)]
    bar.del_eventfd(0x20, 0, None, 43)
    assert rec.take() == [("begin",), ("evdel", 0xFD00_0020, 0, None, 43), ("commit",)]
    # without an accelerator consuming it, the write reaches the callback
    space.write(0xFD00_0010, 0, 2)
    assert dev.writes == [(0x10, 0, 2)]
    # a late listener gets the replay
    late = Recorder()
    space.add_listener(late)
    assert late.take() == [("begin",), ("evadd", 0xFD00_0010, 2, 0, 42), ("commit",)]
    bar.set_enabled(False)
    assert late.take() == [("begin",), ("evdel", 0xFD00_0010, 2, 0, 42), ("commit",)]
    assert bar.eventfds == ((0x10, 2, 0, 42),)


def test_eventfd_misuse() -> None:
    bar = Device().region("bar", 0x100)
    with pytest.raises(ValueError):
        bar.add_eventfd(0, 3, None, 1)
    with pytest.raises(ValueError):
        bar.add_eventfd(0xFF, 2, None, 1)
    with pytest.raises(ValueError):
        bar.add_eventfd(0, 1, 0x100, 1)
    bar.add_eventfd(0, 1, None, 1)
    with pytest.raises(ValueError):
        bar.add_eventfd(0, 1, None, 1)
    with pytest.raises(ValueError):
        bar.del_eventfd(0, 2, None, 1)


def test_eventfd_seen_through_aliases() -> None:
    root, space = machine(0x10000)
    port = Device().region("port", 4)
    port.add_eventfd(2, 2, None, 9)
    root.add_subregion(0xC000, MemoryRegion.alias("a1", port, 0, 4))
    root.add_subregion(0xD000, MemoryRegion.alias("a2", port, 2, 2))
    root.add_subregion(0xE000, MemoryRegion.alias("a3", port, 0, 2))  # eventfd not inside
    rec = Recorder()
    space.add_listener(rec)
    assert rec.take() == [("begin",), ("evadd", 0xC002, 2, None, 9),
                          ("evadd", 0xD000, 2, None, 9), ("commit",)]


def test_listener_may_change_the_map() -> None:
    root, space = machine()
    ram = MemoryRegion.ram("ram", PAGE)
    extra = MemoryRegion.ram("extra", PAGE)

    class Greedy(MemoryListener):
        def region_add(self, section: Section) -> None:
            if section.region is ram:
                root.add_subregion(0x100000, extra)

    space.add_listener(Greedy())
    root.add_subregion(0, ram)
    assert owner(space, 0x100000) == ("extra", 0)


# --- property: the flat view matches a naive renderer ------------------------------------------

SPACE = 96  # bytes of address space checked


@dataclass(eq=False)
class Node:
    region: MemoryRegion
    kind: str
    size: int
    alias_target: Node | None = None
    alias_offset: int = 0
    enabled: bool = True
    # children: (node, offset, priority, sequence number of the (re-)insertion)
    children: list[tuple[Node, int, int, int]] = field(default_factory=list)
    parent: Node | None = None


def reference_owner(node: Node, rel: int) -> tuple[MemoryRegion, int] | None:
    """Point query, straight from the visibility rules of QEMU's docs/devel/memory.rst."""
    if not node.enabled or not 0 <= rel < node.size:
        return None
    if node.alias_target is not None:
        return reference_owner(node.alias_target, rel + node.alias_offset)
    for child, offset, _prio, _seq in sorted(node.children, key=lambda c: (-c[2], -c[3])):
        hit = reference_owner(child, rel - offset)
        if hit is not None:
            return hit
    if node.kind in ("ram", "io"):
        return node.region, rel
    return None


@st.composite
def memory_maps(draw: st.DrawFn) -> tuple[Node, AddressSpace]:
    seq = iter(range(1 << 30))
    nodes: list[Node] = []
    loose: list[Node] = []
    dev = Device(SPACE * 2)
    for k in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["ram", "io", "io", "container", "container", "alias"]))
        if kind == "alias" and not nodes:
            kind = "io"
        if kind == "ram":
            node = Node(MemoryRegion.ram(f"n{k}", PAGE), kind, PAGE)
        elif kind == "io":
            size = draw(st.integers(1, SPACE))
            node = Node(dev.region(f"n{k}", size), kind, size)
        elif kind == "container":
            size = draw(st.integers(0, SPACE))
            node = Node(MemoryRegion.container(f"n{k}", size), kind, size)
        else:
            target = draw(st.sampled_from(nodes))
            off, size = draw(st.integers(0, SPACE)), draw(st.integers(0, SPACE))
            node = Node(MemoryRegion.alias(f"n{k}", target.region, off, size), kind, size,
                        target, off)
        if kind != "alias" and loose:
            adopted = draw(st.lists(st.sampled_from(loose), unique=True, max_size=4))
            for child in adopted:
                offset, prio = draw(st.integers(0, SPACE)), draw(st.integers(-2, 2))
                node.region.add_subregion(offset, child.region, prio)
                node.children.append((child, offset, prio, next(seq)))
                child.parent = node
                loose.remove(child)
        if draw(st.integers(0, 5)) == 0:
            node.enabled = False
            node.region.set_enabled(False)
        nodes.append(node)
        loose.append(node)
    root = Node(MemoryRegion.container("root", SPACE), "container", SPACE)
    for child in loose:
        offset, prio = draw(st.integers(0, SPACE // 2)), draw(st.integers(-2, 2))
        root.region.add_subregion(offset, child.region, prio)
        root.children.append((child, offset, prio, next(seq)))
        child.parent = root
    nodes.append(root)
    space = AddressSpace("prop", root.region)
    # mutate the mapped tree: moves (re-adds), removals, enable toggles, batched or not
    ops = draw(st.lists(st.tuples(st.sampled_from(["move", "del", "toggle"]),
                                  st.integers(0, len(nodes) - 2), st.integers(0, SPACE)),
                        max_size=4))
    with memory_transaction() if draw(st.booleans()) else contextlib.nullcontext():
        for op, index, value in ops:
            node = nodes[index]
            parent = node.parent
            if op == "toggle":
                node.enabled = not node.enabled
                node.region.set_enabled(node.enabled)
            elif parent is not None:
                (entry,) = [c for c in parent.children if c[0] is node]
                parent.children.remove(entry)
                if op == "move":
                    node.region.set_address(value)
                    if value != entry[1]:
                        entry = (node, value, entry[2], next(seq))
                    parent.children.append(entry)
                else:
                    parent.region.del_subregion(node.region)
                    node.parent = None
    return root, space


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memory_maps())
def test_flat_view_matches_naive_renderer(tree: tuple[Node, AddressSpace]) -> None:
    root, space = tree
    sections = space.sections
    assert sections == AddressSpace("fresh", root.region).sections
    for a, b in itertools.pairwise(sections):
        assert a.end <= b.start
        # adjacent pieces of one region are merged
        assert not (a.end == b.start and a.region is b.region
                    and a.offset_in_region + a.size == b.offset_in_region
                    and a.readonly == b.readonly)
    for addr in range(SPACE + 8):
        s = space.translate(addr)
        got = None if s is None else (s.region, addr - s.start + s.offset_in_region)
        assert got == reference_owner(root, addr), hex(addr)
    # and accesses agree with the owners
    for addr in range(0, SPACE, 7):
        expected = reference_owner(root, addr)
        if expected is not None and expected[0].is_ram:
            assert space.ram_view(addr, 1)[0] == expected[0].view[expected[1]]


def test_cpu_access_goes_whole_to_the_region_of_its_first_byte():
    """QEMU's CPU accessors: a dword at 0xcf8 is the PCI config address even though a
    higher-priority byte region (reset control) covers 0xcf9; a byte at 0xcf9 reaches it."""
    conf_log: list[tuple[str, int, int, int]] = []
    rcr_log: list[tuple[str, int, int, int]] = []
    io = MemoryRegion.container("io", 1 << 16)
    conf = MemoryRegion.io("conf", 4, lambda o, s: conf_log.append(("r", o, 0, s)) or 0x11223344,
                           lambda o, v, s: conf_log.append(("w", o, v, s)),
                           valid_sizes=(1, 4), impl_sizes=(1, 4))
    rcr = MemoryRegion.io("rcr", 1, lambda o, s: rcr_log.append(("r", o, 0, s)) or 0x06,
                          lambda o, v, s: rcr_log.append(("w", o, v, s)))
    io.add_subregion(0xCF8, conf)
    io.add_subregion(0xCF9, rcr, priority=1)
    space = AddressSpace("I/O", io)
    space.write(0xCF8, 0x80000000, 4)
    assert conf_log == [("w", 0, 0x80000000, 4)] and rcr_log == []
    assert space.read(0xCF8, 4) == 0x11223344
    space.write(0xCF9, 0x06, 1)
    assert rcr_log == [("w", 0, 0x06, 1)]
    assert space.read(0xCF9, 1) == 0x06
    # An access that does not fit in the first byte's region is still split.
    space.write(0xCFA, 0xAABB, 2)
    assert conf_log[-1] == ("w", 2, 0xAABB, 2)
