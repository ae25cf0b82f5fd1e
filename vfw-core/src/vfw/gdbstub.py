"""The gdbstub: GDB's remote serial protocol on ``-gdb tcp::PORT`` (``-s``: tcp::1234).

The stub serves one debugger at a time from the main loop, under the BQL. Attaching stops the
VM (as QEMU does); ``c``/``s`` resume it. Breakpoints and single-stepping are the
accelerator's business, through one method it may provide::

    accel.set_guest_debug(cpu, breakpoints: list[int], single_step: bool,
                          on_debug: Callable[[cpu, pc], None] | None) -> None

``breakpoints`` are guest linear addresses (software and hardware breakpoints alike: the
accelerator chooses how — KVM uses the debug registers, TCG can compare PCs when it
translates). When a vCPU reaches one, or finishes its single step, the accelerator calls
``on_debug(cpu, pc)`` from the vCPU's thread and stops running that vCPU; the stub then asks
the machine to stop and reports ``T05`` once the STOP event says it has. Registers are read
and written through ``cpu.env`` after ``accel.synchronize_state(cpu)``; memory through the
guest's page tables (vfw.monitor.hmp.translate).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from .errors import GuestMemoryError, OptionError, VfwError
from .runstate import RunState, ShutdownCause

if TYPE_CHECKING:
    from .cmdline import CommandLine
    from .machine import Machine

log = logging.getLogger("vfw.gdbstub")

DEFAULT_DEVICE = "tcp::1234"
PACKET_SIZE = 0x4000
MAX_PACKET = 1 << 20
SIGINT, SIGTRAP = 2, 5

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: gdb's amd64 register order -> index in env.regs (encoding order).
_GPR_INDEX = (0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15)
#: gdb's segment order (cs ss ds es fs gs) -> index in env.segs (es cs ss ds fs gs).
_SEG_INDEX = (1, 2, 3, 0, 4, 5)
_FPU_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


def _target_xml() -> str:
    regs = []
    n = 0

    def reg(name: str, bits: int, kind: str, group: str | None = None) -> None:
        nonlocal n
        extra = f' group="{group}"' if group else ""
        regs.append(f'<reg name="{name}" bitsize="{bits}" type="{kind}" regnum="{n}"{extra}/>')
        n += 1

    core = []
    for name in _GPRS:
        reg(name, 64, "data_ptr" if name in ("rbp", "rsp") else "int64")
    reg("rip", 64, "code_ptr")
    reg("eflags", 32, "i386_eflags")
    for name in ("cs", "ss", "ds", "es", "fs", "gs"):
        reg(name, 32, "int32")
    for i in range(8):
        reg(f"st{i}", 80, "i387_ext")
    for name in _FPU_CTRL:
        reg(name, 32, "int", "float")
    core, regs = regs, []
    for i in range(16):
        reg(f"xmm{i}", 128, "vec128")
    reg("mxcsr", 32, "i386_mxcsr", "vector")
    sse, regs = regs, []
    reg("fs_base", 64, "int")
    reg("gs_base", 64, "int")
    segments = regs
    eflags = "".join(f'<field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in (
        (0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
        (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
        (20, "VIP"), (21, "ID")))
    mxcsr = "".join(f'<field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in (
        (0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"),
        (7, "IM"), (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ")))
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
        "<target><architecture>i386:x86-64</architecture>"
        '<feature name="org.gnu.gdb.i386.core">'
        f'<flags id="i386_eflags" size="4">{eflags}</flags>' + "".join(core) + "</feature>"
        '<feature name="org.gnu.gdb.i386.sse">'
        '<vector id="v4f" type="ieee_single" count="4"/>'
        '<vector id="v2d" type="ieee_double" count="2"/>'
        '<vector id="v16i8" type="int8" count="16"/>'
        '<vector id="v8i16" type="int16" count="8"/>'
        '<vector id="v4i32" type="int32" count="4"/>'
        '<vector id="v2i64" type="int64" count="2"/>'
        '<union id="vec128"><field name="v4_float" type="v4f"/>'
        '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
        '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
        '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>'
        f'<flags id="i386_mxcsr" size="4">{mxcsr}</flags>' + "".join(sse) + "</feature>"
        '<feature name="org.gnu.gdb.i386.segments">' + "".join(segments) + "</feature>"
        "</target>")


TARGET_XML = _target_xml()
#: (size in bytes) of each register in gdb's numbering.
REG_SIZES = [8] * 16 + [8, 4] + [4] * 6 + [10] * 8 + [4] * 8 + [16] * 16 + [4] + [8, 8]
MSR_FS_BASE, MSR_GS_BASE = 0xC0000100, 0xC0000101


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def _escape(data: bytes) -> bytes:
    """Binary data in a reply: ``}`` escapes ``#$}*`` (``*`` would start a run length)."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


class GdbStub:
    """The GDB server: a TCP (or UNIX) listener and at most one connected debugger."""

    def __init__(self, machine: Machine, listener: socket.socket, where: str):
        self.machine = machine
        self.listener = listener
        self.where = where
        self.conn: socket.socket | None = None
        self.inbuf = bytearray()
        self.no_ack = False
        #: The vCPU that g/m/s act on (gdb thread id - 1) and the one that stopped last.
        self.cpu_index = 0
        self.breakpoints: dict[int, str] = {}  # address -> "sw" / "hw"
        #: The VM is stopped for us: gdb may read and write state.
        self.stopped = False
        #: Waiting for the VM to stop after c/s (a stop reply is owed).
        self.running = False
        self.stop_signal = SIGTRAP
        self.debug_hit = False
        self.exited = False
        machine.event_listeners.append(self._on_event)
        from .main_loop import main_loop

        main_loop().add_reader(listener.fileno(), self._on_accept)

    # -- connection -----------------------------------------------------------------------
    def _on_accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if self.conn is not None:  # one debugger at a time
            conn.close()
            return
        from .main_loop import main_loop

        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        self.inbuf.clear()
        self.no_ack = False
        self.running = False
        main_loop().add_reader(conn.fileno(), self._on_readable)
        # Attaching stops the VM, as QEMU does.
        if self.machine.runstate is RunState.RUNNING:
            self.stopped = False
            self.stop_signal = SIGINT
            self.machine.request_stop()
        else:
            self.stopped = True

    def _disconnect(self) -> None:
        from .main_loop import main_loop

        if self.conn is None:
            return
        main_loop().remove_reader(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self.breakpoints.clear()
        self._arm(step_cpu=None, callback=False)
        self.running = False
        if self.machine.runstate in (RunState.PAUSED,):
            self.machine.request_cont()  # gdb left: the VM runs on

    def close(self, exit_code: int | None = None) -> None:
        """The VM ended: tell gdb (``W``) and stop listening."""
        from .main_loop import main_loop

        if self.conn is not None:
            if not self.exited:
                self._send_packet(b"W%02x" % ((exit_code or 0) & 0xFF))
            main_loop().remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
        try:
            main_loop().remove_reader(self.listener.fileno())
        except (OSError, ValueError):
            pass
        self.listener.close()
        if self._on_event in self.machine.event_listeners:
            self.machine.event_listeners.remove(self._on_event)

    # -- events from the run loop ---------------------------------------------------------
    def _on_event(self, event: str, data: dict[str, Any] | None, stamp: tuple[int, int]) -> None:
        if event == "STOP":
            self.stopped = True
            if self.conn is not None and self.running:
                self.running = False
                sig = SIGTRAP if self.debug_hit else self.stop_signal
                self.debug_hit = False
                self._send_packet(b"T%02xthread:%02x;" % (sig, self.cpu_index + 1))
            self._process()  # packets that waited for the stop
        elif event == "RESUME":
            self.stopped = False
        elif event == "SHUTDOWN" and self.conn is not None:
            self.exited = True
            self._send_packet(b"W%02x" % (self.machine.exit_code & 0xFF))

    def _on_debug(self, cpu: Any, pc: int) -> None:
        """From a vCPU thread: it reached a breakpoint or finished a step."""
        self.debug_hit = True
        self.cpu_index = int(getattr(cpu, "cpu_index", 0))
        self.machine.request_stop()

    # -- I/O ------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._disconnect()
            return
        if b"\x03" in data and self.running:  # Ctrl-C outside a packet: interrupt
            data = data.replace(b"\x03", b"")
            self.stop_signal = SIGINT
            self.machine.request_stop()
        if len(self.inbuf) + len(data) > MAX_PACKET:
            self.inbuf.clear()
            return
        self.inbuf += data
        self._process()

    def _send_raw(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = conn.send(view, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                import select

                select.select([], [conn], [], 1.0)
                continue
            except OSError:
                return
            view = view[n:]

    def _send_packet(self, payload: bytes) -> None:
        self._send_raw(b"$" + payload + b"#" + _checksum(payload))

    def _process(self) -> None:
        buf = self.inbuf
        while buf and self.conn is not None:
            if buf[0] in (0x2B, 0x2D):  # + / - acks
                del buf[0]
                continue
            if buf[0] == 0x03:
                del buf[0]
                continue
            if buf[0] != 0x24:  # garbage before a packet
                start = buf.find(b"$")
                if start < 0:
                    buf.clear()
                    return
                del buf[:start]
            end = buf.find(b"#")
            if end < 0 or len(buf) < end + 3:
                return
            payload = bytes(buf[1:end])
            if not self.stopped and payload[:1] not in (b"q", b"Q", b"v", b"H"):
                return  # wait for the VM to stop (the STOP event processes it)
            check = bytes(buf[end + 1:end + 3])
            del buf[:end + 3]
            if check.lower() != _checksum(payload):
                if not self.no_ack:
                    self._send_raw(b"-")
                continue
            if not self.no_ack:
                self._send_raw(b"+")
            try:
                reply = self.handle(payload)
            except (VfwError, ValueError, IndexError) as exc:
                log.debug("gdbstub: %r failed: %s", payload[:40], exc)
                reply = b"E22"
            if reply is not None:
                self._send_packet(reply)

    # -- state access ---------------------------------------------------------------------
    def _cpu(self, index: int | None = None) -> Any:
        cpus = self.machine.cpus
        if not cpus:
            raise VfwError("no CPUs")
        cpu = cpus[min(self.cpu_index if index is None else index, len(cpus) - 1)]
        if self.machine.accel is not None:
            self.machine.accel.synchronize_state(cpu)
        return cpu

    def _reg_bytes(self, env: Any, n: int) -> bytes:
        if n < 16:
            return struct.pack("<Q", env.regs[_GPR_INDEX[n]] & (2**64 - 1))
        if n == 16:
            return struct.pack("<Q", env.rip & (2**64 - 1))
        if n == 17:
            return struct.pack("<I", env.eflags & 0xFFFFFFFF)
        if n < 24:
            return struct.pack("<I", env.segs[_SEG_INDEX[n - 18]].selector)
        if n < 32:
            st = env.st[n - 24] if hasattr(env, "st") else 0
            return int(st).to_bytes(10, "little")
        if n < 40:
            fields = (getattr(env, "fcw", 0x37F), getattr(env, "fsw", 0),
                      _full_tag(getattr(env, "ftw", 0)), 0, getattr(env, "fip", 0) & 0xFFFFFFFF,
                      0, getattr(env, "fdp", 0) & 0xFFFFFFFF, getattr(env, "fop", 0))
            return struct.pack("<I", fields[n - 32] & 0xFFFFFFFF)
        if n < 56:
            return int(env.xmm[n - 40]).to_bytes(16, "little")
        if n == 56:
            return struct.pack("<I", getattr(env, "mxcsr", 0x1F80))
        if n == 57:
            return struct.pack("<Q", env.segs[4].base & (2**64 - 1))
        if n == 58:
            return struct.pack("<Q", env.segs[5].base & (2**64 - 1))
        raise IndexError(n)

    def _set_reg(self, env: Any, n: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        if n < 16:
            env.regs[_GPR_INDEX[n]] = value
        elif n == 16:
            env.rip = value
        elif n == 17:
            env.eflags = value | 2
        elif n < 24:
            pass  # segment selectors: loading one needs its descriptor; ignored as QEMU's KVM
        elif n < 32:
            env.st[n - 24] = value
        elif n < 40:
            attr = {32: "fcw", 33: "fsw", 39: "fop"}.get(n)
            if attr is not None:
                setattr(env, attr, value & 0xFFFF)
        elif n < 56:
            env.xmm[n - 40] = value
        elif n == 56:
            env.mxcsr = value
        elif n in (57, 58):
            env.segs[4 if n == 57 else 5].base = value
        else:
            raise IndexError(n)

    def _read_memory(self, addr: int, length: int) -> bytes:
        from .monitor.hmp import read_virtual

        return read_virtual(self.machine, self._cpu().env, addr, length)

    def _write_memory(self, addr: int, data: bytes) -> None:
        from .monitor.hmp import write_virtual

        write_virtual(self.machine, self._cpu().env, addr, data)

    # -- resuming -------------------------------------------------------------------------
    def _arm(self, step_cpu: int | None, callback: bool = True) -> None:
        """Hand the breakpoints (and the single step) to the accelerator for every vCPU."""
        accel = self.machine.accel
        setter = getattr(accel, "set_guest_debug", None)
        if setter is None:
            if self.breakpoints or step_cpu is not None:
                raise VfwError("this accelerator does not support guest debugging")
            return
        bps = sorted(self.breakpoints)
        for cpu in self.machine.cpus:
            step = step_cpu is not None and int(getattr(cpu, "cpu_index", 0)) == step_cpu
            setter(cpu, bps, step, self._on_debug if callback else None)

    def _resume(self, step: bool, addr: bytes) -> bytes | None:
        env = self._cpu().env
        if addr:
            env.rip = int(addr, 16)
        self._arm(self.cpu_index if step else None)
        self.running = True
        self.stopped = False
        self.stop_signal = SIGTRAP
        self.machine.request_cont()
        return None

    # -- packets --------------------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | None:
        """The reply to one packet (None: none now; a stop reply comes later)."""
        cmd = payload[:1]
        body = payload[1:]
        if cmd == b"?":
            return b"T%02xthread:%02x;" % (self.stop_signal if self.stop_signal else SIGTRAP,
                                            self.cpu_index + 1)
        if cmd == b"g":
            env = self._cpu().env
            return b"".join(self._reg_bytes(env, n) for n in range(len(REG_SIZES))).hex().encode()
        if cmd == b"G":
            env = self._cpu().env
            raw = bytes.fromhex(body.decode())
            pos = 0
            for n, size in enumerate(REG_SIZES):
                if pos + size > len(raw):
                    break
                self._set_reg(env, n, raw[pos:pos + size])
                pos += size
            return b"OK"
        if cmd == b"p":
            n = int(body, 16)
            if n >= len(REG_SIZES):
                return b"E00"
            return self._reg_bytes(self._cpu().env, n).hex().encode()
        if cmd == b"P":
            reg, _, value = body.partition(b"=")
            n = int(reg, 16)
            if n >= len(REG_SIZES):
                return b"E00"
            self._set_reg(self._cpu().env, n, bytes.fromhex(value.decode())[:REG_SIZES[n]])
            return b"OK"
        if cmd == b"m":
            a_text, _, n_text = body.partition(b",")
            length = min(int(n_text, 16), PACKET_SIZE // 2)
            try:
                return self._read_memory(int(a_text, 16), length).hex().encode()
            except GuestMemoryError:
                return b"E14"
        if cmd == b"M":
            head, _, data = body.partition(b":")
            a_text, _, n_text = head.partition(b",")
            raw = bytes.fromhex(data.decode())[:int(n_text, 16)]
            try:
                self._write_memory(int(a_text, 16), raw)
            except GuestMemoryError:
                return b"E14"
            return b"OK"
        if cmd in (b"Z", b"z"):
            kind, _, rest = body.partition(b",")
            if kind not in (b"0", b"1"):
                return b""  # watchpoints are not supported
            addr = int(rest.split(b",")[0], 16)
            if cmd == b"Z":
                self.breakpoints[addr] = "sw" if kind == b"0" else "hw"
                try:
                    self._arm(None)
                except VfwError:
                    del self.breakpoints[addr]
                    return b"E22"
            else:
                self.breakpoints.pop(addr, None)
            return b"OK"
        if cmd == b"c":
            return self._resume(False, body)
        if cmd == b"s":
            return self._resume(True, body)
        if cmd in (b"C", b"S"):
            _, _, resume_at = body.partition(b";")
            return self._resume(cmd == b"S", resume_at)
        if cmd == b"H":
            thread = body[1:]
            if thread not in (b"", b"-1", b"0"):
                index = int(thread, 16) - 1
                if not 0 <= index < len(self.machine.cpus):
                    return b"E22"
                if body[:1] == b"g":
                    self.cpu_index = index
            return b"OK"
        if cmd == b"T":
            index = int(body, 16) - 1
            return b"OK" if 0 <= index < len(self.machine.cpus) else b"E22"
        if cmd == b"D":
            self._send_packet(b"OK")
            self._disconnect()
            return None
        if cmd == b"k":
            self.machine.request_shutdown(ShutdownCause.HOST_UI)
            return None
        if cmd == b"q":
            return self._query(body)
        if cmd == b"Q":
            if body == b"StartNoAckMode":
                self._send_packet(b"OK")
                self.no_ack = True
                return None
            return b""
        if cmd == b"v":
            if body.startswith(b"Cont?"):
                return b"vCont;c;C;s;S"
            if body.startswith(b"Cont;"):
                action = body[5:].split(b";")[0]
                return self._resume(action[:1] in (b"s", b"S"), b"")
            if body.startswith(b"Kill"):
                self.machine.request_shutdown(ShutdownCause.HOST_UI)
                return b"OK"
            return b""
        return b""

    def _query(self, body: bytes) -> bytes:
        if body.startswith(b"Supported"):
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;vContSupported+"
                    % PACKET_SIZE)
        if body.startswith(b"Xfer:features:read:"):
            annex, _, span = body[len(b"Xfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            off, _, length = span.partition(b",")
            start, n = int(off, 16), int(length, 16)
            doc = TARGET_XML.encode()
            chunk = doc[start:start + n]
            return (b"l" if start + n >= len(doc) else b"m") + _escape(chunk)
        if body == b"C":
            return b"QC%02x" % (self.cpu_index + 1)
        if body == b"fThreadInfo":
            return b"m" + b",".join(b"%02x" % (i + 1) for i in range(len(self.machine.cpus)))
        if body == b"sThreadInfo":
            return b"l"
        if body.startswith(b"Attached"):
            return b"1"
        if body.startswith(b"ThreadExtraInfo,"):
            index = int(body.split(b",")[1], 16) - 1
            return f"CPU#{index} [running]".encode().hex().encode()
        if body == b"Offsets":
            return b"Text=0;Data=0;Bss=0"
        if body.startswith(b"Symbol"):
            return b"OK"
        return b""


def _full_tag(abridged: int) -> int:
    """The x87 tag word gdb shows from FXSAVE's abridged one (valid -> 00, empty -> 11)."""
    tag = 0
    for i in range(8):
        if not abridged >> i & 1:
            tag |= 3 << (2 * i)
    return tag


def _listen(spec: str) -> tuple[socket.socket, str]:
    """A listening socket for ``tcp:[HOST]:PORT`` (or ``tcp::PORT``) or ``unix:PATH``."""
    if spec.startswith("unix:"):
        path = spec[len("unix:"):].split(",")[0]
        try:
            os.unlink(path)
        except OSError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(1)
        return sock, spec
    text = spec[len("tcp:"):] if spec.startswith("tcp:") else spec
    text = text.split(",")[0]
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise OptionError(f"gdbstub: unable to parse '{spec}'")
    sock = socket.create_server((host.strip("[]") or "0.0.0.0", int(port)), backlog=1)
    return sock, spec


def create_gdbstub(machine: Machine, cl: CommandLine) -> GdbStub | None:
    """The stub ``-gdb DEV`` or ``-s`` asks for, listening; None without either."""
    spec = cl.values.get("gdb")
    if spec is None and "s" in cl.flags:
        spec = DEFAULT_DEVICE
    if spec is None or spec == "none":
        return None
    try:
        listener, where = _listen(spec)
    except OSError as exc:
        raise OptionError(f"gdbstub: couldn't create chardev: {exc.strerror or exc}",
                          "-gdb", spec) from None
    listener.setblocking(False)
    listener.set_inheritable(False)
    return GdbStub(machine, listener, where)
