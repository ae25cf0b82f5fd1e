"""One KVM vCPU: its fd and kvm_run mapping, state transfer, and the thread that runs it.

The thread loops on KVM_RUN (which releases the GIL) and dispatches exits through the
machine's address spaces under the BQL. It is stopped by a kick: ``immediate_exit`` in
kvm_run (for a thread about to enter KVM_RUN) plus a signal (for one already inside).
Work other threads need done on the vCPU (reading its registers while it runs) is queued
and run by the vCPU thread between two KVM_RUN calls, after the kernel completed any
pending I/O instruction.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vfw.cpu import set_current_cpu
from vfw.errors import AccelError, GuestMemoryError, VfwError
from vfw.main_loop import BQL
from vfw.runstate import ShutdownCause

from . import kvm_api as k
from . import report, state

if TYPE_CHECKING:
    from .accel import KvmAccel

log = logging.getLogger("vfw.accel.kvm")
guest_log = logging.getLogger("vfw.guest_errors")

#: The signal that makes a vCPU thread leave KVM_RUN (a no-op Python handler is installed).
KICK_SIGNAL = signal.SIGUSR1

_IO = struct.Struct("<BBHIQ")
_MMIO = struct.Struct("<Q8sIB")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PORT_SIZE = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
_MMIO_SIZE = {**_PORT_SIZE, 8: struct.Struct("<Q")}

# Put levels (QEMU's KVM_PUT_*): runtime leaves the TSC and the LAPIC alone.
PUT_RUNTIME, PUT_RESET = 1, 2


class _Work:
    __slots__ = ("done", "error", "fn")

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn
        self.done = False
        self.error: BaseException | None = None


class KvmVcpu:
    """The KVM side of one ``cpu`` (created by KvmAccel.create_vcpu)."""

    def __init__(self, accel: KvmAccel, cpu: Any, fd: int, mmap_size: int):
        self.accel = accel
        self.cpu = cpu
        self.fd = fd
        self.kvm_id = int(cpu.apic_id)
        self.index = int(getattr(cpu, "cpu_index", 0))
        self.run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        #: True when cpu.env is newer than the kernel's copy (put it before running).
        self.dirty = True
        self.put_level = PUT_RESET
        #: MSR indexes synchronised for this vCPU (those KVM accepted).
        self.msrs: list[int] = []
        self.has_tsc_msr = False
        self.lapic_reset: bytes | None = None
        self.thread: threading.Thread | None = None
        self._running = False  # the thread is alive and may be in KVM_RUN
        #: Set by the accelerator to stop the thread even without a machine request.
        self.stop_requested = False
        self._lock = threading.Lock()  # guards _running and the signal to the thread
        self._work: collections.deque[_Work] = collections.deque()

    # -- kernel calls -------------------------------------------------------------------------
    def ioctl(self, request: int, arg: Any = 0) -> int:
        return k.ioctl(self.fd, request, arg)

    def close(self) -> None:
        try:
            self.run.close()
        except BufferError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- state transfer -----------------------------------------------------------------------
    def put_state(self, level: int) -> None:
        """Load cpu.env into the kernel (QEMU's kvm_arch_put_registers); vCPU not running."""
        env = self.cpu.env
        self.ioctl(k.KVM_SET_REGS, state.regs_to_kvm(env))
        if self.accel.caps.get(k.KVM_CAP_XSAVE):
            # KVM_SET_FPU neither sets MXCSR nor marks the state in use: prefer XSAVE.
            image = k.kvm_xsave()
            self.ioctl(k.KVM_GET_XSAVE, image)
            state.fpu_to_xsave(env, image, reset=level >= PUT_RESET)
            self.ioctl(k.KVM_SET_XSAVE, image)
        else:
            self.ioctl(k.KVM_SET_FPU, state.fpu_to_kvm(env))
        if self.accel.caps.get(k.KVM_CAP_XCRS):
            xcrs = k.kvm_xcrs(nr_xcrs=1)
            xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, getattr(env, "xcr0", 1) | 1
            self._try("KVM_SET_XCRS", k.KVM_SET_XCRS, xcrs)
        self.ioctl(k.KVM_SET_SREGS, state.sregs_to_kvm(env))
        self._put_msrs(env, level)
        if level >= PUT_RESET and self.lapic_reset is not None:
            lapic = k.kvm_lapic_state()
            ctypes.memmove(lapic.regs, self.lapic_reset, len(self.lapic_reset))
            lapic.regs[k.APIC_TASKPRI] = (env.cr[8] & 0xF) << 4  # CR8 is the TPR
            self.ioctl(k.KVM_SET_LAPIC, lapic)
        self.ioctl(k.KVM_SET_MP_STATE, k.kvm_mp_state(mp_state=env.mp_state))
        self.ioctl(k.KVM_SET_VCPU_EVENTS, state.events_to_kvm(env))
        if self.accel.caps.get(k.KVM_CAP_DEBUGREGS):
            self.ioctl(k.KVM_SET_DEBUGREGS, state.debugregs_to_kvm(env))
        self.dirty = False
        self.put_level = PUT_RUNTIME

    def get_state(self) -> None:
        """Copy the kernel's state into cpu.env (QEMU's kvm_arch_get_registers)."""
        env = self.cpu.env
        r = k.kvm_regs()
        self.ioctl(k.KVM_GET_REGS, r)
        state.regs_from_kvm(env, r)
        if self.accel.caps.get(k.KVM_CAP_XSAVE):
            image = k.kvm_xsave()
            self.ioctl(k.KVM_GET_XSAVE, image)
            state.fpu_from_xsave(env, image)
        else:
            f = k.kvm_fpu()
            self.ioctl(k.KVM_GET_FPU, f)
            state.fpu_from_kvm(env, f)
        if self.accel.caps.get(k.KVM_CAP_XCRS):
            xcrs = k.kvm_xcrs()
            if self._try("KVM_GET_XCRS", k.KVM_GET_XCRS, xcrs):
                for i in range(min(xcrs.nr_xcrs, 16)):
                    if xcrs.xcrs[i].xcr == 0:
                        env.xcr0 = xcrs.xcrs[i].value
        s = k.kvm_sregs()
        self.ioctl(k.KVM_GET_SREGS, s)
        state.sregs_from_kvm(env, s)
        self._get_msrs(env)
        mp = k.kvm_mp_state()
        self.ioctl(k.KVM_GET_MP_STATE, mp)
        env.mp_state = mp.mp_state
        env.halted = mp.mp_state == k.KVM_MP_STATE_HALTED
        ev = k.kvm_vcpu_events()
        self.ioctl(k.KVM_GET_VCPU_EVENTS, ev)
        state.events_from_kvm(env, ev)
        if self.accel.caps.get(k.KVM_CAP_DEBUGREGS):
            d = k.kvm_debugregs()
            self.ioctl(k.KVM_GET_DEBUGREGS, d)
            state.debugregs_from_kvm(env, d)

    def _try(self, name: str, request: int, arg: Any) -> bool:
        try:
            self.ioctl(request, arg)
        except OSError as exc:
            log.debug("kvm: %s failed on CPU %d: %s", name, self.index, exc)
            return False
        return True

    def _put_msrs(self, env: Any, level: int) -> None:
        values: list[tuple[int, int]] = []
        if level >= PUT_RESET and self.has_tsc_msr:
            values.append((state.MSR_IA32_TSC, getattr(env, "tsc", 0)))
        for index in self.msrs:
            if index in env.msrs:
                values.append((index, env.msrs[index]))
            elif index in state.SYNC_MSRS:  # architectural power-on value
                values.append((index, state.MSR_DEFAULTS.get(index, 0)))
        while values:
            msrs = k.kvm_msrs(len(values))
            msrs.nmsrs = len(values)
            for i, (index, value) in enumerate(values):
                msrs.entries[i].index, msrs.entries[i].data = index, value & (2**64 - 1)
            done = self.ioctl(k.KVM_SET_MSRS, msrs)
            if done >= len(values):
                return
            # KVM stops at the first MSR it refuses: drop it (for good) and go on.
            index, value = values[done]
            log.debug("kvm: CPU %d: MSR 0x%x refused value 0x%x; not synchronised",
                      self.index, index, value)
            if index == state.MSR_IA32_TSC:
                self.has_tsc_msr = False
            elif index in self.msrs:
                self.msrs.remove(index)
            values = values[done + 1:]

    def _get_msrs(self, env: Any) -> None:
        indexes = ([state.MSR_IA32_TSC] if self.has_tsc_msr else []) + self.msrs
        if not indexes:
            return
        msrs = k.kvm_msrs(len(indexes))
        msrs.nmsrs = len(indexes)
        for i, index in enumerate(indexes):
            msrs.entries[i].index = index
        done = self.ioctl(k.KVM_GET_MSRS, msrs)
        for i in range(done):
            index, value = msrs.entries[i].index, msrs.entries[i].data
            if index == state.MSR_IA32_TSC:
                env.tsc = value
            else:
                env.msrs[index] = value

    def probe_msrs(self, supported: set[int], advertised: list[int]) -> None:
        """Choose the MSRs to synchronise: the architectural ones KVM lists, plus those the
        CPU model advertises, each kept only if KVM lets this vCPU read it."""
        self.has_tsc_msr = state.MSR_IA32_TSC in supported
        candidates = [i for i in state.SYNC_MSRS if i in supported]
        candidates += sorted(set(advertised) - set(candidates) - state.MSRS_ELSEWHERE)
        readable = []
        for index in candidates:
            msrs = k.kvm_msrs(1)
            msrs.nmsrs = 1
            msrs.entries[0].index = index
            if self.ioctl(k.KVM_GET_MSRS, msrs) == 1:
                readable.append(index)
        self.msrs = readable

    # -- cross-thread work --------------------------------------------------------------------
    def on_own_thread(self) -> bool:
        return self.thread is not None and threading.current_thread() is self.thread

    def run_on_vcpu(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` with this vCPU out of KVM_RUN (on its thread if it is running).

        The caller may hold the BQL: it is released while waiting (the vCPU thread may need
        it to finish dispatching an exit).
        """
        with self._lock:
            running = self._running
        if not running or self.on_own_thread():
            fn()
            return
        work = _Work(fn)
        cond = self.accel.bql_cond
        me = self.accel.vcpu_of_thread()
        with cond:
            self._work.append(work)
            self.kick()
            while not work.done:
                with self._lock:
                    running = self._running
                if not running:
                    break
                if me is not None:
                    me._run_work()  # another vCPU may be waiting for this one meanwhile
                cond.wait(0.05)
        if not work.done:
            try:
                self._work.remove(work)
            except ValueError:  # the thread took it just now: wait for it
                with cond:
                    cond.wait_for(lambda: work.done)
            else:
                fn()
                return
        if work.error is not None:
            raise work.error

    def _run_work(self) -> None:
        while True:
            try:
                work = self._work.popleft()
            except IndexError:
                return
            try:
                work.fn()
            except BaseException as exc:  # handed to the waiting thread
                work.error = exc
            with self.accel.bql_cond:
                work.done = True
                self.accel.bql_cond.notify_all()

    # -- the thread ---------------------------------------------------------------------------
    def start(self, machine: Any) -> None:
        self.stop_requested = False
        self.thread = threading.Thread(target=self._thread_main, args=(machine,),
                                       name=f"CPU {self.index}/KVM", daemon=False)
        with self._lock:
            self._running = True
        self.thread.start()

    def kick(self) -> None:
        """Make the thread leave KVM_RUN promptly (from any thread)."""
        with self._lock:
            if not self._running:
                return
            self.run[k.RUN_IMMEDIATE_EXIT] = 1
            thread = self.thread
            if thread is not None and thread.ident is not None and thread is not \
                    threading.current_thread():
                try:
                    signal.pthread_kill(thread.ident, KICK_SIGNAL)
                except ProcessLookupError:
                    pass

    def join(self, timeout: float) -> bool:
        thread = self.thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self.thread = None
        return True

    def _thread_main(self, machine: Any) -> None:
        set_current_cpu(self.cpu)
        try:
            self._loop(machine)
        except VfwError as exc:
            print(f"vfw: {exc}", file=sys.stderr)
            machine.request_shutdown(ShutdownCause.HOST_ERROR, exit_code=1)
        except BaseException:
            machine.request_shutdown(ShutdownCause.HOST_ERROR, exit_code=1)
            raise  # a bug: threading's excepthook prints the traceback
        finally:
            with self._lock:
                self._running = False
            self.run[k.RUN_IMMEDIATE_EXIT] = 0
            self._run_work()
            set_current_cpu(None)

    def _loop(self, machine: Any) -> None:
        run, fd = self.run, self.fd
        request_event = machine.request_event
        ioctl = fcntl.ioctl
        kvm_run = k.KVM_RUN
        # Everything the common exit (a single port access) needs, bound once: each exit is a
        # round trip through this loop, and Python pays for every global or attribute lookup.
        exit_reason_at, io_at, run_size = k.RUN_EXIT_REASON, k.RUN_IO, len(run)
        exit_io, exit_mmio, io_out = k.KVM_EXIT_IO, k.KVM_EXIT_MMIO, k.KVM_EXIT_IO_OUT
        unpack_reason, unpack_io, port_size = _U32.unpack_from, _IO.unpack_from, _PORT_SIZE
        io_space = machine.address_space_io
        mem_space = machine.address_space_memory
        unpack_mmio, mmio_size = _MMIO.unpack_from, _MMIO_SIZE
        mmio_at, mmio_data_at = k.RUN_MMIO_ADDR, k.RUN_MMIO_DATA
        mmio_addr_max = (1 << 64) - 8  # beyond it an access would wrap: the slow path reports it
        bql = BQL
        while True:
            if self.dirty:
                self.put_state(self.put_level)
            if request_event.is_set() or self._work or self.stop_requested:
                run[k.RUN_IMMEDIATE_EXIT] = 1
            try:
                ioctl(fd, kvm_run, 0)
            except OSError as exc:
                if exc.errno not in (errno.EINTR, errno.EAGAIN):
                    self._fatal(machine, f"kvm run failed {os.strerror(exc.errno or 0)}")
                    return
                run[k.RUN_IMMEDIATE_EXIT] = 0
                self._run_work()
                if request_event.is_set() or self.stop_requested:
                    return
                continue
            reason = unpack_reason(run, exit_reason_at)[0]
            if reason == exit_io:
                direction, size, port, count, offset = unpack_io(run, io_at)
                fmt = port_size.get(size)
                if count == 1 and fmt is not None and offset + size <= run_size:
                    if direction == io_out:
                        value = fmt.unpack_from(run, offset)[0]
                        with bql:
                            io_space.write(port, value, size)
                    else:
                        with bql:
                            value = io_space.read(port, size)
                        fmt.pack_into(run, offset, value)
                else:
                    self._handle_io(machine)
            elif reason == exit_mmio:
                addr, _data, length, is_write = unpack_mmio(run, mmio_at)
                fmt = mmio_size.get(length)
                if fmt is not None and addr <= mmio_addr_max:  # 1/2/4/8 bytes, no wrap
                    if is_write:
                        value = fmt.unpack_from(run, mmio_data_at)[0]
                        with bql:
                            mem_space.write(addr, value, length)
                    else:
                        with bql:
                            value = mem_space.read(addr, length)
                        fmt.pack_into(run, mmio_data_at, value)
                else:
                    self._handle_mmio(machine)
            elif not self._handle_other(machine, reason):
                return

    # -- exits --------------------------------------------------------------------------------
    def _handle_io(self, machine: Any) -> None:
        run = self.run
        direction, size, port, count, offset = _IO.unpack_from(run, k.RUN_IO)
        if size not in _PORT_SIZE or offset + size * count > len(run):
            raise AccelError(f"kvm: malformed I/O exit (size {size}, count {count})")
        space = machine.address_space_io  # (single accesses are handled inline in _loop)
        with BQL:  # string I/O (rep ins/outs): count items at consecutive offsets
            if direction == k.KVM_EXIT_IO_OUT:
                for i in range(offset, offset + size * count, size):
                    space.write(port, _PORT_SIZE[size].unpack_from(run, i)[0], size)
            else:
                for i in range(offset, offset + size * count, size):
                    _PORT_SIZE[size].pack_into(run, i, space.read(port, size))

    def _handle_mmio(self, machine: Any) -> None:
        """The MMIO exits the run loop does not handle inline: 3/5/6/7-byte accesses, accesses
        wrapping past 2^64, malformed exits."""
        run = self.run
        addr, data, length, is_write = _MMIO.unpack_from(run, k.RUN_MMIO_ADDR)
        if not 1 <= length <= 8:
            raise AccelError(f"kvm: malformed MMIO exit (length {length})")
        space = machine.address_space_memory
        # Accesses of 3, 5, 6 or 7 bytes go byte by byte.
        pieces = [(0, length)] if length in (1, 2, 4, 8) else [(i, 1) for i in range(length)]
        with BQL:
            try:
                if is_write:
                    for off, n in pieces:
                        space.write(addr + off, int.from_bytes(data[off:off + n], "little"), n)
                else:
                    value = bytearray(8)
                    for off, n in pieces:
                        value[off:off + n] = space.read(addr + off, n).to_bytes(n, "little")
                    run[k.RUN_MMIO_DATA:k.RUN_MMIO_DATA + 8] = bytes(value)
            except GuestMemoryError as exc:
                guest_log.debug("kvm: MMIO access outside the address space: %s", exc)
                if not is_write:
                    run[k.RUN_MMIO_DATA:k.RUN_MMIO_DATA + 8] = b"\xff" * 8

    def _handle_other(self, machine: Any, reason: int) -> bool:
        """Exits other than I/O and MMIO; False stops this vCPU's thread."""
        run = self.run
        if reason in (k.KVM_EXIT_INTR, k.KVM_EXIT_IRQ_WINDOW_OPEN, k.KVM_EXIT_SET_TPR,
                      k.KVM_EXIT_TPR_ACCESS):
            return True
        if reason == k.KVM_EXIT_HLT:
            # Only without an in-kernel LAPIC; let the kernel wait for the interrupt. If it
            # cannot, pause a little and resume after the HLT (a spurious wake-up).
            try:
                self.ioctl(k.KVM_SET_MP_STATE, k.kvm_mp_state(mp_state=k.KVM_MP_STATE_HALTED))
            except OSError:
                machine.request_event.wait(0.01)
            return True
        if reason == k.KVM_EXIT_SHUTDOWN:
            log.info("kvm: CPU %d: triple fault, resetting", self.index)
            machine.request_reset(ShutdownCause.GUEST_RESET)
            return False
        if reason == k.KVM_EXIT_SYSTEM_EVENT:
            kind = _U32.unpack_from(run, k.RUN_UNION)[0]
            if kind == k.KVM_SYSTEM_EVENT_SHUTDOWN:
                machine.request_shutdown(ShutdownCause.GUEST_SHUTDOWN)
                return False
            if kind == k.KVM_SYSTEM_EVENT_RESET:
                machine.request_reset(ShutdownCause.GUEST_RESET)
                return False
            if kind == k.KVM_SYSTEM_EVENT_CRASH:
                self._report(f"KVM: guest crash reported by CPU {self.index}")
                machine.request_shutdown(ShutdownCause.GUEST_PANIC, exit_code=1)
                return False
            self._fatal(machine, f"KVM: unknown system event {kind}")
            return False
        if reason == k.KVM_EXIT_FAIL_ENTRY:
            hw = _U64.unpack_from(run, k.RUN_UNION)[0]
            self._fatal(machine, f"KVM: entry failed, hardware error 0x{hw:x}")
            return False
        if reason == k.KVM_EXIT_INTERNAL_ERROR:
            self._fatal(machine, *self._internal_error_lines())
            return False
        name = k.EXIT_REASON_NAMES.get(reason, "?")
        self._fatal(machine, f"KVM: unhandled exit reason {reason} ({name})")
        return False

    def _internal_error_lines(self) -> list[str]:
        run = self.run
        sub, ndata = struct.unpack_from("<II", run, k.RUN_INTERNAL_SUBERROR)
        ndata = min(ndata, 16)
        what = k.INTERNAL_ERROR_NAMES.get(sub, "unknown")
        lines = [f"KVM internal error. Suberror: {sub} ({what})"]
        data = [_U64.unpack_from(run, k.RUN_INTERNAL_DATA + 8 * i)[0] for i in range(ndata)]
        if sub == k.KVM_INTERNAL_ERROR_EMULATION and ndata >= 3 and \
                data[0] & k.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
            size = min(run[k.RUN_EMUL_INSN_SIZE], 15)
            insn = run[k.RUN_EMUL_INSN_BYTES:k.RUN_EMUL_INSN_BYTES + size]
            lines.append("instruction bytes (from KVM): " + (insn.hex(" ") or "none"))
        elif data:
            lines += [f"extra data[{i}]: 0x{v:016x}" for i, v in enumerate(data)]
        return lines

    # -- error reports ------------------------------------------------------------------------
    def _fatal(self, machine: Any, *lines: str) -> None:
        self._report(*lines)
        machine.request_shutdown(ShutdownCause.HOST_ERROR, exit_code=1)

    def _report(self, *lines: str) -> None:
        """Print ``lines`` and the vCPU's registers as one block on stderr."""
        text = list(lines)
        try:
            self.get_state()
            self.dirty = True
            env = self.cpu.env
            code, at = self.code_bytes(report.code_linear_address(env))
            text.append(report.format_registers(env, code, at))
        except Exception as exc:  # the report must not hide the original error
            text.append(f"(registers unavailable: {exc})")
        sys.stderr.write("\n".join(text) + "\n")
        sys.stderr.flush()

    def translate(self, linear: int) -> int | None:
        """Guest-physical address of a linear address (KVM_TRANSLATE), None if unmapped."""
        t = k.kvm_translation(linear_address=linear & 0xFFFFFFFFFFFFFFFF)
        try:
            self.ioctl(k.KVM_TRANSLATE, t)
        except OSError:
            return None
        return int(t.physical_address) if t.valid else None

    def code_bytes(self, linear: int) -> tuple[list[int | None], int]:
        """Guest bytes around ``linear`` (None where unreadable) and the index of ``linear``."""
        start = max(0, linear - report.CODE_BEFORE)
        end = linear + report.CODE_AFTER
        out: list[int | None] = []
        space = self.accel.machine.address_space_memory
        pos = start
        while pos < end:
            n = min(end, (pos | 0xFFF) + 1) - pos
            phys = self.translate(pos)
            chunk: list[int | None] = [None] * n
            if phys is not None:
                try:
                    chunk = list(space.read_bytes(phys, n))
                except GuestMemoryError:
                    pass
            out += chunk
            pos += n
        return out, linear - start
