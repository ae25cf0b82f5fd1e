"""The register dump printed when a vCPU stops on an error (QEMU's ``info registers`` short
form plus ``Code=``), so a failure is one readable block instead of a hang."""

from __future__ import annotations

from typing import Any

from .state import DESC_L_SHIFT, R_CS, R_SS

_GPR_ROWS = (("RAX", 0), ("RBX", 3), ("RCX", 1), ("RDX", 2)), (
    ("RSI", 6), ("RDI", 7), ("RBP", 5), ("RSP", 4)), (
    ("R8 ", 8), ("R9 ", 9), ("R10", 10), ("R11", 11)), (
    ("R12", 12), ("R13", 13), ("R14", 14), ("R15", 15))
_SEG_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")
_FLAG_CHARS = ((11, "O"), (10, "D"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))

CODE_BEFORE, CODE_AFTER = 16, 16


def eflags_text(eflags: int) -> str:
    return "[" + "".join(c if eflags >> bit & 1 else "-" for bit, c in _FLAG_CHARS) + "]"


def code_linear_address(env: Any) -> int:
    """Linear address of the next instruction (CS base is ignored in 64-bit code)."""
    cs = env.segs[R_CS]
    if env.efer & (1 << 10) and cs.flags >> DESC_L_SHIFT & 1:
        return int(env.rip)
    return (int(cs.base) + int(env.rip)) & 0xFFFFFFFFFFFFFFFF


def format_code(code: list[int | None], at: int) -> str:
    """``Code=`` line: known bytes in hex, unreadable ones as ``??``, the one at RIP in <>."""
    parts = []
    for i, b in enumerate(code):
        text = "??" if b is None else f"{b:02x}"
        parts.append(f"<{text}>" if i == at else text)
    return "Code=" + " ".join(parts)


def format_registers(env: Any, code: list[int | None] | None = None, code_at: int = 0) -> str:
    """A multi-line register dump of an X86CPUState."""
    regs = env.regs
    lines = [" ".join(f"{name}={regs[i]:016x}" for name, i in row) for row in _GPR_ROWS]
    pe = env.cr[0] & 1
    cpl = (env.segs[R_SS].flags >> 13 & 3) if pe else 0
    halted = 1 if getattr(env, "halted", False) else 0
    lines.append(f"RIP={env.rip:016x} RFL={env.eflags:08x} {eflags_text(env.eflags)} "
                 f"CPL={cpl} HLT={halted}")
    for i, name in enumerate(_SEG_NAMES):
        s = env.segs[i]
        lines.append(f"{name} ={s.selector:04x} {s.base:016x} {s.limit:08x} {s.flags:08x}")
    lines.append(f"LDT={env.ldt.selector:04x} {env.ldt.base:016x} {env.ldt.limit:08x} "
                 f"{env.ldt.flags:08x}")
    lines.append(f"TR ={env.tr.selector:04x} {env.tr.base:016x} {env.tr.limit:08x} "
                 f"{env.tr.flags:08x}")
    lines.append(f"GDT=     {env.gdt.base:016x} {env.gdt.limit:08x}")
    lines.append(f"IDT=     {env.idt.base:016x} {env.idt.limit:08x}")
    lines.append(f"CR0={env.cr[0]:08x} CR2={env.cr[2]:016x} CR3={env.cr[3]:016x} "
                 f"CR4={env.cr[4]:08x}")
    lines.append(f"EFER={env.efer:016x}")
    if code is not None:
        lines.append(format_code(code, code_at))
    return "\n".join(lines)
