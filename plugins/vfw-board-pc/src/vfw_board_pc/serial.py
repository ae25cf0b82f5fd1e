"""The 16550A UART (QEMU's hw/char/serial.c) and its ISA wrapper ``isa-serial``.

What guests rely on, and this model does:

* registers RBR/THR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR and the divisor latch (DLAB), with
  the reset values QEMU gives them (MCR has OUT2 set, MSR shows DCD/DSR/CTS, 9600 baud);
* a 16-byte receive FIFO with trigger levels 1/4/8/14 and the character-timeout interrupt
  (4 character times without activity, on the virtual clock);
* interrupt priorities: line status > received data / timeout > THR empty > modem status;
  IIR reads OR 0xC0 while the FIFOs are enabled (Linux's 16550A detection); an IIR read that
  reports THR empty clears it; enabling the THRE interrupt with an empty transmitter raises it
  at once (Linux tests for this at start-up);
* loopback (MCR bit 4): transmitted bytes come back as received ones and MSR mirrors MCR;
* output goes straight to the chardev; if the host is not keeping up the transmitter reports
  busy until the chardev has drained; input is taken only when the FIFO has room.
"""

from __future__ import annotations

import logging
from collections import deque

from vfw.chardev import CHARDEV, Chardev
from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.props import UINT32, prop
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, NS_PER_SEC, Clock, Timer

from .isa import ISADevice

__all__ = ["COM_IOBASE", "COM_IRQ", "ISASerial", "UART16550A"]

guest_log = logging.getLogger("vfw.guest_errors")

# Register bits.
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO_ENABLED = 0xC0
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT, LSR_RXFE = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

FIFO_SIZE = 16
TRIGGER_LEVELS = (1, 4, 8, 14)
#: The 1.8432 MHz crystal divided by 16: the baud rate of divisor 1.
BAUD_BASE = 115200

#: COM1-COM4 as the PC defines them (QEMU's isa_serial_io / isa_serial_irq).
COM_IOBASE = (0x3F8, 0x2F8, 0x3E8, 0x2E8)
COM_IRQ = (4, 3, 4, 3)
MAX_ISA_SERIAL_PORTS = len(COM_IOBASE)
#: "Not set" for isa-serial's index/iobase/irq (QEMU uses -1 in a uint32).
AUTO = 0xFFFFFFFF


class UART16550A:
    """The UART itself, independent of how it is attached (ISA here; PCI or MMIO boards can
    reuse it). ``read(offset)`` / ``write(offset, value)`` take register offsets 0-7."""

    def __init__(self, irq: IRQ | None = None, chardev: Chardev | None = None,
                 clock: Clock = CLOCK_VIRTUAL, name: str = "serial"):
        self.irq = irq
        self.chardev = chardev
        self.clock = clock
        self.name = name
        self._timeout_timer = Timer(clock, self._char_timeout)
        self._rx: deque[int] = deque()
        self._tx: deque[int] = deque()  # bytes the chardev has not taken yet
        self._tx_waiting = False
        self._irq_level = 0
        self.reset()

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on values (QEMU's serial_reset)."""
        self.rbr = 0
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.scr = 0
        self.divider = 0x0C
        #: Modem input lines when not in loopback (no real modem: carrier, ready, clear).
        self.modem_lines = MSR_DCD | MSR_DSR | MSR_CTS
        self._msr_lines = self.modem_lines
        self._msr_delta = 0
        self.thr_ipending = False
        self.timeout_ipending = False
        self._rx.clear()
        self._tx.clear()
        self._timeout_timer.delete()
        self._update_irq()

    def attach_chardev(self, chardev: Chardev | None) -> None:
        if self.chardev is not None:
            self.chardev.clear_frontend(self.receive)
        self.chardev = chardev
        if chardev is not None:
            chardev.set_frontend(self.can_receive, self.receive)

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    @property
    def trigger_level(self) -> int:
        return TRIGGER_LEVELS[self.fcr >> 6] if self.fifo_enabled else 1

    def char_time_ns(self) -> int:
        """Time on the wire of one character at the programmed speed and frame format."""
        divider = self.divider or 0x10000
        bits = 1 + 5 + (self.lcr & 0x03) + (1 if self.lcr & 0x08 else 0)
        bits += 2 if self.lcr & 0x04 else 1
        return bits * divider * NS_PER_SEC // BAUD_BASE

    # -- interrupts ------------------------------------------------------------------------------
    def _pending(self) -> int:
        """The interrupt IIR reports (its low four bits), by priority."""
        if self.ier & IER_RLSI and self.lsr & LSR_ERRORS:
            return IIR_RLSI
        if self.ier & IER_RDI:
            if self.timeout_ipending:
                return IIR_CTI
            if self._rx and len(self._rx) >= self.trigger_level:
                return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self._msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = 0 if self._pending() == IIR_NO_INT else 1
        if level != self._irq_level:
            self._irq_level = level
            if self.irq is not None:
                self.irq.set(level)

    # -- guest accesses -------------------------------------------------------------------------
    def read(self, offset: int) -> int:
        offset &= 7
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            return self._read_rbr()
        if offset == 1:
            if self.lcr & LCR_DLAB:
                return (self.divider >> 8) & 0xFF
            return self.ier
        if offset == 2:
            pending = self._pending()
            value = pending | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
            if pending == IIR_THRI:
                self.thr_ipending = False
                self._update_irq()
            return value
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            value = self.lsr
            if value & (LSR_ERRORS | LSR_RXFE):
                self.lsr &= ~(LSR_ERRORS | LSR_RXFE)
                self._update_irq()
            return value
        if offset == 6:
            value = self._msr_lines | self._msr_delta
            if self._msr_delta:
                self._msr_delta = 0
                self._update_irq()
            return value
        return self.scr

    def write(self, offset: int, value: int) -> None:
        offset &= 7
        value &= 0xFF
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
            else:
                self._write_thr(value)
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif offset == 2:
            self._write_fcr(value)
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self._write_mcr(value)
        elif offset == 7:
            self.scr = value
        else:
            guest_log.debug("%s: write 0x%02x to read-only register %d ignored",
                            self.name, value, offset)

    def _write_ier(self, value: int) -> None:
        old = self.ier
        self.ier = value & 0x0F
        if self.ier & IER_THRI:
            if not old & IER_THRI and self.lsr & LSR_THRE:
                # A 16550 re-asserts THRE when the interrupt is enabled with an empty
                # transmitter; Linux's start-up test depends on it.
                self.thr_ipending = True
        else:
            self.thr_ipending = False
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_ENABLE:
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX  # switching FIFO mode empties both
        if value & FCR_CLEAR_RX:
            self._clear_rx()
        if value & FCR_CLEAR_TX and self._tx:
            self._tx.clear()
            self._transmitter_empty()
        self.fcr = value & 0xC9 if value & FCR_ENABLE else 0
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        was_loop = self.loopback
        self.mcr = value & 0x1F
        self._set_msr_lines()
        if was_loop and not self.loopback and self.chardev is not None:
            self.chardev.accept_input()
        self._update_irq()

    def _set_msr_lines(self) -> None:
        if self.loopback:
            m = self.mcr
            lines = (((m & MCR_RTS) << 3) | ((m & MCR_DTR) << 5)
                     | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4))
        else:
            lines = self.modem_lines & 0xF0
        changed = lines ^ self._msr_lines
        delta = 0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        if self._msr_lines & MSR_RI and not lines & MSR_RI:
            delta |= MSR_TERI
        self._msr_lines = lines
        self._msr_delta |= delta

    # -- transmit ---------------------------------------------------------------------------------
    def _write_thr(self, value: int) -> None:
        # The holding register is full for a moment: THRE drops (and with it a THRE
        # interrupt, so the next one is a fresh edge, as on QEMU's UART).
        self.thr_ipending = False
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        if self.loopback:
            self._push_rx(value)
            self._arm_timeout()
            self._transmitter_empty()
            return
        if self._tx:  # still waiting for the host: queue as a FIFO would, or overrun
            if len(self._tx) < (FIFO_SIZE if self.fifo_enabled else 1):
                self._tx.append(value)
            else:
                guest_log.debug("%s: transmitter overrun, byte 0x%02x dropped", self.name, value)
            return
        chardev = self.chardev
        if chardev is not None and chardev.write(bytes((value,))) == 0:
            self._tx.append(value)
            self._wait_for_host()
            return
        self._transmitter_empty()

    def _wait_for_host(self) -> None:
        if not self._tx_waiting and self.chardev is not None:
            self._tx_waiting = True
            self.chardev.notify_writable(self._host_writable)

    def _host_writable(self) -> None:
        self._tx_waiting = False
        if not self._tx:
            return
        data = bytes(self._tx)
        taken = len(data) if self.chardev is None else self.chardev.write(data)
        for _ in range(taken):
            self._tx.popleft()
        if self._tx:
            self._wait_for_host()
        else:
            self._transmitter_empty()

    def _transmitter_empty(self) -> None:
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_ipending = True
        self._update_irq()

    # -- receive --------------------------------------------------------------------------
    def can_receive(self) -> int:
        """How many bytes the host may deliver now (none in loopback: the line is cut)."""
        if self.loopback:
            return 0
        if self.fifo_enabled:
            return FIFO_SIZE - len(self._rx)
        return 0 if self._rx else 1

    def receive(self, data: bytes) -> None:
        """Bytes from the chardev (BQL held)."""
        for byte in data:
            self._push_rx(byte)
        self._arm_timeout()
        self._update_irq()

    def _push_rx(self, byte: int) -> None:
        if self.fifo_enabled:
            if len(self._rx) >= FIFO_SIZE:
                self.lsr |= LSR_OE  # the FIFO keeps its contents, the new byte is lost
            else:
                self._rx.append(byte)
            self.timeout_ipending = False
        else:
            if self._rx:
                self.lsr |= LSR_OE  # the unread byte is overwritten
                self._rx.clear()
            self._rx.append(byte)
        self.lsr |= LSR_DR

    def _arm_timeout(self) -> None:
        """Restart the character timeout: it fires 4 character times after the last
        activity while the FIFO holds data."""
        if self.fifo_enabled and self._rx:
            self._timeout_timer.mod(self.clock.now_ns() + 4 * self.char_time_ns())

    def _read_rbr(self) -> int:
        had_room = self.can_receive() > 0
        if self._rx:
            self.rbr = self._rx.popleft()
        if not self._rx:
            self.lsr &= ~LSR_DR
            self._timeout_timer.delete()
        else:
            self._arm_timeout()
        self.timeout_ipending = False
        self._update_irq()
        if not had_room and self.chardev is not None and self.can_receive() > 0:
            self.chardev.accept_input()
        return self.rbr

    def _clear_rx(self) -> None:
        had_room = self.can_receive() > 0
        self._rx.clear()
        self.lsr &= ~LSR_DR
        self.timeout_ipending = False
        self._timeout_timer.delete()
        if not had_room and self.chardev is not None:
            self.chardev.accept_input()

    def _char_timeout(self) -> None:
        if self.fifo_enabled and self._rx:
            self.timeout_ipending = True
            self._update_irq()

    @property
    def rx_count(self) -> int:
        return len(self._rx)


@register_type
class ISASerial(ISADevice):
    """A 16550A on the ISA bus (QEMU's isa-serial)."""

    TYPE = "isa-serial"
    CATEGORY = "input"
    DESC = "16550A UART on the ISA bus"

    index = prop(UINT32, AUTO, "COM port number 0-3 (picks the next free one if unset)")
    iobase = prop(UINT32, AUTO, "I/O base port (the COM port's standard one if unset)")
    irq = prop(UINT32, AUTO, "ISA interrupt line (the COM port's standard one if unset)")
    chardev = prop(CHARDEV, None, "ID of a chardev to use as a backend")

    def instance_init(self) -> None:
        #: The clock the character timeout runs on; tests substitute a manual one.
        self.clock: Clock = CLOCK_VIRTUAL
        self.uart: UART16550A | None = None

    def realize(self) -> None:
        bus = self.isa_bus
        index = self.index
        if index == AUTO:
            index = bus.next_serial_index
        if index >= MAX_ISA_SERIAL_PORTS:
            raise VfwError(f"Max. supported number of ISA serial ports is "
                           f"{MAX_ISA_SERIAL_PORTS}.")
        iobase = COM_IOBASE[index] if self.iobase == AUTO else self.iobase
        irq_n = COM_IRQ[index] if self.irq == AUTO else self.irq
        if irq_n >= 16:
            raise VfwError(f"isa irq {irq_n} invalid")
        line = self.isa_irq(irq_n)
        uart = UART16550A(line, None, self.clock, name=f"serial@0x{iobase:x}")
        region = MemoryRegion.io("serial", 8, self._io_read, self._io_write,
                                 valid_sizes=(1, 4), impl_sizes=(1, 1))
        self.isa_register_io(iobase, region)
        try:
            uart.attach_chardev(self.chardev)
        except VfwError:
            self.isa_bus.release(self)
            raise
        self.uart = uart
        self.index = index
        bus.next_serial_index = max(bus.next_serial_index, index + 1)

    def unrealize(self) -> None:
        if self.uart is not None:
            self.uart.attach_chardev(None)
            self.uart.reset()
            self.uart = None
        super().unrealize()

    def reset(self) -> None:
        if self.uart is not None:
            self.uart.reset()

    def _io_read(self, offset: int, size: int) -> int:
        assert self.uart is not None
        return self.uart.read(offset)

    def _io_write(self, offset: int, value: int, size: int) -> None:
        assert self.uart is not None
        self.uart.write(offset, value)
