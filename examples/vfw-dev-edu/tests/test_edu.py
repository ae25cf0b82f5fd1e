"""The edu device driven as a guest driver drives it: PCI configuration, MMIO, DMA, interrupts.

No board and no accelerator: a PCI bus over a small RAM, with interrupt lines and MSI messages
recorded. Run with the plugin installed (``pip install -e examples/vfw-dev-edu``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from vfw_dev_edu.edu import (
    DMA_START,
    EDU_ID,
    EduDevice,
    factorial32,
)

from vfw.memory import AddressSpace, MemoryRegion
from vfw.pci import PCIBus
from vfw.qom import reset_root
from vfw.timer import run_all_expired

RAM_SIZE = 0x100000
BAR = 0xC0000000
MSI_ADDRESS = 0xFEE00000


class Bench:
    """RAM at 0, a PCI memory window, one edu at 00:04.0 with its BAR at 0xC0000000."""

    def __init__(self, **props: object) -> None:
        self.system = MemoryRegion.container("system", 1 << 64)
        self.ram = MemoryRegion.ram("ram", RAM_SIZE)
        self.system.add_subregion(0, self.ram)
        self.pci_mem = MemoryRegion.container("pci", 1 << 64)
        self.system.add_subregion(0, self.pci_mem, priority=-1)
        self.mem = AddressSpace("memory", self.system)
        self.levels: list[tuple[int, int]] = []
        self.msis: list[tuple[int, int]] = []
        self.bus = PCIBus.create("pci.0", mem_region=self.pci_mem, dma_as=self.mem,
                                 set_irq=lambda pirq, level: self.levels.append((pirq, level)),
                                 msi_sink=lambda a, d: self.msis.append((a, d)))
        self.dev = EduDevice()
        self.dev.set_property("addr", 4 << 3)
        for name, value in props.items():
            self.dev.set_property(name, value)
        self.bus.plug(self.dev)
        self.dev.set_realized(True)
        self.dev.config_write(0x10, BAR, 4)
        self.dev.config_write(0x04, 0x6, 2)  # memory decoding + bus master

    def read(self, reg: int, size: int = 4) -> int:
        return self.mem.read(BAR + reg, size)

    def write(self, reg: int, value: int, size: int = 4) -> None:
        self.mem.write(BAR + reg, value, size)

    def settle(self) -> None:
        """Let the device's virtual-time work (factorial, DMA) finish."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            time.sleep(0.0005)
            run_all_expired()
            if not self.read(0x20) & 1 and not self.read(0x98) & 1:
                return
        raise AssertionError("edu never finished its work")

    @property
    def line(self) -> int:
        return self.bus.irq_level(self.bus.map_irq(self.dev.devfn, 0))


@pytest.fixture(autouse=True)
def fresh_tree() -> Iterator[None]:
    reset_root()
    yield
    reset_root()


@pytest.fixture
def b() -> Bench:
    return Bench()


def test_header_identifies_the_device(b: Bench) -> None:
    d = b.dev
    assert d.get_config(0x00, 2) == 0x1234 and d.get_config(0x02, 2) == 0x11E8
    assert d.get_config(0x08, 1) == 0x10 and d.get_config(0x0A, 2) == 0x00FF
    assert d.get_config(0x3D, 1) == 1  # INTA#
    assert d.bars[0].size == 1 << 20 and d.bars[0].kind == "mem32"
    assert d.find_capability(0x05)  # MSI


def test_identification_and_liveness(b: Bench) -> None:
    assert b.read(0x00) == EDU_ID
    b.write(0x04, 0x12345678)
    assert b.read(0x04) == 0xEDCBA987
    # Registers below 0x80 are 32-bit only: other sizes read all-ones and write nothing.
    assert b.read(0x04, 8) == (1 << 64) - 1
    b.write(0x04, 0, 8)
    assert b.read(0x04) == 0xEDCBA987


@pytest.mark.parametrize("n", [0, 1, 5, 10, 12, 13, 33, 34, 1000])
def test_factorial_wraps_at_32_bits(n: int) -> None:
    expect = 1
    for k in range(2, n + 1):
        expect = expect * k % (1 << 32)
    assert factorial32(n) == expect


def test_factorial_sets_busy_then_raises_intx(b: Bench) -> None:
    b.write(0x20, 0x80 | 0x01)  # only the interrupt-enable bit is writable
    assert b.read(0x20) == 0x80
    b.write(0x08, 10)
    assert b.read(0x20) & 1  # computing
    b.write(0x08, 3)  # ignored while computing
    b.settle()
    assert b.read(0x08) == 3628800
    assert b.read(0x24) == 0x1
    assert b.line == 1 and b.dev.get_config(0x06, 2) & 0x8  # INTx and its status bit
    b.write(0x64, 0x1)
    assert b.read(0x24) == 0 and b.line == 0


def test_raise_and_acknowledge_keep_the_line_up_while_any_reason_is_left(b: Bench) -> None:
    b.write(0x60, 0x30)
    assert b.read(0x24) == 0x30 and b.line == 1
    b.write(0x64, 0x10)
    assert b.read(0x24) == 0x20 and b.line == 1
    b.write(0x64, 0x20)
    assert b.line == 0


def test_msi_replaces_intx_when_enabled(b: Bench) -> None:
    cap = b.dev.find_capability(0x05)
    b.dev.config_write(cap + 4, MSI_ADDRESS, 4)
    b.dev.config_write(cap + 8, 0, 4)
    b.dev.config_write(cap + 12, 0x41, 2)
    b.dev.config_write(cap + 2, 1, 2)  # enable
    b.write(0x20, 0x80)
    b.write(0x08, 5)
    b.settle()
    assert b.read(0x08) == 120
    assert b.msis == [(MSI_ADDRESS, 0x41)] and b.line == 0
    b.write(0x64, 1)
    assert b.read(0x24) == 0


def test_dma_round_trip_through_the_device_buffer(b: Bench) -> None:
    pattern = bytes(range(256)) * 2
    b.mem.write_bytes(0x1000, pattern)
    b.write(0x80, 0x1000, 8)
    b.write(0x88, DMA_START + 0x100, 8)
    b.write(0x90, len(pattern), 8)
    b.write(0x98, 0x1 | 0x4)  # RAM -> device, interrupt when done
    assert b.read(0x98) & 1
    b.write(0x80, 0x5000)  # ignored while running
    b.settle()
    assert b.read(0x80) == 0x1000 and b.read(0x24) == 0x100 and b.line == 1
    b.write(0x64, 0x100)
    b.write(0x80, DMA_START + 0x100)
    b.write(0x88, 0x3000)
    b.write(0x98, 0x1 | 0x2)  # device -> RAM, no interrupt
    b.settle()
    assert b.mem.read_bytes(0x3000, len(pattern)) == pattern
    assert b.read(0x24) == 0


def test_dma_registers_take_64_bit_and_split_32_bit_accesses(b: Bench) -> None:
    b.write(0x88, 0x1_2345_6789, 8)
    assert b.read(0x88, 8) == 0x1_2345_6789
    assert b.read(0x88) == 0x2345_6789 and b.read(0x8C) == 1
    b.write(0x88, 0x10)  # a 32-bit write at the register sets it whole, as QEMU
    b.write(0x8C, 2)  # and +4 the upper half
    assert b.read(0x88, 8) == 0x2_0000_0010


@pytest.mark.parametrize("buf_addr, count", [
    (DMA_START - 1, 16), (DMA_START + 4090, 16), (0, 16), (DMA_START, 4097),
    ((1 << 64) - 8, 16),
])
def test_dma_outside_the_buffer_moves_nothing_and_completes(
        b: Bench, buf_addr: int, count: int, caplog: pytest.LogCaptureFixture) -> None:
    b.mem.write_bytes(0x2000, b"\xaa" * 32)
    b.write(0x80, 0x2000, 8)
    b.write(0x88, buf_addr, 8)
    b.write(0x90, count, 8)
    with caplog.at_level(logging.WARNING, logger="vfw.guest_errors"):
        b.write(0x98, 0x1 | 0x4)
        b.settle()
    assert "outside the device buffer" in caplog.text
    assert b.dev.buffer == bytearray(4096)
    assert b.read(0x24) == 0x100  # the driver still hears about it


def test_dma_to_missing_ram_or_without_bus_master_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    b = Bench(dma_mask=(1 << 64) - 1)
    b.write(0x80, DMA_START)
    b.write(0x88, 0x8000_0000)  # no RAM there
    b.write(0x90, 64)
    with caplog.at_level(logging.WARNING, logger="vfw.guest_errors"):
        b.write(0x98, 0x1 | 0x2)
        b.settle()
        b.dev.config_write(0x04, 0x2, 2)  # bus master off
        b.write(0x88, 0x1000)
        b.write(0x98, 0x1 | 0x2)
        b.settle()
    assert caplog.text.count("DMA failed") == 2


def test_dma_mask_clamps_guest_addresses() -> None:
    b = Bench(dma_mask=0xFFFF)
    b.mem.write_bytes(0x1234, b"clamped!")
    b.write(0x80, 0x7_0000_1234, 8)
    b.write(0x88, DMA_START)
    b.write(0x90, 8)
    b.write(0x98, 1)
    b.settle()
    assert bytes(b.dev.buffer[:8]) == b"clamped!"


def test_reset_clears_registers_and_interrupts(b: Bench) -> None:
    b.write(0x04, 5)
    b.write(0x60, 1)
    b.write(0x08, 4)
    assert b.line == 1
    b.dev.reset()
    assert b.line == 0 and b.dev.irq_status == 0 and b.dev.status == 0
    assert not b.dev.fact_timer.pending and b.dev.liveness == 0


def test_unknown_registers_read_all_ones_and_ignore_writes(b: Bench) -> None:
    assert b.read(0x40) == 0xFFFFFFFF and b.read(0xA0, 8) == (1 << 64) - 1
    assert b.read(0x40000) == 0xFFFFFFFF  # the buffer is for DMA only
    b.write(0x24, 7)
    b.write(0x00, 7)
    assert b.read(0x24) == 0 and b.read(0x00) == EDU_ID


def test_a_hostile_driver_never_raises_or_wedges_the_device(b: Bench) -> None:
    """Random accesses of every size to every register, DMA with random addresses and counts,
    MSI toggled on and off: nothing raises, and the device still works afterwards."""
    import random

    rng = random.Random(8)
    regs = [0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64, 0x80, 0x84, 0x88, 0x8C, 0x90, 0x94, 0x98,
            0x9C, 0xA0, 0x40000, 0xFFFF8]
    cap = b.dev.find_capability(0x05)
    logging.getLogger("vfw.guest_errors").disabled = True
    try:
        for i in range(3000):
            reg = rng.choice(regs) + rng.choice([0, 0, 0, 1, 2, 3])
            size = rng.choice([1, 2, 4, 8])
            if rng.random() < 0.5:
                b.read(reg, size)
            else:
                b.write(reg, rng.getrandbits(64) if rng.random() < 0.5 else rng.randrange(0x100),
                        size)
            if i % 97 == 0:
                b.dev.config_write(cap + 2, rng.randrange(2), 2)
            if i % 13 == 0:
                time.sleep(0.0002)
                run_all_expired()
        b.settle()
    finally:
        logging.getLogger("vfw.guest_errors").disabled = False
    b.write(0x64, 0xFFFFFFFF)
    b.dev.config_write(cap + 2, 0, 2)
    b.write(0x08, 6)
    b.settle()
    assert b.read(0x08) == 720 and b.read(0x00) == EDU_ID
