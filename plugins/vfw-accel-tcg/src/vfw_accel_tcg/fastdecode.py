"""A table-driven decoder for the common general-purpose instructions.

capstone through its Python binding costs ~30 us per instruction, most of a block's
translation. This decoder handles the instructions compilers emit most (ALU, MOV, LEA,
PUSH/POP, CALL/JMP/Jcc, shifts, TEST/CMP, MOVZX/MOVSX, SETcc/CMOVcc, bit operations,
MUL/DIV...) and produces the same IR as ``decode.Decoder`` with capstone's instruction ids;
anything else (F2/F3 prefixes, segment registers, system, x87, SSE...) returns None and
capstone decodes it. tests/test_fastdecode.py checks both agree on real code.
"""

from __future__ import annotations

from capstone import x86_const as X

from .consts import M16, M32, M64, MASK, R_DS, R_SS
from .decode import GPR, OP_IMM, OP_MEM, OP_REG, Insn, Op

_ALU_IDS = (X.X86_INS_ADD, X.X86_INS_OR, X.X86_INS_ADC, X.X86_INS_SBB, X.X86_INS_AND,
            X.X86_INS_SUB, X.X86_INS_XOR, X.X86_INS_CMP)
_SHIFT_IDS = (X.X86_INS_ROL, X.X86_INS_ROR, X.X86_INS_RCL, X.X86_INS_RCR, X.X86_INS_SHL,
              X.X86_INS_SHR, None, X.X86_INS_SAR)
_JCC_IDS = (X.X86_INS_JO, X.X86_INS_JNO, X.X86_INS_JB, X.X86_INS_JAE, X.X86_INS_JE,
            X.X86_INS_JNE, X.X86_INS_JBE, X.X86_INS_JA, X.X86_INS_JS, X.X86_INS_JNS,
            X.X86_INS_JP, X.X86_INS_JNP, X.X86_INS_JL, X.X86_INS_JGE, X.X86_INS_JLE,
            X.X86_INS_JG)
_SETCC_IDS = (X.X86_INS_SETO, X.X86_INS_SETNO, X.X86_INS_SETB, X.X86_INS_SETAE,
              X.X86_INS_SETE, X.X86_INS_SETNE, X.X86_INS_SETBE, X.X86_INS_SETA,
              X.X86_INS_SETS, X.X86_INS_SETNS, X.X86_INS_SETP, X.X86_INS_SETNP,
              X.X86_INS_SETL, X.X86_INS_SETGE, X.X86_INS_SETLE, X.X86_INS_SETG)
_CMOV_IDS = (X.X86_INS_CMOVO, X.X86_INS_CMOVNO, X.X86_INS_CMOVB, X.X86_INS_CMOVAE,
             X.X86_INS_CMOVE, X.X86_INS_CMOVNE, X.X86_INS_CMOVBE, X.X86_INS_CMOVA,
             X.X86_INS_CMOVS, X.X86_INS_CMOVNS, X.X86_INS_CMOVP, X.X86_INS_CMOVNP,
             X.X86_INS_CMOVL, X.X86_INS_CMOVGE, X.X86_INS_CMOVLE, X.X86_INS_CMOVG)
_GRP3_IDS = (X.X86_INS_TEST, None, X.X86_INS_NOT, X.X86_INS_NEG, X.X86_INS_MUL,
             X.X86_INS_IMUL, X.X86_INS_DIV, X.X86_INS_IDIV)
_BT_IDS = {0xA3: X.X86_INS_BT, 0xAB: X.X86_INS_BTS, 0xB3: X.X86_INS_BTR,
           0xBB: X.X86_INS_BTC}
_BTI_IDS = (None, None, None, None, X.X86_INS_BT, X.X86_INS_BTS, X.X86_INS_BTR,
            X.X86_INS_BTC)
_SEG_PREFIX = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
_LOCKABLE = {X.X86_INS_ADD, X.X86_INS_ADC, X.X86_INS_AND, X.X86_INS_BTC, X.X86_INS_BTR,
             X.X86_INS_BTS, X.X86_INS_CMPXCHG, X.X86_INS_DEC, X.X86_INS_INC, X.X86_INS_NEG,
             X.X86_INS_NOT, X.X86_INS_OR, X.X86_INS_SBB, X.X86_INS_SUB, X.X86_INS_XOR,
             X.X86_INS_XADD, X.X86_INS_XCHG}
# 16-bit ModRM base/index registers (rm -> (base, index)).
_RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, -1), (7, -1), (5, -1), (3, -1))


class _Bytes(Exception):
    """Ran out of bytes."""


def _reg(idx: int, size: int, rex: int, high_ok: bool = True) -> Op:
    op = Op()
    op.kind = OP_REG
    op.rclass = GPR
    op.size = size
    if size == 1 and not rex and 4 <= idx <= 7 and high_ok:
        op.reg = idx - 4
        op.high = True
    else:
        op.reg = idx
    return op


def _imm(value: int, size: int) -> Op:
    op = Op()
    op.kind = OP_IMM
    op.size = size
    op.imm = value
    return op


def decode(code: bytes, rip: int, bits: int) -> Insn | None:
    """Decode the instruction at the start of ``code``; None if not handled here."""
    try:
        return _decode(code, rip, bits)
    except (_Bytes, IndexError):
        return None


def _decode(code: bytes, rip: int, bits: int) -> Insn | None:  # noqa: C901 - a decoder
    n = len(code)
    pos = 0
    p66 = p67 = lock = False
    segov = -1
    while True:
        if pos >= n:
            raise _Bytes()
        b = code[pos]
        if b == 0x66:
            p66 = True
        elif b == 0x67:
            p67 = True
        elif b == 0xF0:
            lock = True
        elif b in _SEG_PREFIX:
            segov = _SEG_PREFIX[b]
        elif b in (0xF2, 0xF3):
            return None
        else:
            break
        pos += 1
    rex = 0
    if bits == 64 and 0x40 <= code[pos] <= 0x4F:
        rex = code[pos]
        pos += 1
    op0 = code[pos]
    pos += 1
    if bits == 64:
        opsize = 8 if rex & 8 else (2 if p66 else 4)
        asize = 4 if p67 else 8
    elif bits == 32:
        opsize = 2 if p66 else 4
        asize = 2 if p67 else 4
    else:
        opsize = 4 if p66 else 2
        asize = 4 if p67 else 2
    stack = (2 if p66 else 8) if bits == 64 else opsize
    rex_r = 8 if rex & 4 else 0
    rex_x = 8 if rex & 2 else 0
    rex_b = 8 if rex & 1 else 0
    insn = Insn()
    ops = insn.ops

    def u(k: int) -> int:
        nonlocal pos
        if pos + k > n:
            raise _Bytes()
        v = int.from_bytes(code[pos:pos + k], "little")
        pos += k
        return v

    def s(k: int) -> int:
        v = u(k)
        sign = 1 << (8 * k - 1)
        return (v ^ sign) - sign

    def modrm(size: int, high_ok: bool = True) -> tuple[int, Op]:
        """(reg field, r/m operand)."""
        nonlocal pos
        m = u(1)
        mod, reg, rm = m >> 6, (m >> 3) & 7, m & 7
        if mod == 3:
            return reg, _reg(rm | rex_b, size, rex, high_ok)
        op = Op()
        op.kind = OP_MEM
        op.size = size
        if asize == 2:
            base, index = _RM16[rm]
            if mod == 0 and rm == 6:
                base = -1
                op.disp = s(2)
            elif mod == 1:
                op.disp = s(1)
            elif mod == 2:
                op.disp = s(2)
            op.base, op.index = base, index
        else:
            if rm == 4:
                sib = u(1)
                scale, idx, base = 1 << (sib >> 6), ((sib >> 3) & 7) | rex_x, sib & 7
                op.index = -1 if idx == 4 else idx
                op.scale = scale
                if base == 5 and mod == 0:
                    op.base = -1
                    op.disp = s(4)
                else:
                    op.base = base | rex_b
            elif rm == 5 and mod == 0:
                op.base = 16 if bits == 64 else -1
                op.disp = s(4)
            else:
                op.base = rm | rex_b
            if mod == 1:
                op.disp = s(1)
            elif mod == 2:
                op.disp = s(4)
        if segov >= 0:
            op.seg = segov
            op.segov = True
        elif op.base in (4, 5) or (asize == 2 and op.base == 5):
            op.seg = R_SS
        else:
            op.seg = R_DS
        return reg, op

    def imm_for(size: int) -> int:
        return s(min(size, 4)) & MASK[size] if size != 1 else u(1)

    iid = 0
    if op0 < 0x40 and (op0 & 7) < 6 and op0 not in (0x0F, 0x26, 0x2E, 0x36, 0x3E):
        iid = _ALU_IDS[op0 >> 3]
        kind = op0 & 7
        size = 1 if kind in (0, 2, 4) else opsize
        if kind < 4:
            reg, rmop = modrm(size)
            r = _reg(reg | rex_r, size, rex)
            ops += [rmop, r] if kind < 2 else [r, rmop]
        else:
            ops += [_reg(0, size, rex), _imm(imm_for(size), size)]
    elif 0x50 <= op0 <= 0x5F:
        iid = X.X86_INS_PUSH if op0 < 0x58 else X.X86_INS_POP
        ops.append(_reg((op0 & 7) | rex_b, stack, rex))
    elif op0 == 0x63:
        if bits != 64 or not rex & 8:
            return None
        iid = X.X86_INS_MOVSXD
        reg, rmop = modrm(4)
        ops += [_reg(reg | rex_r, 8, rex), rmop]
    elif op0 in (0x68, 0x6A):
        iid = X.X86_INS_PUSH
        v = s(1) if op0 == 0x6A else s(2 if stack == 2 else 4)
        ops.append(_imm(v & MASK[stack], stack))
    elif op0 in (0x69, 0x6B):
        iid = X.X86_INS_IMUL
        reg, rmop = modrm(opsize)
        v = s(1) if op0 == 0x6B else s(min(opsize, 4))
        ops += [_reg(reg | rex_r, opsize, rex), rmop, _imm(v & MASK[opsize], opsize)]
    elif 0x70 <= op0 <= 0x7F:
        iid = _JCC_IDS[op0 & 15]
        rel = s(1)
        ops.append(_imm(0, opsize))
        ops[0].imm = ("rel", rel)  # type: ignore[assignment]
    elif op0 in (0x80, 0x81, 0x83):
        size = 1 if op0 == 0x80 else opsize
        reg, rmop = modrm(size)
        iid = _ALU_IDS[reg]
        v = u(1) if op0 == 0x80 else (s(1) & MASK[size] if op0 == 0x83 else imm_for(size))
        ops += [rmop, _imm(v, size)]
    elif op0 in (0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B):
        size = 1 if not op0 & 1 else opsize
        reg, rmop = modrm(size)
        r = _reg(reg | rex_r, size, rex)
        if op0 <= 0x85:
            iid = X.X86_INS_TEST
            ops += [rmop, r]
        elif op0 <= 0x87:
            iid = X.X86_INS_XCHG
            ops += [rmop, r]
        else:
            iid = X.X86_INS_MOV
            ops += [rmop, r] if op0 <= 0x89 else [r, rmop]
    elif op0 == 0x8D:
        reg, rmop = modrm(opsize)
        if rmop.kind != OP_MEM:
            return None
        iid = X.X86_INS_LEA
        ops += [_reg(reg | rex_r, opsize, rex), rmop]
    elif op0 == 0x90 and not rex_b:
        if p66 or rex:
            return None
        iid = X.X86_INS_NOP
    elif 0x90 <= op0 <= 0x97:
        iid = X.X86_INS_XCHG
        ops += [_reg((op0 & 7) | rex_b, opsize, rex), _reg(0, opsize, rex)]
    elif op0 in (0x98, 0x99):
        iid = ({2: X.X86_INS_CBW, 4: X.X86_INS_CWDE, 8: X.X86_INS_CDQE} if op0 == 0x98 else
               {2: X.X86_INS_CWD, 4: X.X86_INS_CDQ, 8: X.X86_INS_CQO})[opsize]
    elif op0 in (0xA8, 0xA9):
        iid = X.X86_INS_TEST
        size = 1 if op0 == 0xA8 else opsize
        ops += [_reg(0, size, rex), _imm(imm_for(size), size)]
    elif 0xB0 <= op0 <= 0xBF:
        iid = X.X86_INS_MOV
        if op0 < 0xB8:
            ops += [_reg((op0 & 7) | rex_b, 1, rex), _imm(u(1), 1)]
        else:
            if opsize == 8:
                iid = X.X86_INS_MOVABS
                v = u(8)
            else:
                v = u(opsize)
            ops += [_reg((op0 & 7) | rex_b, opsize, rex), _imm(v, opsize)]
    elif op0 in (0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3):
        size = 1 if not op0 & 1 else opsize
        reg, rmop = modrm(size)
        sid = _SHIFT_IDS[reg]
        if sid is None:
            return None
        iid = sid
        ops.append(rmop)
        if op0 <= 0xC1:
            ops.append(_imm(u(1), 1))
        elif op0 <= 0xD1:
            ops.append(_imm(1, 1))
        else:
            ops.append(_reg(1, 1, rex))
    elif op0 in (0xC2, 0xC3):
        iid = X.X86_INS_RET
        if op0 == 0xC2:
            ops.append(_imm(u(2), 2))
    elif op0 in (0xC6, 0xC7):
        size = 1 if op0 == 0xC6 else opsize
        reg, rmop = modrm(size)
        if reg != 0:
            return None
        iid = X.X86_INS_MOV
        ops += [rmop, _imm(imm_for(size), size)]
    elif op0 == 0xC9:
        iid = X.X86_INS_LEAVE
    elif op0 in (0xE8, 0xE9, 0xEB):
        iid = X.X86_INS_CALL if op0 == 0xE8 else X.X86_INS_JMP
        if op0 == 0xEB:
            rel = s(1)
        else:
            rel = s(2) if (bits != 64 and opsize == 2) else s(4)
        ops.append(_imm(0, opsize))
        ops[0].imm = ("rel", rel)  # type: ignore[assignment]
    elif op0 in (0xF6, 0xF7):
        size = 1 if op0 == 0xF6 else opsize
        reg, rmop = modrm(size)
        gid = _GRP3_IDS[reg]
        if gid is None:
            return None
        iid = gid
        ops.append(rmop)
        if reg == 0:
            ops.append(_imm(imm_for(size), size))
    elif op0 == 0xFE:
        reg, rmop = modrm(1)
        if reg > 1:
            return None
        iid = X.X86_INS_INC if reg == 0 else X.X86_INS_DEC
        ops.append(rmop)
    elif op0 == 0xFF:
        pos0 = pos
        m = u(1)
        pos = pos0
        reg = (m >> 3) & 7
        if reg in (0, 1):
            _r, rmop = modrm(opsize)
            iid = X.X86_INS_INC if reg == 0 else X.X86_INS_DEC
        elif reg in (2, 4):
            size = 8 if bits == 64 else opsize
            _r, rmop = modrm(size)
            iid = X.X86_INS_CALL if reg == 2 else X.X86_INS_JMP
        elif reg == 6:
            _r, rmop = modrm(stack)
            iid = X.X86_INS_PUSH
        else:
            return None
        ops.append(rmop)
    elif op0 in (0xF5, 0xF8, 0xF9, 0xFC, 0xFD):
        iid = {0xF5: X.X86_INS_CMC, 0xF8: X.X86_INS_CLC, 0xF9: X.X86_INS_STC,
               0xFC: X.X86_INS_CLD, 0xFD: X.X86_INS_STD}[op0]
    elif op0 == 0x0F:
        op1 = u(1)
        if 0x80 <= op1 <= 0x8F:
            iid = _JCC_IDS[op1 & 15]
            rel = s(2) if (bits != 64 and opsize == 2) else s(4)
            ops.append(_imm(0, opsize))
            ops[0].imm = ("rel", rel)  # type: ignore[assignment]
        elif 0x90 <= op1 <= 0x9F:
            iid = _SETCC_IDS[op1 & 15]
            _r, rmop = modrm(1)
            ops.append(rmop)
        elif 0x40 <= op1 <= 0x4F:
            iid = _CMOV_IDS[op1 & 15]
            reg, rmop = modrm(opsize)
            ops += [_reg(reg | rex_r, opsize, rex), rmop]
        elif op1 in (0xB6, 0xB7, 0xBE, 0xBF):
            iid = X.X86_INS_MOVZX if op1 < 0xB8 else X.X86_INS_MOVSX
            ssize = 1 if not op1 & 1 else 2
            reg, rmop = modrm(ssize)
            ops += [_reg(reg | rex_r, opsize, rex), rmop]
        elif op1 == 0xAF:
            iid = X.X86_INS_IMUL
            reg, rmop = modrm(opsize)
            ops += [_reg(reg | rex_r, opsize, rex), rmop]
        elif op1 in _BT_IDS:
            iid = _BT_IDS[op1]
            reg, rmop = modrm(opsize)
            ops += [rmop, _reg(reg | rex_r, opsize, rex)]
        elif op1 == 0xBA:
            reg, rmop = modrm(opsize)
            bid = _BTI_IDS[reg]
            if bid is None:
                return None
            iid = bid
            ops += [rmop, _imm(u(1), 1)]
        elif op1 in (0xBC, 0xBD):
            iid = X.X86_INS_BSF if op1 == 0xBC else X.X86_INS_BSR
            reg, rmop = modrm(opsize)
            ops += [_reg(reg | rex_r, opsize, rex), rmop]
        elif op1 in (0xA4, 0xA5, 0xAC, 0xAD):
            iid = X.X86_INS_SHLD if op1 < 0xAC else X.X86_INS_SHRD
            reg, rmop = modrm(opsize)
            ops += [rmop, _reg(reg | rex_r, opsize, rex)]
            ops.append(_imm(u(1), 1) if not op1 & 1 else _reg(1, 1, rex))
        elif op1 in (0xB0, 0xB1, 0xC0, 0xC1):
            size = 1 if not op1 & 1 else opsize
            iid = X.X86_INS_CMPXCHG if op1 < 0xC0 else X.X86_INS_XADD
            reg, rmop = modrm(size)
            ops += [rmop, _reg(reg | rex_r, size, rex)]
        elif 0xC8 <= op1 <= 0xCF:
            if opsize == 2:
                return None
            iid = X.X86_INS_BSWAP
            ops.append(_reg((op1 & 7) | rex_b, opsize, rex))
        elif op1 == 0x1F:
            _r, rmop = modrm(opsize)
            iid = X.X86_INS_NOP
            ops.append(rmop)
        else:
            return None
    else:
        return None
    if pos > 15:
        return None
    if lock and (iid not in _LOCKABLE or not ops or ops[0].kind != OP_MEM):
        return None  # LOCK here is #UD: capstone says so
    size = pos
    insn.id = iid
    insn.size = size
    insn.addr = rip
    ipmask = M64 if bits == 64 else (M32 if bits == 32 else M16)
    insn.next = (rip + size) & ipmask
    for op in ops:
        if op.kind == OP_IMM and isinstance(op.imm, tuple):
            op.imm = rip + size + op.imm[1]  # absolute target, as capstone reports it
    insn.bytes = bytes(code[:size])
    insn.lock = lock
    insn.segov = segov
    insn.p66 = p66
    insn.rex = rex
    insn.opsize = opsize
    insn.addrsize = asize
    insn.opcode = [op0]
    return insn
