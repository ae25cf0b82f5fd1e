"""The PC's cascaded pair of Intel 8259A programmable interrupt controllers (``isa-i8259``).

The master serves IRQ 0-7 and delivers its INT pin to the CPU (through LAPIC LINT0 when there
is one); the slave serves IRQ 8-15 and is cascaded into the master's IR2. Both chips follow the
8259A data sheet as Linux, SeaBIOS and DOS use them: ICW1-ICW4 initialisation, OCW1 masks,
OCW2 EOI / rotation commands, OCW3 register select / poll / special mask, auto-EOI, and the
PIIX edge/level control registers (ELCR) at 0x4d0/0x4d1 that make a line level-sensitive.
An INTA cycle with nothing to serve yields the spurious IRQ7 (or IRQ15 on the slave) vector.

The board maps ``master_io`` at 0x20, ``slave_io`` at 0xa0 and ``elcr_io`` at 0x4d0, drives
``irqs[0..15]`` and connects ``output`` (the master's INT level).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vfw.irq import IRQ, allocate_irqs
from vfw.memory import MemoryRegion
from vfw.qdev import Device
from vfw.qom import register_type

__all__ = ["PICChip", "PICPair"]

guest_log = logging.getLogger("vfw.guest_errors")

#: ELCR bits that can be set: IRQ0-2 (timer, keyboard, cascade) and IRQ8/13 are always edge.
ELCR_MASK_MASTER = 0xF8
ELCR_MASK_SLAVE = 0xDE


class PICChip:
    """One 8259A. ``int_changed(level)`` is told its INT output after every state change."""

    def __init__(self, name: str, is_master: bool, elcr_mask: int,
                 int_changed: Callable[[int], None]):
        self.name = name
        self.is_master = is_master
        self.elcr_mask = elcr_mask
        self._int_changed = int_changed
        self.levels = 0  # current input line levels
        #: The slave's INT level on master IR2, a request whatever the trigger mode.
        self.cascade = 0
        self.elcr = 0
        self.int_level = 0
        self.reset()

    def reset(self) -> None:
        """Power-on state (ELCR included, as PIIX resets it)."""
        self.elcr = 0
        self._init_reset()
        self.irr = 0
        self.last_irr = 0

    def _init_reset(self) -> None:
        self.imr = 0
        self.isr = 0
        self.priority_add = 0  # IRQ with highest priority = priority_add
        self.irq_base = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.init_state = 0
        self.init4 = False
        self.single_mode = False
        self.ltim = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False

    # -- inputs ------------------------------------------------------------------------------
    def _level_mode(self, mask: int) -> bool:
        return self.ltim or bool(self.elcr & mask)

    def set_irq(self, irq: int, level: int) -> None:
        mask = 1 << irq
        if level:
            self.levels |= mask
        else:
            self.levels &= ~mask
        if self._level_mode(mask):
            if level:
                self.irr |= mask
            else:
                self.irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self.update()

    # -- priority resolution -------------------------------------------------------------------
    def _priority(self, mask: int) -> int:
        """Priority (0 = highest) of the highest-priority bit in ``mask``, 8 if none."""
        if not mask & 0xFF:
            return 8
        p = 0
        while not mask & (1 << ((p + self.priority_add) & 7)):
            p += 1
        return p

    def get_irq(self) -> int:
        """The IRQ (0-7) this chip would request now, or -1."""
        p = self._priority((self.irr | self.cascade) & ~self.imr)
        if p == 8:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.is_master:
            in_service &= ~(1 << 2)  # the slave may nest inside its own cascade
        if p < self._priority(in_service):
            return (p + self.priority_add) & 7
        return -1

    def update(self) -> None:
        self.int_level = 1 if self.get_irq() >= 0 else 0
        self._int_changed(self.int_level)

    def intack(self, irq: int) -> None:
        """The INTA cycle for ``irq``: mark it in service (or rotate on auto-EOI)."""
        mask = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= mask
        if not self._level_mode(mask):
            self.irr &= ~mask

    def poll_read(self) -> int:
        irq = self.get_irq()
        if irq < 0:
            return 0
        self.intack(irq)
        self.update()
        return 0x80 | irq

    # -- I/O ---------------------------------------------------------------------------------
    def _eoi(self, irq: int, rotate: bool) -> None:
        self.isr &= ~(1 << irq)
        if rotate:
            self.priority_add = (irq + 1) & 7

    def write(self, port: int, value: int) -> None:
        value &= 0xFF
        if port == 0:
            if value & 0x10:  # ICW1
                self._init_reset()
                # The edge detectors restart: a line already high needs a fresh rising edge.
                self.last_irr = self.levels
                self.irr &= self.elcr
                self.init4 = bool(value & 1)
                self.single_mode = bool(value & 2)
                self.ltim = bool(value & 8)
                if self.ltim:
                    self.irr = self.levels
                self.init_state = 1
            elif value & 0x08:  # OCW3
                if value & 0x04:
                    self.poll = True
                if value & 0x02:
                    self.read_isr = bool(value & 1)
                if value & 0x40:
                    self.special_mask = bool(value & 0x20)
            else:  # OCW2
                cmd = value >> 5
                if cmd in (0, 4):
                    self.rotate_on_auto_eoi = cmd == 4
                elif cmd in (1, 5):  # non-specific EOI (and rotate)
                    in_service = self.isr & ~self.imr if self.special_mask else self.isr
                    p = self._priority(in_service)
                    if p != 8:
                        self._eoi((p + self.priority_add) & 7, cmd == 5)
                elif cmd in (3, 7):  # specific EOI (and rotate)
                    self._eoi(value & 7, cmd == 7)
                elif cmd == 6:  # set lowest priority
                    self.priority_add = (value + 1) & 7
            self.update()
            return
        state = self.init_state
        if state == 0:  # OCW1
            self.imr = value
            self.update()
        elif state == 1:  # ICW2
            self.irq_base = value & 0xF8
            self.init_state = 2 if not self.single_mode else (3 if self.init4 else 0)
        elif state == 2:  # ICW3 (cascade wiring is fixed on a PC)
            self.init_state = 3 if self.init4 else 0
        else:  # ICW4
            self.special_fully_nested = bool(value & 0x10)
            self.auto_eoi = bool(value & 0x02)
            if not value & 0x01:
                guest_log.debug("%s: ICW4 without 8086 mode (0x%02x) not supported",
                                self.name, value)
            self.init_state = 0
            self.update()

    def read(self, port: int) -> int:
        if self.poll:
            self.poll = False
            return self.poll_read()
        if port == 0:
            return self.isr if self.read_isr else self.irr | self.cascade
        return self.imr

    def write_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        # Lines that became level-sensitive request while high; edge lines keep what they latched.
        self.irr = (self.irr & ~self.elcr) | (self.levels & self.elcr)
        self.update()


@register_type
class PICPair(Device):
    """Master + slave 8259A as a PC wires them; the CPU's interrupt controller without an APIC.

    ``irqs``: 16 input lines (ISA IRQ n). ``output(level)``: the master INT pin. The CPU side
    calls ``has_interrupt()`` and ``acknowledge()`` (INTA: returns the vector).
    """

    TYPE = "isa-i8259"
    DESC = "ISA i8259 interrupt controllers (master and slave)"
    USER_CREATABLE = False

    def instance_init(self) -> None:
        self.output: Callable[[int], None] | IRQ | None = None
        self.slave = PICChip("pic-slave", False, ELCR_MASK_SLAVE, self._slave_int)
        self.master = PICChip("pic-master", True, ELCR_MASK_MASTER, self._master_int)
        self.irqs: list[IRQ] = allocate_irqs(self._set_irq, 16, "isa-i8259")
        self.master_io = MemoryRegion.io("pic-master", 2, self._master_read, self._master_write,
                                         valid_sizes=(1, 1))
        self.slave_io = MemoryRegion.io("pic-slave", 2, self._slave_read, self._slave_write,
                                        valid_sizes=(1, 1))
        self.elcr_io = MemoryRegion.io("elcr", 2, self._elcr_read, self._elcr_write,
                                       valid_sizes=(1, 1))

    def reset(self) -> None:
        self.master.reset()
        self.slave.reset()
        # Line levels survive a reset: re-latch the ones held high.
        for chip in (self.slave, self.master):
            chip.last_irr = chip.levels
            chip.update()

    # -- wiring ------------------------------------------------------------------------------
    def _set_irq(self, n: int, level: int) -> None:
        if n >= 8:
            self.slave.set_irq(n - 8, level)
        else:
            self.master.set_irq(n, level)

    def _slave_int(self, level: int) -> None:
        # Master IR2 is an edge input like the others (a request that vanishes after the
        # edge makes the slave answer INTA with the spurious IRQ15), and it also follows the
        # slave's INT level so a request still pending after an INTA is not lost.
        master = self.master
        cascade = 4 if level else 0
        if master.cascade != cascade:
            if cascade:
                master.irr |= 4
            master.cascade = cascade
            master.update()

    def _master_int(self, level: int) -> None:
        out = self.output
        if out is None:
            return
        if isinstance(out, IRQ):
            out.set(level)
        else:
            out(level)

    # -- CPU interface -----------------------------------------------------------------------
    def has_interrupt(self) -> bool:
        """The master's INT pin: an unmasked request outranks everything in service."""
        return self.master.get_irq() >= 0

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver; the IRQs go in service.

        With nothing to serve (the request went away), the chip answers with IRQ7's vector,
        and the slave with IRQ15's: the spurious interrupts operating systems expect.
        """
        master, slave = self.master, self.slave
        irq = master.get_irq()
        if irq < 0:
            vector = master.irq_base + 7
        elif irq == 2 and not master.single_mode:
            irq2 = slave.get_irq()
            if irq2 >= 0:
                slave.intack(irq2)
            else:
                irq2 = 7
            vector = slave.irq_base + irq2
            master.intack(2)
            slave.update()  # may drop the cascade request on the master
        else:
            vector = master.irq_base + irq
            master.intack(irq)
        master.update()
        return vector

    # -- I/O ---------------------------------------------------------------------------------
    def _master_read(self, offset: int, size: int) -> int:
        return self.master.read(offset & 1)

    def _master_write(self, offset: int, value: int, size: int) -> None:
        self.master.write(offset & 1, value)

    def _slave_read(self, offset: int, size: int) -> int:
        return self.slave.read(offset & 1)

    def _slave_write(self, offset: int, value: int, size: int) -> None:
        self.slave.write(offset & 1, value)

    def _elcr_read(self, offset: int, size: int) -> int:
        return (self.slave if offset & 1 else self.master).elcr

    def _elcr_write(self, offset: int, value: int, size: int) -> None:
        (self.slave if offset & 1 else self.master).write_elcr(value)
