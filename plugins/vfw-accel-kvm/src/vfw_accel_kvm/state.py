"""Conversions between ``cpu.env`` (the board's X86CPUState) and KVM's register structures.

Pure functions, no ioctls: the vCPU module moves the structures in and out of the kernel. The
env is used only through the attribute names its module documents (regs in encoding order,
segments as ``SegmentCache(selector, base, limit, flags)`` with QEMU's descriptor flag layout,
``cr``, ``efer``, ``apic_base``, FPU/SSE in FXSAVE terms, events), so this package does not
import the board.
"""

from __future__ import annotations

import struct
from typing import Any

from . import kvm_api as k

# Descriptor flag bits in a segment cache's ``flags`` (QEMU's layout: bits 8..23 of the
# descriptor's high dword, in place).
DESC_TYPE_SHIFT = 8
DESC_S_MASK = 1 << 12
DESC_DPL_SHIFT = 13
DESC_P_MASK = 1 << 15
DESC_AVL_MASK = 1 << 20
DESC_L_SHIFT = 21
DESC_B_SHIFT = 22
DESC_G_MASK = 1 << 23

CR0_PE = 1
VM_MASK = 1 << 17

# env.regs order (encoding order) -> kvm_regs field names.
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# env.segs order (ES CS SS DS FS GS) -> kvm_sregs field names.
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")
R_CS, R_SS = 1, 2

# MSR numbers synchronised through KVM_GET/SET_MSRS (EFER, APIC base, FS/GS base travel in
# kvm_sregs). Those KVM does not list in KVM_GET_MSR_INDEX_LIST are skipped.
MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_PAT = 0x277
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_KERNELGSBASE, MSR_TSC_AUX = 0xC0000102, 0xC0000103
SYNC_MSRS = (MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_PAT,
             MSR_IA32_MISC_ENABLE, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK,
             MSR_KERNELGSBASE, MSR_TSC_AUX)
#: MSRs that travel elsewhere (kvm_sregs, or the TSC's own handling).
MSRS_ELSEWHERE = frozenset({MSR_IA32_TSC, 0x1B, 0xC0000080, 0xC0000100, 0xC0000101})
#: Values an MSR of SYNC_MSRS takes when env.msrs has no entry for it (power-on values).
MSR_DEFAULTS = {MSR_PAT: 0x0007040600070406, MSR_IA32_MISC_ENABLE: 1}  # 1: fast strings


# --- segments -----------------------------------------------------------------------------


def segment_to_kvm(seg: Any, out: k.kvm_segment, *, v8086: bool = False,
                   null_unusable: bool = False) -> None:
    """Fill ``out`` from a SegmentCache.

    A segment that is not present is marked ``unusable`` (VMX's notion of a null segment);
    so is a data segment with a null selector in protected mode (``null_unusable``). In
    virtual-8086 mode every segment is a present, writable, DPL-3 data segment.
    """
    out.selector = seg.selector & 0xFFFF
    out.base = seg.base & 0xFFFFFFFFFFFFFFFF
    out.limit = seg.limit & 0xFFFFFFFF
    out.padding = 0
    if v8086:
        out.type, out.present, out.dpl, out.s = 3, 1, 3, 1
        out.db = out.l = out.g = out.avl = out.unusable = 0
        return
    flags = seg.flags
    out.type = (flags >> DESC_TYPE_SHIFT) & 0xF
    out.present = 1 if flags & DESC_P_MASK else 0
    out.dpl = (flags >> DESC_DPL_SHIFT) & 3
    out.db = (flags >> DESC_B_SHIFT) & 1
    out.s = 1 if flags & DESC_S_MASK else 0
    out.l = (flags >> DESC_L_SHIFT) & 1
    out.g = 1 if flags & DESC_G_MASK else 0
    out.avl = 1 if flags & DESC_AVL_MASK else 0
    out.unusable = 0 if out.present and not (null_unusable and seg.selector & 0xFFFC == 0) else 1


def segment_flags_from_kvm(s: k.kvm_segment) -> int:
    """QEMU-layout descriptor flags of a kvm_segment (an unusable segment is not present)."""
    return int((s.type & 0xF) << DESC_TYPE_SHIFT
            | (DESC_P_MASK if s.present and not s.unusable else 0)
            | (s.dpl & 3) << DESC_DPL_SHIFT
            | (s.db & 1) << DESC_B_SHIFT
            | (DESC_S_MASK if s.s else 0)
            | (s.l & 1) << DESC_L_SHIFT
            | (DESC_G_MASK if s.g else 0)
            | (DESC_AVL_MASK if s.avl else 0))


def segment_from_kvm(seg: Any, s: k.kvm_segment) -> None:
    """Update a SegmentCache in place from a kvm_segment."""
    seg.selector = s.selector
    seg.base = s.base
    seg.limit = s.limit
    seg.flags = segment_flags_from_kvm(s)


# --- general registers --------------------------------------------------------------------


def regs_to_kvm(env: Any) -> k.kvm_regs:
    r = k.kvm_regs()
    for i, name in enumerate(GPR_NAMES):
        setattr(r, name, env.regs[i] & 0xFFFFFFFFFFFFFFFF)
    r.rip = env.rip & 0xFFFFFFFFFFFFFFFF
    r.rflags = (env.eflags | 2) & 0xFFFFFFFFFFFFFFFF
    return r


def regs_from_kvm(env: Any, r: k.kvm_regs) -> None:
    for i, name in enumerate(GPR_NAMES):
        env.regs[i] = getattr(r, name)
    env.rip = r.rip
    env.eflags = r.rflags


# --- system registers ---------------------------------------------------------------------


def sregs_to_kvm(env: Any) -> k.kvm_sregs:
    s = k.kvm_sregs()
    protected = bool(env.cr[0] & CR0_PE)
    v8086 = protected and bool(env.eflags & VM_MASK)
    for i, name in enumerate(SEG_NAMES):
        data = i not in (R_CS, R_SS)
        segment_to_kvm(env.segs[i], getattr(s, name), v8086=v8086,
                       null_unusable=protected and not v8086 and data)
    segment_to_kvm(env.tr, s.tr)
    segment_to_kvm(env.ldt, s.ldt)
    s.gdt.base, s.gdt.limit = env.gdt.base, env.gdt.limit & 0xFFFF
    s.idt.base, s.idt.limit = env.idt.base, env.idt.limit & 0xFFFF
    s.cr0, s.cr2, s.cr3, s.cr4, s.cr8 = (env.cr[0], env.cr[2], env.cr[3], env.cr[4],
                                         env.cr[8])
    s.efer = env.efer
    s.apic_base = env.apic_base
    return s


def sregs_from_kvm(env: Any, s: k.kvm_sregs) -> None:
    for i, name in enumerate(SEG_NAMES):
        segment_from_kvm(env.segs[i], getattr(s, name))
    segment_from_kvm(env.tr, s.tr)
    segment_from_kvm(env.ldt, s.ldt)
    env.gdt.base, env.gdt.limit = s.gdt.base, s.gdt.limit
    env.idt.base, env.idt.limit = s.idt.base, s.idt.limit
    env.cr[0], env.cr[2], env.cr[3], env.cr[4], env.cr[8] = s.cr0, s.cr2, s.cr3, s.cr4, s.cr8
    env.efer = s.efer
    env.apic_base = s.apic_base


# --- FPU / SSE ----------------------------------------------------------------------------


def fpu_to_kvm(env: Any) -> k.kvm_fpu:
    """kvm_fpu is FXSAVE-shaped: ST(i) in stack order (env.st is in physical order)."""
    f = k.kvm_fpu()
    f.fcw, f.fsw, f.ftwx = env.fcw & 0xFFFF, env.fsw & 0xFFFF, env.ftw & 0xFF
    f.last_opcode, f.last_ip, f.last_dp = env.fop & 0x7FF, env.fip, env.fdp
    top = (env.fsw >> 11) & 7
    for i in range(8):
        value = env.st[(top + i) & 7] & ((1 << 80) - 1)
        f.fpr[i][:] = list(value.to_bytes(16, "little"))
    for i in range(16):
        f.xmm[i][:] = list((env.xmm[i] & ((1 << 128) - 1)).to_bytes(16, "little"))
    f.mxcsr = env.mxcsr & 0xFFFFFFFF
    return f


def fpu_from_kvm(env: Any, f: k.kvm_fpu) -> None:
    env.fcw, env.fsw, env.ftw = f.fcw, f.fsw, f.ftwx
    env.fop, env.fip, env.fdp = f.last_opcode, f.last_ip, f.last_dp
    top = (f.fsw >> 11) & 7
    for i in range(8):
        env.st[(top + i) & 7] = int.from_bytes(bytes(f.fpr[i])[:10], "little")
    for i in range(16):
        env.xmm[i] = int.from_bytes(bytes(f.xmm[i]), "little")
    env.mxcsr = f.mxcsr


# FXSAVE legacy area offsets (the start of an XSAVE image), and XSTATE_BV.
FX_FCW, FX_FSW, FX_FTW, FX_FOP, FX_FIP, FX_FDP, FX_MXCSR = 0, 2, 4, 6, 8, 16, 24
FX_ST, FX_XMM = 32, 160
XSAVE_XSTATE_BV = 512
XSTATE_X87_SSE = 0b11


def fpu_to_xsave(env: Any, image: k.kvm_xsave, reset: bool) -> None:
    """Write x87/SSE state into an XSAVE image read from the kernel (other components kept;
    on reset they go back to their initial state)."""
    buf = memoryview(image).cast("B")
    struct.pack_into("<HHBxHQQI", buf, 0, env.fcw & 0xFFFF, env.fsw & 0xFFFF, env.ftw & 0xFF,
                     env.fop & 0x7FF, env.fip & 0xFFFFFFFFFFFFFFFF,
                     env.fdp & 0xFFFFFFFFFFFFFFFF, env.mxcsr & 0xFFFFFFFF)
    top = (env.fsw >> 11) & 7
    for i in range(8):
        value = env.st[(top + i) & 7] & ((1 << 80) - 1)
        buf[FX_ST + 16 * i:FX_ST + 16 * i + 16] = value.to_bytes(16, "little")
    for i in range(16):
        buf[FX_XMM + 16 * i:FX_XMM + 16 * i + 16] = (
            env.xmm[i] & ((1 << 128) - 1)).to_bytes(16, "little")
    bv = struct.unpack_from("<Q", buf, XSAVE_XSTATE_BV)[0]
    struct.pack_into("<Q", buf, XSAVE_XSTATE_BV, XSTATE_X87_SSE if reset else bv | XSTATE_X87_SSE)


def fpu_from_xsave(env: Any, image: k.kvm_xsave) -> None:
    buf = memoryview(image).cast("B")
    (env.fcw, env.fsw, env.ftw, env.fop, env.fip, env.fdp,
     env.mxcsr) = struct.unpack_from("<HHBxHQQI", buf, 0)
    top = (env.fsw >> 11) & 7
    for i in range(8):
        env.st[(top + i) & 7] = int.from_bytes(buf[FX_ST + 16 * i:FX_ST + 16 * i + 10], "little")
    for i in range(16):
        env.xmm[i] = int.from_bytes(buf[FX_XMM + 16 * i:FX_XMM + 16 * i + 16], "little")


# --- events and debug registers -----------------------------------------------------------


def events_to_kvm(env: Any) -> k.kvm_vcpu_events:
    e = k.kvm_vcpu_events()
    if env.exception_vector >= 0:
        e.exception.injected = 1
        e.exception.nr = env.exception_vector & 0xFF
        if env.exception_error_code is not None:
            e.exception.has_error_code = 1
            e.exception.error_code = env.exception_error_code & 0xFFFFFFFF
    e.interrupt.shadow = k.KVM_X86_SHADOW_INT_MOV_SS if env.interrupt_shadow else 0
    e.nmi.pending = 1 if env.nmi_pending else 0
    e.sipi_vector = env.sipi_vector & 0xFF
    e.flags = (k.KVM_VCPUEVENT_VALID_NMI_PENDING | k.KVM_VCPUEVENT_VALID_SIPI_VECTOR
               | k.KVM_VCPUEVENT_VALID_SHADOW)
    return e


def events_from_kvm(env: Any, e: k.kvm_vcpu_events) -> None:
    if e.exception.injected or e.exception.pending:
        env.exception_vector = e.exception.nr
        env.exception_error_code = e.exception.error_code if e.exception.has_error_code else None
    else:
        env.exception_vector, env.exception_error_code = -1, None
    env.interrupt_shadow = bool(e.interrupt.shadow)
    env.nmi_pending = bool(e.nmi.pending or e.nmi.injected)
    env.sipi_vector = e.sipi_vector


def debugregs_to_kvm(env: Any) -> k.kvm_debugregs:
    d = k.kvm_debugregs()
    for i in range(4):
        d.db[i] = env.dr[i]
    d.dr6, d.dr7 = env.dr[6], env.dr[7]
    return d


def debugregs_from_kvm(env: Any, d: k.kvm_debugregs) -> None:
    for i in range(4):
        env.dr[i] = d.db[i]
    env.dr[6], env.dr[7] = d.dr6, d.dr7
