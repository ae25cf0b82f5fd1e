"""The PC's Intel 8254 programmable interval timer (``isa-pit``) and the port 0x61 glue.

Three 16-bit down-counters clocked at 1.193182 MHz. Nothing ticks: a channel remembers when it
started counting and every read computes the count from the elapsed ``CLOCK_VIRTUAL`` time, so
guests that measure time by polling the counter (Linux's TSC calibration, SeaBIOS delays) see
exactly the virtual clock's rate. Channel 0's OUT drives ``irq0``; a ``vfw.timer.Timer`` fires
at each OUT transition (for mode 2/3 periodic ticks and mode 0/4 one-shots) and replays the
transition at its exact time, so a late callback still produces the edge the 8259 latches.
Channel 2's gate and OUT are on port 0x61 (``speaker_io``) with the speaker enable and the
refresh toggle, as on the PIIX.

Modes 0-5 follow the 8254 data sheet; BCD counting is not modelled (binary is used), and a
count written in mode 2/3 takes effect at once rather than at the end of the current period.
The board maps ``io`` at 0x40 (4 ports) and ``speaker_io`` at 0x61 (1 port).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.qdev import Device
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, NS_PER_SEC, Clock, Timer

__all__ = ["PIT", "PIT_FREQ", "PITChannel"]

guest_log = logging.getLogger("vfw.guest_errors")

PIT_FREQ = 1_193_182

# Read/write access states (the control word's RW field, then the word's two halves).
RW_LSB, RW_MSB, RW_WORD0, RW_WORD1 = 1, 2, 3, 4

#: A channel whose OUT timer falls further behind than this skips the missed periods.
MAX_LAG_NS = 100_000_000


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_FREQ // NS_PER_SEC


def ticks_to_ns(ticks: int) -> int:
    """The first nanosecond at which ``ticks`` input clocks have elapsed."""
    return -(-ticks * NS_PER_SEC // PIT_FREQ)


class PITChannel:
    """One counter. ``out_changed(level)``, if set, hears OUT transitions (timer-driven)."""

    def __init__(self, pit: PIT, index: int):
        self.pit = pit
        self.index = index
        self.out_changed: Callable[[int], None] | None = None
        self._timer: Timer | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on state as PCs leave it: mode 3, count 65536, running if the gate is up."""
        self.mode = 3
        self.rw_mode = RW_WORD0
        self.bcd = 0
        self.read_state = RW_WORD0
        self.write_state = RW_WORD0
        self.write_latch = 0
        self.count = 0x10000
        self.latched_count = 0
        self.count_latched = 0
        self.status = 0
        self.status_latched = False
        self.null_count = False
        self.gate = self.index != 2
        # Counting state: elapsed ticks = base_ticks + ticks since start_ns (None: stopped).
        self.start_ns: int | None = None
        self.base_ticks = 0
        self.idle_value = 0
        self.idle_out = 1
        self.last_out = -1  # unknown: the first evaluation is always passed on
        self._timer_ticks = 0
        if self.gate:
            self._start(self.pit.clock.now_ns(), 0)
        else:
            self.idle_value = 0
            self._stop_timer()

    # -- time ----------------------------------------------------------------------------------
    def _elapsed(self, now: int) -> int | None:
        if self.start_ns is None:
            return None
        return self.base_ticks + ns_to_ticks(max(0, now - self.start_ns))

    def _time_of(self, ticks: int) -> int:
        assert self.start_ns is not None
        return self.start_ns + ticks_to_ns(ticks - self.base_ticks)

    def _value_at(self, d: int) -> int:
        n, mode = self.count, self.mode
        if mode == 2:
            return n - d % n
        if mode == 3:
            return (n - (2 * d) % n) & 0xFFFF
        return (n - d) & 0xFFFF

    def _out_at(self, d: int) -> int:
        n, mode = self.count, self.mode
        if mode in (0, 1):
            return 1 if d >= n else 0
        if mode == 2:
            return 0 if d % n == n - 1 else 1
        if mode == 3:
            return 1 if d % n < (n + 1) >> 1 else 0
        return 0 if d == n else 1  # modes 4 and 5: a one-clock low pulse at terminal count

    def _next_transition(self, d: int) -> int | None:
        """The first tick after ``d`` at which OUT changes, or None if it never will."""
        n, mode = self.count, self.mode
        if mode in (0, 1):
            return n if d < n else None
        if mode in (2, 3):
            if n < 2:
                return None
            r = d % n
            edge = n - 1 if mode == 2 else (n + 1) >> 1
            return d - r + (edge if r < edge else n)
        if d < n:
            return n
        return n + 1 if d == n else None

    def get_count(self, now: int) -> int:
        d = self._elapsed(now)
        return self.idle_value if d is None else self._value_at(d) & 0xFFFF

    def get_out(self, now: int) -> int:
        d = self._elapsed(now)
        return self.idle_out if d is None else self._out_at(d)

    # -- state changes -------------------------------------------------------------------------
    def _start(self, now: int, base_ticks: int) -> None:
        self.start_ns = now
        self.base_ticks = base_ticks
        self._schedule(base_ticks, now)

    def _stop(self, now: int, value: int, out: int) -> None:
        self.start_ns = None
        self.idle_value = value & 0xFFFF
        self.idle_out = out
        self._stop_timer()
        self._emit(out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.delete()

    def _emit(self, out: int) -> None:
        if out != self.last_out:
            self.last_out = out
            if self.out_changed is not None:
                self.out_changed(out)

    def _schedule(self, d: int, now: int) -> None:
        """Emit OUT as of tick ``d`` and arm the timer for the next transition."""
        self._emit(self._out_at(d))
        if self.out_changed is None:
            self._stop_timer()
            return
        nxt = self._next_transition(d)
        if nxt is None:
            self._stop_timer()
            return
        d_now = self._elapsed(now)
        assert d_now is not None
        if self._time_of(nxt) < now - MAX_LAG_NS or (self.mode in (2, 3)
                                                     and nxt < d_now - self.count):
            # Far behind: replay only the last period's transitions.
            nxt = self._next_transition(max(d, d_now - self.count))
            if nxt is None:
                self._stop_timer()
                return
        clock = self.pit.clock
        timer = self._timer
        if timer is None or timer.clock is not clock:
            if timer is not None:
                timer.delete()
            timer = self._timer = Timer(clock, self._on_timer)
        self._timer_ticks = nxt
        timer.mod(self._time_of(nxt))

    def _on_timer(self) -> None:
        if self.start_ns is None:
            return
        self._schedule(self._timer_ticks, self.pit.clock.now_ns())

    def reschedule(self) -> None:
        """Re-evaluate OUT now (after ``out_changed`` was connected, or the clock changed)."""
        now = self.pit.clock.now_ns()
        d = self._elapsed(now)
        self.last_out = -1
        if d is None:
            self._emit(self.idle_out)
        else:
            self._schedule(d, now)

    def load_count(self, value: int) -> None:
        now = self.pit.clock.now_ns()
        self.count = value if value else 0x10000
        self.null_count = False
        mode = self.mode
        if mode in (1, 5):
            # Hardware-triggered: wait for a rising gate edge; OUT stays high meanwhile.
            if self.start_ns is None:
                self._stop(now, self.count, 1)
            return
        if self.gate:
            self._start(now, 0)
        elif mode in (0, 4):
            # Loaded but paused by the gate: counting starts when the gate rises.
            self._stop(now, self.count, 0 if mode == 0 else 1)
            self.base_ticks = 0
        else:
            self._stop(now, self.count, 1)

    def set_gate(self, gate: bool) -> None:
        if gate == self.gate:
            return
        self.gate = gate
        now = self.pit.clock.now_ns()
        mode = self.mode
        if self.null_count:
            return  # no count loaded since the control word
        if mode in (0, 4):
            if gate:
                if self.start_ns is None:
                    self._start(now, self.base_ticks)
            else:
                d = self._elapsed(now)
                if d is not None:
                    self._stop(now, self._value_at(d), self._out_at(d))
                    self.base_ticks = d
        elif mode in (1, 5):
            if gate:
                self._start(now, 0)  # trigger: (re)load and count
        elif gate:
            self._start(now, 0)
        else:
            d = self._elapsed(now)
            self._stop(now, self.count if d is None else self._value_at(d), 1)

    def control(self, value: int) -> None:
        """A control word for this channel (not the read-back command)."""
        now = self.pit.clock.now_ns()
        access = (value >> 4) & 3
        if access == 0:
            self.latch(now)
            return
        mode = (value >> 1) & 7
        if mode > 5:
            mode -= 4  # 6 and 7 are aliases of 2 and 3
        current = self.get_count(now)
        self.rw_mode = access
        self.read_state = self.write_state = access
        self.count_latched = 0
        self.mode = mode
        self.bcd = value & 1
        self.null_count = True
        self.base_ticks = 0
        # Writing a control word stops the counter until a count arrives; OUT takes its
        # initial level (low in mode 0, high otherwise).
        self._stop(now, current, 0 if mode == 0 else 1)

    def latch(self, now: int) -> None:
        if not self.count_latched:
            self.latched_count = self.get_count(now)
            self.count_latched = self.rw_mode

    def latch_status(self, now: int) -> None:
        if not self.status_latched:
            self.status = ((self.get_out(now) << 7) | (int(self.null_count) << 6)
                           | (self.rw_mode << 4) | (self.mode << 1) | self.bcd)
            self.status_latched = True

    # -- port access -----------------------------------------------------------------------------
    def read(self) -> int:
        if self.status_latched:
            self.status_latched = False
            return self.status
        if self.count_latched:
            state = self.count_latched
            if state == RW_LSB:
                self.count_latched = 0
                return self.latched_count & 0xFF
            if state == RW_MSB:
                self.count_latched = 0
                return self.latched_count >> 8
            self.count_latched = RW_MSB  # word: low byte now, high byte next
            return self.latched_count & 0xFF
        count = self.get_count(self.pit.clock.now_ns())
        state = self.read_state
        if state == RW_LSB:
            return count & 0xFF
        if state == RW_MSB:
            return (count >> 8) & 0xFF
        if state == RW_WORD0:
            self.read_state = RW_WORD1
            return count & 0xFF
        self.read_state = RW_WORD0
        return (count >> 8) & 0xFF

    def write(self, value: int) -> None:
        state = self.write_state
        if state == RW_LSB:
            self.load_count(value)
        elif state == RW_MSB:
            self.load_count(value << 8)
        elif state == RW_WORD0:
            self.write_latch = value
            self.write_state = RW_WORD1
        else:
            self.write_state = RW_WORD0
            self.load_count(self.write_latch | (value << 8))


@register_type
class PIT(Device):
    """The i8254 with port 0x61. ``irq0``: where channel 0's OUT goes (IRQ or callable)."""

    TYPE = "isa-pit"
    DESC = "ISA i8254 programmable interval timer"
    USER_CREATABLE = False

    def instance_init(self) -> None:
        self._clock: Clock = CLOCK_VIRTUAL
        self._irq0: IRQ | Callable[[int], None] | None = None
        self.speaker_data = 0
        self.port61_bits = 0  # bits 2-3: parity/channel-check enables (read back only)
        self.refresh = 0
        self.channels = [PITChannel(self, i) for i in range(3)]
        self.channels[0].out_changed = self._out0
        self.io = MemoryRegion.io("pit", 4, self._read, self._write, valid_sizes=(1, 1))
        self.speaker_io = MemoryRegion.io("pit-port61", 1, self._read61, self._write61,
                                          valid_sizes=(1, 1))

    @property
    def clock(self) -> Clock:
        """The time base (CLOCK_VIRTUAL). Assigning another clock (tests) resets the PIT."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        for ch in self.channels:
            ch._stop_timer()
        self._clock = clock
        self.reset()

    @property
    def irq0(self) -> IRQ | Callable[[int], None] | None:
        return self._irq0

    @irq0.setter
    def irq0(self, target: IRQ | Callable[[int], None] | None) -> None:
        self._irq0 = target
        self.channels[0].reschedule()

    def reset(self) -> None:
        self.speaker_data = 0
        self.port61_bits = 0
        self.refresh = 0
        for ch in self.channels:
            ch.reset()
        self.channels[0].reschedule()

    def unrealize(self) -> None:
        for ch in self.channels:
            ch._stop_timer()

    def _out0(self, level: int) -> None:
        target = self._irq0
        if target is None:
            return
        if isinstance(target, IRQ):
            target.set(level)
        else:
            target(level)

    # -- ports 0x40-0x43 ---------------------------------------------------------------------
    def _read(self, offset: int, size: int) -> int:
        if offset >= 3:
            return 0xFF  # the control register is write-only
        return self.channels[offset].read()

    def _write(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        if offset < 3:
            self.channels[offset].write(value)
            return
        select = value >> 6
        if select == 3:  # read-back command
            now = self.clock.now_ns()
            for i, ch in enumerate(self.channels):
                if value & (2 << i):
                    if not value & 0x20:
                        ch.latch(now)
                    if not value & 0x10:
                        ch.latch_status(now)
            return
        self.channels[select].control(value)

    # -- port 0x61 ---------------------------------------------------------------------------
    def _read61(self, offset: int, size: int) -> int:
        ch2 = self.channels[2]
        self.refresh ^= 0x10  # toggles on every read: loops waiting for a toggle terminate
        out2 = ch2.get_out(self.clock.now_ns())
        return (int(ch2.gate) | (self.speaker_data << 1) | self.port61_bits | self.refresh
                | (out2 << 5))

    def _write61(self, offset: int, value: int, size: int) -> None:
        self.speaker_data = (value >> 1) & 1
        self.port61_bits = value & 0x0C
        self.channels[2].set_gate(bool(value & 1))
