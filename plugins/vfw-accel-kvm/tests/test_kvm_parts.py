"""The accelerator's pure parts, without /dev/kvm: ABI layout, state conversion, CPUID,
register report."""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfw.errors import AccelError, GuestMemoryError
from vfw_accel_kvm import kvm_api as k
from vfw_accel_kvm import report, state
from vfw_accel_kvm.cpuid import CpuidEntry, build_cpuid
from vfw_board_pc.cpu_state import (
    DESC_P_MASK,
    DESC_S_MASK,
    R_CS,
    R_DS,
    R_SS,
    SegmentCache,
    X86CPUState,
)

# ioctl numbers as the kernel headers of this machine define them (the shared notes).
DOCUMENTED = dict(
    GET_API_VERSION=0xAE00, CREATE_VM=0xAE01, CHECK_EXTENSION=0xAE03, GET_VCPU_MMAP_SIZE=0xAE04,
    GET_SUPPORTED_CPUID=0xC008AE05, GET_MSR_INDEX_LIST=0xC004AE02, CREATE_VCPU=0xAE41,
    SET_USER_MEMORY_REGION=0x4020AE46, SET_TSS_ADDR=0xAE47, SET_IDENTITY_MAP_ADDR=0x4008AE48,
    CREATE_IRQCHIP=0xAE60, IRQ_LINE=0x4008AE61, CREATE_PIT2=0x4040AE77, IOEVENTFD=0x4040AE79,
    GET_IRQCHIP=0xC208AE62, SET_IRQCHIP=0x8208AE63, SIGNAL_MSI=0x4020AEA5, RUN=0xAE80,
    GET_REGS=0x8090AE81, SET_REGS=0x4090AE82, GET_SREGS=0x8138AE83, SET_SREGS=0x4138AE84,
    TRANSLATE=0xC018AE85, GET_MSRS=0xC008AE88, SET_MSRS=0x4008AE89, GET_FPU=0x81A0AE8C,
    SET_FPU=0x41A0AE8D, GET_LAPIC=0x8400AE8E, SET_LAPIC=0x4400AE8F, SET_CPUID2=0x4008AE90,
    GET_MP_STATE=0x8004AE98, SET_MP_STATE=0x4004AE99, GET_VCPU_EVENTS=0x8040AE9F,
    SET_VCPU_EVENTS=0x4040AEA0, GET_XSAVE=0x9000AEA4, SET_XSAVE=0x5000AEA5,
)


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    for name, number in DOCUMENTED.items():
        assert getattr(k, "KVM_" + name) == number, name


def test_structure_layouts() -> None:
    sizes = {k.kvm_regs: 144, k.kvm_segment: 24, k.kvm_dtable: 16, k.kvm_sregs: 312,
             k.kvm_fpu: 416, k.kvm_vcpu_events: 64, k.kvm_cpuid_entry2: 40, k.kvm_msr_entry: 16,
             k.kvm_lapic_state: 1024, k.kvm_ioeventfd: 64, k.kvm_pit_config: 64, k.kvm_msi: 32,
             k.kvm_userspace_memory_region: 32, k.kvm_translation: 24, k.kvm_xsave: 4096,
             k.kvm_pit_state2: 112, k.kvm_irqchip: 520}
    for struct_type, size in sizes.items():
        assert ctypes.sizeof(struct_type) == size, struct_type.__name__
    assert k.kvm_sregs.efer.offset == 264 and k.kvm_sregs.apic_base.offset == 272
    assert k.kvm_fpu.mxcsr.offset == 408 and k.kvm_vcpu_events.exception_payload.offset == 56
    assert k.kvm_regs.rip.offset == 128


# --- segments -----------------------------------------------------------------------------
DATA = DESC_P_MASK | DESC_S_MASK | (3 << 8)

# QEMU-layout flags: type 8..11, S 12, DPL 13..14, P 15, AVL 20, L 21, D/B 22, G 23.
FLAG_BITS = st.integers(0, 0xFFFF).map(lambda v: ((v & 0xFF) << 8) | ((v >> 8 & 0xF) << 20))


@given(flags=FLAG_BITS, selector=st.integers(4, 0xFFFF), base=st.integers(0, 2**64 - 1),
       limit=st.integers(0, 2**32 - 1))
def test_present_segments_round_trip(flags: int, selector: int, base: int, limit: int) -> None:
    flags |= DESC_P_MASK
    seg = SegmentCache(selector, base, limit, flags)
    out = k.kvm_segment()
    state.segment_to_kvm(seg, out, null_unusable=True)
    assert out.unusable == 0 and out.present == 1
    back = SegmentCache()
    state.segment_from_kvm(back, out)
    assert back == seg


def test_unusable_segments() -> None:
    out = k.kvm_segment()
    state.segment_to_kvm(SegmentCache(0x10, 0, 0xFFFF, DATA & ~DESC_P_MASK), out)
    assert out.unusable == 1
    state.segment_to_kvm(SegmentCache(0, 0, 0xFFFF, DATA), out, null_unusable=True)
    assert out.unusable == 1
    assert state.segment_flags_from_kvm(out) & DESC_P_MASK == 0


def test_null_data_segments_are_unusable_only_in_protected_mode() -> None:
    env = X86CPUState()
    env.reset(True)  # real mode: selector 0 everywhere, all usable
    s = state.sregs_to_kvm(env)
    assert [getattr(s, n).unusable for n in ("es", "cs", "ss", "ds", "fs", "gs")] == [0] * 6
    env.cr[0] |= 1
    env.segs[R_CS] = SegmentCache(0x08, 0, 0xFFFFFFFF, DATA | (8 << 8))
    env.segs[R_SS] = SegmentCache(0, 0, 0xFFFFFFFF, DATA)  # a null SS stays usable
    s = state.sregs_to_kvm(env)
    assert (s.cs.unusable, s.ss.unusable, s.ds.unusable, s.es.unusable) == (0, 0, 1, 1)


def test_virtual_8086_segments() -> None:
    env = X86CPUState()
    env.reset(True)
    env.cr[0] |= 1
    env.eflags |= 1 << 17
    env.segs[R_DS] = SegmentCache(0x1234, 0x12340, 0xFFFF, 0)
    s = state.sregs_to_kvm(env)
    assert (s.ds.selector, s.ds.base, s.ds.type, s.ds.dpl, s.ds.present, s.ds.s) == (
        0x1234, 0x12340, 3, 3, 1, 1)


# --- FPU ----------------------------------------------------------------------------------


def _fpu_env() -> X86CPUState:
    env = X86CPUState()
    env.fcw, env.fsw, env.ftw, env.fop = 0x27F, 5 << 11 | 0x41, 0xE0, 0x7FF
    env.fip, env.fdp, env.mxcsr = 0x1122334455667788, 0x8877665544332211, 0x1FA0
    env.st = [(i + 1) << 70 | i for i in range(8)]
    env.xmm = [(i + 1) << 120 | i for i in range(16)]
    return env


def test_fpu_is_in_stack_order_and_round_trips() -> None:
    env = _fpu_env()
    f = state.fpu_to_kvm(env)
    top = 5
    assert int.from_bytes(bytes(f.fpr[0])[:10], "little") == env.st[top]
    back = X86CPUState()
    state.fpu_from_kvm(back, f)
    assert (back.st, back.xmm, back.fsw, back.ftw, back.fip) == (
        env.st, env.xmm, env.fsw, env.ftw, env.fip)


def test_fpu_round_trips_through_an_xsave_image() -> None:
    env = _fpu_env()
    image = k.kvm_xsave()
    struct.pack_into("<Q", image, state.XSAVE_XSTATE_BV, 0b111)  # x87, SSE, AVX in use
    state.fpu_to_xsave(env, image, reset=False)
    assert struct.unpack_from("<Q", image, state.XSAVE_XSTATE_BV)[0] == 0b111
    back = X86CPUState()
    state.fpu_from_xsave(back, image)
    for name in ("fcw", "fsw", "ftw", "fop", "fip", "fdp", "mxcsr", "st", "xmm"):
        assert getattr(back, name) == getattr(env, name), name
    state.fpu_to_xsave(env, image, reset=True)  # AVX back to its initial state
    assert struct.unpack_from("<Q", image, state.XSAVE_XSTATE_BV)[0] == 0b011


# --- CPUID --------------------------------------------------------------------------------
SUPPORTED = [
    CpuidEntry(0, 0, 0, 0x10, 1, 2, 3),
    CpuidEntry(1, 0, 0, 0xA10F11, 0x01020800, 0x81202000, 0x078BFBFF),
    CpuidEntry(7, 0, 1, 0, 0x01800002, 0x104, 0x20000000),
    CpuidEntry(0xB, 0, 1, 0, 0, 0, 1),
    CpuidEntry(0xB, 1, 1, 0, 0, 0, 1),
    CpuidEntry(0xD, 0, 1, 0xE7, 0x980, 0x980, 0),
    CpuidEntry(0xD, 2, 1, 0x100, 0x240, 0, 0),
    CpuidEntry(0x10, 0, 0, 9, 9, 9, 9),  # beyond the model's last leaf
    CpuidEntry(0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
    CpuidEntry(0x80000000, 0, 0, 0x80000021, 0, 0, 0),
    CpuidEntry(0x80000001, 0, 0, 0, 0, 0x00400393, 0x23D3FBFF),
]


def _model(leaf: int, sub: int) -> tuple[int, int, int, int]:
    return {0: (0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
            1: (0x663, 0x00010800, 0x0C202001 | (1 << 26), 0xFFFFFFFF),
            7: (0, 0xFFFFFFFF, 0, 0),
            0xD: (0x7, 0, 0, 0) if sub == 0 else (0, 0, 0, 0),
            0x80000000: (0x80000008, 0, 0, 0),
            0x80000001: (0, 0, 1, 0x20100800)}.get(leaf, (0, 0, 0, 0))


def test_cpuid_is_the_model_limited_to_kvm() -> None:
    table = {(e.function, e.subleaf): e for e in build_cpuid(SUPPORTED, _model, apic_id=3)}
    assert table[0, 0][:7] == (0, 0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)
    leaf1 = table[1, 0]
    assert leaf1.eax == 0x663  # the model's signature
    assert leaf1.ebx >> 24 == 3  # APIC id
    assert leaf1.ecx == (0x0C202001 | 1 << 26) & 0x81202000 | 1 << 31  # masked, hypervisor
    assert leaf1.edx == 0x078BFBFF
    assert table[7, 0].ebx == 0x01800002
    assert table[0xB, 0].edx == 3 and table[0xB, 1].edx == 3
    assert (table[0xD, 0].eax, table[0xD, 0].ebx) == (0x7 & 0xE7, 0x980)
    assert table[0xD, 2][3:] == (0x100, 0x240, 0, 0)  # AVX on: the host's layout
    assert (0x10, 0) not in table
    assert table[0x40000000, 0] == SUPPORTED[8]  # KVM's signature, for kvmclock
    assert table[0x80000000, 0].eax == 0x80000008
    assert table[0x80000001, 0][5:] == (1, 0x20100800)
    assert table[7, 0].flags == 1


# --- the report ---------------------------------------------------------------------------


def test_register_report_layout() -> None:
    env = X86CPUState()
    env.reset(True)
    env.regs[0] = 0xAA
    text = report.format_registers(env, [0x90, None, 0xF4], 1)
    lines = text.splitlines()
    assert lines[0] == ("RAX=00000000000000aa RBX=0000000000000000 RCX=0000000000000000 "
                        "RDX=0000000000000600")
    assert lines[4] == "RIP=000000000000fff0 RFL=00000002 [-------] CPL=0 HLT=0"
    assert lines[6] == "CS =f000 00000000ffff0000 0000ffff 00009b00"
    assert lines[-2] == "EFER=0000000000000000"
    assert lines[-1] == "Code=90 <??> f4"
    assert report.code_linear_address(env) == 0xFFFFFFF0


class _Space:
    """An address space that records accesses; 0x1000.. is 'RAM' holding 0xAB bytes."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def write(self, addr: int, value: int, size: int) -> None:
        if addr + size > 1 << 64:
            raise GuestMemoryError("wraps")
        self.writes.append((addr, value, size))

    def read(self, addr: int, size: int) -> int:
        if addr + size > 1 << 64:
            raise GuestMemoryError("wraps")
        return int.from_bytes(b"\xab" * size, "little")


def _mmio_exit(addr: int, data: bytes, length: int, is_write: int) -> Any:
    """A KvmVcpu shell with a kvm_run page holding one MMIO exit (no /dev/kvm needed)."""
    from vfw_accel_kvm.vcpu import KvmVcpu

    vcpu = KvmVcpu.__new__(KvmVcpu)
    run = bytearray(4096)
    struct.pack_into("<Q8sIB", run, k.RUN_MMIO_ADDR, addr, data.ljust(8, b"\0"), length, is_write)
    vcpu.run = run  # type: ignore[assignment]
    return vcpu


class _Machine:
    def __init__(self) -> None:
        self.address_space_memory = _Space()


def test_odd_sized_mmio_goes_byte_by_byte_and_wrapping_reads_return_ones() -> None:
    machine = _Machine()
    vcpu = _mmio_exit(0x1000, b"\x01\x02\x03", 3, 1)
    vcpu._handle_mmio(machine)
    assert machine.address_space_memory.writes == [(0x1000, 1, 1), (0x1001, 2, 1),
                                                   (0x1002, 3, 1)]
    vcpu = _mmio_exit((1 << 64) - 4, b"", 8, 0)  # wraps past 2^64: no exception, all ones
    vcpu._handle_mmio(machine)
    assert bytes(vcpu.run[k.RUN_MMIO_DATA:k.RUN_MMIO_DATA + 8]) == b"\xff" * 8
    vcpu = _mmio_exit(0x1000, b"", 9, 0)
    with pytest.raises(AccelError, match="malformed MMIO exit"):
        vcpu._handle_mmio(machine)
