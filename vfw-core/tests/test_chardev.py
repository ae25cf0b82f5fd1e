"""Host character back ends: parsing, the /chardevs registry, files, sockets, stdio, ptys."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vfw import chardev as chardev_mod
from vfw.chardev import (
    CHARDEV,
    Chardev,
    chardev_from_opts,
    chardev_help,
    chardev_new,
    chardev_remove,
    find_chardev,
    serial_chardev,
)
from vfw.cmdline import CHARDEV_GROUP, parse_command_line
from vfw.errors import BackendError, OptionError, PropertyError, VfwError
from vfw.main_loop import main_loop
from vfw.options import parse_opts
from vfw.qom import reset_root, resolve_path


@pytest.fixture(autouse=True)
def fresh_tree():
    reset_root()
    yield
    reset_root()


def opts(text: str):
    return parse_opts(CHARDEV_GROUP, text)


def pump(until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the main loop until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached while running the main loop")
        main_loop().poll(10_000_000)


class Frontend:
    """A device model stand-in with a receive buffer of ``room`` bytes."""

    def __init__(self, room: int = 1 << 20):
        self.room = room
        self.data = bytearray()

    def can_receive(self) -> int:
        return self.room - len(self.data)

    def receive(self, data: bytes) -> None:
        assert len(data) <= self.can_receive(), "chardev delivered more than can_receive"
        self.data += data


# -- parsing and the registry --------------------------------------------------------------
def test_chardev_option_errors_match_qemu(tmp_path):
    with pytest.raises(OptionError, match="^'foo' is not a valid char driver name$"):
        chardev_from_opts(opts("foo,id=x"))
    with pytest.raises(OptionError, match="^chardev: no id specified$"):
        chardev_from_opts(opts("null"))
    with pytest.raises(OptionError, match='^chardev: "x" missing backend$'):
        chardev_from_opts(opts("id=x"))
    with pytest.raises(OptionError, match="^Invalid parameter 'bogus'$"):
        chardev_from_opts(opts("null,id=x,bogus=1"))
    with pytest.raises(OptionError, match="^chardev: file: no filename given$"):
        chardev_from_opts(opts("file,id=x"))
    with pytest.raises(OptionError, match="^Parameter 'append' expects 'on' or 'off'$"):
        chardev_from_opts(opts(f"file,id=x,path={tmp_path}/f,append=maybe"))
    with pytest.raises(OptionError, match="^chardev: socket: no host given$"):
        chardev_from_opts(opts("socket,id=x,server=on"))
    with pytest.raises(OptionError, match="^chardev: socket: no port given$"):
        chardev_from_opts(opts("socket,id=x,host=localhost"))
    with pytest.raises(BackendError, match="^Could not open '/nonexistent/x/y': "
                                           "No such file or directory$"):
        chardev_from_opts(opts("file,id=x,path=/nonexistent/x/y"))
    assert find_chardev("x") is None  # nothing half-made is left registered


def test_duplicate_ids_are_refused_on_the_command_line_and_in_the_registry():
    with pytest.raises(OptionError, match="Duplicate ID 'c' for chardev"):
        parse_command_line(["-chardev", "null,id=c", "-chardev", "null,id=c"])
    chardev_from_opts(opts("null,id=c"))
    with pytest.raises(OptionError, match="^Duplicate ID 'c' for chardev$"):
        chardev_from_opts(opts("null,id=c"))


def test_chardevs_live_in_the_qom_tree():
    c = chardev_from_opts(opts("null,id=con0"))
    assert isinstance(c, Chardev) and c.label == "con0"
    assert resolve_path("/chardevs/con0") is c
    assert c.path == "/chardevs/con0" and c.type_name == "chardev-null"
    assert find_chardev("con0") is c
    assert c.write(b"discarded") == len(b"discarded")
    chardev_remove("con0")
    assert find_chardev("con0") is None
    assert "  socket" in chardev_help().splitlines()
    assert chardev_help().startswith("Available chardev backend types:")


def test_chardev_property_kind_resolves_ids():
    c = chardev_new("ser", "null")
    assert CHARDEV.type_name == "str"
    assert CHARDEV.check("ser", "chardev") is c
    assert CHARDEV.check(c, "chardev") is c
    assert CHARDEV.check("", "chardev") is None
    assert CHARDEV.format(c) == "ser"
    with pytest.raises(PropertyError, match=r"^Property '\?.chardev' can't find value 'nope'$"):
        CHARDEV.check("nope", "chardev")


def test_one_frontend_unless_mux():
    c = chardev_new("c", "null")
    a, b = Frontend(), Frontend()
    c.set_frontend(a.can_receive, a.receive)
    with pytest.raises(BackendError, match="^Device 'c' is in use$"):
        c.set_frontend(b.can_receive, b.receive)
    c.clear_frontend(a.receive)
    c.set_frontend(b.can_receive, b.receive)
    m = chardev_from_opts(opts("null,id=m,mux=on"))
    m.set_frontend(a.can_receive, a.receive)
    m.set_frontend(b.can_receive, b.receive)
    m.feed(b"to-a")
    m.feed(b"\x01c")  # Ctrl-A c switches the focus on a mux
    m.feed(b"to-b")
    assert bytes(a.data) == b"to-a" and bytes(b.data) == b"to-b"


def test_escape_sequences(monkeypatch):
    c = chardev_new("c", "null")
    c._escapes = True  # as on a terminal
    quits = []
    monkeypatch.setattr(chardev_mod, "quit_handler", lambda: quits.append(1))
    f = Frontend()
    c.set_frontend(f.can_receive, f.receive)
    c.feed(b"ab\x01\x01c\x01")
    c.feed(b"zd\x01h\x01x")
    assert bytes(f.data) == b"ab\x01cd"  # C-a C-a sends C-a; unknown escapes are swallowed
    assert quits == [1]


# -- files -------------------------------------------------------------------------------
def test_file_output_is_on_disk_at_once(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old contents")
    c = chardev_from_opts(opts(f"file,id=f,path={path}"))
    assert c.write(b"hello ") == 6
    assert c.write(b"world\n") == 6
    assert path.read_bytes() == b"hello world\n"  # no flush needed: nothing is held back
    chardev_remove("f")
    c2 = chardev_new("g", "file", path=str(path), append=True)
    c2.write(b"more\n")
    assert path.read_bytes() == b"hello world\nmore\n"


def test_file_path_with_commas(tmp_path: Path):
    path = tmp_path / "a,b.log"
    chardev_from_opts(opts(f"file,id=f,path={str(path).replace(',', ',,')}")).write(b"x")
    assert path.read_bytes() == b"x"


# -- sockets -----------------------------------------------------------------------------
def test_unix_socket_server_loopback(tmp_path: Path):
    sock_path = str(tmp_path / "s.sock")
    c = chardev_from_opts(opts(f"socket,id=s,path={sock_path},server=on,wait=off"))
    f = Frontend()
    c.set_frontend(f.can_receive, f.receive)
    assert not c.connected
    assert c.write(b"before anyone listens") == 21  # discarded, as QEMU does

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(sock_path)
    pump(lambda: c.connected)
    client.sendall(b"ping from host")
    pump(lambda: bytes(f.data) == b"ping from host")
    c.write(b"pong from guest")
    client.settimeout(5)
    assert client.recv(100) == b"pong from guest"

    # One client at a time: a second one waits until the first is gone.
    first = c._conn
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(sock_path)
    main_loop().poll(20_000_000)
    assert c._conn is first
    client.close()
    pump(lambda: c._conn is not None and c._conn is not first)
    second.sendall(b"x")
    pump(lambda: f.data.endswith(b"x"))
    second.close()
    pump(lambda: not c.connected)
    with pytest.raises(VfwError, match="^Chardev 's' is busy$"):
        chardev_remove("s")
    c.clear_frontend()
    chardev_remove("s")
    assert not os.path.exists(sock_path)


def test_tcp_client_and_input_backpressure():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    c = serial_chardev(f"tcp:127.0.0.1:{port}")
    assert c is not None and c.label == "serial0" and c.connected
    peer, _ = listener.accept()
    f = Frontend(room=4)
    c.set_frontend(f.can_receive, f.receive)
    peer.sendall(b"0123456789")
    pump(lambda: len(f.data) == 4)
    main_loop().poll(20_000_000)
    assert bytes(f.data) == b"0123"  # never more than the front end can take
    assert c._throttled
    f.room = 100
    c.accept_input()
    pump(lambda: bytes(f.data) == b"0123456789")
    peer.close()
    pump(lambda: not c.connected)  # the host side closing is a disconnect, not an error
    listener.close()


def test_output_to_a_slow_reader_is_queued_then_flushed(tmp_path: Path):
    sock_path = str(tmp_path / "slow.sock")
    c = chardev_new("slow", "socket", path=sock_path, server=True, wait=False)
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.connect(sock_path)
    pump(lambda: c.connected)
    blob = os.urandom(4 << 20)
    taken = c.write(blob)
    assert 0 < taken < len(blob)  # the socket buffer plus OUTPUT_LIMIT, no more
    assert c.pending_output == chardev_mod.OUTPUT_LIMIT
    assert c.write(b"more") == 0  # full: the front end must wait
    drained = []
    c.notify_writable(lambda: drained.append(True))
    received = bytearray()
    reader.setblocking(False)

    def read_some() -> bool:
        try:
            while True:
                chunk = reader.recv(1 << 16)
                if not chunk:
                    break
                received.extend(chunk)
        except BlockingIOError:
            pass
        return len(received) == taken and bool(drained)

    pump(read_some, timeout=20)
    assert bytes(received) == blob[:taken]
    assert c.pending_output == 0


def test_socket_connect_failure_wording(tmp_path: Path):
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(BackendError, match=f"^Failed to connect to '{missing}': "
                                           "No such file or directory$"):
        chardev_new("c", "socket", path=missing)


# -- -serial spellings -------------------------------------------------------------------
def test_serial_spellings(tmp_path: Path):
    assert serial_chardev("none") is None
    null = serial_chardev("null")
    assert null is not None and null.type_name == "chardev-null" and null.label == "serial0"
    log = tmp_path / "com2.log"
    f = serial_chardev(f"file:{log}")
    assert f is not None and f.label == "serial1" and f.type_name == "chardev-file"
    f.write(b"x")
    assert log.read_bytes() == b"x"
    named = chardev_new("mine", "null")
    assert serial_chardev("chardev:mine") is named
    sock = serial_chardev(f"unix:{tmp_path}/u.sock,server=on,wait=off", label="serial7")
    assert sock is not None and sock.label == "serial7" and sock.type_name == "chardev-socket"
    assert sock.get_property("server") and not sock.get_property("wait")
    tcp = serial_chardev("tcp:127.0.0.1:0,server=on,wait=off")
    assert tcp is not None and tcp.get_property("host") == "127.0.0.1"
    pty = serial_chardev("pty")
    assert pty is not None and pty.type_name == "chardev-pty"


def test_serial_spelling_errors():
    with pytest.raises(OptionError, match="^could not connect serial device to character"
                                          " backend 'foo': 'foo' is not a valid char driver$"):
        serial_chardev("foo")
    with pytest.raises(OptionError, match="^could not connect serial device to character"
                                          " backend 'vc': 'vc' is not a valid char driver"
                                          " name$"):
        serial_chardev("vc")
    with pytest.raises(OptionError, match="backend 'chardev:nope': chardev 'nope' not found"):
        serial_chardev("chardev:nope")
    with pytest.raises(OptionError, match="Could not open '/nonexistent/dir/f'"):
        serial_chardev("file:/nonexistent/dir/f")
    with pytest.raises(OptionError, match="Invalid parameter 'bogus'"):
        serial_chardev("unix:/tmp/x.sock,bogus=1")
    with pytest.raises(OptionError, match="'tcp:nohostport' is not a valid char driver"):
        serial_chardev("tcp:nohostport")


# -- pty -----------------------------------------------------------------------------------
def test_pty_carries_bytes_both_ways(capfd):
    c = chardev_new("p", "pty")
    assert f"char device redirected to {c.pty_name} (label p)" in capfd.readouterr().err
    f = Frontend()
    c.set_frontend(f.can_receive, f.receive)
    fd = os.open(c.pty_name, os.O_RDWR | os.O_NOCTTY)
    try:
        c.write(b"to the pty")
        assert os.read(fd, 100) == b"to the pty"
        os.write(fd, b"from the pty")
        pump(lambda: bytes(f.data) == b"from the pty")
    finally:
        os.close(fd)


# -- stdio (in a child process: it owns the test's stdin/stdout) --------------------------------
STDIO_CHILD = textwrap.dedent("""
    import sys
    from vfw import chardev
    from vfw.main_loop import main_loop

    c = chardev.chardev_new("serial0", "{spec}")
    got = bytearray()

    def receive(data):
        got.extend(data)
        c.write(data.upper())

    c.set_frontend(lambda: 8, receive)
    chardev.quit_handler = lambda: sys.exit(7)
    c.write(b"ready\\n")
    while not c._in_eof:
        main_loop().poll(100_000_000)
    c.write(b"|eof after %d bytes\\n" % len(got))
""")


def test_stdio_with_a_pipe_reads_until_eof():
    child = subprocess.run([sys.executable, "-c", STDIO_CHILD.format(spec="stdio")],
                           input=b"hello, guest", capture_output=True, timeout=60)
    assert child.returncode == 0, child.stderr.decode()
    assert child.stdout == b"ready\nHELLO, GUEST|eof after 12 bytes\n"


def test_stdio_on_a_terminal_is_raw_and_restored():
    import pty

    code = textwrap.dedent("""
        import os, sys, termios
        before = termios.tcgetattr(0)
        from vfw import chardev
        from vfw.main_loop import main_loop

        c = chardev.chardev_new("serial0", "stdio")
        raw = termios.tcgetattr(0)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        assert raw[3] & termios.ISIG  # signal=on: Ctrl-C still stops vfw
        got = bytearray()
        c.set_frontend(lambda: 64, got.extend)

        def quit():
            c.write(b"[got %r]" % bytes(got))
            c.close()
            assert termios.tcgetattr(0) == before, "terminal not restored"
            c.write(b"not shown")
            os.write(1, b"[restored]")
            sys.exit(0)

        chardev.quit_handler = quit
        os.write(1, b"[ready]")
        while True:
            main_loop().poll(100_000_000)
    """)
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = bytearray()

    def read_until(marker: bytes) -> None:
        deadline = time.monotonic() + 30
        while marker not in out:
            assert time.monotonic() < deadline, out
            try:
                out.extend(os.read(master, 1024))
            except OSError:
                break

    try:
        read_until(b"[ready]")
        os.write(master, b"ab\x01h")  # Ctrl-A h: help, bytes so far reach the guest raw
        read_until(b"C-a x    exit emulator")
        os.write(master, b"c\x01x")
        read_until(b"[restored]")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert b"vfw: Terminated" in out
    assert b"[got b'abc']" in out
    assert os.waitstatus_to_exitcode(status) == 0
