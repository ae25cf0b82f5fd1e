"""The PCI framework, driven the way a guest drives it: ports 0xcf8/0xcfc, MMIO, port I/O."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from vfw.errors import GuestError, GuestMemoryError, PropertyError, VfwError
from vfw.memory import AddressSpace, MemoryRegion
from vfw.pci import PCI_DEVFN, PCIBus, PCIDevice, pci_class_description
from vfw.pci_host import PCIHostState
from vfw.qom import register_type, reset_root

_n = itertools.count()

RAM_SIZE = 0x100000
MSI_ADDR = 0xFEE00000


@pytest.fixture(autouse=True)
def fresh_tree() -> Iterator[None]:
    reset_root()
    yield
    reset_root()


class _TestDev(PCIDevice):
    """Not a registered type: ``make_type`` registers subclasses with unique names."""

    VENDOR_ID = 0x1234
    DEVICE_ID = 0x11E8
    REVISION = 0x10
    CLASS_ID = 0x00FF
    INTERRUPT_PIN = 1
    #: (index, kind, size, prefetchable)
    BARS: tuple[tuple[int, str, int, bool], ...] = ()
    #: (vectors, is_64bit, per_vector_mask) or None
    MSI: tuple[int, bool, bool] | None = None
    #: (nentries, bar index) for an exclusive BAR, or None
    MSIX: tuple[int, int] | None = None

    def realize(self) -> None:
        super().realize()
        self.accesses: list[tuple[str, int, int, int]] = []
        self.regions: dict[int, MemoryRegion] = {}
        for index, kind, size, pf in self.BARS:
            region = MemoryRegion.io(f"bar{index}", size, self._reader(index),
                                     self._writer(index))
            self.regions[index] = region
            self.register_bar(index, region, kind, pf)
        if self.MSI is not None:
            vectors, is64, mask = self.MSI
            self.msi_init(vectors, is64, mask)
        if self.MSIX is not None:
            self.msix_init_exclusive_bar(*self.MSIX)

    def _reader(self, index: int) -> Any:
        def read(offset: int, size: int) -> int:
            self.accesses.append(("r", index, offset, size))
            return (0xB0 + index) << 24 | offset

        return read

    def _writer(self, index: int) -> Any:
        def write(offset: int, value: int, size: int) -> None:
            self.accesses.append(("w", index, offset, value))

        return write


def make_type(**attrs: Any) -> type[_TestDev]:
    name = f"test-pci-{next(_n)}"
    cls = type(name.replace("-", "_"), (_TestDev,), {"TYPE": name, **attrs})
    return register_type(cls)


class FakeMachine:
    """RAM at 0, a full-size PCI memory container below RAM, 64 KiB of I/O, mechanism #1."""

    def __init__(self, map_irq: Any = None) -> None:
        self.system = MemoryRegion.container("system", 1 << 64)
        self.ram = MemoryRegion.ram("ram", RAM_SIZE)
        self.system.add_subregion(0, self.ram)
        self.pci_mem = MemoryRegion.container("pci", 1 << 64)
        self.system.add_subregion(0, self.pci_mem, priority=-1)
        self.io = MemoryRegion.container("io", 1 << 16)
        self.mem_as = AddressSpace("memory", self.system)
        self.io_as = AddressSpace("I/O", self.io)
        self.irqs: list[tuple[int, int]] = []
        self.msis: list[tuple[int, int]] = []
        routing: dict[str, Any] = {}
        if map_irq is not None:
            routing["map_irq"] = map_irq
        self.bus = PCIBus.create("pci.0", mem_region=self.pci_mem, io_region=self.io,
                                 dma_as=self.mem_as,
                                 set_irq=lambda p, lvl: self.irqs.append((p, lvl)),
                                 msi_sink=lambda a, d: self.msis.append((a, d)), **routing)
        self.host = PCIHostState(self.bus)
        self.host.map(self.io)

    def add(self, cls: type[_TestDev], **props: Any) -> _TestDev:
        dev = cls(**props)
        self.bus.check_device(dev, props)
        self.bus.plug(dev)
        dev.set_realized(True)
        return dev

    # guest side: configuration mechanism #1
    def select(self, devfn: int, reg: int, bus: int = 0) -> None:
        self.io_as.write(0xCF8, 0x80000000 | bus << 16 | devfn << 8 | (reg & 0xFC), 4)

    def cfg_read(self, devfn: int, reg: int, size: int = 4, bus: int = 0) -> int:
        self.select(devfn, reg, bus)
        return self.io_as.read(0xCFC + (reg & 3), size)

    def cfg_write(self, devfn: int, reg: int, value: int, size: int = 4) -> None:
        self.select(devfn, reg)
        self.io_as.write(0xCFC + (reg & 3), value, size)

    def caps(self, devfn: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        ptr = self.cfg_read(devfn, 0x34, 1)
        while ptr and len(out) < 48:
            out.append((self.cfg_read(devfn, ptr, 1), ptr))
            ptr = self.cfg_read(devfn, ptr + 1, 1)
        return out


@pytest.fixture
def m() -> FakeMachine:
    return FakeMachine()


# --- enumeration and the header ----------------------------------------------------------------


def test_enumeration_reads_ids_and_header(m: FakeMachine) -> None:
    dev = m.add(make_type(CLASS_ID=0x0200, PROG_IF=0x01), addr="3")
    assert dev.devfn == 0x18
    assert m.cfg_read(0x18, 0x00) == 0x11E81234
    assert m.cfg_read(0x18, 0x00, 2) == 0x1234
    assert m.cfg_read(0x18, 0x02, 2) == 0x11E8
    assert m.cfg_read(0x18, 0x08) == 0x02000110  # class 02 subclass 00 prog-if 01 rev 10
    assert m.cfg_read(0x18, 0x0E, 1) == 0x00
    assert m.cfg_read(0x18, 0x2C) == 0x11001AF4  # QEMU's default subsystem
    assert m.cfg_read(0x18, 0x3D, 1) == 1


def test_multifunction_bit_and_functions(m: FakeMachine) -> None:
    cls = make_type()
    m.add(cls, addr="05.0", multifunction=True)
    m.add(cls, addr="05.2")
    assert m.cfg_read(0x28, 0x0E, 1) == 0x80
    assert m.cfg_read(0x2A, 0x00) == 0x11E81234
    assert m.cfg_read(0x29, 0x00) == 0xFFFFFFFF


def test_absent_devices_and_other_buses_read_all_ones(m: FakeMachine) -> None:
    m.add(make_type(), addr="0")
    assert m.cfg_read(0x08, 0x00) == 0xFFFFFFFF
    assert m.cfg_read(0x08, 0x02, 2) == 0xFFFF
    assert m.cfg_read(0x08, 0x00, 1) == 0xFF
    assert m.cfg_read(0x00, 0x00, bus=1) == 0xFFFFFFFF
    m.io_as.write(0xCF8, 0x00000000, 4)  # enable bit clear
    assert m.io_as.read(0xCFC, 4) == 0xFFFFFFFF
    m.cfg_write(0x08, 0x04, 0xFFFF, 2)  # writes to nobody vanish


def test_address_port_latches_dwords_only(m: FakeMachine) -> None:
    m.io_as.write(0xCF8, 0x80001234, 4)
    assert m.io_as.read(0xCF8, 4) == 0x80001234
    m.io_as.write(0xCFB, 0x01, 1)  # Linux's conf1 probe: a byte write is not a latch
    m.io_as.write(0xCF8, 0xFFFF, 2)
    assert m.io_as.read(0xCF8, 4) == 0x80001234
    assert m.io_as.read(0xCFB, 1) == 0x80
    assert m.host.config_read(0x80000000, 4) == 0xFFFFFFFF
    m.host.reset()
    assert m.host.config_reg == 0


def test_read_only_fields_stay_read_only(m: FakeMachine) -> None:
    m.add(make_type(), addr="2")
    d = 0x10
    for reg, size in ((0x00, 4), (0x08, 4), (0x0E, 1), (0x2C, 4), (0x34, 1), (0x3D, 1)):
        before = m.cfg_read(d, reg, size)
        m.cfg_write(d, reg, 0xFFFFFFFF & ((1 << (8 * size)) - 1) ^ 0x5A, size)
        m.cfg_write(d, reg, (1 << (8 * size)) - 1, size)
        assert m.cfg_read(d, reg, size) == before, hex(reg)
    m.cfg_write(d, 0x04, 0xFFFF, 2)
    assert m.cfg_read(d, 0x04, 2) == 0x0547  # io mem master parity serr intx-disable
    m.cfg_write(d, 0x3C, 0x0B, 1)
    assert m.cfg_read(d, 0x3C, 1) == 0x0B


def test_status_error_bits_are_write_one_to_clear(m: FakeMachine) -> None:
    dev = m.add(make_type(), addr="2")
    dev.set_config(0x06, 0xF900, 2)
    m.cfg_write(0x10, 0x06, 0x0100, 2)
    assert m.cfg_read(0x10, 0x06, 2) == 0xF800
    m.cfg_write(0x10, 0x06, 0x0000, 2)  # writing 0 keeps them
    assert m.cfg_read(0x10, 0x06, 2) == 0xF800


# --- BARs ------------------------------------------------------------------------------------

BAR_SET = ((0, "io", 0x20, False), (1, "mem32", 0x1000, False), (2, "mem64", 0x4000, True))


def size_bar(m: FakeMachine, devfn: int, reg: int) -> int:
    old = m.cfg_read(devfn, reg)
    m.cfg_write(devfn, reg, 0xFFFFFFFF)
    value = m.cfg_read(devfn, reg)
    m.cfg_write(devfn, reg, old)
    return value


def test_bar_sizing_protocol(m: FakeMachine) -> None:
    m.add(make_type(BARS=BAR_SET), addr="4")
    d = 0x20
    assert m.cfg_read(d, 0x10) == 0x1
    assert m.cfg_read(d, 0x18) == 0xC  # 64-bit, prefetchable
    assert size_bar(m, d, 0x10) == 0xFFFFFFE1
    assert size_bar(m, d, 0x14) == 0xFFFFF000
    assert size_bar(m, d, 0x18) == 0xFFFFC00C
    assert size_bar(m, d, 0x1C) == 0xFFFFFFFF
    for reg in (0x20, 0x24, 0x30):  # unused BARs and the ROM BAR read 0
        assert size_bar(m, d, reg) == 0


def test_bar_sizing_large_64bit_bar(m: FakeMachine) -> None:
    class Big(_TestDev):
        TYPE = f"test-pci-big-{next(_n)}"

        def realize(self) -> None:
            self.register_bar(0, MemoryRegion.container("big", 1 << 33), "mem64")

    register_type(Big)
    m.add(Big, addr="4")
    assert size_bar(m, 0x20, 0x10) == 0x4
    assert size_bar(m, 0x20, 0x14) == 0xFFFFFFFE


def test_bar_registration_errors(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=((0, "mem64", 0x1000, False),)), addr="4")
    r = MemoryRegion.io("x", 0x100, lambda o, s: 0, lambda o, v, s: None)
    with pytest.raises(ValueError):
        dev.register_bar(1, r, "mem32")  # upper half of BAR 0
    with pytest.raises(ValueError):
        dev.register_bar(5, r, "mem64")
    with pytest.raises(ValueError):
        dev.register_bar(2, MemoryRegion.io("y", 0x300, lambda o, s: 0, lambda o, v, s: None))
    with pytest.raises(ValueError):
        dev.register_bar(2, r, "io", prefetchable=True)


def enable(m: FakeMachine, devfn: int, bits: int) -> None:
    m.cfg_write(devfn, 0x04, bits, 2)


def test_mem_bar_maps_moves_and_unmaps(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET), addr="4")
    d = 0x20
    m.cfg_write(d, 0x14, 0xE0001000)
    assert m.mem_as.read(0xE0001000, 4) == 0xFFFFFFFF  # decoding still off
    enable(m, d, 0x2)
    assert dev.bar_address(1) == 0xE0001000
    assert m.mem_as.read(0xE0001010, 4) == 0xB1000010
    m.mem_as.write(0xE0001020, 0xAB, 4)
    assert dev.accesses[-1] == ("w", 1, 0x20, 0xAB)
    m.cfg_write(d, 0x14, 0xE0200000)  # move
    assert dev.bar_address(1) == 0xE0200000
    assert m.mem_as.read(0xE0200004, 4) == 0xB1000004
    assert m.mem_as.read(0xE0001010, 4) == 0xFFFFFFFF
    m.cfg_write(d, 0x14, 0)  # address 0: unmapped
    assert dev.bar_address(1) is None
    assert m.mem_as.read(0xE0200004, 4) == 0xFFFFFFFF


def test_mem64_bar_above_4g_and_sizing_leaves_it_unmapped(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET), addr="4")
    d = 0x20
    enable(m, d, 0x2)
    m.cfg_write(d, 0x18, 0x0000000C)
    m.cfg_write(d, 0x1C, 0x00000001)
    assert dev.bar_address(2) == 0x100000000
    assert m.mem_as.read(0x100000008, 4) == 0xB2000008
    m.cfg_write(d, 0x18, 0xFFFFFFFF)
    m.cfg_write(d, 0x1C, 0xFFFFFFFF)
    assert dev.bar_address(2) is None  # all-ones is never mapped
    m.cfg_write(d, 0x18, 0xFFFF8000)  # just below the top of the 64-bit space
    assert dev.bar_address(2) == 0xFFFFFFFF_FFFF8000
    assert m.mem_as.read(0xFFFFFFFF_FFFF8010, 4) == 0xB2000010


def test_io_bar_and_command_gating(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET), addr="4")
    d = 0x20
    m.cfg_write(d, 0x10, 0xC000)
    m.cfg_write(d, 0x14, 0xE0000000)
    enable(m, d, 0x2)  # memory only
    assert dev.bar_address(0) is None and dev.bar_address(1) == 0xE0000000
    assert m.io_as.read(0xC004, 2) == 0xFFFF
    enable(m, d, 0x1)  # I/O only
    assert dev.bar_address(0) == 0xC000 and dev.bar_address(1) is None
    assert m.io_as.read(0xC004, 1) == 0x04
    m.io_as.write(0xC008, 0x55, 1)
    assert dev.accesses[-1] == ("w", 0, 8, 0x55)
    assert m.mem_as.read(0xE0000000, 4) == 0xFFFFFFFF
    enable(m, d, 0x0)
    assert dev.bar_address(0) is None
    assert m.io_as.read(0xC004, 1) == 0xFF


def test_bar_over_ram_stays_behind_ram_and_last_moved_bar_wins(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET), addr="4")
    m.ram.view[0x2000:0x2004] = b"\x11\x22\x33\x44"
    d = 0x20
    enable(m, d, 0x2)
    m.cfg_write(d, 0x14, 0x2000)
    assert dev.bar_address(1) == 0x2000
    assert m.mem_as.read(0x2000, 4) == 0x44332211  # RAM wins, as in QEMU's pc
    other = m.add(make_type(BARS=((0, "mem32", 0x1000, False),)), addr="5")
    m.cfg_write(0x28, 0x10, 0xE0000000)
    enable(m, 0x28, 0x2)
    m.cfg_write(d, 0x14, 0xE0000000)  # now both at 0xe0000000: the one moved last shows
    assert m.mem_as.read(0xE0000000, 4) == 0xB1000000
    m.cfg_write(0x28, 0x10, 0xE0000000)  # same value: no move, no change
    assert m.mem_as.read(0xE0000000, 4) == 0xB1000000
    m.cfg_write(d, 0x14, 0xE0100000)
    assert m.mem_as.read(0xE0000000, 4) == 0xB0000000
    assert other.bar_address(0) == 0xE0000000


def test_mem32_bar_wrapping_past_4g_is_not_mapped(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET), addr="4")
    enable(m, 0x20, 0x3)
    m.cfg_write(0x20, 0x14, 0xFFFFF000)
    assert dev.bar_address(1) is None
    m.cfg_write(0x20, 0x10, 0xFFFFFFE1)
    assert dev.bar_address(0) is None


# --- capabilities ----------------------------------------------------------------------------


def test_capability_list_walk_and_vendor_capabilities(m: FakeMachine) -> None:
    class Caps(_TestDev):
        TYPE = f"test-pci-caps-{next(_n)}"
        MSI = (1, True, False)
        MSIX = (4, 1)

        def realize(self) -> None:
            super().realize()
            self.vcap = self.add_capability(0x09, 16)
            self.write_capability(self.vcap, bytes([16, 5, 0, 0, 0xAA, 0xBB]),
                                  writable=bytes([0, 0, 0, 0, 0xFF, 0x0F]))

    register_type(Caps)
    plain = m.add(make_type(), addr="3")
    dev = m.add(Caps, addr="4")
    assert isinstance(dev, Caps)
    assert m.cfg_read(0x18, 0x06, 2) & 0x10 == 0
    assert m.cfg_read(0x18, 0x34, 1) == 0 and plain.capabilities() == []
    assert m.cfg_read(0x20, 0x06, 2) & 0x10
    walked = m.caps(0x20)
    assert walked == [(0x05, 0x40), (0x11, 0x50), (0x09, 0x5C)]
    assert walked == dev.capabilities()
    assert all(off % 4 == 0 and off >= 0x40 for _id, off in walked)
    assert dev.find_capability(0x11) == 0x50 and dev.find_capability(0x10) == 0
    v = dev.vcap
    assert m.cfg_read(0x20, v + 2, 1) == 16 and m.cfg_read(0x20, v + 3, 1) == 5
    m.cfg_write(0x20, v + 4, 0xFFFFFFFF)
    assert m.cfg_read(0x20, v + 4) == 0xBFFF0000  # body bytes: only the marked bits
    m.cfg_write(0x20, v, 0xFFFFFFFF)  # id, next, len, type are read-only
    assert m.cfg_read(0x20, v) == 0x0510_0009
    m.cfg_write(0x20, 0x50, 0)  # cap id/next of MSI-X
    assert m.caps(0x20) == walked


def test_capability_placement_errors(m: FakeMachine) -> None:
    dev = m.add(make_type(), addr="3")
    assert dev.add_capability(0x09, 8, offset=0x80) == 0x80
    with pytest.raises(VfwError, match="overlaps existing capability 9 at offset 80"):
        dev.add_capability(0x09, 8, offset=0x84)
    with pytest.raises(ValueError):
        dev.add_capability(0x09, 8, offset=0x42)
    with pytest.raises(ValueError):
        dev.add_capability(0x09, 8, offset=0x20)
    assert dev.add_capability(0x09, 0x40) == 0x40  # first fit below 0x80
    assert dev.add_capability(0x09, 0x40) == 0x88
    with pytest.raises(VfwError, match="no space"):
        dev.add_capability(0x09, 0x40)
    with pytest.raises(ValueError):
        dev.write_capability(0x80, b"\x00" * 7)


def test_device_specific_area_is_writable_until_claimed(m: FakeMachine) -> None:
    seen: list[tuple[int, int, int]] = []

    class Watcher(_TestDev):
        TYPE = f"test-pci-watch-{next(_n)}"

        def config_write(self, offset: int, value: int, size: int) -> None:
            super().config_write(offset, value, size)
            seen.append((offset, value, size))

    register_type(Watcher)
    dev = m.add(Watcher, addr="3")
    m.cfg_write(0x18, 0x60, 0x0B0A0908)  # e.g. PIIX3 PIRQ route registers
    assert dev.get_config(0x60, 4) == 0x0B0A0908
    assert seen[-1] == (0x60, 0x0B0A0908, 4)


# --- MSI -------------------------------------------------------------------------------------


def setup_msi(m: FakeMachine, devfn: int, cap: int, data: int, is64: bool = True) -> None:
    m.cfg_write(devfn, cap + 4, MSI_ADDR)
    if is64:
        m.cfg_write(devfn, cap + 8, 0)
        m.cfg_write(devfn, cap + 0xC, data, 2)
    else:
        m.cfg_write(devfn, cap + 8, data, 2)
    m.cfg_write(devfn, cap + 2, 0x0001, 2)


def test_msi_delivery_64bit(m: FakeMachine) -> None:
    dev = m.add(make_type(MSI=(1, True, False)), addr="3")
    cap = dev.msi_cap
    assert m.cfg_read(0x18, cap + 2, 2) == 0x0080
    dev.msi_notify()  # not enabled: nothing
    assert m.msis == []
    setup_msi(m, 0x18, cap, 0x4041)
    assert dev.msi_enabled()
    dev.msi_notify()
    assert m.msis == []  # bus mastering off: the write never leaves the device
    enable(m, 0x18, 0x4)
    dev.msi_notify()
    assert m.msis == [(MSI_ADDR, 0x4041)]
    m.cfg_write(0x18, cap + 2, 0xFFFF, 2)  # only enable and MME are writable
    assert m.cfg_read(0x18, cap + 2, 2) == 0x00F1
    assert dev.msi_vectors_enabled() == 1  # MME clamped to what is offered


def test_msi_32bit_multi_vector_and_per_vector_mask(m: FakeMachine) -> None:
    dev = m.add(make_type(MSI=(4, False, True)), addr="3")
    cap = dev.msi_cap
    assert m.cfg_read(0x18, cap + 2, 2) == 0x0104
    enable(m, 0x18, 0x4)
    setup_msi(m, 0x18, cap, 0x30, is64=False)
    m.cfg_write(0x18, cap + 2, 0x0021, 2)  # 4 vectors enabled
    dev.msi_notify(2)
    assert m.msis == [(MSI_ADDR, 0x32)]
    m.cfg_write(0x18, cap + 0xC, 0b0100)  # mask vector 2
    dev.msi_notify(2)
    assert m.msis == [(MSI_ADDR, 0x32)]
    assert m.cfg_read(0x18, cap + 0x10) == 0b0100  # pending
    m.cfg_write(0x18, cap + 0x10, 0)  # pending bits are read-only
    assert m.cfg_read(0x18, cap + 0x10) == 0b0100
    m.cfg_write(0x18, cap + 0xC, 0)  # unmask: the pending message goes out
    assert m.msis == [(MSI_ADDR, 0x32), (MSI_ADDR, 0x32)]
    assert m.cfg_read(0x18, cap + 0x10) == 0
    dev.msi_notify(7)  # beyond the enabled vectors: dropped
    assert len(m.msis) == 2


def test_msi_enable_deasserts_intx(m: FakeMachine) -> None:
    dev = m.add(make_type(MSI=(1, True, False)), addr="3")
    dev.pci_set_irq(1)
    assert m.bus.irq_level(3) == 1
    setup_msi(m, 0x18, dev.msi_cap, 0x41)
    assert dev.intx_level == 0 and m.bus.irq_level(3) == 0


# --- MSI-X -----------------------------------------------------------------------------------


def setup_msix(m: FakeMachine, dev: _TestDev, bar: int, base: int) -> int:
    devfn = dev.devfn
    m.cfg_write(devfn, 0x10 + 4 * bar, base)
    enable(m, devfn, 0x6)
    return dev.msix_cap


def test_msix_delivery_and_masking(m: FakeMachine) -> None:
    dev = m.add(make_type(MSIX=(4, 1)), addr="3")
    base = 0xE0000000
    cap = setup_msix(m, dev, 1, base)
    assert dev.msix_vector_count == 4
    assert m.cfg_read(0x18, cap + 2, 2) == 0x0003
    assert m.cfg_read(0x18, cap + 4) == 0x00000001  # table at 0 in BAR 1
    assert m.cfg_read(0x18, cap + 8) == 0x00000801  # PBA at 0x800 in BAR 1
    assert size_bar(m, 0x18, 0x14) == 0xFFFFF000
    for v in range(4):
        assert m.mem_as.read(base + 16 * v + 12, 4) == 1  # masked at reset
        m.mem_as.write(base + 16 * v, MSI_ADDR, 4)
        m.mem_as.write(base + 16 * v + 4, 0, 4)
        m.mem_as.write(base + 16 * v + 8, 0x50 + v, 4)
    dev.msix_notify(0)  # MSI-X not enabled: nothing, no pending bit
    assert m.msis == [] and m.mem_as.read(base + 0x800, 4) == 0
    m.cfg_write(0x18, cap + 2, 0xC000, 2)  # enable with the function masked
    assert dev.msix_enabled()
    m.mem_as.write(base + 16 * 1 + 12, 0, 4)  # unmask vector 1 (still function-masked)
    dev.msix_notify(1)
    assert m.msis == [] and m.mem_as.read(base + 0x800, 4) == 0b10
    m.cfg_write(0x18, cap + 2, 0x8000, 2)  # drop the function mask: pending goes out
    assert m.msis == [(MSI_ADDR, 0x51)]
    assert m.mem_as.read(base + 0x800, 4) == 0
    dev.msix_notify(2)  # vector 2 still masked by its own bit
    assert m.mem_as.read(base + 0x800, 4) == 0b100
    m.mem_as.write(base + 16 * 2 + 12, 0, 4)
    assert m.msis[-1] == (MSI_ADDR, 0x52)
    dev.msix_notify(1)
    assert m.msis[-1] == (MSI_ADDR, 0x51) and len(m.msis) == 3
    assert m.mem_as.read(base + 16 * 2 + 8, 8) == 0x00000000_00000052
    m.mem_as.write(base + 0x800, 0xFFFFFFFF, 4)  # the PBA is read-only
    assert m.mem_as.read(base + 0x800, 4) == 0


def test_msix_with_table_in_a_shared_bar(m: FakeMachine) -> None:
    class Shared(_TestDev):
        TYPE = f"test-pci-msix-shared-{next(_n)}"
        BARS = ((2, "mem64", 0x4000, False),)

        def realize(self) -> None:
            super().realize()
            self.msix_init(3, 2, 0x2000, 2, 0x3000)

    register_type(Shared)
    dev = m.add(Shared, addr="3")
    m.cfg_write(0x18, 0x18, 0xE0000000)
    m.cfg_write(0x18, 0x1C, 0)
    enable(m, 0x18, 0x6)
    base = 0xE0000000
    assert m.mem_as.read(base + 0x10, 4) == 0xB2000010  # the device's own registers
    m.mem_as.write(base + 0x2000 + 16 * 2, MSI_ADDR | 0x1000, 4)
    m.mem_as.write(base + 0x2000 + 16 * 2 + 8, 0x77, 4)
    m.mem_as.write(base + 0x2000 + 16 * 2 + 12, 0, 4)
    m.cfg_write(0x18, dev.msix_cap + 2, 0x8000, 2)
    dev.msix_notify(2)
    assert m.msis == [(MSI_ADDR | 0x1000, 0x77)]
    assert m.mem_as.read(base + 0x2000 + 16 * 3, 4) == 0xB2002030  # past the table: the BAR


def test_msix_init_validates_layout(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=((0, "mem32", 0x1000, False),)), addr="3")
    with pytest.raises(ValueError):
        dev.msix_init(4, 0, 0x0FF8, 0, 0)  # table past the BAR
    with pytest.raises(ValueError):
        dev.msix_init(4, 0, 0, 0, 0x20)  # PBA inside the table
    with pytest.raises(ValueError):
        dev.msix_init(4, 0, 0x4, 0, 0x800)  # misaligned (low bits are the BIR)
    with pytest.raises(ValueError):
        dev.msix_init(4, 1, 0, 1, 0x800)  # BAR 1 not registered
    with pytest.raises(ValueError):
        dev.msix_init(0, 0, 0, 0, 0x800)
    assert dev.msix_cap == 0


def test_hostile_msix_table_accesses(m: FakeMachine) -> None:
    dev = m.add(make_type(MSIX=(2, 1)), addr="3")
    base = 0xE0000000
    cap = setup_msix(m, dev, 1, base)
    m.cfg_write(0x18, cap + 2, 0x8000, 2)
    table = bytes(dev.msix_table)
    for off in (0x20, 0x7F8, 0xFFC, 0x1000 - 2):  # past the table, end of BAR
        m.mem_as.write(base + off, 0xDEADBEEF, 4)
        m.mem_as.read(base + off, 4)
    m.mem_as.write(base + 0x1C, 0xFFFFFFFF_FFFFFFFF, 8)  # straddles the table end
    m.mem_as.write(base + 0x2, 0xFFFF, 2)  # sub-dword: refused
    m.mem_as.write(base + 0x5, 0xFFFFFFFF, 4)  # unaligned: refused
    assert bytes(dev.msix_table)[:0x1C] == table[:0x1C]
    assert m.mem_as.read(base + 0x1C, 4) == 0xFFFFFFFF  # the aligned half landed
    assert dev._msix_table_read(0x20, 4) == 0 and dev._msix_table_read(-4, 4) == 0
    dev._msix_table_write(0x1000, 1, 4)
    dev._msix_table_write(0x1E, 1, 4)
    assert dev._msix_pba_read(0x8, 4) == 0
    for v in (-1, 2, 4096):
        dev.msix_notify(v)
    assert m.msis == []
    m.cfg_write(0x18, cap + 4, 0xFFFFFFFF)  # table offset/BIR are read-only
    assert m.cfg_read(0x18, cap + 4) == 1


# --- INTx ------------------------------------------------------------------------------------


def test_intx_lines_are_shared_per_pirq() -> None:
    m = FakeMachine(map_irq=lambda devfn, pin: 0)  # every device on PIRQ 0
    a = m.add(make_type(), addr="3")
    b = m.add(make_type(), addr="4")
    a.pci_set_irq(1)
    assert m.bus.irq_level(0) == 1 and m.irqs[-1] == (0, 1)
    b.pci_set_irq(1)
    a.pci_set_irq(0)
    assert m.bus.irq_level(0) == 1 and m.irqs[-1] == (0, 1)
    a.pci_set_irq(0)  # no change, no count change
    assert m.bus.irq_count[0] == 1
    b.pci_set_irq(0)
    assert m.bus.irq_level(0) == 0 and m.irqs[-1] == (0, 0)


def test_intx_default_swizzle_and_status_bit(m: FakeMachine) -> None:
    dev = m.add(make_type(INTERRUPT_PIN=2), addr="6")  # INTB of slot 6 -> (6 + 1) % 4
    dev.pci_set_irq(1)
    assert m.irqs == [(3, 1)]
    assert m.cfg_read(0x30, 0x06, 2) & 0x8
    dev.pci_set_irq(0)
    assert m.cfg_read(0x30, 0x06, 2) & 0x8 == 0
    silent = m.add(make_type(INTERRUPT_PIN=0), addr="7")
    silent.pci_set_irq(1)  # no pin: nothing happens
    assert m.irqs == [(3, 1), (3, 0)]


def test_interrupt_disable_bit(m: FakeMachine) -> None:
    dev = m.add(make_type(), addr="3")  # INTA of slot 3 -> PIRQ 3
    enable(m, 0x18, 0x400)
    dev.pci_set_irq(1)
    assert m.bus.irq_level(3) == 0
    assert m.cfg_read(0x18, 0x06, 2) & 0x8  # status still shows the pending interrupt
    enable(m, 0x18, 0x000)
    assert m.bus.irq_level(3) == 1
    enable(m, 0x18, 0x400)
    assert m.bus.irq_level(3) == 0
    dev.pci_set_irq(0)
    enable(m, 0x18, 0x000)
    assert m.bus.irq_level(3) == 0
    assert m.bus.irq_count[3] == 0


# --- DMA -------------------------------------------------------------------------------------


def test_dma_needs_bus_master_and_ram(m: FakeMachine, caplog: pytest.LogCaptureFixture) -> None:
    dev = m.add(make_type(), addr="3")
    m.ram.view[0x100:0x104] = b"abcd"
    with caplog.at_level(logging.DEBUG, logger="vfw.guest_errors"), \
            pytest.raises(GuestError, match="bus mastering"):
        dev.dma_read(0x100, 4)
    assert "bus mastering is disabled" in caplog.text
    with pytest.raises(GuestError):
        dev.dma_write(0x100, b"x")
    with pytest.raises(GuestError):
        dev.dma_view(0x100, 4)
    enable(m, 0x18, 0x4)
    assert dev.dma_read(0x100, 4) == b"abcd"
    dev.dma_write(0x104, b"efgh")
    view = dev.dma_view(0x100, 8)
    assert bytes(view) == b"abcdefgh"
    view[0:1] = b"A"
    assert bytes(m.ram.view[0x100:0x101]) == b"A"
    with pytest.raises(GuestMemoryError):
        dev.dma_read(RAM_SIZE - 2, 4)  # runs off the end of RAM
    with pytest.raises(GuestMemoryError):
        dev.dma_write(0xE0000000, b"zz")
    with pytest.raises(GuestMemoryError):
        dev.dma_view(RAM_SIZE - 2, 4)
    other = m.add(make_type(BARS=((0, "mem32", 0x1000, False),)), addr="4")
    m.cfg_write(0x20, 0x10, 0xE0000000)
    enable(m, 0x20, 0x2)
    with pytest.raises(GuestMemoryError):
        dev.dma_read(0xE0000000, 4)  # MMIO is not DMA-able
    assert other.accesses == []


# --- slots and addr= ---------------------------------------------------------------------------


def test_auto_slot_assignment_and_conflicts(m: FakeMachine) -> None:
    blk = make_type()
    net = make_type()
    first = m.add(blk)
    assert first.devfn == 0x00 and first.get_property("addr") == 0
    m.add(blk, addr="1")
    third = m.add(net)
    assert third.devfn == 0x10
    dup = net(addr="2")
    with pytest.raises(VfwError) as exc:
        m.bus.check_device(dup, {"addr": "2"})
    assert str(exc.value) == (f"PCI: slot 2 function 0 not available for {net.TYPE},"
                              f" in use by {net.TYPE}")
    dup2 = net(addr="1")
    with pytest.raises(VfwError) as exc:
        m.bus.plug(dup2)
    assert str(exc.value) == (f"PCI: slot 1 function 0 not available for {net.TYPE},"
                              f" in use by {blk.TYPE}")
    assert dup2.parent_bus is None


def test_bus_full_and_function_rules(m: FakeMachine) -> None:
    cls = make_type()
    for _ in range(32):
        m.add(cls)
    with pytest.raises(VfwError, match="no slot/function available"):
        m.bus.check_device(cls(), {})
    m2 = FakeMachine()
    m2.add(cls, addr="3")
    with pytest.raises(VfwError, match="single function device can't be populated in function"
                                       " 3.1"):
        m2.bus.check_device(cls(addr="3.1"), {})
    m2.add(cls, addr="4.1")
    with pytest.raises(VfwError, match=r"PCI: 4.0 indicates single function, but 4.1 is"):
        m2.bus.check_device(cls(addr="4"), {})
    m2.add(cls, addr="4", multifunction=True)


def test_unplug_releases_the_slot_and_the_bars(m: FakeMachine) -> None:
    cls = make_type(BARS=BAR_SET)
    dev = m.add(cls, addr="3")
    m.cfg_write(0x18, 0x14, 0xE0000000)
    enable(m, 0x18, 0x2)
    dev.pci_set_irq(1)
    dev.finalize()
    assert m.bus.device_at(0x18) is None and dev.parent_bus is None
    assert m.mem_as.read(0xE0000000, 4) == 0xFFFFFFFF
    assert m.bus.irq_level(3) == 0
    assert m.add(cls, addr="3").devfn == 0x18


def test_realize_needs_a_bus() -> None:
    dev = make_type()()
    with pytest.raises(VfwError, match="must be plugged"):
        dev.set_realized(True)


@pytest.mark.parametrize(("text", "devfn"), [
    ("0x4", 0x20), ("4", 0x20), ("04", 0x20), ("04.1", 0x21), ("0x4.1", 0x21), ("1f.7", 0xFF),
    ("10", 0x80), ("0", 0), ("00.0", 0), ("0A", 0x50),
])
def test_addr_parsing(text: str, devfn: int) -> None:
    dev = make_type()()
    dev.set_property("addr", text)
    assert dev.devfn == devfn
    assert PCI_DEVFN.format(devfn) == f"{devfn >> 3:02x}.{devfn & 7:x}"


@pytest.mark.parametrize("text", ["0x20", "20", "4.8", "zz", "-1", "4.1x", "", "4.", ".1",
                                  "4 1", "0x", "1.2.3"])
def test_addr_rejects_bad_values(text: str) -> None:
    cls = make_type()
    dev = cls()
    with pytest.raises(PropertyError) as exc:
        dev.set_property("addr", text)
    assert str(exc.value) == f"Property '{cls.TYPE}.addr' doesn't take value '{text}'"


def test_addr_as_int_and_help() -> None:
    cls = make_type()
    dev = cls(addr=0x21)
    assert dev.devfn == 0x21
    dev.set_property("addr", -1)
    assert dev.devfn == -1
    for bad in (256, -2, True):
        with pytest.raises(PropertyError, match="expects a value between -1 and 255"):
            dev.set_property("addr", bad)
    help_text = cls.help_text()
    assert "addr=<int32> - Slot and optional function number, example: 06.0 or 06" in help_text
    assert "(default: -1)" in help_text
    assert "multifunction=<bool>" in help_text and "romfile=<str>" in help_text
    cls(romfile="efi-virtio.rom", multifunction="on")


def test_class_id_must_be_16_bit() -> None:
    cls = make_type(CLASS_ID=0x020000)
    with pytest.raises(ValueError, match="PROG_IF"):
        cls()


# --- reset -----------------------------------------------------------------------------------


def test_reset_returns_generic_state_to_power_on(m: FakeMachine) -> None:
    dev = m.add(make_type(BARS=BAR_SET, MSI=(1, True, False), MSIX=(2, 4)), addr="3")
    m.cfg_write(0x18, 0x10, 0xC000)
    m.cfg_write(0x18, 0x14, 0xE0000000)
    m.cfg_write(0x18, 0x1C, 0x2)
    m.cfg_write(0x18, 0x3C, 11, 1)
    m.cfg_write(0x18, 0x0C, 0x10, 1)
    enable(m, 0x18, 0x7)
    setup_msi(m, 0x18, dev.msi_cap, 0x41)
    m.cfg_write(0x18, dev.msix_cap + 2, 0x8000, 2)
    dev.msix_table[0:4] = b"\x01\x02\x03\x04"
    m.cfg_write(0x18, 0x60, 0x12345678)
    assert dev.bar_address(0) == 0xC000 and dev.bar_address(1) == 0xE0000000
    dev.reset()
    assert m.cfg_read(0x18, 0x04, 2) == 0
    assert [m.cfg_read(0x18, r) for r in (0x10, 0x14, 0x18, 0x1C)] == [1, 0, 0xC, 0]
    assert all(dev.bar_address(i) is None for i in (0, 1, 2, 4))
    assert m.io_as.read(0xC000, 1) == 0xFF
    assert m.cfg_read(0x18, 0x3C, 1) == 0 and m.cfg_read(0x18, 0x0C, 1) == 0
    assert not dev.msi_enabled() and m.cfg_read(0x18, dev.msi_cap + 4) == 0
    assert not dev.msix_enabled() and dev.msix_is_masked(0)
    assert dev.msix_table[0:4] == b"\x00\x00\x00\x00" and dev.msix_table[12] == 1
    assert m.cfg_read(0x18, 0x00) == 0x11E81234  # identity kept
    assert m.cfg_read(0x18, 0x60) == 0x12345678  # device-specific: the subclass's business


def test_reset_deasserts_intx(m: FakeMachine) -> None:
    dev = m.add(make_type(), addr="3")
    dev.pci_set_irq(1)
    dev.reset()
    assert m.bus.irq_level(3) == 0 and dev.intx_level == 0
    assert m.cfg_read(0x18, 0x06, 2) & 0x8 == 0


# --- info pci ----------------------------------------------------------------------------------


def test_info_pci_lines(m: FakeMachine) -> None:
    host = make_type(CLASS_ID=0x0600, VENDOR_ID=0x8086, DEVICE_ID=0x1237, INTERRUPT_PIN=0)
    m.add(host, addr="0")
    dev = m.add(make_type(CLASS_ID=0x0200, BARS=BAR_SET, SUBSYSTEM_VENDOR_ID=0x1AF4,
                          SUBSYSTEM_ID=0x0001), addr="3")
    dev.id = "net0"
    m.cfg_write(0x18, 0x10, 0xC000)
    m.cfg_write(0x18, 0x3C, 11, 1)
    enable(m, 0x18, 0x1)
    assert m.bus.info() == [
        "  Bus  0, device   0, function 0:",
        "    Host bridge: PCI device 8086:1237",
        "      PCI subsystem 1af4:1100",
        '      id ""',
        "  Bus  0, device   3, function 0:",
        "    Ethernet controller: PCI device 1234:11e8",
        "      PCI subsystem 1af4:0001",
        "      IRQ 11, pin A",
        "      BAR0: I/O at 0xc000 [0xc01f].",
        "      BAR1: 32 bit memory at 0xffffffffffffffff [0x00000ffe].",
        "      BAR2: 64 bit prefetchable memory at 0xffffffffffffffff [0x00003ffe].",
        '      id "net0"',
    ]
    assert pci_class_description(0x00FF) == "Class 00ff"


def test_bus_is_a_registered_type() -> None:
    from vfw.qom import TABLE

    assert TABLE.lookup("PCI") is PCIBus
    assert TABLE.lookup("pci-device") is PCIDevice
    assert PCIDevice.is_abstract() and PCIBus.KIND == "PCI"
