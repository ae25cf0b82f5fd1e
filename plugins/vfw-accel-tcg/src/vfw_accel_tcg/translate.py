"""The block translator: decoded guest instructions to the source of one Python function.

``translate_block`` decodes up to a block end (branch, mode change, page end), computes which
flag results are ever read (liveness), then lets one emitter per instruction write Python lines
through :class:`~.codegen.CodeGen`. Simple instructions become inline Python; complicated or
privileged ones call helpers (``helpers.py``, ``system.py``, ``strings.py``, ``sse.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from capstone import x86_const as X

from . import flags as F
from .codegen import FLUSH, LOOP_BUDGET, RELOAD, CodeGen, Mode, Untranslatable
from .consts import (
    ARITH,
    CF,
    M16,
    M32,
    M64,
    MASK,
    OF,
    R_DS,
    R_SS,
    SIGN,
    ZF,
)
from .decode import GPR, MMX, OP_IMM, OP_MEM, OP_REG, SEG, XMM, Decoder, Insn
from .sse import COMI_IDS

I = X  # noqa: E741 - short alias for instruction ids

MAX_INSNS = 48
#: Pages one trace may span by following calls and jumps (each is checked again when the
#: block is found in another address space, and a store to any of them invalidates it).
#: One: following calls onto other pages made Linux's boot translate far more cold code
#: (translation 38 -> 72 s, 576 MiB peak RSS, with MAX_PAGES 3; benchmarks/README.md).
MAX_PAGES = 1

# Flag masks for liveness.
ALL = ARITH
C, Z = CF, ZF
CC_READS = {0: OF, 2: CF, 4: ZF, 6: CF | ZF, 8: 0x80, 10: 0x4, 12: 0x80 | OF,
            14: ZF | 0x80 | OF}

JCC = {I.X86_INS_JO: 0, I.X86_INS_JNO: 1, I.X86_INS_JB: 2, I.X86_INS_JAE: 3, I.X86_INS_JE: 4,
       I.X86_INS_JNE: 5, I.X86_INS_JBE: 6, I.X86_INS_JA: 7, I.X86_INS_JS: 8, I.X86_INS_JNS: 9,
       I.X86_INS_JP: 10, I.X86_INS_JNP: 11, I.X86_INS_JL: 12, I.X86_INS_JGE: 13,
       I.X86_INS_JLE: 14, I.X86_INS_JG: 15}
SETCC = {I.X86_INS_SETO: 0, I.X86_INS_SETNO: 1, I.X86_INS_SETB: 2, I.X86_INS_SETAE: 3,
         I.X86_INS_SETE: 4, I.X86_INS_SETNE: 5, I.X86_INS_SETBE: 6, I.X86_INS_SETA: 7,
         I.X86_INS_SETS: 8, I.X86_INS_SETNS: 9, I.X86_INS_SETP: 10, I.X86_INS_SETNP: 11,
         I.X86_INS_SETL: 12, I.X86_INS_SETGE: 13, I.X86_INS_SETLE: 14, I.X86_INS_SETG: 15}
CMOVCC = {I.X86_INS_CMOVO: 0, I.X86_INS_CMOVNO: 1, I.X86_INS_CMOVB: 2, I.X86_INS_CMOVAE: 3,
          I.X86_INS_CMOVE: 4, I.X86_INS_CMOVNE: 5, I.X86_INS_CMOVBE: 6, I.X86_INS_CMOVA: 7,
          I.X86_INS_CMOVS: 8, I.X86_INS_CMOVNS: 9, I.X86_INS_CMOVP: 10, I.X86_INS_CMOVNP: 11,
          I.X86_INS_CMOVL: 12, I.X86_INS_CMOVGE: 13, I.X86_INS_CMOVLE: 14,
          I.X86_INS_CMOVG: 15}

ALU = {I.X86_INS_ADD: F.ADD, I.X86_INS_SUB: F.SUB, I.X86_INS_CMP: F.SUB, I.X86_INS_ADC: F.ADC,
       I.X86_INS_SBB: F.SBB, I.X86_INS_AND: F.LOGIC, I.X86_INS_OR: F.LOGIC,
       I.X86_INS_XOR: F.LOGIC, I.X86_INS_TEST: F.LOGIC}
ALU_OP = {I.X86_INS_ADD: "+", I.X86_INS_SUB: "-", I.X86_INS_CMP: "-", I.X86_INS_ADC: "+",
          I.X86_INS_SBB: "-", I.X86_INS_AND: "&", I.X86_INS_OR: "|", I.X86_INS_XOR: "^",
          I.X86_INS_TEST: "&"}
SHIFTS = {I.X86_INS_SHL: "shl", I.X86_INS_SAL: "shl", I.X86_INS_SHR: "shr",
          I.X86_INS_SAR: "sar", I.X86_INS_ROL: "rol", I.X86_INS_ROR: "ror",
          I.X86_INS_RCL: "rcl", I.X86_INS_RCR: "rcr"}
STRING_OPS = {
    I.X86_INS_MOVSB: ("movs", 1), I.X86_INS_MOVSW: ("movs", 2), I.X86_INS_MOVSD: ("movs", 4),
    I.X86_INS_MOVSQ: ("movs", 8), I.X86_INS_STOSB: ("stos", 1), I.X86_INS_STOSW: ("stos", 2),
    I.X86_INS_STOSD: ("stos", 4), I.X86_INS_STOSQ: ("stos", 8), I.X86_INS_LODSB: ("lods", 1),
    I.X86_INS_LODSW: ("lods", 2), I.X86_INS_LODSD: ("lods", 4), I.X86_INS_LODSQ: ("lods", 8),
    I.X86_INS_CMPSB: ("cmps", 1), I.X86_INS_CMPSW: ("cmps", 2), I.X86_INS_CMPSD: ("cmps", 4),
    I.X86_INS_CMPSQ: ("cmps", 8), I.X86_INS_SCASB: ("scas", 1), I.X86_INS_SCASW: ("scas", 2),
    I.X86_INS_SCASD: ("scas", 4), I.X86_INS_SCASQ: ("scas", 8), I.X86_INS_INSB: ("ins", 1),
    I.X86_INS_INSW: ("ins", 2), I.X86_INS_INSD: ("ins", 4), I.X86_INS_OUTSB: ("outs", 1),
    I.X86_INS_OUTSW: ("outs", 2), I.X86_INS_OUTSD: ("outs", 4),
}
NOPS = {I.X86_INS_NOP, I.X86_INS_PAUSE, I.X86_INS_LFENCE, I.X86_INS_MFENCE, I.X86_INS_SFENCE,
        I.X86_INS_PREFETCH, I.X86_INS_PREFETCHW, I.X86_INS_PREFETCHNTA,
        I.X86_INS_PREFETCHT0, I.X86_INS_PREFETCHT1, I.X86_INS_PREFETCHT2, I.X86_INS_ENDBR64,
        I.X86_INS_ENDBR32, I.X86_INS_CLFLUSH, I.X86_INS_CLFLUSHOPT, I.X86_INS_CLWB}

#: Instructions after which the block ends (control transfers, mode or interrupt changes).
ENDS_BLOCK = {
    I.X86_INS_JMP, I.X86_INS_CALL, I.X86_INS_RET, I.X86_INS_RETF, I.X86_INS_LJMP,
    I.X86_INS_LCALL, I.X86_INS_LOOP, I.X86_INS_LOOPE, I.X86_INS_LOOPNE, I.X86_INS_JCXZ,
    I.X86_INS_JECXZ, I.X86_INS_JRCXZ, I.X86_INS_INT, I.X86_INS_INT3, I.X86_INS_INTO,
    I.X86_INS_INT1, I.X86_INS_IRET, I.X86_INS_IRETD, I.X86_INS_IRETQ, I.X86_INS_SYSCALL,
    I.X86_INS_SYSRET, I.X86_INS_SYSRETQ, I.X86_INS_SYSENTER, I.X86_INS_SYSEXIT,
    I.X86_INS_SYSEXITQ, I.X86_INS_RETFQ, I.X86_INS_HLT, I.X86_INS_STI,
    I.X86_INS_POPF, I.X86_INS_POPFD, I.X86_INS_POPFQ, I.X86_INS_IN, I.X86_INS_OUT,
    I.X86_INS_INSB, I.X86_INS_INSW, I.X86_INS_INSD, I.X86_INS_OUTSB, I.X86_INS_OUTSW,
    I.X86_INS_OUTSD, I.X86_INS_LGDT, I.X86_INS_LIDT, I.X86_INS_LLDT, I.X86_INS_LTR,
    I.X86_INS_LMSW, I.X86_INS_CLTS, I.X86_INS_WRMSR, I.X86_INS_INVLPG, I.X86_INS_UD2,
    I.X86_INS_UD0, I.X86_INS_UD1, I.X86_INS_RSM, I.X86_INS_SWAPGS, I.X86_INS_XSETBV,
    I.X86_INS_FXRSTOR, I.X86_INS_FXRSTOR64, I.X86_INS_WBINVD, I.X86_INS_INVD,
    I.X86_INS_CPUID,
} | set(JCC)


@dataclass
class BlockMeta:
    """What the dispatcher needs to commit a block's state when it raises mid-way."""

    linemap: tuple[int, ...]  # source line - 1 -> instruction index
    rips: tuple[int, ...]  # RIP of each instruction
    inline: tuple[bool, ...]  # registers live in the locals at this instruction
    fk: tuple[int, ...]  # fop of the flags in locals at this instruction (-1: in s)
    written: tuple[int, ...]  # registers the block may have changed


@dataclass
class Block:
    """The result of translating one block."""

    source: str
    name: str
    ninsns: int
    insns: list[Insn]
    meta: BlockMeta
    #: the bytes the block was made from, as (start, end) relative to its RIP, merged: a
    #: trace that jumps around its page covers only parts of it
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def size(self) -> int:
        """Guest bytes the block was made from."""
        return sum(b - a for a, b in self.spans)


#: The masks that fill generated code, as names (runtime.NS defines them): Python compiles a
#: name faster than a 20-digit literal (~15% of a block's compile time), and runs it as fast.
_NAMES = [(str((1 << 64) - 1), "M64"), (str((1 << 32) - 1), "M32"), (str(1 << 63), "S64")]


def _named(source: str) -> str:
    """``source`` with the literals of _NAMES replaced where they stand alone (not part of a
    longer number or name). Split and join: a regular expression with the look-behind this
    needs scans every position and cost ~30 µs a block."""
    for lit, name in _NAMES:
        if lit not in source:
            continue
        parts = source.split(lit)
        if any(_joins(a[-1:]) for a in parts[:-1]) or any(_joins(b[:1]) for b in parts[1:]):
            source = re.sub(r"(?<![\w.])" + lit + r"(?![\w.])", name, source)
        else:
            source = name.join(parts)
    return source


def _joins(ch: str) -> bool:
    """Whether ``ch`` next to a literal makes it part of a longer token."""
    return ch != "" and (ch.isalnum() or ch in "_.")


class CodeBytes:
    """``fetch`` for the decoder with the rest of the page read once: decoding asks for 15
    bytes per instruction, and each raw fetch walks the TLB and copies."""

    def __init__(self, fetch: Callable[..., bytes], base: int, lin_mask: int, ipmask: int):
        self.raw = fetch
        self.base = base
        self.lin_mask = lin_mask
        self.ipmask = ipmask
        self.buf = b""
        self.start = 0

    def __call__(self, pos: int, n: int, strict: bool = False) -> bytes:
        rel = pos - self.start
        if rel >= 0 and rel + n <= len(self.buf) and not strict:
            return self.buf[rel:rel + n]
        # The rest of this page (never past the IP's wrap), if that covers the request.
        left = min(4096 - ((self.base + pos) & self.lin_mask & 0xFFF), self.ipmask + 1 - pos)
        if left < n or strict:
            return self.raw(pos, n, strict) if strict else self.raw(pos, n)
        self.buf = self.raw(pos, left)
        self.start = pos
        return self.buf[:n]


class BlockEnd(Exception):
    """Raised by an emitter that ended the block (all paths returned)."""


def _sx(expr: str, size: int) -> str:
    s = SIGN[size]
    return f"(({expr} ^ {s}) - {s})"


class Translator:
    """Turns guest code at one RIP into Python source for one mode."""

    def __init__(self, mode: Mode, unimp_log: Callable[[str], None] | None = None):
        self.mode = mode
        self.lin_mask = (1 << 64) - 1 if mode.lma else M32
        self.dec = Decoder(mode.bits)
        self.unimp_log = unimp_log
        #: linear addresses a block must end before (a debugger's breakpoints, see debug.py)
        self.stop_at: frozenset[int] = frozenset()
        self.emitters: dict[int, Callable[[Insn], None]] = self._table()

    # -- decoding ---------------------------------------------------------------------------------
    def decode_block(self, fetch: Callable[..., bytes], rip: int, max_insns: int,
                     extend: bool = True) -> tuple[list[Insn], bool]:
        """Decode from ``rip``; ``fetch(rip, n)`` gives up to n code bytes (fewer at an
        unmapped page; ``fetch(rip, n, True)`` raises that page's fault instead). Returns the
        instructions and whether the last one is invalid (#UD).

        With ``extend``, conditional branches become side exits and direct jumps and calls
        are followed (onto at most MAX_PAGES pages), so a block is a trace of several basic
        blocks. The return of a followed call goes on after that call (``ret_to``): the block
        checks the address it pops and leaves if it is another. No instruction of a trace
        crosses a page end, except a first instruction that straddles two pages.
        """
        insns: list[Insn] = []
        pos = rip
        ipmask = self.dec.ipmask
        base = self.mode.cs_base
        lin_mask = self.lin_mask
        page = (base + rip) & lin_mask & ~0xFFF  # of the instruction at ``pos``
        used = {page}  # the pages the trace is on
        seen: set[int] = set()
        rets: list[int] = []  # return addresses pushed by the calls followed so far
        stop_at = self.stop_at
        while len(insns) < max_insns:
            if stop_at and insns and ((base + pos) & self.lin_mask) in stop_at:
                break  # a breakpoint starts its own block, where the dispatcher stops
            page_left = page + 4096 - ((base + pos) & lin_mask)
            code = fetch(pos, 15)
            insn = self.dec.decode(code, pos)
            if insn is None:
                if len(code) < 15 and insns:
                    break  # may continue on a page we could not fetch: end here
                if len(code) < 15:
                    # The first instruction runs into a page that cannot be fetched: the
                    # CPU raises that page's fault (#PF with its address), not #UD.
                    insn = self.dec.decode(fetch(pos, 15, True), pos)
                if insn is None:
                    return insns, True
            if insns and insn.size > page_left:
                break  # crosses into the next page: starts its own block
            insns.append(insn)
            seen.add(pos)
            if insn.size >= page_left:
                break
            i = insn.id
            if extend and len(insns) < max_insns - 1:
                if i in JCC or i in (I.X86_INS_LOOP, I.X86_INS_LOOPE, I.X86_INS_LOOPNE,
                                     I.X86_INS_JCXZ, I.X86_INS_JECXZ, I.X86_INS_JRCXZ):
                    if insn.ops and insn.ops[0].kind == OP_IMM:
                        pos = insn.next
                        if pos not in seen:
                            continue
                    break
                if i in (I.X86_INS_JMP, I.X86_INS_CALL) and insn.ops \
                        and insn.ops[0].kind == OP_IMM:
                    target = self._target(insn)
                    # A call may enter code the trace has seen (a helper called twice);
                    # a jump there would be a loop.
                    tpage = (base + target) & lin_mask & ~0xFFF
                    if (target != rip and (target not in seen or i == I.X86_INS_CALL)
                            and (tpage in used or len(used) < MAX_PAGES)):
                        insn.follow = True
                        if i == I.X86_INS_CALL:
                            rets.append(insn.next)
                        pos = target
                        page = tpage
                        used.add(page)
                        continue
                    break
                if i == I.X86_INS_RET and rets:
                    back = rets.pop()
                    if back not in seen:
                        insn.ret_to = back
                        pos = back
                        page = (base + back) & lin_mask & ~0xFFF  # the call's page
                        continue
                    break
            if i in ENDS_BLOCK or self._ends(insn):
                break
            pos = (pos + insn.size) & ipmask
        return insns, False

    def _ends(self, insn: Insn) -> bool:
        if insn.id == I.X86_INS_MOV and insn.ops and insn.ops[0].kind == OP_REG:
            d = insn.ops[0]
            if d.rclass == SEG and (self.mode.bits != 64 or d.reg == R_SS):
                return True
            if d.rclass in (3, 4):  # control / debug registers
                return True
        if insn.id == I.X86_INS_POP and insn.ops and insn.ops[0].kind == OP_REG \
                and insn.ops[0].rclass == SEG:
            return True
        if insn.id == I.X86_INS_JMP and insn.ops and insn.ops[0].kind != OP_IMM:
            return True
        return insn.id in (I.X86_INS_LDS, I.X86_INS_LES, I.X86_INS_LSS, I.X86_INS_LFS,
                           I.X86_INS_LGS) and self.mode.bits != 64

    # -- liveness -------------------------------------------------------------------------------
    def flag_info(self, insn: Insn) -> tuple[int, int, int, int]:
        """(reads, definitely writes, may write, passes through when computed)."""
        i = insn.id
        if i in ALU:
            r = C if i in (I.X86_INS_ADC, I.X86_INS_SBB) else 0
            return r, ALL, ALL, 0
        if i in (I.X86_INS_INC, I.X86_INS_DEC):
            return 0, ALL & ~C, ALL & ~C, C
        if i in (I.X86_INS_NEG, I.X86_INS_XADD, I.X86_INS_CMPXCHG, I.X86_INS_MUL,
                 I.X86_INS_IMUL, I.X86_INS_BSF, I.X86_INS_BSR, I.X86_INS_POPCNT,
                 I.X86_INS_TZCNT, I.X86_INS_LZCNT):
            return 0, ALL, ALL, 0
        if i in SHIFTS or i in (I.X86_INS_SHLD, I.X86_INS_SHRD):
            kind = SHIFTS.get(i, "shd")
            cnt_op = insn.ops[-1] if len(insn.ops) > 1 else None
            reads = C if kind in ("rcl", "rcr") else 0
            if cnt_op is not None and cnt_op.kind == OP_REG:
                return reads | (C if kind in ("rcl", "rcr") else 0), 0, ALL, ALL
            cnt = self._static_count(insn)
            if cnt == 0:
                return reads if kind not in ("rcl", "rcr") else 0, 0, 0, 0
            if kind in ("rol", "ror", "rcl", "rcr"):
                return reads, C | OF, C | OF, ALL & ~(C | OF)
            return 0, ALL, ALL, 0
        if i in (I.X86_INS_BT, I.X86_INS_BTS, I.X86_INS_BTR, I.X86_INS_BTC):
            return 0, C, ALL, Z
        if i in (I.X86_INS_CLC, I.X86_INS_STC):
            return 0, C, C, ALL & ~C
        if i == I.X86_INS_CMC:
            return C, C, C, ALL & ~C
        if i in (I.X86_INS_CMPXCHG8B, I.X86_INS_CMPXCHG16B):
            return 0, Z, Z, ALL & ~Z
        if i == I.X86_INS_SAHF:
            return 0, ALL & ~OF, ALL & ~OF, OF
        if i in JCC:
            return CC_READS[JCC[i] & ~1], 0, 0, 0
        if i in SETCC:
            return CC_READS[SETCC[i] & ~1], 0, 0, 0
        if i in CMOVCC:
            return CC_READS[CMOVCC[i] & ~1], 0, 0, 0
        if i in (I.X86_INS_LOOPE, I.X86_INS_LOOPNE):
            return Z, 0, 0, 0
        if i in COMI_IDS:
            return 0, ALL, ALL, 0
        if i in _FLAG_NEUTRAL or self._is_sse(insn):
            return 0, 0, 0, 0
        if i in STRING_OPS and STRING_OPS[i][0] not in ("cmps", "scas") \
                and not self._is_sse(insn):
            return 0, 0, 0, 0
        return ALL, 0, 0, 0  # helpers: may read them all

    def _is_sse(self, insn: Insn) -> bool:
        return any(o.kind == OP_REG and o.rclass in (XMM, MMX) for o in insn.ops)

    def _static_count(self, insn: Insn) -> int:
        ops = insn.ops
        size = ops[0].size
        if len(ops) == 1:
            cnt = 1
        elif ops[-1].kind == OP_IMM:
            cnt = ops[-1].imm
        else:
            return -1
        cnt &= 63 if size == 8 else 31
        if insn.id in (I.X86_INS_RCL, I.X86_INS_RCR) and size < 4:
            cnt %= size * 8 + 1
        return cnt

    # -- translation ----------------------------------------------------------------------------
    def translate(self, fetch: Callable[[int, int], bytes], rip: int, max_insns: int = 0,
                  allow_loop: bool = True) -> Block:
        fetch = CodeBytes(fetch, self.mode.cs_base, self.lin_mask, self.dec.ipmask)
        insns, invalid = self.decode_block(fetch, rip, max_insns or MAX_INSNS,
                                           extend=allow_loop and max_insns != 1)
        n = len(insns)
        self.fetch = fetch
        # Side exits may continue with a copy of their target's first instructions.
        self.dup_ok = allow_loop and max_insns != 1 and not self.stop_at
        self.in_dup = False
        # Liveness of the arithmetic flags after each instruction (side exits need them all).
        live_after = [0] * n
        live = ALL
        infos = [self.flag_info(x) for x in insns]
        for k in range(n - 1, -1, -1):
            if k < n - 1 and ((self._branch_target(insns[k]) is not None
                               and not insns[k].follow) or insns[k].ret_to is not None):
                live = ALL
            live_after[k] = live
            reads, wdef, wmay, passthru = infos[k]
            live = reads | (live & ~wdef) | (passthru if live & wmay else 0)
        live_at_start = live
        self.live_after = live_after
        self.infos = infos
        self.ninsns = n
        loop = bool(allow_loop and not invalid and any(
            self._branch_target(x) == rip and not x.follow for x in insns))
        self.flush_at_backedge = live_at_start != 0
        cg = self._emit_all(rip, insns, invalid, fetch, loop, set())
        backs = [k for k, x in enumerate(insns)
                 if self._branch_target(x) == rip and not x.follow]
        if loop and self.mode.bits == 64 and all(cg.inline_at[:max(backs) + 1]):
            # Registers whose last write before every back edge is a 32-bit one are
            # zero-extended at the head from the second iteration on; with an entry check,
            # the body can skip masking them.
            last: dict[int, tuple[int, int, bool]] = {}
            for k, reg, size, cond in cg.write_log:
                last[reg] = (k, size, cond)
            z = {reg for reg, (k, size, cond) in last.items()
                 if size == 4 and not cond and k < min(backs)}
            for p, dw in self.dup_backs:
                # A copied path that goes back to the head: what it and the main path before
                # its side exit wrote must also leave the register zero-extended.
                z -= dw
                lastw = {reg: (size, cond) for k, reg, size, cond in cg.write_log if k <= p}
                z = {r for r in z if lastw.get(r, (4, False)) == (4, False)}
            if z & cg.read_first:
                cg = self._emit_all(rip, insns, invalid, fetch, loop, z)
                cg.guard32 = sorted(z & cg.read_first)
        return self._assemble(rip, insns, invalid)

    def _emit_all(self, rip: int, insns: list[Insn], invalid: bool,
                  fetch: Callable[[int, int], bytes], loop: bool, known32: set[int]
                  ) -> CodeGen:
        cg = CodeGen(self.mode, rip)
        self.cg = cg
        cg.loop = loop
        cg.known32 |= known32
        n = len(insns)
        # Indices >= n of these (and of cg's per-instruction lists) are copied instructions.
        del self.infos[n:]
        del self.live_after[n:]
        self.dup_insns: list[Insn] = []
        self.dup_backs: list[tuple[int, set[int]]] = []
        cg.fk_at = [-1] * n
        cg.inline_at = [True] * n
        cg.rips = [0] * n
        if cg.loop:
            cg.ind = 2
        ended = False
        skip = 0
        for k, insn in enumerate(insns):
            if k < skip:
                continue
            cg.cur = k
            cg.fk_at[k] = -1 if cg.fcur is None else cg.fcur
            cg.rips[k] = insn.addr
            self.k = k
            self.insn = insn
            try:
                m = self._stack_run(insns, k)
                if m:
                    skip = k + m
                    self.emit_stack_run(insns, k, m)
                else:
                    self.emit_insn(insn)
            except BlockEnd:
                ended = True
                break
        if invalid:
            cg.cur = len(cg.rips)
            cg.fk_at.append(-1 if cg.fcur is None else cg.fcur)
            cg.inline_at.append(True)
            pos = self._after(insns[-1]) if insns else rip
            cg.rips.append(pos)
            if self.unimp_log is not None:
                self.unimp_log(f"tcg: invalid or unsupported opcode at {pos:#x}: "
                               f"{fetch(pos, 15).hex()}")
            cg.emit("raise CpuException(6)")
            ended = True
        if not ended:
            last_insn = insns[-1]
            cg.exit(str(self._after(last_insn)))
        return cg

    def _after(self, insn: Insn) -> int:
        """Where the block goes on after ``insn`` when that is its last instruction."""
        if insn.ret_to is not None:
            return insn.ret_to
        return self._target(insn) if insn.follow else insn.next

    def _branch_target(self, insn: Insn) -> int | None:
        i = insn.id
        if (i in JCC or i in (I.X86_INS_JMP, I.X86_INS_LOOP, I.X86_INS_LOOPE, I.X86_INS_LOOPNE,
                              I.X86_INS_JCXZ, I.X86_INS_JECXZ, I.X86_INS_JRCXZ,
                              I.X86_INS_CALL)) and insn.ops and insn.ops[0].kind == OP_IMM:
            return self._target(insn)
        return None

    def _target(self, insn: Insn) -> int:
        size = insn.opsize if self.mode.bits != 64 else 8
        return insn.ops[0].imm & MASK[size]

    def emit_insn(self, insn: Insn) -> None:
        emitter = self.emitters.get(insn.id)
        if emitter is None:
            self.unimplemented(insn)
            return
        mark = len(self.cg.lines)
        saved = (self.cg.fcur, set(self.cg.known32), set(self.cg.written), set(self.cg.used),
                 set(self.cg.need))
        try:
            emitter(insn)
        except Untranslatable as exc:
            cg = self.cg
            del cg.lines[mark:]
            del cg.line_insn[mark:]
            cg.fcur, cg.known32, cg.written, cg.used, cg.need = saved
            self.unimplemented(insn, str(exc))

    def unimplemented(self, insn: Insn, why: str = "") -> None:
        if self.unimp_log is not None:
            self.unimp_log(f"tcg: unimplemented instruction at {insn.addr:#x}: "
                           f"{self.dec.describe(insn)} "
                           f"[{insn.bytes.hex()}]{' (' + why + ')' if why else ''}")
        self.cg.emit("raise CpuException(6)")
        raise BlockEnd()

    def _assemble(self, rip: int, insns: list[Insn], invalid: bool) -> Block:
        cg = self.cg
        regs = sorted(cg.used)
        written = sorted(cg.written | cg.dup_written)
        flush = "; ".join(f"R[{r}] = r{r}" for r in written) or "pass"
        reload = "; ".join(f"r{r} = R[{r}]" for r in regs) or "pass"
        pro = []
        for name, expr in (("RT", "s.rt"), ("WT", "s.wt"), ("SB", "s.sb"), ("E", "s.env")):
            if name in cg.need:
                pro.append(f"{name} = {expr}")
        loads = regs if cg.loop else sorted(cg.read_first)
        pro += [f"r{r} = R[{r}]" for r in loads]
        head = ["def tb(s, R):", "    " + ("; ".join(pro) or "pass")]
        if cg.guard32:
            regs_or = " | ".join(f"r{r}" for r in cg.guard32)
            head.append(f"    if {regs_or} > {M32}: return PLAIN(s, R, {rip})")
        if cg.loop:
            # Bound the work of one call (~LOOP_BUDGET instructions; helpers count more), so
            # the dispatcher gets back often enough to poll timers and take interrupts.
            heavy = sum(1 for x in cg.inline_at if not x)
            budget = max(4, LOOP_BUDGET // (len(insns) + 16 * heavy))
            head += [f"    n = {budget}", "    while True:"]
        source = "\n".join(head + cg.lines) + "\n"
        source = _named(source.replace(FLUSH, flush).replace(RELOAD, reload))
        n = len(cg.rips)
        meta = BlockMeta(tuple([0] * len(head) + cg.line_insn), tuple(cg.rips),
                         tuple(cg.inline_at[:n]), tuple(cg.fk_at[:n]), tuple(written))
        every = insns + self.dup_insns
        spans: list[tuple[int, int]] = []
        ranges = [(x.addr - rip, x.addr - rip + x.size) for x in every]
        if invalid:  # its first byte, so that writing a valid opcode there retranslates
            pos = self._after(insns[-1]) if insns else rip
            ranges.append((pos - rip, pos - rip + 1))
        for a, b in sorted(ranges):
            if spans and a <= spans[-1][1]:
                if b > spans[-1][1]:
                    spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
        return Block(source, f"tb_{rip:x}", len(insns) + (1 if invalid else 0), insns, meta,
                     tuple(spans) or ((0, 1),))

    # -- small helpers for emitters ------------------------------------------------------------
    def live(self) -> int:
        """Flags read after the current instruction."""
        return self.live_after[self.k]

    def flags_live(self) -> bool:
        return bool(self.live() & self.infos[self.k][2])

    def heavy(self, call: str, result: str | None = None) -> None:
        """Call a helper that works on ``R`` and the flags in ``s``: flush, call, reload."""
        cg = self.cg
        cg.inline_at[self.k] = False
        cg.flush_flags()
        cg.emit(cg.flush_line())
        cg.emit(f"{result} = {call}" if result else call)
        cg.emit(RELOAD)
        if self.mode.bits == 64:
            cg.known32.clear()

    def heavy_exit(self, call: str) -> None:
        """A helper that returns the next RIP; the block ends."""
        cg = self.cg
        cg.inline_at[self.k] = False
        cg.flush_flags()
        cg.emit(cg.flush_line())
        cg.emit(f"return {call}")
        raise BlockEnd()

    def branch(self, cond: str | None, target: int | str, fall: int | None) -> None:
        """A branch to ``target`` if ``cond`` (None: always), else to ``fall``.

        Mid-block conditional branches are side exits (the block goes on with the
        fall-through); a branch to the block start is a back edge of its loop."""
        cg = self.cg
        last = self.in_dup or self.k == self.ninsns - 1
        back = cg.loop and target == cg.start
        if back and self.in_dup:
            self.dup_back = True
        if cond is not None:
            cg.emit(f"if {cond}:")
            cg.indent()
        if back:
            if self.flush_at_backedge:
                stmt = cg.flags_store_stmt()
                if stmt:
                    cg.emit(stmt)
            cg.emit("n -= 1")
            cg.emit("if n: continue")
        if back or cond is None or not self.emit_dup(target):
            cg.exit(str(target))
        if cond is None:
            raise BlockEnd()
        cg.dedent()
        if last:
            cg.exit(str(fall))
            raise BlockEnd()

    def emit_dup(self, target: int | str) -> bool:
        """At a side exit to ``target``: emit a copy of the first few instructions there
        (up to a return or a branch back to this loop block's head, all in this block's page)
        instead of leaving the block, so short paths (a loop's continue, a leaf function's
        return) skip the dispatcher and the block's exit and entry.
        Returns False (nothing emitted) if the code there does not qualify."""
        if not self.dup_ok or self.in_dup or not isinstance(target, int) \
                or len(self.dup_insns) >= DUP_TOTAL:
            return False
        base = self.mode.cs_base
        lin_mask = self.lin_mask
        page = (base + self.cg.start) & lin_mask & ~0xFFF
        ipmask = self.dec.ipmask
        seq: list[Insn] = []
        pos = target
        limit = DUP_MAX if self.cg.loop else 3  # outside loops only short returns qualify
        try:
            while len(seq) < limit:
                lin = (base + pos) & lin_mask
                if lin & ~0xFFF != page:
                    return False
                insn = self.dec.decode(self.fetch(pos, 15), pos)
                if insn is None or (lin & 0xFFF) + insn.size > 4096 or not self._dup_ok(insn):
                    return False
                seq.append(insn)
                if insn.id in ENDS_BLOCK or self._ends(insn):
                    break
                pos = (pos + insn.size) & ipmask
        except Exception:  # noqa: BLE001 - a fault or odd bytes there: just leave the block
            return False
        cg = self.cg
        # Only what pays for the extra translation: a short return path, or a path back to
        # the head of this block's loop (a loop's "continue").
        end = seq[-1]
        if not ((end.id == I.X86_INS_RET and len(seq) <= 3)
                or (cg.loop and self._branch_target(end) == cg.start)):
            return False
        ind = cg.ind
        saved = (cg.fcur, set(cg.known32), set(cg.written), cg.last_addr, cg.cur,
                 self.k, self.insn, len(cg.lines), len(cg.rips), len(self.dup_insns),
                 set(cg.used), set(cg.need), set(cg.read_first), len(cg.write_log))
        # Flag liveness along the copy (everything is live where it leaves).
        live = ALL
        infos = [self.flag_info(x) for x in seq]
        lives = [0] * len(seq)
        for j in range(len(seq) - 1, -1, -1):
            lives[j] = live
            reads, wdef, wmay, passthru = infos[j]
            live = reads | (live & ~wdef) | (passthru if live & wmay else 0)
        self.in_dup = True
        self.dup_back = False
        ok = False
        try:
            for j, insn in enumerate(seq):
                k = len(cg.rips)
                cg.cur = k
                cg.fk_at.append(-1 if cg.fcur is None else cg.fcur)
                cg.inline_at.append(True)
                cg.rips.append(insn.addr)
                self.infos.append(infos[j])
                self.live_after.append(lives[j])
                self.k = k
                self.insn = insn
                emitter = self.emitters.get(insn.id)
                if emitter is None:
                    break
                try:
                    emitter(insn)
                except BlockEnd:
                    ok = True
                    break
        except Untranslatable:
            ok = False
        finally:
            self.in_dup = False
        if ok:
            dw = set(cg.written) - saved[2]
            cg.dup_written |= dw
            self.dup_insns += seq
            if self.dup_back:
                self.dup_backs.append((saved[5], dw | {r for _k, r, _s, _c in
                                                       cg.write_log[saved[13]:]}))
        else:
            del cg.lines[saved[7]:]
            del cg.line_insn[saved[7]:]
            for lst in (cg.fk_at, cg.inline_at, cg.rips, self.infos, self.live_after):
                del lst[saved[8]:]
            del self.dup_insns[saved[9]:]
            cg.used, cg.need, cg.read_first = saved[10], saved[11], saved[12]
            del cg.write_log[saved[13]:]
        cg.fcur, cg.known32, cg.written, cg.last_addr, cg.cur = saved[:5]
        self.k, self.insn = saved[5], saved[6]
        cg.ind = ind
        return ok

    def _dup_ok(self, insn: Insn) -> bool:
        if insn.id not in DUP_IDS or insn.rep or insn.lock:
            return False
        return all(o.kind != OP_REG or o.rclass == GPR for o in insn.ops)

    # -- runs of pushes / pops (64-bit): one struct call for all of them -----------------------
    def _stack_run(self, insns: list[Insn], k: int) -> int:
        """How many instructions from ``k`` form a run of 8-byte pushes (optionally ending
        with a direct call) or pops (optionally ending with ``ret``); 0 if fewer than two."""
        if self.mode.bits != 64:
            return 0
        first = insns[k]
        pushes = first.id == I.X86_INS_PUSH
        if not pushes and first.id != I.X86_INS_POP:
            return 0
        j = end = k
        count = 0
        clobbered: set[int] = set()  # registers written by register moves between pushes
        while j < len(insns) and count < 8:
            x = insns[j]
            if x.id == (I.X86_INS_PUSH if pushes else I.X86_INS_POP) and len(x.ops) == 1:
                o = x.ops[0]
                if not (o.kind == OP_REG and o.rclass == GPR and o.size == 8 and o.reg != 4
                        and not o.high and o.reg not in clobbered) \
                        and not (pushes and o.kind == OP_IMM and not x.p66):
                    break
                j += 1
                count += 1
                end = j
                continue
            if pushes and count and self._transparent(x):
                clobbered.add(x.ops[0].reg)
                j += 1
                continue
            if (x.id == I.X86_INS_CALL and x.ops and x.ops[0].kind == OP_IMM) if pushes \
                    else (x.id == I.X86_INS_RET and not x.ops and not x.p66):
                count += 1
                end = j + 1
            break
        return end - k if count >= 2 else 0

    @staticmethod
    def _transparent(x: Insn) -> bool:
        """A register move a push run may span: no memory access, no fault, no flags, RSP
        neither read nor written (it runs after the merged store, or in order on the slow
        path)."""
        if x.id not in (I.X86_INS_MOV, I.X86_INS_LEA) or len(x.ops) != 2:
            return False
        d, src = x.ops
        if not (d.kind == OP_REG and d.rclass == GPR and d.size in (4, 8) and d.reg != 4):
            return False
        if x.id == I.X86_INS_LEA:
            return src.kind == OP_MEM and src.base != 4 and src.index != 4
        return src.kind == OP_IMM or (src.kind == OP_REG and src.rclass == GPR
                                      and src.reg != 4 and not src.high)

    def emit_stack_run(self, insns: list[Insn], k: int, m: int) -> None:
        """Pushes or pops ``insns[k:k+m]`` with one struct call when the bytes are in one
        mapped page; otherwise (the except branch) one by one, exactly as without the run."""
        cg = self.cg
        run = insns[k:k + m]
        pushes = run[0].id != I.X86_INS_POP
        last = run[-1]
        a = cg.t("a")
        fk = -1 if cg.fcur is None else cg.fcur
        for j, x in enumerate(run):
            cg.fk_at[k + j] = fk
            cg.rips[k + j] = x.addr
        if pushes:
            moves = [x.id in (I.X86_INS_MOV, I.X86_INS_LEA) for x in run]
            vals = [str(x.next) if x.id == I.X86_INS_CALL else
                    "" if moves[j] else cg.read(x.ops[0], x, 8) for j, x in enumerate(run)]
            npush = m - sum(moves)
            cg.emit(f"{a} = ({cg.rget(4, 8)} - {8 * npush}) & {M64}")
            cg.need.add("WT")
            cg.emit(f"try: P{npush}Q(WT[{a} >> 12], {a} & 4095, "
                    f"{', '.join(v for v in reversed(vals) if v)})")
            cg.emit("except LE:")
            cg.indent()
            known32 = set(cg.known32)
            for j, v in enumerate(vals):
                cg.cur = self.k = k + j
                self.insn = run[j]
                if moves[j]:
                    self.emit_insn(run[j])
                else:
                    self.push(v, 8)
            cg.dedent()
            cg.emit("else:")
            cg.indent()
            cg.known32 = known32  # the moves again, from the state before the run
            for j, x in enumerate(run):
                if moves[j]:
                    cg.cur = self.k = k + j
                    self.insn = x
                    self.emit_insn(x)
            cg.rset(4, 8, a)
            cg.dedent()
            if last.id == I.X86_INS_CALL:
                self.call_tail(last, str(self._target(last)))
            return
        names = [cg.t("v") for _ in run]
        cg.emit(f"{a} = {cg.rget(4, 8)}")
        cg.need.add("RT")
        cg.emit(f"try: {', '.join(names)} = U{m}Q(RT[{a} >> 12], {a} & 4095)")
        cg.emit("except LE:")
        cg.indent()
        for j, x in enumerate(run):
            cg.cur = self.k = k + j
            self.insn = x
            v, nsp = self.pop_load(8, name=names[j])
            cg.rset(4, 8, nsp)
            if x.id == I.X86_INS_POP:
                cg.rset(x.ops[0].reg, 8, v)
        cg.dedent()
        cg.emit("else:")
        cg.indent()
        for j, x in enumerate(run):
            if x.id == I.X86_INS_POP:
                cg.rset(x.ops[0].reg, 8, names[j])
        cg.rset(4, 8, f"({a} + {8 * m}) & {M64}")
        cg.dedent()
        if last.id == I.X86_INS_RET:
            self.ret_exit(names[-1], last)

    def sp_size(self) -> int:
        return self.mode.stack_size

    def push(self, value: str, size: int) -> None:
        cg = self.cg
        sw = self.sp_size()
        nsp = cg.t("sp")
        cg.emit(f"{nsp} = ({cg.rget(4, sw)} - {size}) & {MASK[sw]}")
        a = cg.lin(R_SS, nsp)
        if not a.isidentifier():
            a = cg.t("a")
            cg.emit(f"{a} = {cg.lin(R_SS, nsp)}")
        cg.store(a, size, value)
        cg.rset(4, sw, nsp)

    def pop_load(self, size: int, offset: int = 0, name: str | None = None
                 ) -> tuple[str, str]:
        """Load the value at the top of the stack; return (value temp, new sp expr)."""
        cg = self.cg
        sw = self.sp_size()
        sp = cg.rget(4, sw)
        off = sp if not offset else f"(({sp} + {offset}) & {MASK[sw]})"
        a = cg.lin(R_SS, off)
        if not a.isidentifier():
            a = cg.t("a")
            cg.emit(f"{a} = {cg.lin(R_SS, off)}")
        v = cg.load(a, size, name=name)
        nsp = cg.t("sp")
        cg.emit(f"{nsp} = ({sp} + {size + offset}) & {MASK[sw]}")
        return v, nsp

    def stack_op_size(self, insn: Insn) -> int:
        if self.mode.bits == 64:
            return 2 if insn.p66 else 8
        return insn.opsize

    # -- the emitter table ------------------------------------------------------------------
    def _table(self) -> dict[int, Callable[[Insn], None]]:
        t: dict[int, Callable[[Insn], None]] = {}
        for i in ALU:
            t[i] = self.e_alu
        for i in SHIFTS:
            t[i] = self.e_shift
        for i in JCC:
            t[i] = self.e_jcc
        for i in SETCC:
            t[i] = self.e_setcc
        for i in CMOVCC:
            t[i] = self.e_cmov
        for i in STRING_OPS:
            t[i] = self.e_string
        for i in NOPS:
            t[i] = self.e_nop
        t.update({
            I.X86_INS_MOV: self.e_mov, I.X86_INS_MOVABS: self.e_mov,
            I.X86_INS_MOVZX: self.e_movzx, I.X86_INS_MOVSX: self.e_movsx,
            I.X86_INS_MOVSXD: self.e_movsx, I.X86_INS_LEA: self.e_lea,
            I.X86_INS_INC: self.e_incdec, I.X86_INS_DEC: self.e_incdec,
            I.X86_INS_NEG: self.e_neg, I.X86_INS_NOT: self.e_not,
            I.X86_INS_XCHG: self.e_xchg, I.X86_INS_XADD: self.e_xadd,
            I.X86_INS_CMPXCHG: self.e_cmpxchg, I.X86_INS_CMPXCHG8B: self.e_cmpxchg8b,
            I.X86_INS_CMPXCHG16B: self.e_cmpxchg8b, I.X86_INS_SHLD: self.e_shd,
            I.X86_INS_SHRD: self.e_shd, I.X86_INS_MUL: self.e_mul, I.X86_INS_IMUL: self.e_imul,
            I.X86_INS_DIV: self.e_div, I.X86_INS_IDIV: self.e_div,
            I.X86_INS_BT: self.e_bt, I.X86_INS_BTS: self.e_bt, I.X86_INS_BTR: self.e_bt,
            I.X86_INS_BTC: self.e_bt, I.X86_INS_BSF: self.e_bsf, I.X86_INS_BSR: self.e_bsf,
            I.X86_INS_TZCNT: self.e_tzcnt, I.X86_INS_LZCNT: self.e_tzcnt,
            I.X86_INS_POPCNT: self.e_popcnt, I.X86_INS_BSWAP: self.e_bswap,
            I.X86_INS_CBW: self.e_cbw, I.X86_INS_CWDE: self.e_cbw, I.X86_INS_CDQE: self.e_cbw,
            I.X86_INS_CWD: self.e_cwd, I.X86_INS_CDQ: self.e_cwd, I.X86_INS_CQO: self.e_cwd,
            I.X86_INS_JMP: self.e_jmp, I.X86_INS_CALL: self.e_call, I.X86_INS_RET: self.e_ret,
            I.X86_INS_LOOP: self.e_loop, I.X86_INS_LOOPE: self.e_loop,
            I.X86_INS_LOOPNE: self.e_loop, I.X86_INS_JCXZ: self.e_jcxz,
            I.X86_INS_JECXZ: self.e_jcxz, I.X86_INS_JRCXZ: self.e_jcxz,
            I.X86_INS_PUSH: self.e_push, I.X86_INS_POP: self.e_pop,
            I.X86_INS_PUSHAW: self.e_pusha, I.X86_INS_PUSHAL: self.e_pusha,
            I.X86_INS_POPAW: self.e_popa, I.X86_INS_POPAL: self.e_popa,
            I.X86_INS_LEAVE: self.e_leave, I.X86_INS_ENTER: self.e_enter,
            I.X86_INS_LAHF: self.e_lahf, I.X86_INS_SAHF: self.e_sahf,
            I.X86_INS_CLC: self.e_cflag, I.X86_INS_STC: self.e_cflag,
            I.X86_INS_CMC: self.e_cflag, I.X86_INS_CLD: self.e_dflag,
            I.X86_INS_STD: self.e_dflag, I.X86_INS_XLATB: self.e_xlat,
            I.X86_INS_SALC: self.e_salc,
        })
        from .system import system_emitters

        t.update(system_emitters(self))
        from .sse import sse_emitters

        t.update(sse_emitters(self))
        return t

    # -- emitters: data movement ------------------------------------------------------------------
    def e_nop(self, insn: Insn) -> None:
        if insn.id == I.X86_INS_NOP and insn.ops and insn.ops[0].kind == OP_MEM:
            return  # multi-byte nop: no memory access
        if insn.id in (I.X86_INS_CLFLUSH, I.X86_INS_CLFLUSHOPT, I.X86_INS_CLWB):
            return

    def e_mov(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        if d.kind == OP_REG and d.rclass != GPR or s.kind == OP_REG and s.rclass != GPR:
            from .system import mov_special

            mov_special(self, insn)
            return
        size = d.size
        v = cg.read(s, insn, size)
        if d.kind == OP_MEM:
            b = cg.addr(d, insn, "b")
            cg.store(b, size, v)
        else:
            cg.rset(d.reg, size, v, d.high)

    def e_movzx(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        v = cg.read(s, insn)
        cg.rset(d.reg, d.size, v)

    def e_movsx(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        v = cg.read(s, insn)
        if s.size >= d.size:
            cg.rset(d.reg, d.size, f"({v} & {MASK[d.size]})")
            return
        t = cg.t()
        cg.emit(f"{t} = {_sx(v, s.size)} & {MASK[d.size]}")
        cg.rset(d.reg, d.size, t)

    def e_lea(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        ea = cg.ea(s, insn.addrsize, insn.next)
        if d.size != insn.addrsize:
            ea = f"(({ea}) & {MASK[d.size]})"
        cg.rset(d.reg, d.size, ea)

    def e_xchg(self, insn: Insn) -> None:
        cg = self.cg
        a, b = insn.ops
        if a.kind == OP_MEM:
            a, b = b, a
        size = a.size
        if b.kind == OP_MEM:
            ad = cg.addr(b, insn)
            v = cg.load(ad, size, rmw=True)
            cg.store(ad, size, cg.rget(a.reg, size, a.high))
            cg.rset(a.reg, size, v, a.high)
            return
        x, y = cg.t(), cg.t()
        cg.emit(f"{x}, {y} = {cg.rget(a.reg, size, a.high)}, {cg.rget(b.reg, size, b.high)}")
        cg.rset(a.reg, size, y, a.high)
        cg.rset(b.reg, size, x, b.high)

    def e_cbw(self, insn: Insn) -> None:
        cg = self.cg
        size = insn.opsize  # capstone's names for 98/99 do not follow the mode
        half = size // 2
        t = cg.t()
        cg.emit(f"{t} = {_sx(cg.rget(0, half), half)} & {MASK[size]}")
        cg.rset(0, size, t)

    def e_cwd(self, insn: Insn) -> None:
        cg = self.cg
        size = insn.opsize
        t = cg.t()
        cg.emit(f"{t} = {MASK[size]} if {cg.rget(0, size)} >= {SIGN[size]} else 0")
        cg.rset(2, size, t)

    def e_xlat(self, insn: Insn) -> None:
        cg = self.cg
        asz = insn.addrsize
        seg = insn.segov if insn.segov >= 0 else R_DS
        off = f"(({cg.rget(3, asz)} + {cg.rget(0, 1)}) & {MASK[asz]})"
        cg.emit(f"a = {cg.lin(seg, off)}")
        v = cg.load("a", 1)
        cg.rset(0, 1, v)

    def e_salc(self, insn: Insn) -> None:
        if self.mode.bits == 64:
            raise Untranslatable("salc in 64-bit mode")
        cg = self.cg
        t = cg.t()
        cg.emit(f"{t} = 255 if {cg.cf()} else 0")
        cg.rset(0, 1, t)

    # -- emitters: arithmetic ---------------------------------------------------------------------
    def e_alu(self, insn: Insn) -> None:
        cg = self.cg
        i = insn.id
        d, s = insn.ops
        size = d.size
        m = MASK[size]
        kind = ALU[i]
        op = ALU_OP[i]
        writes = i not in (I.X86_INS_CMP, I.X86_INS_TEST)
        live = self.flags_live()
        if (i in (I.X86_INS_XOR, I.X86_INS_SUB) and d.kind == OP_REG and s.kind == OP_REG
                and d.reg == s.reg and d.high == s.high):
            if live:
                if kind == F.LOGIC:
                    cg.set_flags(F.LOGIC, size, r="0")
                else:
                    cg.set_flags(F.SUB, size, a="0", b="0", r="0")
            cg.rset(d.reg, size, "0", d.high)
            return
        carry = None
        if kind in (F.ADC, F.SBB):
            carry = cg.t("c")
            cg.emit(f"{carry} = {cg.cf()}")
        x = cg.read(d, insn, size, rmw=writes)
        y = cg.read(s, insn, size)
        if kind == F.LOGIC:
            res = f"{x} {op} {y}"
        elif carry is not None:
            res = f"({x} {op} {y} {op} {carry}) & {m}"
        else:
            res = f"({x} {op} {y}) & {m}"
        if not live:
            if writes:
                if d.kind == OP_MEM:
                    t = cg.t()
                    cg.emit(f"{t} = {res}")
                    cg.write(d, t, size)
                else:
                    cg.write(d, res, size)
            return
        if d.kind == OP_MEM:
            t = cg.t()
            cg.emit(f"{t} = {res}")
            if writes:
                cg.write(d, t, size)
            self._alu_flags(kind, size, x, y, t, carry)
            return
        # Register destination with live flags: compute straight into the flag locals.
        if kind == F.LOGIC:
            cg.emit(f"fr = {res}")
            cg.set_flags(F.LOGIC, size, r="fr")
            if writes:
                cg.write(d, "fr", size)
        elif carry is not None:
            cg.emit(f"fa, fb, fc = {x}, {y}, {carry}")
            cg.emit(f"fr = (fa {op} fb {op} fc) & {m}")
            cg.set_flags(kind, size, a="fa", b="fb", r="fr", c="fc")
            if writes:
                cg.write(d, "fr", size)
        else:
            cg.emit(f"fa, fb = {x}, {y}")
            cg.set_flags(kind, size, a="fa", b="fb")
            if writes:
                cg.write(d, f"(fa {op} fb) & {m}", size)

    def _alu_flags(self, kind: int, size: int, x: str, y: str, t: str, carry: str | None
                   ) -> None:
        cg = self.cg
        if kind == F.LOGIC:
            cg.set_flags(F.LOGIC, size, r=t)
        else:
            cg.set_flags(kind, size, a=x, b=y, r=t, c=carry or "0")

    def e_incdec(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        size = d.size
        inc = insn.id == I.X86_INS_INC
        x = cg.read(d, insn, size, rmw=True)
        prev = cg.fcur
        fused = None
        if prev is not None and F.size_of(prev) == size:
            fused = F.FUSED.get((F.kind_of(prev), not inc))
        if d.kind == OP_REG and size >= 4:
            # The register holds the result: no temporary.
            cg.rset(d.reg, size, f"({x} {'+' if inc else '-'} 1) & {MASK[size]}")
            if not self.flags_live():
                return
            if fused is not None:  # CF stays computable from fa/fb: no carry value now
                cg.set_flags(fused, size, a="fa", b="fb", r=f"r{d.reg}")
            else:
                cg.set_flags(F.INC if inc else F.DEC, size, r=f"r{d.reg}", c=cg.cf())
            return
        t = cg.t()
        cg.emit(f"{t} = ({x} {'+' if inc else '-'} 1) & {MASK[size]}")
        if d.kind == OP_MEM:
            cg.write(d, t, size)
        if self.flags_live():
            cg.set_flags(F.INC if inc else F.DEC, size, r=t, c=cg.cf())
        if d.kind == OP_REG:
            cg.write(d, t, size)

    def e_neg(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        size = d.size
        x = cg.val(cg.read(d, insn, size, rmw=True))
        t = cg.t()
        cg.emit(f"{t} = (-{x}) & {MASK[size]}")
        cg.write(d, t, size)
        if self.flags_live():
            cg.set_flags(F.SUB, size, a="0", b=x, r=t)

    def e_not(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        x = cg.read(d, insn, d.size, rmw=True)
        t = cg.t()
        cg.emit(f"{t} = {x} ^ {MASK[d.size]}")
        cg.write(d, t, d.size)

    def e_xadd(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        size = d.size
        x = cg.read(d, insn, size, rmw=True)
        if d.kind == OP_REG:
            xt = cg.t()
            cg.emit(f"{xt} = {x}")
            x = xt
        y = cg.t()
        cg.emit(f"{y} = {cg.rget(s.reg, size, s.high)}")
        t = cg.t()
        cg.emit(f"{t} = ({x} + {y}) & {MASK[size]}")
        if d.kind == OP_MEM:
            cg.write(d, t, size)
            cg.rset(s.reg, size, x, s.high)
        else:
            cg.rset(s.reg, size, x, s.high)
            cg.rset(d.reg, size, t, d.high)
        if self.flags_live():
            cg.set_flags(F.ADD, size, a=x, b=y, r=t)

    def e_cmpxchg(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        size = d.size
        acc = cg.t()
        cg.emit(f"{acc} = {cg.rget(0, size)}")
        x = cg.read(d, insn, size, rmw=True)
        if d.kind == OP_REG:
            xt = cg.t()
            cg.emit(f"{xt} = {x}")
            x = xt
        if d.kind == OP_REG:
            # A register destination is left alone when the comparison fails: a 32-bit one
            # keeps its upper half (no write-back, unlike memory's locked write cycle).
            src = cg.t()
            cg.emit(f"{src} = {cg.rget(s.reg, size, s.high)}")
            cg.emit(f"if {acc} == {x}:")
            cg.indent()
            cg.rset(d.reg, size, src, d.high, conditional=True)
            cg.dedent()
        else:
            t = cg.t()
            cg.emit(f"{t} = {cg.rget(s.reg, size, s.high)} if {acc} == {x} else {x}")
            cg.write(d, t, size)
        if self.flags_live():
            cg.set_flags(F.SUB, size, a=acc, b=x, r=f"({acc} - {x}) & {MASK[size]}")
        cg.emit(f"if {acc} != {x}:")
        cg.indent()
        cg.rset(0, size, x, conditional=True)
        cg.dedent()

    def e_cmpxchg8b(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        half = 8 if insn.id == I.X86_INS_CMPXCHG16B else 4
        ad = cg.addr(d, insn)
        if half == 8:
            cg.emit(f"if {ad} & 15: raise CpuException(13, 0)")
            lo = cg.load(ad, 8, rmw=True)
            cg.emit(f"a2 = ({ad} + 8) & {MASK[8]}")
            hi = cg.load("a2", 8, rmw=True)
        else:
            v = cg.load(ad, 8, rmw=True)
            lo, hi = cg.t(), cg.t()
            cg.emit(f"{lo}, {hi} = {v} & {M32}, {v} >> 32")
        eq = cg.t("eq")
        cg.emit(f"{eq} = {lo} == {cg.rget(0, half)} and {hi} == {cg.rget(2, half)}")
        nlo, nhi = cg.t(), cg.t()
        cg.emit(f"{nlo}, {nhi} = ({cg.rget(3, half)}, {cg.rget(1, half)}) if {eq} "
                f"else ({lo}, {hi})")
        if half == 8:
            cg.store(ad, 8, nlo)
            cg.store("a2", 8, nhi)
        else:
            cg.store(ad, 8, f"{nlo} | ({nhi} << 32)")
        if self.flags_live():
            self._set_zf(f"{eq}")
        cg.emit(f"if not {eq}:")
        cg.indent()
        cg.rset(0, half, lo, conditional=True)
        cg.rset(2, half, hi, conditional=True)
        cg.dedent()

    def _set_zf(self, cond: str) -> None:
        """Flags become: ZF = cond, the others unchanged."""
        cg = self.cg
        prev = cg.flags_now()
        cg.set_flags(F.EFLAGS, 4, r=f"({prev} & {ARITH & ~ZF}) | (64 if {cond} else 0)")

    def e_mul(self, insn: Insn) -> None:
        cg = self.cg
        (s,) = insn.ops
        size = s.size
        bits = size * 8
        y = cg.read(s, insn, size)
        t = cg.t()
        cg.emit(f"{t} = {cg.rget(0, size)} * {y}")
        lo = cg.t()
        cg.emit(f"{lo} = {t} & {MASK[size]}")
        hi = cg.t()
        cg.emit(f"{hi} = {t} >> {bits}")
        if size == 1:
            cg.rset(0, 2, t)
        else:
            cg.rset(0, size, lo)
            cg.rset(2, size, hi)
        if self.flags_live():
            cg.set_flags(F.MUL, size, r=lo, c=f"(1 if {hi} else 0)")

    def e_imul(self, insn: Insn) -> None:
        cg = self.cg
        ops = insn.ops
        if len(ops) == 1:
            s = ops[0]
            size = s.size
            bits = size * 8
            y = cg.read(s, insn, size)
            t = cg.t()
            cg.emit(f"{t} = {_sx(cg.rget(0, size), size)} * {_sx(y, size)}")
            lo = cg.t()
            cg.emit(f"{lo} = {t} & {MASK[size]}")
            if size == 1:
                cg.rset(0, 2, f"({t} & {M16})")
            else:
                cg.rset(0, size, lo)
                cg.rset(2, size, f"(({t} >> {bits}) & {MASK[size]})")
        else:
            d = ops[0]
            size = d.size
            if len(ops) == 2:
                x = cg.rget(d.reg, size)
                y = cg.read(ops[1], insn, size)
            else:
                x = cg.read(ops[1], insn, size)
                y = cg.read(ops[2], insn, size)
            t = cg.t()
            cg.emit(f"{t} = {_sx(x, size)} * {_sx(y, size)}")
            lo = cg.t()
            cg.emit(f"{lo} = {t} & {MASK[size]}")
            cg.rset(d.reg, size, lo)
        if self.flags_live():
            cg.set_flags(F.MUL, size, r=lo, c=f"(0 if {t} == {_sx(lo, size)} else 1)")

    def e_div(self, insn: Insn) -> None:
        cg = self.cg
        (s,) = insn.ops
        size = s.size
        bits = size * 8
        y = cg.read(s, insn, size)
        if size == 1:
            n = cg.rget(0, 2)
        else:
            n = f"(({cg.rget(2, size)} << {bits}) | {cg.rget(0, size)})"
        fn = "DIVU" if insn.id == I.X86_INS_DIV else "DIVS"
        q, r = cg.t("q"), cg.t("r")
        cg.emit(f"{q}, {r} = {fn}({n}, {y}, {size})")
        if size == 1:
            cg.rset(0, 2, f"(({r} << 8) | {q})")
        else:
            cg.rset(0, size, q)
            cg.rset(2, size, r)

    # -- shifts -------------------------------------------------------------------------------
    def _count(self, insn: Insn) -> tuple[str, int]:
        """(count expression, static count or -1), masked as the CPU does."""
        ops = insn.ops
        mask = 63 if ops[0].size == 8 else 31
        if len(ops) == 1:
            return "1", 1
        c = ops[-1]
        if c.kind == OP_IMM:
            v = c.imm & mask
            return str(v), v
        return f"({self.cg.rget(1, 1)} & {mask})", -1

    def e_shift(self, insn: Insn) -> None:
        cg = self.cg
        kind = SHIFTS[insn.id]
        d = insn.ops[0]
        size = d.size
        bits = size * 8
        m = MASK[size]
        cnt, static = self._count(insn)
        if static > 0 and kind in ("rcl", "rcr") and size < 4:
            static %= bits + 1
            cnt = str(static)
        live = self.flags_live()
        if static == 0:
            if d.kind == OP_REG and size == 4 and self.mode.bits == 64:
                cg.rset(d.reg, 4, cg.rget(d.reg, 4))  # the write still zero-extends
            return
        if not live and static > 0 and d.kind == OP_REG and kind in ("shl", "shr"):
            # Flags dead, constant count: one assignment, no temporaries.
            x = cg.read(d, insn, size)
            cg.rset(d.reg, size, f"({x} << {cnt}) & {m}" if kind == "shl" else f"{x} >> {cnt}",
                    d.high)
            return
        x = cg.val(cg.read(d, insn, size, rmw=True))
        if static < 0:
            c = cg.t("n")
            cg.emit(f"{c} = {cnt}")
        else:
            c = cnt
        t, cf = cg.t(), cg.t("cf")
        newflags: str | None = None
        fkind = None
        if kind == "shl":
            cg.emit(f"{t} = ({x} << {c}) & {m}")
            if live:
                cg.emit(f"{cf} = ({x} >> ({bits} - {c})) & 1 if {c} <= {bits} else 0")
            fkind = F.SHL
        elif kind == "shr":
            cg.emit(f"{t} = {x} >> {c}")
            if live:
                cg.emit(f"{cf} = ({x} >> ({c} - 1)) & 1 if {c} else 0")
            fkind = F.SHR
        elif kind == "sar":
            sx = cg.t()
            cg.emit(f"{sx} = {_sx(x, size)}")
            cg.emit(f"{t} = ({sx} >> {c}) & {m}")
            if live:
                cg.emit(f"{cf} = ({sx} >> ({c} - 1)) & 1 if {c} else 0")
            fkind = F.SAR
        elif kind in ("rol", "ror"):
            k = c
            if size < 4:
                k = cg.t("k")
                cg.emit(f"{k} = {c} % {bits}")
            if kind == "rol":
                cg.emit(f"{t} = (({x} << {k}) | ({x} >> ({bits} - {k}))) & {m}")
                if live:
                    cg.emit(f"{cf} = {t} & 1")
                of = f"((({t} >> {bits - 1}) ^ {t}) & 1)"
            else:
                cg.emit(f"{t} = (({x} >> {k}) | ({x} << ({bits} - {k}))) & {m}")
                if live:
                    cg.emit(f"{cf} = {t} >> {bits - 1}")
                of = f"((({t} >> {bits - 1}) ^ ({t} >> {bits - 2})) & 1)"
            newflags = f"({{prev}} & {ARITH & ~(CF | OF)}) | {cf} | ({of} << 11)"
        else:  # rcl, rcr
            k = cg.t("k")
            cg.emit(f"{k} = {c} % {bits + 1}" if size < 4 else f"{k} = {c}")
            v = cg.t()
            cin = cg.t("ci")
            cg.emit(f"{cin} = {cg.cf()}")
            cg.emit(f"{v} = ({cin} << {bits}) | {x}")
            wm = (1 << (bits + 1)) - 1
            if kind == "rcl":
                cg.emit(f"{v} = (({v} << {k}) | ({v} >> ({bits + 1} - {k}))) & {wm}")
                cg.emit(f"{t}, {cf} = {v} & {m}, {v} >> {bits}")
                of = f"((({t} >> {bits - 1}) ^ {cf}) & 1)"
            else:
                cg.emit(f"{v} = (({v} >> {k}) | ({v} << ({bits + 1} - {k}))) & {wm}")
                cg.emit(f"{t}, {cf} = {v} & {m}, {v} >> {bits}")
                of = f"((({t} >> {bits - 1}) ^ ({t} >> {bits - 2})) & 1)"
            newflags = f"({{prev}} & {ARITH & ~(CF | OF)}) | {cf} | ({of} << 11)"
            if size < 4:
                c = k  # flags change only if the reduced count is not zero
        cg.write(d, t, size)
        if not live:
            return
        if fkind is not None:
            vals = {"a": x, "r": t, "c": cf}
            if static > 0:
                cg.set_flags(fkind, size, **vals)
                return
            new = F.flags_expr(fkind, size, a=x, r=t, c=cf)
        else:
            assert newflags is not None
            new = newflags.replace("{prev}", cg.flags_now())
        if static > 0 and fkind is None:
            cg.set_flags(F.EFLAGS, 4, r=f"({new})")
            return
        prev = cg.flags_now()
        cg.set_flags(F.EFLAGS, 4, r=f"(({new}) if {c} else {prev})")

    def e_shd(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops[0], insn.ops[1]
        size = d.size
        bits = size * 8
        m = MASK[size]
        cnt, static = self._count(insn)
        if static == 0:
            if d.kind == OP_REG and size == 4 and self.mode.bits == 64:
                cg.rset(d.reg, 4, cg.rget(d.reg, 4))
            return
        x = cg.val(cg.read(d, insn, size, rmw=True))
        y = cg.rget(s.reg, size, s.high)
        if static < 0:
            c = cg.t("n")
            cg.emit(f"{c} = {cnt}")
        else:
            c = cnt
        t, cf = cg.t(), cg.t("cf")
        left = insn.id == I.X86_INS_SHLD
        if size == 2:
            # 16-bit: the CPU shifts the 32-bit x:y (or y:x); counts above 16 are undefined.
            if left:
                w = cg.t()
                cg.emit(f"{w} = (({x} << 16) | {y}) << {c}")
                cg.emit(f"{t} = ({w} >> 16) & {m}")
                cg.emit(f"{cf} = ({w} >> 32) & 1 if {c} else 0")
            else:
                w = cg.t()
                cg.emit(f"{w} = ({y} << 16) | {x}")
                cg.emit(f"{t} = ({w} >> {c}) & {m}")
                cg.emit(f"{cf} = ({w} >> ({c} - 1)) & 1 if {c} else 0")
        elif left:
            cg.emit(f"{t} = (({x} << {c}) | ({y} >> ({bits} - {c}))) & {m}")
            cg.emit(f"{cf} = ({x} >> ({bits} - {c})) & 1")
        else:
            cg.emit(f"{t} = (({x} >> {c}) | ({y} << ({bits} - {c}))) & {m}")
            cg.emit(f"{cf} = ({x} >> ({c} - 1)) & 1 if {c} else 0")
        cg.write(d, t, size)
        if not self.flags_live():
            return
        fkind = F.SHL if left else F.SHR
        if static > 0:
            cg.set_flags(fkind, size, a=x, r=t, c=cf)
            return
        new = F.flags_expr(fkind, size, a=x, r=t, c=cf)
        prev = cg.flags_now()
        cg.set_flags(F.EFLAGS, 4, r=f"(({new}) if {c} else {prev})")

    # -- bits ----------------------------------------------------------------------------------
    def e_bt(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        size = d.size
        bits = size * 8
        i = insn.id
        rmw = i != I.X86_INS_BT
        if s.kind == OP_IMM:
            bit = str(s.imm & (bits - 1))
            x = cg.read(d, insn, size, rmw=rmw)
        else:
            off = cg.rget(s.reg, size)
            bit = f"({off} & {bits - 1})"
            if d.kind == OP_MEM:
                asz = insn.addrsize
                ea = cg.ea(d, asz, insn.next)
                shift = {2: 4, 4: 5, 8: 6}[size]
                adj = f"(({_sx(off, size)} >> {shift}) * {size})"
                cg.emit(f"a = {cg.lin(d.seg, f'(({ea} + {adj}) & {MASK[asz]})')}")
                cg.last_addr = "a"
                x = cg.load("a", size, rmw=rmw)
            else:
                x = cg.read(d, insn, size)
        b = cg.t("b")
        cg.emit(f"{b} = {bit}")
        cf = cg.t("cf")
        cg.emit(f"{cf} = ({x} >> {b}) & 1")
        if rmw:
            t = cg.t()
            op = {I.X86_INS_BTS: f"{x} | (1 << {b})", I.X86_INS_BTR: f"{x} & ~(1 << {b})",
                  I.X86_INS_BTC: f"{x} ^ (1 << {b})"}[i]
            cg.emit(f"{t} = {op}")
            cg.write(d, t, size)
        if self.flags_live():
            self._set_cf_keep_zf(cf)

    def _set_cf_keep_zf(self, cf: str) -> None:
        """CF = cf, ZF unchanged, the rest undefined (QEMU's choice for BT)."""
        cg = self.cg
        if cg.fcur is not None and F.kind_of(cg.fcur) not in (F.EFLAGS, F.SUB, F.ADD):
            cg.set_flags(F.SAR, F.size_of(cg.fcur), r="fr", c=cf)
            return
        prev = cg.flags_now()
        cg.set_flags(F.EFLAGS, 4, r=f"({prev} & {ARITH & ~CF}) | {cf}")

    def e_bsf(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        size = d.size
        x = cg.read(s, insn, size)
        xv = cg.t()
        cg.emit(f"{xv} = {x}")
        forward = insn.id in (I.X86_INS_BSF, I.X86_INS_TZCNT)  # TZCNT without BMI1 is BSF
        idx = (f"({xv} & -{xv}).bit_length() - 1" if forward else f"{xv}.bit_length() - 1")
        t = cg.t()
        cg.emit(f"{t} = {idx} if {xv} else {cg.rget(d.reg, size)}")
        cg.rset(d.reg, size, t)
        if self.flags_live():
            cg.set_flags(F.LOGIC, size, r=xv)

    def e_tzcnt(self, insn: Insn) -> None:
        feature = "bmi1" if insn.id == I.X86_INS_TZCNT else "abm"
        if feature not in self.mode.features:
            # Without the feature the F3 prefix is ignored: this is BSF / BSR.
            self.e_bsf(insn)
            return
        cg = self.cg
        d, s = insn.ops
        size = d.size
        bits = size * 8
        x = cg.read(s, insn, size)
        xv = cg.t()
        cg.emit(f"{xv} = {x}")
        t = cg.t()
        if insn.id == I.X86_INS_TZCNT:
            cg.emit(f"{t} = ({xv} & -{xv}).bit_length() - 1 if {xv} else {bits}")
        else:
            cg.emit(f"{t} = {bits} - {xv}.bit_length()")
        cg.rset(d.reg, size, t)
        if self.flags_live():
            cg.set_flags(F.EFLAGS, 4, r=f"(1 if {xv} == 0 else 0) | (64 if {t} == 0 else 0)")

    def e_popcnt(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        x = cg.read(s, insn, d.size)
        xv = cg.t()
        cg.emit(f"{xv} = {x}")
        t = cg.t()
        cg.emit(f"{t} = bin({xv}).count('1')")
        cg.rset(d.reg, d.size, t)
        if self.flags_live():
            cg.set_flags(F.EFLAGS, 4, r=f"(64 if {xv} == 0 else 0)")

    def e_bswap(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        size = d.size
        t = cg.t()
        if size == 2:
            cg.emit(f"{t} = 0")
        else:
            cg.emit(f"{t} = int.from_bytes({cg.rget(d.reg, size)}.to_bytes({size}, 'little'),"
                    f" 'big')")
        cg.rset(d.reg, size, t)

    def e_setcc(self, insn: Insn) -> None:
        cg = self.cg
        (d,) = insn.ops
        cc = SETCC[insn.id]
        if d.kind == OP_MEM:
            cg.last_addr = cg.addr(d, insn)
        t = cg.t()
        cg.emit(f"{t} = 1 if {cg.cond(cc)} else 0")
        cg.write(d, t, 1)

    def e_cmov(self, insn: Insn) -> None:
        cg = self.cg
        d, s = insn.ops
        size = d.size
        v = cg.read(s, insn, size)
        t = cg.t()
        cg.emit(f"{t} = {v} if {cg.cond(CMOVCC[insn.id])} else {cg.rget(d.reg, size)}")
        cg.rset(d.reg, size, t)

    # -- flags instructions ---------------------------------------------------------------------
    def e_lahf(self, insn: Insn) -> None:
        cg = self.cg
        t = cg.t()
        cg.emit(f"{t} = ({cg.flags_now()} & 0xD5) | 2")
        cg.rset(0, 1, t, high=True)

    def e_sahf(self, insn: Insn) -> None:
        cg = self.cg
        if not self.flags_live():
            return
        ah = cg.rget(0, 1, True)
        prev = cg.flags_now()
        cg.set_flags(F.EFLAGS, 4, r=f"({prev} & {OF}) | ({ah} & 0xD5)")

    def e_cflag(self, insn: Insn) -> None:
        cg = self.cg
        if not self.flags_live():
            return
        prev = cg.flags_now()
        op = {I.X86_INS_CLC: f"{prev} & {ARITH & ~CF}", I.X86_INS_STC: f"{prev} | 1",
              I.X86_INS_CMC: f"{prev} ^ 1"}[insn.id]
        cg.set_flags(F.EFLAGS, 4, r=f"({op})")

    def e_dflag(self, insn: Insn) -> None:
        cg = self.cg
        cg.need.add("E")
        if insn.id == I.X86_INS_CLD:
            cg.emit("E.eflags &= -1025")
        else:
            cg.emit("E.eflags |= 1024")

    # -- control flow ---------------------------------------------------------------------------
    def e_jcc(self, insn: Insn) -> None:
        self.branch(self.cg.cond(JCC[insn.id]), self._target(insn), insn.next)

    def e_jmp(self, insn: Insn) -> None:
        cg = self.cg
        (op,) = insn.ops
        if insn.follow:
            return  # the block continues at the target
        if op.kind == OP_IMM:
            self.branch(None, self._target(insn), None)
        size = 8 if self.mode.bits == 64 else insn.opsize
        v = cg.read(op, insn, size)
        t = cg.t()
        cg.emit(f"{t} = {v}")
        cg.exit(t)
        raise BlockEnd()

    def e_call(self, insn: Insn) -> None:
        cg = self.cg
        (op,) = insn.ops
        size = 8 if self.mode.bits == 64 else insn.opsize
        if op.kind == OP_IMM:
            target = str(self._target(insn))
        else:
            v = cg.read(op, insn, size)
            target = cg.t()
            cg.emit(f"{target} = {v}")
        self.push(str(insn.next), size)
        self.call_tail(insn, target)

    def call_tail(self, insn: Insn, target: str) -> None:
        """What a call does after pushing the return address."""
        cg = self.cg
        if insn.follow:
            return  # the block continues in the callee
        if target == str(cg.start) and cg.loop:
            self.branch(None, cg.start, None)
        cg.exit(target)
        raise BlockEnd()

    def e_ret(self, insn: Insn) -> None:
        cg = self.cg
        size = self.stack_op_size(insn)
        v, nsp = self.pop_load(size)
        if insn.ops:
            sw = self.sp_size()
            cg.emit(f"{nsp} = ({nsp} + {insn.ops[0].imm & M16}) & {MASK[sw]}")
        cg.rset(4, self.sp_size(), nsp)
        self.ret_exit(v, insn)

    def ret_exit(self, v: str, insn: Insn) -> None:
        """Leave the block to the popped address ``v``; a followed call's return goes on
        in the block when ``v`` is the address that call pushed."""
        cg = self.cg
        if insn.ret_to is None or self.in_dup:
            cg.exit(v)
            raise BlockEnd()
        cg.emit(f"if {v} != {insn.ret_to}:")
        cg.indent()
        cg.exit(v)
        cg.dedent()

    def e_loop(self, insn: Insn) -> None:
        cg = self.cg
        asz = insn.addrsize
        c = cg.t("c")
        cg.emit(f"{c} = ({cg.rget(1, asz)} - 1) & {MASK[asz]}")
        cg.rset(1, asz, c)
        cond = f"{c} != 0"
        if insn.id == I.X86_INS_LOOPE:
            cond = f"({cond} and {cg.cond(4)})"
        elif insn.id == I.X86_INS_LOOPNE:
            cond = f"({cond} and {cg.cond(5)})"
        self.branch(cond, self._target(insn), insn.next)

    def e_jcxz(self, insn: Insn) -> None:
        cg = self.cg
        size = {I.X86_INS_JCXZ: 2, I.X86_INS_JECXZ: 4, I.X86_INS_JRCXZ: 8}[insn.id]
        self.branch(f"{cg.rget(1, size)} == 0", self._target(insn), insn.next)

    # -- stack ---------------------------------------------------------------------------------
    def e_push(self, insn: Insn) -> None:
        cg = self.cg
        (op,) = insn.ops
        if op.kind == OP_REG and op.rclass == SEG:
            size = self.stack_op_size(insn)
            cg.need.add("E")
            v = cg.t()
            cg.emit(f"{v} = E.segs[{op.reg}].selector")
            if size > 2:
                # Modern CPUs write only 16 bits of the slot; QEMU writes the whole slot.
                pass
            self.push(v, size)
            return
        size = self.stack_op_size(insn) if op.kind != OP_REG else op.size
        if op.kind == OP_MEM:
            size = op.size
        if op.kind == OP_IMM:
            size = self.stack_op_size(insn)
        v = cg.read(op, insn, size)
        if op.kind == OP_MEM:
            t = cg.t()
            cg.emit(f"{t} = {v}")
            v = t
        self.push(v, size)

    def e_pop(self, insn: Insn) -> None:
        cg = self.cg
        (op,) = insn.ops
        if op.kind == OP_REG and op.rclass == SEG:
            from .system import pop_seg

            pop_seg(self, insn)
            return
        size = op.size
        v, nsp = self.pop_load(size)
        if op.kind == OP_MEM:
            b = cg.addr(op, insn, "b")
            cg.store(b, size, v)
            cg.rset(4, self.sp_size(), nsp)
            return
        cg.rset(4, self.sp_size(), nsp)
        cg.rset(op.reg, size, v, op.high)

    def e_pusha(self, insn: Insn) -> None:
        if self.mode.bits == 64:
            raise Untranslatable("pusha in 64-bit mode")
        cg = self.cg
        size = insn.opsize
        sw = self.sp_size()
        sp = cg.t("sp")
        cg.emit(f"{sp} = {cg.rget(4, sw)}")
        vals = [cg.rget(r, size) for r in range(8)]
        vals[4] = f"({sp} & {MASK[size]})"
        for k, v in enumerate(vals):
            a = cg.t("a")
            cg.emit(f"{a} = {cg.lin(R_SS, f'(({sp} - {(k + 1) * size}) & {MASK[sw]})')}")
            cg.store(a, size, v)
        cg.rset(4, sw, f"(({sp} - {8 * size}) & {MASK[sw]})")

    def e_popa(self, insn: Insn) -> None:
        if self.mode.bits == 64:
            raise Untranslatable("popa in 64-bit mode")
        cg = self.cg
        size = insn.opsize
        sw = self.sp_size()
        sp = cg.t("sp")
        cg.emit(f"{sp} = {cg.rget(4, sw)}")
        vals = []
        for k in range(8):
            a = cg.t("a")
            cg.emit(f"{a} = {cg.lin(R_SS, f'(({sp} + {k * size}) & {MASK[sw]})')}")
            vals.append(cg.load(a, size))
        for k, reg in enumerate((7, 6, 5, 4, 3, 2, 1, 0)):
            if reg != 4:
                cg.rset(reg, size, vals[k])
        cg.rset(4, sw, f"(({sp} + {8 * size}) & {MASK[sw]})")

    def e_leave(self, insn: Insn) -> None:
        cg = self.cg
        size = self.stack_op_size(insn)
        sw = self.sp_size()
        bp = cg.t()
        cg.emit(f"{bp} = {cg.rget(5, sw)}")
        a = cg.t("a")
        cg.emit(f"{a} = {cg.lin(R_SS, bp)}")
        v = cg.load(a, size)
        cg.rset(4, sw, f"(({bp} + {size}) & {MASK[sw]})")
        cg.rset(5, size, v)

    def e_enter(self, insn: Insn) -> None:
        cg = self.cg
        alloc = insn.ops[0].imm & M16
        level = insn.ops[1].imm & 31
        size = self.stack_op_size(insn)
        sw = self.sp_size()
        if level:
            self.heavy(f"H_ENTER(s, {alloc}, {level}, {size}, {sw})")
            return
        nsp = cg.t("sp")
        cg.emit(f"{nsp} = ({cg.rget(4, sw)} - {size}) & {MASK[sw]}")
        a = cg.t("a")
        cg.emit(f"{a} = {cg.lin(R_SS, nsp)}")
        cg.store(a, size, cg.rget(5, size))
        cg.rset(5, size, f"({nsp} & {MASK[size]})")
        cg.rset(4, sw, f"(({nsp} - {alloc}) & {MASK[sw]})")

    # -- strings ----------------------------------------------------------------------------------
    def e_string(self, insn: Insn) -> None:
        if self._is_sse(insn):
            from .sse import sse_fallback

            sse_fallback(self, insn)
            return
        cg = self.cg
        op, size = STRING_OPS[insn.id]
        if size > 1:
            size = insn.opsize  # the word/dword/qword forms share one opcode
        seg = insn.segov if insn.segov >= 0 else R_DS
        rep = insn.rep
        if op in ("movs", "stos", "lods", "ins", "outs") and rep:
            rep = 0xF3
        if op in ("ins", "outs"):
            self.heavy_exit(f"H_STRIO(s, {op == 'ins'}, {size}, {rep}, {insn.addrsize}, "
                            f"{seg}, {insn.addr}, {insn.next})")
        fn = f"H_STR(s, {op!r}, {size}, {rep}, {insn.addrsize}, {seg})"
        if not rep:
            self.heavy(fn)
            return
        cg.inline_at[self.k] = False
        cg.flush_flags()
        cg.emit(cg.flush_line())
        cg.emit(f"if not {fn}: return {insn.addr}")
        cg.emit(RELOAD)
        if self.mode.bits == 64:
            cg.known32.clear()


#: Instructions a side exit may copy from its target (plain register/memory work and the
#: branch or return that ends the copy), at most DUP_MAX per exit, DUP_TOTAL per block.
#: Eight fits the "skip ahead, then continue" paths of byte-decoding loops in Linux (a
#: ULEB128-style loop ran as two blocks per iteration with four).
DUP_IDS = {
    I.X86_INS_MOV, I.X86_INS_MOVZX, I.X86_INS_MOVSX, I.X86_INS_MOVSXD, I.X86_INS_LEA,
    I.X86_INS_INC, I.X86_INS_DEC, I.X86_INS_NEG, I.X86_INS_NOT, I.X86_INS_PUSH,
    I.X86_INS_POP, I.X86_INS_RET, I.X86_INS_JMP, I.X86_INS_CALL, I.X86_INS_NOP,
    I.X86_INS_SHL, I.X86_INS_SHR, I.X86_INS_SAR,
} | set(ALU) | set(JCC) | set(CMOVCC) | set(SETCC)
DUP_MAX, DUP_TOTAL = 8, 24

_FLAG_NEUTRAL = {
    I.X86_INS_MOV, I.X86_INS_MOVABS, I.X86_INS_MOVZX, I.X86_INS_MOVSX, I.X86_INS_MOVSXD,
    I.X86_INS_LEA, I.X86_INS_NOT, I.X86_INS_XCHG, I.X86_INS_BSWAP, I.X86_INS_CBW,
    I.X86_INS_CWDE, I.X86_INS_CDQE, I.X86_INS_CWD, I.X86_INS_CDQ, I.X86_INS_CQO,
    I.X86_INS_JMP, I.X86_INS_CALL, I.X86_INS_RET, I.X86_INS_PUSH, I.X86_INS_POP,
    I.X86_INS_LEAVE, I.X86_INS_ENTER, I.X86_INS_CLD, I.X86_INS_STD, I.X86_INS_XLATB,
    I.X86_INS_DIV, I.X86_INS_IDIV, I.X86_INS_LOOP, I.X86_INS_JCXZ, I.X86_INS_JECXZ,
    I.X86_INS_JRCXZ, I.X86_INS_PUSHAW, I.X86_INS_PUSHAL, I.X86_INS_POPAW, I.X86_INS_POPAL,
} | NOPS

