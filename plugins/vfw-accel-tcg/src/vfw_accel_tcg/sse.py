"""SSE/SSE2 integer and move instructions, MXCSR, FXSAVE/FXRSTOR.

XMM registers are 128-bit ints in ``env.xmm``. Lane-wise operations unpack with struct; they
are rare enough in kernels and the C library's string functions for that to be fine.
Floating-point arithmetic, compares and conversions are at the end (see the notes there).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from capstone import x86_const as X

from . import mmu
from .consts import CR0_EM, CR0_TS, M32, M64, MASK
from .decode import (
    CMPPD_ID,
    CMPPS_ID,
    CMPSD_ID,
    CMPSS_ID,
    GPR,
    OP_IMM,
    OP_MEM,
    OP_REG,
    XMM,
    Insn,
)
from .excp import CpuException

if TYPE_CHECKING:
    from .translate import Translator
    from .vcpu import TcgCPU

I = X  # noqa: E741
M128 = (1 << 128) - 1
_FMT = {1: struct.Struct("<16B"), 2: struct.Struct("<8H"), 4: struct.Struct("<4I"),
        8: struct.Struct("<2Q")}


def lanes(v: int, w: int) -> tuple[int, ...]:
    return _FMT[w].unpack(v.to_bytes(16, "little"))


def join(vals: list[int] | tuple[int, ...], w: int) -> int:
    m = MASK[w]
    return int.from_bytes(_FMT[w].pack(*(x & m for x in vals)), "little")


def _signed(x: int, w: int) -> int:
    s = 1 << (8 * w - 1)
    return (x ^ s) - s


def _binop(w: int, fn: Callable[[int, int], int]) -> Callable[[int, int], int]:
    def op(a: int, b: int) -> int:
        return join([fn(x, y) for x, y in zip(lanes(a, w), lanes(b, w), strict=True)], w)
    return op


def _cmpeq(w: int) -> Callable[[int, int], int]:
    m = MASK[w]
    return _binop(w, lambda x, y: m if x == y else 0)


def _cmpgt(w: int) -> Callable[[int, int], int]:
    m = MASK[w]
    return _binop(w, lambda x, y: m if _signed(x, w) > _signed(y, w) else 0)


def _sat_u(w: int, v: int) -> int:
    return max(0, min(MASK[w], v))


def _mk_ops() -> dict[str, Callable[[int, int], int]]:
    ops: dict[str, Callable[[int, int], int]] = {}
    for name, w in (("b", 1), ("w", 2), ("d", 4), ("q", 8)):
        ops[f"padd{name}"] = _binop(w, lambda x, y: x + y)
        ops[f"psub{name}"] = _binop(w, lambda x, y: x - y)
        ops[f"pcmpeq{name}"] = _cmpeq(w)
        ops[f"pcmpgt{name}"] = _cmpgt(w)
    ops["pminub"] = _binop(1, min)
    ops["pmaxub"] = _binop(1, max)
    ops["pminsw"] = _binop(2, lambda x, y: x if _signed(x, 2) < _signed(y, 2) else y)
    ops["pmaxsw"] = _binop(2, lambda x, y: x if _signed(x, 2) > _signed(y, 2) else y)
    ops["psubusb"] = _binop(1, lambda x, y: _sat_u(1, x - y))
    ops["psubusw"] = _binop(2, lambda x, y: _sat_u(2, x - y))
    ops["paddusb"] = _binop(1, lambda x, y: _sat_u(1, x + y))
    ops["paddusw"] = _binop(2, lambda x, y: _sat_u(2, x + y))
    ops["pavgb"] = _binop(1, lambda x, y: (x + y + 1) >> 1)
    ops["pavgw"] = _binop(2, lambda x, y: (x + y + 1) >> 1)
    ops["pmullw"] = _binop(2, lambda x, y: x * y)
    ops["pmulhuw"] = _binop(2, lambda x, y: (x * y) >> 16)
    ops["pmulhw"] = _binop(2, lambda x, y: (_signed(x, 2) * _signed(y, 2)) >> 16)

    def pmuludq(a: int, b: int) -> int:
        return (((a & M32) * (b & M32)) | (((a >> 64) & M32) * ((b >> 64) & M32) << 64)) & M128
    ops["pmuludq"] = pmuludq
    ops["pxor"] = lambda a, b: a ^ b
    ops["por"] = lambda a, b: a | b
    ops["pand"] = lambda a, b: a & b
    ops["pandn"] = lambda a, b: (a ^ M128) & b

    def unpack(w: int, high: bool) -> Callable[[int, int], int]:
        def fn(a: int, b: int) -> int:
            la, lb = lanes(a, w), lanes(b, w)
            half = len(la) // 2
            sa = la[half:] if high else la[:half]
            sb = lb[half:] if high else lb[:half]
            out: list[int] = []
            for x, y in zip(sa, sb, strict=True):
                out += [x, y]
            return join(out, w)
        return fn
    for name, w in (("bw", 1), ("wd", 2), ("dq", 4), ("qdq", 8)):
        ops[f"punpckl{name}"] = unpack(w, False)
        ops[f"punpckh{name}"] = unpack(w, True)
    ops["unpcklps"] = unpack(4, False)
    ops["unpckhps"] = unpack(4, True)
    ops["unpcklpd"] = unpack(8, False)
    ops["unpckhpd"] = unpack(8, True)

    def packuswb(a: int, b: int) -> int:
        vals = [_sat_u(1, _signed(x, 2)) for x in lanes(a, 2) + lanes(b, 2)]
        return join(vals, 1)

    def packsswb(a: int, b: int) -> int:
        vals = [max(-128, min(127, _signed(x, 2))) for x in lanes(a, 2) + lanes(b, 2)]
        return join(vals, 1)

    def packssdw(a: int, b: int) -> int:
        vals = [max(-32768, min(32767, _signed(x, 4))) for x in lanes(a, 4) + lanes(b, 4)]
        return join(vals, 2)
    ops["packuswb"] = packuswb
    ops["packsswb"] = packsswb
    ops["packssdw"] = packssdw

    def psadbw(a: int, b: int) -> int:
        la, lb = lanes(a, 1), lanes(b, 1)
        lo = sum(abs(x - y) for x, y in zip(la[:8], lb[:8], strict=True))
        hi = sum(abs(x - y) for x, y in zip(la[8:], lb[8:], strict=True))
        return lo | (hi << 64)
    ops["psadbw"] = psadbw
    for n in ("xorps", "xorpd"):
        ops[n] = ops["pxor"]
    for n in ("andps", "andpd"):
        ops[n] = ops["pand"]
    for n in ("andnps", "andnpd"):
        ops[n] = ops["pandn"]
    for n in ("orps", "orpd"):
        ops[n] = ops["por"]
    return ops


OPS = _mk_ops()


def pshufd(v: int, imm: int) -> int:
    la = lanes(v, 4)
    return join([la[(imm >> (2 * i)) & 3] for i in range(4)], 4)


def pshuflw(v: int, imm: int) -> int:
    la = lanes(v, 2)
    lo = [la[(imm >> (2 * i)) & 3] for i in range(4)]
    return join(lo + list(la[4:]), 2)


def pshufhw(v: int, imm: int) -> int:
    la = lanes(v, 2)
    hi = [la[4 + ((imm >> (2 * i)) & 3)] for i in range(4)]
    return join(list(la[:4]) + hi, 2)


def shufps(a: int, b: int, imm: int) -> int:
    la, lb = lanes(a, 4), lanes(b, 4)
    return join([la[imm & 3], la[(imm >> 2) & 3], lb[(imm >> 4) & 3], lb[(imm >> 6) & 3]], 4)


def shufpd(a: int, b: int, imm: int) -> int:
    la, lb = lanes(a, 8), lanes(b, 8)
    return join([la[imm & 1], lb[(imm >> 1) & 1]], 8)


def pmovmskb(v: int) -> int:
    return sum(((x >> 7) & 1) << i for i, x in enumerate(lanes(v, 1)))


def movmskps(v: int) -> int:
    return sum(((x >> 31) & 1) << i for i, x in enumerate(lanes(v, 4)))


def movmskpd(v: int) -> int:
    return ((v >> 63) & 1) | (((v >> 127) & 1) << 1)


def pshift(v: int, count: int, w: int, kind: str) -> int:
    bits = 8 * w
    if kind == "l":
        if count >= bits:
            return 0
        return join([x << count for x in lanes(v, w)], w)
    if kind == "r":
        if count >= bits:
            return 0
        return join([x >> count for x in lanes(v, w)], w)
    count = min(count, bits - 1)
    return join([_signed(x, w) >> count for x in lanes(v, w)], w)


def pslldq(v: int, n: int) -> int:
    return 0 if n > 15 else (v << (8 * n)) & M128


def psrldq(v: int, n: int) -> int:
    return 0 if n > 15 else v >> (8 * n)


def pinsrw(v: int, x: int, imm: int) -> int:
    sh = 16 * (imm & 7)
    return (v & ~(0xFFFF << sh) & M128) | ((x & 0xFFFF) << sh)


def rd128(s: TcgCPU, lin: int, align: bool) -> int:
    if align and lin & 15:
        raise CpuException(13, 0)
    lo = mmu.rd(s, lin, 8)
    hi = mmu.rd(s, (lin + 8) & s.lin_mask, 8)
    return lo | (hi << 64)


def wr128(s: TcgCPU, lin: int, v: int, align: bool) -> None:
    if align and lin & 15:
        raise CpuException(13, 0)
    mmu.check_write(s, lin, 16, s.cpl == 3)
    mmu.wr(s, lin, 8, v & M64)
    mmu.wr(s, (lin + 8) & s.lin_mask, 8, v >> 64)


def ldmxcsr(s: TcgCPU, v: int) -> None:
    if v & ~0xFFFF:
        raise CpuException(13, 0)
    s.env.mxcsr = v


def fxsave(s: TcgCPU, lin: int, wide: bool) -> None:
    if lin & 15:
        raise CpuException(13, 0)
    env = s.env
    buf = bytearray(512)
    struct.pack_into("<HHBxH", buf, 0, env.fcw, env.fsw, env.ftw & 0xFF, env.fop)
    if wide:
        struct.pack_into("<QQ", buf, 8, env.fip, env.fdp)
    else:
        struct.pack_into("<IxxxxIxxxx", buf, 8, env.fip & M32, env.fdp & M32)
    struct.pack_into("<II", buf, 24, env.mxcsr, 0xFFFF)
    for i in range(8):
        buf[32 + 16 * i:42 + 16 * i] = (env.st[i] & ((1 << 80) - 1)).to_bytes(10, "little")
    nx = 16 if s.mode.bits == 64 else 8
    for i in range(nx):
        buf[160 + 16 * i:176 + 16 * i] = env.xmm[i].to_bytes(16, "little")
    mmu.check_write(s, lin, 512, s.cpl == 3)
    for off in range(0, 512, 8):
        mmu.wr(s, (lin + off) & s.lin_mask, 8, int.from_bytes(buf[off:off + 8], "little"))


def fxrstor(s: TcgCPU, lin: int, wide: bool) -> None:
    if lin & 15:
        raise CpuException(13, 0)
    env = s.env
    buf = b"".join(mmu.rd(s, (lin + off) & s.lin_mask, 8).to_bytes(8, "little")
                   for off in range(0, 512, 8))
    mxcsr = struct.unpack_from("<I", buf, 24)[0]
    if mxcsr & ~0xFFFF:
        raise CpuException(13, 0)
    env.fcw, env.fsw, env.ftw, env.fop = struct.unpack_from("<HHBxH", buf, 0)
    if wide:
        env.fip, env.fdp = struct.unpack_from("<QQ", buf, 8)
    else:
        env.fip, env.fdp = struct.unpack_from("<IxxxxIxxxx", buf, 8)
    env.mxcsr = mxcsr
    for i in range(8):
        env.st[i] = int.from_bytes(buf[32 + 16 * i:42 + 16 * i], "little")
    nx = 16 if s.mode.bits == 64 else 8
    for i in range(nx):
        env.xmm[i] = int.from_bytes(buf[160 + 16 * i:176 + 16 * i], "little")


# -- emitters --------------------------------------------------------------------------------

_MOV128 = {I.X86_INS_MOVAPS: True, I.X86_INS_MOVAPD: True, I.X86_INS_MOVDQA: True,
           I.X86_INS_MOVUPS: False, I.X86_INS_MOVUPD: False, I.X86_INS_MOVDQU: False,
           I.X86_INS_LDDQU: False, I.X86_INS_MOVNTDQ: True, I.X86_INS_MOVNTPS: True,
           I.X86_INS_MOVNTPD: True, I.X86_INS_MOVNTDQA: True}
_BIN = {getattr(I, f"X86_INS_{n.upper()}"): n for n in OPS if hasattr(I, f"X86_INS_{n.upper()}")}
_SHIFT = {I.X86_INS_PSLLW: (2, "l"), I.X86_INS_PSLLD: (4, "l"), I.X86_INS_PSLLQ: (8, "l"),
          I.X86_INS_PSRLW: (2, "r"), I.X86_INS_PSRLD: (4, "r"), I.X86_INS_PSRLQ: (8, "r"),
          I.X86_INS_PSRAW: (2, "a"), I.X86_INS_PSRAD: (4, "a")}


#: arithmetic: id -> (op name, lane width, scalar)
_FARITH = {getattr(I, f"X86_INS_{op.upper()}{sfx}"): (op, 8 if sfx[1] == "D" else 4, sfx[0] == "S")
           for op in ("add", "sub", "mul", "div", "min", "max", "sqrt")
           for sfx in ("SD", "SS", "PD", "PS")}
#: conversions to a general register: id -> (lane width, truncate)
_F2SI = {I.X86_INS_CVTTSD2SI: (8, True), I.X86_INS_CVTSD2SI: (8, False),
         I.X86_INS_CVTTSS2SI: (4, True), I.X86_INS_CVTSS2SI: (4, False)}
#: packed conversions: id -> (kind, memory operand size)
_CVTP = {I.X86_INS_CVTDQ2PD: ("dq2pd", 8), I.X86_INS_CVTDQ2PS: ("dq2ps", 16),
         I.X86_INS_CVTTPD2DQ: ("tpd2dq", 16), I.X86_INS_CVTPD2DQ: ("pd2dq", 16),
         I.X86_INS_CVTTPS2DQ: ("tps2dq", 16), I.X86_INS_CVTPS2DQ: ("ps2dq", 16),
         I.X86_INS_CVTPD2PS: ("pd2ps", 16), I.X86_INS_CVTPS2PD: ("ps2pd", 8)}
#: (U)COMISx: id -> lane width
COMI_IDS = {I.X86_INS_UCOMISD: 8, I.X86_INS_COMISD: 8, I.X86_INS_UCOMISS: 4,
            I.X86_INS_COMISS: 4}
#: CMPxx (synthetic ids from decode): id -> (lane width, scalar)
_FCMP = {CMPSS_ID: (4, True), CMPSD_ID: (8, True), CMPPS_ID: (4, False),
         CMPPD_ID: (8, False)}


def sse_fallback(tr: Translator, insn: Insn) -> None:
    """MOVSD/CMPSD with XMM operands share capstone ids with the string instructions."""
    em = sse_emitters(tr)
    if insn.id == I.X86_INS_MOVSD:
        em[-1](insn)
    else:
        tr.unimplemented(insn, "SSE compare")


def sse_emitters(tr: Translator) -> dict[int, Callable[[Insn], None]]:
    from .codegen import Untranslatable

    def check(insn: Insn) -> None:
        mode = tr.mode
        if any(o.kind == OP_REG and o.rclass not in (XMM, GPR) for o in insn.ops):
            raise Untranslatable("MMX register operand")
        if mode.fpu_ts_em & CR0_EM or not mode.osfxsr:
            tr.cg.emit("raise CpuException(6)")
            from .translate import BlockEnd

            raise BlockEnd()
        if mode.fpu_ts_em & CR0_TS:
            tr.cg.emit("raise CpuException(7)")
            from .translate import BlockEnd

            raise BlockEnd()
        tr.cg.need.add("E")

    def src128(insn: Insn, op: object, align: bool) -> str:
        from .decode import Op

        assert isinstance(op, Op)
        cg = tr.cg
        if op.kind == OP_REG:
            return f"E.xmm[{op.reg}]"
        ad = cg.addr(op, insn)
        t = cg.t("x")
        cg.emit(f"{t} = RD128(s, {ad}, {align})")
        return t

    def mov128(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        align = _MOV128[insn.id]
        if d.kind == OP_MEM:
            v = f"E.xmm[{s.reg}]"
            ad = cg.addr(d, insn)
            cg.emit(f"WR128(s, {ad}, {v}, {align})")
            return
        v = src128(insn, s, align)
        cg.emit(f"E.xmm[{d.reg}] = {v}")

    def binop(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        v = src128(insn, s, True)
        cg.emit(f"E.xmm[{d.reg}] = SSE[{_BIN[insn.id]!r}](E.xmm[{d.reg}], {v})")

    def movq_d(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        size = 4 if insn.id == I.X86_INS_MOVD else 8
        if insn.id == I.X86_INS_MOVQ and s.kind == OP_REG and s.rclass == GPR:
            size = 8
        if d.kind == OP_REG and d.rclass == XMM:
            if s.kind == OP_REG and s.rclass == XMM:
                cg.emit(f"E.xmm[{d.reg}] = E.xmm[{s.reg}] & {M64}")
                return
            v = cg.read(s, insn, size)
            cg.emit(f"E.xmm[{d.reg}] = {v}")
            return
        v = f"(E.xmm[{s.reg}] & {MASK[size]})"
        if d.kind == OP_MEM:
            cg.store(cg.addr(d, insn), size, v)
        else:
            cg.rset(d.reg, size, v)

    def movs_scalar(insn: Insn, size: int) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        m = MASK[size]
        if d.kind == OP_MEM:
            cg.store(cg.addr(d, insn), size, f"(E.xmm[{s.reg}] & {m})")
        elif s.kind == OP_MEM:
            v = cg.read(s, insn, size)
            cg.emit(f"E.xmm[{d.reg}] = {v}")
        else:
            cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & ~{m}) | (E.xmm[{s.reg}] & {m})")

    def movhl(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        i = insn.id
        high = i in (I.X86_INS_MOVHPS, I.X86_INS_MOVHPD)
        if i == I.X86_INS_MOVHLPS:
            cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & ~{M64}) | (E.xmm[{s.reg}] >> 64)")
            return
        if i == I.X86_INS_MOVLHPS:
            cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & {M64}) | "
                    f"((E.xmm[{s.reg}] & {M64}) << 64)")
            return
        if d.kind == OP_MEM:
            v = f"(E.xmm[{s.reg}] >> 64)" if high else f"(E.xmm[{s.reg}] & {M64})"
            cg.store(cg.addr(d, insn), 8, v)
            return
        v = cg.read(s, insn, 8)
        if high:
            cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & {M64}) | ({v} << 64)")
        else:
            cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & ~{M64}) | {v}")

    def shuf(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s, imm = insn.ops
        v = src128(insn, s, True)
        fn = {I.X86_INS_PSHUFD: "PSHUFD", I.X86_INS_PSHUFLW: "PSHUFLW",
              I.X86_INS_PSHUFHW: "PSHUFHW"}.get(insn.id)
        if fn is not None:
            cg.emit(f"E.xmm[{d.reg}] = {fn}({v}, {imm.imm & 0xFF})")
        else:
            fn = "SHUFPS" if insn.id == I.X86_INS_SHUFPS else "SHUFPD"
            cg.emit(f"E.xmm[{d.reg}] = {fn}(E.xmm[{d.reg}], {v}, {imm.imm & 0xFF})")

    def pmovmsk(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        fn = {I.X86_INS_PMOVMSKB: "PMOVMSKB", I.X86_INS_MOVMSKPS: "MOVMSKPS",
              I.X86_INS_MOVMSKPD: "MOVMSKPD"}[insn.id]
        t = cg.t()
        cg.emit(f"{t} = {fn}(E.xmm[{s.reg}])")
        cg.rset(d.reg, 8 if d.size == 8 else 4, t)

    def pshift_e(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        w, kind = _SHIFT[insn.id]
        if s.kind == OP_IMM:
            cnt = str(s.imm & 0xFF)
        else:
            v = src128(insn, s, True)
            cnt = f"min({v} & {M64}, 255)"
        cg.emit(f"E.xmm[{d.reg}] = PSHIFT(E.xmm[{d.reg}], {cnt}, {w}, {kind!r})")

    def bshift(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        fn = "PSLLDQ" if insn.id == I.X86_INS_PSLLDQ else "PSRLDQ"
        cg.emit(f"E.xmm[{d.reg}] = {fn}(E.xmm[{d.reg}], {s.imm & 0xFF})")

    def pextrw(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s, imm = insn.ops
        if d.kind != OP_REG or s.kind != OP_REG:
            raise Untranslatable("pextrw form")
        cg.rset(d.reg, 4, f"((E.xmm[{s.reg}] >> {16 * (imm.imm & 7)}) & 65535)")

    def pinsrw_e(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s, imm = insn.ops
        v = cg.read(s, insn, 2)
        cg.emit(f"E.xmm[{d.reg}] = PINSRW(E.xmm[{d.reg}], {v}, {imm.imm & 7})")

    def mxcsr(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        (op,) = insn.ops
        if insn.id == I.X86_INS_LDMXCSR:
            v = cg.read(op, insn, 4)
            cg.emit(f"LDMXCSR(s, {v})")
        else:
            cg.store(cg.addr(op, insn), 4, "E.mxcsr")

    def fx(insn: Insn) -> None:
        mode = tr.mode
        if mode.fpu_ts_em & (CR0_TS | CR0_EM):
            tr.cg.emit(f"raise CpuException({7 if mode.fpu_ts_em & CR0_TS else 6})")
            from .translate import BlockEnd

            raise BlockEnd()
        cg = tr.cg
        (op,) = insn.ops
        ad = cg.addr(op, insn)
        wide = insn.id in (I.X86_INS_FXSAVE64, I.X86_INS_FXRSTOR64)
        fn = "FXSAVE" if insn.id in (I.X86_INS_FXSAVE, I.X86_INS_FXSAVE64) else "FXRSTOR"
        cg.emit(f"{fn}(s, {ad}, {wide})")

    def fsrc(insn: Insn, op: object, size: int) -> str:
        """A float source: an XMM register (whole), or ``size`` bytes of memory."""
        from .decode import Op

        assert isinstance(op, Op)
        if op.kind == OP_REG:
            return f"E.xmm[{op.reg}]"
        if size == 16:
            return src128(insn, op, True)
        return tr.cg.read(op, insn, size)

    def farith(insn: Insn) -> None:
        check(insn)
        d, s = insn.ops
        name, w, scalar = _FARITH[insn.id]
        v = fsrc(insn, s, w if scalar else 16)
        fn = "FOP_S" if scalar else "FOP_P"
        tr.cg.emit(f"E.xmm[{d.reg}] = {fn}({name!r}, E.xmm[{d.reg}], {v}, {w})")

    def fcmp(insn: Insn) -> None:
        check(insn)
        d, s, imm = insn.ops
        w, scalar = _FCMP[insn.id]
        v = fsrc(insn, s, w if scalar else 16)
        fn = "FCMP_S" if scalar else "FCMP_P"
        tr.cg.emit(f"E.xmm[{d.reg}] = {fn}({imm.imm & 7}, E.xmm[{d.reg}], {v}, {w})")

    def comi(insn: Insn) -> None:
        from . import flags as F

        check(insn)
        cg = tr.cg
        d, s = insn.ops
        w = COMI_IDS[insn.id]
        v = fsrc(insn, s, w)
        t = cg.t()
        cg.emit(f"{t} = COMI(E.xmm[{d.reg}], {v}, {w})")
        cg.set_flags(F.EFLAGS, 4, r=t)

    def cvtsi2s(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        w = 8 if insn.id == I.X86_INS_CVTSI2SD else 4
        size = 8 if s.size == 8 else 4
        v = cg.read(s, insn, size)
        cg.emit(f"E.xmm[{d.reg}] = (E.xmm[{d.reg}] & {M128 ^ MASK[w]}) | INT2F({v}, {size}, {w})")

    def cvt2si(insn: Insn) -> None:
        check(insn)
        cg = tr.cg
        d, s = insn.ops
        w, trunc = _F2SI[insn.id]
        size = 8 if d.size == 8 else 4
        v = fsrc(insn, s, w)
        t = cg.t()
        cg.emit(f"{t} = F2INT({v}, {w}, {size}, {trunc})")
        cg.rset(d.reg, size, t)

    def cvts(insn: Insn) -> None:
        check(insn)
        d, s = insn.ops
        kind, w = ("sd", 4) if insn.id == I.X86_INS_CVTSS2SD else ("ss", 8)
        v = fsrc(insn, s, w)
        tr.cg.emit(f"E.xmm[{d.reg}] = CVT_S({kind!r}, E.xmm[{d.reg}], {v})")

    def cvtp(insn: Insn) -> None:
        check(insn)
        d, s = insn.ops
        kind, msize = _CVTP[insn.id]
        v = fsrc(insn, s, msize)
        tr.cg.emit(f"E.xmm[{d.reg}] = CVT_P({kind!r}, {v})")

    t: dict[int, Callable[[Insn], None]] = {}
    for i in _FARITH:
        t[i] = farith
    for i in _FCMP:
        t[i] = fcmp
    for i in COMI_IDS:
        t[i] = comi
    for i in _F2SI:
        t[i] = cvt2si
    for i in _CVTP:
        t[i] = cvtp
    t[I.X86_INS_CVTSI2SD] = t[I.X86_INS_CVTSI2SS] = cvtsi2s
    t[I.X86_INS_CVTSS2SD] = t[I.X86_INS_CVTSD2SS] = cvts
    for i in _MOV128:
        t[i] = mov128
    for i in _BIN:
        t[i] = binop
    for i in _SHIFT:
        t[i] = pshift_e
    t.update({
        I.X86_INS_MOVQ: movq_d, I.X86_INS_MOVD: movq_d,
        I.X86_INS_MOVSS: lambda insn: movs_scalar(insn, 4),
        -1: lambda insn: movs_scalar(insn, 8),
        I.X86_INS_MOVLPS: movhl, I.X86_INS_MOVHPS: movhl, I.X86_INS_MOVLPD: movhl,
        I.X86_INS_MOVHPD: movhl, I.X86_INS_MOVHLPS: movhl, I.X86_INS_MOVLHPS: movhl,
        I.X86_INS_PSHUFD: shuf, I.X86_INS_PSHUFLW: shuf, I.X86_INS_PSHUFHW: shuf,
        I.X86_INS_SHUFPS: shuf, I.X86_INS_SHUFPD: shuf, I.X86_INS_PMOVMSKB: pmovmsk,
        I.X86_INS_MOVMSKPS: pmovmsk, I.X86_INS_MOVMSKPD: pmovmsk,
        I.X86_INS_PSLLDQ: bshift, I.X86_INS_PSRLDQ: bshift, I.X86_INS_PEXTRW: pextrw,
        I.X86_INS_PINSRW: pinsrw_e, I.X86_INS_LDMXCSR: mxcsr, I.X86_INS_STMXCSR: mxcsr,
        I.X86_INS_FXSAVE: fx, I.X86_INS_FXSAVE64: fx, I.X86_INS_FXRSTOR: fx,
        I.X86_INS_FXRSTOR64: fx,
    })
    return t


# -- floating point (SSE/SSE2) -----------------------------------------------------------------
# Lanes are raw IEEE bit patterns; arithmetic goes through Python floats (binary64). Single
# precision is computed exactly in binary64 and rounded once to binary32 (innocuous double
# rounding for + - * / sqrt). Rounding is always round-to-nearest-even: MXCSR.RC, FTZ and DAZ
# are ignored and no MXCSR exception flags are set (all exceptions behave as masked).

_D = struct.Struct("<d")
_F = struct.Struct("<f")
_Q = struct.Struct("<Q")
_L = struct.Struct("<I")
DNAN64, DNAN32 = 0xFFF8000000000000, 0xFFC00000
_EXP = {8: 0x7FF0000000000000, 4: 0x7F800000}
_QBIT = {8: 1 << 51, 4: 1 << 22}
_FRAC = {8: (1 << 52) - 1, 4: (1 << 23) - 1}


def _isnan(x: int, w: int) -> bool:
    e = _EXP[w]
    return (x & e) == e and bool(x & _FRAC[w])


def f2v(x: int, w: int) -> float:
    if w == 8:
        return _D.unpack(_Q.pack(x))[0]
    return _F.unpack(_L.pack(x))[0]


def v2f(v: float, w: int) -> int:
    """Bits of ``v`` rounded to the lane width (a NaN becomes the default NaN)."""
    if v != v:
        return DNAN64 if w == 8 else DNAN32
    if w == 8:
        return _Q.unpack(_D.pack(v))[0]
    try:
        return _L.unpack(_F.pack(v))[0]
    except OverflowError:
        return 0xFF800000 if v < 0 else 0x7F800000


def _div(x: float, y: float) -> float:
    try:
        return x / y
    except ZeroDivisionError:
        if x != x or x == 0:
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)


def _sqrt(_: float, y: float) -> float:
    return math.nan if y < 0 else math.sqrt(y)


_ARITH: dict[str, Callable[[float, float], float]] = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
    "div": _div, "sqrt": _sqrt,
}


def pick_nan(a: int, b: int, w: int) -> int:
    """SSE rule: the first source operand's NaN if it is one, else the second's; quieted."""
    return (a if _isnan(a, w) else b) | _QBIT[w]


def fop1(name: str, a: int, b: int, w: int) -> int:
    """One lane of ``name``: ``a`` is the first (destination) source, ``b`` the second."""
    if name == "min":
        return a if f2v(a, w) < f2v(b, w) else b
    if name == "max":
        return a if f2v(a, w) > f2v(b, w) else b
    if (name != "sqrt" and _isnan(a, w)) or _isnan(b, w):
        return pick_nan(a if name != "sqrt" else 0, b, w)
    return v2f(_ARITH[name](f2v(a, w), f2v(b, w)), w)


def fop_s(name: str, a: int, b: int, w: int) -> int:
    """Scalar form: the low lane of ``a`` gets the result, the rest of ``a`` is kept."""
    m = MASK[w]
    return (a & ~m & M128) | fop1(name, a & m, b & m, w)


def fop_p(name: str, a: int, b: int, w: int) -> int:
    return join([fop1(name, x, y, w) for x, y in zip(lanes(a, w), lanes(b, w), strict=True)], w)


def fcmp1(pred: int, a: int, b: int, w: int) -> int:
    x, y = f2v(a, w), f2v(b, w)
    un = x != x or y != y
    r = (x == y, x < y, x <= y, un)[pred & 3]
    if pred & 4:
        r = not r
    return MASK[w] if r else 0


def fcmp_s(pred: int, a: int, b: int, w: int) -> int:
    m = MASK[w]
    return (a & ~m & M128) | fcmp1(pred, a & m, b & m, w)


def fcmp_p(pred: int, a: int, b: int, w: int) -> int:
    return join([fcmp1(pred, x, y, w) for x, y in zip(lanes(a, w), lanes(b, w), strict=True)], w)


def comi(a: int, b: int, w: int) -> int:
    """EFLAGS (ZF, PF, CF) of COMISx/UCOMISx; OF, SF and AF are cleared."""
    x, y = f2v(a & MASK[w], w), f2v(b & MASK[w], w)
    if x != x or y != y:
        return 0x45
    return 0x40 if x == y else (1 if x < y else 0)


def int2f(n: int, src: int, w: int) -> int:
    """Bits of the signed ``src``-byte integer ``n`` rounded to a float of width ``w``."""
    n = _signed(n & MASK[src], src)
    if w == 4:
        m = abs(n)
        bl = m.bit_length()
        if bl > 24:  # round to 24 bits here: int -> binary64 -> binary32 could round twice
            sh = bl - 24
            q, r = m >> sh, m & ((1 << sh) - 1)
            half = 1 << (sh - 1)
            if r > half or (r == half and q & 1):
                q += 1
            m = q << sh
        return v2f(float(-m if n < 0 else m), 4)
    return v2f(float(n), 8)


def f2int(a: int, w: int, size: int, trunc: bool) -> int:
    """CVT(T)Sx2SI / CVT(T)Px2DQ lane: NaN and out-of-range give the integer indefinite."""
    x = f2v(a & MASK[w], w)
    ind = 1 << (8 * size - 1)
    if not math.isfinite(x):
        return ind
    n = math.trunc(x) if trunc else round(x)
    if not -ind <= n < ind:
        return ind
    return n & MASK[size]


def f2f(a: int, w: int) -> int:
    """Convert a float of width ``w`` to the other width (CVTSS2SD / CVTSD2SS lane)."""
    a &= MASK[w]
    if _isnan(a, w):
        if w == 4:
            return ((a >> 31) << 63) | 0x7FF8000000000000 | ((a & 0x3FFFFF) << 29)
        return ((a >> 63) << 31) | 0x7FC00000 | ((a >> 29) & 0x3FFFFF)
    return v2f(f2v(a, w), 12 - w)


def cvt_s(kind: str, a: int, b: int) -> int:
    """CVTSS2SD (``"sd"``) / CVTSD2SS (``"ss"``): low lane of ``a`` replaced."""
    if kind == "sd":
        return (a & ~M64 & M128) | f2f(b, 4)
    return (a & ~M32 & M128) | f2f(b, 8)


def cvt_p(kind: str, v: int) -> int:
    """Packed conversions, named after the instruction (lower case, without 'cvt')."""
    if kind == "dq2pd":
        return join([int2f(x, 4, 8) for x in lanes(v, 4)[:2]], 8)
    if kind == "dq2ps":
        return join([int2f(x, 4, 4) for x in lanes(v, 4)], 4)
    if kind in ("tpd2dq", "pd2dq"):
        return join([f2int(x, 8, 4, kind[0] == "t") for x in lanes(v, 8)] + [0, 0], 4)
    if kind in ("tps2dq", "ps2dq"):
        return join([f2int(x, 4, 4, kind[0] == "t") for x in lanes(v, 4)], 4)
    if kind == "pd2ps":
        return join([f2f(x, 8) for x in lanes(v, 8)] + [0, 0], 4)
    if kind == "ps2pd":
        return join([f2f(x, 4) for x in lanes(v, 4)[:2]], 8)
    raise ValueError(kind)
