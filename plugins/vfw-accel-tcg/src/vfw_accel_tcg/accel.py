"""The ``tcg`` accelerator type: runs every vCPU round-robin in the calling thread."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from vfw.accel import Accel
from vfw.cpu import set_current_cpu
from vfw.errors import AccelError
from vfw.main_loop import main_loop
from vfw.props import SIZE, EnumType, prop
from vfw.qom import register_type
from vfw.timer import next_deadline_ns

from .system import tsc_now_ns

#: Blocks a vCPU runs between checks of the clock.
SLICE_BLOCKS = 256
#: How long (host ns) a vCPU runs before the next one gets its turn and the main loop is
#: polled for timers and file descriptors.
SLICE_NS = 1_000_000


class SliceAlarm:
    """Ends a vCPU's time slice on time, even in the middle of a long chain of blocks.

    SIGALRM at the end of the slice or at the next timer's deadline, whichever comes first,
    sets every vCPU's ``exit_req``; the block loop checks it after each block. Without it a
    slice ends only at the next clock check, which a chain of self-looping blocks can delay
    by tens of milliseconds: timer interrupts come late, Linux's periodic ticks get lost
    (jiffies fall behind and its clocksource watchdog gives up on the TSC). QEMU's
    round-robin TCG kicks its vCPU thread the same way. Python runs signal handlers only in
    the main thread; elsewhere slices end at the next clock check, as before.
    """

    def __init__(self, vcpus: Sequence[Any]):
        self.vcpus = vcpus
        self.enabled = threading.current_thread() is threading.main_thread()
        self._previous: Any = None

    def __enter__(self) -> SliceAlarm:
        if self.enabled:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None
                          else signal.SIG_DFL)

    def _fire(self, signum: int, frame: Any) -> None:
        for v in self.vcpus:
            v.exit_req = True

    def arm(self, ns: int) -> None:
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, max(ns, 1_000) / 1e9)

    def disarm(self) -> None:
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _bits(*bits: int) -> int:
    return sum(1 << b for b in bits)


#: CPUID feature bits the software CPU implements, by (leaf, subleaf, register).
SUPPORTED_CPUID: dict[tuple[int, int, str], int] = {
    # fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr
    # sse sse2 ht
    (1, 0, "edx"): _bits(0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24,
                         25, 26, 28),
    (1, 0, "ecx"): _bits(0, 13, 23, 31),  # pni cx16 popcnt hypervisor
    (6, 0, "eax"): _bits(2),  # arat
    (7, 0, "ebx"): _bits(0, 9, 23, 24),  # fsgsbase erms clflushopt clwb
    (7, 0, "ecx"): _bits(22),  # rdpid
    (0x80000001, 0, "edx"): _bits(11, 20, 26, 27, 29),  # syscall nx pdpe1gb rdtscp lm
    (0x80000001, 0, "ecx"): _bits(0, 5, 8),  # lahf-lm abm 3dnowprefetch
}


@register_type
class TcgAccel(Accel):
    """Software emulation: works on any host, needs nothing from the kernel."""

    TYPE = "tcg-accel"
    DESC = "Tiny Code Generator, in Python"

    #: Features of the usual models this CPU does not implement (no warning at start-up).
    CPU_FEATURE_DEFAULTS = {"vme": False, "svm": False, "monitor": False, "x2apic": False}

    thread = prop(EnumType("TCGThread", ("single", "multi")), "single",
                  "vCPUs run round-robin in one thread (single) or one thread each (multi)")
    tb_size = prop(SIZE, 32 << 20, "translation cache size in bytes")

    def instance_init(self) -> None:
        self._tbc: Any = None
        self._vcpus: dict[int, Any] = {}
        #: the machine being run (a debugger may arm vCPUs before the first run creates them)
        self._machine: Any = None

    def init_machine(self, machine: Any) -> None:
        self._machine = machine
        if self.thread == "multi":
            raise AccelError("tcg: thread=multi is not supported; vCPUs run round-robin"
                             " in one thread (thread=single)")

    def supported_cpuid(self, word: Any) -> int:
        """The CPUID feature bits this software CPU implements (the board filters models)."""
        if str(word.reg) == "msr":
            return 0
        return SUPPORTED_CPUID.get((int(word.leaf), int(word.subleaf), str(word.reg)), 0)

    # -- vCPUs -----------------------------------------------------------------------------------
    def cache(self) -> Any:
        from .tbcache import TBCache

        if self._tbc is None:
            # Python code objects cost several times the source text: budget the source.
            self._tbc = TBCache(max(int(self.tb_size) * 4, 1 << 20))
        return self._tbc

    def vcpu(self, cpu: Any, machine: Any) -> Any:
        """The software CPU running ``cpu`` (created on first use)."""
        from .vcpu import TcgCPU

        v = self._vcpus.get(id(cpu))
        if v is None or v.cpu is not cpu:
            v = TcgCPU(self.cache(), cpu, machine)
            self._vcpus[id(cpu)] = v
            handlers = getattr(cpu, "kick_handlers", None)
            if handlers is None:
                handlers = []
                try:
                    cpu.kick_handlers = handlers
                except AttributeError:
                    handlers = None
            if handlers is not None:
                handlers.append(lambda v=v: self._kick(v))
        return v

    def _kick(self, v: Any) -> None:
        v.exit_req = True
        main_loop().notify()

    def create_vcpu(self, cpu: Any) -> None:
        machine = getattr(cpu, "machine", None)
        if machine is not None:
            self.vcpu(cpu, machine)

    def synchronize_state(self, cpu: Any) -> None:
        v = self._vcpus.get(id(cpu))
        if v is not None:
            v.sync_out()

    def synchronize_post_reset(self, cpu: Any) -> None:
        v = self._vcpus.get(id(cpu))
        if v is not None:
            v.sync_in()
            v.exit_req = True

    def set_guest_debug(self, cpu: Any, breakpoints: Sequence[int], single_step: bool,
                        on_debug: Callable[[Any, int], None] | None) -> None:
        """The gdbstub's breakpoints and single step (checked at translation: debug.py)."""
        from .debug import set_guest_debug

        set_guest_debug(self, cpu, breakpoints, single_step, on_debug)

    # -- running ---------------------------------------------------------------------------------
    def run(self, machine: Any) -> None:
        if not machine.cpus:
            raise AccelError("tcg: the machine has no CPUs to run")
        vcpus = [self.vcpu(cpu, machine) for cpu in machine.cpus]

        def kick_all() -> None:
            for v in vcpus:
                v.exit_req = True
            main_loop().notify()

        machine.kick_vcpus = kick_all
        loop = main_loop()
        event = machine.request_event
        now = tsc_now_ns()  # one timestamp: TSCs reset together stay in step
        for v in vcpus:
            v.sync_in(now)
        clock = time.monotonic_ns
        alarm = SliceAlarm(vcpus)
        try:
            alarm.__enter__()
            while not event.is_set():
                ran = False
                for v in vcpus:
                    if not v.runnable():
                        continue
                    set_current_cpu(v.cpu)
                    ran = True
                    slice_ns = SLICE_NS
                    deadline = next_deadline_ns()  # a timer due sooner ends the slice
                    if deadline is not None and deadline < slice_ns:
                        slice_ns = deadline
                    end = clock() + slice_ns
                    alarm.arm(slice_ns)
                    while True:
                        v.step(SLICE_BLOCKS)
                        if event.is_set() or v.env.halted or clock() >= end \
                                or not v.runnable():
                            break
                    alarm.disarm()
                    if event.is_set():
                        break
                if event.is_set():
                    break
                # Timers and file descriptors; when every vCPU is halted, sleep until a
                # timer, an fd or a kick.
                loop.poll(0 if ran else None)
        finally:
            alarm.__exit__()
            now = tsc_now_ns()
            for v in vcpus:
                v.sync_out(now)
            set_current_cpu(None)
