"""A one-shot APIC timer count that runs out while the TMICT write is being handled still
fires (Linux's minimum clockevent delta is ~60 ticks at divide-by-16, about 1 µs: a second
clock read in the write handler used to find it expired and drop it, stopping the tick)."""

from __future__ import annotations

from vfw.testing import ManualClock
from vfw_board_pc.apic import APICBus
from vfw_board_pc.cpu_state import X86CPUState

R_SVR, R_LVT_TIMER, R_TMICT, R_TDCR = 0x0F, 0x32, 0x38, 0x3E


class SlowClock(ManualClock):
    """A clock that moves 2 µs forward at every read, like a slow host between reads."""

    def now_ns(self) -> int:
        self.now += 2_000
        return self.now


class FakeCPU:
    def __init__(self) -> None:
        self.env = X86CPUState()
        self.env.reset(bsp=True)
        self.apic_id = 0
        self.cpu_index = 0
        self.interrupt_controller = None

    def kick(self) -> None:
        self.env.interrupt_request = True


def test_short_one_shot_count_fires_even_if_the_clock_moves_past_it() -> None:
    clock = SlowClock()
    bus = APICBus(clock)
    lapic = bus.add_cpu(FakeCPU())  # type: ignore[arg-type]
    lapic.write_register(R_SVR, 0x1FF)
    lapic.write_register(R_TDCR, 0x3)  # divide by 16
    lapic.write_register(R_LVT_TIMER, 0xEC)  # one-shot, vector 0xec
    lapic.write_register(R_TMICT, 62)  # 62 * 16 ns < the 2 µs between two clock reads
    assert clock.timers.deadline_ns() is not None, "the short count was dropped, not armed"
    clock.advance(10_000)
    assert lapic.irr >> 0xEC & 1, "the timer interrupt never came"
