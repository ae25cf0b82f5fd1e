"""The MC146818 real-time clock and CMOS memory (QEMU's mc146818rtc), ports 0x70/0x71, IRQ 8.

Time runs on the virtual clock from a start taken from the host (``base=utc``, ``localtime``
or a fixed ``2006-06-17T16:01:21``), so a paused VM's clock stands still as its timers do. The
guest sees BCD or binary and 12- or 24-hour values as register B says, the update-in-progress
bit in the 244 µs before each second, periodic interrupts at register A's rate, and alarm and
update-ended interrupts; reading register C returns and clears the flags and lowers IRQ 8.

The rest of the 128 bytes is CMOS memory the board fills with ``set_cmos`` (memory sizes, CPU
count: see :func:`pc_cmos_memory`); it survives resets.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from collections.abc import Callable

from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.props import STR, UINT32, prop
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, NS_PER_SEC, Clock, Timer

from .isa import ISADevice

__all__ = ["MC146818RTC", "pc_cmos_memory"]

guest_log = logging.getLogger("vfw.guest_errors")

CMOS_SIZE = 128
# Register indexes.
RTC_SECONDS, RTC_SECONDS_ALARM, RTC_MINUTES, RTC_MINUTES_ALARM = 0, 1, 2, 3
RTC_HOURS, RTC_HOURS_ALARM, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH = 4, 5, 6, 7
RTC_MONTH, RTC_YEAR = 8, 9
RTC_REG_A, RTC_REG_B, RTC_REG_C, RTC_REG_D = 0x0A, 0x0B, 0x0C, 0x0D
RTC_CENTURY = 0x32
TIME_REGS = (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH,
             RTC_MONTH, RTC_YEAR, RTC_CENTURY)

REG_A_UIP = 0x80
REG_A_DV_MASK = 0x70
REG_A_DV_32K = 0x20
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE = 0x80, 0x40, 0x20, 0x10
REG_B_SQWE, REG_B_DM, REG_B_24H, REG_B_DSE = 0x08, 0x04, 0x02, 0x01
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_D_VRT = 0x80

#: The update-in-progress window before each second boundary.
UIP_NS = 244_000
#: The time base: a 32.768 kHz crystal.
RTC_HZ = 32768

_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?$")


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


def parse_rtc_base(base: str, now: float) -> int:
    """The RTC's time (ns since the epoch, read as UTC) at host time ``now`` (seconds since
    the epoch) for ``-rtc base=``."""
    now_ns = int(now * NS_PER_SEC)
    if base in ("utc", ""):
        return now_ns
    if base == "localtime":
        return now_ns + time.localtime(now).tm_gmtoff * NS_PER_SEC
    m = _DATE_RE.match(base)
    if m is None:
        raise VfwError(f"invalid datetime format '{base}'; valid formats: "
                       "'2006-06-17T16:01:21' or '2006-06-17'")
    year, month, day = (int(m.group(i)) for i in (1, 2, 3))
    hms = tuple(int(m.group(i) or 0) for i in (4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hms[0] < 24 and hms[1] < 60
            and hms[2] < 60):
        raise VfwError(f"invalid date '{base}'")
    return calendar.timegm((year, month, day, *hms)) * NS_PER_SEC


@register_type
class MC146818RTC(ISADevice):
    """The PC's RTC/CMOS (QEMU's mc146818rtc)."""

    TYPE = "mc146818rtc"
    USER_CREATABLE = False
    DESC = "MC146818 real-time clock and CMOS memory"

    base = prop(STR, "utc", "start time: utc, localtime or a date (2006-06-17T16:01:21)")
    iobase = prop(UINT32, 0x70, "I/O base port")
    irq = prop(UINT32, 8, "ISA interrupt line")

    def instance_init(self) -> None:
        #: The guest clock; tests substitute a manual one before realize.
        self.clock: Clock = CLOCK_VIRTUAL
        #: Host wall time in seconds since the epoch (tests substitute a fixed one).
        self.wall_time: Callable[[], float] = time.time
        self.cmos = bytearray(CMOS_SIZE)
        self.cmos_index = 0
        #: Bit 7 of the index port: NMI disabled (the board may consult it).
        self.nmi_disabled = False
        self._irq: IRQ | None = None
        self._irq_level = 0
        # RTC time (ns since the epoch, read as UTC) at guest time _base_ns.
        self._base_rtc_ns = 0
        self._base_ns = 0
        self._last_update_sec = 0
        self._periodic_timer: Timer | None = None
        self._second_timer: Timer | None = None
        self._period_ticks = 0
        self._next_periodic_tick = 0
        self._pf_tick = 0  # 32 kHz tick of the last register C read

    # -- life cycle ----------------------------------------------------------------------------
    def realize(self) -> None:
        start = parse_rtc_base(self.base, self.wall_time())
        if self.irq >= 16:
            raise VfwError(f"isa irq {self.irq} invalid")
        self._irq = self.isa_irq(self.irq)
        region = MemoryRegion.io("rtc", 2, self._io_read, self._io_write,
                                 valid_sizes=(1, 1), impl_sizes=(1, 1))
        self.isa_register_io(self.iobase, region)
        self._periodic_timer = Timer(self.clock, self._periodic_fire)
        self._second_timer = Timer(self.clock, self._second_fire)
        self.cmos[RTC_REG_A] = REG_A_DV_32K | 0x06
        self.cmos[RTC_REG_B] = REG_B_24H
        self.cmos[RTC_REG_C] = 0
        self.cmos[RTC_REG_D] = REG_D_VRT
        self._set_base(start)
        self._pf_tick = self._now_tick()
        self._store_time()
        self._update_timers()

    def unrealize(self) -> None:
        for t in (self._periodic_timer, self._second_timer):
            if t is not None:
                t.delete()
        super().unrealize()

    def reset(self) -> None:
        """Reset pin: interrupt enables and flags clear; time and CMOS are kept."""
        self.cmos[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE)
        self.cmos[RTC_REG_C] = 0
        self._set_irq(0)
        self._update_timers()

    # -- CMOS for the board ------------------------------------------------------------------
    def set_cmos(self, index: int, value: int) -> None:
        """Write CMOS byte ``index`` (0-127) as firmware-visible configuration."""
        if not 0 <= index < CMOS_SIZE:
            raise ValueError(f"CMOS index 0x{index:x} out of range")
        self.cmos[index] = value & 0xFF

    def get_cmos(self, index: int) -> int:
        return self.cmos[index & 0x7F]

    # -- time ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Updates happen: not in SET mode and the divider chain is not held in reset."""
        return (not self.cmos[RTC_REG_B] & REG_B_SET
                and (self.cmos[RTC_REG_A] & REG_A_DV_MASK) <= REG_A_DV_32K)

    def rtc_ns(self) -> int:
        """The RTC's current time in ns since the epoch (UTC reading)."""
        return self._base_rtc_ns + (self.clock.now_ns() - self._base_ns)

    def _set_base(self, rtc_ns: int) -> None:
        self._base_rtc_ns = rtc_ns
        self._base_ns = self.clock.now_ns()
        self._last_update_sec = rtc_ns // NS_PER_SEC

    def _encode(self, value: int) -> int:
        return value if self.cmos[RTC_REG_B] & REG_B_DM else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[RTC_REG_B] & REG_B_DM else _from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._decode(value & 0x7F)
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _time_regs(self, seconds: int) -> dict[int, int]:
        tm = time.gmtime(seconds)
        return {
            RTC_SECONDS: self._encode(tm.tm_sec % 60),
            RTC_MINUTES: self._encode(tm.tm_min),
            RTC_HOURS: self._encode_hour(tm.tm_hour),
            RTC_DAY_OF_WEEK: self._encode((tm.tm_wday + 1) % 7 + 1),  # Sunday = 1
            RTC_DAY_OF_MONTH: self._encode(tm.tm_mday),
            RTC_MONTH: self._encode(tm.tm_mon),
            RTC_YEAR: self._encode(tm.tm_year % 100),
            RTC_CENTURY: self._encode(tm.tm_year // 100),
        }

    def _store_time(self) -> None:
        """Latch the running time into the time registers."""
        for index, value in self._time_regs(self.rtc_ns() // NS_PER_SEC).items():
            self.cmos[index] = value

    def _time_from_regs(self) -> int:
        """The time the registers hold, in seconds; nonsense values are clamped."""
        c = self.cmos
        sec = min(self._decode(c[RTC_SECONDS]), 59)
        minute = min(self._decode(c[RTC_MINUTES]), 59)
        hour = min(self._decode_hour(c[RTC_HOURS]), 23)
        mday = min(max(self._decode(c[RTC_DAY_OF_MONTH]), 1), 31)
        month = min(max(self._decode(c[RTC_MONTH]), 1), 12)
        year = self._decode(c[RTC_CENTURY]) * 100 + self._decode(c[RTC_YEAR])
        year = min(max(year, 1970), 9999)
        return calendar.timegm((year, month, mday, hour, minute, sec))

    def _set_time_from_regs(self, fraction_ns: int = 0) -> None:
        self._set_base(self._time_from_regs() * NS_PER_SEC + fraction_ns)

    # -- interrupts --------------------------------------------------------------------------
    def _set_irq(self, level: int) -> None:
        if level != self._irq_level:
            self._irq_level = level
            if self._irq is not None:
                self._irq.set(level)

    def _update_irqf(self) -> None:
        c, b = self.cmos[RTC_REG_C], self.cmos[RTC_REG_B]
        enabled = (b & REG_B_PIE and c & REG_C_PF) or (b & REG_B_AIE and c & REG_C_AF) or (
            b & REG_B_UIE and c & REG_C_UF)
        if enabled:
            self.cmos[RTC_REG_C] |= REG_C_IRQF
            self._set_irq(1)

    def _period_code(self) -> int:
        rate = self.cmos[RTC_REG_A] & 0x0F
        if rate == 0 or (self.cmos[RTC_REG_A] & REG_A_DV_MASK) != REG_A_DV_32K:
            return 0
        if rate <= 2:
            rate += 7
        return 1 << (rate - 1)  # period in 32.768 kHz ticks

    def _now_tick(self) -> int:
        return self.clock.now_ns() * RTC_HZ // NS_PER_SEC

    def _periodic_timer_pending(self) -> bool:
        return self._periodic_timer is not None and self._periodic_timer.pending

    def _tick_to_ns(self, tick: int) -> int:
        return -(-tick * NS_PER_SEC // RTC_HZ)

    def _update_timers(self) -> None:
        if self._periodic_timer is None or self._second_timer is None:
            return
        ticks = self._period_code()
        if ticks == 0 or not self.cmos[RTC_REG_B] & REG_B_PIE:
            # Without PIE nobody waits for the interrupt: PF is worked out when C is read,
            # so an idle RTC costs no timer.
            self._periodic_timer.delete()
            self._period_ticks = 0
        elif ticks != self._period_ticks or not self._periodic_timer.pending:
            self._period_ticks = ticks
            now_tick = self._now_tick()
            self._next_periodic_tick = (now_tick // ticks + 1) * ticks
            self._periodic_timer.mod(self._tick_to_ns(self._next_periodic_tick))
        if self.running and self.cmos[RTC_REG_B] & (REG_B_UIE | REG_B_AIE):
            if not self._second_timer.pending:
                self._arm_second_timer()
        else:
            self._second_timer.delete()

    def _arm_second_timer(self) -> None:
        assert self._second_timer is not None
        rtc = self.rtc_ns()
        next_boundary = (rtc // NS_PER_SEC + 1) * NS_PER_SEC
        self._second_timer.mod(self.clock.now_ns() + (next_boundary - rtc))

    def _periodic_fire(self) -> None:
        ticks = self._period_ticks
        if ticks == 0:
            return
        self.cmos[RTC_REG_C] |= REG_C_PF
        self._update_irqf()
        # Next period after now: ticks the guest missed are dropped (QEMU's "discard").
        now_tick = self._now_tick()
        nxt = self._next_periodic_tick + ticks
        if nxt <= now_tick:
            nxt = (now_tick // ticks + 1) * ticks
        self._next_periodic_tick = nxt
        assert self._periodic_timer is not None
        self._periodic_timer.mod(self._tick_to_ns(nxt))

    def _second_fire(self) -> None:
        if not self.running:
            return
        self._update_flags()
        self._update_irqf()
        self._arm_second_timer()

    def _update_flags(self) -> None:
        """Set UF for every update since the last look, and AF if the alarm matches now."""
        sec = self.rtc_ns() // NS_PER_SEC
        if sec != self._last_update_sec:
            self._last_update_sec = sec
            self.cmos[RTC_REG_C] |= REG_C_UF
            regs = self._time_regs(sec)
            if all(self.cmos[alarm] & 0xC0 == 0xC0 or self.cmos[alarm] == regs[now]
                   for alarm, now in ((RTC_SECONDS_ALARM, RTC_SECONDS),
                                      (RTC_MINUTES_ALARM, RTC_MINUTES),
                                      (RTC_HOURS_ALARM, RTC_HOURS))):
                self.cmos[RTC_REG_C] |= REG_C_AF

    # -- guest accesses ---------------------------------------------------------------------
    def _io_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF
        return self.read_register(self.cmos_index)

    def _io_write(self, offset: int, value: int, size: int) -> None:
        if offset == 0:
            self.cmos_index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
        else:
            self.write_register(self.cmos_index, value & 0xFF)

    def read_register(self, index: int) -> int:
        index &= 0x7F
        if index in TIME_REGS:
            if self.running:
                self._store_time()
            return self.cmos[index]
        if index == RTC_REG_A:
            value = self.cmos[RTC_REG_A] & ~REG_A_UIP
            if self.running and self.rtc_ns() % NS_PER_SEC >= NS_PER_SEC - UIP_NS:
                value |= REG_A_UIP
            return value
        if index == RTC_REG_C:
            if self.running:
                self._update_flags()
            now_tick = self._now_tick()
            ticks = self._period_code()
            if ticks and not self._periodic_timer_pending() and (
                    now_tick // ticks != self._pf_tick // ticks):
                self.cmos[RTC_REG_C] |= REG_C_PF
            self._pf_tick = now_tick
            value = self.cmos[RTC_REG_C]
            self.cmos[RTC_REG_C] = 0
            self._set_irq(0)
            return value
        if index == RTC_REG_D:
            return REG_D_VRT
        return self.cmos[index]

    def write_register(self, index: int, value: int) -> None:
        index &= 0x7F
        if index in TIME_REGS:
            if self.running:
                self._store_time()
                self.cmos[index] = value
                self._set_time_from_regs(self.rtc_ns() % NS_PER_SEC)
                self._update_timers()
            else:
                self.cmos[index] = value
        elif index == RTC_REG_A:
            was_running = self.running
            if was_running:
                self._store_time()
            self.cmos[RTC_REG_A] = (value & ~REG_A_UIP) & 0xFF
            if not was_running and self.running:
                # Leaving divider reset: the first update comes half a second later.
                self._set_time_from_regs(NS_PER_SEC // 2)
            self._update_timers()
        elif index == RTC_REG_B:
            was_running = self.running
            if value & REG_B_SET:
                value &= ~REG_B_UIE  # setting the clock cancels update interrupts
                if was_running:
                    self._store_time()
            self.cmos[RTC_REG_B] = value
            if not was_running and self.running:
                self._set_time_from_regs()
            self._update_irqf()
            self._update_timers()
        elif index in (RTC_REG_C, RTC_REG_D):
            guest_log.debug("rtc: write 0x%02x to read-only register 0x%x ignored",
                            value, index)
        else:
            self.cmos[index] = value


KiB = 1024
MiB = 1024 * KiB


def pc_cmos_memory(rtc: MC146818RTC, below_4g: int, above_4g: int, cpus: int) -> None:
    """Write the memory-size and CPU-count bytes PC firmware reads (QEMU's pc_cmos_init)."""
    base = min(below_4g // KiB, 640)
    rtc.set_cmos(0x15, base & 0xFF)
    rtc.set_cmos(0x16, base >> 8)
    ext = min((below_4g - MiB) // KiB, 0xFFFF) if below_4g > MiB else 0
    for low in (0x17, 0x30):
        rtc.set_cmos(low, ext & 0xFF)
        rtc.set_cmos(low + 1, ext >> 8)
    above_16m = min((below_4g - 16 * MiB) // (64 * KiB), 0xFFFF) if below_4g > 16 * MiB else 0
    rtc.set_cmos(0x34, above_16m & 0xFF)
    rtc.set_cmos(0x35, above_16m >> 8)
    high = above_4g // (64 * KiB)
    rtc.set_cmos(0x5B, high & 0xFF)
    rtc.set_cmos(0x5C, (high >> 8) & 0xFF)
    rtc.set_cmos(0x5D, (high >> 16) & 0xFF)
    rtc.set_cmos(0x5F, max(cpus - 1, 0) & 0xFF)
