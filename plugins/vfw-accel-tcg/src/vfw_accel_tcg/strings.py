"""String instructions (MOVS STOS LODS CMPS SCAS INS OUTS) with REP prefixes.

They work on ``s.R`` and update RSI/RDI/RCX after every chunk, so a fault in the middle leaves
the architectural state of a partially executed REP instruction (it restarts from there).
REP MOVS and REP STOS with RAM on both sides copy page-sized chunks at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import flags as F
from . import mmu
from .consts import DF, MASK, R_ES, R_FS, R_GS
from .system import port_in, port_out

if TYPE_CHECKING:
    from .vcpu import TcgCPU

#: Elements a REP instruction handles one by one before letting interrupts in.
ELEMENT_BUDGET = 4096


def _bases(s: TcgCPU, seg: int) -> tuple[int, int]:
    if s.mode.bits == 64:
        return (s.sb[seg] if seg in (R_FS, R_GS) else 0), 0
    return s.sb[seg], s.sb[R_ES]


def _page(s: TcgCPU, lin: int, n: int, write: bool) -> memoryview | None:
    """The 4 KiB view of the RAM page holding ``lin`` (TLB first), None if not RAM.

    Views of one physical page are the same object, so ``is`` tells aliasing apart."""
    view = (s.wt if write else s.rt).get(lin >> 12)
    if view is not None:
        return view  # type: ignore[no-any-return]
    phys = mmu.fill(s, lin, mmu.WRITE if write else mmu.READ)
    views = mmu.page_views(s, phys >> 12)
    if views is None:
        return None
    view = views[1] if write else views[0]
    if view is None:
        return None
    if write and (phys >> 12) in s.tbc.code_pages:
        mmu._smc(s, phys, n)
    return view


def _ram_run(s: TcgCPU, lin: int, n: int, write: bool) -> memoryview | None:
    """A view of ``n`` bytes at ``lin`` if they are RAM in one page (filling the TLB)."""
    view = _page(s, lin, n, write)
    if view is None:
        return None
    off = lin & 0xFFF
    return view[off:off + n]


def H_STR(s: TcgCPU, op: str, size: int, rep: int, asz: int, seg: int) -> bool:
    """Execute a string instruction; False if a REP stopped early (it will resume)."""
    R = s.R
    env = s.env
    am = MASK[asz]
    lm = s.lin_mask
    back = bool(env.eflags & DF)
    step = -size if back else size
    sbase, dbase = _bases(s, seg)
    count = R[1] & am if rep else 1
    if count == 0:
        return True

    def setr(i: int, v: int) -> None:
        R[i] = _upd(R[i], v, asz)

    if rep and op in ("movs", "stos"):
        if back:
            count = _bulk_back(s, op, size, count, asz, sbase, dbase)
        else:
            count = _bulk(s, op, size, count, asz, sbase, dbase)
        if count == 0:
            return True
    budget = ELEMENT_BUDGET
    while count and budget:
        budget -= 1
        si, di = R[6] & am, R[7] & am
        if op == "movs":
            v = mmu.rd(s, (sbase + si) & lm, size)
            mmu.wr(s, (dbase + di) & lm, size, v)
            setr(6, si + step)
            setr(7, di + step)
        elif op == "stos":
            mmu.wr(s, (dbase + di) & lm, size, R[0] & MASK[size])
            setr(7, di + step)
        elif op == "lods":
            v = mmu.rd(s, (sbase + si) & lm, size)
            if size >= 4:
                R[0] = v
            else:
                R[0] = (R[0] & ~MASK[size]) | v
            setr(6, si + step)
        elif op == "cmps":
            a = mmu.rd(s, (sbase + si) & lm, size)
            b = mmu.rd(s, (dbase + di) & lm, size)
            setr(6, si + step)
            setr(7, di + step)
            _sub_flags(s, a, b, size)
        else:  # scas
            b = mmu.rd(s, (dbase + di) & lm, size)
            _sub_flags(s, R[0] & MASK[size], b, size)
            setr(7, di + step)
        count -= 1
        if rep:
            setr(1, count)
            if op in ("cmps", "scas"):
                zf = s.fa == s.fb
                if (rep == 0xF3 and not zf) or (rep == 0xF2 and zf):
                    return True
    return count == 0


def _sub_flags(s: TcgCPU, a: int, b: int, size: int) -> None:
    s.fop = F.fop_of(F.SUB, size)
    s.fa = a
    s.fb = b
    s.fr = (a - b) & MASK[size]


def _bulk(s: TcgCPU, op: str, size: int, count: int, asz: int, sbase: int, dbase: int
          ) -> int:
    """REP MOVS/STOS forwards over RAM, page chunk by chunk; returns the count left."""
    R = s.R
    am = MASK[asz]
    lm = s.lin_mask
    pattern = (R[0] & MASK[size]).to_bytes(size, "little")
    while count:
        si, di = R[6] & am, R[7] & am
        dl = (dbase + di) & lm
        room = 4096 - (dl & 0xFFF)
        if op == "movs":
            sl = (sbase + si) & lm
            room = min(room, 4096 - (sl & 0xFFF), am + 1 - si)
        room = min(room, am + 1 - di)
        n = min(count, room // size)
        if n == 0:
            return count  # an element straddles a page (or wraps): one by one
        nbytes = n * size
        dpage = _page(s, dl, nbytes, True)
        if dpage is None:
            return count
        dp = dl & 0xFFF
        dst = dpage[dp:dp + nbytes]
        if op == "stos":
            dst[:] = pattern * n
            R[7] = _upd(R[7], di + nbytes, asz)
        else:
            spage = _page(s, sl, nbytes, False)
            if spage is None:
                return count
            sp = sl & 0xFFF
            src = spage[sp:sp + nbytes]
            if spage is dpage and sp < dp < sp + nbytes:
                # Overlapping forward copy: the CPU copies element by element, so the
                # source pattern repeats; do it in chunks no longer than the distance.
                dist = dp - sp
                if dist < size:
                    return count
                done = 0
                while done < nbytes:
                    k = min(dist, nbytes - done)
                    dst[done:done + k] = src[done:done + k].tobytes()
                    done += k
            else:
                dst[:] = src
            R[6] = _upd(R[6], si + nbytes, asz)
            R[7] = _upd(R[7], di + nbytes, asz)
        count -= n
        R[1] = _upd(R[1], count, asz)
    return 0


def _bulk_back(s: TcgCPU, op: str, size: int, count: int, asz: int, sbase: int, dbase: int
               ) -> int:
    """REP MOVS/STOS with DF=1 over RAM: chunks below RDI/RSI; returns the count left."""
    R = s.R
    am = MASK[asz]
    lm = s.lin_mask
    pattern = (R[0] & MASK[size]).to_bytes(size, "little")
    while count:
        si, di = R[6] & am, R[7] & am
        dl = (dbase + di) & lm
        if (dl & 0xFFF) + size > 4096:
            return count
        n = min(count, (dl & 0xFFF) // size + 1, di // size + 1)
        if op == "movs":
            sl = (sbase + si) & lm
            if (sl & 0xFFF) + size > 4096:
                return count
            n = min(n, (sl & 0xFFF) // size + 1, si // size + 1)
        nbytes = n * size
        low_d = dl - nbytes + size
        dpage = _page(s, low_d, nbytes, True)
        if dpage is None:
            return count
        dp = low_d & 0xFFF
        dst = dpage[dp:dp + nbytes]
        if op == "stos":
            dst[:] = pattern * n
            R[7] = _upd(R[7], di - nbytes, asz)
        else:
            low_s = sl - nbytes + size
            spage = _page(s, low_s, nbytes, False)
            if spage is None:
                return count
            sp = low_s & 0xFFF
            src = spage[sp:sp + nbytes]
            if spage is dpage and dp < sp < dp + nbytes:
                return count  # copying downwards over itself: element by element
            dst[:] = src.tobytes()
            R[6] = _upd(R[6], si - nbytes, asz)
            R[7] = _upd(R[7], di - nbytes, asz)
        count -= n
        R[1] = _upd(R[1], count, asz)
    return 0


def _upd(old: int, v: int, asz: int) -> int:
    m = MASK[asz]
    if asz >= 4:
        return v & m
    return (old & ~m) | (v & m)


def H_STRIO(s: TcgCPU, ins: bool, size: int, rep: int, asz: int, seg: int, rip: int,
            next_rip: int) -> int:
    """INS/OUTS (with REP): element by element through the port I/O path."""
    R = s.R
    am = MASK[asz]
    lm = s.lin_mask
    step = -size if s.env.eflags & DF else size
    sbase, dbase = _bases(s, seg)
    count = R[1] & am if rep else 1
    port = R[2] & 0xFFFF
    budget = ELEMENT_BUDGET
    while count and budget:
        budget -= 1
        if ins:
            di = R[7] & am
            lin = (dbase + di) & lm
            mmu.check_write(s, lin, size, s.cpl == 3)
            v = port_in(s, port, size)
            mmu.wr(s, lin, size, v)
            R[7] = _upd(R[7], di + step, asz)
        else:
            si = R[6] & am
            v = mmu.rd(s, (sbase + si) & lm, size)
            port_out(s, port, size, v)
            R[6] = _upd(R[6], si + step, asz)
        count -= 1
        if rep:
            R[1] = _upd(R[1], count, asz)
    return next_rip if count == 0 else rip
