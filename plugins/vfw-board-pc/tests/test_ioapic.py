"""The I/O APIC: registers, redirection to the APIC bus, masking and level re-assertion."""

from __future__ import annotations

import pytest

from vfw.cpu import set_current_cpu
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import TABLE
from vfw_board_pc.apic import APICBus
from vfw_board_pc.cpu_state import X86CPUState
from vfw_board_pc.ioapic import IOAPIC

IOAPIC_BASE = 0xFEC00000
APIC_BASE = 0xFEE00000


class FakeCPU:
    def __init__(self, index: int) -> None:
        self.env = X86CPUState()
        self.env.reset(bsp=index == 0)
        self.apic_id = index
        self.cpu_index = index
        self.kicks = 0
        self.interrupt_controller = None

    def kick(self) -> None:
        self.kicks += 1
        self.env.interrupt_request = True


class Recorder:
    """Stands in for the APIC bus: records the messages."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, int, int, int]] = []

    def deliver(self, dest: int, dest_mode: int, delivery_mode: int, vector: int,
                trigger_mode: int) -> None:
        self.messages.append((dest, dest_mode, delivery_mode, vector, trigger_mode))


class Board:
    def __init__(self) -> None:
        self.ioapic = IOAPIC()
        self.ioapic.set_realized(True)
        self.bus = APICBus()
        self.cpus = [FakeCPU(0), FakeCPU(1)]
        self.lapics = [self.bus.add_cpu(c) for c in self.cpus]
        self.bus.add_ioapic(self.ioapic)
        root = MemoryRegion.container("sysmem", 1 << 32)
        root.add_subregion(IOAPIC_BASE, self.ioapic.mmio)
        root.add_subregion(APIC_BASE, self.bus.mmio)
        self.mem = AddressSpace("memory", root)
        for cpu in self.cpus:
            self.apic_write(cpu, 0xF0, 0x1FF)  # software-enable every local APIC

    def apic_write(self, cpu: FakeCPU, reg: int, value: int) -> None:
        set_current_cpu(cpu)  # type: ignore[arg-type]
        try:
            self.mem.write(APIC_BASE + reg, value, 4)
        finally:
            set_current_cpu(None)

    def io_read(self, index: int) -> int:
        self.mem.write(IOAPIC_BASE, index, 4)
        return self.mem.read(IOAPIC_BASE + 0x10, 4)

    def io_write(self, index: int, value: int) -> None:
        self.mem.write(IOAPIC_BASE, index, 4)
        self.mem.write(IOAPIC_BASE + 0x10, value, 4)

    def route(self, pin: int, low: int, dest: int) -> None:
        self.io_write(0x10 + 2 * pin + 1, dest << 24)
        self.io_write(0x10 + 2 * pin, low)

    def entry(self, pin: int) -> int:
        return self.io_read(0x10 + 2 * pin) | (self.io_read(0x11 + 2 * pin) << 32)


@pytest.fixture
def b() -> Board:
    return Board()


def test_type_is_registered_and_board_only() -> None:
    assert TABLE.lookup("ioapic") is IOAPIC
    assert IOAPIC.USER_CREATABLE is False


def test_identification_registers(b: Board) -> None:
    assert b.io_read(0x01) == 0x00170020  # 24 entries, version 0x20
    assert b.io_read(0x00) == 0
    b.io_write(0x00, 0x0A000000)
    assert b.io_read(0x00) == 0x0A000000
    b.io_write(0x01, 0)  # read-only
    assert b.io_read(0x01) == 0x00170020
    assert b.mem.read(IOAPIC_BASE, 4) == 0x01  # IOREGSEL reads back
    assert all(b.entry(pin) == 0x10000 for pin in range(24))  # masked after reset


def test_edge_pin_delivers_through_the_apic_bus(b: Board) -> None:
    b.route(4, 0x0000_0041, dest=1)  # COM1: fixed, physical, edge, vector 0x41, to APIC 1
    assert b.entry(4) == (1 << 56) | 0x41
    b.ioapic.irqs[4].set(1)
    lapic = b.lapics[1]
    assert lapic.irr == 1 << 0x41 and not lapic.tmr
    assert b.cpus[1].kicks == 1 and b.cpus[0].kicks == 0
    assert lapic.has_interrupt() and lapic.acknowledge() == 0x41
    # Held high: one edge, one message.
    b.ioapic.irqs[4].set(1)
    assert lapic.irr == 0
    b.ioapic.irqs[4].set(0)
    b.ioapic.irqs[4].set(1)
    assert lapic.irr == 1 << 0x41


def test_masked_pin_ignores_edges(b: Board) -> None:
    b.route(3, 0x0001_0033, dest=0)
    b.ioapic.irqs[3].pulse()
    assert b.lapics[0].irr == 0
    b.route(3, 0x0000_0033, dest=0)  # unmasking does not replay an edge seen while masked
    assert b.lapics[0].irr == 0
    b.ioapic.irqs[3].pulse()
    assert b.lapics[0].irr == 1 << 0x33


def test_messages_carry_the_redirection_fields() -> None:
    io = IOAPIC()
    rec = Recorder()
    io.apic_bus = rec
    io.write_register(0x10 + 2 * 9 + 1, 0x03 << 24)
    io.write_register(0x10 + 2 * 9, 0x0000_A950)  # level, low-active, logical, lowest prio
    io.irqs[9].set(1)
    assert rec.messages == [(0x03, 1, 1, 0x50, 1)]
    io.write_register(0x10 + 2 * 2, 0x0000_0700)  # ExtINT
    io.irqs[2].pulse()
    assert rec.messages[-1] == (0, 0, 7, 0, 0)


def test_level_pin_remote_irr_and_reassertion_after_eoi(b: Board) -> None:
    b.route(16, 0x0000_A051, dest=1)  # PCI INTA#: level, low-active, vector 0x51
    line = b.ioapic.irqs[16]
    lapic = b.lapics[1]
    line.set(1)
    assert lapic.irr == 1 << 0x51 and lapic.tmr == 1 << 0x51
    assert b.entry(16) & (1 << 14)  # remote IRR
    assert lapic.acknowledge() == 0x51
    line.set(1)  # still asserted: no new message while remote IRR is set
    assert lapic.irr == 0
    b.apic_write(b.cpus[1], 0xB0, 0)  # EOI: broadcast to the IOAPIC, line still high
    assert lapic.irr == 1 << 0x51
    assert b.entry(16) & (1 << 14)
    assert lapic.acknowledge() == 0x51
    line.set(0)  # the driver quiets the device
    b.apic_write(b.cpus[1], 0xB0, 0)
    assert lapic.irr == 0 and lapic.isr == 0
    assert not b.entry(16) & (1 << 14)
    line.set(1)
    assert lapic.irr == 1 << 0x51


def test_level_pin_masked_then_unmasked_delivers(b: Board) -> None:
    b.route(17, 0x0001_A052, dest=0)
    b.ioapic.irqs[17].set(1)
    assert b.lapics[0].irr == 0
    b.route(17, 0x0000_A052, dest=0)
    assert b.lapics[0].irr == 1 << 0x52


def test_edge_switch_clears_stuck_remote_irr_and_eoi_register(b: Board) -> None:
    b.route(18, 0x0000_A053, dest=0)
    b.ioapic.irqs[18].set(1)
    assert b.entry(18) & (1 << 14)
    # Linux's workaround: mask, switch to edge (clears remote IRR), back to level.
    b.route(18, 0x0001_2053, dest=0)
    assert not b.entry(18) & (1 << 14)
    b.route(18, 0x0000_A053, dest=0)
    assert b.entry(18) & (1 << 14)  # still asserted: delivered again
    b.mem.write(IOAPIC_BASE + 0x40, 0x53, 4)  # version 0x20 EOI register
    assert b.entry(18) & (1 << 14)  # re-delivered at once because the line is high
    b.ioapic.irqs[18].set(0)
    b.mem.write(IOAPIC_BASE + 0x40, 0x53, 4)
    assert not b.entry(18) & (1 << 14)


def test_logical_destination(b: Board) -> None:
    for i, cpu in enumerate(b.cpus):
        b.apic_write(cpu, 0xE0, 0xFFFFFFFF)  # flat model
        b.apic_write(cpu, 0xD0, (1 << i) << 24)
    b.route(5, 0x0000_0845, dest=0x02)  # logical, to LDR bit 1
    b.ioapic.irqs[5].pulse()
    assert b.lapics[1].irr == 1 << 0x45 and b.lapics[0].irr == 0
    b.route(6, 0x0000_0846, dest=0x03)  # both
    b.ioapic.irqs[6].pulse()
    assert b.lapics[0].irr == 1 << 0x46 and b.lapics[1].irr & (1 << 0x46)


def test_guest_errors_do_not_raise(b: Board) -> None:
    b.io_write(0x7F, 0x1234)
    assert b.io_read(0x7F) == 0
    b.mem.write(IOAPIC_BASE + 0x10, 0x12, 1)  # sub-dword IOWIN write: ignored
    b.mem.write(IOAPIC_BASE + 0x800, 1, 4)
    assert b.mem.read(IOAPIC_BASE + 0x800, 4) == 0
    b.ioapic.reset()
    assert b.entry(0) == 0x10000
