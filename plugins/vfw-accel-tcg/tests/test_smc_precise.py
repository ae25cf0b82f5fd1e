"""Stores to a page with translated code invalidate only the blocks made from the bytes they
change; a page that keeps taking stores elsewhere is treated as data (tbcache.py)."""

from __future__ import annotations

import shutil

import pytest

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")


@pytest.fixture(autouse=True)
def _tools():
    need(shutil.which("as") is not None and shutil.which("ld") is not None,
         "GNU as and ld assemble the test programs")


def _machine(text: str):
    import difftest
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    m.write(0x10000, difftest.assemble_at(f".code64\n{text}", 0x10000))
    return h, m, cpu, v


# A loop on one page patches an immediate of ``f2`` (same page, not its own code) on every
# iteration and calls it: only f2's block may be translated again each time.
PATCH_LOOP = """
    xor ebx, ebx
    mov ecx, {n}
top:
    call f1
    mov byte ptr [rip + f2 + 1], cl
    call f2
    add ebx, eax
    dec ecx
    jnz top
    mov eax, ebx
    out 0xf4, al
    hlt
    .balign 64
f1:
    mov eax, 7
    ret
    .balign 64
f2:
    mov al, 0
    ret
"""


def _translations(n: int) -> tuple[int, int]:
    h, m, _cpu, v = _machine(PATCH_LOOP.format(n=n))
    h.run(v)
    return m.exit_code, v.tbc.translations


def test_patching_one_function_keeps_the_other_blocks_of_the_page():
    code5, tr5 = _translations(5)
    code9, tr9 = _translations(9)
    # al = sum of n..1 (f2 returns the patched counter), plus nothing from f1 (eax overwritten)
    assert code5 == ((sum(range(1, 6)) & 0xFF) << 1) | 1
    assert code9 == ((sum(range(1, 10)) & 0xFF) << 1) | 1
    # Four more iterations retranslate f2's block (and the block after the store that the
    # store's restart splits off) but not f1 or the loop: at most 2 new blocks per iteration.
    assert 0 < tr9 - tr5 <= 2 * 4, (tr5, tr9)


def test_stores_beside_code_do_not_invalidate_it_until_the_page_looks_like_data():
    from vfw_accel_tcg import tbcache

    # The loop stores next to its own code: no retranslation at all at first...
    text = """
        mov ecx, {n}
    top:
        mov byte ptr [rip + scratch], cl
        dec ecx
        jnz top
        mov eax, 1
        out 0xf4, al
        hlt
        .balign 256
    scratch:
        .byte 0
    """
    few = tbcache.DATA_PAGE_STORES // 4
    h, m, _cpu, v = _machine(text.format(n=few))
    h.run(v)
    assert m.exit_code == 3
    assert v.tbc.translations <= 3  # the loop, its tail, the store's own run
    assert 0x10 in v.tbc.code_pages  # still a code page: its blocks are intact
    # ...but after DATA_PAGE_STORES of them the page is dropped whole and writes go fast.
    h, m, _cpu, v = _machine(text.format(n=tbcache.DATA_PAGE_STORES * 3))
    h.run(v)
    assert m.exit_code == 3
    assert v.tbc.translations > 3
    assert v.tbc.translations < tbcache.DATA_PAGE_STORES


def test_writing_a_valid_opcode_over_an_invalid_one_retranslates():
    # 0xd6 is no instruction in 64-bit mode: the block at ``spot`` ends in #UD after its
    # first instruction. Once that byte is a NOP, the block must be made again.
    import tcg_harness

    text = tcg_harness.asm_handler64(6, "handler") + """
        xor ebx, ebx
        call spot                                # 1 + 100 (#UD) + 10
        mov byte ptr [rip + spot + 2], 0x90
        call spot                                # 1 + 10
        mov eax, ebx
        out 0xf4, al
        hlt
    handler:
        add ebx, 100
        add qword ptr [rsp], 1                   # resume after the invalid byte
        iretq
        .balign 64
    spot:
        inc ebx
        .byte 0xd6
        add ebx, 10
        ret
    """
    h, m, _cpu, v = _machine(text)
    h.run(v)
    assert m.exit_code == (122 << 1) | 1  # a stale block would take #UD again: 222
