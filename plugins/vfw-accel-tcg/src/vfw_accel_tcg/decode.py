"""Guest instruction decoding: capstone (detail mode) turned into a small operand IR.

capstone gives the instruction identity, its length and explicit operands; the rest (operand
and address sizes, default segments, immediate masking, 16-bit branch wrapping) is derived here,
because capstone's own view of those is incomplete or inconsistent (see docs in the notes).
"""

from __future__ import annotations

from typing import Any

import capstone
from capstone import x86_const as X

from .consts import M16, M32, M64, R_DS, R_SS

OP_REG, OP_IMM, OP_MEM = X.X86_OP_REG, X.X86_OP_IMM, X.X86_OP_MEM

# Register classes.
GPR, SEG, XMM, CREG, DREG, STREG, MMX, IPREG, OTHER = range(9)

#: capstone register id -> (class, index, size, high byte)
REGS: dict[int, tuple[int, int, int, bool]] = {}


def _build_regs() -> None:
    names = {k[len("X86_REG_"):]: v for k, v in vars(X).items() if k.startswith("X86_REG_")}
    g8 = ["AL", "CL", "DL", "BL", "SPL", "BPL", "SIL", "DIL"]
    g16 = ["AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI"]
    g32 = ["EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"]
    g64 = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"]
    for i in range(8):
        REGS[names[g8[i]]] = (GPR, i, 1, False)
        REGS[names[g16[i]]] = (GPR, i, 2, False)
        REGS[names[g32[i]]] = (GPR, i, 4, False)
        REGS[names[g64[i]]] = (GPR, i, 8, False)
    for i, n in enumerate(["AH", "CH", "DH", "BH"]):
        REGS[names[n]] = (GPR, i, 1, True)
    for i in range(8, 16):
        REGS[names[f"R{i}B"]] = (GPR, i, 1, False)
        REGS[names[f"R{i}W"]] = (GPR, i, 2, False)
        REGS[names[f"R{i}D"]] = (GPR, i, 4, False)
        REGS[names[f"R{i}"]] = (GPR, i, 8, False)
    for i, n in enumerate(["ES", "CS", "SS", "DS", "FS", "GS"]):
        REGS[names[n]] = (SEG, i, 2, False)
    for i in range(32):
        if f"XMM{i}" in names:
            REGS[names[f"XMM{i}"]] = (XMM if i < 16 else OTHER, i, 16, False)
    for i in range(16):
        if f"CR{i}" in names:
            REGS[names[f"CR{i}"]] = (CREG, i, 8, False)
        if f"DR{i}" in names:
            REGS[names[f"DR{i}"]] = (DREG, i, 8, False)
    for i in range(8):
        REGS[names[f"ST{i}"]] = (STREG, i, 10, False)
        REGS[names[f"MM{i}"]] = (MMX, i, 8, False)
    REGS[names["RIP"]] = (IPREG, 0, 8, False)
    REGS[names["EIP"]] = (IPREG, 0, 4, False)
    REGS[names["IP"]] = (IPREG, 0, 2, False)


_build_regs()

_SEG_PREFIX = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}
_BP_SP = {4, 5}  # rsp/rbp (and sp/bp, esp/ebp) default to SS


class Op:
    """One explicit operand."""

    __slots__ = ("base", "disp", "high", "imm", "index", "kind", "rclass", "reg", "scale",
                 "seg", "segov", "size")

    def __init__(self) -> None:
        self.kind = 0
        self.size = 0
        self.rclass = OTHER
        self.reg = -1
        self.high = False
        self.imm = 0
        self.seg = R_DS
        self.segov = False
        self.base = -1  # -1 none, 16 = rip
        self.index = -1
        self.scale = 1
        self.disp = 0

    @property
    def is_gpr(self) -> bool:
        return self.kind == OP_REG and self.rclass == GPR

    def __repr__(self) -> str:
        if self.kind == OP_IMM:
            return f"imm{self.size}({self.imm:#x})"
        if self.kind == OP_REG:
            return f"reg{self.size}({self.rclass},{self.reg}{',h' if self.high else ''})"
        return (f"mem{self.size}(seg={self.seg},b={self.base},i={self.index}*{self.scale},"
                f"d={self.disp:#x})")


class Insn:
    """A decoded instruction with everything the translator needs."""

    __slots__ = ("addr", "addrsize", "bytes", "follow", "id", "lock", "mnem", "modrm", "next",
                 "op_str", "opcode", "ops", "opsize", "p66", "rep", "ret_to", "rex", "segov",
                 "size")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.addr = 0
        self.next = 0
        self.size = 0
        self.bytes = b""
        self.id = 0
        self.mnem = ""
        self.op_str = ""
        self.rep = 0
        self.lock = False
        self.segov = -1
        self.p66 = False
        self.rex = 0
        self.opsize = 4
        self.addrsize = 4
        self.opcode: list[int] = []
        self.modrm = 0
        #: a direct jump/call whose target the translator continues with in the same block
        self.follow = False
        #: a return from a call the block followed: where the block goes on if the address
        #: popped is the one that call pushed (else it leaves there)
        self.ret_to: int | None = None

    def __str__(self) -> str:
        return f"{self.mnem} {self.op_str}".strip()


class Decoder:
    """Decodes one instruction at a time for a code size of 16, 32 or 64 bits."""

    def __init__(self, bits: int):
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
        self.bits = bits
        self.md = capstone.Cs(capstone.CS_ARCH_X86, mode)
        self.md.detail = True
        self.ipmask = {16: M16, 32: M32, 64: M64}[bits]

    def decode(self, code: bytes, rip: int) -> Insn | None:
        """The instruction at the start of ``code`` (at offset ``rip``), None if invalid."""
        from .fastdecode import decode as fast

        insn = fast(code, rip, self.bits)
        if insn is not None:
            return insn
        return self.decode_capstone(code, rip)

    def describe(self, insn: Insn) -> str:
        """Assembly text of an instruction (the fast decoder leaves it empty)."""
        if insn.mnem:
            return str(insn)
        ci: Any = next(self.md.disasm(insn.bytes, insn.addr, 1), None)
        return f"{ci.mnemonic} {ci.op_str}".strip() if ci is not None else insn.bytes.hex()

    def decode_capstone(self, code: bytes, rip: int) -> Insn | None:
        ci: Any = next(self.md.disasm(code[:15], rip, 1), None)
        if ci is None:
            return None
        insn = Insn()
        bits = self.bits
        insn.addr = rip
        insn.size = ci.size
        insn.bytes = bytes(ci.bytes)
        insn.id = ci.id
        insn.mnem = ci.mnemonic
        insn.op_str = ci.op_str
        pfx = ci.prefix
        insn.rep = pfx[0] if pfx[0] in (0xF2, 0xF3) else 0
        insn.lock = pfx[0] == 0xF0
        insn.segov = _SEG_PREFIX.get(pfx[1], -1)
        insn.p66 = pfx[2] == 0x66
        p67 = pfx[3] == 0x67
        insn.rex = ci.rex if bits == 64 else 0
        insn.opcode = list(ci.opcode)
        insn.modrm = ci.modrm
        if bits == 64:
            insn.opsize = 8 if insn.rex & 8 else (2 if insn.p66 else 4)
            insn.addrsize = 4 if p67 else 8
        elif bits == 32:
            insn.opsize = 2 if insn.p66 else 4
            insn.addrsize = 2 if p67 else 4
        else:
            insn.opsize = 4 if insn.p66 else 2
            insn.addrsize = 4 if p67 else 2
        insn.next = (rip + ci.size) & self.ipmask
        for co in ci.operands:
            op = Op()
            op.kind = co.type
            op.size = co.size
            if co.type == OP_REG:
                cls, idx, size, high = REGS.get(co.reg, (OTHER, -1, 0, False))
                op.rclass, op.reg, op.high = cls, idx, high
                if cls != OTHER:
                    op.size = size
            elif co.type == OP_IMM:
                op.imm = co.imm
            elif co.type == OP_MEM:
                m = co.mem
                base = REGS.get(m.base) if m.base else None
                index = REGS.get(m.index) if m.index else None
                if base is not None:
                    op.base = 16 if base[0] == IPREG else base[1]
                if index is not None:
                    op.index = index[1]
                op.scale = m.scale
                op.disp = m.disp
                if m.segment:
                    op.seg = REGS[m.segment][1]
                    op.segov = insn.segov >= 0
                elif insn.segov >= 0:
                    op.seg = insn.segov
                    op.segov = True
                else:
                    op.seg = R_SS if op.base in _BP_SP else R_DS
            insn.ops.append(op)
        if insn.opcode[:2] == [0x0F, 0xC2]:
            _fix_cmpfp(insn)
        return insn


#: Synthetic ids of CMPSS/CMPSD/CMPPS/CMPPD (0F C2 /r ib): capstone 5 folds the predicate into
#: the id and those ids collide with CMPSB, CMPSW, CMPXCHG16B, ...
CMPSS_ID, CMPSD_ID, CMPPS_ID, CMPPD_ID = -10, -11, -12, -13


def _fix_cmpfp(insn: Insn) -> None:
    rep, p66 = 0, False
    for b in insn.bytes:  # capstone does not report the mandatory prefix
        if b == 0x0F:
            break
        if b in (0xF2, 0xF3):
            rep = b
        elif b == 0x66:
            p66 = True
    if rep == 0xF3:
        insn.id = CMPSS_ID
    elif rep == 0xF2:
        insn.id = CMPSD_ID
    elif p66:
        insn.id = CMPPD_ID
    else:
        insn.id = CMPPS_ID
    ops = insn.ops[:2]
    imm = Op()
    imm.kind = OP_IMM
    imm.size = 1
    imm.imm = insn.bytes[-1] & 7
    insn.ops = [*ops, imm]
