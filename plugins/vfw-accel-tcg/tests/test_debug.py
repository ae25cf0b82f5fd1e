"""The gdbstub's guest debugging under TCG: breakpoints stop before the instruction, resuming
runs it, single step runs exactly one, and breakpoints inside blocks translated earlier hit."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")

# 64-bit, at 0x1000:
#   0x1000 mov ecx, N (10)
#   0x1005 xor eax, eax
#   0x1007 add eax, ecx      <- loop head (a self-looping block)
#   0x1009 dec ecx
#   0x100b jnz 0x1007
#   0x100d out 0xf4, al      (exit code (eax << 1) | 1)
#   0x100f hlt
def loop(n: int = 10) -> bytes:
    return b"\xb9" + n.to_bytes(4, "little") + bytes.fromhex("31c0" "01c8" "ffc9" "75fa"
                                                              "e6f4" "f4")


RAX, RCX = 0, 1


class Debugger:
    """What the gdbstub does on a debug exit: remember it and ask the machine to stop."""

    def __init__(self, machine: Any):
        self.machine = machine
        self.hits: list[int] = []

    def __call__(self, cpu: Any, pc: int) -> None:
        self.hits.append(pc)
        self.machine.request_stop()

    def resume(self) -> None:
        """The machine's run loop took the stop request: clear it, as ``cont`` does."""
        assert self.machine.take_request() is not None


def _machine(n: int = 10) -> tuple[Any, Any, Any, Debugger]:
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    m.write(0x1000, loop(n))
    h.setup_long64(cpu, m)
    return m, cpu, v, Debugger(m)


def test_breakpoint_stops_before_the_instruction_and_resuming_runs_it() -> None:
    import tcg_harness as h

    m, cpu, v, dbg = _machine()
    m.accel.set_guest_debug(cpu, [0x1009], False, dbg)
    h.run(v)
    assert dbg.hits == [0x1009]
    assert cpu.env.rip == 0x1009
    assert (cpu.env.regs[RAX], cpu.env.regs[RCX]) == (10, 10)  # add ran, dec did not
    # Resuming without re-arming (a monitor's cont): the dec runs, the next round stops.
    dbg.resume()
    h.run(v)
    assert dbg.hits == [0x1009, 0x1009]
    assert (cpu.env.regs[RAX], cpu.env.regs[RCX]) == (19, 9)
    # Re-arming at the breakpoint (what the gdbstub does before c) also steps over it.
    dbg.resume()
    m.accel.set_guest_debug(cpu, [0x1009], False, dbg)
    h.run(v)
    assert (cpu.env.rip, cpu.env.regs[RCX]) == (0x1009, 8)
    # Single step from the breakpoint: exactly one instruction each time.
    for rip, rcx in ((0x100B, 7), (0x1007, 7), (0x1009, 7), (0x100B, 6)):
        dbg.resume()
        m.accel.set_guest_debug(cpu, [0x1009], True, dbg)
        h.run(v)
        assert (cpu.env.rip, cpu.env.regs[RCX]) == (rip, rcx)
    assert dbg.hits[-4:] == [0x100B, 0x1007, 0x1009, 0x100B]
    # Disarmed (gdb detached): no checks any more, the guest runs to its exit.
    dbg.resume()
    m.accel.set_guest_debug(cpu, [], False, None)
    assert v.debug is None
    h.run(v)
    assert len(dbg.hits) == 7
    assert m.exit_code == (55 << 1) | 1


def test_breakpoint_inside_a_block_translated_earlier_hits() -> None:
    import tcg_harness as h

    n = 100_000
    m, cpu, v, dbg = _machine(n)
    v.sync_in()
    v.step(2)  # translates and runs the loop block at 0x1007 without a debugger
    v.sync_out()
    assert any(key[1] == 0x1007 for key in v.tbc.tbs), "the loop block was not translated"
    assert not m.request_event.is_set() and cpu.env.regs[RCX] > 0
    m.accel.set_guest_debug(cpu, [0x100B], False, dbg)
    assert not any(key[1] == 0x1007 for key in v.tbc.tbs), "blocks were not flushed"
    h.run(v)
    assert dbg.hits == [0x100B] and cpu.env.rip == 0x100B
    # Breakpoints do not change what the guest computes.
    dbg.resume()
    m.accel.set_guest_debug(cpu, [], False, None)
    h.run(v, 10**6)
    assert m.exit_code == (((n * (n + 1) // 2) & 0xFF) << 1) | 1


def test_a_step_that_faults_stops_at_the_handler() -> None:
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    # ud2 at 0x1000; the #UD handler at 0x2000 is "out 0xf4, al; hlt".
    m.write(0x1000, bytes.fromhex("0f0b"))
    m.write(0x2000, bytes.fromhex("b005" "e6f4" "f4"))
    h.setup_long64(cpu, m)
    h.set_idt(m, cpu, 0x3000, {6: h.gate64(0x2000)}, 16)
    dbg = Debugger(m)
    accel: Any = m.accel
    accel.set_guest_debug(cpu, [], True, dbg)
    h.run(v)
    assert dbg.hits == [0x2000] and cpu.env.rip == 0x2000
    assert not m.exit_code


def test_a_breakpoint_on_one_vcpu_stops_the_round_robin_loop() -> None:
    import tcg_harness as h

    m, cpu, v, dbg = _machine()
    other = h.TestCPU()
    other.is_bsp = False
    m.cpus.insert(0, other)  # it runs its slice first, then CPU 1 hits the breakpoint
    m.write(0x5000, bytes.fromhex("48ffc3" "ebfb"))  # 1: inc rbx; jmp 1b (forever)
    h.setup_long64(other, m, rip=0x5000)
    m.accel.set_guest_debug(cpu, [0x100D], False, dbg)
    m.accel.set_guest_debug(other, [0x100D], False, dbg)
    runner = threading.Thread(target=m.accel.run, args=(m,), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the other vCPU kept the machine running"
    assert dbg.hits == [0x100D] and cpu.env.rip == 0x100D
    assert cpu.env.regs[RAX] == 55 and not m.exit_code
    spun = other.env.regs[3]
    assert spun > 0 and other.env.rip in (0x5000, 0x5003)


def test_breakpoint_at_the_target_of_a_call_followed_into_the_same_block() -> None:
    import tcg_harness as h

    m, cpu, v = h.new_machine()
    # 0x1000 call 0x1010; out 0xf4, al; hlt / 0x1010 mov al, 9; ret: one trace without a
    # debugger (the call is followed), so the breakpoint must cut it.
    m.write(0x1000, bytes.fromhex("e80b000000" "e6f4" "f4"))
    m.write(0x1010, bytes.fromhex("b009" "c3"))
    h.setup_long64(cpu, m)
    dbg = Debugger(m)
    accel: Any = m.accel
    accel.set_guest_debug(cpu, [0x1010], False, dbg)
    h.run(v)
    assert dbg.hits == [0x1010] and cpu.env.rip == 0x1010
    assert cpu.env.regs[RAX] & 0xFF != 9
    dbg.resume()
    h.run(v)
    assert m.exit_code == (9 << 1) | 1


def test_a_step_does_not_enter_a_pending_interrupt_and_resuming_takes_it() -> None:
    import tcg_harness as h

    m, cpu, v, dbg = _machine()
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic
    # IRQ 0x20: "mov al, 0x42; out 0xf4, al; hlt" at 0x2000.
    m.write(0x2000, bytes.fromhex("b042" "e6f4" "f4"))
    h.set_idt(m, cpu, 0x3000, {0x20: h.gate64(0x2000)}, 16)
    cpu.env.eflags |= 0x200  # IF
    accel: Any = m.accel
    accel.set_guest_debug(cpu, [], True, dbg)
    pic.raise_vector(0x20)
    h.run(v)
    assert dbg.hits == [0x1005] and cpu.env.rip == 0x1005  # the mov ran; no handler
    assert pic.pending == [0x20]
    dbg.resume()
    accel.set_guest_debug(cpu, [], False, None)
    h.run(v)
    assert pic.acked == [0x20]
    assert m.exit_code == (0x42 << 1) | 1
