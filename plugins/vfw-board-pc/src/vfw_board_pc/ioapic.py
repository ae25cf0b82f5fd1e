"""The I/O APIC (``ioapic``, an 82093AA with version 0x20 and 24 pins).

Each input pin has a 64-bit redirection entry that turns an assertion into an APIC message
(vector, delivery mode, physical/logical destination) sent through the APIC bus. Edge pins
deliver on each rising edge (ignored while masked, as the 82093AA does); level pins deliver
while asserted and set Remote IRR until a local APIC broadcasts the EOI for that vector
(``eoi``), then deliver again if the line is still asserted. Polarity is recorded but not
applied: vfw interrupt lines are 1 when asserted, whatever the wire's electrical level.

Registers are reached indirectly: IOREGSEL at offset 0x00 selects, IOWIN at 0x10 reads or
writes the selected 32-bit register; version 0x20 adds the EOI register at 0x40. The board maps
``mmio`` (4 KiB, the size operating systems map) at 0xfec00000 and connects ``apic_bus``
(``APICBus.add_ioapic`` does both halves of the wiring).
"""

from __future__ import annotations

import logging
from typing import Protocol

from vfw.irq import IRQ, allocate_irqs
from vfw.memory import MemoryRegion
from vfw.props import UINT8, prop
from vfw.qdev import Device
from vfw.qom import register_type

__all__ = ["IOAPIC", "NUM_PINS"]

guest_log = logging.getLogger("vfw.guest_errors")

NUM_PINS = 24
IOAPIC_ADDRESS = 0xFEC00000

REG_ID, REG_VER, REG_ARB = 0x00, 0x01, 0x02
REG_REDTBL = 0x10

# Redirection entry bits.
VECTOR_MASK = 0xFF
DELIVERY_MODE_SHIFT = 8
DEST_MODE_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
DEST_SHIFT = 56
#: Bits software may change (delivery status and remote IRR are read-only).
RW_BITS = 0xFFFF_0000_0000_0000 | MASKED | TRIGGER_LEVEL | POLARITY_LOW | DEST_MODE_LOGICAL \
    | (7 << DELIVERY_MODE_SHIFT) | VECTOR_MASK

DM_EXTINT = 7


class APICBusLike(Protocol):
    """What the IOAPIC needs from the APIC bus (vfw_board_pc.apic.APICBus)."""

    def deliver(self, dest: int, dest_mode: int, delivery_mode: int, vector: int,
                trigger_mode: int) -> None: ...


@register_type
class IOAPIC(Device):
    """24-pin I/O APIC. ``irqs``: input lines (GSI 0-23); ``apic_bus``: where messages go."""

    TYPE = "ioapic"
    DESC = "I/O APIC"
    USER_CREATABLE = False

    version = prop(UINT8, 0x20, "IOAPIC version (0x11 or 0x20)")

    def instance_init(self) -> None:
        self.apic_bus: APICBusLike | None = None
        self.levels = 0  # input line levels
        self.irqs: list[IRQ] = allocate_irqs(self._set_irq, NUM_PINS, "ioapic")
        self.mmio = MemoryRegion.io("ioapic", 0x1000, self._read, self._write,
                                    valid_sizes=(1, 4), impl_sizes=(1, 4))
        self.reset()

    def reset(self) -> None:
        self.ioapic_id = 0
        self.ioregsel = 0
        self.irr = 0  # latched edge requests
        self.redtbl = [MASKED] * NUM_PINS

    # -- pins --------------------------------------------------------------------------------
    def _set_irq(self, pin: int, level: int) -> None:
        mask = 1 << pin
        was = self.levels & mask
        if level:
            self.levels |= mask
        else:
            self.levels &= ~mask
        entry = self.redtbl[pin]
        if entry & TRIGGER_LEVEL:
            if level:
                self._service()
        elif level and not was and not entry & MASKED:
            self.irr |= mask
            self._service()

    def _service(self) -> None:
        bus = self.apic_bus
        if bus is None:
            return
        for pin in range(NUM_PINS):
            mask = 1 << pin
            entry = self.redtbl[pin]
            if entry & MASKED:
                continue
            if entry & TRIGGER_LEVEL:
                if not self.levels & mask or entry & REMOTE_IRR:
                    continue
                self.redtbl[pin] = entry | REMOTE_IRR
            else:
                if not self.irr & mask:
                    continue
                self.irr &= ~mask
            bus.deliver((entry >> DEST_SHIFT) & 0xFF, 1 if entry & DEST_MODE_LOGICAL else 0,
                        (entry >> DELIVERY_MODE_SHIFT) & 7, entry & VECTOR_MASK,
                        1 if entry & TRIGGER_LEVEL else 0)

    def eoi(self, vector: int) -> None:
        """A local APIC's EOI for a level-triggered ``vector``: clear Remote IRR of the pins
        that sent it, and deliver again from those whose line is still asserted."""
        hit = False
        for pin, entry in enumerate(self.redtbl):
            if entry & REMOTE_IRR and entry & VECTOR_MASK == vector:
                self.redtbl[pin] = entry & ~REMOTE_IRR
                hit = True
        if hit:
            self._service()

    # -- registers ---------------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index == REG_ID:
            return self.ioapic_id << 24
        if index == REG_VER:
            return ((NUM_PINS - 1) << 16) | int(self.version)
        if index == REG_ARB:
            return self.ioapic_id << 24
        if REG_REDTBL <= index < REG_REDTBL + 2 * NUM_PINS:
            entry = self.redtbl[(index - REG_REDTBL) >> 1]
            return (entry >> 32) if index & 1 else entry & 0xFFFFFFFF
        guest_log.debug("ioapic: read of unknown register 0x%02x", index)
        return 0

    def write_register(self, index: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if index == REG_ID:
            self.ioapic_id = (value >> 24) & 0xF
            return
        if REG_REDTBL <= index < REG_REDTBL + 2 * NUM_PINS:
            pin = (index - REG_REDTBL) >> 1
            old = self.redtbl[pin]
            if index & 1:
                new = (old & 0xFFFFFFFF) | (value << 32)
            else:
                new = (old & ~0xFFFFFFFF) | value
            new = (new & RW_BITS) | (old & (REMOTE_IRR | DELIVERY_STATUS))
            if not new & TRIGGER_LEVEL:
                new &= ~REMOTE_IRR  # Linux clears a stuck Remote IRR by switching to edge
            self.redtbl[pin] = new
            if (new >> DELIVERY_MODE_SHIFT) & 7 not in (0, 1, 2, 4, 5, DM_EXTINT):
                guest_log.debug("ioapic: pin %d: reserved delivery mode in 0x%x", pin, new)
            self._service()
            return
        guest_log.debug("ioapic: write of 0x%x to read-only or unknown register 0x%02x",
                        value, index)

    def _read(self, offset: int, size: int) -> int:
        base, shift = offset & ~3, 8 * (offset & 3)
        if base == 0x00:
            return self.ioregsel >> shift
        if base == 0x10:
            return self.read_register(self.ioregsel) >> shift
        return 0

    def _write(self, offset: int, value: int, size: int) -> None:
        if offset == 0x00:
            self.ioregsel = value & 0xFF
        elif offset == 0x10 and size == 4:
            self.write_register(self.ioregsel, value)
        elif offset == 0x40 and self.version >= 0x20:
            self.eoi(value & 0xFF)
        else:
            guest_log.debug("ioapic: ignored %d-byte write of 0x%x at offset 0x%x",
                            size, value, offset)
