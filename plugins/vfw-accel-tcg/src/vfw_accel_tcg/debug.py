"""Guest debugging for vfw's gdbstub under TCG: breakpoints and single step, as QEMU does it.

Breakpoints are checked when code is translated, never while it runs: a block ends just
before any breakpoint address (``Translator.stop_at``), so a breakpoint can only be the first
instruction of a block, and blocks starting at one never enter the jump caches. The
dispatcher's slow path (``TcgCPU.lookup``) is therefore the only place that sees them: while
a debugger is attached it goes through :meth:`VcpuDebug.lookup`, which raises
:class:`DebugExit` before the instruction runs. Changing the breakpoint set flushes every
translated block, so a block translated earlier cannot run past a new breakpoint; with no
debugger attached ``TcgCPU.debug`` is None and nothing is checked at all.

Resuming from a breakpoint address executes that instruction (a one-instruction block)
instead of stopping again at once, like RF on real hardware. Single step runs exactly one
instruction as a one-instruction block and stops after it (or at the handler's first
instruction when it faulted); pending interrupts and NMIs wait while a step is armed, as with
QEMU's default step flags (SSTEP_NOIRQ), so a step does not land in an interrupt handler.
Every change of the debug state sets ``exit_req``, so what waited is taken on resuming.
A debug exit calls ``on_debug(cpu, pc)`` from the thread running the vCPUs and stops the
machine, so the other vCPUs of the round-robin loop stop too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .vcpu import TcgCPU

DebugCallback = Callable[[Any, int], None]

_NO_STOPS: frozenset[int] = frozenset()
_M64 = (1 << 64) - 1
log = logging.getLogger("vfw.tcg")


class DebugExit(Exception):
    """Unwinds the dispatcher: the vCPU stops at ``rip`` for the debugger (not a guest
    exception: the guest never sees it)."""

    def __init__(self, rip: int):
        super().__init__(rip)
        self.rip = rip


class VcpuDebug:
    """What the debugger armed on one vCPU (None on a vCPU nobody debugs)."""

    __slots__ = ("breakpoints", "on_debug", "single_step", "skip", "stepped", "stop_at")

    def __init__(self) -> None:
        #: linear addresses that stop this vCPU
        self.breakpoints: frozenset[int] = _NO_STOPS
        #: where every translated block must end: the breakpoints of all vCPUs (blocks are
        #: shared between them)
        self.stop_at: frozenset[int] = _NO_STOPS
        self.single_step = False
        self.on_debug: DebugCallback | None = None
        #: linear address of the instruction the vCPU resumes at: it runs even if it is a
        #: breakpoint (-1: none)
        self.skip = -1
        #: the single step has started its instruction: the next dispatch stops
        self.stepped = False

    def lookup(self, v: TcgCPU, rip: int, cflags: int) -> Any:
        """``TcgCPU.lookup`` while debugging: the block to run at ``rip``, or DebugExit."""
        from .vcpu import CF_ONE

        lin = (v.mode.cs_base + rip) & v.lin_mask
        skip, self.skip = self.skip, -1
        if self.single_step:
            if self.stepped:  # the stepped instruction faulted: stop at the handler
                raise DebugExit(rip)
            if lin in self.breakpoints and lin != skip:
                raise DebugExit(rip)
            fn = v._lookup(rip, CF_ONE)
            self.stepped = True
            return _stepper(fn)
        if lin in self.breakpoints:
            if lin != skip:
                raise DebugExit(rip)
            return v._lookup(rip, CF_ONE)  # resuming from it: run it, alone and uncached
        return v._lookup(rip, cflags)


def _stepper(fn: Any) -> Callable[[Any, list[int]], int]:
    """The one-instruction block ``fn``, then a debug exit at the next instruction."""

    def step(s: Any, R: list[int]) -> int:  # noqa: N803 - the block calling convention
        shadow = s.env.interrupt_shadow
        rip = int(fn(s, R))
        if shadow:  # as run_one: the shadow covered this instruction
            s.env.interrupt_shadow = False
        raise DebugExit(rip)

    return step


def debug_stop(v: TcgCPU, exc: DebugExit) -> None:
    """The dispatcher caught ``exc``: park the vCPU at its RIP, tell the debugger, and make
    sure the machine stops (QEMU's vm_stop(RUN_STATE_DEBUG)), which stops every vCPU."""
    v.unwind(exc)
    v.env.rip = exc.rip
    v.exit_req = True
    state = v.debug
    if state is None:
        return
    lin = (v.mode.cs_base + exc.rip) & v.lin_mask
    state.stepped = False
    state.single_step = False
    state.skip = lin  # resuming from here executes this instruction
    callback = state.on_debug
    machine = v.machine
    if callback is not None:
        try:
            callback(v.cpu, lin)
        except Exception:  # noqa: BLE001 - a debugger's bug must not kill the VM
            log.exception("tcg: the debug callback failed")
    if not machine.request_event.is_set():
        machine.request_stop()


def set_guest_debug(accel: Any, cpu: Any, breakpoints: Sequence[int], single_step: bool,
                    on_debug: DebugCallback | None) -> None:
    """Arm ``breakpoints`` (guest linear addresses) and optionally a single step on ``cpu``;
    none of them (or no callback) disarms it. Called while the machine is stopped."""
    machine = getattr(cpu, "machine", None) or getattr(accel, "_machine", None)
    v = accel._vcpus.get(id(cpu))
    if v is None or v.cpu is not cpu:
        if machine is None:
            return  # the vCPU does not exist yet: nothing can run to be debugged
        v = accel.vcpu(cpu, machine)
    vcpus: list[TcgCPU] = list(accel._vcpus.values())
    old_stops = next((x.debug.stop_at for x in vcpus if x.debug is not None), _NO_STOPS)
    if (breakpoints or single_step) and on_debug is not None:
        state = v.debug if v.debug is not None else VcpuDebug()
        state.breakpoints = frozenset(int(a) & _M64 for a in breakpoints)
        state.single_step = bool(single_step)
        state.stepped = False
        state.on_debug = on_debug
        state.skip = (v.mode.cs_base + v.env.rip) & v.lin_mask
        v.debug = state
    elif v.debug is not None:
        v.debug.breakpoints = _NO_STOPS
        v.debug.single_step = False
        v.debug.on_debug = None
    armed = [x for x in vcpus if x.debug is not None
             and (x.debug.breakpoints or x.debug.single_step)]
    stops: frozenset[int] = _NO_STOPS
    for x in armed:
        stops |= x.debug.breakpoints  # type: ignore[union-attr]
    for x in vcpus:
        if not armed:
            x.debug = None
        else:
            if x.debug is None:
                x.debug = VcpuDebug()  # it shares blocks with the debugged ones
            x.debug.stop_at = stops
        x.exit_req = True
    if stops != old_stops:
        v.tbc.flush()  # blocks translated earlier may run through a new breakpoint
    elif single_step:
        v.jc_flush()  # the step must reach the slow path
