"""A tiny machine for testing the software CPU without the pc board.

``TestMachine``: RAM at 0, port 0xf4 (isa-debug-exit style: write -> shutdown with exit code
(value << 1) | 1), port 0xe9 (debug console, bytes collected in ``machine.console``).
``TestCPU``: an X86CPUState with a qemu64-like CPUID, a few MSRs and kick handlers.
``setup_*`` put the CPU in real, 32-bit protected or 64-bit long mode with flat segments
(and identity paging for long mode), building GDT/IDT in memory when asked.
"""

from __future__ import annotations

import struct
from typing import Any

from vfw.cpu import CPU
from vfw.machine import Machine
from vfw.memory import MemoryRegion
from vfw.qom import TABLE, register_type
from vfw.runstate import ShutdownCause
from vfw_accel_tcg.accel import TcgAccel
from vfw_board_pc.cpu_state import (
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR4_OSFXSR,
    CR4_PAE,
    DESC_A_MASK,
    DESC_B_MASK,
    DESC_CS_MASK,
    DESC_G_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_RW_MASK,
    DESC_S_MASK,
    DESC_TYPE_TSS_BUSY,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    SegmentCache,
    X86CPUState,
)

CODE32 = DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_B_MASK \
    | DESC_G_MASK
DATA32 = DESC_P_MASK | DESC_S_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_B_MASK | DESC_G_MASK
CODE64 = DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_L_MASK \
    | DESC_G_MASK

# GDT layout used by setup_* when building tables.
SEL_CODE32, SEL_DATA, SEL_CODE64, SEL_CODE16, SEL_DATA16 = 0x08, 0x10, 0x18, 0x20, 0x28
SEL_UCODE32, SEL_UDATA, SEL_UCODE64, SEL_TSS = 0x33, 0x3B, 0x43, 0x48


def _register(cls: Any) -> Any:
    if TABLE.find(cls.TYPE) is None:
        return register_type(cls)
    return cls


@_register
class TestCPU(CPU):
    TYPE = "tcg-test-cpu"

    def instance_init(self) -> None:
        self.env = X86CPUState()
        self.env.reset(True)
        self.interrupt_controller: Any = None
        self.kick_handlers: list[Any] = []
        self.is_bsp = True
        self.apic_id = 0
        self.extra_msrs: dict[int, int] = {0x277: 0x0007040600070406}

    def cpuid(self, leaf: int, sub: int) -> tuple[int, int, int, int]:
        if leaf == 0:
            return 0xD, 0x756E6547, 0x6C65746E, 0x49656E69  # GenuineIntel
        if leaf == 1:
            edx = 0x078BFBFF  # fpu..sse2 (qemu64)
            ecx = (1 << 0) | (1 << 13) | (1 << 23)  # sse3, cx16, popcnt
            return 0x663, 0x800, ecx, edx
        if leaf == 7:
            return 0, 0, 0, 0
        if leaf == 0x80000000:
            return 0x80000008, 0, 0, 0
        if leaf == 0x80000001:
            return 0x663, 0, (1 << 0) | (1 << 5), (1 << 11) | (1 << 20) | (1 << 29)
        if leaf == 0x80000008:
            return 0x3028, 0, 0, 0
        return 0, 0, 0, 0

    def rdmsr(self, index: int) -> int | None:
        return self.extra_msrs.get(index)

    def wrmsr(self, index: int, value: int) -> bool:
        if index in self.extra_msrs:
            self.extra_msrs[index] = value
            return True
        return False

    def kick(self) -> None:
        self.env.interrupt_request = True
        for h in list(self.kick_handlers):
            h()


class SimplePIC:
    """A stand-in interrupt controller: a queue of vectors."""

    def __init__(self, cpu: TestCPU):
        self.cpu = cpu
        self.pending: list[int] = []
        self.acked: list[int] = []

    def raise_vector(self, vector: int) -> None:
        self.pending.append(vector)
        self.cpu.kick()

    def has_interrupt(self) -> bool:
        return bool(self.pending)

    def acknowledge(self) -> int:
        v = self.pending.pop(0)
        self.acked.append(v)
        return v


@_register
class TestMachine(Machine):
    TYPE = "tcg-test-machine"
    DEFAULT_RAM_SIZE = 16 << 20

    def init(self) -> None:
        self.ram = MemoryRegion.ram("ram", self.ram_size)
        self.system_memory.add_subregion(0, self.ram)
        self.console = bytearray()
        self.io_log: list[tuple[str, int, int, int]] = []

        def io_read(off: int, size: int) -> int:
            self.io_log.append(("in", 0xE0 + off, size, 0))
            return 0x5A if off == 0 else 0xFFFFFFFF

        def io_write(off: int, value: int, size: int) -> None:
            port = 0xE0 + off
            self.io_log.append(("out", port, size, value))
            if port == 0xE9:
                self.console.append(value & 0xFF)
            elif port == 0xF4:
                self.request_shutdown(ShutdownCause.GUEST_SHUTDOWN, exit_code=(value << 1) | 1)

        self.system_io.add_subregion(0xE0, MemoryRegion.io("testports", 0x20, io_read, io_write))
        cpu = TestCPU()
        self.cpus.append(cpu)

    def write(self, addr: int, data: bytes) -> None:
        self.address_space_memory.write_bytes(addr, data)

    def read(self, addr: int, n: int) -> bytes:
        return self.address_space_memory.read_bytes(addr, n)


def new_machine(ram_size: int = 16 << 20) -> tuple[TestMachine, TestCPU, Any]:
    """A machine, its CPU and the software CPU running it (a TcgCPU)."""
    m = TestMachine()
    m.ram_size = ram_size
    m.init()
    accel = TcgAccel()
    accel.init_machine(m)
    m.accel = accel
    cpu = m.cpus[0]
    v = accel.vcpu(cpu, m)
    return m, cpu, v


def _desc(base: int, limit: int, flags: int) -> int:
    """An 8-byte descriptor from QEMU-layout flags (limit in bytes, G handled)."""
    if flags & DESC_G_MASK:
        limit >>= 12
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (flags & 0x00F0FF00) | (limit & 0xF0000) | (base & 0xFF000000)
    return lo | (hi << 32)


def build_gdt(m: TestMachine, base: int, tss_base: int = 0, tss64: bool = False) -> int:
    """Write the harness GDT at ``base``; returns its limit."""
    d16code = DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK
    d16data = DESC_P_MASK | DESC_S_MASK | DESC_RW_MASK | DESC_A_MASK
    entries = [0,
               _desc(0, 0xFFFFFFFF, CODE32),
               _desc(0, 0xFFFFFFFF, DATA32),
               _desc(0, 0xFFFFFFFF, CODE64),
               _desc(0, 0xFFFF, d16code),
               _desc(0, 0xFFFF, d16data),
               _desc(0, 0xFFFFFFFF, CODE32 | (3 << 13)),
               _desc(0, 0xFFFFFFFF, DATA32 | (3 << 13)),
               _desc(0, 0xFFFFFFFF, CODE64 | (3 << 13))]
    tss_flags = DESC_P_MASK | (9 << 8)
    entries.append(_desc(tss_base, 0x67 if not tss64 else 0x67, tss_flags))
    entries.append((tss_base >> 32) if tss64 else 0)
    m.write(base, b"".join(struct.pack("<Q", e) for e in entries))
    return len(entries) * 8 - 1


def setup_real(cpu: TestCPU, cs: int = 0, ip: int = 0x1000, sp: int = 0x8000) -> None:
    env = cpu.env
    env.reset(True)
    env.segs[1] = SegmentCache(cs, cs << 4, 0xFFFF, env.segs[1].flags)
    env.rip = ip
    env.regs[4] = sp
    env.idt.base, env.idt.limit = 0, 0x3FF


def setup_prot32(cpu: TestCPU, m: TestMachine | None = None, eip: int = 0x1000,
                 esp: int = 0x80000, gdt: int = 0x500) -> None:
    env = cpu.env
    env.reset(True)
    env.cr[0] = CR0_PE | CR0_ET
    env.cr[4] = CR4_OSFXSR
    env.segs = [SegmentCache(SEL_DATA, 0, 0xFFFFFFFF, DATA32) for _ in range(6)]
    env.segs[1] = SegmentCache(SEL_CODE32, 0, 0xFFFFFFFF, CODE32)
    env.rip = eip
    env.regs[4] = esp
    if m is not None:
        env.gdt.base = gdt
        env.gdt.limit = build_gdt(m, gdt, tss_base=0x700)
        env.tr = SegmentCache(SEL_TSS, 0x700, 0x67, DESC_P_MASK | (DESC_TYPE_TSS_BUSY << 8))
    env.idt.base, env.idt.limit = 0, 0


def identity_map_64(m: TestMachine, pt_base: int, size: int = 1 << 30) -> int:
    """PML4 at pt_base, one PDPT, 2 MiB pages mapping [0, size) writable, user, executable."""
    pml4 = pt_base
    pdpt = pt_base + 0x1000
    pds = pt_base + 0x2000
    m.write(pml4, struct.pack("<Q", pdpt | 7))
    ngb = max(1, size >> 30)
    for g in range(ngb):
        m.write(pdpt + 8 * g, struct.pack("<Q", (pds + 0x1000 * g) | 7))
        m.write(pds + 0x1000 * g,
                b"".join(struct.pack("<Q", ((g << 30) + (i << 21)) | 0x87) for i in range(512)))
    return pml4


def setup_long64(cpu: TestCPU, m: TestMachine, rip: int = 0x1000, rsp: int = 0x80000,
                 pt_base: int = 0x3F0000, gdt: int = 0x500) -> None:
    env = cpu.env
    env.reset(True)
    env.cr[0] = CR0_PE | CR0_ET | CR0_PG | (1 << 16)
    env.cr[4] = CR4_PAE | CR4_OSFXSR
    env.cr[3] = identity_map_64(m, pt_base)
    env.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE
    env.segs = [SegmentCache(SEL_DATA, 0, 0xFFFFFFFF, DATA32) for _ in range(6)]
    env.segs[1] = SegmentCache(SEL_CODE64, 0, 0xFFFFFFFF, CODE64)
    env.gdt.base = gdt
    env.gdt.limit = build_gdt(m, gdt, tss_base=0x700, tss64=True)
    env.tr = SegmentCache(SEL_TSS, 0x700, 0x67, DESC_P_MASK | (DESC_TYPE_TSS_BUSY << 8))
    env.rip = rip
    env.regs[4] = rsp
    env.idt.base, env.idt.limit = 0, 0


def run(v: Any, max_blocks: int = 100000) -> int:
    """Run the software CPU until it halts, a request is pending, or the budget is spent."""
    v.sync_in()
    done = v.step(max_blocks)
    v.sync_out()
    return int(done)


def asm_handler64(vector: int, handler: str, idt: int = 0x2000) -> str:
    """64-bit assembly that makes ``handler`` (a label) the interrupt gate of ``vector`` in a
    32-entry IDT at ``idt`` and loads that IDT (clobbers rax; the IDTR is inline)."""
    base = f"{idt:#x} + {vector} * 16"
    return f"""
        lea rax, [rip + {handler}]
        mov word ptr [{base}], ax
        mov word ptr [{base} + 2], {SEL_CODE64:#x}
        mov word ptr [{base} + 4], 0x8e00
        shr rax, 16
        mov word ptr [{base} + 6], ax
        mov dword ptr [{base} + 8], 0
        lidt [rip + 91f]
        jmp 92f
    91: .word 16 * 32 - 1
        .quad {idt:#x}
    92:
"""


def gate64(offset: int, sel: int = SEL_CODE64, typ: int = 0xE, dpl: int = 0, ist: int = 0
           ) -> bytes:
    """A 16-byte long-mode IDT gate (0xE interrupt, 0xF trap)."""
    lo = (offset & 0xFFFF) | (sel << 16) | (ist << 32) | ((0x80 | (dpl << 5) | typ) << 40) \
        | (((offset >> 16) & 0xFFFF) << 48)
    return struct.pack("<QQ", lo, offset >> 32)


def gate32(offset: int, sel: int = SEL_CODE32, typ: int = 0xE, dpl: int = 0) -> bytes:
    lo = (offset & 0xFFFF) | (sel << 16) | ((0x80 | (dpl << 5) | typ) << 40) \
        | (((offset >> 16) & 0xFFFF) << 48)
    return struct.pack("<Q", lo)


def set_idt(m: TestMachine, cpu: TestCPU, base: int, gates: dict[int, bytes], size: int
            ) -> None:
    """Write gates (vector -> bytes) into a zeroed IDT of 256 entries at ``base``."""
    m.write(base, bytes(256 * size))
    for vec, g in gates.items():
        m.write(base + vec * size, g)
    cpu.env.idt.base = base
    cpu.env.idt.limit = 256 * size - 1


def tss64(m: TestMachine, base: int, rsp0: int, ist: dict[int, int] | None = None) -> None:
    data = bytearray(0x68)
    struct.pack_into("<Q", data, 4, rsp0)
    for k, v in (ist or {}).items():
        struct.pack_into("<Q", data, 0x24 + 8 * (k - 1), v)
    struct.pack_into("<H", data, 0x66, 0x68)
    m.write(base, bytes(data))


def tss32(m: TestMachine, base: int, esp0: int, ss0: int = SEL_DATA) -> None:
    data = bytearray(0x68)
    struct.pack_into("<II", data, 4, esp0, ss0)
    struct.pack_into("<H", data, 0x66, 0x68)
    m.write(base, bytes(data))
