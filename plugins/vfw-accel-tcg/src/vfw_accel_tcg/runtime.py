"""The global namespace translated blocks run in: memory fast paths, lazy-flag evaluation,
division, and every helper an emitter may call (by the names used in generated source)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from . import flags as F
from . import mmu, sse, strings, system
from .consts import MASK, PARITY, SIGN
from .excp import CpuException

if TYPE_CHECKING:
    from .vcpu import TcgCPU

_condtab: list[Any] = [None] * (len(F.KIND_NAMES) * 4 * 16)


def CC(s: TcgCPU, cc: int) -> bool:
    """Condition ``cc`` on the lazy flags stored in ``s``."""
    key = s.fop * 16 + cc
    fn = _condtab[key]
    if fn is None:
        fn = _condtab[key] = F.condfn(s.fop, cc)
    return fn(s.fa, s.fb, s.fr, s.fc)  # type: ignore[no-any-return]


def CFS(s: TcgCPU) -> int:
    return F.FLAGFN[s.fop](s.fa, s.fb, s.fr, s.fc) & 1


def FLS(s: TcgCPU) -> int:
    return F.FLAGFN[s.fop](s.fa, s.fb, s.fr, s.fc)


def PLAIN(s: TcgCPU, R: list[int], rip: int) -> int:
    return s.run_plain(R, rip)


def DIVU(n: int, d: int, size: int) -> tuple[int, int]:
    if d == 0:
        raise CpuException(0)
    q, r = divmod(n, d)
    if q > MASK[size]:
        raise CpuException(0)
    return q, r


def DIVS(n: int, d: int, size: int) -> tuple[int, int]:
    wide = SIGN[size] << (8 * size)
    n = (n ^ wide) - wide
    d = (d ^ SIGN[size]) - SIGN[size]
    if d == 0:
        raise CpuException(0)
    q = abs(n) // abs(d)
    if (n < 0) != (d < 0):
        q = -q
    r = n - q * d
    if not -SIGN[size] <= q < SIGN[size]:
        raise CpuException(0)
    return q & MASK[size], r & MASK[size]


NS: dict[str, Any] = {
    "U16": struct.Struct("<H").unpack_from, "U32": struct.Struct("<I").unpack_from,
    "U64": struct.Struct("<Q").unpack_from, "P16": struct.Struct("<H").pack_into,
    "P32": struct.Struct("<I").pack_into, "P64": struct.Struct("<Q").pack_into,
    "LE": (KeyError, struct.error), "RD": mmu.rd, "RDW": mmu.rdw, "WR": mmu.wr,
    "CC": CC, "CFS": CFS, "FLS": FLS, "PLAIN": PLAIN, "PARITY": PARITY, "DIVU": DIVU, "DIVS": DIVS,
    "CpuException": CpuException, "M64": (1 << 64) - 1, "M32": (1 << 32) - 1, "S64": 1 << 63,
    "H_STR": strings.H_STR, "H_STRIO": strings.H_STRIO,
    "RD128": sse.rd128, "WR128": sse.wr128, "SSE": sse.OPS, "PSHUFD": sse.pshufd,
    "PSHUFLW": sse.pshuflw, "PSHUFHW": sse.pshufhw, "SHUFPS": sse.shufps,
    "SHUFPD": sse.shufpd, "PMOVMSKB": sse.pmovmskb, "MOVMSKPS": sse.movmskps,
    "MOVMSKPD": sse.movmskpd, "PSHIFT": sse.pshift, "PSLLDQ": sse.pslldq,
    "PSRLDQ": sse.psrldq, "PINSRW": sse.pinsrw, "LDMXCSR": sse.ldmxcsr,
    "FXSAVE": sse.fxsave, "FXRSTOR": sse.fxrstor,
    "FOP_S": sse.fop_s, "FOP_P": sse.fop_p, "FCMP_S": sse.fcmp_s, "FCMP_P": sse.fcmp_p,
    "COMI": sse.comi, "INT2F": sse.int2f, "F2INT": sse.f2int, "CVT_S": sse.cvt_s,
    "CVT_P": sse.cvt_p,
}
NS.update({k: v for k, v in vars(system).items() if k.startswith("H_")})
#: runs of 2..8 pushes / pops (translate.emit_stack_run)
NS.update({f"{p}{n}Q": getattr(struct.Struct(f"<{n}Q"), fn) for n in range(2, 9)
           for p, fn in (("P", "pack_into"), ("U", "unpack_from"))})
