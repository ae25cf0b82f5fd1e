"""Guest debugging for vfw's gdbstub under KVM (KVM_SET_GUEST_DEBUG).

Every breakpoint is a hardware breakpoint (DR0-DR3, KVM_GUESTDBG_USE_HW_BP): this machine's
KVM does not hand a CPL0 ``int3`` to userspace reliably, and hardware breakpoints need no
guest memory patching. Single step is KVM_GUESTDBG_SINGLESTEP. A debug exit calls the
gdbstub's ``on_debug(cpu, pc)`` on the vCPU thread and stops that thread (the callback asks
the machine to stop).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from typing import Any

from vfw.errors import AccelError

from . import kvm_api as k

KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_HW_BP = 0x20000
#: Hardware breakpoints x86 has (DR0-DR3).
MAX_HW_BREAKPOINTS = 4
#: DR7 bits QEMU sets besides the enables (GE and the reserved bit 10).
DR7_BASE = 0x0600


class kvm_guest_debug(ctypes.Structure):  # noqa: N801 - the kernel's name
    _fields_ = [("control", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("debugreg", ctypes.c_uint64 * 8)]


KVM_SET_GUEST_DEBUG = (1 << 30) | (ctypes.sizeof(kvm_guest_debug) << 16) | (0xAE << 8) | 0x9B
_DEBUG_EXIT = struct.Struct("<IIQQQ")  # exception, pad, pc, dr6, dr7 (kvm_run.debug.arch)


def set_guest_debug(self: Any, cpu: Any, breakpoints: Sequence[int], single_step: bool,
                    on_debug: Callable[[Any, int], None] | None) -> None:
    """Arm ``breakpoints`` (guest linear addresses) and optionally single-step on ``cpu``;
    empty and False disarm. ``on_debug(cpu, pc)`` is called when the vCPU stops for one."""
    if len(breakpoints) > MAX_HW_BREAKPOINTS:
        raise AccelError(f"kvm: at most {MAX_HW_BREAKPOINTS} breakpoints (the debug "
                         "registers DR0-DR3)")
    vcpu = self.vcpu_of(cpu)
    dbg = kvm_guest_debug()
    dr7 = DR7_BASE
    for i, addr in enumerate(breakpoints):
        dbg.debugreg[i] = addr & 0xFFFFFFFFFFFFFFFF
        dr7 |= 2 << (i * 2)  # global enable, execution, length 1
    dbg.debugreg[7] = dr7
    if breakpoints or single_step:
        dbg.control = KVM_GUESTDBG_ENABLE
        if breakpoints:
            dbg.control |= KVM_GUESTDBG_USE_HW_BP
        if single_step:
            dbg.control |= KVM_GUESTDBG_SINGLESTEP
    _hook_debug_exit(vcpu)
    vcpu.debug_callback = on_debug

    def apply() -> None:
        try:
            vcpu.ioctl(KVM_SET_GUEST_DEBUG, dbg)
        except OSError as exc:
            raise AccelError(f"kvm: KVM_SET_GUEST_DEBUG failed: {exc.strerror}") from None

    vcpu.run_on_vcpu(apply)


def _hook_debug_exit(vcpu: Any) -> None:
    """Route KVM_EXIT_DEBUG of this vCPU to its debug callback (other exits go on as before)."""
    if getattr(vcpu, "debug_hooked", False):
        return
    handle_other = vcpu._handle_other

    def handle(machine: Any, reason: int) -> bool:
        if reason != k.KVM_EXIT_DEBUG:
            return bool(handle_other(machine, reason))
        _exception, _pad, pc, _dr6, _dr7 = _DEBUG_EXIT.unpack_from(vcpu.run, k.RUN_UNION)
        callback = getattr(vcpu, "debug_callback", None)
        if callback is None:  # a stale exit after the debugger left: just go on
            return True
        callback(vcpu.cpu, pc)
        return False

    vcpu._handle_other = handle
    vcpu.debug_hooked = True
