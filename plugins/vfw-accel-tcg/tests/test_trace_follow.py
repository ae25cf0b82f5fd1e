"""Traces that follow calls and jumps (translate.py ``decode_block``): a followed call's
``ret`` goes on in the block only when the popped address is the one the call pushed
(``ret_to``); a trace may span pages, and then a store to, or a remapping of, any of its pages
takes effect."""

from __future__ import annotations

import shutil
import struct

import pytest

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")


@pytest.fixture(autouse=True)
def _tools():
    need(shutil.which("as") is not None and shutil.which("ld") is not None,
         "GNU as and ld assemble the test programs")


def _run(text: str, regs: dict[int, int] | None = None):
    import difftest
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    m.write(0x10000, difftest.assemble_at(f".code64\n{text}", 0x10000))
    for r, val in (regs or {}).items():
        cpu.env.regs[r] = val
    h.run(v)
    return m, cpu, v


def _block_at(v, rip: int):
    return next(tb for key, tb in v.tbc.tbs.items() if key[1] == rip)


def test_a_followed_call_returns_into_the_same_block():
    m, _cpu, v = _run("""
        mov ebx, 5
        call f
        add ebx, eax
        call f
        add ebx, eax
        mov eax, ebx
        out 0xf4, al
        hlt
    f:
        mov eax, 3
        ret
    """)
    assert m.exit_code == (11 << 1) | 1
    # one block from the start through both calls and returns up to the out
    assert _block_at(v, 0x10000).ninsns >= 10


def test_a_changed_return_address_leaves_the_block_there():
    # f returns 2 bytes past its call site (skipping a 2-byte instruction): the block's
    # guess is wrong and it must go where ret really goes.
    m, _cpu, _v = _run("""
        xor ebx, ebx
        call f
        mov bl, 99            # 2 bytes (b3 63), skipped
        add ebx, 7
        mov eax, ebx
        out 0xf4, al
        hlt
    f:
        add qword ptr [rsp], 2
        ret
    """)
    assert m.exit_code == (7 << 1) | 1


def test_flags_are_right_on_both_sides_of_a_followed_return():
    # The flags set before ret are read after it (and by the side exit's target).
    m, _cpu, _v = _run("""
        mov ecx, 2
    top:
        call f
        jz zero
        mov eax, 1
        out 0xf4, al
        hlt
    zero:
        add ebx, 1
        dec ecx
        jnz top
        call g
        jc carry
        hlt
    carry:
        mov eax, ebx
        add eax, 40
        out 0xf4, al
        hlt
    f:
        xor eax, eax
        ret
    g:
        mov eax, 1
        sub eax, 2
        ret
    """)
    assert m.exit_code == (42 << 1) | 1


def test_a_fault_after_a_followed_return_is_precise():
    import tcg_harness as h

    # The load after the return reads an address beyond RAM's page tables (#PF): RIP and
    # registers must be those of the faulting instruction, after the call and return.
    text = h.asm_handler64(14, "handler") + """
        mov ebx, 1
        call f
        add ebx, 10
        mov rcx, qword ptr [rdx]
        mov ebx, 77
        hlt
    handler:
        mov rsi, qword ptr [rsp + 8]     # saved RIP (after the error code)
        mov eax, ebx
        out 0xf4, al
        hlt
    f:
        add ebx, 1
        ret
    """
    m, cpu, _v = _run(text, {2: 0x7FFF_0000_0000})
    assert m.exit_code == (12 << 1) | 1
    fault_rip = cpu.env.regs[6]
    assert 0x10000 < fault_rip < 0x10100
    import difftest

    code = difftest.assemble_at(f".code64\n{text}", 0x10000)
    assert code[fault_rip - 0x10000:fault_rip - 0x10000 + 3] == bytes.fromhex("488b0a")


@pytest.fixture
def _pages(monkeypatch):
    """Traces over several pages (whatever MAX_PAGES the translator ships with)."""
    from vfw_accel_tcg import translate

    monkeypatch.setattr(translate, "MAX_PAGES", 3)


def _paged(text: str, layout: dict[int, str]):
    """A machine whose first 2 MiB are mapped with 4 KiB pages (page table at 0x390000);
    ``layout`` places extra assembly at physical addresses."""
    import difftest
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    pt = 0x390000
    m.write(pt, b"".join(struct.pack("<Q", (i << 12) | 3) for i in range(512)))
    m.write(0x3F0000 + 0x2000, struct.pack("<Q", pt | 3))
    m.write(0x10000, difftest.assemble_at(f".code64\n{text}", 0x10000))
    for addr, body in layout.items():
        m.write(addr, difftest.assemble_at(f".code64\n{body}", addr))
    return h, m, cpu, v


def test_a_trace_follows_a_call_onto_another_page(_pages):
    h, m, _cpu, v = _paged("""
        mov ebx, 1
        call 0x11000
        add ebx, eax
        mov eax, ebx
        out 0xf4, al
        hlt
    """, {0x11000: "mov eax, 4\nret"})
    h.run(v)
    assert m.exit_code == (5 << 1) | 1
    tb = _block_at(v, 0x10000)
    assert {0x10, 0x11} <= set(tb.lpages)  # one block over both pages
    assert tb.ninsns >= 6


# The block at ``top`` inlines the function at virtual 0x11000 (made on the second pass);
# after that pass, ``change`` alters what is at 0x11000; the third pass must run the new code,
# not the copy in the block.
THREE_PASSES = """
        xor ebx, ebx
        mov ecx, 3
    top:
        call 0x11000
        add ebx, eax
        cmp ecx, 2
        jne 1f
        {change}
    1:
        dec ecx
        jnz top
        mov eax, ebx
        out 0xf4, al
        hlt
"""


@pytest.mark.parametrize(("change", "layout", "total"), [
    # remapped to another physical page: PTE write + INVLPG
    ("mov qword ptr [0x390000 + 0x11 * 8], 0x12003\n        invlpg [0x11000]",
     {0x11000: "mov eax, 1\nret", 0x12000: "mov eax, 10\nret"}, 1 + 1 + 10),
    # patched: the immediate of "mov eax, imm32" there
    ("mov byte ptr [0x11001], 20", {0x11000: "mov eax, 2\nret"}, 2 + 2 + 20),
], ids=["remap-invlpg", "store"])
def test_a_change_to_a_followed_page_takes_effect(_pages, change, layout, total):
    h, m, _cpu, v = _paged(THREE_PASSES.format(change=change), layout)
    h.run(v)
    assert m.exit_code == (total << 1) | 1


def test_a_trace_ends_before_a_page_it_cannot_fetch(_pages):
    # The call's target page is not present when the block is made: the block must not
    # fault for it; the call itself then takes the #PF (caught: exit with 14 and CR2).
    import tcg_harness

    h, m, cpu, v = _paged(tcg_harness.asm_handler64(14, "handler") + """
        mov qword ptr [0x390000 + 0x13 * 8], 0
        invlpg [0x13000]
        mov ebx, 7
        call 0x13000
        mov ebx, 99
        hlt
    handler:
        mov rdx, cr2
        mov eax, 14
        out 0xf4, al
        hlt
    """, {0x13000: "mov eax, 5\nret"})
    h.run(v)
    assert m.exit_code == (14 << 1) | 1
    assert cpu.env.regs[2] == 0x13000 and cpu.env.regs[3] == 7
