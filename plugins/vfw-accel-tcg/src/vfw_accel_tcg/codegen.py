"""Code generation state for one translated block: lines, locals, lazy flags, exits.

The translator (translate.py) walks the decoded instructions and calls the emit helpers here.
Generated functions look like::

    def tb(s, R):
        RT = s.rt; WT = s.wt; r0 = R[0]; r3 = R[3]
        ...one or more lines per guest instruction...

Guest registers live in locals ``r0``..``r15`` for the whole block (loaded on entry, written back
at exits and before helpers that work on ``R``); the lazy flags live in locals ``fa fb fr fc``
with a kind known at translation time. Every instruction performs its memory accesses before it
commits registers or flags, so a fault leaves the locals at the instruction boundary. There is no
handler in the block: the dispatcher finds the block's frame in the exception's traceback, maps
the line (line tables are exact) to the instruction, and commits the frame's locals
(:class:`BlockMeta` says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import flags as F
from .consts import M16, M32, M64, MASK, R_CS, R_DS, R_ES, R_FS, R_GS, R_SS
from .decode import OP_IMM, OP_MEM, OP_REG, Insn, Op

#: About how many guest instructions a block that loops on itself runs per call.
LOOP_BUDGET = 4096

FLUSH = "@FLUSH@"
RELOAD = "@RELOAD@"


class Untranslatable(Exception):
    """The instruction cannot be translated (unimplemented): it becomes #UD."""


@dataclass
class Mode:
    """The translation-relevant CPU mode (a translated block is valid only in its mode)."""

    bits: int  # code size: 16, 32, 64
    ss32: bool  # stack size 32 (non-64-bit modes)
    cpl: int
    pe: bool
    lma: bool
    flat: bool  # DS, ES and SS have base 0 (non-64-bit modes)
    cs_base: int
    fpu_ts_em: int  # CR0.TS|EM bits
    osfxsr: bool
    features: frozenset[str] = field(default_factory=frozenset)

    @property
    def stack_size(self) -> int:
        if self.bits == 64:
            return 8
        return 4 if self.ss32 else 2


class CodeGen:
    """Lines of Python source with the instruction index of each, plus block state."""

    def __init__(self, mode: Mode, start: int):
        self.mode = mode
        self.start = start
        self.lines: list[str] = []
        self.line_insn: list[int] = []
        self.ind = 1
        self.cur = 0  # current instruction index
        self.used: set[int] = set()
        self.written: set[int] = set()
        #: registers only copied side-exit paths write (see Translator.emit_dup)
        self.dup_written: set[int] = set()
        #: registers read before the block writes them (the prologue loads these)
        self.read_first: set[int] = set()
        #: (instruction index, register, size, conditional) of every register write
        self.write_log: list[tuple[int, int, int, bool]] = []
        #: registers a loop block assumes zero-extended at its head (checked on entry)
        self.guard32: list[int] = []
        self.known32: set[int] = set() if mode.bits == 64 else set(range(16))
        self.need: set[str] = set()
        self.tmp = 0
        self.last_addr = "a"  # name holding the address of the last memory operand read
        # Lazy flags: None = in s (external); else fop of the values in fa/fb/fr/fc locals.
        self.fcur: int | None = None
        self.kinds_emitted: set[int] = set()
        self.fk_at: list[int] = []  # per instruction: fop in locals at its start, -1, -2 loop
        self.inline_at: list[bool] = []
        self.rips: list[int] = []
        self.loop = False
        self.first_setter_seen = False
        self.loop_head_fk = -1

    # -- lines --------------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.ind + line)
        self.line_insn.append(self.cur)

    def indent(self) -> None:
        self.ind += 1

    def dedent(self) -> None:
        self.ind -= 1

    def t(self, prefix: str = "t") -> str:
        """A fresh temporary (never clashes with ``r0``..``r15``, ``fa``.. or ``n``)."""
        self.tmp += 1
        return f"{prefix}_{self.tmp}"

    def val(self, expr: str) -> str:
        """``expr`` as a name that stays valid after registers change."""
        if expr.isidentifier() and not (expr[0] == "r" and expr[1:].isdigit()):
            return expr
        if expr.isdigit():
            return expr
        v = self.t("x")
        self.emit(f"{v} = {expr}")
        return v

    # -- registers ----------------------------------------------------------------------------
    def rget(self, idx: int, size: int, high: bool = False) -> str:
        self.used.add(idx)
        if idx not in self.written:
            self.read_first.add(idx)
        r = f"r{idx}"
        if size == 8:
            return r
        if size == 4:
            return r if idx in self.known32 else f"({r} & {M32})"
        if size == 2:
            return f"({r} & {M16})"
        if high:
            return f"(({r} >> 8) & 255)"
        return f"({r} & 255)"

    def rset(self, idx: int, size: int, expr: str, high: bool = False,
             conditional: bool = False) -> None:
        """Assign a value already masked to ``size`` to a register (x86 merge rules).

        ``conditional``: the assignment is inside an ``if``, so what is known about the
        register afterwards must hold on both paths."""
        self.used.add(idx)
        if (size < 4 or conditional) and idx not in self.written:
            self.read_first.add(idx)  # merged with (or kept from) the old value
        self.written.add(idx)
        self.write_log.append((self.cur, idx, size, conditional))
        r = f"r{idx}"
        if size < 4 and not (expr.isidentifier() or expr.isdigit()):
            expr = f"({expr})"
        if size == 8:
            self.emit(f"{r} = {expr}")
            if self.mode.bits == 64:
                self.known32.discard(idx)
        elif size == 4:
            self.emit(f"{r} = {expr}")
            if not conditional:
                self.known32.add(idx)
        elif size == 2:
            self.emit(f"{r} = ({r} & -65536) | {expr}")
        elif high:
            self.emit(f"{r} = ({r} & -65281) | ({expr} << 8)")
        else:
            self.emit(f"{r} = ({r} & -256) | {expr}")

    def flush_line(self) -> str:
        """Statement writing back the registers changed so far (exact outside loops)."""
        if self.loop:
            return FLUSH
        return "; ".join(f"R[{r}] = r{r}" for r in sorted(self.written)) or "pass"

    def reload_line(self) -> str:
        return RELOAD

    # -- addresses ------------------------------------------------------------------------------
    def ea(self, op: Op, addrsize: int, next_rip: int) -> str:
        """Expression of the effective address (offset) of a memory operand."""
        parts: list[str] = []
        if op.base == 16:  # RIP-relative
            return str((next_rip + op.disp) & MASK[addrsize])
        if op.base >= 0:
            parts.append(self.rget(op.base, addrsize))
        if op.index >= 0:
            ix = self.rget(op.index, addrsize)
            parts.append(ix if op.scale == 1 else f"{ix} * {op.scale}")
        disp = op.disp & MASK[addrsize]
        if disp or not parts:
            parts.append(str(disp))
        expr = " + ".join(parts)
        if len(parts) == 1 and (op.base >= 0 or op.index >= 0) and op.scale == 1:
            return expr  # a register alone is already within the address size
        if len(parts) == 1 and op.base < 0 and op.index < 0:
            return expr
        return f"(({expr}) & {MASK[addrsize]})"

    def lin(self, seg: int, off: str) -> str:
        """Linear address expression of ``seg:off``."""
        mode = self.mode
        if mode.bits == 64:
            if seg in (R_FS, R_GS):
                self.need.add("SB")
                return f"((SB[{seg}] + {off}) & {M64})"
            return off
        if seg == R_CS:
            if mode.cs_base == 0:
                return off
            return f"(({mode.cs_base} + {off}) & {M32})"
        if mode.flat and seg in (R_DS, R_ES, R_SS):
            return off
        self.need.add("SB")
        return f"((SB[{seg}] + {off}) & {M32})"

    def addr(self, op: Op, insn: Insn, name: str = "a") -> str:
        """The linear address of ``op`` as a name: a register local that already holds it,
        or ``name`` assigned here."""
        expr = self.lin(op.seg, self.ea(op, insn.addrsize, insn.next))
        if expr.isidentifier():
            return expr
        self.emit(f"{name} = {expr}")
        return name

    # -- memory ---------------------------------------------------------------------------------
    def load(self, a: str, size: int, rmw: bool = False, name: str | None = None) -> str:
        v = name or self.t("v")
        table = "WT" if rmw else "RT"
        self.need.add(table)
        slow = "RDW" if rmw else "RD"
        if size == 1:
            self.emit(f"try: {v} = {table}[{a} >> 12][{a} & 4095]")
        else:
            self.emit(f"try: {v} = U{size * 8}({table}[{a} >> 12], {a} & 4095)[0]")
        self.emit(f"except LE: {v} = {slow}(s, {a}, {size})")
        return v

    def store(self, a: str, size: int, value: str) -> None:
        self.need.add("WT")
        if size == 1:
            self.emit(f"try: WT[{a} >> 12][{a} & 4095] = {value}")
        else:
            self.emit(f"try: P{size * 8}(WT[{a} >> 12], {a} & 4095, {value})")
        self.emit(f"except LE: WR(s, {a}, {size}, {value})")

    # -- operands -------------------------------------------------------------------------------
    def read(self, op: Op, insn: Insn, size: int | None = None, rmw: bool = False,
             a: str = "a") -> str:
        """Expression (or temp) holding an operand's value, masked to its size."""
        size = size or op.size
        if op.kind == OP_REG:
            if op.rclass != 0:
                raise Untranslatable(f"register class {op.rclass}")
            return self.rget(op.reg, size, op.high)
        if op.kind == OP_IMM:
            return str(op.imm & MASK[size])
        if op.kind == OP_MEM:
            self.last_addr = self.addr(op, insn, a)
            return self.load(self.last_addr, size, rmw)
        raise Untranslatable("operand")

    def write(self, op: Op, value: str, size: int | None = None, a: str = "a") -> None:
        """Write an operand; a memory operand's address must already be in ``a``."""
        size = size or op.size
        if op.kind == OP_REG:
            if op.rclass != 0:
                raise Untranslatable(f"register class {op.rclass}")
            self.rset(op.reg, size, value, op.high)
        elif op.kind == OP_MEM:
            self.store(self.last_addr if a == "a" else a, size, value)
        else:
            raise Untranslatable("write to immediate")

    # -- lazy flags -----------------------------------------------------------------------------
    def set_flags(self, kind: int, size: int, **vals: str) -> None:
        """Make the flags those of a ``kind`` op (emits only the fields the kind uses)."""
        fop = F.fop_of(kind, size)
        lhs, rhs = [], []
        for f in F.FIELDS[kind]:
            v = vals[f[1]]
            if v != f:
                lhs.append(f)
                rhs.append(v)
        if lhs:  # simultaneous: values may refer to the previous fa/fb/fr/fc
            self.emit(f"{', '.join(lhs)} = {', '.join(rhs)}")
        self.fcur = fop
        self.kinds_emitted.add(fop)

    def cond(self, cc: int) -> str:
        if self.fcur is None:
            return f"CC(s, {cc})"
        return F.cond_expr(F.kind_of(self.fcur), F.size_of(self.fcur), cc)

    def cf(self) -> str:
        """Int expression (0/1) of the current CF."""
        if self.fcur is None:
            return "CFS(s)"
        return F.cf_expr(F.kind_of(self.fcur), F.size_of(self.fcur))

    def flags_now(self) -> str:
        """Int expression of the current six arithmetic flags."""
        if self.fcur is None:
            return "FLS(s)"
        return F.flags_expr(F.kind_of(self.fcur), F.size_of(self.fcur))

    def flags_store_stmt(self) -> str:
        """Statement storing the in-locals flags into ``s`` (or '' if they are there)."""
        if self.fcur is None:
            return ""
        kind = F.kind_of(self.fcur)
        parts = [f"s.fop = {self.fcur}"] + [f"s.{f} = {f}" for f in F.FIELDS[kind]]
        return "; ".join(parts)

    def flush_flags(self) -> None:
        stmt = self.flags_store_stmt()
        if stmt:
            self.emit(stmt)
        self.fcur = None

    # -- exits ---------------------------------------------------------------------------------
    def exit(self, target: str) -> None:
        """Leave the block to ``target`` (an expression of the next RIP)."""
        stmt = self.flags_store_stmt()
        flush = self.flush_line()
        if flush == "pass":
            flush = ""
        line = "; ".join(x for x in (flush, stmt) if x)
        if line:
            self.emit(line)
        self.emit(f"return {target}")
