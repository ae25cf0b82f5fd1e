"""The human monitor's parts: page walks, the register dump, x/xp formats, mtree.

Whole sessions against a real guest (``-monitor unix:``) are in tests/test_monitor_guest.py.
"""

from __future__ import annotations

import re
import struct
from types import SimpleNamespace
from typing import Any

from vfw.memory import AddressSpace, MemoryRegion
from vfw.monitor.hmp import (
    HumanMonitor,
    format_registers,
    mtree_lines,
    read_virtual,
    translate,
    write_virtual,
)
from vfw.runstate import RunState

RAM = 4 << 20


def seg(selector: int = 0, base: int = 0, limit: int = 0xFFFF, flags: int = 0x9300) -> Any:
    return SimpleNamespace(selector=selector, base=base, limit=limit, flags=flags)


def make_env(**kw: Any) -> Any:
    env = SimpleNamespace(regs=[0] * 16, rip=0xFFF0, eflags=2,
                          segs=[seg() for _ in range(6)], ldt=seg(flags=0x8200),
                          tr=seg(flags=0x8B00), gdt=seg(), idt=seg(), cr=[0] * 9, efer=0,
                          dr=[0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400], fcw=0x37F, fsw=0, ftw=0,
                          st=[0] * 8, mxcsr=0x1F80, xmm=[0] * 16, halted=False,
                          interrupt_shadow=False)
    env.segs[1] = seg(0xF000, 0xFFFF0000, 0xFFFF, 0x9B00)
    for key, value in kw.items():
        setattr(env, key, value)
    return env


def make_machine() -> Any:
    system = MemoryRegion.container("system", 1 << 64)
    system.add_subregion(0, MemoryRegion.ram("ram", RAM))
    space = AddressSpace("memory", system)
    io = MemoryRegion.container("io", 1 << 16)
    return SimpleNamespace(address_space_memory=space, address_space_io=AddressSpace("I/O", io),
                           cpus=[], accel=None, runstate=RunState.PAUSED)


def put(machine: Any, addr: int, value: int, size: int = 8) -> None:
    machine.address_space_memory.write_bytes(addr, value.to_bytes(size, "little"))


def test_translate_without_paging_is_the_identity() -> None:
    m = make_machine()
    assert translate(m, make_env(), 0x1234) == 0x1234


def test_translate_walks_four_level_tables_with_large_pages() -> None:
    m = make_machine()
    # PML4 at 0x10000 -> PDPT 0x11000 -> PD 0x12000 -> PT 0x13000.
    put(m, 0x10000 + 8 * 1, 0x11000 | 3)           # vaddr bits 47:39 = 1
    put(m, 0x11000 + 8 * 2, 0x12000 | 3)           # bits 38:30 = 2
    put(m, 0x12000 + 8 * 3, 0x13000 | 3)           # bits 29:21 = 3
    put(m, 0x13000 + 8 * 4, 0x200000 | 3)          # bits 20:12 = 4
    put(m, 0x12000 + 8 * 5, 0x200000 | 0x83)       # a 2 MiB page at PD index 5
    env = make_env(cr=[1 | (1 << 31), 0, 0, 0x10000, 1 << 5, 0, 0, 0, 0], efer=(1 << 10) | (1 << 8))
    va = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123
    assert translate(m, env, va) == 0x200123
    big = (1 << 39) | (2 << 30) | (5 << 21) | 0x45678
    assert translate(m, env, big) == 0x245678
    assert translate(m, env, (1 << 39) | (2 << 30) | (6 << 21)) is None  # not present
    write_virtual(m, env, va, b"hello")
    assert read_virtual(m, env, va, 5) == b"hello"
    assert m.address_space_memory.read_bytes(0x200123, 5) == b"hello"


def test_translate_walks_two_level_32bit_tables() -> None:
    m = make_machine()
    put(m, 0x20000 + 4 * 1, 0x21000 | 3, 4)  # PDE for 0x00400000
    put(m, 0x21000 + 4 * 2, 0x300000 | 3, 4)  # PTE for page 2
    env = make_env(cr=[1 | (1 << 31), 0, 0, 0x20000, 0, 0, 0, 0, 0])
    assert translate(m, env, 0x00402ABC) == 0x300ABC
    assert translate(m, env, 0x00800000) is None


def test_register_dump_has_qemus_shape() -> None:
    env = make_env()
    text = format_registers(env)
    lines = text.splitlines()
    assert lines[0] == "EAX=00000000 EBX=00000000 ECX=00000000 EDX=00000000"
    assert lines[2] == "EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0"
    assert lines[3] == "ES =0000 00000000 0000ffff 00009300"
    assert lines[4] == "CS =f000 ffff0000 0000ffff 00009b00"
    assert "CR0=00000000 CR2=00000000 CR3=00000000 CR4=00000000" in lines
    assert "DR6=ffff0ff0 DR7=00000400" in lines
    assert lines[-1].startswith("XMM06=")
    # 64-bit code: the wide layout and descriptor decoding.
    env = make_env(cr=[0x80000011, 0, 0, 0x1000, 0x20, 0, 0, 0, 0], efer=0x500, rip=0x401000)
    env.segs[1] = seg(0x8, 0, 0xFFFFFFFF, 0x00A09B00)
    env.regs[0] = 0x1122334455667788
    lines = format_registers(env).splitlines()
    assert lines[0] == ("RAX=1122334455667788 RBX=0000000000000000 RCX=0000000000000000 "
                        "RDX=0000000000000000")
    assert lines[3].startswith("R12=")
    assert re.match(r"RIP=0000000000401000 RFL=00000002 \[-------\] CPL=0 ", lines[4])
    assert lines[6] == "CS =0008 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]"
    assert lines[-1].startswith("XMM14=")


def test_x_and_xp_formats() -> None:
    m = make_machine()
    m.address_space_memory.write_bytes(0x1000, struct.pack("<4I", 1, 0xDEADBEEF, 3, 4))
    cpu = SimpleNamespace(env=make_env(), cpu_index=0)
    m.cpus = [cpu]
    mon = HumanMonitor(m, None)
    assert mon.run_command("xp/2x 0x1000") == \
        "0000000000001000: 0x00000001 0xdeadbeef\n"
    assert mon.run_command("x/3xb 0x1004") == "0000000000001004: 0xef 0xbe 0xad\n"
    assert mon.run_command("xp/1xg 0x1000") == "0000000000001000: 0xdeadbeef00000001\n"
    assert mon.run_command("xp/2xh 0x1004") == "0000000000001004: 0xbeef 0xdead\n"
    assert mon.run_command("x/5xw 0x1000").count("\n") == 2  # four words a line
    assert "Cannot access memory" in mon.run_command("xp/x 0x10000000")
    # 16-bit code at 0x2000: mov ax, 0x1234; hlt
    m.address_space_memory.write_bytes(0x2000, bytes.fromhex("b83412f4"))
    cpu.env.segs[1] = seg(0, 0, 0xFFFF, 0x9B00)
    cpu.env.rip = 0x2000
    out = mon.run_command("x/2i $pc")
    assert out == ("0x0000000000002000:  movw $0x1234, %ax\n"
                   "0x0000000000002003:  hlt\n"), out
    assert mon.run_command("bogus") == "unknown command: 'bogus'\n"
    assert "info registers" in mon.run_command("help info")


def test_mtree_lists_regions_with_addresses() -> None:
    root = MemoryRegion.container("system", 1 << 32)
    ram = MemoryRegion.ram("pc.ram", 1 << 20)
    root.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 1 << 20))
    out: list[str] = []
    mtree_lines(root, 0, 0, out)
    assert out[0] == "  0000000000000000-00000000ffffffff (prio 0, i/o): system"
    assert out[1] == ("    0000000000000000-00000000000fffff (prio 0, ram): alias ram-below-4g"
                      " @pc.ram 0000000000000000-00000000000fffff")
