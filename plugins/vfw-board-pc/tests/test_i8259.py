"""The i8259 pair as Linux, firmware and the CPU's INTA cycle use it."""

from __future__ import annotations

import pytest

from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import TABLE
from vfw_board_pc.i8259 import PICPair


class Board:
    """A PIC pair mapped at its PC ports, with the INT pin recorded."""

    def __init__(self) -> None:
        self.pic = PICPair()
        self.pic.set_realized(True)
        self.int_levels: list[int] = []
        self.pic.output = self.int_levels.append
        root = MemoryRegion.container("io", 0x10000)
        root.add_subregion(0x20, self.pic.master_io)
        root.add_subregion(0xA0, self.pic.slave_io)
        root.add_subregion(0x4D0, self.pic.elcr_io)
        self.io = AddressSpace("io", root)

    def outb(self, port: int, value: int) -> None:
        self.io.write(port, value, 1)

    def inb(self, port: int) -> int:
        return self.io.read(port, 1)

    @property
    def int_pin(self) -> int:
        return self.int_levels[-1] if self.int_levels else 0

    def linux_init(self, auto_eoi: bool = False) -> None:
        """Linux 6.1's probe_8259A + init_8259A (vectors 0x30-0x3f), cascade unmasked."""
        self.outb(0x21, 0xFF)
        assert self.inb(0x21) == 0xFF  # probe: the IMR reads back
        self.outb(0xA1, 0xFF)
        self.outb(0x20, 0x11)  # ICW1: edge, cascade, ICW4 needed
        self.outb(0x21, 0x30)  # ICW2: vector base
        self.outb(0x21, 0x04)  # ICW3: slave on IR2
        self.outb(0x21, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode
        self.outb(0xA0, 0x11)
        self.outb(0xA1, 0x38)
        self.outb(0xA1, 0x02)
        self.outb(0xA1, 0x01)
        self.outb(0x21, 0xFB)  # everything masked but the cascade
        self.outb(0xA1, 0xFF)

    def isr(self, cmd_port: int) -> int:
        self.outb(cmd_port, 0x0B)  # OCW3: read ISR
        value = self.inb(cmd_port)
        self.outb(cmd_port, 0x0A)  # back to IRR
        return value


@pytest.fixture
def b() -> Board:
    return Board()


def test_type_is_registered_and_board_only() -> None:
    cls = TABLE.lookup("isa-i8259")
    assert cls is PICPair
    assert cls.USER_CREATABLE is False


def test_linux_init_masks_and_vectors(b: Board) -> None:
    b.linux_init()
    assert b.inb(0x21) == 0xFB and b.inb(0xA1) == 0xFF
    b.pic.irqs[1].set(1)  # keyboard, masked
    assert not b.pic.has_interrupt() and b.int_pin == 0
    assert b.inb(0x20) == 0x02  # but requested (IRR)
    b.outb(0x21, 0xF9)  # unmask IRQ1
    assert b.pic.has_interrupt() and b.int_pin == 1
    assert b.pic.acknowledge() == 0x31
    assert b.isr(0x20) == 0x02
    assert not b.pic.has_interrupt() and b.int_pin == 0
    b.pic.irqs[1].set(0)
    b.outb(0x20, 0x61)  # specific EOI for IRQ1, as Linux's mask_and_ack_8259A
    assert b.isr(0x20) == 0
    # Edge-triggered: the line has to go low and high again for another request.
    b.pic.irqs[1].set(1)
    assert b.pic.acknowledge() == 0x31


def test_priority_and_nesting(b: Board) -> None:
    b.linux_init()
    b.outb(0x21, 0x00)
    b.pic.irqs[5].set(1)
    assert b.pic.acknowledge() == 0x35
    b.pic.irqs[6].set(1)  # lower priority than the one in service: held
    assert not b.pic.has_interrupt()
    b.pic.irqs[3].set(1)  # higher priority: nests
    assert b.pic.acknowledge() == 0x33
    assert b.isr(0x20) == 0x28
    b.outb(0x20, 0x20)  # non-specific EOI retires the highest priority (IRQ3)
    assert b.isr(0x20) == 0x20
    assert not b.pic.has_interrupt()
    b.outb(0x20, 0x20)
    assert b.pic.acknowledge() == 0x36


def test_rotation_and_poll_mode(b: Board) -> None:
    b.linux_init()
    b.outb(0x21, 0x00)
    b.outb(0x20, 0xC0 | 4)  # OCW2 set priority: IRQ4 lowest, so IRQ5 highest
    b.pic.irqs[1].set(1)
    b.pic.irqs[6].set(1)
    b.outb(0x20, 0x0C)  # OCW3 poll
    assert b.inb(0x20) == 0x86
    assert b.isr(0x20) == 0x40
    b.outb(0x20, 0xA0)  # rotate on non-specific EOI: IRQ6 becomes lowest
    assert b.isr(0x20) == 0
    b.pic.irqs[6].set(0)
    b.pic.irqs[6].set(1)
    b.outb(0x20, 0x0C)
    assert b.inb(0x20) == 0x81  # IRQ1 now outranks IRQ6
    b.outb(0x20, 0x61)  # specific EOI, no rotation
    b.outb(0x20, 0x0C)
    assert b.inb(0x20) == 0x86
    b.outb(0x20, 0x0C)
    assert b.inb(0x20) == 0x00  # IRQ6 in service, nothing else requested


def test_auto_eoi(b: Board) -> None:
    b.linux_init(auto_eoi=True)
    b.outb(0x21, 0x00)
    b.pic.irqs[4].set(1)
    assert b.pic.acknowledge() == 0x34
    assert b.isr(0x20) == 0
    b.pic.irqs[3].set(1)
    assert b.pic.acknowledge() == 0x33  # nothing in service blocks it


def test_cascade_through_irq2(b: Board) -> None:
    b.linux_init()
    b.outb(0xA1, 0xEF)  # unmask IRQ12
    b.pic.irqs[12].set(1)
    assert b.pic.has_interrupt() and b.int_pin == 1
    assert b.pic.acknowledge() == 0x3C
    assert b.isr(0x20) == 0x04 and b.isr(0xA0) == 0x10
    assert not b.pic.has_interrupt()
    # Linux acks the slave then the master cascade.
    b.outb(0xA0, 0x60 + 4)
    b.outb(0x20, 0x60 + 2)
    assert b.isr(0x20) == 0 and b.isr(0xA0) == 0
    # With IRQ2 masked on the master, the slave cannot interrupt.
    b.outb(0x21, 0xFF)
    b.pic.irqs[12].set(0)
    b.pic.irqs[12].set(1)
    assert not b.pic.has_interrupt()
    b.outb(0x21, 0xFB)
    assert b.pic.acknowledge() == 0x3C


def test_two_slave_requests_are_both_served(b: Board) -> None:
    b.linux_init()
    b.outb(0xA1, 0x00)
    b.pic.irqs[8].set(1)
    b.pic.irqs[14].set(1)
    assert b.pic.acknowledge() == 0x38
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert b.pic.has_interrupt()
    assert b.pic.acknowledge() == 0x3E


def test_elcr_level_versus_edge(b: Board) -> None:
    b.linux_init()
    b.outb(0x4D0, 0xFF)
    b.outb(0x4D1, 0xFF)
    assert b.inb(0x4D0) == 0xF8 and b.inb(0x4D1) == 0xDE  # IRQ0-2, 8, 13 stay edge
    b.outb(0x4D0, 0x00)
    b.outb(0x4D1, 0x04)  # IRQ10 level-triggered (a PCI interrupt)
    b.outb(0xA1, 0xF3)  # unmask IRQ10, IRQ11
    # Level: still asserted after the EOI -> requested again.
    b.pic.irqs[10].set(1)
    assert b.pic.acknowledge() == 0x3A
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert b.pic.acknowledge() == 0x3A
    b.pic.irqs[10].set(0)  # the device is serviced
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    assert not b.pic.has_interrupt()
    # Edge: held high, one request only.
    b.pic.irqs[11].set(1)
    assert b.pic.acknowledge() == 0x3B
    b.outb(0xA0, 0x20)
    b.outb(0x20, 0x20)
    b.pic.irqs[11].set(1)  # repeated level, no new edge
    assert not b.pic.has_interrupt()


def test_spurious_irq7_and_irq15(b: Board) -> None:
    b.linux_init()
    b.outb(0x21, 0x00)
    b.outb(0xA1, 0x00)
    b.outb(0x4D0, 0x20)  # IRQ5 level
    b.pic.irqs[5].set(1)
    assert b.pic.has_interrupt()
    b.pic.irqs[5].set(0)  # request withdrawn before INTA
    assert b.pic.acknowledge() == 0x37
    assert b.isr(0x20) == 0  # a spurious IRQ7 is not put in service
    # On the slave: the master latched the cascade edge, the slave's request went away.
    b.outb(0x4D1, 0x02)  # IRQ9 level
    b.pic.irqs[9].set(1)
    b.pic.irqs[9].set(0)
    assert b.pic.has_interrupt()
    assert b.pic.acknowledge() == 0x3F
    assert b.isr(0xA0) == 0 and b.isr(0x20) == 0x04
    b.outb(0x20, 0x62)
    assert not b.pic.has_interrupt()


def test_reinit_requires_new_edge_and_reset_clears(b: Board) -> None:
    b.linux_init()
    b.pic.irqs[3].set(1)
    b.linux_init()  # ICW1 resets the edge detectors
    b.outb(0x21, 0x00)
    assert not b.pic.has_interrupt()
    b.outb(0x4D0, 0x08 | 0x80)
    b.pic.reset()
    assert b.inb(0x4D0) == 0 and b.inb(0x21) == 0
