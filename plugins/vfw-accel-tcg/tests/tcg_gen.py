"""Random instruction sequences for differential tests (Intel syntax for GNU as).

``program(rnd, bits, n)`` returns (assembly text, mask of flags left undefined at the end).
Every memory operand is ``[rbx + disp]`` inside the data window (RBX is never written);
flag readers are only emitted while the flags they read are defined.
"""

from __future__ import annotations

import random

C, P, A, Z, S, O = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800  # noqa: E741 - the EFLAGS names
ALL = C | P | A | Z | S | O

REGS64 = {
    8: ["rax", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15"],
    4: ["eax", "ecx", "edx", "esi", "edi", "ebp", "r8d", "r9d", "r10d", "r11d", "r12d", "r13d",
        "r14d", "r15d"],
    2: ["ax", "cx", "dx", "si", "di", "bp", "r8w", "r9w", "r10w", "r11w", "r12w", "r13w",
        "r14w", "r15w"],
    1: ["al", "cl", "dl", "sil", "dil", "bpl", "r8b", "r9b", "r10b", "r11b", "r12b", "r13b",
        "r14b", "r15b"],
}
REGS32 = {
    4: ["eax", "ecx", "edx", "esi", "edi", "ebp"],
    2: ["ax", "cx", "dx", "si", "di", "bp"],
    1: ["al", "cl", "dl", "ah", "ch", "dh"],
}
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword", 16: "xmmword"}
CCS = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]
CC_READS = {"o": O, "no": O, "b": C, "ae": C, "e": Z, "ne": Z, "be": C | Z, "a": C | Z,
            "s": S, "ns": S, "p": P, "np": P, "l": S | O, "ge": S | O, "le": Z | S | O,
            "g": Z | S | O}
SPECIAL = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
           0xFFFFFFFF]


class Gen:
    """``sse``: emit SSE integer instructions (32/64-bit code); ``native``: also emit what
    only a real-CPU oracle checks (unicorn gets it wrong or vfw's default CPUID hides it)."""

    def __init__(self, rnd: random.Random, bits: int, sse: bool = True, native: bool = False):
        self.r = rnd
        self.bits = bits
        self.sse_ok = sse and bits != 16
        self.native = native
        self.undef = 0
        self.lines: list[str] = []
        #: line -> (flags it reads, writes, leaves undefined), for ``undefined``.
        self.effects: dict[str, tuple[int, int, int]] = {}
        self.pushes = 0
        self.pre = ""
        self.regs = REGS64 if bits == 64 else REGS32
        self.base = {64: "rbx", 32: "ebx", 16: "bx"}[bits]

    # -- pieces --------------------------------------------------------------------------
    def sizes(self) -> list[int]:
        return [1, 2, 4, 8] if self.bits == 64 else [1, 2, 4]

    def reg(self, size: int) -> str:
        return self.r.choice(self.regs[size])

    def imm(self, size: int) -> int:
        bits = min(size, 4) * 8
        if self.r.random() < 0.4:
            v = self.r.choice(SPECIAL) & ((1 << bits) - 1)
        else:
            v = self.r.getrandbits(bits)
        if size == 8:  # imm32 sign-extended
            v = v - (1 << 32) if v & 0x80000000 else v
        return v

    def mem(self, size: int, align: int = 1) -> str:
        disp = self.r.randrange(-0x400, 0x400)
        disp -= disp % align
        sign = "+" if disp >= 0 else "-"
        return f"{PTR[size]} ptr [{self.base} {sign} {abs(disp)}]"

    def rm(self, size: int) -> str:
        return self.mem(size) if self.r.random() < 0.35 else self.reg(size)

    def emit(self, line: str, reads: int = 0, writes: int = 0, undef: int = 0) -> bool:
        if reads & self.undef:
            self.pre = ""
            return False
        self.lines.append(self.pre + line)
        self.effects[self.pre + line] = (reads, writes, undef)
        self.pre = ""
        self.undef = (self.undef & ~writes) | undef
        return True

    def one(self) -> None:
        kinds = [self.alu, self.alu, self.alu, self.incdec, self.shift, self.shift, self.mul,
                 self.div, self.mov, self.movx, self.lea, self.xchg, self.bits_op, self.cc,
                 self.cc, self.misc, self.stack, self.string, self.cmpxchg, self.shd,
                 self.branch]
        if self.sse_ok:
            kinds.append(self.sse)
        if self.native:
            kinds.append(self.native_op)
        for _ in range(20):
            if self.r.choice(kinds)():
                return

    # -- instruction groups ----------------------------------------------------------------
    def alu(self) -> bool:
        op = self.r.choice(["add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test"])
        size = self.r.choice(self.sizes())
        form = self.r.randrange(5)
        d = self.rm(size)
        if form == 0:
            # Both operands equal is a flag edge case (ADC/SBB with a carry in: a == b).
            same = not d.startswith(PTR[size]) and self.r.random() < 0.25
            s = d if same else self.reg(size)
        elif form == 1 and not d.startswith(PTR[size]):
            s = self.mem(size)
        else:
            s = str(self.imm(size))
            if op == "test" and "ptr" in d and self.r.random() < 0.5:
                pass
        reads = C if op in ("adc", "sbb") else 0
        undef = A if op in ("and", "or", "xor", "test") else 0
        return self.emit(f"{op} {d}, {s}", reads, ALL, undef)

    def incdec(self) -> bool:
        op = self.r.choice(["inc", "dec", "neg", "not"])
        size = self.r.choice(self.sizes())
        d = self.rm(size)
        if op == "not":
            return self.emit(f"{op} {d}")
        if op == "neg":
            return self.emit(f"{op} {d}", 0, ALL)
        return self.emit(f"{op} {d}", 0, ALL & ~C)

    def shift(self) -> bool:
        op = self.r.choice(["shl", "shr", "sar", "sal", "rol", "ror", "rcl", "rcr"])
        size = self.r.choice(self.sizes())
        d = self.rm(size)
        mask = 63 if size == 8 else 31
        mode = self.r.randrange(3)
        if mode == 0:
            cnt = 1
            text = f"{op} {d}, 1"
        else:
            cnt = self.r.choice([0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 200,
                                 self.r.randrange(256)])
            if mode == 1:
                text = f"{op} {d}, {cnt}"
            else:
                if "cl" in d or "rcx" in d or "ecx" in d or " cx" in f" {d}":
                    return False
                self.pre += f"mov cl, {cnt}\n"
                text = f"{op} {d}, cl"
        c = cnt & mask
        reads = C if op in ("rcl", "rcr") else 0
        bits = size * 8
        if op in ("rcl", "rcr") and size < 4:
            c %= bits + 1
            if c == 0 and cnt & mask:
                # A whole turn: nothing moves, but OF is undefined (the masked count is not
                # 1; AMD CPUs change it).
                return self.emit(text, reads, O, O)
        if c == 0:
            return self.emit(text, reads)
        if op in ("rol", "ror", "rcl", "rcr"):
            undef = O if c != 1 else 0
            return self.emit(text, reads, C | O, undef)
        undef = A | (O if c != 1 else 0)
        if c >= bits:
            undef |= C | O
        return self.emit(text, reads, ALL, undef)

    def shd(self) -> bool:
        op = self.r.choice(["shld", "shrd"])
        size = self.r.choice([s for s in self.sizes() if s > 1])
        d = self.rm(size)
        s = self.reg(size)
        limit = 15 if size == 2 else (63 if size == 8 else 31)
        cnt = self.r.randrange(0, limit + 1)
        if self.r.random() < 0.5:
            text = f"{op} {d}, {s}, {cnt}"
        else:
            if any(x in (d + s) for x in ("cl", "cx", "rcx", "ecx")):
                return False
            self.pre += f"mov cl, {cnt}\n"
            text = f"{op} {d}, {s}, cl"
        if cnt == 0:
            return self.emit(text)
        return self.emit(text, 0, ALL, A | (O if cnt != 1 else 0))

    def mul(self) -> bool:
        size = self.r.choice(self.sizes())
        form = self.r.randrange(3)
        if form == 0 or size == 1:
            op = self.r.choice(["mul", "imul"])
            return self.emit(f"{op} {self.rm(size)}", 0, ALL, S | Z | A | P)
        if form == 1:
            return self.emit(f"imul {self.reg(size)}, {self.rm(size)}", 0, ALL, S | Z | A | P)
        imm = self.imm(size)
        if size == 2:
            imm &= 0xFFFF
        return self.emit(f"imul {self.reg(size)}, {self.rm(size)}, {imm}", 0, ALL,
                         S | Z | A | P)

    def div(self) -> bool:
        size = self.r.choice(self.sizes())
        signed = self.r.random() < 0.5
        acc = {1: "ax", 2: "dx", 4: "edx", 8: "rdx"}[size]
        dv = self.reg(size)
        if dv in ("al", "ah", "ax", "eax", "rax", "dl", "dh", "dx", "edx", "rdx", "cl"):
            return False
        if not signed:
            self.pre += (f"xor {acc}, {acc}" if size > 1 else "movzx ax, al") + "\n"
            self.pre += f"or {dv}, 1\n"
            return self.emit(f"div {dv}", 0, ALL, ALL)
        # Sign-extend the dividend and keep the divisor away from -1 and 0.
        ext = {1: "cbw", 2: "cwd", 4: "cdq", 8: "cqo"}[size]
        self.pre += ext + "\n"
        self.pre += f"or {dv}, 2\n"
        return self.emit(f"idiv {dv}", 0, ALL, ALL)

    def mov(self) -> bool:
        size = self.r.choice(self.sizes())
        form = self.r.randrange(4)
        if form == 0:
            return self.emit(f"mov {self.reg(size)}, {self.rm(size)}")
        if form == 1:
            return self.emit(f"mov {self.mem(size)}, {self.reg(size)}")
        if form == 2 and size == 8 and self.r.random() < 0.5:
            return self.emit(f"movabs {self.reg(8)}, {self.r.getrandbits(64)}")
        return self.emit(f"mov {self.rm(size)}, {self.imm(size) & ((1 << (8 * size)) - 1) if size < 8 else self.imm(size)}")

    def movx(self) -> bool:
        op = self.r.choice(["movzx", "movsx"] + (["movsxd"] if self.bits == 64 else []))
        if op == "movsxd":
            return self.emit(f"movsxd {self.reg(8)}, {self.rm(4)}")
        ssize = self.r.choice([1, 2])
        dsize = self.r.choice([s for s in self.sizes() if s > ssize])
        d = self.reg(dsize)
        s = self.rm(ssize)
        if self.bits == 64 and s in ("ah", "ch", "dh"):
            return False
        return self.emit(f"{op} {d}, {s}")

    def lea(self) -> bool:
        size = self.r.choice([s for s in self.sizes() if s > 1])
        asz = self.r.choice([s for s in (2, 4, 8) if s <= (8 if self.bits == 64 else 4)]) \
            if self.bits != 16 else 2
        if self.bits == 16:
            base = self.r.choice(["bx", "bp", "si", "di"])
            idx = self.r.choice(["si", "di", ""]) if base in ("bx", "bp") else ""
            disp = self.r.randrange(-0x8000, 0x8000)
            e = f"[{base}{' + ' + idx if idx else ''} + {disp}]"
            return self.emit(f"lea {self.reg(size)}, {e}")
        if asz == 2:
            return False
        regs = self.regs[asz] if asz in self.regs else self.regs[4]
        b = self.r.choice(regs)
        i = self.r.choice(regs)
        sc = self.r.choice([1, 2, 4, 8])
        disp = self.r.randrange(-0x80000000, 0x80000000)
        return self.emit(f"lea {self.reg(size)}, [{b} + {i}*{sc} + {disp}]")

    def xchg(self) -> bool:
        size = self.r.choice(self.sizes())
        return self.emit(f"xchg {self.reg(size)}, {self.rm(size)}")

    def cmpxchg(self) -> bool:
        size = self.r.choice(self.sizes())
        form = self.r.randrange(4)
        if form == 0:
            d = self.rm(size)
            # A failing CMPXCHG leaves a 32-bit register destination's upper half alone;
            # unicorn (QEMU 5) zero-extends it: compare only the low half there.
            tail = f"\nmov {d}, {d}" if size == 4 and self.bits == 64 and not self.native \
                and "ptr" not in d else ""
            return self.emit(f"cmpxchg {d}, {self.reg(size)}{tail}", 0, ALL)
        if form == 1:
            return self.emit(f"xadd {self.rm(size)}, {self.reg(size)}", 0, ALL)
        if form == 2:
            if self.bits == 64 and self.r.random() < 0.5:
                return self.emit(f"cmpxchg16b {self.mem(16, 16)}", 0, Z,
                             0 if self.native else ALL & ~Z)
            # unicorn (QEMU 5) loses the other flags here; the SDM says they are unchanged.
            return self.emit(f"cmpxchg8b {self.mem(8)}", 0, Z, 0 if self.native else ALL & ~Z)
        if size >= 4:
            return self.emit(f"bswap {self.reg(size)}")
        return False

    def bits_op(self) -> bool:
        size = self.r.choice([s for s in self.sizes() if s > 1])
        ops = ["bt", "bts", "btr", "btc", "bsf", "bsr", "popcnt"]
        if self.bits == 16 and not self.native:
            ops.remove("popcnt")  # unicorn (QEMU 5) gets the operand size wrong in 16-bit code
        op = self.r.choice(ops)
        if op in ("bsf", "bsr"):
            d = self.reg(size)
            # A zero source leaves the destination alone on AMD, but Intel CPUs clear the
            # upper half of a 64-bit register (Linux's fls() notes it): normalise it.
            tail = f"\nmov {d}, {d}" if self.native and size == 4 and self.bits == 64 else ""
            return self.emit(f"{op} {d}, {self.rm(size)}{tail}", 0, ALL, C | O | S | A | P)
        if op == "popcnt":
            return self.emit(f"popcnt {self.reg(size)}, {self.rm(size)}", 0, ALL)
        form = self.r.randrange(3)
        if form == 0:
            text = f"{op} {self.rm(size)}, {self.r.randrange(256)}"
        elif form == 1:
            text = f"{op} {self.reg(size)}, {self.reg(size)}"
        else:
            r = self.reg(size)
            self.pre += f"and {r}, 0x3ff\n"
            text = f"{op} {self.mem(size)}, {r}"
        return self.emit(text, 0, C, O | S | A | P)

    def cc(self) -> bool:
        cc = self.r.choice(CCS)
        reads = CC_READS[cc]
        form = self.r.randrange(3)
        if form == 0:
            r = self.reg(1) if self.r.random() < 0.7 else self.mem(1)
            return self.emit(f"set{cc} {r}", reads)
        size = self.r.choice([s for s in self.sizes() if s > 1])
        if form == 1:
            return self.emit(f"cmov{cc} {self.reg(size)}, {self.rm(size)}", reads)
        return self.emit(f"j{cc} 1f\n{self.simple()}\n1:", reads)

    def simple(self) -> str:
        size = self.r.choice(self.sizes())
        return f"mov {self.reg(size)}, {self.rm(size)}"

    def branch(self) -> bool:
        x = self.r.random()
        if x < 0.2:
            # A call to a leaf function (the translator may follow it and its return).
            r = self.reg(4)
            return self.emit(f"call 1f\njmp 2f\n1: add {r}, {self.imm(4)}\nret\n2:", 0, ALL)
        if x < 0.3 and self.bits != 16:
            # A function that returns one byte past its call site: a followed return whose
            # address is not the one the call pushed.
            sp = {64: "qword ptr [rsp]", 32: "dword ptr [esp]"}[self.bits]
            return self.emit(f"call 1f\nnop\nnop\njmp 2f\n1: add {sp}, 1\nret\n2:", 0, ALL)
        if x < 0.6:
            r = self.reg(4)
            n = self.r.randrange(1, 6)
            cnt = {64: "ecx", 32: "ecx", 16: "cx"}[self.bits]
            if r in ("ecx", "r8d") or self.bits == 16:
                return False
            self.pre += f"mov {cnt}, {n}\n"
            return self.emit(f"1: add {r}, 3\nloop 1b", 0, ALL)
        return self.emit(f"jmp 1f\n{self.simple()}\n1:")

    def misc(self) -> bool:
        choice = self.r.randrange(8)
        if choice == 0:
            size = self.r.choice([2, 4, 8] if self.bits == 64 else [2, 4])
            ins = {2: "cbw", 4: "cwde", 8: "cdqe"}[size] if self.r.random() < 0.5 else \
                {2: "cwd", 4: "cdq", 8: "cqo"}[size]
            return self.emit(ins)
        if choice == 1:
            return self.emit("lahf", ALL & ~O)
        if choice == 2:
            return self.emit("sahf", 0, ALL & ~O)
        if choice == 3:
            op = self.r.choice(["clc", "stc"])
            return self.emit(op, 0, C)
        if choice == 4:
            return self.emit("cmc", C, C)
        if choice == 5:
            return self.emit("xlat" if self.bits != 64 else "xlatb")
        if choice == 6:
            return self.emit(self.r.choice(["nop", "pause"]))
        return self.emit(self.r.choice(["cld", "std"]))

    def stack(self) -> bool:
        size = {64: 8, 32: 4, 16: 2}[self.bits]
        choice = self.r.randrange(5)
        if choice == 0 and self.pushes < 40:
            self.pushes += 1
            return self.emit(f"push {self.reg(size)}")
        if choice == 1 and self.pushes > 0:
            self.pushes -= 1
            return self.emit(f"pop {self.reg(size)}")
        if choice == 2 and self.pushes < 40:
            self.pushes += 1
            return self.emit(f"push {self.mem(size)}")
        if choice == 3 and self.pushes < 40:
            self.pushes += 1
            return self.emit(f"push {self.imm(4) if size > 2 else self.imm(2) & 0xFFFF}")
        if self.pushes < 40:
            self.pushes += 1
            ok = self.emit("pushf", ALL)
            if ok:
                self.lines[-1] += f"\npop {self.reg(size)}"
                self.effects[self.lines[-1]] = (ALL, 0, 0)
                self.pushes -= 1
            return ok
        return False

    def string(self) -> bool:
        op = self.r.choice(["movs", "stos", "lods", "cmps", "scas"])
        size = self.r.choice(self.sizes())
        suffix = {1: "b", 2: "w", 4: "d", 8: "q"}[size]
        rep = self.r.choice(["", "rep ", "rep "] if op in ("movs", "stos", "lods")
                            else ["", "repe ", "repne "])
        si, di, cx = {64: ("rsi", "rdi", "rcx"), 32: ("esi", "edi", "ecx"),
                      16: ("si", "di", "cx")}[self.bits]
        self.pre += f"lea {si}, [{self.base} + {self.r.randrange(-0x300, 0x300)}]\n"
        self.pre += f"lea {di}, [{self.base} + {self.r.randrange(-0x300, 0x300)}]\n"
        count = self.r.randrange(0, 40)
        self.pre += f"mov {cx}, {count}\n"
        w = op in ("cmps", "scas")
        writes = ALL if w and (count or not rep) else 0
        return self.emit(f"{rep}{op}{suffix}", 0, writes)

    def native_op(self) -> bool:
        """TZCNT/LZCNT, SALC, bit-string offsets below the operand, JrCXZ, LOOPcc, and the
        legacy high-byte registers (AH..DH) in 64-bit code, where they exist without REX."""
        choice = self.r.randrange(7)
        cnt = {64: "ecx", 32: "ecx", 16: "cx"}[self.bits]
        if choice == 0:
            size = self.r.choice([s for s in self.sizes() if s > 1])
            op = self.r.choice(["tzcnt", "lzcnt"])
            return self.emit(f"{op} {self.reg(size)}, {self.rm(size)}", 0, ALL, O | S | A | P)
        if choice == 1:
            if self.bits == 64:
                return False
            return self.emit(".byte 0xd6", C)  # SALC: AL = CF ? 0xff : 0
        if choice == 2:  # a signed register bit offset may reach bytes below the operand
            size = self.r.choice([s for s in self.sizes() if s > 1])
            r = self.reg(size)
            if r in ("bx", "ebx", "rbx"):
                return False
            op = self.r.choice(["bt", "bts", "btr", "btc"])
            self.pre += f"mov {r}, {self.r.randrange(-0x1000, 0x1000)}\n"
            return self.emit(f"{op} {self.mem(size)}, {r}", 0, C, O | S | A | P)
        if choice == 3:
            op = self.r.choice({64: ["jecxz", "jrcxz"], 32: ["jecxz", "jcxz"],
                                16: ["jcxz", "jecxz"]}[self.bits])
            self.pre += f"mov {cnt}, {self.r.choice([0, 0, 1, 0x8000])}\n"
            return self.emit(f"{op} 1f\n{self.simple()}\n1:")
        if choice == 4:
            op = self.r.choice(["loope", "loopne"])
            self.pre += f"mov {cnt}, {self.r.randrange(1, 5)}\n"
            return self.emit(f"1: {op} 1b", Z)
        byte = ["al", "cl", "dl", "ah", "ch", "dh"]
        d, s = self.r.choice(byte), self.r.choice(byte + ["bh", "bl"])
        if self.r.random() < 0.3:  # RBX is the base: only [rbx + disp] needs no REX
            s = self.mem(1)
        op = self.r.choice(["add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "mov",
                            "xchg", "inc", "neg", "shl", "sar", "rol", "movzx", "movsx"])
        if op in ("movzx", "movsx"):
            return self.emit(f"{op} {self.r.choice(['eax', 'ecx', 'edx', 'esi', 'edi'])}, "
                             f"{self.r.choice(['ah', 'ch', 'dh', 'bh'])}")
        if op in ("inc", "neg"):
            return self.emit(f"{op} {d}", 0, ALL & ~C if op == "inc" else ALL)
        if op in ("shl", "sar", "rol"):
            return self.emit(f"{op} {d}, 1", 0, C | O if op == "rol" else ALL,
                             0 if op == "rol" else A)
        if op in ("mov", "xchg"):
            return self.emit(f"{op} {d}, {s}")
        reads = C if op in ("adc", "sbb") else 0
        return self.emit(f"{op} {d}, {s}", reads, ALL, A if op in ("and", "or", "xor") else 0)

    def sse(self) -> bool:
        x = f"xmm{self.r.randrange(16 if self.bits == 64 else 8)}"
        y = f"xmm{self.r.randrange(16 if self.bits == 64 else 8)}"
        m16 = self.mem(16, 16)
        op = self.r.choice(["movdqa", "movdqu", "movaps", "movups", "pxor", "por", "pand",
                            "pandn", "paddb", "paddw", "paddd", "paddq", "psubb", "psubw",
                            "psubd", "psubq", "pcmpeqb", "pcmpeqw", "pcmpeqd", "pcmpgtb",
                            "pcmpgtd", "punpcklbw", "punpckhbw", "punpckldq", "punpcklqdq",
                            "punpckhqdq", "pminub", "pmaxub", "xorps", "andps", "orps",
                            "pshufd", "psrldq", "pslldq", "psrlw", "psllq", "psrad",
                            "pmovmskb", "movd", "movq", "store", "psubusb", "pavgb",
                            "pmullw"])
        if op == "pshufd":
            return self.emit(f"pshufd {x}, {self.r.choice([y, m16])}, {self.r.randrange(256)}")
        if op in ("psrldq", "pslldq"):
            return self.emit(f"{op} {x}, {self.r.randrange(20)}")
        if op in ("psrlw", "psllq", "psrad"):
            return self.emit(f"{op} {x}, {self.r.randrange(70)}")
        if op == "pmovmskb":
            return self.emit(f"pmovmskb {self.reg(4)}, {x}")
        if op == "movd":
            if self.r.random() < 0.5:
                return self.emit(f"movd {x}, {self.rm(4)}")
            return self.emit(f"movd {self.rm(4)}, {x}")
        if op == "movq":
            if self.bits == 64 and self.r.random() < 0.5:
                return self.emit(f"movq {x}, {self.reg(8)}")
            return self.emit(f"movq {x}, {self.r.choice([y, self.mem(8)])}")
        if op == "store":
            return self.emit(f"movdqa {m16}, {x}")
        return self.emit(f"{op} {x}, {self.r.choice([y, m16])}")

    def sse_fp(self) -> bool:
        """SSE/SSE2 floating point: arithmetic, compares, conversions (see ``float_state``)."""
        nx = 16 if self.bits == 64 else 8
        x, y = f"xmm{self.r.randrange(nx)}", f"xmm{self.r.randrange(nx)}"
        r = self.r
        kind = r.choice(["arith", "arith", "arith", "cmp", "comi", "cvtsi", "cvt2si", "cvts",
                         "cvtp", "logic"])
        if kind == "arith":
            op = r.choice(["add", "sub", "mul", "div", "min", "max", "sqrt"])
            sfx = r.choice(["sd", "ss", "pd", "ps"])
            size = {"sd": 8, "ss": 4}.get(sfx, 16)
            return self.emit(f"{op}{sfx} {x}, {r.choice([y, self.mem(size, size)])}")
        if kind == "cmp":
            sfx = r.choice(["sd", "ss", "pd", "ps"])
            size = {"sd": 8, "ss": 4}.get(sfx, 16)
            return self.emit(f"cmp{sfx} {x}, {r.choice([y, self.mem(size, size)])}, "
                             f"{r.randrange(8)}")
        if kind == "comi":
            op = r.choice(["ucomisd", "comisd", "ucomiss", "comiss"])
            size = 8 if op.endswith("d") else 4
            return self.emit(f"{op} {x}, {r.choice([y, self.mem(size, size)])}", 0, ALL)
        if kind == "cvtsi":
            size = r.choice([4, 8] if self.bits == 64 else [4])
            return self.emit(f"{r.choice(['cvtsi2sd', 'cvtsi2ss'])} {x}, "
                             f"{r.choice([self.reg(size), self.mem(size)])}")
        if kind == "cvt2si":
            op = r.choice(["cvttsd2si", "cvtsd2si", "cvttss2si", "cvtss2si"])
            size = 8 if "sd" in op else 4
            d = self.reg(r.choice([4, 8] if self.bits == 64 else [4]))
            return self.emit(f"{op} {d}, {r.choice([y, self.mem(size, size)])}")
        if kind == "cvts":
            op = r.choice(["cvtss2sd", "cvtsd2ss"])
            size = 4 if op == "cvtss2sd" else 8
            return self.emit(f"{op} {x}, {r.choice([y, self.mem(size, size)])}")
        if kind == "cvtp":
            op = r.choice(["cvtdq2pd", "cvtdq2ps", "cvttpd2dq", "cvtpd2dq", "cvttps2dq",
                           "cvtps2dq", "cvtpd2ps", "cvtps2pd"])
            size = 8 if op in ("cvtdq2pd", "cvtps2pd") else 16
            return self.emit(f"{op} {x}, {r.choice([y, self.mem(size, size)])}")
        op = r.choice(["andpd", "andnps", "orpd", "xorpd", "unpcklps", "unpckhpd", "unpckhps",
                       "unpcklpd"])
        return self.emit(f"{op} {x}, {r.choice([y, self.mem(16, 16)])}")


def fp_program(rnd: random.Random, bits: int, n: int) -> str:
    """``n`` SSE floating-point instructions (no flags are left undefined)."""
    g = Gen(rnd, bits)
    while len(g.lines) < n:
        g.sse_fp()
    return "\n".join(g.lines)


def program(rnd: random.Random, bits: int, n: int, sse: bool = True, native: bool = False
            ) -> tuple[str, int]:
    g = Gen(rnd, bits, sse, native)
    for _ in range(n):
        g.one()
    return "\n".join(g.lines), g.undef


def undefined(lines: list[str], effects: dict[str, tuple[int, int, int]]) -> int | None:
    """The flags left undefined after ``lines`` (a subset of a Gen's, in order), or None
    if a line would read an undefined flag (a shrunk program that is no longer valid)."""
    undef = 0
    for line in lines:
        reads, writes, u = effects.get(line, (0, 0, 0))
        if reads & undef:
            return None
        undef = (undef & ~writes) | u
    return undef


def minimize(lines: list[str], fails: object) -> list[str]:
    """Drop lines while ``fails(lines)`` stays true (greedy delta debugging)."""
    assert callable(fails)
    cur = list(lines)
    changed = True
    while changed:
        changed = False
        for i in range(len(cur)):
            trial = cur[:i] + cur[i + 1:]
            try:
                bad = fails(trial)
            except Exception:  # noqa: BLE001 - an unassemblable trial is not a repro
                bad = False
            if bad:
                cur = trial
                changed = True
                break
    return cur
