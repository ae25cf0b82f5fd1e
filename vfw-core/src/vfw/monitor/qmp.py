"""QMP, the machine protocol QEMU's clients speak (QEMU's monitor/qmp.c + qapi dispatch).

One JSON object per message over a chardev (usually a UNIX or TCP socket): a greeting, then
``qmp_capabilities`` negotiation, then ``{"execute", "arguments"?, "id"?}`` commands answered
by ``{"return"}`` or ``{"error": {"class", "desc"}}`` with the ``id`` echoed, and events
stamped with the time. Everything runs in the main loop under the BQL; nothing a client sends
(malformed JSON, huge messages, wrong types, a disconnect mid-command) may hurt the VM.
"""

from __future__ import annotations

import collections
import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import VfwError
from ..timer import CLOCK_REALTIME, Timer

if TYPE_CHECKING:
    from ..chardev import Chardev
    from ..machine import Machine

log = logging.getLogger("vfw.monitor")

#: QEMU's JSON streamer limits (qobject/json-streamer.c): bytes of one message's tokens,
#: number of tokens, and nesting depth.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10
#: Bytes the monitor accepts from its chardev at once.
READ_WINDOW = 1 << 16
#: How soon a monitor looks again whether the run loop has taken a pending request.
GATE_RETRY_NS = 1_000_000
_END = object()


class QmpError(VfwError):
    """A command's failure as QMP reports it: ``{"class": cls, "desc": desc}``."""

    def __init__(self, desc: str, cls: str = "GenericError"):
        super().__init__(desc)
        self.desc = desc
        self.cls = cls


# -- the JSON stream -----------------------------------------------------------------------
class JsonStreamer:
    """Splits a byte stream into JSON messages the way QEMU's lexer/streamer does: a message
    ends when its braces and brackets balance. Single-quoted strings (QEMU's extension) are
    rewritten to JSON. ``feed`` yields parsed values or error texts (str wrapped in
    ``StreamError``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._quote = 0  # 0, ord('"') or ord("'") while inside a string
        self._escape = False
        self._tokens = 0
        self._discarding: str | None = None  # the error already reported for this message
        self._scalar = False

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def feed(self, data: bytes) -> Iterator[Any]:
        buf = self._buf
        pos, size = 0, len(data)
        while pos < size:
            if self._quote:
                # Copy up to the next backslash or quote in one go (strings can be huge).
                special = _DQ_SPECIAL if self._quote == 0x22 else _SQ_SPECIAL
                m = special.search(data, pos)
                stop = m.start() if m else size
                if self._discarding is None:
                    buf += data[pos:stop]
                pos = stop
                if m is None:
                    break
                byte = data[pos]
                pos += 1
                if self._escape:
                    self._escape = False
                    if self._quote == 0x27 and byte == 0x27:  # \' in a single-quoted string
                        buf.pop()  # drop the backslash: ' needs no escape in JSON
                    buf.append(byte)
                elif byte == 0x5C:  # backslash
                    self._escape = True
                    buf.append(byte)
                elif byte == self._quote:
                    self._quote = 0
                    buf.append(0x22)
                elif byte == 0x22:  # " inside a single-quoted string
                    buf += b'\\"'
                else:
                    buf.append(byte)
            else:
                m = _STRUCT_SPECIAL.search(data, pos)
                stop = m.start() if m else size
                if stop > pos:
                    chunk = data[pos:stop]
                    if self._depth == 0:
                        self._scalar = True
                    else:
                        self._tokens += chunk.count(b",") + chunk.count(b":")
                    if self._discarding is None:
                        buf += chunk
                    pos = stop
                if m is None:
                    pass
                else:
                    byte = data[pos]
                    pos += 1
                    yield from self._structural(byte)
            if self._discarding is not None:
                buf.clear()
            elif len(buf) > MAX_TOKEN_SIZE:
                yield from self._limit("JSON token size limit exceeded")
            elif self._tokens > MAX_TOKEN_COUNT:
                yield from self._limit("JSON token count limit exceeded")

    def _structural(self, byte: int) -> Iterator[Any]:
        buf = self._buf
        if byte in (0x22, 0x27):
            self._quote = byte
            if self._depth == 0:
                self._scalar = True
            self._tokens += 1
            buf.append(0x22)
        elif byte in (0x7B, 0x5B):  # { [
            if self._scalar and self._depth == 0:
                yield from self._end_scalar()
            self._depth += 1
            self._tokens += 1
            buf.append(byte)
            if self._depth > MAX_NESTING and self._discarding is None:
                yield from self._limit("JSON nesting depth limit exceeded")
        elif byte in (0x7D, 0x5D):  # } ]
            if self._depth == 0:
                if self._scalar:
                    yield from self._end_scalar()
                yield StreamError(f"JSON parse error, stray '{chr(byte)}'")
                return
            self._depth -= 1
            self._tokens += 1
            buf.append(byte)
            if self._depth == 0:
                yield from self._emit()
        elif self._depth == 0:  # whitespace ends a scalar at the top level
            if self._scalar:
                yield from self._end_scalar()
        else:
            buf.append(byte)

    def _limit(self, message: str) -> Iterator[Any]:
        """Report a limit once, then drop the rest of the message (until it balances)."""
        self._discarding = message
        self._buf.clear()
        yield StreamError(message)

    def _end_scalar(self) -> Iterator[Any]:
        self._scalar = False
        yield from self._emit()

    def _emit(self) -> Iterator[Any]:
        text = bytes(self._buf)
        self._buf.clear()
        self._tokens = 0
        if self._discarding is not None:
            self._discarding = None
            return
        try:
            yield json.loads(text.decode("utf-8", errors="strict"))
        except UnicodeDecodeError:
            yield StreamError("JSON parse error, invalid UTF-8 sequence in string")
        except json.JSONDecodeError as exc:
            yield StreamError("JSON parse error, " + _parse_message(exc.msg))
        except RecursionError:
            yield StreamError("JSON nesting depth limit exceeded")


_DQ_SPECIAL = re.compile(rb'[\\"]')
_SQ_SPECIAL = re.compile(rb"[\\'\"]")
_STRUCT_SPECIAL = re.compile(rb"[{}\[\]\"' \t\r\n]")


@dataclass
class StreamError:
    text: str


_PARSE_MESSAGES = {
    "Expecting value": "expecting value",
    "Expecting ':' delimiter": "missing : in object pair",
    "Expecting property name enclosed in double quotes": "key is not a string in object",
    "Expecting ',' delimiter": "expected separator in dict",
    "Extra data": "expecting value",
    "Invalid control character at": "invalid string",
    "Unterminated string starting at": "invalid string",
}


def _parse_message(msg: str) -> str:
    for python, qemu in _PARSE_MESSAGES.items():
        if msg.startswith(python):
            return qemu
    return msg[:1].lower() + msg[1:]


# -- commands -------------------------------------------------------------------------------
#: Argument kinds: QAPI's names as its errors spell them.
_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,), "int": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "any": (object,),
}


@dataclass
class Command:
    """A QMP command: ``handler(monitor, **arguments)``; ``args`` maps each argument to
    (kind, required); None takes whatever the handler's signature accepts (plugins)."""

    name: str
    handler: Callable[..., Any]
    args: dict[str, tuple[str, bool]] | None = None
    #: Allowed before capabilities negotiation (only qmp_capabilities itself).
    preneg: bool = False
    plugin: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, arguments: dict[str, Any]) -> None:
        if self.args is None:
            self._check_signature(arguments)
            return
        for key in arguments:
            if key not in self.args:
                raise QmpError(f"Parameter '{key}' is unexpected")
        for key, (kind, required) in self.args.items():
            if key not in arguments:
                if required:
                    raise QmpError(f"Parameter '{key}' is missing")
                continue
            value = arguments[key]
            ok = isinstance(value, _KINDS[kind])
            if kind in ("int", "number") and isinstance(value, bool):
                ok = False
            if not ok:
                raise QmpError(f"Invalid parameter type for '{key}', expected: {kind}")

    def _check_signature(self, arguments: dict[str, Any]) -> None:
        try:
            sig = inspect.signature(self.handler)
        except (TypeError, ValueError):
            return
        params = list(sig.parameters.values())[1:]  # the first is the monitor
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        names = {p.name.replace("_", "-"): p for p in params}
        for key in arguments:
            if key not in names:
                raise QmpError(f"Parameter '{key}' is unexpected")
        for key, p in names.items():
            if p.default is p.empty and key not in arguments:
                raise QmpError(f"Parameter '{key}' is missing")

    def call(self, monitor: QmpMonitor, arguments: dict[str, Any]) -> Any:
        kwargs = {k.replace("-", "_"): v for k, v in arguments.items()}
        return self.handler(monitor, **kwargs)


#: The built-in commands (vfw.monitor.commands registers them).
COMMANDS: dict[str, Command] = {}


def command(name: str, args: dict[str, tuple[str, bool]] | None = None,
            preneg: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a built-in QMP command."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        COMMANDS[name] = Command(name, fn, args if args is not None else {}, preneg)
        return fn
    return register


def plugin_commands() -> dict[str, Command]:
    """Commands plugins add through the ``vfw_qmp_commands`` hook (name -> callable)."""
    from ..modules import loader

    found: dict[str, Command] = {}
    try:
        results = loader().hooks().vfw_qmp_commands()
    except Exception as exc:  # a broken plugin must not take QMP down
        log.warning("vfw_qmp_commands hook failed: %s", exc)
        return found
    for result in results or []:
        for name, fn in (result or {}).items():
            if name not in COMMANDS and callable(fn):
                found[name] = Command(name, fn, None)
    return found


# -- the monitor -------------------------------------------------------------------------
class QmpMonitor:
    """One QMP monitor on one chardev (a server socket serves one client at a time)."""

    def __init__(self, machine: Machine, chardev: Chardev, pretty: bool = False):
        from .. import __version__

        self.machine = machine
        self.chardev = chardev
        self.pretty = pretty
        self.streamer = JsonStreamer()
        self.negotiated = False
        self.commands = dict(COMMANDS)
        self.commands.update(plugin_commands())
        self.version = __version__
        #: Set while a client is connected (always, for non-socket chardevs).
        self.connected = False
        #: Parsers of received chunks not fully handled yet (see _drain).
        self._backlog: collections.deque[Iterator[Any]] = collections.deque()
        self._retry = Timer(CLOCK_REALTIME, self._drain)
        chardev.set_frontend(lambda: READ_WINDOW, self._receive)
        machine.event_listeners.append(self._on_event)
        _watch_connection(chardev, self._on_open, self._on_close)

    # -- connection ----------------------------------------------------------------------
    def _on_open(self) -> None:
        self._backlog.clear()
        self.streamer.reset()
        self.negotiated = False
        self.connected = True
        self.send({"QMP": {"version": self.version_info(), "capabilities": ["oob"]}})

    def _on_close(self) -> None:
        self.connected = False
        self.negotiated = False
        self._backlog.clear()
        self.streamer.reset()

    def close(self) -> None:
        self._retry.delete()
        if self._on_event in self.machine.event_listeners:
            self.machine.event_listeners.remove(self._on_event)
        self.chardev.clear_frontend(self._receive)

    def version_info(self) -> dict[str, Any]:
        parts = [int(p) if p.isdigit() else 0 for p in self.version.split(".")[:3]]
        parts += [0] * (3 - len(parts))
        return {"qemu": {"major": parts[0], "minor": parts[1], "micro": parts[2]},
                "package": "vfw"}

    # -- output --------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self.pretty:
            text = json.dumps(message, indent=4)
        else:
            text = json.dumps(message, separators=(", ", ": "))
        self.chardev.write(text.encode() + b"\r\n")

    def _on_event(self, event: str, data: dict[str, Any] | None,
                  stamp: tuple[int, int]) -> None:
        if not self.negotiated:
            return
        message: dict[str, Any] = {"event": event}
        if data is not None:
            message["data"] = data
        message["timestamp"] = {"seconds": stamp[0], "microseconds": stamp[1]}
        self.send(message)

    # -- input ---------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        if not self.connected:  # a chardev without connection events: first input opens
            self._on_open()
        self._backlog.append(self.streamer.feed(data))
        self._drain()

    def _drain(self) -> None:
        """Handle queued messages in order, pausing while a run-state request (stop, cont,
        reset) is pending: the next command sees its effect, as after QEMU's synchronous
        vm_stop."""
        while self._backlog:
            if self.machine.request_event.is_set():
                self._retry.mod_in(GATE_RETRY_NS)
                return
            item = next(self._backlog[0], _END)
            if item is _END:
                self._backlog.popleft()
            elif isinstance(item, StreamError):
                self.send(_error(QmpError(item.text)))
            else:
                reply = self.handle(item)
                if reply is not None:
                    self.send(reply)

    def handle(self, request: Any) -> dict[str, Any] | None:
        """Dispatch one parsed message; the reply (None: nothing to send)."""
        if not isinstance(request, dict):
            return _error(QmpError("QMP input must be a JSON object"))
        has_id = "id" in request
        reply = self._dispatch(request)
        if has_id:
            reply["id"] = request["id"]
        return reply

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            name = request.get("execute", request.get("exec-oob"))
            if "execute" not in request and "exec-oob" not in request:
                raise QmpError("QMP input lacks member 'execute'")
            if not isinstance(name, str):
                raise QmpError("QMP input member 'execute' must be a string")
            for key in request:
                if key not in ("execute", "exec-oob", "arguments", "id", "control"):
                    raise QmpError(f"QMP input member '{key}' is unexpected")
            arguments = request.get("arguments", {})
            if not isinstance(arguments, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
            cmd = self.commands.get(name)
            if not self.negotiated and name != "qmp_capabilities":
                raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                               "CommandNotFound")
            if cmd is None:
                raise QmpError(f"The command {name} has not been found", "CommandNotFound")
            cmd.check(arguments)
            result = cmd.call(self, arguments)
        except QmpError as exc:
            return _error(exc)
        except VfwError as exc:
            return _error(QmpError(str(exc)))
        except Exception as exc:  # a bug in a command must not end the VM or the session
            log.exception("QMP command failed")
            return _error(QmpError(f"internal error: {type(exc).__name__}: {exc}"))
        return {"return": {} if result is None else result}


def _error(exc: QmpError) -> dict[str, Any]:
    return {"error": {"class": exc.cls, "desc": exc.desc}}


def _watch_connection(chardev: Chardev, on_open: Callable[[], None],
                      on_close: Callable[[], None]) -> None:
    """Call ``on_open``/``on_close`` as clients of a socket chardev come and go (QEMU's
    CHR_EVENT_OPENED/CLOSED). Other chardevs are open from the start."""
    from ..chardev import SocketChardev

    if not isinstance(chardev, SocketChardev):
        on_open()
        return
    connected, disconnect = chardev._connected, chardev._disconnect

    def _connected(conn: Any) -> None:
        connected(conn)
        on_open()

    def _disconnect() -> None:
        was = chardev.connected
        disconnect()
        if was:
            on_close()

    chardev._connected = _connected  # type: ignore[method-assign]
    chardev._disconnect = _disconnect  # type: ignore[method-assign]
    if chardev.connected:
        on_open()


def restrict_socket(chardev: Chardev) -> None:
    """UNIX monitor sockets are for their owner only (mode 0600)."""
    from ..chardev import SocketChardev

    if not isinstance(chardev, SocketChardev):
        return
    path = chardev.get_property("path")
    if path and chardev.server:
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            log.warning("cannot restrict %s to mode 0600: %s", path, exc.strerror)
