"""System instructions: emitters that call helpers, and the helpers themselves.

Control registers, MSRs, CPUID, TSC, descriptor-table registers, segment loads, far
transfers, software interrupts, fast system calls, port I/O, HLT, a little x87 state.
Helpers get the CPU (``s``) with all guest registers in ``s.R`` (the translator flushed them)
and raise :class:`CpuException` for guest errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capstone import x86_const as X

from vfw import log
from vfw.cpu import set_current_cpu
from vfw.main_loop import BQL
from vfw.timer import CLOCK_VIRTUAL

from . import mmu, seg
from .consts import (
    CR0_CD,
    CR0_EM,
    CR0_ET,
    CR0_MP,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR0_WP,
    CR4_DE,
    CR4_OSXSAVE,
    CR4_PAE,
    CR4_TSD,
    DF,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    EXC_BP,
    EXC_GP,
    EXC_NM,
    EXC_OF,
    EXC_UD,
    IF,
    IOPL,
    M16,
    M32,
    M64,
    MASK,
    MSR_CSTAR,
    MSR_EFER,
    MSR_FMASK,
    MSR_FSBASE,
    MSR_GSBASE,
    MSR_IA32_APICBASE,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC,
    MSR_KERNELGSBASE,
    MSR_LSTAR,
    MSR_STAR,
    MSR_TSC_AUX,
    OF,
    R_CS,
    R_DS,
    R_FS,
    R_GS,
    R_SS,
    VM,
)
from .decode import CREG, DREG, GPR, OP_IMM, OP_MEM, OP_REG, SEG, Insn
from .excp import CpuException

if TYPE_CHECKING:
    from .translate import Translator
    from .vcpu import TcgCPU

I = X  # noqa: E741


def tsc_now_ns() -> int:
    return CLOCK_VIRTUAL.now_ns()


def _need_cpl0(s: TcgCPU) -> None:
    if s.cpl != 0:
        raise CpuException(EXC_GP, 0)


def _set_reg(R: list[int], idx: int, size: int, value: int) -> None:
    if size >= 4:
        R[idx] = value & MASK[size]
    else:
        R[idx] = (R[idx] & ~MASK[size]) | (value & MASK[size])


# -- helpers: control registers ----------------------------------------------------------

CR4_KNOWN = 0x3F07FF  # VME..OSXMMEXCPT, UMIP, LA57, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE


def H_CR_READ(s: TcgCPU, n: int) -> int:
    _need_cpl0(s)
    if n not in (0, 2, 3, 4, 8):
        raise CpuException(EXC_UD)
    return int(s.env.cr[n])


def H_CR_WRITE(s: TcgCPU, n: int, value: int) -> None:
    _need_cpl0(s)
    env = s.env
    if n == 0:
        if value >> 32:
            raise CpuException(EXC_GP, 0)
        value |= CR0_ET
        if value & CR0_PG and not value & CR0_PE:
            raise CpuException(EXC_GP, 0)
        if value & CR0_NW and not value & CR0_CD:
            raise CpuException(EXC_GP, 0)
        old = env.cr[0]
        if value & CR0_PG and not old & CR0_PG and env.efer & EFER_LME:
            if not env.cr[4] & CR4_PAE:
                raise CpuException(EXC_GP, 0)
            env.efer |= EFER_LMA
        if not value & CR0_PG and old & CR0_PG and env.efer & EFER_LMA:
            if s.mode.bits == 64:
                raise CpuException(EXC_GP, 0)
            env.efer &= ~EFER_LMA
            for i in range(16):
                s.R[i] &= M32
        env.cr[0] = value
        if (old ^ value) & (CR0_PG | CR0_WP | CR0_PE):
            s.tlb_flush()
        s.refresh_segments()
    elif n == 2:
        env.cr[2] = value & s.lin_mask
    elif n == 3:
        env.cr[3] = value & (M64 if env.efer & EFER_LMA else M32)
        s.tlb_flush_nonglobal()
    elif n == 4:
        if value & ~CR4_KNOWN or (env.efer & EFER_LMA and not value & CR4_PAE):
            raise CpuException(EXC_GP, 0)
        env.cr[4] = value
        s.tlb_flush()
        s.refresh_segments()
    elif n == 8:
        env.cr[8] = value & 0xF
        env.interrupt_request = True
        s.exit_req = True
    else:
        raise CpuException(EXC_UD)


def H_DR_READ(s: TcgCPU, n: int) -> int:
    _need_cpl0(s)
    env = s.env
    if n in (4, 5):
        if env.cr[4] & CR4_DE:
            raise CpuException(EXC_UD)
        n += 2
    return int(env.dr[n])


def H_DR_WRITE(s: TcgCPU, n: int, value: int) -> None:
    _need_cpl0(s)
    env = s.env
    if n in (4, 5):
        if env.cr[4] & CR4_DE:
            raise CpuException(EXC_UD)
        n += 2
    env.dr[n] = value


def H_LMSW(s: TcgCPU, value: int) -> None:
    _need_cpl0(s)
    cr0 = s.env.cr[0]
    new = (cr0 & ~0xE) | (value & 0xF) | (cr0 & CR0_PE)
    H_CR_WRITE(s, 0, new)


def H_CLTS(s: TcgCPU) -> None:
    _need_cpl0(s)
    s.env.cr[0] &= ~CR0_TS
    s.refresh_segments()


# -- helpers: MSRs, CPUID, TSC ------------------------------------------------------------

def tsc(s: TcgCPU) -> int:
    return int(s.env.tsc + tsc_now_ns() - s.tsc_base_ns) & M64


def rdmsr(s: TcgCPU, idx: int) -> int:
    env = s.env
    if idx == MSR_EFER:
        return int(env.efer)
    if idx == MSR_FSBASE:
        return int(env.segs[R_FS].base)
    if idx == MSR_GSBASE:
        return int(env.segs[R_GS].base)
    if idx == MSR_IA32_TSC:
        return tsc(s)
    if idx == MSR_IA32_APICBASE:
        return int(env.apic_base)
    if idx in (MSR_KERNELGSBASE, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK,
               MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_TSC_AUX):
        return int(env.msrs.get(idx, 0))
    fn = getattr(s.cpu, "rdmsr", None)
    v = fn(idx) if fn is not None else None
    if v is None:
        if log.enabled("unimp") or log.enabled("guest_errors"):
            log.write(f"tcg: rdmsr of unknown MSR {idx:#x}\n")
        raise CpuException(EXC_GP, 0)
    return int(v) & M64


def wrmsr(s: TcgCPU, idx: int, value: int) -> None:
    env = s.env
    if idx == MSR_EFER:
        allowed = EFER_SCE | EFER_LME | EFER_NXE
        if value & ~(allowed | EFER_LMA):
            raise CpuException(EXC_GP, 0)
        if (value ^ env.efer) & EFER_LME and env.cr[0] & CR0_PG:
            raise CpuException(EXC_GP, 0)
        old = env.efer
        env.efer = (value & allowed) | (env.efer & EFER_LMA)
        if (old ^ env.efer) & EFER_NXE:
            s.tlb_flush()
        s.refresh_segments()
        return
    if idx in (MSR_FSBASE, MSR_GSBASE, MSR_KERNELGSBASE, MSR_LSTAR, MSR_CSTAR):
        if not mmu.canonical(value):
            raise CpuException(EXC_GP, 0)
        if idx == MSR_FSBASE:
            env.segs[R_FS].base = value
            s.sb[R_FS] = value
        elif idx == MSR_GSBASE:
            env.segs[R_GS].base = value
            s.sb[R_GS] = value
        else:
            env.msrs[idx] = value
        return
    if idx == MSR_IA32_TSC:
        env.tsc = value
        s.tsc_base_ns = tsc_now_ns()
        return
    if idx == MSR_IA32_APICBASE:
        fn = getattr(s.cpu, "wrmsr", None)
        if fn is not None:
            fn(idx, value)
        env.apic_base = value
        return
    if idx in (MSR_STAR, MSR_FMASK, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP,
               MSR_IA32_SYSENTER_EIP, MSR_TSC_AUX):
        env.msrs[idx] = value & (M32 if idx in (MSR_FMASK, MSR_TSC_AUX) else M64)
        return
    fn = getattr(s.cpu, "wrmsr", None)
    if fn is None or not fn(idx, value):
        if log.enabled("unimp") or log.enabled("guest_errors"):
            log.write(f"tcg: wrmsr of unknown MSR {idx:#x} value {value:#x}\n")
        raise CpuException(EXC_GP, 0)


def H_RDMSR(s: TcgCPU) -> None:
    _need_cpl0(s)
    R = s.R
    v = rdmsr(s, R[1] & M32)
    R[0] = v & M32
    R[2] = v >> 32


def H_WRMSR(s: TcgCPU) -> None:
    _need_cpl0(s)
    R = s.R
    wrmsr(s, R[1] & M32, ((R[2] & M32) << 32) | (R[0] & M32))
    s.exit_req = True


def H_CPUID(s: TcgCPU) -> None:
    R = s.R
    leaf, sub = R[0] & M32, R[1] & M32
    fn = getattr(s.cpu, "cpuid", None)
    a, b, c, d = fn(leaf, sub) if fn is not None else (0, 0, 0, 0)
    if leaf == 1:
        c = (c & ~(1 << 27)) | ((1 << 27) if s.env.cr[4] & CR4_OSXSAVE else 0)
    R[0], R[3], R[1], R[2] = a & M32, b & M32, c & M32, d & M32


def H_RDTSC(s: TcgCPU, rdtscp: bool) -> None:
    if s.env.cr[4] & CR4_TSD and s.cpl != 0:
        raise CpuException(EXC_GP, 0)
    v = tsc(s)
    R = s.R
    R[0] = v & M32
    R[2] = v >> 32
    if rdtscp:
        R[1] = s.env.msrs.get(MSR_TSC_AUX, 0) & M32


def H_RDPID(s: TcgCPU) -> int:
    return int(s.env.msrs.get(MSR_TSC_AUX, 0))


def H_XGETBV(s: TcgCPU) -> None:
    env = s.env
    if not env.cr[4] & CR4_OSXSAVE:
        raise CpuException(EXC_UD)
    R = s.R
    if R[1] & M32 != 0:
        raise CpuException(EXC_GP, 0)
    R[0] = env.xcr0 & M32
    R[2] = env.xcr0 >> 32


def H_XSETBV(s: TcgCPU) -> None:
    env = s.env
    if not env.cr[4] & CR4_OSXSAVE:
        raise CpuException(EXC_UD)
    _need_cpl0(s)
    R = s.R
    v = ((R[2] & M32) << 32) | (R[0] & M32)
    if R[1] & M32 != 0 or v & ~3 or not v & 1:
        raise CpuException(EXC_GP, 0)
    env.xcr0 = v


# -- helpers: descriptor tables, segments -------------------------------------------------

def H_LGDT(s: TcgCPU, lin: int, which: str, opsize: int) -> None:
    _need_cpl0(s)
    limit = mmu.rd(s, lin, 2)
    if s.mode.bits == 64:
        base = mmu.rd(s, (lin + 2) & s.lin_mask, 8)
    else:
        base = mmu.rd(s, (lin + 2) & s.lin_mask, 4)
        if opsize == 2:
            base &= 0xFFFFFF
    table = s.env.gdt if which == "g" else s.env.idt
    table.base = base
    table.limit = limit


def H_SGDT(s: TcgCPU, lin: int, which: str) -> None:
    table = s.env.gdt if which == "g" else s.env.idt
    mmu.wr(s, lin, 2, table.limit)
    if s.mode.bits == 64:
        mmu.wr(s, (lin + 2) & s.lin_mask, 8, table.base)
    else:
        mmu.wr(s, (lin + 2) & s.lin_mask, 4, table.base & M32)


def H_LLDT(s: TcgCPU, sel: int) -> None:
    if not s.env.cr[0] & CR0_PE or s.env.eflags & VM:
        raise CpuException(EXC_UD)
    _need_cpl0(s)
    seg.lldt(s, sel)


def H_LTR(s: TcgCPU, sel: int) -> None:
    if not s.env.cr[0] & CR0_PE or s.env.eflags & VM:
        raise CpuException(EXC_UD)
    _need_cpl0(s)
    seg.ltr(s, sel)


def H_SLDT_STR(s: TcgCPU, which: str) -> int:
    if not s.env.cr[0] & CR0_PE or s.env.eflags & VM:
        raise CpuException(EXC_UD)
    return int((s.env.ldt if which == "l" else s.env.tr).selector)


def H_LOADSEG(s: TcgCPU, sreg: int, sel: int) -> None:
    if sreg == R_CS:
        raise CpuException(EXC_UD)
    seg.load_seg(s, sreg, sel)
    if sreg == R_SS:
        s.env.interrupt_shadow = True
        s.exit_req = True


def H_LAR_LSL(s: TcgCPU, sel: int, lsl: bool) -> int | None:
    if not s.env.cr[0] & CR0_PE or s.env.eflags & VM:
        raise CpuException(EXC_UD)
    r = seg.lar_lsl(s, sel, lsl)
    s.set_eflags((s.eflags() & ~0x40) | (0x40 if r is not None else 0))
    return r


def H_VERRW(s: TcgCPU, sel: int, write: bool) -> None:
    if not s.env.cr[0] & CR0_PE or s.env.eflags & VM:
        raise CpuException(EXC_UD)
    ok = False
    sel &= M16
    if sel & ~3:
        try:
            lo, hi, _a = seg.read_desc(s, sel)
            dpl = (hi >> 13) & 3
            if hi & (1 << 12):
                code = bool(hi & (1 << 11))
                conforming = code and bool(hi & (1 << 10))
                if conforming or (dpl >= s.cpl and dpl >= (sel & 3)):
                    ok = (not code and bool(hi & (1 << 9))) if write else (
                        not code or bool(hi & (1 << 9)))
        except CpuException:
            ok = False
    s.set_eflags((s.eflags() & ~0x40) | (0x40 if ok else 0))


def H_ARPL(s: TcgCPU, dst: int, src: int) -> int:
    if (dst & 3) < (src & 3):
        s.set_eflags(s.eflags() | 0x40)
        return (dst & ~3) | (src & 3)
    s.set_eflags(s.eflags() & ~0x40)
    return dst


def H_SWAPGS(s: TcgCPU) -> None:
    if s.mode.bits != 64:
        raise CpuException(EXC_UD)
    _need_cpl0(s)
    env = s.env
    kgs = env.msrs.get(MSR_KERNELGSBASE, 0)
    env.msrs[MSR_KERNELGSBASE] = env.segs[R_GS].base
    env.segs[R_GS].base = kgs
    s.sb[R_GS] = kgs


def H_FSGSBASE(s: TcgCPU, which: int, write: bool, value: int) -> int:
    from .consts import CR4_FSGSBASE

    if s.mode.bits != 64 or not s.env.cr[4] & CR4_FSGSBASE:
        raise CpuException(EXC_UD)
    if write:
        if not mmu.canonical(value):
            raise CpuException(EXC_GP, 0)
        s.env.segs[which].base = value
        s.sb[which] = value
        return 0
    return int(s.env.segs[which].base)


def H_INVLPG(s: TcgCPU, lin: int) -> None:
    _need_cpl0(s)
    s.tlb_flush_page(lin)


def H_WBINVD(s: TcgCPU) -> None:
    _need_cpl0(s)


# -- helpers: control transfers ---------------------------------------------------------

def H_LJMP(s: TcgCPU, sel: int, off: int, opsize: int) -> int:
    return seg.far_jump(s, sel, off, opsize)


def H_LCALL(s: TcgCPU, sel: int, off: int, opsize: int, next_rip: int) -> int:
    return seg.far_call(s, sel, off, opsize, next_rip)


def H_RETF(s: TcgCPU, opsize: int, imm: int) -> int:
    return seg.far_ret(s, opsize, imm)


def H_IRET(s: TcgCPU, opsize: int) -> int:
    return seg.iret(s, opsize)


def H_INT(s: TcgCPU, vector: int, next_rip: int, kind: str) -> int:
    """INT n / INT3 / INTO / INT1: deliver and return the handler's RIP."""
    env = s.env
    if kind == "into" and not s.eflags() & OF:
        return next_rip
    if env.cr[0] & CR0_PE and env.eflags & VM and kind == "int" and \
            (env.eflags & IOPL) != IOPL:
        raise CpuException(EXC_GP, 0)
    env.rip = next_rip
    s.interrupt(vector, soft=kind != "int1", next_rip=next_rip)
    s.exit_req = True
    return int(env.rip)


def H_SYSCALL(s: TcgCPU, next_rip: int) -> int:
    return seg.syscall(s, next_rip)


def H_SYSRET(s: TcgCPU, opsize: int) -> int:
    r = seg.sysret(s, opsize)
    s.exit_req = True
    return r


def H_SYSENTER(s: TcgCPU) -> int:
    return seg.sysenter(s)


def H_SYSEXIT(s: TcgCPU, opsize: int) -> int:
    return seg.sysexit(s, opsize)


def H_HLT(s: TcgCPU, next_rip: int) -> int:
    _need_cpl0(s)
    s.env.halted = True
    s.exit_req = True
    if s.halt_hook is not None:
        s.halt_hook()
    return next_rip


def H_CLI(s: TcgCPU) -> None:
    env = s.env
    if env.cr[0] & CR0_PE and s.cpl > (env.eflags & IOPL) >> 12:
        raise CpuException(EXC_GP, 0)
    env.eflags &= ~IF


def H_STI(s: TcgCPU, next_rip: int) -> int:
    env = s.env
    if env.cr[0] & CR0_PE and s.cpl > (env.eflags & IOPL) >> 12:
        raise CpuException(EXC_GP, 0)
    if not env.eflags & IF:
        env.eflags |= IF
        env.interrupt_shadow = True
    s.exit_req = True
    return next_rip


def H_PUSHF(s: TcgCPU, size: int, sw: int) -> None:
    env = s.env
    if env.eflags & VM and (env.eflags & IOPL) != IOPL:
        raise CpuException(EXC_GP, 0)
    v = s.eflags() & ~(VM | 0x10000)  # VM and RF read as 0 in the image
    R = s.R
    sp = (R[4] - size) & MASK[sw]
    base = 0 if s.mode.bits == 64 else s.sb[R_SS]
    mmu.wr(s, (base + sp) & s.lin_mask, size, v & MASK[size])
    _set_reg(R, 4, sw, sp)


def H_POPF(s: TcgCPU, size: int, sw: int, next_rip: int) -> int:
    env = s.env
    R = s.R
    base = 0 if s.mode.bits == 64 else s.sb[R_SS]
    v = mmu.rd(s, (base + (R[4] & MASK[sw])) & s.lin_mask, size)
    if env.eflags & VM and (env.eflags & IOPL) != IOPL:
        raise CpuException(EXC_GP, 0)
    old = s.eflags()
    mask = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | DF | OF | 0x4000 | 0x40000 | 0x200000
    cpl = s.cpl if env.cr[0] & CR0_PE else 0
    if env.eflags & VM:
        mask |= IF
    elif cpl == 0:
        mask |= IF | IOPL
    elif cpl <= (old & IOPL) >> 12:
        mask |= IF
    if size == 2:
        mask &= 0xFFFF
    s.set_eflags((old & ~mask) | (v & mask))
    _set_reg(R, 4, sw, (R[4] + size) & MASK[sw])
    s.exit_req = True
    return next_rip


def H_ENTER(s: TcgCPU, alloc: int, level: int, size: int, sw: int) -> None:
    R = s.R
    base = 0 if s.mode.bits == 64 else s.sb[R_SS]
    lm = s.lin_mask
    m = MASK[sw]
    sp = (R[4] - size) & m
    writes = [(sp, R[5] & MASK[size])]
    frame = sp
    bp = R[5] & m
    for _ in range(1, level):
        bp = (bp - size) & m
        sp = (sp - size) & m
        writes.append((sp, mmu.rd(s, (base + bp) & lm, size)))
    if level:
        sp = (sp - size) & m
        writes.append((sp, frame & MASK[size]))
    for a, v in writes:
        mmu.wr(s, (base + a) & lm, size, v)
    _set_reg(R, 5, size, frame)
    _set_reg(R, 4, sw, (sp - alloc) & m)


def H_LOADFAR(s: TcgCPU, lin: int, opsize: int, sreg: int, reg: int) -> None:
    """LDS/LES/LFS/LGS/LSS: offset then selector from memory."""
    off = mmu.rd(s, lin, opsize)
    sel = mmu.rd(s, (lin + opsize) & s.lin_mask, 2)
    seg.load_seg(s, sreg, sel)
    _set_reg(s.R, reg, opsize, off)


# -- helpers: port I/O ----------------------------------------------------------------

def port_in(s: TcgCPU, port: int, size: int) -> int:
    seg.io_allowed(s, port, size)
    gen = s.mem.generation
    with BQL:
        set_current_cpu(s.cpu)
        v = s.io.read(port, size)
    if log.enabled("ioport"):
        log.write(f"tcg: in{'bwl'[size >> 1]} {port:#06x} -> {v:#x}\n")
    if s.mem.generation != gen:
        s.memory_map_changed()
    return int(v)


def port_out(s: TcgCPU, port: int, size: int, value: int) -> None:
    seg.io_allowed(s, port, size)
    gen = s.mem.generation
    if log.enabled("ioport"):
        log.write(f"tcg: out{'bwl'[size >> 1]} {port:#06x} <- {value & MASK[size]:#x}\n")
    with BQL:
        set_current_cpu(s.cpu)
        s.io.write(port, value & MASK[size], size)
    if s.mem.generation != gen:
        s.memory_map_changed()


def H_IN(s: TcgCPU, port: int, size: int, next_rip: int) -> int:
    v = port_in(s, port & M16, size)
    _set_reg(s.R, 0, size, v)
    return next_rip


def H_OUT(s: TcgCPU, port: int, size: int, next_rip: int) -> int:
    port_out(s, port & M16, size, s.R[0] & MASK[size])
    return next_rip


# -- helpers: x87 control (enough for kernels probing the FPU) ----------------------------

def fpu_check(s: TcgCPU, wait: bool = False) -> None:
    cr0 = s.env.cr[0]
    if wait:
        if cr0 & CR0_TS and cr0 & CR0_MP:
            raise CpuException(EXC_NM)
        return
    if cr0 & (CR0_EM | CR0_TS):
        raise CpuException(EXC_NM)


def H_FNINIT(s: TcgCPU) -> None:
    fpu_check(s)
    env = s.env
    env.fcw = 0x37F
    env.fsw = 0
    env.ftw = 0
    env.fop = 0
    env.fip = 0
    env.fdp = 0


def H_FNCLEX(s: TcgCPU) -> None:
    fpu_check(s)
    s.env.fsw &= 0x7F00


def H_FLDCW(s: TcgCPU, value: int) -> None:
    fpu_check(s)
    s.env.fcw = value & M16


def H_FNSTCW(s: TcgCPU) -> int:
    fpu_check(s)
    return int(s.env.fcw)


def H_FNSTSW(s: TcgCPU) -> int:
    fpu_check(s)
    return int(s.env.fsw)


def H_FWAIT(s: TcgCPU) -> None:
    fpu_check(s, wait=True)


def H_EMMS(s: TcgCPU) -> None:
    """EMMS: every x87/MMX register becomes empty (Linux runs it in AMD's FXSAVE-leak
    workaround before each FXRSTOR)."""
    fpu_check(s)
    s.env.ftw = 0


X87_INDEFINITE = 0xFFFF_C000_0000_0000_0000  # the masked response to a stack fault


def int_to_extended(value: int) -> int:
    """An integer as an 80-bit extended-precision value (exact for up to 64 bits)."""
    if value == 0:
        return 0
    sign = 1 << 79 if value < 0 else 0
    magnitude = -value if value < 0 else value
    shift = magnitude.bit_length() - 1
    return sign | ((16383 + shift) << 64) | (magnitude << (63 - shift))


def H_FILD(s: TcgCPU, value: int, size: int) -> None:
    """FILD m16/m32/m64: push the signed integer onto the x87 stack."""
    fpu_check(s)
    env = s.env
    bits = 8 * size
    if value >> (bits - 1) & 1:
        value -= 1 << bits
    top = ((env.fsw >> 11) - 1) & 7
    if env.ftw >> top & 1:  # stack overflow: invalid operation + stack fault, C1 = 1
        env.fsw |= 0x241
        result = X87_INDEFINITE
    else:
        result = int_to_extended(value)
    env.st[top] = result
    env.ftw |= 1 << top
    env.fsw = (env.fsw & ~0x3800) | (top << 11)


# -- emitters ------------------------------------------------------------------------------

def mov_special(tr: Translator, insn: Insn) -> None:
    """MOV to/from segment, control and debug registers."""
    cg = tr.cg
    d, s = insn.ops
    if d.kind == OP_REG and d.rclass == SEG:
        v = cg.read(s, insn, 2)
        tr.heavy(f"H_LOADSEG(s, {d.reg}, {v})")
        if tr.mode.bits != 64 or d.reg == R_SS:
            tr.cg.exit(str(insn.next))
            from .translate import BlockEnd

            raise BlockEnd()
        return
    if s.kind == OP_REG and s.rclass == SEG:
        cg.need.add("E")
        t = cg.t()
        cg.emit(f"{t} = E.segs[{s.reg}].selector")
        if d.kind == OP_MEM:
            cg.store(cg.addr(d, insn), 2, t)
        else:
            cg.rset(d.reg, d.size if d.size >= 4 else 2, t)
        return
    if d.kind == OP_REG and d.rclass in (CREG, DREG):
        fn = "H_CR_WRITE" if d.rclass == CREG else "H_DR_WRITE"
        size = 8 if tr.mode.bits == 64 else 4
        tr.heavy(f"{fn}(s, {d.reg}, {cg.rget(s.reg, size)})")
        tr.cg.exit(str(insn.next))
        from .translate import BlockEnd

        raise BlockEnd()
    if s.kind == OP_REG and s.rclass in (CREG, DREG):
        fn = "H_CR_READ" if s.rclass == CREG else "H_DR_READ"
        size = 8 if tr.mode.bits == 64 else 4
        tr.heavy(f"{fn}(s, {s.reg})", result="t0")
        cg.rset(d.reg, size, f"(t0 & {MASK[size]})")
        return
    tr.unimplemented(insn, "mov with special registers")


def pop_seg(tr: Translator, insn: Insn) -> None:
    cg = tr.cg
    (op,) = insn.ops
    size = tr.stack_op_size(insn)
    v, nsp = tr.pop_load(size)
    t = cg.t()
    cg.emit(f"{t} = {v} & 65535")
    # The load may fault: only then commit the stack pointer.
    tr.heavy(f"H_LOADSEG(s, {op.reg}, {t})")
    cg.rset(4, tr.sp_size(), nsp)
    cg.exit(str(insn.next))
    from .translate import BlockEnd

    raise BlockEnd()


def system_emitters(tr: Translator) -> dict[int, Callable[[Insn], None]]:
    from .translate import BlockEnd

    mode = tr.mode

    def cg() -> Any:
        return tr.cg

    def simple(call: str) -> Callable[[Insn], None]:
        def emit(insn: Insn) -> None:
            tr.heavy(call)
        return emit

    def e_pushf(insn: Insn) -> None:
        tr.heavy(f"H_PUSHF(s, {tr.stack_op_size(insn)}, {tr.sp_size()})")

    def e_popf(insn: Insn) -> None:
        tr.heavy_exit(f"H_POPF(s, {tr.stack_op_size(insn)}, {tr.sp_size()}, {insn.next})")

    def e_cli(insn: Insn) -> None:
        tr.heavy("H_CLI(s)")

    def e_sti(insn: Insn) -> None:
        tr.heavy_exit(f"H_STI(s, {insn.next})")

    def e_hlt(insn: Insn) -> None:
        tr.heavy_exit(f"H_HLT(s, {insn.next})")

    def e_cpuid(insn: Insn) -> None:
        tr.heavy("H_CPUID(s)")

    def e_rdtsc(insn: Insn) -> None:
        if insn.id == I.X86_INS_RDTSCP and "rdtscp" not in mode.features:
            tr.unimplemented(insn, "rdtscp not advertised")
        tr.heavy(f"H_RDTSC(s, {insn.id == I.X86_INS_RDTSCP})")

    def e_rdpid(insn: Insn) -> None:
        if "rdpid" not in mode.features:
            tr.unimplemented(insn, "rdpid not advertised")
        c = cg()
        c.emit("t0 = H_RDPID(s)")
        c.rset(insn.ops[0].reg, 8 if mode.bits == 64 else 4, "t0")

    def e_rdmsr(insn: Insn) -> None:
        tr.heavy("H_RDMSR(s)")

    def e_wrmsr(insn: Insn) -> None:
        tr.heavy("H_WRMSR(s)")

    def e_lgdt(insn: Insn) -> None:
        c = cg()
        (op,) = insn.ops
        if op.kind != OP_MEM:
            tr.unimplemented(insn)
        ad = c.addr(op, insn)
        which = "g" if insn.id in (I.X86_INS_LGDT, I.X86_INS_SGDT) else "i"
        if insn.id in (I.X86_INS_LGDT, I.X86_INS_LIDT):
            tr.heavy(f"H_LGDT(s, {ad}, {which!r}, {insn.opsize})")
        else:
            tr.heavy(f"H_SGDT(s, {ad}, {which!r})")

    def e_lldt(insn: Insn) -> None:
        c = cg()
        v = c.read(insn.ops[0], insn, 2)
        fn = "H_LLDT" if insn.id == I.X86_INS_LLDT else "H_LTR"
        tr.heavy(f"{fn}(s, {v})")

    def e_sldt(insn: Insn) -> None:
        c = cg()
        (op,) = insn.ops
        which = "l" if insn.id == I.X86_INS_SLDT else "t"
        tr.heavy(f"H_SLDT_STR(s, {which!r})", result="t0")
        if op.kind == OP_MEM:
            c.store(c.addr(op, insn), 2, "t0")
        else:
            c.rset(op.reg, op.size if op.size >= 4 else 2, "t0")

    def e_lmsw(insn: Insn) -> None:
        v = cg().read(insn.ops[0], insn, 2)
        tr.heavy(f"H_LMSW(s, {v})")

    def e_smsw(insn: Insn) -> None:
        c = cg()
        (op,) = insn.ops
        c.need.add("E")
        if op.kind == OP_MEM:
            c.store(c.addr(op, insn), 2, f"(E.cr[0] & {M16})")
        else:
            c.rset(op.reg, op.size, f"(E.cr[0] & {MASK[op.size]})")

    def e_invlpg(insn: Insn) -> None:
        c = cg()
        ad = c.addr(insn.ops[0], insn)
        tr.heavy(f"H_INVLPG(s, {ad})")

    def e_wbinvd(insn: Insn) -> None:
        tr.heavy("H_WBINVD(s)")

    def e_swapgs(insn: Insn) -> None:
        tr.heavy("H_SWAPGS(s)")

    def e_fsgsbase(insn: Insn) -> None:
        c = cg()
        i = insn.id
        which = R_FS if i in (I.X86_INS_RDFSBASE, I.X86_INS_WRFSBASE) else R_GS
        (op,) = insn.ops
        if "fsgsbase" not in mode.features:
            tr.unimplemented(insn, "fsgsbase not advertised")
        if i in (I.X86_INS_WRFSBASE, I.X86_INS_WRGSBASE):
            tr.heavy(f"H_FSGSBASE(s, {which}, True, {c.rget(op.reg, op.size)})")
        else:
            tr.heavy(f"H_FSGSBASE(s, {which}, False, 0)", result="t0")
            c.rset(op.reg, op.size, f"(t0 & {MASK[op.size]})")

    def e_clts(insn: Insn) -> None:
        tr.heavy("H_CLTS(s)")

    def e_xgetbv(insn: Insn) -> None:
        tr.heavy("H_XGETBV(s)")

    def e_xsetbv(insn: Insn) -> None:
        tr.heavy("H_XSETBV(s)")

    def e_ud(insn: Insn) -> None:
        cg().emit("raise CpuException(6)")
        raise BlockEnd()

    def e_int(insn: Insn) -> None:
        i = insn.id
        if i == I.X86_INS_INT:
            vec, kind = insn.ops[0].imm & 0xFF, "int"
        elif i == I.X86_INS_INT3:
            vec, kind = EXC_BP, "int3"
        elif i == I.X86_INS_INTO:
            if mode.bits == 64:
                tr.unimplemented(insn, "into in 64-bit mode")
            vec, kind = EXC_OF, "into"
        else:
            vec, kind = 1, "int1"
        tr.heavy_exit(f"H_INT(s, {vec}, {insn.next}, {kind!r})")

    def e_iret(insn: Insn) -> None:
        size = insn.opsize
        tr.heavy_exit(f"H_IRET(s, {size})")

    def e_syscall(insn: Insn) -> None:
        if mode.bits != 64 and not mode.lma:
            pass
        tr.heavy_exit(f"H_SYSCALL(s, {insn.next})")

    def e_sysret(insn: Insn) -> None:
        tr.heavy_exit(f"H_SYSRET(s, {8 if insn.rex & 8 else 4})")

    def e_sysenter(insn: Insn) -> None:
        tr.heavy_exit("H_SYSENTER(s)")

    def e_sysexit(insn: Insn) -> None:
        tr.heavy_exit(f"H_SYSEXIT(s, {8 if insn.rex & 8 else 4})")

    def e_ljmp(insn: Insn) -> None:
        c = cg()
        ops = insn.ops
        opsize = insn.opsize
        if len(ops) == 2 and ops[0].kind == OP_IMM:
            raw = insn.bytes
            sel = int.from_bytes(raw[-2:], "little")
            off = int.from_bytes(raw[-2 - opsize:-2], "little")
            args = f"{sel}, {off}"
        else:
            op = ops[0]
            if op.kind != OP_MEM:
                tr.unimplemented(insn)
            size = opsize
            ad = c.addr(op, insn)
            off = c.load(ad, size)
            c.emit(f"a2 = ({ad} + {size}) & {MASK[8] if mode.bits == 64 else M32}")
            sel = c.load("a2", 2)
            args = f"{sel}, {off}"
        if insn.id == I.X86_INS_LJMP:
            tr.heavy_exit(f"H_LJMP(s, {args}, {opsize})")
        tr.heavy_exit(f"H_LCALL(s, {args}, {opsize}, {insn.next})")

    def e_retf(insn: Insn) -> None:
        imm = insn.ops[0].imm & M16 if insn.ops else 0
        tr.heavy_exit(f"H_RETF(s, {insn.opsize}, {imm})")

    def e_inout(insn: Insn) -> None:
        c = cg()
        ops = insn.ops
        if insn.id == I.X86_INS_IN:
            reg, port = ops[0], ops[1]
            fn = "H_IN"
        else:
            port, reg = ops[0], ops[1]
            fn = "H_OUT"
        size = reg.size
        p = str(port.imm & 0xFF) if port.kind == OP_IMM else c.rget(2, 2)
        tr.heavy_exit(f"{fn}(s, {p}, {size}, {insn.next})")

    def e_lxs(insn: Insn) -> None:
        c = cg()
        d, src = insn.ops
        sreg = {I.X86_INS_LDS: R_DS, I.X86_INS_LES: 0, I.X86_INS_LSS: R_SS,
                I.X86_INS_LFS: R_FS, I.X86_INS_LGS: R_GS}[insn.id]
        if src.kind != OP_MEM:
            tr.unimplemented(insn)
        ad = c.addr(src, insn)
        tr.heavy(f"H_LOADFAR(s, {ad}, {d.size}, {sreg}, {d.reg})")
        if mode.bits != 64 or sreg == R_SS:
            c.exit(str(insn.next))
            raise BlockEnd()

    def e_larlsl(insn: Insn) -> None:
        c = cg()
        d, src = insn.ops
        v = c.read(src, insn, 2)
        tr.heavy(f"H_LAR_LSL(s, {v}, {insn.id == I.X86_INS_LSL})", result="t0")
        c.emit("if t0 is not None:")
        c.indent()
        c.rset(d.reg, d.size, f"(t0 & {MASK[d.size]})", conditional=True)
        c.dedent()

    def e_verrw(insn: Insn) -> None:
        v = cg().read(insn.ops[0], insn, 2)
        tr.heavy(f"H_VERRW(s, {v}, {insn.id == I.X86_INS_VERW})")

    def e_arpl(insn: Insn) -> None:
        c = cg()
        d, src = insn.ops
        if mode.bits == 64:
            tr.unimplemented(insn)
        x = c.read(d, insn, 2, rmw=True)
        y = c.rget(src.reg, 2)
        tr.heavy(f"H_ARPL(s, {x}, {y})", result="t0")
        c.write(d, "t0", 2)

    def e_fninit(insn: Insn) -> None:
        tr.heavy("H_FNINIT(s)")

    def e_fnclex(insn: Insn) -> None:
        tr.heavy("H_FNCLEX(s)")

    def e_fwait(insn: Insn) -> None:
        tr.heavy("H_FWAIT(s)")

    def e_fldcw(insn: Insn) -> None:
        v = cg().read(insn.ops[0], insn, 2)
        tr.heavy(f"H_FLDCW(s, {v})")

    def e_emms(insn: Insn) -> None:
        tr.heavy("H_EMMS(s)")

    def e_fild(insn: Insn) -> None:
        (op,) = insn.ops
        v = cg().read(op, insn, op.size)
        tr.heavy(f"H_FILD(s, {v}, {op.size})")

    def e_fnstcw(insn: Insn) -> None:
        c = cg()
        (op,) = insn.ops
        ad = c.addr(op, insn)
        tr.heavy("H_FNSTCW(s)", result="t0")
        c.store(ad, 2, "t0")

    def e_fnstsw(insn: Insn) -> None:
        c = cg()
        (op,) = insn.ops
        ad = "a"
        if op.kind == OP_MEM:
            ad = c.addr(op, insn)
        tr.heavy("H_FNSTSW(s)", result="t0")
        if op.kind == OP_MEM:
            c.store(ad, 2, "t0")
        else:
            c.rset(0, 2, "t0")

    def e_clac(insn: Insn) -> None:
        tr.unimplemented(insn, "SMAP is not advertised")

    t: dict[int, Callable[[Insn], None]] = {
        I.X86_INS_PUSHF: e_pushf, I.X86_INS_PUSHFD: e_pushf, I.X86_INS_PUSHFQ: e_pushf,
        I.X86_INS_POPF: e_popf, I.X86_INS_POPFD: e_popf, I.X86_INS_POPFQ: e_popf,
        I.X86_INS_CLI: e_cli, I.X86_INS_STI: e_sti, I.X86_INS_HLT: e_hlt,
        I.X86_INS_CPUID: e_cpuid, I.X86_INS_RDTSC: e_rdtsc, I.X86_INS_RDTSCP: e_rdtsc,
        I.X86_INS_RDPID: e_rdpid, I.X86_INS_RDMSR: e_rdmsr, I.X86_INS_WRMSR: e_wrmsr,
        I.X86_INS_LGDT: e_lgdt, I.X86_INS_LIDT: e_lgdt, I.X86_INS_SGDT: e_lgdt,
        I.X86_INS_SIDT: e_lgdt, I.X86_INS_LLDT: e_lldt, I.X86_INS_LTR: e_lldt,
        I.X86_INS_SLDT: e_sldt, I.X86_INS_STR: e_sldt, I.X86_INS_LMSW: e_lmsw,
        I.X86_INS_SMSW: e_smsw, I.X86_INS_INVLPG: e_invlpg, I.X86_INS_WBINVD: e_wbinvd,
        I.X86_INS_INVD: e_wbinvd, I.X86_INS_SWAPGS: e_swapgs,
        I.X86_INS_RDFSBASE: e_fsgsbase, I.X86_INS_RDGSBASE: e_fsgsbase,
        I.X86_INS_WRFSBASE: e_fsgsbase, I.X86_INS_WRGSBASE: e_fsgsbase,
        I.X86_INS_CLTS: e_clts, I.X86_INS_XGETBV: e_xgetbv, I.X86_INS_XSETBV: e_xsetbv,
        I.X86_INS_UD2: e_ud, I.X86_INS_UD0: e_ud, I.X86_INS_UD1: e_ud,
        I.X86_INS_INT: e_int, I.X86_INS_INT3: e_int, I.X86_INS_INTO: e_int,
        I.X86_INS_INT1: e_int, I.X86_INS_IRET: e_iret, I.X86_INS_IRETD: e_iret,
        I.X86_INS_IRETQ: e_iret, I.X86_INS_SYSCALL: e_syscall, I.X86_INS_SYSRET: e_sysret,
        I.X86_INS_SYSRETQ: e_sysret, I.X86_INS_SYSENTER: e_sysenter,
        I.X86_INS_SYSEXIT: e_sysexit, I.X86_INS_SYSEXITQ: e_sysexit,
        I.X86_INS_LJMP: e_ljmp, I.X86_INS_LCALL: e_ljmp, I.X86_INS_RETF: e_retf,
        I.X86_INS_RETFQ: e_retf, I.X86_INS_IN: e_inout, I.X86_INS_OUT: e_inout,
        I.X86_INS_LDS: e_lxs, I.X86_INS_LES: e_lxs, I.X86_INS_LSS: e_lxs,
        I.X86_INS_LFS: e_lxs, I.X86_INS_LGS: e_lxs, I.X86_INS_LAR: e_larlsl,
        I.X86_INS_LSL: e_larlsl, I.X86_INS_VERR: e_verrw, I.X86_INS_VERW: e_verrw,
        I.X86_INS_ARPL: e_arpl, I.X86_INS_FNINIT: e_fninit, I.X86_INS_FNCLEX: e_fnclex,
        I.X86_INS_WAIT: e_fwait, I.X86_INS_FLDCW: e_fldcw, I.X86_INS_FNSTCW: e_fnstcw,
        I.X86_INS_FNSTSW: e_fnstsw, I.X86_INS_CLAC: e_clac, I.X86_INS_STAC: e_clac,
        I.X86_INS_EMMS: e_emms, I.X86_INS_FILD: e_fild,
    }
    _ = (simple, GPR)
    return t
