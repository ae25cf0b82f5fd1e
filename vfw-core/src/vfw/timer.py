"""Clocks and timers (QEMU's QEMUClock / QEMUTimer).

``CLOCK_VIRTUAL`` is guest time: host monotonic time that stands still while the VM is paused,
so every accelerator sees the same rate of time. ``CLOCK_REALTIME`` never stops (for host-side
work such as monitor timeouts). Timers are armed and fired under the big lock; whoever waits
for the next deadline (the main loop, or a TCG vCPU loop that polls it) is woken through the
``on_earlier_deadline`` callback when a timer is armed earlier than before.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

NS_PER_SEC = 1_000_000_000


class Clock:
    """A monotonic nanosecond clock that can be paused (the virtual clock)."""

    def __init__(self, name: str, pausable: bool):
        self.name = name
        self.pausable = pausable
        self._offset = 0
        self._paused_at: int | None = None
        self.timers = TimerList(self)

    def now_ns(self) -> int:
        if self._paused_at is not None:
            return self._paused_at
        return time.monotonic_ns() - self._offset

    def pause(self) -> None:
        if self.pausable and self._paused_at is None:
            self._paused_at = self.now_ns()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset = time.monotonic_ns() - self._paused_at
            self._paused_at = None


class Timer:
    """A one-shot callback at an absolute time of its clock; re-arm from the callback."""

    def __init__(self, clock: Clock, callback: Callable[[], None]):
        self.clock = clock
        self.callback = callback
        self.expire_ns: int | None = None
        self._seq = -1

    @property
    def pending(self) -> bool:
        return self.expire_ns is not None

    def mod(self, expire_ns: int) -> None:
        """Fire at ``expire_ns`` (absolute, this clock's time); replaces any earlier arming."""
        self.clock.timers._arm(self, expire_ns)

    def mod_in(self, delta_ns: int) -> None:
        self.mod(self.clock.now_ns() + delta_ns)

    def delete(self) -> None:
        self.expire_ns = None


class TimerList:
    """The armed timers of one clock, in a heap; deleted/re-armed entries are skipped lazily."""

    _counter = itertools.count()

    def __init__(self, clock: Clock):
        self.clock = clock
        self._heap: list[tuple[int, int, Timer]] = []
        #: Called when a timer is armed earlier than the current earliest deadline.
        self.on_earlier_deadline: Callable[[], None] | None = None

    def _arm(self, timer: Timer, expire_ns: int) -> None:
        earliest = self._earliest()
        timer.expire_ns = expire_ns
        timer._seq = next(self._counter)
        heapq.heappush(self._heap, (expire_ns, timer._seq, timer))
        if (earliest is None or expire_ns < earliest) and self.on_earlier_deadline is not None:
            self.on_earlier_deadline()

    def _earliest(self) -> int | None:
        heap = self._heap
        while heap:
            expire_ns, seq, timer = heap[0]
            if timer._seq == seq and timer.expire_ns is not None:
                return expire_ns
            # An entry of a re-armed timer (an older arming) or of a deleted one. Both
            # conditions are checked on every entry: popping one deleted entry can bring an
            # older arming of another timer to the top, which must not fire it early.
            heapq.heappop(heap)
        return None

    def deadline_ns(self) -> int | None:
        """Nanoseconds until the next timer fires (0 if overdue), or None if none is armed."""
        earliest = self._earliest()
        if earliest is None:
            return None
        return max(0, earliest - self.clock.now_ns())

    def run_expired(self) -> bool:
        """Fire every timer whose time has come; True if any fired."""
        fired = False
        now = self.clock.now_ns()
        while True:
            earliest = self._earliest()
            if earliest is None or earliest > now:
                return fired
            _, _, timer = heapq.heappop(self._heap)
            timer.expire_ns = None
            timer.callback()
            fired = True


CLOCK_VIRTUAL = Clock("virtual", pausable=True)
CLOCK_REALTIME = Clock("realtime", pausable=False)
CLOCKS = (CLOCK_VIRTUAL, CLOCK_REALTIME)


def next_deadline_ns() -> int | None:
    """The nearest deadline over all clocks."""
    deadlines = [d for d in (c.timers.deadline_ns() for c in CLOCKS) if d is not None]
    return min(deadlines) if deadlines else None


def run_all_expired() -> bool:
    fired = False
    for clock in CLOCKS:
        fired = clock.timers.run_expired() or fired
    return fired
