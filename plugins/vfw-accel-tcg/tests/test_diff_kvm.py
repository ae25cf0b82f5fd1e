"""Differential tests against the real CPU: random sequences run by vfw's TCG and under KVM.

tcg_gen's programs (seeded) run at CPL3 in vfw and in a KVM vCPU set up by kvm_native from
the same state; final general registers, arithmetic flags (minus those the generator marks
undefined), the data+stack window and, in 64-bit mode, XMM registers must match. The defined
flags after every flag-writing line are also stored to the window (``instrument``), so a
wrong flag shows even when a later instruction overwrites it.

What the KVM side is depends on the host. On the development machine (kvm_pvm, a nested
software hypervisor) 64-bit user code runs natively on the CPU, the real oracle; 32- and
16-bit code segments (compatibility mode) are executed by KVM's instruction emulator (measured:
~1M instructions/s, #UD for SSE/x87/POPCNT, LZCNT run as BSR), so those modes compare with a
second, independent implementation whose ALU flags come from the host CPU (fastop) and use a
generator without what the emulator lacks.

A failing run prints each mismatch shrunk to a few lines in diff_corpus_kvm.txt's format;
test_corpus replays that file. Seeds start at VFW_KVM_DIFF_SEED (default 0); the number of
programs grows with HYPOTHESIS_PROFILE=ci.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from vfw.testing import need, need_kvm

pytestmark = pytest.mark.requires("vfw-accel-kvm", "vfw-board-pc")

CORPUS = os.path.join(os.path.dirname(__file__), "diff_corpus_kvm.txt")
CI = os.environ.get("HYPOTHESIS_PROFILE", "") == "ci"
BASE_SEED = int(os.environ.get("VFW_KVM_DIFF_SEED", "0"))
#: Programs per mode: (default, HYPOTHESIS_PROFILE=ci).
COUNTS = {64: (150, 2000), 32: (50, 400), 16: (50, 400)}
LENGTH = 12
BATCH = 100
#: Mnemonics KVM's instruction emulator (the compatibility-mode oracle here) lacks.
EMULATOR_LACKS = ("popcnt", "tzcnt", "lzcnt")


@pytest.fixture(scope="module")
def native() -> Iterator[Any]:
    need_kvm()
    need(all(shutil.which(t) for t in ("as", "objcopy", "nm")), "GNU as, objcopy and nm are "
         "needed to assemble the test programs")
    import kvm_native

    with kvm_native.NativeCpu() as cpu:
        yield cpu


def _program(bits: int, seed: int) -> tuple[list[str], int, dict[str, tuple[int, int, int]]]:
    """(lines, undefined flags, line effects) of the program for ``seed``; no lines if
    the mode's oracle cannot run it."""
    import tcg_gen

    native_mode = bits == 64
    g = tcg_gen.Gen(random.Random(seed), bits, sse=native_mode, native=True)
    for _ in range(LENGTH):
        g.one()
    lines = g.lines
    if not native_mode:
        lines = [ln for ln in lines if not any(m in ln for m in EMULATOR_LACKS)]
    mask = tcg_gen.undefined(lines, g.effects)
    if mask is None:
        return [], 0, g.effects
    return lines, mask, g.effects


FLAG_LOG = 0x1000  # snapshots go to [RBX + FLAG_LOG + 8 * i], beyond what tcg_gen touches


def instrument(lines: list[str], effects: dict[str, tuple[int, int, int]], bits: int
               ) -> tuple[str, int]:
    """The program with the defined arithmetic flags stored to memory after every line that
    writes flags (so a wrong flag is seen even when a later line overwrites it), and the
    flags undefined at the end. PUSHF twice, mask one copy and store it, POPF the other and
    clear it below the stack pointer (both leave the flags unchanged)."""
    import tcg_gen

    word = {64: "qword", 32: "dword", 16: "word"}[bits]
    suffix = {64: "q", 32: "d", 16: ""}[bits]
    base = {64: "rbx", 32: "ebx", 16: "bx"}[bits]
    sp = "rsp" if bits == 64 else "esp"  # 16-bit addressing has no [sp]
    width = bits // 8
    out: list[str] = []
    undef = 0
    for i, line in enumerate(lines):
        out.append(line)
        _reads, writes, u = effects.get(line, (0, 0, 0))
        undef = (undef & ~writes) | u
        if writes:
            keep = tcg_gen.ALL & ~undef
            out.append(f"pushf{suffix}\npushf{suffix}\nand {word} ptr [{sp}], {keep}\n"
                       f"pop {word} ptr [{base} + {FLAG_LOG + 8 * i}]\npopf{suffix}\n"
                       f"mov {word} ptr [{sp} - {width}], 0")  # no unmasked copy left
    return "\n".join(out), undef


def _shrink(cpu: Any, bits: int, seed: int, lines: list[str],
            effects: dict[str, tuple[int, int, int]]) -> str:
    """The failing program cut down to the lines that matter, as a corpus block."""
    import difftest
    import kvm_native
    import tcg_gen

    def fails(trial: list[str]) -> bool:
        if not trial or tcg_gen.undefined(trial, effects) is None:
            return False
        text, mask = instrument(trial, effects, bits)
        try:
            code = difftest.assemble(text, bits)
        except ValueError:
            return False
        return bool(kvm_native.diff(cpu, bits, code, mask, seed)[0])

    small = tcg_gen.minimize(lines, fails)
    text, mask = instrument(small, effects, bits)
    try:
        kvm_native.check(cpu, bits, text, mask, seed)
    except AssertionError as exc:
        report = str(exc)
    else:
        report = "(did not fail again once shrunk)"
    return f"## bits={bits} seed={seed} mask={mask:#x}\n{text}\n\n{report}"


def _run_random(cpu: Any, bits: int, shrink: bool = True) -> None:
    """Run the mode's programs; report up to four mismatches (shrunk), or without
    ``shrink`` stop at the first."""
    import kvm_native

    count = COUNTS[bits][1 if CI else 0]
    start = BASE_SEED + {64: 0, 32: 1 << 24, 16: 2 << 24}[bits]
    failures: list[str] = []
    ran = 0
    for first in range(start, start + count, BATCH):
        seeds = range(first, min(first + BATCH, start + count))
        progs = {s: _program(bits, s) for s in seeds}
        runnable = [s for s in seeds if progs[s][0]]
        texts = {s: instrument(progs[s][0], progs[s][2], bits) for s in runnable}
        codes = kvm_native.assemble_many([texts[s][0] for s in runnable], bits)
        for s, code in zip(runnable, codes, strict=True):
            if code is None:
                continue  # GNU as refused the generator's text
            lines, _mask, effects = progs[s]
            ran += 1
            if kvm_native.diff(cpu, bits, code, texts[s][1], s)[0] and len(failures) < 4:
                if not shrink:
                    raise AssertionError(f"{bits}-bit programs differ (seed {s})")
                failures.append(_shrink(cpu, bits, s, lines, effects))
    assert ran >= count * 0.9, f"only {ran} of {count} programs ran"
    if failures:
        raise AssertionError(f"{len(failures)}+ of {ran} {bits}-bit programs differ "
                             f"(seeds from {start}):\n\n" + "\n\n".join(failures))


def test_random_64bit_native(native: Any) -> None:
    """64-bit user code: vfw against the real CPU."""
    _run_random(native, 64)


@pytest.mark.parametrize("bits", [32, 16])
def test_random_compat_mode(native: Any, bits: int) -> None:
    """32/16-bit code segments in long mode: vfw against KVM (its emulator on kvm_pvm)."""
    _run_random(native, bits)


def _corpus() -> list[tuple[int, int, int, str]]:
    out = []
    with open(CORPUS) as f:
        blocks = f.read().split("## ")[1:]
    for b in blocks:
        head, _, body = b.partition("\n")
        kv = dict(p.split("=") for p in head.split())
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("#")]
        out.append((int(kv["bits"]), int(kv["seed"]), int(kv["mask"], 16), "\n".join(lines)))
    return out


@pytest.mark.parametrize("bits,seed,mask,text", _corpus())
def test_corpus(native: Any, bits: int, seed: int, mask: int, text: str) -> None:
    import kvm_native

    for s in (seed, seed + 1, seed + 2):
        kvm_native.check(native, bits, text, mask, s)


def test_a_broken_flag_is_caught(native: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: vfw with ADD's overflow flag computed wrongly disagrees."""
    import kvm_native

    import vfw_accel_tcg.flags as flags

    text = "add eax, ecx\nseto dl\nsetc dh"
    kvm_native.check(native, 64, text, 0, 7)
    real = flags._prims

    def broken(kind: int, size: int, a: str, b: str, r: str, c: str) -> dict[str, str]:
        p: dict[str, str] = real(kind, size, a, b, r, c)
        if kind == flags.ADD:
            p["of"] = f"(not {p['of']})"
        return p

    monkeypatch.setattr(flags, "_prims", broken)
    with pytest.raises(AssertionError, match="mismatch"):
        kvm_native.check(native, 64, text + "\nnop", 0, 7)  # new code: no cached block


@pytest.mark.parametrize("kind,flag,wrong", [
    ("INC", "af", "(({r} & 15) == 1)"),     # AF from the wrong nibble
    ("SHL", "of", "({r} >= {s})"),          # OF without the carry-out
])
def test_random_programs_catch_a_broken_flag(native: Any, monkeypatch: pytest.MonkeyPatch,
                                             kind: str, flag: str, wrong: str) -> None:
    """The random programs (not just a hand-picked one) find each of these mistakes."""
    import vfw_accel_tcg.flags as flags

    real = flags._prims
    k = getattr(flags, kind)

    def broken(kind: int, size: int, a: str, b: str, r: str, c: str) -> dict[str, str]:
        p: dict[str, str] = real(kind, size, a, b, r, c)
        if kind == k:
            p[flag] = wrong.format(a=a, b=b, r=r, s=flags.SIGN[size])
        return p

    monkeypatch.setattr(flags, "_prims", broken)
    monkeypatch.setattr(flags, "FLAGFN", flags._build_flagfns())  # PUSHF's materialised flags
    monkeypatch.setitem(COUNTS, 64, (150, 150))
    with pytest.raises(AssertionError, match="programs differ"):
        _run_random(native, 64, shrink=False)
