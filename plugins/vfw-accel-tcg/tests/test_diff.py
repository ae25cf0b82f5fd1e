"""Differential tests: random instruction sequences run by vfw's TCG and by unicorn.

Programs come from tcg_gen (seeded by hypothesis); a mismatch is minimised and reported with
the program text, so it can be added to diff_corpus.txt, which test_corpus replays.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")

CORPUS = os.path.join(os.path.dirname(__file__), "diff_corpus.txt")


@pytest.fixture(autouse=True)
def _tools():
    import difftest

    need(difftest.have_tools(), "GNU as/objcopy and unicorn (pip install unicorn) are needed")


def _check_program(bits: int, seed: int, length: int) -> None:
    import difftest
    import tcg_gen

    text, mask = tcg_gen.program(random.Random(seed), bits, length)
    try:
        difftest.assemble(text, bits)
    except ValueError:
        assume(False)  # the generator produced something GNU as refuses
    try:
        difftest.check(bits, text, mask, seed, check_xmm=True)
    except AssertionError:
        g = tcg_gen.Gen(random.Random(seed), bits)
        for _ in range(length):
            g.one()

        def fails(lines: list[str]) -> bool:
            try:
                difftest.check(bits, "\n".join(lines), mask, seed, check_xmm=True)
            except AssertionError:
                return True
            return False

        small = tcg_gen.minimize(g.lines, fails)
        difftest.check(bits, "\n".join(small), mask, seed, check_xmm=True)
        raise


_settings = settings(deadline=None, max_examples=60,
                     suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(seed=st.integers(0, 2**32 - 1))
def test_random_64bit(seed):
    _check_program(64, seed, 12)


@_settings
@given(seed=st.integers(0, 2**32 - 1))
def test_random_32bit(seed):
    _check_program(32, seed, 12)


@_settings
@given(seed=st.integers(0, 2**32 - 1))
def test_random_16bit(seed):
    _check_program(16, seed, 12)


def _check_fp_program(bits: int, seed: int, length: int) -> None:
    import difftest
    import tcg_gen

    from vfw_accel_tcg import sse

    rnd = random.Random(seed)
    text = tcg_gen.fp_program(rnd, bits, length)
    state = difftest.float_state(bits, rnd)
    saved = sse.pick_nan
    sse.pick_nan = difftest.x87_pick_nan  # unicorn's (non-SSE) rule for two NaN operands
    try:
        try:
            difftest.check(bits, text, 0, seed, check_xmm=True, state=state)
        except AssertionError:
            def fails(lines: list[str]) -> bool:
                try:
                    difftest.check(bits, "\n".join(lines), 0, seed, check_xmm=True,
                                   state=state)
                except AssertionError:
                    return True
                return False

            small = tcg_gen.minimize(text.split("\n"), fails)
            difftest.check(bits, "\n".join(small), 0, seed, check_xmm=True, state=state)
            raise
    finally:
        sse.pick_nan = saved


@_settings
@given(seed=st.integers(0, 2**32 - 1))
def test_random_sse_float_64bit(seed):
    _check_fp_program(64, seed, 10)


@_settings
@given(seed=st.integers(0, 2**32 - 1))
def test_random_sse_float_32bit(seed):
    _check_fp_program(32, seed, 10)


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
def test_corpus(bits, seed, mask, text):
    import difftest

    for s in (seed, seed + 1, seed + 2):
        difftest.check(bits, text, mask, s, check_xmm=True)


def test_addressing_forms_64():
    """Base + index * scale + displacement, RIP-relative, 32-bit address size."""
    import difftest

    text = "\n".join([
        "lea rsi, [rbx + 0x10]",
        "mov ecx, 3",
        "mov rax, qword ptr [rbx + rcx*8 + 8]",
        "mov edx, dword ptr [rsi + rcx*4 - 4]",
        "add qword ptr [rbx + rcx*2], rax",
        "mov r9d, ecx",
        "movzx r10d, byte ptr [rbx + r9*1 + 0x100]",
        "mov eax, dword ptr [ebx + ecx*4]",
        "lea r11, [rip + 0x1234]",
        "lea r12d, [ecx + edx*8 - 7]",
        "mov r13, qword ptr [rbx + rcx*8 + 0x7f0]",
    ])
    for seed in range(5):
        difftest.check(64, text, 0, seed)


def test_addressing_forms_16_and_32():
    import difftest

    text16 = "\n".join([
        "mov si, 0x10", "mov di, 0x20", "mov bp, 0x4900",
        "mov ax, word ptr [bx + si]", "add ax, word ptr [bx + di + 5]",
        "mov cx, word ptr [bp + si - 3]", "mov dx, word ptr [bp]", "lea ax, [bp + di + 0x7fff]",
        "mov word ptr [bx + si + 0x200], ax", "mov al, byte ptr [0x4810]",
    ])
    for seed in range(5):
        difftest.check(16, text16, 0, seed)
    text32 = "\n".join([
        "mov ecx, 5", "mov eax, dword ptr [ebx + ecx*4 + 8]",
        "mov dword ptr [ebx + ecx*8 - 16], eax", "lea edx, [eax + ecx*2 + 0x1000]",
        "mov ebp, ebx", "mov esi, dword ptr [ebp + 0x40]",
    ])
    for seed in range(5):
        difftest.check(32, text32, 0, seed)


def test_push_pop_call_ret_leave_enter():
    import difftest

    text = "\n".join([
        "push rbp", "mov rbp, rsp", "sub rsp, 32", "push 0x12345678", "push word ptr [rbx]",
        "pop ax", "pop rcx", "call 1f", "jmp 2f", "1: mov rdx, qword ptr [rsp]", "ret",
        "2: enter 16, 0", "leave", "leave", "push rsp", "pop r8", "push qword ptr [rbx + 8]",
        "pop qword ptr [rbx + 16]",
    ])
    for seed in range(5):
        difftest.check(64, text, 0, seed)
    text32 = "\n".join(["pushad", "mov eax, 1", "popad", "push 5", "call 1f", "jmp 2f",
                        "1: ret 4", "2: push ebp", "mov ebp, esp", "enter 8, 0", "leave",
                        "pop ebp"])
    for seed in range(5):
        difftest.check(32, text32, 0, seed)


def test_string_instructions_bulk_and_overlap():
    import difftest

    for bits, (si, di, cx) in ((64, ("rsi", "rdi", "rcx")), (32, ("esi", "edi", "ecx")),
                               (16, ("si", "di", "cx"))):
        for op in ("rep movsb", "rep movsw", "rep movsd", "rep stosb", "rep stosd",
                   "repe cmpsb", "repne scasb", "rep lodsw"):
            for delta in (-3, 1, 2, 7, 300):
                text = "\n".join([f"lea {si}, [{difftest_base(bits)} + 0x100]",
                                  f"lea {di}, [{difftest_base(bits)} + {0x100 + delta}]",
                                  f"mov {cx}, 200", op])
                difftest.check(bits, text, 0, delta & 0xFF)
            text = "\n".join(["std", f"lea {si}, [{difftest_base(bits)} + 0x300]",
                              f"lea {di}, [{difftest_base(bits)} + 0x305]", f"mov {cx}, 100",
                              op, "cld"])
            difftest.check(bits, text, 0, 3)


def difftest_base(bits: int) -> str:
    return {64: "rbx", 32: "ebx", 16: "bx"}[bits]


def test_sse_moves_and_integer_ops():
    import difftest

    text = "\n".join([
        "movdqu xmm0, xmmword ptr [rbx + 3]", "movdqa xmm1, xmmword ptr [rbx + 0x40]",
        "pcmpeqb xmm0, xmm1", "pmovmskb eax, xmm0", "pxor xmm2, xmm2", "punpcklbw xmm2, xmm1",
        "pshufd xmm3, xmm2, 0x1b", "psrldq xmm3, 3", "pslldq xmm1, 5", "paddd xmm3, xmm1",
        "movq rcx, xmm3", "movd xmm4, ecx", "movq xmm5, qword ptr [rbx + 8]",
        "movdqa xmmword ptr [rbx + 0x80], xmm3", "movups xmmword ptr [rbx + 0x91], xmm5",
        "pminub xmm5, xmm0", "psubusb xmm1, xmm5", "pmullw xmm4, xmm1",
    ])
    for seed in range(5):
        difftest.check(64, text, 0, seed, check_xmm=True)


def test_loop_blocks_with_32bit_specialisation():
    """Loops whose registers are rewritten as 32-bit values skip masking after an entry
    check; registers that start with upper bits set must take the unspecialised path."""
    import difftest

    texts = [
        "mov ecx, 7\n1: add eax, edx\nxor edx, eax\nsub esi, 5\ndec ecx\njnz 1b",
        "mov ecx, 9\n1: add eax, 3\ncmp eax, 100\nja 2f\nsub ecx, 1\njnz 1b\n2: nop",
        "1: inc r8d\nadd r9d, r8d\ncmp r8d, 40\njb 1b",
        "mov ecx, 3\n1: mov eax, dword ptr [rbx + rcx*4]\nadd edx, eax\nloop 1b",
    ]
    for text in texts:
        for seed in range(6):
            difftest.check(64, text, 0, seed)
