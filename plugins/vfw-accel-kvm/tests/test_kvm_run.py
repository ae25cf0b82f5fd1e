"""Guests on this machine's /dev/kvm: a minimal machine built here, hand-assembled guest code.

The machine: RAM at 0, a recording I/O port region at 0x3f8 (reads of 0x3fd give 0x60), a
magic port 0xf4 whose write ends the run (the value becomes the exit code), an MMIO region at
0x10000000, and fake x86 CPUs (the board's X86CPUState, sane CPUID). Each guest program is
given as bytes with its assembly alongside.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vfw.cpu import CPU, current_cpu
from vfw.machine import Machine
from vfw.memory import MemoryRegion
from vfw.qom import object_new, register_type
from vfw.runstate import Request, ShutdownCause
from vfw.testing import need_kvm
from vfw.timer import CLOCK_VIRTUAL, Timer
from vfw_accel_kvm.accel import KvmAccel
from vfw_accel_kvm.vcpu import KvmVcpu
from vfw_board_pc.cpu_state import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    DESC_A_MASK,
    DESC_B_MASK,
    DESC_CS_MASK,
    DESC_G_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_RW_MASK,
    DESC_S_MASK,
    EFER_LMA,
    EFER_LME,
    MP_STATE_UNINITIALIZED,
    R_CS,
    R_ESP,
    SegmentCache,
    X86CPUState,
)

RAM_SIZE = 2 << 20
MMIO_BASE = 0x10000000
SERIAL, MAGIC = 0x3F8, 0xF4
TIMEOUT = 30.0


@register_type
class KvmTestCPU(CPU):
    """A vCPU as the board would give one to the accelerator, without the board."""

    TYPE = "kvm-test-x86-cpu"

    def instance_init(self) -> None:
        self.env = X86CPUState()
        self.apic_id = 0
        self.is_bsp = True

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        if leaf == 0:
            return 0xD, 0x756E6547, 0x6C65746E, 0x49656E69  # GenuineIntel
        if leaf == 1:  # family 6; SSE3, CX16, x2APIC; FPU..SSE2, APIC
            return 0x663, 0x00010800, 0x00202001, 0x078BFBFF
        if leaf == 0x80000000:
            return 0x80000008, 0, 0, 0
        if leaf == 0x80000001:  # LAHF; SYSCALL, NX, LM
            return 0, 0, 0x1, 0x20100800
        if leaf == 0x80000008:
            return 0x3028, 0, 0, 0
        return 0, 0, 0, 0

    def reset(self) -> None:
        self.env.reset(self.is_bsp)


@register_type
class KvmTestMachine(Machine):
    """RAM, a recording serial-like port, a magic exit port, an MMIO scratch region."""

    TYPE = "kvm-test-machine"
    MAX_CPUS = 4

    def instance_init(self) -> None:
        self.ncpus = 1
        self.port_log: list[tuple[int, int, int, int]] = []  # (cpu, port, value, size)
        self.mmio_log: list[tuple[str, int, int, int]] = []  # (r/w, offset, value, size)
        self.mmio_pattern = bytes((0x40 + i) & 0xFF for i in range(0x100))
        self.reset_count = 0
        #: Called with each byte written to the serial port (from the vCPU thread, BQL held).
        self.on_serial: Callable[[int], None] | None = None
        self.vcpus: list[KvmTestCPU] = []

    @property
    def kvm(self) -> KvmAccel:
        assert isinstance(self.accel, KvmAccel)
        return self.accel

    def init(self) -> None:
        self.ram = MemoryRegion.ram("ram", RAM_SIZE)
        self.system_memory.add_subregion(0, self.ram)
        self.rom = MemoryRegion.rom("bios", 0x10000)
        self.system_memory.add_subregion(0xFFFF0000, self.rom)
        self.system_memory.add_subregion(MMIO_BASE, MemoryRegion.io(
            "scratch", 0x100, self._mmio_read, self._mmio_write))
        self.system_io.add_subregion(SERIAL, MemoryRegion.io(
            "serial", 8, self._serial_read, self._serial_write))
        self.system_io.add_subregion(MAGIC, MemoryRegion.io(
            "exit", 4, lambda off, size: 0, self._exit_write))
        self.reset_hooks.append(self._count_reset)
        assert self.accel is not None
        for i in range(self.ncpus):
            cpu = object_new("kvm-test-x86-cpu")
            assert isinstance(cpu, KvmTestCPU)
            cpu.cpu_index = i
            cpu.apic_id = i
            cpu.is_bsp = i == 0
            cpu.reset()
            self.cpus.append(cpu)
            self.vcpus.append(cpu)
            self.accel.create_vcpu(cpu)

    def _count_reset(self) -> None:
        self.reset_count += 1

    def _who(self) -> int:
        cpu = current_cpu()
        return -1 if cpu is None else int(cpu.cpu_index)

    def _serial_read(self, offset: int, size: int) -> int:
        return 0x60 if offset == 5 else 0

    def _serial_write(self, offset: int, value: int, size: int) -> None:
        self.port_log.append((self._who(), SERIAL + offset, value, size))
        if self.on_serial is not None:
            self.on_serial(value)

    def _exit_write(self, offset: int, value: int, size: int) -> None:
        self.port_log.append((self._who(), MAGIC + offset, value, size))
        self.request_shutdown(ShutdownCause.GUEST_SHUTDOWN, exit_code=value)

    def _mmio_read(self, offset: int, size: int) -> int:
        value = int.from_bytes(self.mmio_pattern[offset:offset + size], "little")
        self.mmio_log.append(("r", offset, value, size))
        return value

    def _mmio_write(self, offset: int, value: int, size: int) -> None:
        self.mmio_log.append(("w", offset, value, size))

    def written(self, port: int = SERIAL) -> bytes:
        return bytes(v & 0xFF for _, p, v, _ in self.port_log if p == port)


_accels: list[KvmAccel] = []


@pytest.fixture(autouse=True)
def _close_vms() -> Iterator[None]:
    yield
    while _accels:
        _accels.pop().finalize()


def make_machine(ncpus: int = 1) -> KvmTestMachine:
    need_kvm()
    machine = object_new("kvm-test-machine")
    assert isinstance(machine, KvmTestMachine)
    machine.ncpus = ncpus
    accel = object_new("kvm-accel")
    assert isinstance(accel, KvmAccel)
    _accels.append(accel)
    accel.init_machine(machine)
    machine.accel = accel
    machine.init()
    return machine


def run(machine: KvmTestMachine, timeout: float = TIMEOUT) -> tuple[Request, ShutdownCause | None]:
    """Run until the guest (or the watchdog) makes a request; returns the request."""
    watchdog = threading.Timer(timeout, machine.request_shutdown, (ShutdownCause.HOST_UI,))
    watchdog.start()
    try:
        machine.kvm.run(machine)
    finally:
        watchdog.cancel()
    request = machine.take_request()
    assert request is not None
    assert request[1] is not ShutdownCause.HOST_UI, "the guest timed out"
    return request


def load(machine: KvmTestMachine, addr: int, code: bytes) -> None:
    machine.ram.view[addr:addr + len(code)] = code


# --- long mode set-up ---------------------------------------------------------------------
GDT_ADDR, PML4_ADDR, TSS_ADDR = 0x500, 0x9000, 0x600
TSS_LIMIT = 0x68 + 0x400 // 8  # the bitmap covers ports 0..0x3ff, then a 0xff byte
CODE64 = DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_L_MASK \
    | DESC_G_MASK
DATA = DESC_P_MASK | DESC_S_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_B_MASK | DESC_G_MASK


def _descriptor(base: int, limit: int, flags: int) -> int:
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | ((flags >> 8) & 0xF0FF) << 40
            | ((limit >> 16) & 0xF) << 48 | (base >> 24 & 0xFF) << 56)


def enter_long_mode(machine: KvmTestMachine, cpu_index: int, rip: int) -> None:
    """Identity-map 4 GiB with 2 MiB user-accessible pages; a GDT with kernel code 0x08,
    kernel data 0x10, user code 0x1b, user data 0x23, a TSS at 0x28; CPL0 64-bit code."""
    ram = machine.ram.view
    user = 3 << 13
    gdt = [0, _descriptor(0, 0xFFFFF, CODE64), _descriptor(0, 0xFFFFF, DATA),
           _descriptor(0, 0xFFFFF, CODE64 | user), _descriptor(0, 0xFFFFF, DATA | user),
           _descriptor(TSS_ADDR, TSS_LIMIT, DESC_P_MASK | (9 << 8)), 0]
    struct.pack_into("<7Q", ram, GDT_ADDR, *gdt)
    # The TSS: RSP0, and an I/O permission bitmap allowing ports 0..0x3ff to CPL3.
    ram[TSS_ADDR:TSS_ADDR + TSS_LIMIT + 1] = bytes(TSS_LIMIT + 1)
    struct.pack_into("<Q", ram, TSS_ADDR + 4, 0x7000)
    struct.pack_into("<H", ram, TSS_ADDR + 0x66, 0x68)
    ram[TSS_ADDR + TSS_LIMIT] = 0xFF
    pdpt = PML4_ADDR + 0x1000
    struct.pack_into("<Q", ram, PML4_ADDR, pdpt | 7)
    for i in range(4):
        pd = pdpt + 0x1000 * (i + 1)
        struct.pack_into("<Q", ram, pdpt + 8 * i, pd | 7)
        for j in range(512):
            struct.pack_into("<Q", ram, pd + 8 * j, ((i << 30) | (j << 21)) | 0x87)
    env = machine.vcpus[cpu_index].env
    env.cr[0] = CR0_PE | CR0_PG | CR0_ET | CR0_NE | 2
    env.cr[3] = PML4_ADDR
    env.cr[4] = CR4_PAE
    env.efer = EFER_LME | EFER_LMA
    env.segs[R_CS] = SegmentCache(0x08, 0, 0xFFFFFFFF, CODE64)
    for i in range(6):
        if i != R_CS:
            env.segs[i] = SegmentCache(0x10, 0, 0xFFFFFFFF, DATA)
    env.gdt = SegmentCache(0, GDT_ADDR, 8 * 7 - 1, 0)
    env.idt = SegmentCache(0, 0, 0xFFF, 0)
    env.tr = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (11 << 8))
    env.rip = rip
    env.regs[R_ESP] = 0x8000
    env.eflags = 2


# --- guest programs -----------------------------------------------------------------------
# Real mode at 0x1000:
#   mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al
#   mov dx,0x3fd; in al,dx; mov dx,0x3f8; out dx,al        ; echoes 0x60
#   mov ax,0x1234; out dx,ax                               ; a 16-bit write
#   mov si,msg; mov cx,3; cld; rep outsb                   ; string I/O: "abc"
#   mov al,0; out 0xf4,al; 1: hlt; jmp 1b; msg: "abc"
REAL_MODE = bytes.fromhex("baf803b048eeb069eebafd03ecbaf803eeb83412efbe2510b90300fcf36eb000"
                          "e6f4f4ebfd616263")
# At the reset vector F000:FFF0: jmp 0000:1000
RESET_JUMP = bytes.fromhex("ea00100000")
# 64-bit, CPL0: mov dx,0x3f8; mov al,'L'; out dx,al; mov al,'M'; out dx,al;
#   mov al,0; out 0xf4,al; 1: hlt; jmp 1b
LONG_MODE = bytes.fromhex("66baf803b04ceeb04deeb000e6f4f4ebfd")
# 64-bit MMIO at rbx = 0x10000000, results stored at 0x3000:
#   mov eax,[rbx]; mov [0x3000],eax; mov rax,[rbx+8]; mov [0x3008],rax
#   movzx eax,byte [rbx+3]; mov [0x3010],eax; movzx eax,word [rbx+6]; mov [0x3014],eax
#   mov dword [rbx+0x20],0xcafef00d; mov byte [rbx+0x28],0x5a; mov word [rbx+0x2a],0xbeef
#   mov rax,0x1122334455667788; mov [rbx+0x30],rax; mov al,0; out 0xf4,al; 1: hlt; jmp 1b
MMIO = bytes.fromhex("bb000000108b0389042500300000488b430848890425083000000fb643038904"
                     "25103000000fb7430689042514300000c743200df0fecac643285a66c7432aef"
                     "be48b8887766554433221148894330b000e6f4f4ebfd")


def test_real_mode_port_io_from_the_reset_vector() -> None:
    machine = make_machine()
    machine.rom.view[0xFFF0:0xFFF0 + len(RESET_JUMP)] = RESET_JUMP
    load(machine, 0x1000, REAL_MODE)
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.GUEST_SHUTDOWN)
    assert machine.port_log == [
        (0, 0x3F8, ord("H"), 1), (0, 0x3F8, ord("i"), 1), (0, 0x3F8, 0x60, 1),
        (0, 0x3F8, 0x1234, 2), (0, 0x3F8, ord("a"), 1), (0, 0x3F8, ord("b"), 1),
        (0, 0x3F8, ord("c"), 1), (0, 0xF4, 0, 1)]


def test_real_mode_with_cs_ip_set_explicitly() -> None:
    machine = make_machine()
    load(machine, 0x1000, REAL_MODE)
    env = machine.vcpus[0].env
    env.segs[R_CS] = SegmentCache(0, 0, 0xFFFF, env.segs[R_CS].flags)
    env.rip = 0x1000
    run(machine)
    assert machine.written() == b"Hi\x60\x34abc"


def test_long_mode_port_io_at_cpl0() -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, LONG_MODE)
    run(machine)
    assert machine.written() == b"LM"


def test_mmio_reads_and_writes_reach_the_io_region() -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, MMIO)
    run(machine)
    pat = machine.mmio_pattern
    ram = machine.ram.view
    assert struct.unpack_from("<I4xQII", ram, 0x3000) == (
        int.from_bytes(pat[0:4], "little"), int.from_bytes(pat[8:16], "little"), pat[3],
        int.from_bytes(pat[6:8], "little"))
    assert [e for e in machine.mmio_log if e[0] == "w"] == [
        ("w", 0x20, 0xCAFEF00D, 4), ("w", 0x28, 0x5A, 1), ("w", 0x2A, 0xBEEF, 2),
        ("w", 0x30, 0x1122334455667788, 8)]


# 64-bit at 0x5000: ltr 0x28; iretq to user code 0x1b:0x5019, stack 0x23:0x7f00, flags 2;
# user: mov ecx,10000000; 1: dec ecx; jnz 1b; mov dx,0x3f8; mov al,'U'; out dx,al;
#   mov al,0; out 0xf4,al; 2: jmp 2b          (port access through the TSS I/O bitmap)
USER_MODE = bytes.fromhex("66b828000f00d86a2368007f00006a026a1b681950000048cfb980969800ffc975"
                          "fc66baf803b055eeb000e6f4ebfe")


def test_cpl3_code_runs_natively() -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x5000)
    load(machine, 0x5000, USER_MODE)
    start = time.perf_counter()
    run(machine)
    elapsed = time.perf_counter() - start
    assert machine.written() == b"U"
    print(f"10M user-mode loop iterations in {elapsed:.3f} s")


# 64-bit: mov dx,0x3f8; mov al,'T'; out dx,al; ud2   (with IDT limit 0: a triple fault)
TRIPLE_FAULT = bytes.fromhex("66baf803b054ee0f0b")


def test_triple_fault_requests_a_reset_and_the_machine_reboots() -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x4000)
    machine.vcpus[0].env.idt = SegmentCache(0, 0, 0, 0)
    load(machine, 0x4000, TRIPLE_FAULT)
    machine.rom.view[0xFFF0:0xFFF0 + len(RESET_JUMP)] = RESET_JUMP
    load(machine, 0x1000, REAL_MODE)
    assert run(machine) == (Request.RESET, ShutdownCause.GUEST_RESET)
    assert machine.written() == b"T"
    machine.system_reset()  # as vfw's run loop does: reset hooks reset and reload the CPUs
    assert machine.reset_count == 1
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.GUEST_SHUTDOWN)
    assert machine.written() == b"T" + b"Hi\x60\x34abc"


# 64-bit: mov dx,0x3f8; mov al,'X'; out dx,al; mov eax,0x3000; xsave [rax]
#   mov al,0; out 0xf4,al; 1: hlt; jmp 1b
EMULATION_FAILURE = bytes.fromhex("66baf803b058eeb8003000000fae20b000e6f4f4ebfd")


def test_emulation_failure_prints_one_report_and_ends_the_run_non_zero(
        capsys: pytest.CaptureFixture[str]) -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, EMULATION_FAILURE)
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.HOST_ERROR)
    assert machine.exit_code == 1
    assert machine.written() == b"X"
    err = capsys.readouterr().err
    print(err)
    assert err.startswith("KVM internal error. Suberror: 1 (emulation failure)\n")
    assert "RIP=000000000000400c" in err
    assert "CS =0008 0000000000000000 ffffffff 00a09b00" in err
    assert "EFER=0000000000000500" in err
    code = " ".join(f"{b:02x}" for b in EMULATION_FAILURE[:12]) + " <0f> ae 20 b0"
    assert code in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith("Code=")


# BSP, 64-bit: mov dx,0x3f8; mov al,'B'; out dx,al; mov ebx,0xfee00000
#   mov dword [rbx+0xf0],0x1ff          ; SPIV: APIC on
#   mov dword [rbx+0x310],0x01000000    ; ICR high: APIC id 1
#   mov dword [rbx+0x300],0x4500        ; INIT
#   mov dword [rbx+0x300],0x4602        ; SIPI, vector 2: the AP starts at 0200:0000
#   1: hlt; jmp 1b                      ; interrupts off: sleeps in the kernel until kicked
BSP_STARTS_AP = bytes.fromhex("66baf803b042eebb0000e0fec783f0000000ff010000c78310030000000000"
                              "01c7830003000000450000c7830003000002460000f4ebfd")
# AP, real mode at 0x2000: mov eax,1; cpuid; shr ebx,24; mov al,bl; mov dx,0x3f8; out dx,al
#   mov al,'A'; out dx,al; mov al,0; out 0xf4,al; 1: hlt; jmp 1b
AP_CODE = bytes.fromhex("66b8010000000fa266c1eb1888d8baf803eeb041eeb000e6f4f4ebfd")


def test_second_vcpu_starts_through_the_in_kernel_lapic() -> None:
    machine = make_machine(ncpus=2)
    ap = machine.vcpus[1]
    assert ap.env.mp_state == MP_STATE_UNINITIALIZED
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, BSP_STARTS_AP)
    load(machine, 0x2000, AP_CODE)
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.GUEST_SHUTDOWN)
    # The AP reports its APIC id (from CPUID leaf 1, as the accelerator patched it).
    assert machine.port_log == [(0, SERIAL, ord("B"), 1), (1, SERIAL, 1, 1),
                                (1, SERIAL, ord("A"), 1), (1, MAGIC, 0, 1)]
    machine.kvm.synchronize_state(ap)
    assert ap.env.segs[R_CS].selector == 0x200 and ap.env.segs[R_CS].base == 0x2000


def _distinctive_state(env: X86CPUState) -> None:
    """Long mode at CPL0 with every synchronised field set to a value of its own."""
    env.regs = [0x1111111111111111 * (i + 1) & (2**64 - 1) for i in range(16)]
    env.rip = 0xFFFFFFFF81000123
    env.eflags = 0x2 | 0x1 | 0x4 | 0x40 | 0x400 | 0x800  # CF PF ZF DF OF
    env.segs[R_CS] = SegmentCache(0x10, 0, 0xFFFFFFFF, CODE64)
    env.segs[0] = SegmentCache(0x18, 0x1000, 0xFFFFF, DATA & ~DESC_G_MASK)  # ES
    env.segs[2] = SegmentCache(0x18, 0, 0xFFFFFFFF, DATA)  # SS
    env.segs[3] = SegmentCache(0x2B, 0x2000, 0xFFFFFFFF, DATA | (3 << 13))  # DS, DPL 3
    env.segs[4] = SegmentCache(0x18, 0x7FFF12345000, 0xFFFFFFFF, DATA)  # FS
    env.segs[5] = SegmentCache(0x18, 0xFFFF888000001000, 0xFFFFFFFF, DATA)  # GS
    env.tr = SegmentCache(0x40, 0xFFFFFE0000003000, 0x206F, DESC_P_MASK | (11 << 8))
    env.ldt = SegmentCache(0x50, 0xFFFFFE0000004000, 0xFFF, DESC_P_MASK | (2 << 8))
    env.gdt = SegmentCache(0, 0xFFFFFE0000001000, 0x7F, 0)
    env.idt = SegmentCache(0, 0xFFFFFE0000000000, 0xFFF, 0)
    env.cr[0] = CR0_PE | CR0_PG | CR0_ET | CR0_NE | 2 | (1 << 16)  # + MP, WP
    env.cr[2] = 0xDEADBEEF000
    env.cr[3] = 0x1234000
    env.cr[4] = CR4_PAE | (1 << 7) | (1 << 9) | (1 << 10)  # PAE PGE OSFXSR OSXMMEXCPT
    env.cr[8] = 5
    env.efer = EFER_LME | EFER_LMA | 1 | (1 << 11)  # + SCE, NXE
    env.apic_base = 0xFEE00000 | (1 << 11) | (1 << 8)
    env.msrs.update({0x174: 0x10, 0x175: 0xFFFF888000010000, 0x176: 0xFFFFFFFF81800000,
                     0x277: 0x0007010600070106, 0xC0000081: 0x0023001000000000,
                     0xC0000082: 0xFFFFFFFF81A00000, 0xC0000083: 0xFFFFFFFF81A00100,
                     0xC0000084: 0x47700, 0xC0000102: 0xFFFF888007654000, 0x1A0: 1})
    env.fcw, env.fsw, env.ftw = 0x27F, 0x3800 | 0x20, 0x81  # TOP=7
    env.fop, env.fip, env.fdp = 0x123, 0xFFFFFFFF81001000, 0xFFFF888000002000
    env.st = [(0x3FFF8000000000000000 + i) for i in range(8)]
    env.xmm = [(0x0123456789ABCDEF_FEDCBA9876543210 * (i + 1)) & (2**128 - 1) for i in range(16)]
    env.mxcsr = 0x3F80
    env.dr[0:4] = [0x1000, 0x2000, 0x3000, 0x4000]
    env.dr[6], env.dr[7] = 0xFFFF0FF0, 0x401
    env.sipi_vector = 0x12
    env.nmi_pending = True
    env.interrupt_shadow = True
    env.exception_vector, env.exception_error_code = 13, 0x18


def test_state_round_trips_through_the_kernel() -> None:
    machine = make_machine()
    cpu = machine.vcpus[0]
    _distinctive_state(cpu.env)
    cpu.env.tsc = 10**9
    expected = cpu.env
    machine.kvm.synchronize_post_reset(cpu)  # put
    cpu.env = X86CPUState()
    machine.kvm.synchronize_state(cpu)  # get
    got = cpu.env
    assert got.tsc >= 10**9
    got.tsc = expected.tsc
    assert got.sipi_vector == 0  # KVM takes it but never reports it back
    got.sipi_vector = expected.sipi_vector
    for name in X86CPUState.__dataclass_fields__:
        assert getattr(got, name) == getattr(expected, name), name


# 64-bit: mov dx,0x3f8; mov ebx,0x300000; mov al,[rbx]; out dx,al; mov byte [rbx],0x77
#   mov ecx,0xffff0000; mov byte [rcx],0x99; mov al,[rcx]; out dx,al     ; ROM stays
#   mov al,'R'; out dx,al          ; the test maps RAM at 0x400000 from this port write
#   mov ebx,0x400000; mov al,[rbx]; out dx,al; mov al,0; out 0xf4,al; 1: hlt; jmp 1b
MAP_CHANGES = bytes.fromhex("66baf803bb000030008a03eec60377b90000ffffc601998a01eeb052eebb0000"
                            "40008a03eeb000e6f4f4ebfd")
# 64-bit: mov dx,0x3f8; mov ebx,0x300000; mov al,[rbx]; out dx,al; mov al,0; out 0xf4,al; ...
READ_3M = bytes.fromhex("66baf803bb000030008a03eeb000e6f4f4ebfd")


def test_memory_slots_follow_map_changes_and_rom_is_read_only() -> None:
    machine = make_machine()
    extra = MemoryRegion.ram("extra", 0x10000)
    extra.view[0] = 0x5E
    machine.system_memory.add_subregion(0x300000, extra)
    machine.rom.view[0] = 0x42
    late = MemoryRegion.ram("late", 0x1000)
    late.view[0] = 0xAB

    def on_serial(value: int) -> None:  # a device remapping memory while the vCPU runs
        if value == ord("R"):
            machine.system_memory.add_subregion(0x400000, late)

    machine.on_serial = on_serial
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, MAP_CHANGES)
    load(machine, 0x4100, READ_3M)
    run(machine)
    assert machine.written() == bytes([0x5E, 0x42, ord("R"), 0xAB])
    assert extra.view[0] == 0x77 and machine.rom.view[0] == 0x42
    listener = machine.kvm.memory_listener
    assert listener is not None
    slots = listener.slots
    assert {(s.gpa, s.size) for s in slots.values()} >= {(0x300000, 0x10000), (0x400000, 0x1000)}
    assert [s.flags for s in slots.values() if s.gpa == 0xFFFF0000] == [2]  # KVM_MEM_READONLY

    machine.system_memory.del_subregion(extra)  # gone: reads are unassigned (all ones)
    assert 0x300000 not in {s.gpa for s in slots.values()}
    cpu = machine.vcpus[0]
    machine.kvm.synchronize_state(cpu)
    cpu.env.rip = 0x4100
    machine.port_log.clear()
    run(machine)
    assert machine.written() == b"\xff"


# 64-bit: mov ebx,0x10000000; mov dword [rbx+0x40],1; mov dword [rbx+0x44],2
#   mov dx,0x510; mov ax,0x1234; out dx,ax; mov ax,1; out dx,ax; mov al,0; out 0xf4,al; ...
EVENTFDS = bytes.fromhex("bb00000010c7434001000000c743440200000066ba100566b8341266ef66b80100"
                         "66efb000e6f4f4ebfd")


def test_ioeventfds_signal_without_exits() -> None:
    machine = make_machine()
    pio_log: list[tuple[int, int]] = []
    port = MemoryRegion.io("doorbell", 2, lambda off, size: 0,
                           lambda off, value, size: pio_log.append((value, size)))
    machine.system_io.add_subregion(0x510, port)
    mmio_fd = os.eventfd(0, os.EFD_NONBLOCK)
    pio_fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        section = machine.address_space_memory.translate(MMIO_BASE)
        assert section is not None
        scratch = section.region
        scratch.add_eventfd(0x40, 4, None, mmio_fd)  # any value
        port.add_eventfd(0, 2, 0x1234, pio_fd)  # only 0x1234
        enter_long_mode(machine, 0, 0x4000)
        load(machine, 0x4000, EVENTFDS)
        run(machine)
        assert os.eventfd_read(mmio_fd) == 1
        assert os.eventfd_read(pio_fd) == 1
        assert [e for e in machine.mmio_log if e[0] == "w"] == [("w", 0x44, 2, 4)]
        assert pio_log == [(1, 2)]  # the write that did not match exited as usual
        scratch.del_eventfd(0x40, 4, None, mmio_fd)
        port.del_eventfd(0, 2, 0x1234, pio_fd)
    finally:
        os.close(mmio_fd)
        os.close(pio_fd)


# 64-bit at 0x4000, IDT at 0x6000 with vectors 0x30 -> 0x4040 and 0x31 -> 0x4060:
#   mov al,0xff; out 0x21,al; out 0xa1,al                          ; mask the in-kernel PICs
#   mov ebx,0xfee00000; mov dword [rbx+0xf0],0x1ff                 ; LAPIC on
#   mov ecx,0xfec00000; mov dword [rcx],0x1a; mov dword [rcx+0x10],0x31   ; IOAPIC pin 5:
#   mov dword [rcx],0x1b; mov dword [rcx+0x10],0                   ;   vector 0x31, to APIC 0
#   mov dx,0x3f8; mov al,'R'; out dx,al; 1: sti; hlt; jmp 1b
# 0x4040: mov dx,0x3f8; mov al,'M'; out dx,al; mov dword [rbx+0xb0],0 (EOI); jmp 1b
# 0x4060: mov dx,0x3f8; mov al,'Q'; out dx,al; mov dword [rbx+0xb0],0; mov al,0; out 0xf4,al
INTERRUPTS = bytes.fromhex(
    "b0ffe621e6a1bb0000e0fec783f0000000ff010000b90000c0fec7011a000000c7411031000000c7011b"
    "000000c741100000000066baf803b052eefbf4ebfc0066baf803b04deec783b000000000000000ebe800"
    "00000000000000000000000066baf803b051eec783b000000000000000b000e6f4f4ebfd")


def _idt_gate(handler: int) -> bytes:
    return struct.pack("<HHBBHII", handler & 0xFFFF, 0x08, 0, 0x8E, (handler >> 16) & 0xFFFF,
                       handler >> 32, 0)


def test_msi_and_irq_lines_reach_a_halted_vcpu_from_main_loop_timers() -> None:
    machine = make_machine()
    accel = machine.kvm
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, INTERRUPTS)
    load(machine, 0x6000 + 16 * 0x30, _idt_gate(0x4040) + _idt_gate(0x4060))
    machine.vcpus[0].env.idt = SegmentCache(0, 0x6000, 0xFFF, 0)
    fired: list[str] = []

    def msi() -> None:
        fired.append(threading.current_thread().name)
        accel.send_msi(0xFEE00000, 0x30)  # fixed, vector 0x30, APIC 0

    def pulse() -> None:
        fired.append(threading.current_thread().name)
        accel.set_irq(5, 1)
        accel.set_irq(5, 0)

    timers = {ord("R"): Timer(CLOCK_VIRTUAL, msi), ord("M"): Timer(CLOCK_VIRTUAL, pulse)}

    def on_serial(value: int) -> None:
        if value in timers:  # a little later, from the main loop, while the vCPU sleeps
            timers[value].mod(CLOCK_VIRTUAL.now_ns() + 20_000_000)

    machine.on_serial = on_serial
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.GUEST_SHUTDOWN)
    assert machine.written() == b"RMQ"
    assert fired == [threading.main_thread().name] * 2


# 64-bit: mov dx,0x3f8; mov al,'R'; out dx,al; cli; 1: hlt; jmp 1b     (hlt at 0x4008)
HALT_FOREVER = bytes.fromhex("66baf803b052eefaf4ebfd")


def test_registers_are_read_from_a_running_vcpu_by_a_main_loop_timer() -> None:
    """synchronize_state from another thread holding the BQL: the vCPU is kicked out of HLT
    (inside KVM_RUN), reads its registers on its own thread, and sleeps again."""
    machine = make_machine()
    cpu = machine.vcpus[0]
    enter_long_mode(machine, 0, 0x4000)
    load(machine, 0x4000, HALT_FOREVER)
    seen: list[tuple[int, int, int]] = []

    def inspect() -> None:
        machine.kvm.synchronize_state(cpu)
        seen.append((cpu.env.rip, cpu.env.regs[0] & 0xFF, cpu.env.mp_state))
        if len(seen) < 3:
            timer.mod(CLOCK_VIRTUAL.now_ns() + 10_000_000)  # again, with the vCPU back in HLT
        else:
            machine.request_shutdown(ShutdownCause.HOST_QMP_QUIT)

    timer = Timer(CLOCK_VIRTUAL, inspect)
    machine.on_serial = lambda value: timer.mod(CLOCK_VIRTUAL.now_ns() + 20_000_000)
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.HOST_QMP_QUIT)
    assert seen == [(0x4009, ord("R"), 3)] * 3  # after the HLT, halted (KVM_MP_STATE_HALTED)


# 64-bit at 0x5000: ltr 0x28; iretq to user code 0x1b:0x5019, stack 0x23:0x7f00;
# user: mov dx,0x3f8; mov al,'U'; out dx,al; 2: jmp 2b         (spins at CPL3, never exits)
USER_SPIN = bytes.fromhex("66b828000f00d86a2368007f00006a026a1b681950000048cf66baf803b055eeebfe")


def test_a_vcpu_spinning_in_user_mode_is_stopped_by_a_request() -> None:
    machine = make_machine()
    enter_long_mode(machine, 0, 0x5000)
    load(machine, 0x5000, USER_SPIN)
    stop = Timer(CLOCK_VIRTUAL, lambda: machine.request_shutdown(ShutdownCause.HOST_SIGNAL))
    machine.on_serial = lambda value: stop.mod(CLOCK_VIRTUAL.now_ns() + 50_000_000)
    start = time.monotonic()
    assert run(machine) == (Request.SHUTDOWN, ShutdownCause.HOST_SIGNAL)
    assert time.monotonic() - start < 5
    vcpu: KvmVcpu = machine.kvm.vcpu_of(machine.vcpus[0])
    assert vcpu.thread is None  # joined
    machine.kvm.synchronize_state(machine.vcpus[0])
    assert machine.vcpus[0].env.rip == 0x5020 and machine.vcpus[0].env.cpl == 3
