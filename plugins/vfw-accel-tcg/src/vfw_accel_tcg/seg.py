"""Segmentation and privilege: descriptor loads, far transfers, IRET, interrupt delivery,
SYSCALL/SYSRET and SYSENTER/SYSEXIT.

Everything here runs outside translated code on the architectural state (``s.R``, ``s.env``,
flags via ``s.eflags()``/``s.set_eflags``). Guest mistakes raise :class:`CpuException` with the
error code the SDM specifies; every push of an exception frame is checked before any register
changes, so a fault while delivering leaves the state of the first event (double fault rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfw import log

from . import mmu
from .consts import (
    AC,
    ARITH,
    CR0_PE,
    DESC_A,
    DESC_B,
    DESC_C,
    DESC_CS,
    DESC_DPL,
    DESC_DPL_SHIFT,
    DESC_G,
    DESC_L,
    DESC_P,
    DESC_RW,
    DESC_S,
    DESC_TYPE_SHIFT,
    DF,
    EFER_LMA,
    EFER_SCE,
    EXC_GP,
    EXC_NP,
    EXC_SS,
    EXC_TS,
    EXC_UD,
    ID,
    IF,
    IOPL,
    M16,
    M32,
    M64,
    MASK,
    MSR_CSTAR,
    MSR_FMASK,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    MSR_LSTAR,
    MSR_STAR,
    NT,
    R_CS,
    R_DS,
    R_ES,
    R_FS,
    R_GS,
    R_SS,
    RF,
    TF,
    VM,
)
from .excp import CpuException

if TYPE_CHECKING:
    from .vcpu import TcgCPU

_ERRCODE_VECTORS = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}


def unimp(what: str) -> None:
    if log.enabled("unimp"):
        log.write(f"tcg: unimplemented: {what}\n")


# -- descriptors -------------------------------------------------------------------------------

def desc_base(lo: int, hi: int) -> int:
    return ((lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)) & M32


def desc_limit(lo: int, hi: int) -> int:
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    if hi & DESC_G:
        limit = (limit << 12) | 0xFFF
    return limit


def desc_flags(hi: int) -> int:
    return hi & 0x00F0FF00


def read_desc(s: TcgCPU, sel: int, exc: int = EXC_GP) -> tuple[int, int, int]:
    """(lo, hi, linear address) of the descriptor of ``sel``; #GP(sel) beyond the limit."""
    env = s.env
    table = env.ldt if sel & 4 else env.gdt
    index = sel & ~7
    if index + 7 > table.limit or (sel & 4 and not table.flags & DESC_P):
        raise CpuException(exc, sel & 0xFFFC)
    addr = table.base + index
    v = mmu.rd_sys(s, addr, 8)
    return v & M32, v >> 32, addr


def read_desc16(s: TcgCPU, sel: int) -> tuple[int, int, int, int]:
    """A 16-byte system descriptor (long mode): (lo, hi, base high dword, address)."""
    env = s.env
    index = sel & ~7
    if index + 15 > env.gdt.limit:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    addr = env.gdt.base + index
    v = mmu.rd_sys(s, addr, 8)
    up = mmu.rd_sys(s, addr + 8, 8)
    return v & M32, v >> 32, up & M32, addr


def set_accessed(s: TcgCPU, addr: int, hi: int) -> None:
    if not hi & DESC_A:
        mmu.wr_sys(s, addr + 4, 4, hi | DESC_A)


def _load_cache(s: TcgCPU, seg: int, sel: int, base: int, limit: int, flags: int) -> None:
    sc = s.env.segs[seg]
    sc.selector = sel & M16
    sc.base = base
    sc.limit = limit
    sc.flags = flags
    s.sb[seg] = base


def seg_changed(s: TcgCPU, seg: int) -> None:
    """After a segment register changed: refresh what translated code relies on."""
    s.sb[seg] = s.env.segs[seg].base
    if seg in (R_CS, R_SS) or (s.mode.bits != 64 and seg in (R_DS, R_ES)):
        s.recompute_mode()


def load_seg(s: TcgCPU, seg: int, sel: int) -> None:
    """MOV/POP/LxS to DS, ES, FS, GS or SS (not CS), with protected mode checks."""
    env = s.env
    sel &= M16
    if not env.cr[0] & CR0_PE or env.eflags & VM:
        sc = env.segs[seg]
        sc.selector = sel
        sc.base = sel << 4
        if env.eflags & VM:
            sc.limit = 0xFFFF
            sc.flags = DESC_P | DESC_S | DESC_RW | DESC_A
        seg_changed(s, seg)
        return
    cpl = s.cpl
    rpl = sel & 3
    if sel & ~3 == 0:
        if seg == R_SS and not (s.mode.bits == 64 and cpl != 3 and rpl == cpl):
            raise CpuException(EXC_GP, 0)
        _load_cache(s, seg, sel, 0, 0, (cpl << DESC_DPL_SHIFT) if seg == R_SS else 0)
        seg_changed(s, seg)
        return
    lo, hi, addr = read_desc(s, sel)
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if not hi & DESC_S:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    code = bool(hi & DESC_CS)
    if seg == R_SS:
        if code or not hi & DESC_RW or rpl != cpl or dpl != cpl:
            raise CpuException(EXC_GP, sel & 0xFFFC)
        if not hi & DESC_P:
            raise CpuException(EXC_SS, sel & 0xFFFC)
    else:
        if code and not hi & DESC_RW:
            raise CpuException(EXC_GP, sel & 0xFFFC)
        if (not code or not hi & DESC_C) and dpl < max(cpl, rpl):
            raise CpuException(EXC_GP, sel & 0xFFFC)
        if not hi & DESC_P:
            raise CpuException(EXC_NP, sel & 0xFFFC)
    set_accessed(s, addr, hi)
    _load_cache(s, seg, sel, desc_base(lo, hi), desc_limit(lo, hi), desc_flags(hi | DESC_A))
    seg_changed(s, seg)


def _load_cs(s: TcgCPU, sel: int, lo: int, hi: int, cpl: int) -> None:
    """Load CS from a checked descriptor with RPL = the new CPL."""
    sel = (sel & 0xFFFC) | cpl
    _load_cache(s, R_CS, sel, desc_base(lo, hi), desc_limit(lo, hi), desc_flags(hi | DESC_A))


def _set_ss_dpl(s: TcgCPU, cpl: int) -> None:
    ss = s.env.segs[R_SS]
    ss.flags = (ss.flags & ~DESC_DPL) | (cpl << DESC_DPL_SHIFT)


def _check_code(s: TcgCPU, sel: int, lo: int, hi: int) -> None:
    if not hi & DESC_S or not hi & DESC_CS:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, sel & 0xFFFC)


def _flat(s: TcgCPU, seg: int, sel: int, flags: int) -> None:
    _load_cache(s, seg, sel, 0, 0xFFFFFFFF, flags)


# -- a stack for building frames ------------------------------------------------------------

class _Stack:
    """Pushes/pops at SS:SP with a given width; writes are collected and checked first."""

    def __init__(self, s: TcgCPU, base: int, sp: int, width: int, user: bool):
        self.s = s
        self.base = base
        self.sp = sp
        self.mask = MASK[width]
        self.user = user
        self.writes: list[tuple[int, int, int]] = []

    def push(self, value: int, size: int) -> None:
        self.sp = (self.sp - size) & self.mask
        lin = (self.base + self.sp) & self.s.lin_mask
        self.writes.append((lin, size, value & MASK[size]))

    def commit(self) -> None:
        s = self.s
        for lin, size, _v in self.writes:
            mmu.check_write(s, lin, size, self.user)
        for lin, size, v in self.writes:
            mmu.wr_sys(s, lin, size, v, self.user)

    def pop(self, size: int) -> int:
        lin = (self.base + self.sp) & self.s.lin_mask
        v = mmu.rd_sys(self.s, lin, size, self.user)
        self.sp = (self.sp + size) & self.mask
        return v


def _cur_stack(s: TcgCPU) -> _Stack:
    env = s.env
    ss = env.segs[R_SS]
    width = 8 if s.mode.bits == 64 else (4 if ss.flags & DESC_B else 2)
    base = 0 if s.mode.bits == 64 else ss.base
    return _Stack(s, base, s.R[4] & MASK[width], width, s.cpl == 3)


def _set_sp(s: TcgCPU, sp: int, width: int) -> None:
    R = s.R
    if width == 8:
        R[4] = sp & M64
    elif width == 4:
        R[4] = sp & M32
    else:
        R[4] = (R[4] & ~M16) | (sp & M16)


# -- far transfers -----------------------------------------------------------------------------

def far_jump(s: TcgCPU, sel: int, off: int, opsize: int) -> int:
    env = s.env
    sel &= M16
    if not env.cr[0] & CR0_PE or env.eflags & VM:
        cs = env.segs[R_CS]
        cs.selector = sel
        cs.base = sel << 4
        seg_changed(s, R_CS)
        return off & MASK[opsize]
    if sel & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    cpl = s.cpl
    lo, hi, addr = read_desc(s, sel)
    if hi & DESC_S:
        _check_code(s, sel, lo, hi)
        dpl = (hi >> DESC_DPL_SHIFT) & 3
        if hi & DESC_C:
            if dpl > cpl:
                raise CpuException(EXC_GP, sel & 0xFFFC)
        elif (sel & 3) > cpl or dpl != cpl:
            raise CpuException(EXC_GP, sel & 0xFFFC)
        set_accessed(s, addr, hi)
        _load_cs(s, sel, lo, hi, cpl)
        seg_changed(s, R_CS)
        return off & (M64 if s.mode.bits == 64 else MASK[opsize])
    gtype = (hi >> 8) & 0xF
    if gtype in (4, 12):  # call gate (jump through it: no privilege change)
        tsel, toff = _gate_target(s, sel, lo, hi, addr, gtype)
        tlo, thi, taddr = read_desc(s, tsel)
        _check_code(s, tsel, tlo, thi)
        tdpl = (thi >> DESC_DPL_SHIFT) & 3
        if (thi & DESC_C and tdpl > cpl) or (not thi & DESC_C and tdpl != cpl):
            raise CpuException(EXC_GP, tsel & 0xFFFC)
        _load_cs(s, tsel, tlo, thi, cpl)
        seg_changed(s, R_CS)
        return toff
    unimp(f"far jump to system descriptor type {gtype} (task switch)")
    raise CpuException(EXC_GP, sel & 0xFFFC)


def _gate_target(s: TcgCPU, sel: int, lo: int, hi: int, addr: int, gtype: int
                 ) -> tuple[int, int]:
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if dpl < s.cpl or dpl < (sel & 3):
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, sel & 0xFFFC)
    tsel = lo >> 16
    off = (lo & 0xFFFF) | (hi & 0xFFFF0000 if gtype == 12 else 0)
    if s.env.efer & EFER_LMA:
        up = mmu.rd_sys(s, addr + 8, 4)
        off |= up << 32
    if tsel & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    return tsel, off


def far_call(s: TcgCPU, sel: int, off: int, opsize: int, next_rip: int) -> int:
    env = s.env
    sel &= M16
    if not env.cr[0] & CR0_PE or env.eflags & VM:
        st = _cur_stack(s)
        st.push(env.segs[R_CS].selector, opsize)
        st.push(next_rip, opsize)
        st.commit()
        _set_sp(s, st.sp, _width(st))
        cs = env.segs[R_CS]
        cs.selector = sel
        cs.base = sel << 4
        seg_changed(s, R_CS)
        return off & MASK[opsize]
    if sel & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    cpl = s.cpl
    lo, hi, addr = read_desc(s, sel)
    if hi & DESC_S:
        _check_code(s, sel, lo, hi)
        dpl = (hi >> DESC_DPL_SHIFT) & 3
        if hi & DESC_C:
            if dpl > cpl:
                raise CpuException(EXC_GP, sel & 0xFFFC)
        elif (sel & 3) > cpl or dpl != cpl:
            raise CpuException(EXC_GP, sel & 0xFFFC)
        st = _cur_stack(s)
        st.push(env.segs[R_CS].selector, opsize)
        st.push(next_rip, opsize)
        st.commit()
        _set_sp(s, st.sp, _width(st))
        set_accessed(s, addr, hi)
        _load_cs(s, sel, lo, hi, cpl)
        seg_changed(s, R_CS)
        return off & (M64 if s.mode.bits == 64 else MASK[opsize])
    gtype = (hi >> 8) & 0xF
    if gtype in (4, 12):
        tsel, toff = _gate_target(s, sel, lo, hi, addr, gtype)
        tlo, thi, _taddr = read_desc(s, tsel)
        _check_code(s, tsel, tlo, thi)
        tdpl = (thi >> DESC_DPL_SHIFT) & 3
        if tdpl > cpl:
            raise CpuException(EXC_GP, tsel & 0xFFFC)
        if not thi & DESC_C and tdpl < cpl:
            unimp("call gate to a more privileged level")
            raise CpuException(EXC_GP, tsel & 0xFFFC)
        gsize = 4 if gtype == 12 else 2
        if env.efer & EFER_LMA:
            gsize = 8
        st = _cur_stack(s)
        st.push(env.segs[R_CS].selector, gsize)
        st.push(next_rip, gsize)
        st.commit()
        _set_sp(s, st.sp, _width(st))
        _load_cs(s, tsel, tlo, thi, cpl)
        seg_changed(s, R_CS)
        return toff
    unimp(f"far call to system descriptor type {gtype} (task switch)")
    raise CpuException(EXC_GP, sel & 0xFFFC)


def _width(st: _Stack) -> int:
    return {M16: 2, M32: 4, M64: 8}[st.mask]


def far_ret(s: TcgCPU, opsize: int, imm: int, iret: bool = False) -> int:
    """RETF (and the common part of IRET); returns the new RIP."""
    env = s.env
    st = _cur_stack(s)
    width = _width(st)
    rip = st.pop(opsize)
    sel = st.pop(opsize) & M16
    if not env.cr[0] & CR0_PE or env.eflags & VM:
        st.sp = (st.sp + imm) & st.mask
        _set_sp(s, st.sp, width)
        cs = env.segs[R_CS]
        cs.selector = sel
        cs.base = sel << 4
        seg_changed(s, R_CS)
        return rip & MASK[opsize]
    return _prot_return(s, st, rip, sel, None, opsize, imm)


def _prot_return(s: TcgCPU, st: _Stack, rip: int, sel: int, eflags: int | None, opsize: int,
                 imm: int) -> int:
    env = s.env
    cpl = s.cpl
    width = _width(st)
    if sel & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    rpl = sel & 3
    if rpl < cpl:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    lo, hi, addr = read_desc(s, sel)
    _check_code(s, sel, lo, hi)
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if hi & DESC_C:
        if dpl > rpl:
            raise CpuException(EXC_GP, sel & 0xFFFC)
    elif dpl != rpl:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    long_target = bool(env.efer & EFER_LMA and hi & DESC_L)
    if rpl == cpl and not (s.mode.bits == 64 and eflags is not None):
        # Same privilege.
        st.sp = (st.sp + imm) & st.mask
        _set_sp(s, st.sp, width)
        set_accessed(s, addr, hi)
        _load_cs(s, sel, lo, hi, rpl)
        if eflags is not None:
            _iret_flags(s, eflags, opsize, cpl)
        seg_changed(s, R_CS)
        return rip & (M64 if long_target else MASK[opsize] if opsize < 8 else M64)
    # Outer privilege (or IRETQ from 64-bit mode, which always pops SS:RSP).
    st.sp = (st.sp + imm) & st.mask
    new_sp = st.pop(opsize)
    new_ss = st.pop(opsize) & M16
    if new_ss & ~3 == 0:
        if not (env.efer & EFER_LMA and long_target and rpl != 3):
            raise CpuException(EXC_GP, 0)
        ss_lo = ss_hi = 0
        ss_addr = -1
    else:
        if (new_ss & 3) != rpl:
            raise CpuException(EXC_GP, new_ss & 0xFFFC)
        ss_lo, ss_hi, ss_addr = read_desc(s, new_ss)
        if (not ss_hi & DESC_S or ss_hi & DESC_CS or not ss_hi & DESC_RW
                or (ss_hi >> DESC_DPL_SHIFT) & 3 != rpl):
            raise CpuException(EXC_GP, new_ss & 0xFFFC)
        if not ss_hi & DESC_P:
            raise CpuException(EXC_SS, new_ss & 0xFFFC)
    set_accessed(s, addr, hi)
    _load_cs(s, sel, lo, hi, rpl)
    if ss_addr >= 0:
        set_accessed(s, ss_addr, ss_hi)
        _load_cache(s, R_SS, new_ss, desc_base(ss_lo, ss_hi), desc_limit(ss_lo, ss_hi),
                    desc_flags(ss_hi | DESC_A))
    else:
        _load_cache(s, R_SS, new_ss, 0, 0, rpl << DESC_DPL_SHIFT)
    if eflags is not None:
        _iret_flags(s, eflags, opsize, cpl)
    ss_big = bool(env.segs[R_SS].flags & DESC_B)
    if long_target:
        s.R[4] = new_sp & M64
    elif ss_big:
        s.R[4] = new_sp & M32
    else:
        s.R[4] = (s.R[4] & ~M16) | (new_sp & M16)
    if rpl > cpl:
        # Data segments the outer level may not use become unusable (QEMU keeps the base of
        # null FS/GS: 64-bit code uses them through the base MSRs).
        for seg in (R_ES, R_DS, R_FS, R_GS):
            sc = env.segs[seg]
            if seg in (R_FS, R_GS) and sc.selector & ~3 == 0:
                continue
            if sc.flags & DESC_CS and sc.flags & DESC_C:
                continue
            if (sc.flags >> DESC_DPL_SHIFT) & 3 < rpl:
                sc.selector = 0
                sc.flags &= ~DESC_P
    s.refresh_segments()
    return rip & (M64 if long_target else MASK[opsize] if opsize < 8 else M32)


def _iret_flags(s: TcgCPU, value: int, opsize: int, cpl: int) -> None:
    env = s.env
    old = s.eflags()
    mask = ARITH | TF | DF | NT | RF | AC | ID
    if cpl == 0:
        mask |= IF | IOPL
    elif cpl <= (old & IOPL) >> 12:
        mask |= IF
    if opsize == 2:
        mask &= 0xFFFF
    new = (old & ~mask) | (value & mask)
    s.set_eflags(new)
    env.interrupt_request = env.interrupt_request  # re-check pending interrupts
    s.exit_req = True


def iret(s: TcgCPU, opsize: int) -> int:
    env = s.env
    s.nmi_blocked = False
    st = _cur_stack(s)
    width = _width(st)
    if not env.cr[0] & CR0_PE:
        rip = st.pop(opsize)
        sel = st.pop(opsize) & M16
        flags = st.pop(opsize)
        _set_sp(s, st.sp, width)
        cs = env.segs[R_CS]
        cs.selector = sel
        cs.base = sel << 4
        mask = 0x257FD5 if opsize == 4 else 0x7FD5
        s.set_eflags((s.eflags() & ~mask) | (flags & mask))
        s.exit_req = True
        seg_changed(s, R_CS)
        return rip & MASK[opsize]
    if env.eflags & VM:
        unimp("iret in virtual-8086 mode")
        raise CpuException(EXC_GP, 0)
    if env.eflags & NT and not env.efer & EFER_LMA:
        unimp("iret with NT set (task return)")
        raise CpuException(EXC_GP, 0)
    rip = st.pop(opsize)
    sel = st.pop(opsize) & M16
    flags = st.pop(opsize)
    if flags & VM and s.cpl == 0 and opsize == 4 and not env.efer & EFER_LMA:
        unimp("iret to virtual-8086 mode")
        raise CpuException(EXC_GP, 0)
    return _prot_return(s, st, rip, sel, flags, opsize, 0)


# -- interrupt and exception delivery -------------------------------------------------------

def deliver(s: TcgCPU, vector: int, hw: bool = False, soft: bool = False,
            error_code: int | None = None, next_rip: int | None = None) -> None:
    """Deliver an interrupt or exception through the IVT or the IDT.

    ``next_rip`` is the return address to push (default: the current RIP); ``soft`` marks
    INT n / INT3 / INTO (privilege-checked against the gate DPL); ``hw`` an external one.
    """
    env = s.env
    ret = env.rip if next_rip is None else next_rip
    if vector not in _ERRCODE_VECTORS or hw or soft:
        error_code = None
    ext = 1 if hw or not soft else 0
    if not env.cr[0] & CR0_PE:
        _deliver_real(s, vector, ret)
    elif env.efer & EFER_LMA:
        _deliver_long(s, vector, soft, error_code, ret, ext)
    else:
        _deliver_prot(s, vector, soft, error_code, ret, ext)
    env.halted = False


def _deliver_real(s: TcgCPU, vector: int, ret: int) -> None:
    env = s.env
    if vector * 4 + 3 > env.idt.limit:
        raise CpuException(EXC_GP, vector * 8 + 2)
    ent = mmu.rd_sys(s, env.idt.base + vector * 4, 4)
    st = _cur_stack(s)
    st.push(s.eflags(), 2)
    st.push(env.segs[R_CS].selector, 2)
    st.push(ret, 2)
    st.commit()
    _set_sp(s, st.sp, _width(st))
    s.set_eflags(s.eflags() & ~(IF | TF | AC | RF))
    cs = env.segs[R_CS]
    cs.selector = ent >> 16
    cs.base = (ent >> 16) << 4
    env.rip = ent & 0xFFFF
    seg_changed(s, R_CS)


def _gate_checks(s: TcgCPU, vector: int, soft: bool, hi: int, ext: int) -> None:
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if soft and dpl < s.cpl:
        raise CpuException(EXC_GP, vector * 8 + 2)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, vector * 8 + 2 + ext)


def _target_cs(s: TcgCPU, tsel: int, ext: int) -> tuple[int, int, int]:
    if tsel & ~3 == 0:
        raise CpuException(EXC_GP, ext)
    lo, hi, addr = read_desc(s, tsel)
    if not hi & DESC_S or not hi & DESC_CS or (hi >> DESC_DPL_SHIFT) & 3 > s.cpl:
        raise CpuException(EXC_GP, (tsel & 0xFFFC) + ext)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, (tsel & 0xFFFC) + ext)
    return lo, hi, addr


def _deliver_prot(s: TcgCPU, vector: int, soft: bool, err: int | None, ret: int, ext: int
                  ) -> None:
    env = s.env
    if vector * 8 + 7 > env.idt.limit:
        raise CpuException(EXC_GP, vector * 8 + 2 + ext)
    v = mmu.rd_sys(s, env.idt.base + vector * 8, 8)
    lo, hi = v & M32, v >> 32
    gtype = (hi >> 8) & 0x1F
    if gtype == 5:
        unimp("task gate in the IDT")
        raise CpuException(EXC_GP, vector * 8 + 2 + ext)
    if gtype not in (6, 7, 14, 15):
        raise CpuException(EXC_GP, vector * 8 + 2 + ext)
    _gate_checks(s, vector, soft, hi, ext)
    gsize = 4 if gtype >= 14 else 2
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000 if gsize == 4 else 0)
    tsel = lo >> 16
    clo, chi, caddr = _target_cs(s, tsel, ext)
    dpl = (chi >> DESC_DPL_SHIFT) & 3
    cpl = s.cpl
    old_flags = s.eflags()
    if not chi & DESC_C and dpl < cpl:
        if env.eflags & VM:
            unimp("interrupt from virtual-8086 mode")
            raise CpuException(EXC_GP, (tsel & 0xFFFC) + ext)
        ss_sel, esp = _tss_stack(s, dpl)
        if ss_sel & ~3 == 0:
            raise CpuException(EXC_TS, ext)
        if (ss_sel & 3) != dpl:
            raise CpuException(EXC_TS, (ss_sel & 0xFFFC) + ext)
        slo, shi, saddr = read_desc(s, ss_sel, EXC_TS)
        if ((shi >> DESC_DPL_SHIFT) & 3 != dpl or not shi & DESC_S or shi & DESC_CS
                or not shi & DESC_RW):
            raise CpuException(EXC_TS, (ss_sel & 0xFFFC) + ext)
        if not shi & DESC_P:
            raise CpuException(EXC_SS, (ss_sel & 0xFFFC) + ext)
        width = 4 if shi & DESC_B else 2
        st = _Stack(s, desc_base(slo, shi), esp & MASK[width], width, dpl == 3)
        old_ss = env.segs[R_SS].selector
        old_sp = s.R[4]
        st.push(old_ss, gsize)
        st.push(old_sp, gsize)
        st.push(old_flags, gsize)
        st.push(env.segs[R_CS].selector, gsize)
        st.push(ret, gsize)
        if err is not None:
            st.push(err, gsize)
        st.commit()
        set_accessed(s, saddr, shi)
        _load_cache(s, R_SS, (ss_sel & 0xFFFC) | dpl, desc_base(slo, shi), desc_limit(slo, shi),
                    desc_flags(shi | DESC_A))
        _set_sp(s, st.sp, width)
    else:
        if not chi & DESC_C and dpl != cpl:
            raise CpuException(EXC_GP, (tsel & 0xFFFC) + ext)
        st = _cur_stack(s)
        st.user = cpl == 3
        st.push(old_flags, gsize)
        st.push(env.segs[R_CS].selector, gsize)
        st.push(ret, gsize)
        if err is not None:
            st.push(err, gsize)
        st.commit()
        _set_sp(s, st.sp, _width(st))
        dpl = cpl
    set_accessed(s, caddr, chi)
    _load_cs(s, tsel, clo, chi, dpl)
    _set_ss_dpl(s, dpl)
    new = old_flags & ~(TF | NT | VM | RF)
    if gtype in (6, 14):
        new &= ~IF
    s.set_eflags(new)
    env.rip = offset & (M32 if gsize == 4 else M16)
    s.refresh_segments()


def _tss_stack(s: TcgCPU, dpl: int) -> tuple[int, int]:
    tr = s.env.tr
    ttype = (tr.flags >> DESC_TYPE_SHIFT) & 0xF
    if not tr.flags & DESC_P:
        raise CpuException(EXC_TS, tr.selector & 0xFFFC)
    if ttype & 8:  # 32-bit TSS
        off = 4 + dpl * 8
        if off + 5 > tr.limit:
            raise CpuException(EXC_TS, tr.selector & 0xFFFC)
        esp = mmu.rd_sys(s, tr.base + off, 4)
        ss = mmu.rd_sys(s, tr.base + off + 4, 2)
    else:
        off = 2 + dpl * 4
        if off + 3 > tr.limit:
            raise CpuException(EXC_TS, tr.selector & 0xFFFC)
        esp = mmu.rd_sys(s, tr.base + off, 2)
        ss = mmu.rd_sys(s, tr.base + off + 2, 2)
    return ss, esp


def _deliver_long(s: TcgCPU, vector: int, soft: bool, err: int | None, ret: int, ext: int
                  ) -> None:
    env = s.env
    if vector * 16 + 15 > env.idt.limit:
        raise CpuException(EXC_GP, vector * 8 + 2 + ext)
    base = env.idt.base + vector * 16
    v = mmu.rd_sys(s, base, 8)
    up = mmu.rd_sys(s, base + 8, 4)
    lo, hi = v & M32, v >> 32
    gtype = (hi >> 8) & 0x1F
    if gtype not in (14, 15):
        raise CpuException(EXC_GP, vector * 8 + 2 + ext)
    _gate_checks(s, vector, soft, hi, ext)
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000) | (up << 32)
    tsel = lo >> 16
    ist = hi & 7
    clo, chi, caddr = _target_cs(s, tsel, ext)
    if not chi & DESC_L or chi & DESC_B:
        raise CpuException(EXC_GP, (tsel & 0xFFFC) + ext)
    dpl = (chi >> DESC_DPL_SHIFT) & 3
    cpl = s.cpl
    if chi & DESC_C:
        dpl = cpl
    old_flags = s.eflags()
    old_ss = env.segs[R_SS].selector
    old_sp = s.R[4]
    if dpl < cpl or ist:
        if ist:
            rsp = _tss64(s, 0x24 + 8 * (ist - 1))
        elif dpl < cpl:
            rsp = _tss64(s, 4 + 8 * dpl)
    else:
        if dpl != cpl:
            raise CpuException(EXC_GP, (tsel & 0xFFFC) + ext)
        rsp = old_sp
    if dpl != cpl and not ist:
        pass
    rsp &= ~0xF
    st = _Stack(s, 0, rsp & M64, 8, dpl == 3)
    st.push(old_ss, 8)
    st.push(old_sp, 8)
    st.push(old_flags, 8)
    st.push(env.segs[R_CS].selector, 8)
    st.push(ret, 8)
    if err is not None:
        st.push(err, 8)
    if not mmu.canonical(st.sp):
        raise CpuException(EXC_SS, ext)
    st.commit()
    if dpl < cpl:
        _load_cache(s, R_SS, dpl, 0, 0, dpl << DESC_DPL_SHIFT)
    set_accessed(s, caddr, chi)
    _load_cs(s, tsel, clo, chi, dpl)
    _set_ss_dpl(s, dpl)
    s.R[4] = st.sp
    new = old_flags & ~(TF | NT | VM | RF)
    if gtype == 14:
        new &= ~IF
    s.set_eflags(new)
    env.rip = offset & M64
    s.refresh_segments()


def _tss64(s: TcgCPU, off: int) -> int:
    tr = s.env.tr
    if off + 7 > tr.limit or not tr.flags & DESC_P:
        raise CpuException(EXC_TS, tr.selector & 0xFFFC)
    rsp: int = mmu.rd_sys(s, tr.base + off, 8)
    if not mmu.canonical(rsp):
        raise CpuException(EXC_SS, 0)
    return rsp


# -- fast system calls -----------------------------------------------------------------------

_CODE64 = DESC_P | DESC_S | DESC_CS | DESC_RW | DESC_A | DESC_L | DESC_G
_CODE32 = DESC_P | DESC_S | DESC_CS | DESC_RW | DESC_A | DESC_B | DESC_G
_DATA32 = DESC_P | DESC_S | DESC_RW | DESC_A | DESC_B | DESC_G


def syscall(s: TcgCPU, next_rip: int) -> int:
    env = s.env
    if not env.efer & EFER_SCE:
        raise CpuException(EXC_UD)
    star = env.msrs.get(MSR_STAR, 0)
    sel = (star >> 32) & 0xFFFC
    R = s.R
    if env.efer & EFER_LMA:
        flags = s.eflags()
        R[1] = next_rip
        R[11] = flags & ~RF
        code64 = s.mode.bits == 64
        _flat(s, R_CS, sel, _CODE64)
        _flat(s, R_SS, sel + 8, _DATA32)
        s.set_eflags(flags & ~(env.msrs.get(MSR_FMASK, 0) | RF))
        s.refresh_segments()
        return int(env.msrs.get(MSR_LSTAR if code64 else MSR_CSTAR, 0)) & M64
    R[1] = next_rip & M32
    _flat(s, R_CS, sel, _CODE32)
    _flat(s, R_SS, sel + 8, _DATA32)
    s.set_eflags(s.eflags() & ~(IF | RF | VM))
    s.refresh_segments()
    return int(star) & M32


def sysret(s: TcgCPU, opsize: int) -> int:
    env = s.env
    if not env.efer & EFER_SCE:
        raise CpuException(EXC_UD)
    if s.cpl != 0 or not env.cr[0] & CR0_PE:
        raise CpuException(EXC_GP, 0)
    star = env.msrs.get(MSR_STAR, 0)
    sel = (star >> 48) & 0xFFFF
    R = s.R
    if env.efer & EFER_LMA:
        if opsize == 8:
            if not mmu.canonical(R[1]):
                raise CpuException(EXC_GP, 0)
            _flat(s, R_CS, ((sel + 16) & 0xFFFC) | 3, _CODE64 | DESC_DPL)
            rip = R[1]
        else:
            _flat(s, R_CS, (sel & 0xFFFC) | 3, _CODE32 | DESC_DPL)
            rip = R[1] & M32
        _flat(s, R_SS, ((sel + 8) & 0xFFFC) | 3, _DATA32 | DESC_DPL)
        s.set_eflags(R[11] & 0x3C7FD7)
    else:
        _flat(s, R_CS, (sel & 0xFFFC) | 3, _CODE32 | DESC_DPL)
        _flat(s, R_SS, ((sel + 8) & 0xFFFC) | 3, _DATA32 | DESC_DPL)
        s.set_eflags(s.eflags() | IF)
        rip = R[1] & M32
    s.refresh_segments()
    return rip


def sysenter(s: TcgCPU) -> int:
    env = s.env
    cs = env.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFF
    if not env.cr[0] & CR0_PE or cs & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    s.set_eflags(s.eflags() & ~(VM | IF | RF))
    if env.efer & EFER_LMA:
        _flat(s, R_CS, cs & 0xFFFC, _CODE64)
    else:
        _flat(s, R_CS, cs & 0xFFFC, _CODE32)
    _flat(s, R_SS, (cs + 8) & 0xFFFC, _DATA32)
    s.R[4] = env.msrs.get(MSR_IA32_SYSENTER_ESP, 0) & (M64 if env.efer & EFER_LMA else M32)
    s.refresh_segments()
    return int(env.msrs.get(MSR_IA32_SYSENTER_EIP, 0)) & (M64 if env.efer & EFER_LMA else M32)


def sysexit(s: TcgCPU, opsize: int) -> int:
    env = s.env
    cs = env.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFF
    if s.cpl != 0 or not env.cr[0] & CR0_PE or cs & ~3 == 0:
        raise CpuException(EXC_GP, 0)
    R = s.R
    if opsize == 8:
        _flat(s, R_CS, ((cs + 32) & 0xFFFC) | 3, _CODE64 | DESC_DPL)
        _flat(s, R_SS, ((cs + 40) & 0xFFFC) | 3, _DATA32 | DESC_DPL)
        R[4] = R[1]
        rip = R[2]
    else:
        _flat(s, R_CS, ((cs + 16) & 0xFFFC) | 3, _CODE32 | DESC_DPL)
        _flat(s, R_SS, ((cs + 24) & 0xFFFC) | 3, _DATA32 | DESC_DPL)
        R[4] = R[1] & M32
        rip = R[2] & M32
    s.refresh_segments()
    return rip


# -- descriptor table registers ------------------------------------------------------------

def lldt(s: TcgCPU, sel: int) -> None:
    env = s.env
    sel &= M16
    if sel & ~3 == 0:
        env.ldt.selector = sel
        env.ldt.base = 0
        env.ldt.limit = 0
        env.ldt.flags = 0
        return
    if sel & 4:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if env.efer & EFER_LMA:
        lo, hi, up, _addr = read_desc16(s, sel)
    else:
        lo, hi, _addr = read_desc(s, sel)
        up = 0
    if hi & DESC_S or (hi >> 8) & 0xF != 2:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, sel & 0xFFFC)
    env.ldt.selector = sel
    env.ldt.base = desc_base(lo, hi) | (up << 32)
    env.ldt.limit = desc_limit(lo, hi)
    env.ldt.flags = desc_flags(hi)


def ltr(s: TcgCPU, sel: int) -> None:
    env = s.env
    sel &= M16
    if sel & ~3 == 0 or sel & 4:
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if env.efer & EFER_LMA:
        lo, hi, up, addr = read_desc16(s, sel)
    else:
        lo, hi, addr = read_desc(s, sel)
        up = 0
    ttype = (hi >> 8) & 0xF
    if hi & DESC_S or ttype not in (1, 9) or (env.efer & EFER_LMA and ttype != 9):
        raise CpuException(EXC_GP, sel & 0xFFFC)
    if not hi & DESC_P:
        raise CpuException(EXC_NP, sel & 0xFFFC)
    hi |= 2 << 8  # busy
    mmu.wr_sys(s, addr + 4, 4, hi)
    env.tr.selector = sel
    env.tr.base = desc_base(lo, hi) | (up << 32)
    env.tr.limit = desc_limit(lo, hi)
    env.tr.flags = desc_flags(hi)


def io_allowed(s: TcgCPU, port: int, size: int) -> None:
    """#GP(0) unless CPL <= IOPL or the TSS I/O bitmap allows all ``size`` ports."""
    env = s.env
    if not env.cr[0] & CR0_PE:
        return
    if not env.eflags & VM and s.cpl <= (env.eflags & IOPL) >> 12:
        return
    tr = env.tr
    if (tr.flags >> 8) & 0xF not in (9, 11) or tr.limit < 103:
        raise CpuException(EXC_GP, 0)
    io_base = mmu.rd_sys(s, tr.base + 102, 2)
    off = io_base + (port >> 3)
    if off + 1 > tr.limit:
        raise CpuException(EXC_GP, 0)
    bits = mmu.rd_sys(s, tr.base + off, 2)
    if (bits >> (port & 7)) & ((1 << size) - 1):
        raise CpuException(EXC_GP, 0)


def lar_lsl(s: TcgCPU, sel: int, lsl: bool) -> int | None:
    """The access rights / limit of ``sel`` if visible at CPL/RPL, else None (ZF=0)."""
    sel &= M16
    if sel & ~3 == 0:
        return None
    try:
        lo, hi, _addr = read_desc(s, sel)
    except CpuException:
        return None
    dpl = (hi >> DESC_DPL_SHIFT) & 3
    if hi & DESC_S:
        if not (hi & DESC_CS and hi & DESC_C) and (dpl < s.cpl or dpl < (sel & 3)):
            return None
    else:
        ok = {1, 2, 3, 9, 11} if lsl else {1, 2, 3, 4, 5, 9, 11, 12}
        if (hi >> 8) & 0xF not in ok or dpl < s.cpl or dpl < (sel & 3):
            return None
    if lsl:
        return desc_limit(lo, hi)
    return hi & 0x00FFFF00

