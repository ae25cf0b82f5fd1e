"""isa-serial (16550A) driven through port I/O the way guests drive it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from vfw.chardev import chardev_new
from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.main_loop import main_loop
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import reset_root
from vfw.testing import ManualClock
from vfw_board_pc.isa import ISABus
from vfw_board_pc.serial import ISASerial

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Board:
    """An I/O space, an ISA bus and 16 recorded interrupt lines."""

    def __init__(self) -> None:
        self.io = MemoryRegion.container("io", 1 << 16)
        self.space = AddressSpace("I/O", self.io)
        self.levels = [0] * 16
        self.edges = [0] * 16
        self.bus = ISABus.create(self.io, [IRQ(self._irq, n) for n in range(16)])
        self.clock = ManualClock()

    def _irq(self, n: int, level: int) -> None:
        if level and not self.levels[n]:
            self.edges[n] += 1
        self.levels[n] = level

    def serial(self, **props) -> ISASerial:
        dev = ISASerial(**props)
        dev.clock = self.clock
        self.bus.attach(dev)
        return dev

    def inb(self, port: int) -> int:
        return self.space.read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.space.write(port, value, 1)


class Uart:
    """Register access to one UART at ``base``."""

    def __init__(self, board: Board, base: int = 0x3F8):
        self.board, self.base = board, base

    def inb(self, reg: int) -> int:
        return self.board.inb(self.base + reg)

    def outb(self, reg: int, value: int) -> None:
        self.board.outb(self.base + reg, value)


@pytest.fixture(autouse=True)
def fresh_tree():
    reset_root()
    yield
    reset_root()


@pytest.fixture
def board() -> Board:
    return Board()


# -- Linux's 8250 probe, replayed --------------------------------------------------------------
def linux_autoconfig(u: Uart) -> str:
    """The register sequence of Linux's serial8250 autoconfig() and autoconfig_16550a()
    (drivers/tty/serial/8250/8250_port.c), returning the port type it would settle on."""
    scratch = u.inb(IER)
    u.outb(IER, 0)
    u.board.outb(0x80, 0xFF)  # ISA bus float guard
    scratch2 = u.inb(IER) & 0x0F
    u.outb(IER, 0x0F)
    u.board.outb(0x80, 0)
    scratch3 = u.inb(IER) & 0x0F
    u.outb(IER, scratch)
    if scratch2 != 0 or scratch3 != 0x0F:
        return "none"
    save_mcr, save_lcr = u.inb(MCR), u.inb(LCR)
    u.outb(MCR, 0x10 | 0x0A)  # loopback with RTS and OUT2
    status1 = u.inb(MSR) & 0xF0
    u.outb(MCR, save_mcr)
    if status1 != 0x90:  # DCD | CTS
        return "none"
    u.outb(LCR, 0xBF)
    u.outb(2, 0)  # EFR, if any
    u.outb(LCR, 0)
    u.outb(FCR, 0x01)
    kind = {0: "8250", 1: "unknown", 2: "16550", 3: "16550A"}[u.inb(IIR) >> 6]
    if kind == "16550A":
        kind = autoconfig_16550a(u)
    # Reset the UART as autoconfig does.
    u.outb(MCR, save_mcr)
    u.outb(FCR, 0x01)
    u.outb(FCR, 0x07)
    u.outb(FCR, 0)
    u.inb(RBR)
    u.outb(IER, 0)
    u.outb(LCR, save_lcr)
    return kind


def autoconfig_16550a(u: Uart) -> str:
    u.outb(LCR, 0x80)
    if u.inb(2) == 0:  # EFR readable with DLAB: ST16C650V1
        return "16650"
    u.outb(LCR, 0xBF)
    if u.inb(2) == 0:
        return "16650V2"
    u.outb(LCR, 0)  # National SuperIO: the LOOP bit mirrored in EXCR1
    status1 = u.inb(MCR)
    u.outb(LCR, 0xE0)
    status2 = u.inb(2)
    if not (status2 ^ status1) & 0x10:
        u.outb(LCR, 0)
        u.outb(MCR, status1 ^ 0x10)
        u.outb(LCR, 0xE0)
        status2 = u.inb(2)
        u.outb(LCR, 0)
        u.outb(MCR, status1)
        if (status2 ^ status1) & 0x10:
            return "NS16550A"
    u.outb(LCR, 0)  # TI16750: IIR bit 5 with the 64-byte FIFO bit
    u.outb(FCR, 0x21)
    status1 = u.inb(IIR) >> 5
    u.outb(FCR, 0x01)
    u.outb(LCR, 0x80)
    u.outb(FCR, 0x21)
    status2 = u.inb(IIR) >> 5
    u.outb(FCR, 0x01)
    u.outb(LCR, 0)
    if status1 == 6 and status2 == 7:
        return "16750"
    iersave = u.inb(IER)  # XScale: IER bit 6 sticks
    u.outb(IER, iersave & ~0x40)
    if not u.inb(IER) & 0x40:
        u.outb(IER, iersave | 0x40)
        if u.inb(IER) & 0x40:
            return "XScale"
    u.outb(IER, iersave)
    if size_fifo(u) == 64:
        return "U6_16550A"
    return "16550A"


def size_fifo(u: Uart) -> int:
    old_lcr = u.inb(LCR)
    u.outb(LCR, 0)
    old_fcr = u.inb(IIR)  # Linux reads "FCR" at offset 2, i.e. IIR
    old_mcr = u.inb(MCR)
    u.outb(FCR, 0x07)
    u.outb(MCR, 0x10)
    u.outb(LCR, 0x80)
    old_dl = u.inb(DLL) | u.inb(DLM) << 8
    u.outb(DLL, 1)
    u.outb(DLM, 0)
    u.outb(LCR, 0x03)
    for i in range(256):
        u.outb(THR, i)
    u.board.clock.advance(20_000_000)
    count = 0
    while u.inb(LSR) & 0x01 and count < 256:
        u.inb(RBR)
        count += 1
    u.outb(FCR, old_fcr)
    u.outb(MCR, old_mcr)
    u.outb(LCR, 0x80)
    u.outb(DLL, old_dl & 0xFF)
    u.outb(DLM, old_dl >> 8)
    u.outb(LCR, old_lcr)
    return count


def linux_startup_bugs(u: Uart) -> set[str]:
    """serial8250_do_startup's checks: the LSR safety check and the THRE re-assert tests."""
    bugs = set()
    u.outb(FCR, 0x01)
    u.outb(FCR, 0x07)
    u.outb(FCR, 0)
    u.inb(LSR), u.inb(RBR), u.inb(IIR), u.inb(MSR)
    if u.inb(LSR) == 0xFF:
        bugs.add("LSR safety check engaged")
    u.outb(LCR, 0x03)
    assert u.inb(LSR) & 0x20  # wait_for_xmitr
    u.outb(IER, 0x02)
    iir1 = u.inb(IIR)
    u.outb(IER, 0)
    u.outb(IER, 0x02)
    iir = u.inb(IIR)
    u.outb(IER, 0)
    if not iir1 & 0x01 and iir & 0x01:
        bugs.add("UART_BUG_THRE")
    u.outb(MCR, 0x0B)  # DTR RTS OUT2
    u.outb(IER, 0x02)
    lsr, iir = u.inb(LSR), u.inb(IIR)
    u.outb(IER, 0)
    if lsr & 0x40 and iir & 0x01:
        bugs.add("UART_BUG_TXEN")
    return bugs


def test_linux_8250_probe_finds_a_16550a(board):
    board.serial()
    u = Uart(board)
    assert linux_autoconfig(u) == "16550A"
    assert linux_startup_bugs(u) == set()


def test_reset_values(board):
    board.serial()
    u = Uart(board)
    assert [u.inb(r) for r in (IER, IIR, LCR, MCR, LSR, MSR, SCR)] == [
        0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]
    u.outb(LCR, 0x80)
    assert (u.inb(DLL), u.inb(DLM)) == (0x0C, 0x00)  # 9600 baud
    u.outb(LCR, 0)
    u.outb(SCR, 0x5A)
    u.outb(IER, 0xFF)
    assert (u.inb(SCR), u.inb(IER)) == (0x5A, 0x0F)
    board.bus.devices[0].reset()
    assert (u.inb(SCR), u.inb(IER), u.inb(IIR)) == (0, 0, 0x01)


def test_loopback_mirrors_mcr_and_returns_tx(board):
    board.serial()
    u = Uart(board)
    u.inb(MSR)
    u.outb(MCR, 0x10)
    assert u.inb(MSR) == 0x0B  # all four lines dropped: DCTS DDSR DDCD deltas
    for mcr, msr in ((0x11, 0x20), (0x12, 0x10), (0x14, 0x40), (0x18, 0x80), (0x1F, 0xF0)):
        u.outb(MCR, mcr)
        assert u.inb(MSR) & 0xF0 == msr
    u.outb(MCR, 0x1B)  # RI (OUT1) falls: trailing-edge delta
    assert u.inb(MSR) == 0xB4
    u.outb(THR, 0x41)
    u.outb(THR, 0x42)  # no FIFO: the second overwrites the first and flags an overrun
    assert u.inb(LSR) == 0x63
    assert u.inb(RBR) == 0x42
    assert u.inb(LSR) == 0x60
    u.outb(FCR, 0x01)
    for b in b"hello":
        u.outb(THR, b)
    assert bytes(u.inb(RBR) for _ in range(5)) == b"hello"
    u.outb(MCR, 0x08)
    assert u.inb(MSR) & 0xF0 == 0xB0


def test_thre_interrupt(board):
    board.serial()
    u = Uart(board)
    irq = 4
    assert board.levels[irq] == 0
    u.outb(IER, 0x02)  # enabling THRE with an empty transmitter raises it at once
    assert board.levels[irq] == 1 and u.inb(LSR) & 0x20
    assert u.inb(IIR) == 0x02  # ... and reading IIR clears it
    assert board.levels[irq] == 0 and u.inb(IIR) == 0x01
    edges = board.edges[irq]
    u.outb(THR, ord("a"))  # each byte sent is a fresh THRE edge
    assert board.levels[irq] == 1 and board.edges[irq] == edges + 1
    u.outb(THR, ord("b"))
    assert board.edges[irq] == edges + 2
    u.outb(IER, 0)
    assert board.levels[irq] == 0
    u.outb(IER, 0x02)
    assert board.levels[irq] == 1
    u.outb(IER, 0x02)  # already enabled: no second assertion
    assert board.edges[irq] == edges + 3
    u.outb(FCR, 0x01)
    assert u.inb(IIR) == 0xC2  # FIFO mode sets the top bits


def test_interrupt_priorities(board):
    dev = board.serial()
    u = Uart(board)
    u.outb(FCR, 0x01)  # FIFO, trigger 1
    u.outb(IER, 0x0F)
    assert u.inb(IIR) == 0xC2  # only THRE so far
    u.outb(MCR, 0x18)  # loopback: modem status deltas pending
    u.inb(IIR)  # THRE cleared by the read
    assert u.inb(IIR) == 0xC0  # modem status, lowest priority
    for b in range(17):  # 17 bytes into a 16-byte FIFO: data and an overrun
        u.outb(THR, b)
    assert u.inb(IIR) == 0xC6  # line status first
    assert u.inb(LSR) & 0x02
    assert u.inb(IIR) == 0xC4  # then received data
    assert dev.uart is not None and dev.uart.rx_count == 16
    while u.inb(LSR) & 0x01:
        u.inb(RBR)
    assert u.inb(IIR) == 0xC2  # then THRE (the last byte sent)
    assert u.inb(IIR) == 0xC0  # then modem status again
    u.inb(MSR)
    assert u.inb(IIR) == 0xC1 and board.levels[4] == 0


def test_rx_trigger_level_and_character_timeout(board):
    chardev = chardev_new("c", "null")
    board.serial(chardev="c")
    u = Uart(board)
    u.outb(LCR, 0x03)  # 8N1: 10 bits a character
    u.outb(FCR, 0x81)  # FIFO, trigger level 8
    u.outb(IER, 0x01)
    chardev.feed(b"abc")
    assert u.inb(IIR) == 0xC1 and board.levels[4] == 0  # below the trigger level
    board.clock.advance(3 * 1_041_666)  # 9600 8N1: ~1.04 ms a character
    assert board.levels[4] == 0
    board.clock.advance(2 * 1_041_666)
    assert board.levels[4] == 1 and u.inb(IIR) == 0xCC  # character timeout
    assert u.inb(RBR) == ord("a")
    assert u.inb(IIR) == 0xC1  # reading clears the timeout and restarts it
    board.clock.advance(5 * 1_041_666)
    assert u.inb(IIR) == 0xCC
    chardev.feed(b"defghi")  # 8 bytes now: the trigger level
    assert u.inb(IIR) == 0xC4
    assert bytes(u.inb(RBR) for _ in range(8)) == b"bcdefghi"
    assert u.inb(IIR) == 0xC1 and not u.inb(LSR) & 0x01


def test_rx_backpressure_from_a_socket(board, tmp_path: Path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "host.sock")
    listener.bind(path)
    listener.listen(1)
    chardev_new("host", "socket", path=path)
    peer, _ = listener.accept()
    dev = board.serial(chardev="host")
    assert dev.uart is not None
    u = Uart(board)
    u.outb(FCR, 0x01)
    message = bytes(range(40))
    peer.sendall(message)

    def run_until(cond) -> None:
        deadline = time.monotonic() + 5
        while not cond():
            assert time.monotonic() < deadline
            main_loop().poll(10_000_000)

    run_until(lambda: dev.uart.rx_count == 16)
    main_loop().poll(20_000_000)
    assert dev.uart.can_receive() == 0 and dev.uart.rx_count == 16
    got = bytearray()
    while len(got) < len(message):
        run_until(lambda: u.inb(LSR) & 0x01)
        while u.inb(LSR) & 0x01:
            got.append(u.inb(RBR))
    assert bytes(got) == message
    assert not u.inb(LSR) & 0x02  # never an overrun
    u.outb(THR, ord("!"))
    peer.settimeout(5)
    assert peer.recv(10) == b"!"
    peer.close()
    listener.close()


def test_output_reaches_a_file_chardev(board, tmp_path: Path):
    log = tmp_path / "console.log"
    chardev_new("con", "file", path=str(log))
    board.serial(chardev="con")
    u = Uart(board)
    for b in b"Linux version 6.1\r\n":
        while not u.inb(LSR) & 0x20:
            pass
        u.outb(THR, b)
    assert log.read_bytes() == b"Linux version 6.1\r\n"


def test_transmitter_waits_for_a_full_chardev(board):
    chardev = chardev_new("c", "null")
    accepted = bytearray()
    full = [True]
    waiters = []

    def write(data: bytes) -> int:
        if full[0]:
            return 0
        accepted.extend(data)
        return len(data)

    chardev.write = write  # type: ignore[method-assign]
    chardev.notify_writable = waiters.append  # type: ignore[method-assign]
    board.serial(chardev="c")
    u = Uart(board)
    u.outb(THR, ord("x"))
    assert u.inb(LSR) & 0x60 == 0  # THR busy until the host takes the byte
    u.outb(THR, ord("y"))  # no FIFO: overrun, dropped
    assert len(waiters) == 1
    full[0] = False
    waiters.pop()()
    assert bytes(accepted) == b"x" and u.inb(LSR) & 0x60 == 0x60


def test_com_ports_and_port_conflicts(board):
    a = board.serial()
    b = board.serial()
    assert (a.index, b.index) == (0, 1)
    Uart(board, 0x2F8).outb(SCR, 0x77)
    assert Uart(board, 0x2F8).inb(SCR) == 0x77 and Uart(board).inb(SCR) == 0
    b.uart.write(IER, 0x02)  # type: ignore[union-attr]
    assert board.levels[3] == 1  # COM2 is IRQ 3
    with pytest.raises(VfwError, match=r"'isa-serial' .*I/O ports 0x3f8-0x3ff overlap ports"
                                       r" 0x3f8-0x3ff already used by 'isa-serial'"):
        board.serial(iobase=0x3F8, index=2)
    board.serial(index=3)
    with pytest.raises(VfwError, match=r"^Max. supported number of ISA serial ports is 4.$"):
        board.serial()
    with pytest.raises(VfwError, match="^isa irq 16 invalid$"):
        board.serial(index=2, irq=16)
    assert len(board.bus.devices) == 3  # refused devices are unplugged again


def test_chardev_property_errors(board):
    dev = ISASerial()
    with pytest.raises(Exception, match="^Property 'isa-serial.chardev' can't find value 'x'$"):
        dev.set_property("chardev", "x")
    chardev_new("c", "null")
    board.serial(chardev="c")
    with pytest.raises(VfwError, match="^Device 'c' is in use$"):
        board.serial(chardev="c")
    assert ISASerial.class_properties()["chardev"].type_name == "str"
