"""Differential testing of the software CPU against unicorn (QEMU's TCG as a library).

``assemble`` turns Intel-syntax text into bytes with GNU as. ``run_vfw`` / ``run_unicorn`` run
the same code from the same initial state (registers, flags, a data+stack window of memory)
in 16-, 32- or 64-bit mode and return the final state; ``compare`` diffs two states with
the flags an instruction leaves undefined masked out.

Memory layout (all modes): code at 0x1000, data at 0x4000..0x6000 (RBX points at 0x4800),
stack 0x6000..0x9000 (RSP = 0x8800). Both engines see identical bytes there.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

CODE = 0x1000
WIN_LO, WIN_HI = 0x4000, 0x9000
DATA_BASE = 0x4800
STACK_TOP = 0x8800
ARITH = 0x8D5


def have_tools() -> bool:
    if shutil.which("as") is None or shutil.which("objcopy") is None:
        return False
    try:
        import unicorn  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def assemble(text: str, bits: int) -> bytes:
    src = f".intel_syntax noprefix\n.code{bits}\n{text}\n"
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("t.s", "t.o", "t.bin"))
        with open(s, "w") as f:
            f.write(src)
        r = subprocess.run(["as", "--64" if bits == 64 else "--32", "-o", o, s],
                           capture_output=True, text=True)
        if r.returncode:
            raise ValueError(f"as failed: {r.stderr}\n{src}")
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True)
        with open(b, "rb") as f:
            return f.read()


@dataclass
class State:
    regs: list[int]
    eflags: int
    mem: bytes
    xmm: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = 0
    error: str | None = None

    def describe(self) -> str:
        names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [
            f"r{i}" for i in range(8, 16)]
        regs = " ".join(f"{n}={v:#x}" for n, v in zip(names, self.regs, strict=False))
        return f"{regs} eflags={self.eflags:#x} rip={self.rip:#x} err={self.error}"


def random_state(bits: int, rnd: random.Random) -> tuple[list[int], int, bytes, list[int]]:
    width = 64 if bits == 64 else 32
    regs = [rnd.getrandbits(width) for _ in range(16 if bits == 64 else 8)]
    specials = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    for i in range(len(regs)):
        if rnd.random() < 0.3:
            regs[i] = rnd.choice(specials) & ((1 << width) - 1)
    regs[3] = DATA_BASE
    regs[4] = STACK_TOP
    eflags = 0x2 | (rnd.getrandbits(12) & ARITH)
    mem = bytes(rnd.getrandbits(8) for _ in range(WIN_HI - WIN_LO))
    xmm = [rnd.getrandbits(128) for _ in range(16)]
    return regs, eflags, mem, xmm


F64_SPECIAL = [0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000,
               0xFFF8000000000000, 0x7FF4000000000001, 0xFFF0000000000123, 1, 0x800FFFFFFFFFFFFF,
               0x0010000000000000, 0x7FEFFFFFFFFFFFFF, 0x3FF0000000000000, 0xBFF8000000000000,
               0x43E0000000000000, 0xC3E0000000000000, 0x41E0000000000000, 0xC1E0000000200000,
               0x41DFFFFFFFFFFFFF, 0x4330000000000001, 0x3FE0000000000000, 0x4004000000000000]
F32_SPECIAL = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FA00001,
               0xFF800123, 1, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0x3F800000, 0xBFC00000,
               0x5F000000, 0xDF000000, 0x4F000000, 0xCF000000, 0x3F000000, 0x40200000,
               0x4EFFFFFF]


def f64_lane(rnd: random.Random) -> int:
    if rnd.random() < 0.5:
        return rnd.choice(F64_SPECIAL)
    # random sign and mantissa, exponent near 1.0 (so sums/products stay interesting)
    e = rnd.choice([0x3FF + rnd.randrange(-40, 40), rnd.randrange(0x800)])
    return (rnd.getrandbits(1) << 63) | (e << 52) | rnd.getrandbits(52)


def f32_lane(rnd: random.Random) -> int:
    if rnd.random() < 0.5:
        return rnd.choice(F32_SPECIAL)
    e = rnd.choice([0x7F + rnd.randrange(-20, 20), rnd.randrange(0x100)])
    return (rnd.getrandbits(1) << 31) | (e << 23) | rnd.getrandbits(23)


def fp_value(rnd: random.Random) -> int:
    """128 bits: two binary64 or four binary32 lanes of interesting values."""
    if rnd.random() < 0.5:
        return f64_lane(rnd) | (f64_lane(rnd) << 64)
    return sum(f32_lane(rnd) << (32 * i) for i in range(4))


def float_state(bits: int, rnd: random.Random) -> tuple[list[int], int, bytes, list[int]]:
    """A random state whose XMM registers and data window hold float edge cases."""
    regs, eflags, _, _ = random_state(bits, rnd)
    mem = b"".join(fp_value(rnd).to_bytes(16, "little")
                   for _ in range((WIN_HI - WIN_LO) // 16))
    xmm = [fp_value(rnd) for _ in range(16)]
    return regs, eflags, mem, xmm


def x87_pick_nan(a: int, b: int, w: int) -> int:
    """The NaN unicorn (QEMU 5 softfloat) propagates for SSE: the x87 rule (a QNaN over an
    SNaN, else the larger significand, else the positive one); real SSE hardware returns the
    first source's. Patched into vfw (``sse.pick_nan``) for differential runs."""
    from vfw_accel_tcg import sse

    q = sse._QBIT[w]
    if not (sse._isnan(a, w) and sse._isnan(b, w)):
        return (a if sse._isnan(a, w) else b) | q
    if (a & q) != (b & q):
        return (a if a & q else b) | q
    fa, fb = a & sse._FRAC[w], b & sse._FRAC[w]
    if fa != fb:
        return (a if fa > fb else b) | q
    return (b if a >> (8 * w - 1) else a) | q


def run_unicorn(bits: int, code: bytes, regs: list[int], eflags: int, mem: bytes,
                xmm: list[int] | None = None) -> State:
    import unicorn as U
    from unicorn import x86_const as UX

    mode = {16: U.UC_MODE_16, 32: U.UC_MODE_32, 64: U.UC_MODE_64}[bits]
    uc = U.Uc(U.UC_ARCH_X86, mode)
    uc.mem_map(0, 0x100000)
    uc.mem_write(CODE, code)
    uc.mem_write(WIN_LO, mem)
    names = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [
        f"R{i}" for i in range(8, 16)]
    if bits != 64:
        names = ["EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"]
    ids = [getattr(UX, f"UC_X86_REG_{n}") for n in names]
    for i, v in zip(ids, regs, strict=False):
        uc.reg_write(i, v)
    uc.reg_write(UX.UC_X86_REG_EFLAGS, eflags)
    nx = 16 if bits == 64 else 8
    if xmm is not None:
        for i in range(nx):
            uc.reg_write(getattr(UX, f"UC_X86_REG_XMM{i}"), xmm[i])
    error = None
    try:
        uc.emu_start(CODE, CODE + len(code), timeout=2_000_000, count=100000)
    except U.UcError as exc:
        error = str(exc)
    out = [uc.reg_read(i) for i in ids]
    fl = uc.reg_read(UX.UC_X86_REG_EFLAGS)
    rip = uc.reg_read(UX.UC_X86_REG_RIP if bits == 64 else UX.UC_X86_REG_EIP)
    xo = [uc.reg_read(getattr(UX, f"UC_X86_REG_XMM{i}")) for i in range(nx)] + [0] * (16 - nx)
    return State(out, fl, bytes(uc.mem_read(WIN_LO, WIN_HI - WIN_LO)), xo, rip, error)


_machine_cache: dict[str, Any] = {}


def run_vfw(bits: int, code: bytes, regs: list[int], eflags: int, mem: bytes,
            xmm: list[int] | None = None) -> State:
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    m.write(CODE, code + b"\xf4")
    m.write(WIN_LO, mem)
    if bits == 64:
        h.setup_long64(cpu, m, rip=CODE)
    elif bits == 32:
        h.setup_prot32(cpu, m, eip=CODE)
    else:
        h.setup_real(cpu, ip=CODE)
    env = cpu.env
    for i, val in enumerate(regs):
        env.regs[i] = val
    env.eflags = eflags | 2
    if xmm is not None:
        env.xmm = list(xmm)
    h.run(v, 10000)
    error = None
    if m.request_event.is_set() or not env.halted:
        error = "did not reach the end"
    n = 16 if bits == 64 else 8
    xo = list(env.xmm[:16 if bits == 64 else 8]) + [0] * (16 - (16 if bits == 64 else 8))
    return State(list(env.regs[:n]), env.eflags, m.read(WIN_LO, WIN_HI - WIN_LO), xo,
                 (env.rip - 1) if not error else env.rip, error)


def compare(a: State, b: State, flag_mask: int, bits: int, check_xmm: bool = False,
            other: str = "unicorn") -> list[str]:
    """Differences between two final states (empty if equal); ``other`` names ``b``."""
    diffs = []
    if (a.error is None) != (b.error is None):
        diffs.append(f"error: vfw={a.error} {other}={b.error}")
        return diffs
    if a.error is not None:
        return diffs
    width_mask = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
    for i, (x, y) in enumerate(zip(a.regs, b.regs, strict=False)):
        if (x & width_mask) != (y & width_mask):
            diffs.append(f"reg{i}: vfw={x:#x} {other}={y:#x}")
    fm = 0x3F7FD5 & ~flag_mask & ~0x10000  # RF is not architectural here
    if (a.eflags & fm) != (b.eflags & fm):
        diffs.append(f"eflags: vfw={a.eflags:#x} {other}={b.eflags:#x} (mask {fm:#x})")
    if a.mem != b.mem:
        for i, (x, y) in enumerate(zip(a.mem, b.mem, strict=True)):
            if x != y:
                diffs.append(f"mem[{WIN_LO + i:#x}]: vfw={x:#x} {other}={y:#x}")
                break
    if check_xmm:
        for i, (x, y) in enumerate(zip(a.xmm, b.xmm, strict=True)):
            if x != y:
                diffs.append(f"xmm{i}: vfw={x:#x} {other}={y:#x}")
    return diffs


def check(bits: int, text: str, flag_mask: int = 0, seed: int = 0, check_xmm: bool = False,
          state: tuple[list[int], int, bytes, list[int]] | None = None) -> None:
    """Assemble ``text``, run it in both engines from a random state, assert equality."""
    code = assemble(text, bits)
    regs, eflags, mem, xmm = state or random_state(bits, random.Random(seed))
    ours = run_vfw(bits, code, regs, eflags, mem, xmm)
    theirs = run_unicorn(bits, code, regs, eflags, mem, xmm)
    diffs = compare(ours, theirs, flag_mask, bits, check_xmm)
    if diffs:
        raise AssertionError(
            f"{bits}-bit mismatch for:\n{text}\n" + "\n".join(diffs)
            + f"\ninitial: regs={[hex(r) for r in regs]} eflags={eflags:#x}"
            + f"\nvfw:     {ours.describe()}\nunicorn: {theirs.describe()}")


@functools.lru_cache(maxsize=256)
def assemble_at(text: str, base: int) -> bytes:
    """Assemble (``.code16/32/64`` may switch inside) and link at ``base`` (flat binary)."""
    src = f".intel_syntax noprefix\n{text}\n"
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("t.s", "t.o", "t.bin"))
        with open(s, "w") as f:
            f.write(src)
        r = subprocess.run(["as", "--64", "-o", o, s], capture_output=True, text=True)
        if r.returncode:
            raise ValueError(f"as failed: {r.stderr}\n{src}")
        r = subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext", hex(base), "-e", hex(base),
                            "--oformat", "binary", "-o", b, o], capture_output=True, text=True)
        if r.returncode:
            raise ValueError(f"ld failed: {r.stderr}")
        with open(b, "rb") as f:
            return f.read()
