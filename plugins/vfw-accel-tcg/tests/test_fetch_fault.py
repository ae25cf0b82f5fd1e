"""An instruction that straddles into a not-present page raises #PF for that page (CR2 = the
page's address), not #UD — Linux's demand paging of busybox depends on it."""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")

MISSING_PAGE = 0x40000


def test_straddling_instruction_faults_on_the_second_page():
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m)
    # The first 2 MiB through a 4 KiB page table with one page left out.
    pt = 0x390000
    m.write(pt, b"".join(struct.pack("<Q", (i << 12) | 7 if (i << 12) != MISSING_PAGE else 0)
                         for i in range(512)))
    pds = 0x3F0000 + 0x2000
    m.write(pds, struct.pack("<Q", pt | 7))
    # mov [rsp+0xa0], rax: 8 bytes from 0x3fffa to 0x40001.
    start = MISSING_PAGE - 6
    m.write(start, bytes.fromhex("48898424a0000000"))
    cpu.env.rip = start
    # #PF handler: rbx = CR2, rcx = error code, exit 14; #UD handler: exit 6.
    pf = bytes.fromhex("0f20d3" "59" "b80e000000" "e6f4" "f4")
    ud = bytes.fromhex("b806000000" "e6f4" "f4")
    m.write(0x5000, pf)
    m.write(0x6000, ud)
    h.set_idt(m, cpu, 0x8000, {14: h.gate64(0x5000), 6: h.gate64(0x6000)}, 16)
    h.run(v)
    assert m.exit_code == (14 << 1) | 1, "expected #PF, got another exception"
    assert cpu.env.regs[3] == MISSING_PAGE  # CR2: the page the fetch ran into
    assert cpu.env.regs[1] & 0x10  # I/D bit: an instruction fetch
