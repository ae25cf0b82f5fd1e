"""Faults inside the translator's merged push/pop runs and copied side-exit paths are precise:
registers and memory as of the faulting instruction, RIP of that instruction."""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")

MISSING_PAGE = 0x40000
CODE = 0x7000
IST_TOP = 0x9F000
# #PF handler (on IST1): rbx = CR2, rcx = error code, rdx = the saved RSP, rsi = the saved
# RIP; exit with 14.
PF = bytes.fromhex("0f20d3" "59" "488b542418" "488b3424" "b80e000000" "e6f4" "f4")


def _machine(code: bytes, regs: dict[int, int], mem: dict[int, bytes] | None = None):
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m)
    pt = 0x390000
    m.write(pt, b"".join(struct.pack("<Q", (i << 12) | 7 if (i << 12) != MISSING_PAGE else 0)
                         for i in range(512)))
    m.write(0x3F0000 + 0x2000, struct.pack("<Q", pt | 7))
    m.write(0x5000, PF)
    h.tss64(m, 0x700, IST_TOP, {1: IST_TOP})
    h.set_idt(m, cpu, 0x8000, {14: h.gate64(0x5000, ist=1)}, 16)
    m.write(CODE, code)
    for addr, data in (mem or {}).items():
        m.write(addr, data)
    cpu.env.rip = CODE
    for r, val in regs.items():
        cpu.env.regs[r] = val
    h.run(v)
    assert m.exit_code == (14 << 1) | 1, "expected #PF"
    return m, cpu.env.regs


def test_push_run_with_moves_faults_precisely():
    # push rbx; mov rbx, rdi; push rbp; call +0 -- the call's push reaches the missing page.
    code = bytes.fromhex("53" "4889fb" "55" "e800000000")
    m, r = _machine(code, {3: 0x1111, 5: 0x2222, 7: 0x3333, 4: MISSING_PAGE + 0x1010})
    assert r[3] == MISSING_PAGE + 0xFF8  # CR2
    assert r[2] == MISSING_PAGE + 0x1000  # RSP after the two pushes
    assert r[6] == CODE + 5  # RIP of the call
    assert struct.unpack("<QQ", m.read(MISSING_PAGE + 0x1000, 16)) == (0x2222, 0x1111)


def test_push_run_faults_at_the_push_that_reaches_the_missing_page():
    # push rbx; push rbp; push rcx; hlt -- the second push writes the missing page.
    m, r = _machine(bytes.fromhex("535551f4"), {3: 0x1111, 5: 0x2222, 4: MISSING_PAGE + 0x1008})
    assert r[3] == MISSING_PAGE + 0xFF8  # CR2
    assert r[2] == MISSING_PAGE + 0x1000  # RSP after the first push only
    assert r[6] == CODE + 1  # RIP of the second push
    assert struct.unpack("<Q", m.read(MISSING_PAGE + 0x1000, 8))[0] == 0x1111


def test_pop_run_faults_at_the_pop_that_reaches_the_missing_page():
    # pop r8; pop r9; pop r10; ret -- the third pop reads the missing page.
    sp = MISSING_PAGE - 16
    mem = {sp: struct.pack("<QQ", 0xAAAA, 0xBBBB)}
    m, r = _machine(bytes.fromhex("4158" "4159" "415a" "c3"), {4: sp, 10: 7}, mem)
    assert r[3] == MISSING_PAGE  # CR2
    assert r[2] == MISSING_PAGE  # RSP after two pops
    assert r[6] == CODE + 4  # RIP of the third pop
    assert (r[8], r[9], r[10]) == (0xAAAA, 0xBBBB, 7)


def test_fault_in_a_copied_side_exit_path_is_precise():
    # cmp rdi, 2; jb L; inc r8; hlt; L: mov r9, 7; mov rax, [MISSING_PAGE]; ret
    code = bytes.fromhex("4883ff02" "7204" "49ffc0" "f4" "49c7c107000000"
                         "488b042500000400" "c3")
    m, r = _machine(code, {7: 1, 8: 0, 9: 5, 0: 0x1234})
    assert r[3] == MISSING_PAGE
    assert r[6] == CODE + 10 + 7  # RIP of the load
    assert r[9] == 7  # the copied mov before it committed
    assert r[8] == 0  # the fall-through path did not run


FIB = """
    mov edi, 12
    call 5f
    jmp 9f
5:  cmp rdi, 2
    jb 6f
    push rbx
    push rbp
    mov rbx, rdi
    lea rdi, [rdi - 1]
    call 5b
    mov rbp, rax
    lea rdi, [rbx - 2]
    call 5b
    add rax, rbp
    pop rbp
    pop rbx
    ret
6:  mov rax, rdi
    ret
9:  nop
"""

LOOP_WITH_COPIED_CONTINUE = """
    mov ecx, 50
    xor eax, eax
1:  test ecx, 1
    jnz 3f
    add eax, ecx
    shl rax, 1
    dec ecx
    jnz 1b
    jmp 4f
3:  sub eax, 3
    dec ecx
    jnz 1b
4:  nop
"""

PUSH_RUNS_WITH_MOVES = """
    push rbx
    mov rbx, rdi
    push rbx
    mov ecx, 5
    lea rdx, [rbx + rcx * 2 + 1]
    push rdx
    mov esi, ebx
    call 1f
    jmp 2f
1:  pop r8
    pop r9
    pop r10
    pop r11
    push r8
    ret
2:  nop
"""

PUSH_POP_RUNS = """
    push rax
    push rbx
    push 0x55
    push rcx
    pop rdx
    pop rsi
    pop rdi
    pop r8
    call 1f
    jmp 2f
1:  push r9
    push r10
    pop r11
    pop r12
    ret
2:  nop
"""


@pytest.mark.parametrize("text", [FIB, LOOP_WITH_COPIED_CONTINUE, PUSH_POP_RUNS,
                                  PUSH_RUNS_WITH_MOVES],
                         ids=["fib", "loop-continue-copy", "push-pop-runs", "push-moves"])
def test_merged_runs_and_copied_paths_match_unicorn(text):
    import difftest

    from vfw.testing import need

    need(difftest.have_tools(), "GNU as/objcopy and unicorn (pip install unicorn) are needed")
    for seed in range(3):
        difftest.check(64, text, 0, seed)


INC_DEC_AFTER_ADD_SUB = """
    mov rcx, 3
1:  add rax, rbx
    dec rcx
    jnz 1b
    adc rdx, 0
    setc sil
    pushfq
    pop rdi
    cmp rax, rbx
    inc rcx
    setb r9b
    seto r10b
    pushfq
    pop r8
    sub eax, ebx
    dec eax
    sbb r11d, 0
    add bl, al
    inc bl
    pushfq
    pop r12
"""


@pytest.mark.parametrize("seed", range(6))
def test_inc_dec_keep_the_carry_of_a_previous_add_or_sub(seed):
    import difftest

    from vfw.testing import need

    need(difftest.have_tools(), "GNU as/objcopy and unicorn (pip install unicorn) are needed")
    difftest.check(64, INC_DEC_AFTER_ADD_SUB, 0, seed)
