"""Host character back ends (QEMU's chardev layer): stdio, files, sockets, pipes, ptys, null.

A chardev is a byte stream between the host and one device model (its *front end*: a UART, a
console). The front end writes guest output with :meth:`Chardev.write`, which never blocks the
vCPU for long: what the host cannot take at once is buffered and flushed from the main loop (a
file is written through at once, so nothing a guest flushed to a file is lost). Host input is
read through ``vfw.main_loop.main_loop().add_reader`` and handed to the front end under the BQL,
never more than its ``can_receive()`` says it can take; a front end that had no room calls
:meth:`Chardev.accept_input` once it has some again.

Chardevs live in the composition tree at ``/chardevs/<id>`` (as in QEMU) and are made from
``-chardev backend,id=...`` (:func:`chardev_from_opts`), from QEMU's ``-serial`` spellings
(:func:`serial_chardev`) or directly (:func:`chardev_new`). Devices name them with a property
of kind :data:`CHARDEV`.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import socket
import stat
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from .errors import BackendError, OptionError, PropertyError, VfwError
from .options import HELP_WORDS, Opts, OptsGroup, parse_opts
from .props import BOOL, STR, PropertyType, prop
from .qom import TABLE, Object, container_get, register_type, resolve_path
from .timer import CLOCK_REALTIME, Timer

__all__ = [
    "CHARDEV",
    "Chardev",
    "ChardevType",
    "chardev_from_opts",
    "chardev_help",
    "chardev_new",
    "chardev_remove",
    "find_chardev",
    "serial_chardev",
]

log = logging.getLogger("vfw.chardev")

#: Output a back end holds for a host reader that is not keeping up; beyond it ``write``
#: accepts fewer bytes than offered (the front end retries, as a UART with a full FIFO does).
OUTPUT_LIMIT = 1 << 20
#: Bytes read from the host in one go.
READ_CHUNK = 4096
#: The main loop only watches for readability, so a blocked flush is retried on a timer,
#: backing off from the first delay to the last.
_RETRY_FIRST_NS = 1_000_000
_RETRY_MAX_NS = 20_000_000

#: Every key ``-chardev`` knows (QEMU's qemu_chardev_opts); a back end reads its own and
#: ignores the rest, as QEMU does. Anything else is "Invalid parameter".
CHARDEV_KEYS = frozenset((
    "backend", "path", "host", "port", "fd", "local", "localaddr", "localport", "to", "ipv4",
    "ipv6", "wait", "server", "delay", "nodelay", "reconnect", "telnet", "tn3270", "websocket",
    "width", "height", "cols", "rows", "mux", "signal", "name", "debug", "size", "chardev",
    "append", "logfile", "logappend", "mouse", "clipboard", "tls-creds", "tls-authz",
    "abstract", "tight", "input-path", "nowait",
))

#: QEMU's mux escape character: Ctrl-A.
ESCAPE_CHAR = 0x01
MUX_HELP = (
    "\r\n"
    "C-a h    print this help\r\n"
    "C-a x    exit emulator\r\n"
    "C-a c    switch between console and monitor\r\n"
    "C-a C-a  sends C-a\r\n"
)

CanReceive = Callable[[], int]
Receive = Callable[[bytes], None]


def _request_quit() -> None:
    """Ctrl-A x: end the VM the way QEMU's ``quit`` does."""
    from .runstate import ShutdownCause

    machine = resolve_path("/machine")
    request = getattr(machine, "request_shutdown", None)
    if request is None:
        log.warning("Ctrl-A x: no machine to stop")
        return
    request(ShutdownCause.HOST_QMP_QUIT)


#: Called (under the BQL) when the user types Ctrl-A x on a console; tests replace it.
quit_handler: Callable[[], None] = _request_quit


class _Ready:
    """Whether an fd is ready right now, for fds we must not make non-blocking (the stdio
    the process shares with its shell): one poll object, reused for every byte."""

    def __init__(self, fd: int, events: int):
        self._poll = select.poll()
        self._poll.register(fd, events)

    def __call__(self) -> bool:
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return False


@register_type
class Chardev(Object):
    """A host back end. Subclasses open their fds in ``_open``; the base class does the
    buffering, the reading and the front-end bookkeeping."""

    TYPE = "chardev"
    ABSTRACT = True
    #: The ``-chardev`` keys this back end reads, beyond ``id``, ``backend`` and ``mux``.
    OPTION_KEYS: ClassVar[tuple[str, ...]] = ()

    def instance_init(self) -> None:
        #: The id (``/chardevs/<label>``); None until registered.
        self.label: str | None = None
        #: ``mux=on``: several front ends share it; input goes to the focused one.
        self.mux = False
        self._frontends: list[tuple[CanReceive, Receive]] = []
        self._focus = 0
        self._in_fd: int | None = None
        self._out_fd: int | None = None
        #: Whether reads/writes may block (fds we share with the process's parent) and so
        #: must be polled first (stdio sets them).
        self._in_ready: _Ready | None = None
        self._out_ready: _Ready | None = None
        self._out_shared = False
        self._out_regular = False
        self._out_dead = False
        self._out_chunk = READ_CHUNK
        self._reading = False
        self._throttled = False
        self._in_eof = False
        self._opened = False
        self._closed = False
        self._out_buf = bytearray()
        self._retry_ns = _RETRY_FIRST_NS
        self._flush_timer = Timer(CLOCK_REALTIME, self._flush_from_loop)
        self._writable_waiters: list[Callable[[], None]] = []
        #: Drop output rather than push back when the host side is full (an unread pty).
        self.drop_when_full = False
        self._escapes = False
        self._got_escape = False

    # -- life cycle ------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse a configuration before anything is opened (OptionError)."""

    def open(self) -> None:
        """Open the host side; BackendError if the host refuses."""
        if self._opened:
            return
        self.validate()
        self._open()
        self._opened = True
        _open_chardevs.add(self)
        self._update_reader()

    def _open(self) -> None:
        """Back-end specific: set ``_in_fd`` / ``_out_fd``."""

    def close(self) -> None:
        """Flush what can be flushed quickly, stop reading and release the host side."""
        if self._closed:
            return
        self._closed = True
        _open_chardevs.discard(self)
        try:
            self.flush(0.2)
        finally:
            self._flush_timer.delete()
            self._stop_reading()
            self._close()
            self._in_fd = self._out_fd = None

    def _close(self) -> None:
        """Back-end specific release of fds."""

    def instance_finalize(self) -> None:
        self.close()

    # -- front end -------------------------------------------------------------------------
    def set_frontend(self, can_receive: CanReceive, receive: Receive) -> None:
        """Attach a device model: ``can_receive()`` says how many bytes it can take now,
        ``receive(data)`` takes them. One front end per chardev unless ``mux``."""
        if self._frontends and not self.mux:
            raise BackendError(f"Device '{self.label or self.type_name}' is in use")
        self._frontends.append((can_receive, receive))
        self._update_reader()

    def clear_frontend(self, receive: Receive | None = None) -> None:
        """Detach the front end whose ``receive`` is given (all of them without one)."""
        self._frontends = [f for f in self._frontends
                           if receive is not None and f[1] != receive]
        self._focus = 0
        self._update_reader()

    @property
    def has_frontend(self) -> bool:
        return bool(self._frontends)

    def accept_input(self) -> None:
        """The front end has room again (QEMU's qemu_chr_fe_accept_input)."""
        if self._throttled:
            self._throttled = False
            self._update_reader()

    # -- output ----------------------------------------------------------------------------
    def write(self, data: bytes) -> int:
        """Send ``data`` to the host; returns how many bytes were taken (written or queued).

        Less than ``len(data)`` only when the host is not reading and OUTPUT_LIMIT bytes are
        already queued; the caller keeps the rest and may ask :meth:`notify_writable`.
        Output to a closed or absent host side is discarded (counted as taken).
        """
        if not data:
            return 0
        if self._closed or self._out_fd is None or self._out_dead:
            return len(data)
        if self._out_buf:
            return self._queue(data)
        n = self._write_now(data)
        if n >= len(data):
            return len(data)
        return n + self._queue(data[n:])

    def _queue(self, data: bytes) -> int:
        room = OUTPUT_LIMIT - len(self._out_buf)
        if room <= 0:
            return len(data) if self.drop_when_full else 0
        taken = data[:room]
        was_empty = not self._out_buf
        self._out_buf += taken
        if was_empty:
            self._retry_ns = _RETRY_FIRST_NS
            self._flush_timer.mod_in(self._retry_ns)
        if self.drop_when_full:
            return len(data)
        return len(taken)

    def notify_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once (under the BQL) when queued output has drained."""
        if not self._out_buf:
            callback()
        else:
            self._writable_waiters.append(callback)

    @property
    def pending_output(self) -> int:
        """Bytes queued but not yet taken by the host."""
        return len(self._out_buf)

    def _write_now(self, data: bytes) -> int:
        """Write as much of ``data`` as the host takes without blocking; returns the count.

        An unrecoverable host error discards the data (returns ``len(data)``)."""
        fd = self._out_fd
        if fd is None:
            return len(data)
        done = 0
        view = memoryview(data)
        try:
            while done < len(data):
                if self._out_ready is not None and not self._out_ready():
                    break
                chunk = view[done:] if self._out_regular or not self._out_shared \
                    else view[done:done + self._out_chunk]
                n = os.write(fd, chunk)
                if n <= 0:
                    break
                done += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._output_error(exc)
            return len(data)
        return done

    def _output_error(self, exc: OSError) -> None:
        """The host side of the output failed for good (EPIPE, EIO): stop writing."""
        log.warning("chardev '%s': write failed: %s; discarding further output",
                    self.label, exc.strerror)
        self._out_dead = True
        self._out_buf.clear()

    def _flush_from_loop(self) -> None:
        self._flush_some()
        if self._out_buf:
            self._retry_ns = min(self._retry_ns * 2, _RETRY_MAX_NS)
            self._flush_timer.mod_in(self._retry_ns)

    def _flush_some(self) -> None:
        while self._out_buf:
            if self._out_fd is None or self._out_dead:
                self._out_buf.clear()
                break
            chunk = bytes(self._out_buf[:READ_CHUNK * 64])
            n = self._write_now(chunk)
            del self._out_buf[:n]
            if n < len(chunk):
                break
        if not self._out_buf:
            waiters, self._writable_waiters = self._writable_waiters, []
            for callback in waiters:
                callback()

    def flush(self, timeout_s: float = 1.0) -> None:
        """Push queued output out, waiting at most ``timeout_s`` for a slow host reader."""
        import time

        deadline = time.monotonic() + timeout_s
        while self._out_buf and self._out_fd is not None and not self._out_dead:
            self._flush_some()
            if not self._out_buf:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            p = select.poll()
            p.register(self._out_fd, select.POLLOUT)
            try:
                p.poll(min(left, 0.05) * 1000)
            except OSError:
                break

    # -- input -----------------------------------------------------------------------------
    def _update_reader(self) -> None:
        want = (self._opened and not self._closed and self._in_fd is not None
                and bool(self._frontends) and not self._throttled and not self._in_eof)
        if want and not self._reading:
            from .main_loop import main_loop

            assert self._in_fd is not None
            main_loop().add_reader(self._in_fd, self._on_readable)
            self._reading = True
        elif not want and self._reading:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading:
            from .main_loop import main_loop

            if self._in_fd is not None:
                main_loop().remove_reader(self._in_fd)
            self._reading = False

    def _room(self) -> int:
        if not self._frontends:
            return 0
        can_receive, _ = self._frontends[self._focus % len(self._frontends)]
        return can_receive()

    def _on_readable(self) -> None:
        """Main-loop callback (BQL held): read what the front end can take."""
        fd = self._in_fd
        if not self._reading or fd is None:
            return
        room = self._room()
        if room <= 0:
            self._throttled = True
            self._update_reader()
            return
        if self._in_ready is not None and not self._in_ready():
            return
        try:
            data = self._read_host(fd, min(room, READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._input_error(exc)
            return
        if not data:
            self._input_eof()
            return
        self._deliver(data)

    def _read_host(self, fd: int, n: int) -> bytes:
        return os.read(fd, n)

    def _input_eof(self) -> None:
        """The host closed its input: no more bytes will come (not an error)."""
        self._in_eof = True
        self._update_reader()

    def _input_error(self, exc: OSError) -> None:
        log.warning("chardev '%s': read failed: %s", self.label, exc.strerror)
        self._input_eof()

    def _deliver(self, data: bytes) -> None:
        if self._escapes:
            self._filter_escapes(data)
        else:
            self._to_frontend(data)

    def _to_frontend(self, data: bytes) -> None:
        if data and self._frontends:
            _, receive = self._frontends[self._focus % len(self._frontends)]
            receive(data)

    def feed(self, data: bytes) -> None:
        """Deliver ``data`` to the front end as if the host had typed it (tests, monitors);
        the caller respects ``can_receive``."""
        self._deliver(data)

    def _filter_escapes(self, data: bytes) -> None:
        """QEMU's mux escapes: Ctrl-A h help, Ctrl-A x quit, Ctrl-A c focus, Ctrl-A Ctrl-A.
        Bytes typed before a command reach the front end before the command acts."""
        out = bytearray()
        for byte in data:
            if self._got_escape:
                self._got_escape = False
                if byte == ESCAPE_CHAR:
                    out.append(byte)
                    continue
                self._to_frontend(bytes(out))
                out.clear()
                if byte in (ord("h"), ord("?")):
                    self.write(MUX_HELP.encode())
                elif byte == ord("x"):
                    self.write(b"vfw: Terminated\r\n")
                    self.flush(0.2)
                    quit_handler()
                elif byte == ord("c") and len(self._frontends) > 1:
                    self._focus = (self._focus + 1) % len(self._frontends)
                # other escapes are swallowed, as QEMU does
            elif byte == ESCAPE_CHAR:
                self._got_escape = True
            else:
                out.append(byte)
        self._to_frontend(bytes(out))


# -- the back ends ------------------------------------------------------------------------
def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _open_error(path: str, exc: OSError) -> BackendError:
    return BackendError(f"Could not open '{path}': {exc.strerror or exc}")


@register_type
class NullChardev(Chardev):
    """Discards output, never has input."""

    TYPE = "chardev-null"


_stdio_user: Chardev | None = None
_saved_tty: tuple[int, list[Any]] | None = None
_tty_lock = threading.Lock()


def _restore_tty() -> None:
    """atexit: put the terminal back the way we found it."""
    global _saved_tty
    with _tty_lock:
        if _saved_tty is not None:
            fd, attrs = _saved_tty
            try:
                termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
            except (OSError, termios.error):
                pass
            _saved_tty = None


_atexit_registered = False


def _at_exit() -> None:
    for chardev in list(_open_chardevs):
        try:
            chardev.flush(0.5)
        except Exception:  # exiting anyway: nothing useful to do with it
            pass
    _restore_tty()


def _ensure_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True


@register_type
class StdioChardev(Chardev):
    """The process's stdin/stdout. A terminal is put in raw mode (restored at exit) and gets
    QEMU's Ctrl-A escapes; a stdin that is not a terminal is read until EOF."""

    TYPE = "chardev-stdio"
    OPTION_KEYS = ("signal",)

    signal = prop(BOOL, True, "Ctrl-C etc. signal the process instead of reaching the guest")

    def _open(self) -> None:
        global _stdio_user
        if _stdio_user is not None and _stdio_user is not self:
            raise BackendError("cannot use stdio by multiple character devices")
        _stdio_user = self
        _ensure_atexit()
        self._out_fd = 1
        self._out_shared = True
        try:
            mode = os.fstat(1).st_mode
            self._out_regular = stat.S_ISREG(mode)
            self._out_chunk = 512 if os.isatty(1) else select.PIPE_BUF
            if not self._out_regular:
                self._out_ready = _Ready(1, select.POLLOUT)
        except OSError:
            self._out_fd = None
        try:
            os.fstat(0)
        except OSError:
            return  # no stdin at all: output only
        self._in_fd = 0
        self._in_ready = _Ready(0, select.POLLIN | select.POLLHUP)
        if os.isatty(0):
            self._escapes = True
            self._raw_mode(0)

    def _raw_mode(self, fd: int) -> None:
        """QEMU's stdio set-up: no echo, no line editing, bytes as typed; keep output
        post-processing (\\n → \\r\\n) and, with signal=on, Ctrl-C as a signal."""
        global _saved_tty
        try:
            attrs = termios.tcgetattr(fd)
        except (OSError, termios.error):
            return
        with _tty_lock:
            if _saved_tty is None:
                _saved_tty = (fd, [list(a) if isinstance(a, list) else a for a in attrs])
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
        iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                   | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        oflag |= termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        if not self.signal:
            lflag &= ~termios.ISIG
        cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        cc = list(cc)
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        try:
            termios.tcsetattr(fd, termios.TCSANOW,
                              [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
        except (OSError, termios.error) as exc:
            log.warning("cannot put the terminal in raw mode: %s", exc)

    def _close(self) -> None:
        global _stdio_user
        if _stdio_user is self:
            _stdio_user = None
            _restore_tty()


@register_type
class FileChardev(Chardev):
    """Output to a file (created or truncated, or appended to with append=on). Regular files
    are written through on every write, so nothing the guest sent is lost on exit."""

    TYPE = "chardev-file"
    OPTION_KEYS = ("path", "append")

    path = prop(STR, None, "the file to write")
    append = prop(BOOL, False, "append to the file instead of truncating it")

    def validate(self) -> None:
        if not self.path:
            raise OptionError("chardev: file: no filename given")

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_APPEND if self.append else os.O_TRUNC
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        self._out_fd = fd
        self._out_regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not self._out_regular:
            _set_nonblocking(fd)

    def _write_now(self, data: bytes) -> int:
        if self._out_regular and self._out_fd is not None:
            # A regular file never makes us wait long: write it all, now.
            view, done = memoryview(data), 0
            try:
                while done < len(data):
                    done += os.write(self._out_fd, view[done:])
            except OSError as exc:
                self._output_error(exc)
            return len(data)
        return super()._write_now(data)

    def _close(self) -> None:
        if self._out_fd is not None:
            os.close(self._out_fd)


@register_type
class PipeChardev(Chardev):
    """A named pipe pair ``PATH.in`` / ``PATH.out``, or one ``PATH`` for both ways."""

    TYPE = "chardev-pipe"
    OPTION_KEYS = ("path",)

    path = prop(STR, None, "the pipe's path (PATH.in and PATH.out if both exist)")

    def validate(self) -> None:
        if not self.path:
            raise OptionError("chardev: pipe: no filename given")

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
        path_in, path_out = self.path + ".in", self.path + ".out"
        try:
            if os.path.exists(path_in) and os.path.exists(path_out):
                self._in_fd = os.open(path_in, flags)
                try:
                    self._out_fd = os.open(path_out, flags)
                except OSError:
                    os.close(self._in_fd)
                    raise
            else:
                self._in_fd = self._out_fd = os.open(self.path, flags)
        except OSError as exc:
            raise _open_error(self.path, exc) from None
        self._out_regular = stat.S_ISREG(os.fstat(self._out_fd).st_mode)

    def _close(self) -> None:
        fds = {self._in_fd, self._out_fd} - {None}
        for fd in fds:
            assert fd is not None
            os.close(fd)


@register_type
class PtyChardev(Chardev):
    """A new pseudo-terminal; its name is printed as QEMU does. Output nobody reads is
    dropped, as on a real unconnected line."""

    TYPE = "chardev-pty"

    def instance_init(self) -> None:
        self.pty_name = ""
        self._slave: int | None = None

    def _open(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise BackendError(f"Failed to create PTY: {exc.strerror}") from None
        try:
            attrs = termios.tcgetattr(slave)
            attrs[0] = 0
            attrs[1] = 0
            attrs[3] = 0
            attrs[2] = (attrs[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
        except (OSError, termios.error):
            pass
        os.set_inheritable(master, False)
        os.set_inheritable(slave, False)
        _set_nonblocking(master)
        self._slave = slave  # held open so reads don't fail before a client attaches
        self._in_fd = self._out_fd = master
        self.pty_name = os.ttyname(slave)
        self.drop_when_full = True
        print(f"char device redirected to {self.pty_name} (label {self.label})",
              file=sys.stderr)

    def _close(self) -> None:
        for fd in (self._in_fd, self._slave):
            if fd is not None:
                os.close(fd)
        self._slave = None


@register_type
class SocketChardev(Chardev):
    """A stream socket: a UNIX path or TCP host:port, as client or (server=on) listener.

    A server serves one client at a time: while one is connected it stops accepting; output
    while nobody is connected is discarded. ``wait=on`` (QEMU's default for servers) blocks at
    start-up until the first client connects; with ``wait=off`` clients are accepted from the
    main loop.
    """

    TYPE = "chardev-socket"
    OPTION_KEYS = ("path", "host", "port", "server", "wait", "nowait", "nodelay", "telnet",
                   "ipv4", "ipv6")

    path = prop(STR, None, "UNIX socket path")
    host = prop(STR, None, "TCP host")
    port = prop(STR, None, "TCP port")
    server = prop(BOOL, False, "listen for a client instead of connecting")
    wait = prop(BOOL, True, "as a server, wait for a client before starting")
    nodelay = prop(BOOL, False, "set TCP_NODELAY")
    telnet = prop(BOOL, False, "speak the telnet protocol (unsupported)")

    def instance_init(self) -> None:
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._listening = False

    def validate(self) -> None:
        if self.telnet:
            raise OptionError("chardev: socket: telnet mode is not supported by vfw")
        if not self.path:
            if self.host is None:
                raise OptionError("chardev: socket: no host given")
            if not self.port:
                raise OptionError("chardev: socket: no port given")

    def describe(self) -> str:
        """The address as QEMU's messages show it."""
        if self.path:
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"

    def _tcp_address(self) -> tuple[str, int]:
        host = (self.host or "").strip("[]")
        port_text = str(self.port)
        try:
            port = int(port_text, 10)
        except ValueError:
            try:
                port = socket.getservbyname(port_text, "tcp")
            except OSError:
                raise BackendError(f"address resolution failed for {host}:{port_text}:"
                                   " Servname not supported for ai_socktype") from None
        if not 0 <= port <= 65535:
            raise BackendError(f"address resolution failed for {host}:{port_text}:"
                               " port out of range")
        return host, port

    def _open(self) -> None:
        if self.server:
            self._open_server()
        else:
            self._open_client()

    def _open_server(self) -> None:
        try:
            if self.path:
                if len(os.fsencode(self.path)) >= 108:
                    raise BackendError(f"UNIX socket path '{self.path}' is too long")
                try:
                    if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                        os.unlink(self.path)
                except FileNotFoundError:
                    pass
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    listener.bind(self.path)
                    listener.listen(1)
                except OSError:
                    listener.close()
                    raise
            else:
                listener = socket.create_server(self._tcp_address(), backlog=1)
        except BackendError:
            raise
        except OSError as exc:
            what = "bind socket" if self.path else "find an available port"
            raise BackendError(f"Failed to {what}: {exc.strerror or exc}") from None
        listener.set_inheritable(False)
        self._listener = listener
        if self.wait:
            print(f"vfw: waiting for connection on: disconnected:{self.describe()},server=on",
                  file=sys.stderr)
            conn, _ = listener.accept()
            self._connected(conn)
        else:
            listener.setblocking(False)
            self._listen(True)

    def _open_client(self) -> None:
        try:
            if self.path:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(self.path)
                except OSError:
                    conn.close()
                    raise
            else:
                conn = socket.create_connection(self._tcp_address())
        except BackendError:
            raise
        except OSError as exc:
            target = self.path or f"{self.host}:{self.port}"
            raise BackendError(f"Failed to connect to '{target}': {exc.strerror or exc}"
                               ) from None
        self._connected(conn)

    def _listen(self, on: bool) -> None:
        from .main_loop import main_loop

        if self._listener is None or on == self._listening:
            return
        if on:
            main_loop().add_reader(self._listener.fileno(), self._on_accept)
        else:
            main_loop().remove_reader(self._listener.fileno())
        self._listening = on

    def _on_accept(self) -> None:
        if self._listener is None or self._conn is not None:
            return
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("chardev '%s': accept failed: %s", self.label, exc.strerror)
            return
        self._connected(conn)

    def _connected(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.set_inheritable(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6) and self.nodelay:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self._in_fd = self._out_fd = conn.fileno()
        self._in_eof = False
        self._throttled = False
        self._listen(False)
        log.info("chardev '%s': client connected on %s", self.label, self.describe())
        self._update_reader()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _disconnect(self) -> None:
        self._stop_reading()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._in_fd = self._out_fd = None
        self._out_buf.clear()
        waiters, self._writable_waiters = self._writable_waiters, []
        for callback in waiters:
            callback()
        if self.server and not self._closed:
            self._listen(True)

    def _read_host(self, fd: int, n: int) -> bytes:
        assert self._conn is not None
        return self._conn.recv(n)

    def _input_eof(self) -> None:
        self._disconnect()

    def _input_error(self, exc: OSError) -> None:
        self._disconnect()

    def _output_error(self, exc: OSError) -> None:
        self._disconnect()

    def _write_now(self, data: bytes) -> int:
        conn = self._conn
        if conn is None:
            return len(data)
        try:
            return conn.send(data, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._output_error(exc)
            return len(data)

    def _close(self) -> None:
        self._listen(False)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.path:
                try:
                    if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                        os.unlink(self.path)
                except OSError:
                    pass


_open_chardevs: set[Chardev] = set()


# -- the registry (/chardevs) and parsing -----------------------------------------------------
def _root() -> Object:
    return container_get("/chardevs")


def find_chardev(chardev_id: str) -> Chardev | None:
    """The chardev registered as ``chardev_id``, or None."""
    obj = _root().children.get(chardev_id)
    return obj if isinstance(obj, Chardev) else None


def chardev_class(backend: str) -> type[Chardev]:
    """The class of back end ``backend`` (``file``, ``socket``, ...)."""
    cls: type[Object] | None = None
    if backend:
        impl = TABLE.find("chardev-" + backend)
        if impl is not None:
            cls = TABLE.initialize(impl)
    if cls is None or not issubclass(cls, Chardev) or cls.is_abstract():
        raise OptionError(f"'{backend}' is not a valid char driver name")
    return cls


def chardev_help() -> str:
    """``-chardev help``."""
    names = sorted(c.TYPE[len("chardev-"):] for c in TABLE.get_list("chardev")
                   if c.TYPE.startswith("chardev-"))
    return "\n".join(["Available chardev backend types:"] + [f"  {n}" for n in names])


def chardev_new(chardev_id: str, backend: str, **props: Any) -> Chardev:
    """Create, open and register ``/chardevs/<chardev_id>`` (QMP's chardev-add).

    ``props`` are the back end's properties (``path=``, ``server=``...), typed or as text.
    """
    if find_chardev(chardev_id) is not None:
        raise OptionError(f"Duplicate ID '{chardev_id}' for chardev")
    cls = chardev_class(backend)
    chardev = cls()
    chardev.label = chardev_id
    mux = props.pop("mux", False)
    chardev.mux = mux if isinstance(mux, bool) else _bool("mux", str(mux))
    chardev._escapes = chardev.mux  # a mux takes QEMU's Ctrl-A commands
    for key, value in props.items():
        try:
            chardev.set_property(key.replace("_", "-"), value)
        except PropertyError as exc:
            raise OptionError(str(exc)) from None
    chardev.open()
    _root().add_child(chardev_id, chardev)
    return chardev


def chardev_remove(chardev_id: str) -> None:
    """Close and unregister a chardev (QMP's chardev-remove)."""
    chardev = find_chardev(chardev_id)
    if chardev is None:
        raise VfwError(f"Chardev '{chardev_id}' not found")
    if chardev.has_frontend:
        raise VfwError(f"Chardev '{chardev_id}' is busy")
    chardev.unparent()


def _bool(key: str, text: str) -> bool:
    from .options import parse_bool

    return parse_bool(key, text)


def _backend_props(cls: type[Chardev], items: dict[str, str]) -> dict[str, Any]:
    """The items ``cls`` reads, as property values; unknown keys are refused."""
    props: dict[str, Any] = {}
    for key, value in items.items():
        if key not in CHARDEV_KEYS:
            raise OptionError(f"Invalid parameter '{key}'")
        if key == "mux":
            props["mux"] = _bool("mux", value)
        elif key == "nowait" and "nowait" in cls.OPTION_KEYS:
            props["wait"] = not _bool("nowait", value)
        elif key in cls.OPTION_KEYS and key not in ("ipv4", "ipv6"):
            props[key] = value
        else:
            log.debug("chardev option '%s' is ignored by the %s back end", key, cls.TYPE)
    return props


def chardev_from_opts(opts: Opts) -> Chardev:
    """Create the chardev one ``-chardev backend,id=...,...`` describes."""
    backend = opts.get("backend")
    chardev_id = opts.id
    if chardev_id is None:
        raise OptionError("chardev: no id specified")
    if not backend:
        raise OptionError(f'chardev: "{chardev_id}" missing backend')
    cls = chardev_class(backend)
    props = _backend_props(cls, opts.without("backend"))
    return chardev_new(chardev_id, backend, **props)


_COMPAT_GROUP = OptsGroup("chardev-compat")
_UNIX_GROUP = OptsGroup("chardev-unix", implied_key="path")
_SIMPLE_BACKENDS = ("null", "stdio", "pty", "msmouse", "wctablet", "braille", "testdev")


def _parse_compat(spec: str) -> tuple[str, dict[str, str]]:
    """QEMU's qemu_chr_parse_compat: a legacy ``-serial``-style spec as (backend, options)."""
    if spec in _SIMPLE_BACKENDS:
        return spec, {}
    for prefix, backend in (("file:", "file"), ("pipe:", "pipe")):
        if spec.startswith(prefix):
            return backend, {"path": spec[len(prefix):]}
    for prefix in ("tcp:", "telnet:"):
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            address, _, extra = rest.partition(",")
            host, colon, port = address.rpartition(":")
            if not colon or not port:
                raise OptionError(f"'{spec}' is not a valid char driver")
            items = dict(parse_opts(_COMPAT_GROUP, extra).items) if extra else {}
            items.update(host=host, port=port)
            if prefix == "telnet:":
                items["telnet"] = "on"
            return "socket", items
    if spec.startswith("unix:"):
        items = dict(parse_opts(_UNIX_GROUP, spec[len("unix:"):]).items)
        return "socket", items
    if spec.startswith("vc"):
        return "vc", {}
    raise OptionError(f"'{spec}' is not a valid char driver")


def _next_serial_label() -> str:
    n = 0
    while find_chardev(f"serial{n}") is not None:
        n += 1
    return f"serial{n}"


def serial_chardev(spec: str, label: str | None = None) -> Chardev | None:
    """The chardev for one ``-serial`` argument, created as ``/chardevs/<label>`` (QEMU names
    them serial0, serial1...); None for ``none``. ``chardev:ID`` names an existing one.
    """
    if spec == "none":
        return None
    if spec in HELP_WORDS:
        raise OptionError(chardev_help())
    text = spec[len("mon:"):] if spec.startswith("mon:") else spec
    if text.startswith("chardev:"):
        found = find_chardev(text[len("chardev:"):])
        if found is None:
            raise OptionError(f"could not connect serial device to character backend '{spec}'"
                              f": chardev '{text[len('chardev:'):]}' not found")
        return found
    try:
        backend, items = _parse_compat(text)
        cls = chardev_class(backend)
        props = _backend_props(cls, items)
        return chardev_new(label or _next_serial_label(), backend, **props)
    except VfwError as exc:
        raise OptionError(f"could not connect serial device to character backend '{spec}'"
                          f": {exc}") from None


# -- the property kind -------------------------------------------------------------------
class ChardevType(PropertyType):
    """A device property naming a chardev by id (QEMU's ``chardev=<str>``)."""

    name = "str"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> Chardev | None:
        if text == "":
            return None
        found = find_chardev(text)
        if found is None:
            owner_type = owner.type_name if owner is not None else "?"
            raise PropertyError(f"Property '{owner_type}.{prop}' can't find value '{text}'")
        return found

    def check(self, value: Any, prop: str, owner: Object | None = None) -> Chardev | None:
        if value is None or isinstance(value, Chardev):
            return value
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        raise PropertyError(f"Parameter '{prop}' expects a chardev id")

    def format(self, value: Any) -> str:
        return "" if value is None else str(value.label or "")

    def to_json(self, value: Any) -> Any:
        return self.format(value)


#: Use as ``chardev = prop(CHARDEV, None, "ID of a chardev to use as a backend")``.
CHARDEV = ChardevType()
