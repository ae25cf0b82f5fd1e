"""i8042, the 0xcf9 reset register, the RTC/CMOS, isa-debug-exit and port 0x80, through port I/O."""

from __future__ import annotations

import calendar

import pytest

from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.machine import select_machine
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import get_root, reset_root
from vfw.runstate import Request, ShutdownCause
from vfw.testing import ManualClock
from vfw_board_pc.debugexit import ISADebugExit, Port80, debug_exit_status
from vfw_board_pc.i8042 import I8042, ResetControl
from vfw_board_pc.isa import ISABus, ISADevice
from vfw_board_pc.rtc import MC146818RTC, pc_cmos_memory

MiB, GiB = 1 << 20, 1 << 30


class Board:
    def __init__(self) -> None:
        self.io = MemoryRegion.container("io", 1 << 16)
        self.space = AddressSpace("I/O", self.io)
        self.levels = [0] * 16
        self.edges = [0] * 16
        self.bus = ISABus.create(self.io, [IRQ(self._irq, n) for n in range(16)])
        self.clock = ManualClock(start_ns=5_000_000_000)

    def _irq(self, n: int, level: int) -> None:
        if level and not self.levels[n]:
            self.edges[n] += 1
        self.levels[n] = level

    def add(self, dev: ISADevice) -> ISADevice:
        if hasattr(dev, "clock"):
            dev.clock = self.clock
        return self.bus.attach(dev)

    def inb(self, port: int) -> int:
        return self.space.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.space.write(port, value, 1)


@pytest.fixture(autouse=True)
def fresh_tree():
    reset_root()
    yield
    reset_root()


@pytest.fixture
def board() -> Board:
    return Board()


# -- i8042 ---------------------------------------------------------------------------------
def kbc_command(b: Board, cmd: int, data: int | None = None) -> None:
    assert not b.inb(0x64) & 0x02  # input buffer empty
    b.outb(0x64, cmd)
    if data is not None:
        b.outb(0x60, data)


def kbc_read(b: Board) -> int:
    assert b.inb(0x64) & 0x01, "output buffer empty"
    return b.inb(0x60)


def test_i8042_linux_probe(board):
    kbc = board.add(I8042())
    assert isinstance(kbc, I8042)
    assert board.inb(0x64) == 0x18  # i8042_flush: nothing to read
    kbc_command(board, 0xAA)
    assert kbc_read(board) == 0x55 and board.inb(0x64) & 0x04  # self-test passed, SYS set
    kbc_command(board, 0x20)
    ctr = kbc_read(board)
    assert ctr == 0x03
    kbc_command(board, 0x60, ctr & ~0x03 | 0x30)  # interrupts off, both ports disabled
    kbc_command(board, 0x20)
    assert kbc_read(board) == 0x30
    kbc_command(board, 0xAB)
    assert kbc_read(board) == 0x00  # keyboard interface test
    kbc_command(board, 0xA9)
    assert kbc_read(board) == 0x00  # AUX interface test
    # AUX loopback (i8042_check_aux): the byte comes back as AUX data on IRQ 12.
    kbc_command(board, 0x60, 0x02)
    kbc_command(board, 0xD3, 0x5A)
    assert board.inb(0x64) & 0x21 == 0x21 and board.levels[12] == 1 and board.levels[1] == 0
    assert board.inb(0x60) == 0x5A and board.levels[12] == 0
    kbc_command(board, 0xA7)
    kbc_command(board, 0x20)
    assert kbc_read(board) & 0x20
    kbc_command(board, 0xA8)
    kbc_command(board, 0x20)
    assert not kbc_read(board) & 0x20
    # No mouse: a byte for the AUX device times out at once.
    kbc_command(board, 0xD4, 0xF2)
    assert board.inb(0x64) & 0x61 == 0x61
    assert board.inb(0x60) == 0xFE
    assert not board.inb(0x64) & 0x01


def test_keyboard_answers_and_interrupts(board):
    board.add(I8042())
    kbc_command(board, 0x60, 0x01)  # keyboard interrupt on, no translation
    board.outb(0x60, 0xFF)  # reset the keyboard
    assert board.levels[1] == 1
    assert board.inb(0x60) == 0xFA
    assert board.levels[1] == 1  # the next byte is loaded: a new edge
    assert board.inb(0x60) == 0xAA and board.levels[1] == 0
    assert board.edges[1] == 2
    board.outb(0x60, 0xF2)
    assert [board.inb(0x60) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    board.outb(0x60, 0xF0)
    board.outb(0x60, 0x00)
    assert [board.inb(0x60) for _ in range(3)] == [0xFA, 0xFA, 0x02]
    board.outb(0x60, 0xEE)
    assert board.inb(0x60) == 0xEE
    assert board.inb(0x60) == 0xEE  # an empty buffer reads the last byte again
    assert not board.inb(0x64) & 0x01


def test_i8042_reset_requests(board):
    kbc = board.add(I8042())
    assert isinstance(kbc, I8042)
    resets = []
    kbc.reset_request = lambda: resets.append("reset")
    board.outb(0x64, 0xFE)
    assert resets == ["reset"]
    board.outb(0x64, 0xFF)  # pulses no line
    kbc_command(board, 0xD1, 0xDF)  # A20 on, reset line high
    kbc_command(board, 0xD0)
    assert kbc_read(board) == 0xDF
    assert resets == ["reset"]
    kbc_command(board, 0xD1, 0xDE)  # bit 0 low: reset
    assert resets == ["reset", "reset"]


def make_machine():
    machine = select_machine("pc")()
    get_root().add_child("machine", machine)
    return machine


def test_i8042_and_0xcf9_reset_the_machine(board):
    machine = make_machine()
    board.add(I8042())
    board.outb(0x64, 0xFE)
    assert machine.take_request() == (Request.RESET, ShutdownCause.GUEST_RESET)
    rc = board.add(ResetControl())
    assert isinstance(rc, ResetControl)
    board.outb(0xCF9, 0x02)
    assert machine.take_request() is None and board.inb(0xCF9) == 0x02
    board.outb(0xCF9, 0x06)
    assert machine.take_request() == (Request.RESET, ShutdownCause.GUEST_RESET)
    hits = []
    rc.reset_request = lambda: hits.append(1)
    board.outb(0xCF9, 0x0E)
    assert hits == [1]
    rc.reset()
    assert board.inb(0xCF9) == 0


# -- RTC -------------------------------------------------------------------------------------
# Thursday 2024-02-29 13:45:30 UTC.
FIXED = calendar.timegm((2024, 2, 29, 13, 45, 30))


def make_rtc(board: Board, **props) -> MC146818RTC:
    rtc = MC146818RTC(**props)
    rtc.wall_time = lambda: FIXED + 0.25
    board.add(rtc)
    return rtc


def cmos(board: Board, index: int) -> int:
    board.outb(0x70, index)
    return board.inb(0x71)


def cmos_write(board: Board, index: int, value: int) -> None:
    board.outb(0x70, index)
    board.outb(0x71, value)


def clock_regs(board: Board) -> list[int]:
    return [cmos(board, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)]


def test_rtc_time_bcd_binary_and_12_hour(board):
    make_rtc(board)
    assert (cmos(board, 0x0A), cmos(board, 0x0B), cmos(board, 0x0D)) == (0x26, 0x02, 0x80)
    assert clock_regs(board) == [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
    board.clock.advance(2 * 10**9)
    assert cmos(board, 0) == 0x32  # time runs with the (virtual) clock
    cmos_write(board, 0x0B, 0x06)  # binary, 24 h
    assert clock_regs(board) == [32, 45, 13, 5, 29, 2, 24, 20]
    cmos_write(board, 0x0B, 0x04)  # binary, 12 h: 1 PM
    assert cmos(board, 4) == 0x81
    cmos_write(board, 0x0B, 0x00)  # BCD, 12 h
    assert cmos(board, 4) == 0x81
    board.clock.advance(10 * 3600 * 10**9)  # 23:45: still PM, 11
    assert cmos(board, 4) == 0x91
    board.clock.advance(3600 * 10**9)  # 00:45 on 1 March: 12 AM
    assert cmos(board, 4) == 0x12 and cmos(board, 7) == 0x01 and cmos(board, 8) == 0x03


def test_rtc_set_time_and_base_date(board):
    make_rtc(board)
    cmos_write(board, 0x0B, 0x82)  # SET: updates stop, registers are the guest's
    for index, value in ((0, 0x59), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99),
                         (0x32, 0x19)):
        cmos_write(board, index, value)
    board.clock.advance(5 * 10**9)
    assert cmos(board, 0) == 0x59  # frozen while SET
    cmos_write(board, 0x0B, 0x02)
    board.clock.advance(10**9)
    assert clock_regs(board)[:3] == [0x00, 0x00, 0x00]
    assert cmos(board, 7) == 0x01 and cmos(board, 8) == 0x01 and cmos(board, 9) == 0x00
    assert cmos(board, 0x32) == 0x20  # 2000-01-01
    other = Board()
    rtc = MC146818RTC(base="2006-06-17T16:01:21")
    other.add(rtc)
    assert clock_regs(other) == [0x21, 0x01, 0x16, 0x07, 0x17, 0x06, 0x06, 0x20]
    with pytest.raises(VfwError, match="invalid datetime format"):
        Board().add(MC146818RTC(base="yesterday"))


def test_cmos_memory_bytes(board):
    rtc = make_rtc(board)
    pc_cmos_memory(rtc, below_4g=3 * GiB, above_4g=2 * GiB, cpus=4)
    assert (cmos(board, 0x15), cmos(board, 0x16)) == (0x80, 0x02)  # 640 KiB
    assert [cmos(board, i) for i in (0x17, 0x18, 0x30, 0x31)] == [0xFF] * 4  # capped
    assert (cmos(board, 0x34), cmos(board, 0x35)) == (0x00, 0xBF)  # (3G - 16M) / 64K
    assert [cmos(board, i) for i in (0x5B, 0x5C, 0x5D)] == [0x00, 0x80, 0x00]
    assert cmos(board, 0x5F) == 3
    pc_cmos_memory(rtc, below_4g=32 * MiB, above_4g=0, cpus=1)
    ext = (32 - 1) * 1024
    assert (cmos(board, 0x17), cmos(board, 0x18)) == (ext & 0xFF, ext >> 8)
    assert (cmos(board, 0x34), cmos(board, 0x35)) == (0x00, 0x01)  # 16 MiB in 64 KiB units
    rtc.reset()
    assert cmos(board, 0x35) == 0x01 and cmos(board, 0x5F) == 0  # CMOS survives a reset
    board.outb(0x70, 0x80 | 0x0A)  # bit 7 of the index masks NMIs
    assert rtc.nmi_disabled and board.inb(0x71) == 0x26
    assert board.inb(0x70) == 0xFF


def count_periodic(board: Board, seconds: float) -> int:
    """Run like a guest's IRQ 8 handler: at every rising edge, read C."""
    count = 0
    end = board.clock.now + int(seconds * 10**9)
    while True:
        delta = board.clock.timers.deadline_ns()
        if delta is None or board.clock.now + delta > end:
            break
        board.clock.advance(delta)
        if board.levels[8]:
            assert cmos(board, 0x0C) & 0xC0 == 0xC0
            assert board.levels[8] == 0
            count += 1
    board.clock.advance(end - board.clock.now)
    return count


def test_periodic_interrupt_rate(board):
    make_rtc(board)
    board.clock.advance(10**9)
    assert board.levels[8] == 0  # 1024 Hz selected, but PIE is off
    assert cmos(board, 0x0C) & 0x40  # ... the flag is set all the same
    cmos_write(board, 0x0B, 0x42)
    assert 1023 <= count_periodic(board, 1.0) <= 1025
    cmos_write(board, 0x0A, 0x2F)  # 2 Hz
    assert 1 <= count_periodic(board, 1.0) <= 3
    assert 19 <= count_periodic(board, 10.0) <= 21
    cmos_write(board, 0x0A, 0x23)  # 8192 Hz
    assert 8190 <= count_periodic(board, 1.0) <= 8193
    cmos_write(board, 0x0A, 0x20)  # rate 0: none
    cmos(board, 0x0C)
    assert count_periodic(board, 0.5) == 0


def test_update_alarm_uip_and_register_c(board):
    make_rtc(board)
    assert cmos(board, 0x0C) == 0
    board.clock.advance(1_000_000)
    assert cmos(board, 0x0C) == 0x40  # PF: the default rate is 1024 Hz, even without PIE
    cmos_write(board, 0x0A, 0x20)  # no periodic rate from here on
    board.clock.advance(int(0.75 * 10**9) - 100_000 - 1_000_000)  # 100 µs before the next second
    assert cmos(board, 0x0A) & 0x80  # update in progress
    board.clock.advance(200_000)
    assert not cmos(board, 0x0A) & 0x80
    assert cmos(board, 0x0C) == 0x10  # an update happened (UF), no interrupt enabled
    assert cmos(board, 0x0C) == 0x00  # reading C cleared it
    cmos_write(board, 0x0B, 0x12)  # update-ended interrupt
    board.clock.advance(10**9)
    assert board.levels[8] == 1
    assert cmos(board, 0x0C) == 0x90 and board.levels[8] == 0
    cmos_write(board, 0x0B, 0x22)  # alarm interrupt only, at 13:45:35
    for index, value in ((1, 0x35), (3, 0x45), (5, 0xC0)):  # any hour
        cmos_write(board, index, value)
    board.clock.advance(2 * 10**9)  # 13:45:33
    assert board.levels[8] == 0
    board.clock.advance(2 * 10**9)
    assert board.levels[8] == 1
    assert cmos(board, 0x0C) & 0xA0 == 0xA0
    assert cmos(board, 0x0D) == 0x80


# -- isa-debug-exit and port 0x80 ---------------------------------------------------------
def test_debug_exit_status(board):
    assert [debug_exit_status(v) for v in (0, 1, 0x10, 0x7F)] == [1, 3, 0x21, 0xFF]
    machine = make_machine()
    dev = board.add(ISADebugExit(iobase=0xF4, iosize=4))
    assert board.inb(0xF4) == 0
    board.outb(0xF4, 0x10)
    assert machine.take_request() == (Request.SHUTDOWN, ShutdownCause.GUEST_SHUTDOWN)
    assert machine.exit_code == 0x21
    board.space.write(0xF6, 0x1234, 2)  # any port, any width up to 4
    assert machine.exit_code == 0x2469
    codes = []
    assert isinstance(dev, ISADebugExit)
    dev.exit_request = codes.append
    board.outb(0xF5, 3)
    assert codes == [7]
    default = board.add(ISADebugExit())
    assert isinstance(default, ISADebugExit)
    default.exit_request = codes.append
    board.outb(0x502, 0)
    assert codes == [7, 1]
    with pytest.raises(VfwError, match="already used by 'isa-debug-exit'"):
        board.add(ISADebugExit(iobase=0xF6, iosize=1))


def test_port80_is_a_sink(board):
    board.add(Port80())
    board.outb(0x80, 0x12)
    assert board.inb(0x80) == 0xFF
    assert board.space.read(0x80, 4) == 0xFFFFFFFF
