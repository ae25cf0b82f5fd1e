"""The software MMU: page walks, the soft TLB and the slow paths of guest memory accesses.

Translated code reads ``RT[lin >> 12]`` / writes ``WT[lin >> 12]``: dicts from virtual page
number to a 4 KiB memoryview of guest RAM. A missing entry (KeyError) or an access that crosses
the page end (struct.error) drops into ``rd``/``wr`` here, which walk the page tables, set
accessed/dirty bits, raise #PF/#GP, fill the TLB, and send anything that is not RAM to the
machine's address space (MMIO). Pages holding translated code never get a write entry, so the
write slow path sees every store to them and invalidates the code (self-modifying code).
"""

from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING

from vfw.cpu import set_current_cpu
from vfw.main_loop import BQL

from .consts import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PGE,
    CR4_PSE,
    CR4_SMEP,
    EFER_LMA,
    EFER_NXE,
    EXC_GP,
    EXC_PF,
    M32,
    M64,
)
from .excp import CpuException, SmcRestart

if TYPE_CHECKING:
    from .tbcache import TB
    from .vcpu import TcgCPU

READ, WRITE, EXEC = 0, 1, 2
PG_P, PG_RW, PG_US, PG_A, PG_D, PG_PS, PG_G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
PG_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000
ERR_P, ERR_W, ERR_U, ERR_RSVD, ERR_I = 1, 2, 4, 8, 16

_U = {2: struct.Struct("<H").unpack_from, 4: struct.Struct("<I").unpack_from,
      8: struct.Struct("<Q").unpack_from}
_P = {2: struct.Struct("<H").pack_into, 4: struct.Struct("<I").pack_into,
      8: struct.Struct("<Q").pack_into}
#: Entries a TLB may hold before it is emptied (a guest touching much memory).
TLB_LIMIT = 1 << 16


def canonical(lin: int) -> bool:
    top = lin >> 47
    return top == 0 or top == 0x1FFFF


def walk(s: TcgCPU, lin: int, access: int, user: bool) -> tuple[int, bool]:
    """Translate linear ``lin`` for ``access``; return (physical address, global page).

    Raises #PF (with CR2) on a fault, #GP on a non-canonical address in long mode. Sets the
    accessed bits on the way and the dirty bit of the leaf on a write.
    """
    env = s.env
    cr0 = env.cr[0]
    if not cr0 & CR0_PG:
        return lin & M32, True
    cr4 = env.cr[4]
    efer = env.efer
    mem = s.mem

    def rd(addr: int, size: int) -> int:
        views = page_views(s, addr >> 12)
        if views is not None:
            return int(_U[size](views[0], addr & 0xFFF)[0])
        return int(mem.read(addr, size))

    nxe = bool(efer & EFER_NXE)
    rw = us = True
    nx = False
    touched: list[tuple[int, int, int]] = []  # (address, entry, size)
    if efer & EFER_LMA:
        if not canonical(lin):
            raise CpuException(EXC_GP, 0)
        table = env.cr[3] & ADDR_MASK
        for shift in (39, 30, 21, 12):
            addr = table + ((lin >> shift) & 511) * 8
            e = rd(addr, 8)
            if not e & PG_P:
                _fault(s, lin, access, user, False)
            rw = rw and bool(e & PG_RW)
            us = us and bool(e & PG_US)
            if nxe and e & PG_NX:
                nx = True
            touched.append((addr, e, 8))
            if shift in (30, 21) and e & PG_PS:
                pmask = (1 << shift) - 1
                phys = (e & ADDR_MASK & ~pmask) | (lin & pmask)
                break
            if shift == 12:
                phys = (e & ADDR_MASK) | (lin & 0xFFF)
                break
            table = e & ADDR_MASK
    elif cr4 & CR4_PAE:
        addr = (env.cr[3] & 0xFFFFFFE0) + ((lin >> 30) & 3) * 8
        e = rd(addr, 8)
        if not e & PG_P:
            _fault(s, lin, access, user, False)
        table = e & ADDR_MASK
        for shift in (21, 12):
            addr = table + ((lin >> shift) & 511) * 8
            e = rd(addr, 8)
            if not e & PG_P:
                _fault(s, lin, access, user, False)
            rw = rw and bool(e & PG_RW)
            us = us and bool(e & PG_US)
            if nxe and e & PG_NX:
                nx = True
            touched.append((addr, e, 8))
            if shift == 21 and e & PG_PS:
                phys = (e & ADDR_MASK & ~0x1FFFFF) | (lin & 0x1FFFFF)
                break
            if shift == 12:
                phys = (e & ADDR_MASK) | (lin & 0xFFF)
                break
            table = e & ADDR_MASK
    else:
        lin &= M32
        addr = (env.cr[3] & 0xFFFFF000) + (lin >> 22) * 4
        e = rd(addr, 4)
        if not e & PG_P:
            _fault(s, lin, access, user, False)
        rw = bool(e & PG_RW)
        us = bool(e & PG_US)
        touched.append((addr, e, 4))
        if e & PG_PS and cr4 & CR4_PSE:
            phys = (e & 0xFFC00000) | ((e & 0x1FE000) << 19) | (lin & 0x3FFFFF)
        else:
            addr = (e & 0xFFFFF000) + ((lin >> 12) & 1023) * 4
            e = rd(addr, 4)
            if not e & PG_P:
                _fault(s, lin, access, user, False)
            rw = rw and bool(e & PG_RW)
            us = us and bool(e & PG_US)
            touched.append((addr, e, 4))
            phys = (e & 0xFFFFF000) | (lin & 0xFFF)
    if user and not us:
        _fault(s, lin, access, user, True)
    if access == WRITE and not rw and (user or cr0 & CR0_WP):
        _fault(s, lin, access, user, True)
    if access == EXEC and nx:
        _fault(s, lin, access, user, True)
    leaf = touched[-1]
    last = len(touched) - 1
    for i, (addr, e, size) in enumerate(touched):
        want = e | PG_A
        if i == last and access == WRITE:
            want |= PG_D
        if want != e:
            views = page_views(s, addr >> 12)
            if views is not None and views[1] is not None:
                _P[size](views[1], addr & 0xFFF, want)
            else:
                mem.write(addr, want, size)
    return phys, bool(leaf[1] & PG_G)


def _fault(s: TcgCPU, lin: int, access: int, user: bool, present: bool) -> None:
    err = (ERR_P if present else 0) | (ERR_W if access == WRITE else 0) | (ERR_U if user else 0)
    env = s.env
    if access == EXEC and ((env.efer & EFER_NXE and env.cr[4] & CR4_PAE)
                           or env.cr[4] & CR4_SMEP):
        err |= ERR_I
    raise CpuException(EXC_PF, err, cr2=lin)


def page_views(s: TcgCPU, ppage: int) -> tuple[memoryview, memoryview | None] | None:
    """(read view, write view or None for ROM) of a whole 4 KiB RAM page, or None (MMIO)."""
    cache = s.tbc.pviews
    hit = cache.get(ppage)
    if hit is not None or ppage in cache:
        return hit
    addr = ppage << 12
    found = s.mem.ram_section_at(addr)
    views: tuple[memoryview, memoryview | None] | None = None
    if found is not None:
        start, size, view = found
        if start <= addr and addr + 4096 <= start + size:
            v = view[addr - start:addr - start + 4096]
            views = (v, None if v.readonly else v)
    cache[ppage] = views
    return views


def _user(s: TcgCPU) -> bool:
    return s.cpl == 3


def fill(s: TcgCPU, lin: int, access: int, user: bool | None = None) -> int:
    """Translate and, where possible, fill the TLB entry of ``lin``'s page; return phys."""
    if user is None:
        user = s.cpl == 3
    if s.lma:
        if not canonical(lin):
            raise CpuException(EXC_GP, 0)
        lin &= M64
    vpage = lin >> 12
    phys, glob = walk(s, lin, access, user)
    ppage = phys >> 12
    views = page_views(s, ppage)
    if user == (s.cpl == 3):
        rt, wt, xt = s.rt, s.wt, s.xt
    else:
        rt, wt, xt = s.tlbs[3 if user else 0]
    if len(rt) > TLB_LIMIT or len(wt) > TLB_LIMIT:
        s.tlb_overflow()
    if not glob or not s.env.cr[4] & CR4_PGE:
        s.nonglobal.add(vpage)
    if access == EXEC:
        xt[vpage] = ppage
    if views is not None:
        if access == READ:
            rt[vpage] = views[0]
        elif access == WRITE and views[1] is not None and ppage not in s.tbc.code_pages:
            wt[vpage] = views[1]
            rev = s.w_rev.get(ppage)
            if rev is None:
                s.w_rev[ppage] = [(wt, vpage)]
            else:
                rev.append((wt, vpage))
    return phys


# -- physical accesses ---------------------------------------------------------------------

def phys_read(s: TcgCPU, phys: int, size: int) -> int:
    views = page_views(s, phys >> 12)
    off = phys & 0xFFF
    if views is not None and off + size <= 4096:
        if size == 1:
            return views[0][off]
        return _U[size](views[0], off)[0]  # type: ignore[no-any-return]
    with BQL:
        set_current_cpu(s.cpu)
        return int(s.mem.read(phys, size))


def phys_write(s: TcgCPU, phys: int, size: int, value: int) -> None:
    ppage = phys >> 12
    if ppage in s.tbc.code_pages:
        _smc(s, phys, size)
    views = page_views(s, ppage)
    off = phys & 0xFFF
    if views is not None and views[1] is not None and off + size <= 4096:
        if size == 1:
            views[1][off] = value & 0xFF
        else:
            _P[size](views[1], off, value & ((1 << (8 * size)) - 1))
        return
    gen = s.mem.generation
    with BQL:
        set_current_cpu(s.cpu)
        s.mem.write(phys, value, size)
    if s.mem.generation != gen:
        s.memory_map_changed()


def _smc(s: TcgCPU, phys: int, size: int) -> None:
    """A store to a page with translated code: invalidate the blocks made from the bytes it
    changes. If the running block is one of them, it stops before the store (SmcRestart)."""
    tbc = s.tbc
    if not tbc.hits_code(phys, size):
        return
    cur = current_tb(s)
    if cur is not None and cur.ninsns > 1 and cur.overlaps(phys, size):
        s.smc_tb = cur
        raise SmcRestart()
    tbc.invalidate_range(phys, size)


def current_tb(s: TcgCPU) -> TB | None:
    code2tb = s.tbc.code2tb
    f = sys._getframe(2)
    while f is not None:
        tb = code2tb.get(f.f_code)
        if tb is not None:
            return tb
        f = f.f_back  # type: ignore[assignment]
    return None


# -- the slow paths translated code calls -------------------------------------------------

def rd(s: TcgCPU, lin: int, size: int) -> int:
    """Read ``size`` bytes at linear ``lin`` (TLB miss, page crossing or MMIO)."""
    off = lin & 0xFFF
    if off + size <= 4096:
        view = s.rt.get(lin >> 12)
        if view is not None:
            return view[off] if size == 1 else _U[size](view, off)[0]  # type: ignore
    else:
        first = 4096 - off
        p1 = fill(s, lin, READ)
        p2 = fill(s, (lin + first) & s.lin_mask, READ)
        v = 0
        for i in range(size):
            v |= phys_read(s, (p1 + i) if i < first else (p2 + i - first), 1) << (8 * i)
        return v
    return phys_read(s, fill(s, lin, READ), size)


def rdw(s: TcgCPU, lin: int, size: int) -> int:
    """Read for a read-modify-write: checks write permission first (and sets dirty)."""
    off = lin & 0xFFF
    if off + size > 4096:
        first = 4096 - off
        p1 = fill(s, lin, WRITE)
        p2 = fill(s, (lin + first) & s.lin_mask, WRITE)
        v = 0
        for i in range(size):
            v |= phys_read(s, (p1 + i) if i < first else (p2 + i - first), 1) << (8 * i)
        return v
    return phys_read(s, fill(s, lin, WRITE), size)


def wr(s: TcgCPU, lin: int, size: int, value: int) -> None:
    """Write ``size`` bytes at linear ``lin`` (TLB miss, page crossing, code page, MMIO)."""
    off = lin & 0xFFF
    if off + size <= 4096:
        view = s.wt.get(lin >> 12)
        if view is not None:
            if size == 1:
                view[off] = value & 0xFF
            else:
                _P[size](view, off, value & ((1 << (8 * size)) - 1))
            return
    else:
        first = 4096 - off
        p1 = fill(s, lin, WRITE)
        p2 = fill(s, (lin + first) & s.lin_mask, WRITE)
        for i in range(size):
            phys_write(s, (p1 + i) if i < first else (p2 + i - first), 1, value >> (8 * i))
        return
    phys_write(s, fill(s, lin, WRITE), size, value)


def rd_sys(s: TcgCPU, lin: int, size: int, user: bool = False) -> int:
    """An implicit read with explicit privilege: descriptor tables, TSS, IDT, stacks."""
    lin &= s.lin_mask
    off = lin & 0xFFF
    if off + size <= 4096:
        view = s.tlbs[3 if user else 0][0].get(lin >> 12)
        if view is not None:
            return view[off] if size == 1 else int(_U[size](view, off)[0])
    else:
        return sum(rd_sys(s, lin + i, 1, user) << (8 * i) for i in range(size))
    return phys_read(s, fill(s, lin, READ, user=user), size)


def wr_sys(s: TcgCPU, lin: int, size: int, value: int, user: bool = False) -> None:
    lin &= s.lin_mask
    off = lin & 0xFFF
    if off + size <= 4096:
        view = s.tlbs[3 if user else 0][1].get(lin >> 12)
        if view is not None:
            if size == 1:
                view[off] = value & 0xFF
            else:
                _P[size](view, off, value & ((1 << (8 * size)) - 1))
            return
    else:
        # Both pages are translated (and may fault) before any byte is written, as ``wr``
        # does: a fault on the second page leaves the first untouched.
        first = 4096 - off
        p1 = fill(s, lin, WRITE, user=user)
        p2 = fill(s, (lin + first) & s.lin_mask, WRITE, user=user)
        for i in range(size):
            phys_write(s, (p1 + i) if i < first else (p2 + i - first), 1, value >> (8 * i))
        return
    phys_write(s, fill(s, lin, WRITE, user=user), size, value)


def check_write(s: TcgCPU, lin: int, size: int, user: bool) -> None:
    """Fault now if a later write of ``size`` bytes at ``lin`` would fault."""
    lin &= s.lin_mask
    wt = s.tlbs[3 if user else 0][1]
    if lin >> 12 not in wt:
        fill(s, lin, WRITE, user=user)
    end = (lin + size - 1) & s.lin_mask
    if end >> 12 != lin >> 12 and end >> 12 not in wt:
        fill(s, end, WRITE, user=user)


def read_bytes(s: TcgCPU, lin: int, n: int) -> bytes:
    return bytes(rd(s, lin + i, 1) for i in range(n))
