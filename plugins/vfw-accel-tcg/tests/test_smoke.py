"""First end-to-end checks of the software CPU on the test machine."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")


def test_long_mode_loop_and_port_exit():
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    # mov ecx, 10; xor eax, eax; 1: add eax, ecx; dec ecx; jnz 1b; out 0xf4, al
    code = bytes.fromhex("b90a000000 31c0 01c8 ffc9 75fa e6f4 f4".replace(" ", ""))
    m.write(0x1000, code)
    h.setup_long64(cpu, m)
    h.run(v)
    assert cpu.env.regs[0] == 55
    assert m.request_event.is_set()
    assert m.exit_code == (55 << 1) | 1
