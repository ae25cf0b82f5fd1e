"""x87 integer loads and EMMS, as Linux's AMD FXSAVE-leak workaround runs them
(``fnclex; emms; fildl``) before every FXRSTOR."""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")


@pytest.mark.parametrize("value", [0, 1, -5, 0x7FFFFFFF, -0x80000000])
def test_fild_pushes_the_integer_and_emms_empties_the_stack(value):
    import tcg_harness as h
    from difftest import assemble, have_tools

    from vfw.testing import need
    from vfw_accel_tcg.system import int_to_extended

    need(have_tools(), "GNU as is needed to assemble the test code")
    m, cpu, v = h.new_machine()
    code = assemble("fninit\nfild dword ptr [0x2000]\nfnstsw ax\nmov ebx, eax\nemms\n"
                    "xor eax, eax\nout 0xf4, al\nhlt\n", 64)
    m.write(0x1000, code)
    m.write(0x2000, struct.pack("<i", value))
    h.setup_long64(cpu, m)
    h.run(v)
    env = cpu.env
    assert m.exit_code == 1
    assert env.regs[3] & 0x3800 == 7 << 11  # TOP moved from 0 to 7
    assert env.st[7] == int_to_extended(value)
    assert env.ftw == 0  # emms emptied every register


def test_int_to_extended_encodings():
    from vfw_accel_tcg.system import int_to_extended

    assert int_to_extended(1) == 0x3FFF_8000_0000_0000_0000  # 1.0
    assert int_to_extended(3) == 0x4000_C000_0000_0000_0000  # 1.5 * 2
    assert int_to_extended(-2) == (1 << 79) | 0x4000_8000_0000_0000_0000
    assert int_to_extended(1 << 63) == (16383 + 63) << 64 | 1 << 63
