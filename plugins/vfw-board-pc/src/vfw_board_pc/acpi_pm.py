"""The ACPI fixed-feature power-management registers (PIIX4-PM style, at I/O port 0x600).

This is how an ACPI guest powers the machine off (writing SLP_TYP=S5 with SLP_EN to PM1a_CNT),
reads a stable clock (the 24-bit, 3.579545 MHz PM timer) and learns that the power button was
pressed (PWRBTN_STS, raising the SCI). The FADT built by :mod:`vfw_board_pc.acpi` points at
these registers and declares no GPE block and no SMI command port, so the machine is always in
ACPI mode: SCI_EN reads as set from reset.

Register block (16 bytes at ``PM_IO_BASE``)::

    +0x0 PM1a_STS (16, write 1 to clear)  +0x2 PM1a_EN (16)  +0x4 PM1a_CNT (16)
    +0x8 PM_TMR (32, read-only; bits 24-31 read 0)          other bytes read 0
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.qdev import Device
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, NS_PER_SEC, Timer

from .acpi import PM_IO_BASE, SLP_TYP_S5

__all__ = ["PM_IO_BASE", "PM_IO_SIZE", "PM_TIMER_FREQUENCY", "AcpiPM"]

log = logging.getLogger(__name__)
guest_log = logging.getLogger("vfw.guest_errors")

PM_IO_SIZE = 16
PM_TIMER_FREQUENCY = 3_579_545
PM_TIMER_MASK = 0xFFFFFF
PM_TIMER_MSB = 1 << 23

# Register offsets within the block.
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x0, 0x2, 0x4, 0x8

# PM1_STS / PM1_EN bits.
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
PM1_STS_MASK = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS
#: Enable bits that exist (the others read 0); events that may raise the SCI.
PM1_EN_MASK = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS

# PM1_CNT bits.
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2  # write-only
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 7 << SLP_TYP_SHIFT
SLP_EN = 1 << 13  # write-only
PM1_CNT_MASK = SCI_EN | BM_RLD | SLP_TYP_MASK


def _ticks(now_ns: int) -> int:
    return now_ns * PM_TIMER_FREQUENCY // NS_PER_SEC


def _ns_at_tick(tick: int) -> int:
    """The first virtual-clock time at which the counter reads ``tick`` or more."""
    return -(-tick * NS_PER_SEC // PM_TIMER_FREQUENCY)


@register_type
class AcpiPM(Device):
    """PM1a event/control registers and the PM timer, raising the SCI on enabled events.

    The board maps :attr:`pm_io` at port 0x600, connects :attr:`sci` to IRQ 9 (i8259 and
    I/O APIC) and sets :attr:`shutdown_request` (called when the guest enters S5).
    """

    TYPE = "vfw-acpi-pm"
    DESC = "ACPI power management registers (PM1a, PM timer)"
    CATEGORY = "bridge"
    USER_CREATABLE = False

    def instance_init(self) -> None:
        self.pm_io = MemoryRegion.io("acpi-pm", PM_IO_SIZE, self._read, self._write,
                                     valid_sizes=(1, 4), impl_sizes=(1, 4))
        #: The SCI output; the board replaces it with the interrupt controller's input line.
        self.sci = IRQ(None, 0, "acpi-sci")
        #: Called (under the BQL) when the guest requests soft-off; set by the board.
        self.shutdown_request: Callable[[], None] | None = None
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self._sci_level = 0
        # Counter value at which the next TMR_STS is due (bit 23 of the counter toggles).
        self._next_overflow = self._overflow_after(self.timer_value_raw())
        self._overflow_timer = Timer(CLOCK_VIRTUAL, self._overflow_fired)

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self._next_overflow = self._overflow_after(self.timer_value_raw())
        self._overflow_timer.delete()
        self._update_sci(force=True)

    def unrealize(self) -> None:
        self._overflow_timer.delete()

    @staticmethod
    def timer_value_raw() -> int:
        """PM timer ticks since the virtual clock's epoch (not wrapped)."""
        return _ticks(CLOCK_VIRTUAL.now_ns())

    def timer_value(self) -> int:
        """What PM_TMR reads now: the 24-bit counter."""
        return self.timer_value_raw() & PM_TIMER_MASK

    @staticmethod
    def _overflow_after(ticks: int) -> int:
        return ((ticks >> 23) + 1) << 23

    def _poll_overflow(self) -> None:
        """Latch TMR_STS if bit 23 of the counter has toggled since it was last latched."""
        now = self.timer_value_raw()
        if now >= self._next_overflow:
            self.pm1_sts |= TMR_STS
            self._next_overflow = self._overflow_after(now)

    def _arm_overflow_timer(self) -> None:
        if self.pm1_en & TMR_STS:
            self._overflow_timer.mod(_ns_at_tick(self._next_overflow))
        else:
            self._overflow_timer.delete()

    def _overflow_fired(self) -> None:
        self._poll_overflow()
        self._update_sci()
        self._arm_overflow_timer()

    def _update_sci(self, force: bool = False) -> None:
        level = int(bool(self.pm1_cnt & SCI_EN)
                    and bool(self.pm1_sts & self.pm1_en & PM1_EN_MASK))
        if force or level != self._sci_level:
            self._sci_level = level
            self.sci.set(level)

    # -- events ----------------------------------------------------------------------------
    def power_button(self) -> None:
        """A press of the (fixed-feature) power button: QMP ``system_powerdown``."""
        self.pm1_sts |= PWRBTN_STS
        self._update_sci()

    # -- guest access ----------------------------------------------------------------------
    def _registers(self) -> bytes:
        self._poll_overflow()
        data = bytearray(PM_IO_SIZE)
        data[PM1_STS:PM1_STS + 2] = self.pm1_sts.to_bytes(2, "little")
        data[PM1_EN:PM1_EN + 2] = self.pm1_en.to_bytes(2, "little")
        data[PM1_CNT:PM1_CNT + 2] = self.pm1_cnt.to_bytes(2, "little")
        data[PM_TMR:PM_TMR + 4] = self.timer_value().to_bytes(4, "little")
        return bytes(data)

    def _read(self, offset: int, size: int) -> int:
        regs = self._registers()
        return int.from_bytes(regs[offset:offset + size].ljust(size, b"\x00"), "little")

    def _write(self, offset: int, value: int, size: int) -> None:
        raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        clear_sts = 0
        en_bytes = bytearray(self.pm1_en.to_bytes(2, "little"))
        cnt_bytes = bytearray(self.pm1_cnt.to_bytes(2, "little"))
        wrote_en = wrote_cnt = False
        for i, byte in enumerate(raw):
            reg = offset + i
            if PM1_STS <= reg < PM1_STS + 2:
                clear_sts |= byte << (8 * (reg - PM1_STS))
            elif PM1_EN <= reg < PM1_EN + 2:
                en_bytes[reg - PM1_EN] = byte
                wrote_en = True
            elif PM1_CNT <= reg < PM1_CNT + 2:
                cnt_bytes[reg - PM1_CNT] = byte
                wrote_cnt = True
            else:
                guest_log.debug("acpi-pm: write 0x%x to read-only/reserved offset 0x%x",
                                byte, reg)
        if clear_sts:
            self._poll_overflow()
            self.pm1_sts &= ~clear_sts
        if wrote_en:
            self.pm1_en = int.from_bytes(en_bytes, "little") & PM1_EN_MASK
            self._poll_overflow()
            self._arm_overflow_timer()
        if wrote_cnt:
            cnt = int.from_bytes(cnt_bytes, "little")
            self.pm1_cnt = cnt & PM1_CNT_MASK
            if cnt & SLP_EN:
                self._sleep((cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
        self._update_sci()

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ == SLP_TYP_S5:
            log.debug("acpi-pm: guest entered S5 (soft off)")
            if self.shutdown_request is None:
                log.warning("acpi-pm: guest requested power-off but the board did not connect "
                            "shutdown_request")
                return
            self.shutdown_request()
            return
        # No other sleep state is advertised; wake at once so a guest polling WAK_STS goes on.
        guest_log.info("acpi-pm: unsupported sleep type %d requested; ignored", slp_typ)
        self.pm1_sts |= WAK_STS

