"""The i8254 PIT and port 0x61 against a controllable virtual clock."""

from __future__ import annotations

import pytest

from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import TABLE
from vfw.testing import ManualClock
from vfw_board_pc.i8254 import PIT
from vfw_board_pc.i8259 import PICPair

#: The PC's PIT input clock (Hz), stated independently of the model.
PIT_FREQ = 1_193_182


def ticks_to_ns(ticks: int) -> int:
    """The first nanosecond at which ``ticks`` PIT clocks have elapsed."""
    return -(-ticks * 1_000_000_000 // PIT_FREQ)


class Board:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.pit = PIT()
        self.pit.clock = self.clock
        self.pit.set_realized(True)
        self.edges: list[tuple[int, int]] = []
        self.pit.irq0 = lambda level: self.edges.append((self.clock.now, level))
        root = MemoryRegion.container("io", 0x10000)
        root.add_subregion(0x40, self.pit.io)
        root.add_subregion(0x61, self.pit.speaker_io)
        self.io = AddressSpace("io", root)
        #: Time one port access costs the simulated CPU (ns).
        self.io_cost = 0

    def outb(self, port: int, value: int) -> None:
        self.clock.advance(self.io_cost)
        self.io.write(port, value, 1)

    def inb(self, port: int) -> int:
        self.clock.advance(self.io_cost)
        return self.io.read(port, 1)

    def rising(self, since: int = 0) -> list[int]:
        return [t for t, level in self.edges[since:] if level]

    def read_counter(self, ch: int) -> int:
        lo = self.inb(0x40 + ch)
        return lo | (self.inb(0x40 + ch) << 8)


@pytest.fixture
def b() -> Board:
    return Board()


def test_type_is_registered_and_board_only() -> None:
    assert TABLE.lookup("isa-pit") is PIT
    assert PIT.USER_CREATABLE is False


def test_mode2_periodic_interrupts_follow_virtual_time(b: Board) -> None:
    latch = (PIT_FREQ + 50) // 100  # Linux's LATCH for HZ=100
    b.outb(0x43, 0x34)  # channel 0, lobyte/hibyte, mode 2
    b.outb(0x40, latch & 0xFF)
    b.outb(0x40, latch >> 8)
    start = b.clock.now
    mark = len(b.edges)
    b.clock.advance(1_001_000_000)  # 100 periods of 11932 ticks are 1.0000151 s
    rising = b.rising(mark)
    assert len(rising) == 100
    assert rising == [start + ticks_to_ns(k * latch) for k in range(1, 101)]
    # Each tick is a short low pulse: the line falls one PIT clock before it rises.
    falling = [t for t, level in b.edges[mark:] if not level]
    assert falling[0] == start + ticks_to_ns(latch - 1)


def test_mode2_ticks_reach_the_pic_even_when_the_timer_runs_late(b: Board) -> None:
    pic = PICPair()
    pic.irqs[0].set(0)
    b.pit.irq0 = pic.irqs[0]
    b.outb(0x43, 0x34)
    b.outb(0x40, 1193 & 0xFF)
    b.outb(0x40, 1193 >> 8)  # 1 kHz
    served = 0
    for _ in range(50):
        # The main loop is late by several periods at once: the ticks in between coalesce
        # into the one request the 8259 can latch, none is lost.
        b.clock.now += 3_500_000
        b.clock.timers.run_expired()
        while pic.has_interrupt():
            assert pic.acknowledge() == 0
            pic.master.write(0, 0x20)
            served += 1
    assert served == 50


def test_mode0_one_shot(b: Board) -> None:
    b.outb(0x43, 0x30)  # channel 0, lobyte/hibyte, mode 0
    assert b.edges[-1][1] == 0  # OUT goes low on the control word
    b.outb(0x40, 0xE8)
    b.outb(0x40, 0x03)  # 1000
    start = b.clock.now
    mark = len(b.edges)
    b.clock.advance(ticks_to_ns(999))
    assert b.rising(mark) == []
    assert b.read_counter(0) == 1
    b.clock.advance(10_000_000)
    assert b.rising(mark) == [start + ticks_to_ns(1000)]
    # The counter wraps and keeps counting; OUT stays high.
    b.outb(0x43, 0x00)  # latch channel 0
    assert b.read_counter(0) == (1000 - (b.clock.now - start) * PIT_FREQ // 10**9) & 0xFFFF


def test_mode4_software_strobe_is_linux_oneshot(b: Board) -> None:
    b.outb(0x43, 0x38)  # Linux's pit_set_oneshot
    b.outb(0x40, 100)
    b.outb(0x40, 0)
    start = b.clock.now
    mark = len(b.edges)
    b.clock.advance(1_000_000)
    assert b.rising(mark) == [start + ticks_to_ns(101)]


def test_latch_command_and_word_access(b: Board) -> None:
    b.outb(0x43, 0x34)
    b.outb(0x40, 0x00)
    b.outb(0x40, 0x10)  # 4096
    b.clock.advance(ticks_to_ns(100))
    b.outb(0x43, 0x00)  # latch
    b.clock.advance(ticks_to_ns(500))
    assert b.inb(0x40) == (4096 - 100) & 0xFF
    b.clock.advance(ticks_to_ns(500))
    assert b.inb(0x40) == (4096 - 100) >> 8
    # Unlatched reads follow the clock.
    assert b.read_counter(0) == 4096 - 1100
    # Lobyte-only access mode.
    b.outb(0x43, 0x54)  # channel 1, lobyte only, mode 2
    b.outb(0x41, 200)
    b.clock.advance(ticks_to_ns(50))
    assert b.inb(0x41) == 150
    assert b.inb(0x41) == 150


def test_read_back_command_status_and_count(b: Board) -> None:
    b.outb(0x43, 0xB0)  # channel 2, word, mode 0
    b.outb(0x43, 0xE8)  # read-back: status only, channel 2
    assert b.inb(0x42) == 0x70  # OUT low, null count, word access, mode 0
    b.outb(0x61, 0x01)  # gate 2 high
    b.outb(0x42, 0x10)
    b.outb(0x42, 0x00)  # 16
    b.clock.advance(ticks_to_ns(6))
    b.outb(0x43, 0xC8)  # read-back: count and status, channel 2
    b.clock.advance(ticks_to_ns(20))
    assert b.inb(0x42) == 0x30  # status first: OUT low, count loaded, word, mode 0
    assert b.read_counter(2) == 10  # then the count latched with it
    b.outb(0x43, 0xE8)
    assert b.inb(0x42) == 0xB0  # OUT has risen by now


def test_port61_gate_and_out2(b: Board) -> None:
    b.outb(0x61, 0x00)
    b.outb(0x43, 0xB0)
    b.outb(0x42, 0x00)
    b.outb(0x42, 0x01)  # 256, gate low: loaded but not counting
    b.clock.advance(ticks_to_ns(1000))
    assert b.inb(0x61) & 0x21 == 0
    assert b.read_counter(2) == 256
    b.outb(0x61, 0x03)  # gate + speaker data
    assert b.inb(0x61) & 0x03 == 0x03
    b.clock.advance(ticks_to_ns(255))
    assert not b.inb(0x61) & 0x20
    b.clock.advance(ticks_to_ns(1))
    assert b.inb(0x61) & 0x20
    # The refresh bit toggles between reads.
    assert (b.inb(0x61) ^ b.inb(0x61)) & 0x10


def test_mode0_gate_pauses_counting(b: Board) -> None:
    b.outb(0x61, 0x01)
    b.outb(0x43, 0xB0)
    b.outb(0x42, 0xE8)
    b.outb(0x42, 0x03)  # 1000
    b.clock.advance(ticks_to_ns(400))
    b.outb(0x61, 0x00)
    b.clock.advance(ticks_to_ns(5000))
    assert b.read_counter(2) == 600
    b.outb(0x61, 0x01)
    b.clock.advance(ticks_to_ns(600))
    assert b.inb(0x61) & 0x20


def _get_cycles(b: Board, ghz: int) -> int:
    return b.clock.now * ghz


def test_linux_pit_calibrate_tsc_loop(b: Board) -> None:
    """arch/x86/kernel/tsc.c pit_calibrate_tsc(CAL_LATCH, CAL_MS, CAL_PIT_LOOPS), with a
    3 GHz TSC and each port access costing the CPU 700 ns of virtual time."""
    b.io_cost = 700
    ms, loopmin = 10, 1000
    latch = PIT_FREQ // (1000 // ms)
    b.outb(0x61, (b.inb(0x61) & ~0x02) | 0x01)  # gate high, speaker off
    b.outb(0x43, 0xB0)  # channel 2, mode 0, binary, lobyte/hibyte
    b.outb(0x42, latch & 0xFF)
    b.outb(0x42, latch >> 8)
    tsc = t1 = t2 = _get_cycles(b, 3)
    pitcnt, tscmax, tscmin = 0, 0, 1 << 64
    while (b.inb(0x61) & 0x20) == 0:
        t2 = _get_cycles(b, 3)
        delta = t2 - tsc
        tsc = t2
        tscmin = min(tscmin, delta)
        tscmax = max(tscmax, delta)
        pitcnt += 1
    assert pitcnt >= loopmin and tscmax <= 10 * tscmin  # Linux's SMI sanity checks
    tsc_khz = (t2 - t1) // ms
    assert abs(tsc_khz - 3_000_000) < 3_000_000 * 0.001


def test_linux_quick_pit_calibrate(b: Board) -> None:
    """arch/x86/kernel/tsc.c quick_pit_calibrate: watch the MSB of channel 2 count down."""
    b.io_cost = 450
    freq_ghz = 2

    def verify_msb(val: int) -> bool:
        b.inb(0x42)  # ignore LSB
        return b.inb(0x42) == val

    def expect_msb(val: int) -> tuple[bool, int, int]:
        tsc = prev = 0
        count = 0
        while count < 50000:
            if not verify_msb(val):
                break
            prev, tsc = tsc, _get_cycles(b, freq_ghz)
            count += 1
        return count > 5, tsc, _get_cycles(b, freq_ghz) - prev

    b.outb(0x61, (b.inb(0x61) & ~0x02) | 0x01)
    b.outb(0x43, 0xB0)
    b.outb(0x42, 0xFF)
    b.outb(0x42, 0xFF)
    verify_msb(0)
    ok, tsc, d1 = expect_msb(0xFF)
    assert ok
    max_iter = 50 * PIT_FREQ // 1000 // 256
    for i in range(1, max_iter + 1):
        ok, delta, d2 = expect_msb(0xFF - i)
        assert ok
        delta -= tsc
        assert not (i == 1 and d1 + d2 >= (delta * max_iter) >> 11)
        if d1 + d2 >= delta >> 11:
            continue
        assert verify_msb(0xFE - i)
        khz = delta * PIT_FREQ // (i * 256 * 1000)
        assert abs(khz - 2_000_000) < 2_000_000 * 0.001
        return
    pytest.fail("Fast TSC calibration failed")


def test_reset_restores_mode3_square_wave(b: Board) -> None:
    b.outb(0x43, 0x30)
    b.pit.reset()
    mark = len(b.edges)
    b.clock.advance(1_000_000_000)
    assert len(b.rising(mark)) == 18  # 1193182 / 65536 = 18.2 Hz
