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


def test_generated_code_names_only_standalone_mask_literals():
    from vfw_accel_tcg.runtime import NS
    from vfw_accel_tcg.translate import _named

    m64, m32, s64 = str((1 << 64) - 1), str((1 << 32) - 1), str(1 << 63)
    src = (f"a = (b + 8) & {m64}\nc = d & {m32}\ne = (f ^ {s64}) - {s64}\n"
           f"g = {m64}\n")
    out = _named(src)
    assert m64 not in out and m32 not in out and s64 not in out
    assert "& M64" in out and "& M32" in out and "^ S64) - S64" in out
    ns: dict[str, object] = {}
    exec(compile(out, "<t>", "exec"), {**NS, "b": 1, "d": 1 << 40, "f": 5}, ns)
    assert ns["a"] == 9 and ns["c"] == 0 and ns["g"] == (1 << 64) - 1
    # Part of a longer number or name: left alone (here, the whole source).
    for text in (f"x = {m64}0\n", f"x = 1{m32}\n", f"t_{m64} = 1\n", f"x = 1.{m64}\n"):
        assert _named(text) == text
    # Mixed: the standalone one is named, the embedded one kept.
    assert _named(f"x = {m32} + 2{m32}\n") == f"x = M32 + 2{m32}\n"
