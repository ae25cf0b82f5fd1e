"""``edu``: QEMU's educational PCI device (1234:11e8), written against vfw's public API.

What a driver sees (QEMU's docs/specs/edu.rst): BAR0 is 1 MiB of MMIO registers,

====  ====  ===============================================================================
0x00  RO    identification 0x010000ed (major 1, minor 0, "ed(u)")
0x04  RW    liveness check: reads back the bitwise inversion of what was written
0x08  RW    factorial: writing n starts computing n! (32-bit, wrapping) unless a computation
            is running; reading gives the result once status bit 0 is clear
0x20  RW    status: bit 0 computing (read-only), bit 7 raise interrupt 0x001 when done
0x24  RO    interrupt status: the OR of every pending interrupt reason
0x60  WO    raise interrupt: ORs the value into interrupt status
0x64  WO    acknowledge interrupt: clears the value's bits from interrupt status
0x80  RW    DMA source address, 0x88 destination, 0x90 count (64-bit registers)
0x98  RW    DMA command: bit 0 start (reads 1 while running), bit 1 direction (0: guest RAM
            to the device buffer, 1: device buffer to guest RAM), bit 2 raise 0x100 when done
====  ====  ===============================================================================

The 4 KiB device buffer sits at DMA address 0x40000 (only DMA reaches it). Registers below
0x80 take 32-bit accesses, the DMA registers 32- or 64-bit ones: a 32-bit write at a register
sets all of it, zero-extended, as QEMU's does; one at register + 4 sets the upper half (an
extension, so 32-bit drivers can reach addresses above 4 GiB). The interrupt is MSI when the
guest enabled the MSI capability, else INTA#, asserted while interrupt status is non-zero.

Unlike QEMU's model, a bad DMA request (buffer range outside the device buffer, a guest
address outside RAM, bus mastering off) never stops the host: it is logged to
``vfw.guest_errors``, no data moves, and the transfer completes (run bit clear, interrupt
raised if asked) so a driver waiting for it does not hang.
"""

from __future__ import annotations

import logging

from vfw.errors import GuestError
from vfw.memory import MemoryRegion
from vfw.pci import PCIDevice
from vfw.props import UINT64, prop
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, Timer

__all__ = ["EduDevice", "factorial32"]

guest_log = logging.getLogger("vfw.guest_errors")

EDU_ID = 0x010000ED
BAR_SIZE = 1 << 20

REG_ID = 0x00
REG_LIVENESS = 0x04
REG_FACTORIAL = 0x08
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

STATUS_COMPUTING = 0x01
STATUS_IRQ_FACT = 0x80

IRQ_FACT = 0x001
IRQ_DMA = 0x100

DMA_START = 0x40000
DMA_SIZE = 4096
DMA_CMD_RUN = 0x1
DMA_CMD_TO_RAM = 0x2
DMA_CMD_IRQ = 0x4

#: Virtual time a factorial and a DMA transfer take: long enough that a driver sees the busy
#: bits, short enough that polling drivers and tests stay quick (QEMU's DMA takes 100 ms).
FACT_DELAY_NS = 10_000
DMA_DELAY_NS = 100_000

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def factorial32(n: int) -> int:
    """n! modulo 2**32, as the device computes it (a 32-bit multiply that wraps)."""
    result = 1
    for k in range(2, n + 1):
        result = (result * k) & _U32
        if result == 0:
            break  # every further product stays 0 (n >= 34)
    return result


@register_type
class EduDevice(PCIDevice):
    """The edu device: identification, liveness, factorial with interrupt, DMA, MSI or INTx."""

    TYPE = "edu"
    CATEGORY = "misc"
    DESC = "educational PCI device (factorial, interrupts, DMA), QEMU's edu"
    VENDOR_ID = 0x1234
    DEVICE_ID = 0x11E8
    REVISION = 0x10
    CLASS_ID = 0x00FF  # "unclassified", as QEMU's PCI_CLASS_OTHERS
    INTERRUPT_PIN = 1  # INTA#

    dma_mask = prop(UINT64, (1 << 28) - 1, "DMA address mask: guest addresses are clamped to it",
                    name="dma_mask")  # QEMU's spelling

    def instance_init(self) -> None:
        self.buffer = bytearray(DMA_SIZE)
        self.mmio = MemoryRegion.io("edu-mmio", BAR_SIZE, self._mmio_read, self._mmio_write,
                                    valid_sizes=(4, 8), impl_sizes=(4, 8), unaligned=False)
        self.fact_timer = Timer(CLOCK_VIRTUAL, self._factorial_done)
        self.dma_timer = Timer(CLOCK_VIRTUAL, self._dma_done)
        self._clear_registers()

    def _clear_registers(self) -> None:
        self.liveness = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_count = self.dma_cmd = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def realize(self) -> None:
        self.register_bar(0, self.mmio, "mem32")
        self.msi_init(vectors=1, is_64bit=True)

    def unrealize(self) -> None:
        self.fact_timer.delete()
        self.dma_timer.delete()

    def reset(self) -> None:
        super().reset()  # command register, BARs, MSI, INTx
        self.fact_timer.delete()
        self.dma_timer.delete()
        self._clear_registers()
        self.buffer[:] = bytes(DMA_SIZE)

    # -- interrupts --------------------------------------------------------------------------
    def raise_irq(self, reason: int) -> None:
        """OR ``reason`` into interrupt status and signal it (one MSI, or INTA# held high)."""
        self.irq_status |= reason & _U32
        if not self.irq_status:
            return
        if self.msi_enabled():
            self.msi_notify(0)
        else:
            self.pci_set_irq(1)

    def lower_irq(self, reason: int) -> None:
        """Clear ``reason`` from interrupt status; INTA# drops when nothing is left."""
        self.irq_status &= ~reason & _U32
        if not self.irq_status and not self.msi_enabled():
            self.pci_set_irq(0)

    # -- registers ---------------------------------------------------------------------------
    def _mmio_read(self, offset: int, size: int) -> int:
        if offset < REG_DMA_SRC:
            if size != 4:
                guest_log.debug("edu: %d-byte read at 0x%x (32-bit only)", size, offset)
                return _U64
            if offset == REG_ID:
                return EDU_ID
            if offset == REG_LIVENESS:
                return ~self.liveness & _U32
            if offset == REG_FACTORIAL:
                return self.fact
            if offset == REG_STATUS:
                return self.status
            if offset == REG_IRQ_STATUS:
                return self.irq_status
            return _U32
        reg = self._dma_register(offset & ~7)
        if reg is None:
            return _U64 if size == 8 else _U32
        value = int(getattr(self, reg))
        if size == 4:
            return (value >> 32 if offset & 4 else value) & _U32
        return value

    def _mmio_write(self, offset: int, value: int, size: int) -> None:
        if offset < REG_DMA_SRC:
            if size != 4:
                guest_log.debug("edu: %d-byte write at 0x%x (32-bit only)", size, offset)
                return
            if offset == REG_LIVENESS:
                self.liveness = value
            elif offset == REG_FACTORIAL:
                if self.status & STATUS_COMPUTING:
                    guest_log.debug("edu: factorial written while computing; ignored")
                    return
                self.fact = value
                self.status |= STATUS_COMPUTING
                self.fact_timer.mod_in(FACT_DELAY_NS)
            elif offset == REG_STATUS:
                self.status = (self.status & ~STATUS_IRQ_FACT) | (value & STATUS_IRQ_FACT)
            elif offset == REG_IRQ_RAISE:
                self.raise_irq(value)
            elif offset == REG_IRQ_ACK:
                self.lower_irq(value)
            else:
                guest_log.debug("edu: write 0x%x to read-only or unknown register 0x%x",
                                value, offset)
            return
        reg = self._dma_register(offset & ~7)
        if reg is None:
            guest_log.debug("edu: write 0x%x to unknown register 0x%x", value, offset)
            return
        if self.dma_cmd & DMA_CMD_RUN:
            guest_log.debug("edu: DMA register 0x%x written during a transfer; ignored", offset)
            return
        if size == 4:
            old = getattr(self, reg)
            value = (old & _U32) | (value << 32) if offset & 4 else value
        if reg == "dma_cmd":
            if not value & DMA_CMD_RUN:
                return  # as QEMU: only a write that starts a transfer is taken
            self.dma_cmd = value & _U64
            self.dma_timer.mod_in(DMA_DELAY_NS)
            return
        setattr(self, reg, value & _U64)

    @staticmethod
    def _dma_register(offset: int) -> str | None:
        return {REG_DMA_SRC: "dma_src", REG_DMA_DST: "dma_dst", REG_DMA_COUNT: "dma_count",
                REG_DMA_CMD: "dma_cmd"}.get(offset)

    # -- the work ------------------------------------------------------------------------------
    def _factorial_done(self) -> None:
        self.fact = factorial32(self.fact)
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQ_FACT:
            self.raise_irq(IRQ_FACT)

    def _buffer_range(self, addr: int, count: int) -> int | None:
        """Offset into the device buffer of [addr, addr + count), or None if it falls outside."""
        if addr >= DMA_START and addr + count <= DMA_START + DMA_SIZE:
            return addr - DMA_START
        return None

    def _clamp(self, addr: int) -> int:
        clamped = addr & int(self.dma_mask)
        if clamped != addr:
            guest_log.debug("edu: DMA address 0x%x clamped to 0x%x", addr, clamped)
        return clamped

    def _dma_done(self) -> None:
        cmd, count = self.dma_cmd, self.dma_count
        to_ram = bool(cmd & DMA_CMD_TO_RAM)
        buf_addr = self.dma_src if to_ram else self.dma_dst
        offset = self._buffer_range(buf_addr, count)
        if offset is None:
            guest_log.warning("edu: DMA of %d bytes at buffer address 0x%x is outside the"
                              " device buffer 0x%x-0x%x; nothing transferred", count, buf_addr,
                              DMA_START, DMA_START + DMA_SIZE - 1)
        else:
            try:
                if to_ram:
                    self.dma_write(self._clamp(self.dma_dst),
                                   bytes(self.buffer[offset:offset + count]))
                else:
                    data = self.dma_read(self._clamp(self.dma_src), count)
                    self.buffer[offset:offset + count] = data
            except GuestError as exc:
                guest_log.warning("edu: DMA failed: %s", exc)
        self.dma_cmd &= ~DMA_CMD_RUN
        if cmd & DMA_CMD_IRQ:
            self.raise_irq(IRQ_DMA)
