"""Events whose delivery faults (no IDT, an IDT too short, a gate the caller may not use) turn
into #GP, #DF and finally a triple fault (a reset request) as on hardware: a CpuException
must never leave the CPU loop, whatever raised the event (an instruction, INT n, an external
interrupt or an NMI)."""

from __future__ import annotations

import shutil
import struct
from typing import Any

import pytest

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")

STORE = 0x3000  # the #GP handler stores its error code here


@pytest.fixture(autouse=True)
def _tools() -> None:
    need(shutil.which("as") is not None and shutil.which("ld") is not None,
         "GNU as and ld are needed")


def _machine(mode: str, code: str) -> tuple[Any, Any, Any]:
    import difftest
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    bits = {"long": 64, "prot": 32, "real": 16}[mode]
    m.write(0x1000, difftest.assemble(code, bits) + b"\xf4")
    if mode == "long":
        h.setup_long64(cpu, m, rip=0x1000)
    elif mode == "prot":
        h.setup_prot32(cpu, m, eip=0x1000)
    else:
        h.setup_real(cpu, ip=0x1000)
    cpu.env.idt.base, cpu.env.idt.limit = 0x20000, 0
    return m, cpu, v


def _reset_requested(m: Any) -> bool:
    from vfw.runstate import ShutdownCause

    return bool(m.request_event.is_set() and m._request[1] == ShutdownCause.GUEST_RESET)


@pytest.mark.parametrize("mode", ["long", "prot", "real"])
@pytest.mark.parametrize("idt_limit", [0, 0x10])
def test_an_external_interrupt_without_an_idt_triple_faults(mode: str, idt_limit: int) -> None:
    import tcg_harness as h

    m, cpu, v = _machine(mode, "sti\n1: jmp 1b")
    cpu.env.idt.limit = idt_limit
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic
    pic.raise_vector(0x30)
    h.run(v, 200)  # used to raise CpuException(#GP) out of the loop
    assert pic.acked == [0x30]
    assert _reset_requested(m)


@pytest.mark.parametrize("mode", ["long", "prot", "real"])
def test_an_nmi_without_an_idt_triple_faults(mode: str) -> None:
    import tcg_harness as h

    m, cpu, v = _machine(mode, "1: jmp 1b")
    cpu.env.nmi_pending = True
    cpu.kick()
    h.run(v, 200)
    assert _reset_requested(m)


@pytest.mark.parametrize("mode", ["long", "prot", "real"])
@pytest.mark.parametrize("code", ["int 0x80", "int3", "ud2", "xor eax, eax\ndiv eax"])
def test_int_n_and_exceptions_without_an_idt_triple_fault(mode: str, code: str) -> None:
    import tcg_harness as h

    m, cpu, v = _machine(mode, code)
    h.run(v, 200)
    assert _reset_requested(m)


def test_int_n_past_the_idt_limit_is_a_gp_with_the_idt_error_code() -> None:
    """INT 0x80 with an IDT that ends before vector 0x80: #GP(0x80 * 8 + 2) is delivered."""
    import difftest
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    code = difftest.assemble_at("""
    .code64
        int 0x80
        hlt
    gp:
        pop rax
        mov qword ptr [0x3000], rax
        mov al, 1
        out 0xf4, al
        hlt
    """, 0x1000)
    m.write(0x1000, code)
    h.setup_long64(cpu, m, rip=0x1000)
    gp = 0x1000 + code.index(b"\x58")  # pop rax
    h.set_idt(m, cpu, 0x20000, {13: h.gate64(gp)}, 16)
    cpu.env.idt.limit = 0x21 * 16 - 1
    h.run(v, 200)
    assert struct.unpack("<Q", m.read(STORE, 8))[0] == 0x80 * 8 + 2
    assert m.exit_code == 3

