"""The /dev/kvm ABI for x86-64 as ctypes structures, ioctl numbers and constants.

Written from the documented ABI (Documentation/virt/kvm/api.rst and the uapi header layouts);
ioctl numbers are computed from the structure sizes the way ``_IOW``/``_IOR`` do, so a layout
mistake shows up as a wrong number in the tests rather than as memory corruption.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Any

c_u8, c_u16, c_u32, c_u64, c_s32 = (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32,
                                    ctypes.c_uint64, ctypes.c_int32)

# --- ioctl number encoding (asm-generic/ioctl.h) --------------------------------------------
_IOC_WRITE, _IOC_READ = 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(0, nr, 0)


def _ior(nr: int, struct: Any) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr: int, struct: Any) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct: Any) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# --- structures ---------------------------------------------------------------------------


class Structure(ctypes.Structure):
    """Base with a readable repr (field=value), for error reports and tests."""

    def __repr__(self) -> str:
        parts = []
        for name, *_ in self._fields_:
            if name.startswith("pad") or name == "reserved":
                continue
            value = getattr(self, name)
            parts.append(f"{name}={value:#x}" if isinstance(value, int) else f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class kvm_regs(Structure):  # noqa: N801 - the kernel's names
    _fields_ = [(n, c_u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(Structure):  # noqa: N801
    _fields_ = [("base", c_u64), ("limit", c_u32), ("selector", c_u16), ("type", c_u8),
                ("present", c_u8), ("dpl", c_u8), ("db", c_u8), ("s", c_u8), ("l", c_u8),
                ("g", c_u8), ("avl", c_u8), ("unusable", c_u8), ("padding", c_u8)]


class kvm_dtable(Structure):  # noqa: N801
    _fields_ = [("base", c_u64), ("limit", c_u16), ("padding", c_u16 * 3)]


class kvm_sregs(Structure):  # noqa: N801
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", c_u64), ("cr2", c_u64), ("cr3", c_u64), ("cr4", c_u64), ("cr8", c_u64),
                ("efer", c_u64), ("apic_base", c_u64), ("interrupt_bitmap", c_u64 * 4)]


class kvm_fpu(Structure):  # noqa: N801
    _fields_ = [("fpr", (c_u8 * 16) * 8), ("fcw", c_u16), ("fsw", c_u16), ("ftwx", c_u8),
                ("pad1", c_u8), ("last_opcode", c_u16), ("last_ip", c_u64), ("last_dp", c_u64),
                ("xmm", (c_u8 * 16) * 16), ("mxcsr", c_u32), ("pad2", c_u32)]


class kvm_msr_entry(Structure):  # noqa: N801
    _fields_ = [("index", c_u32), ("reserved", c_u32), ("data", c_u64)]


class kvm_msrs_header(Structure):  # noqa: N801
    _fields_ = [("nmsrs", c_u32), ("pad", c_u32)]


def kvm_msrs(n: int) -> Any:
    """A ``struct kvm_msrs`` with room for ``n`` entries (a fresh ctypes type per size)."""

    class _Msrs(Structure):
        _fields_ = [("nmsrs", c_u32), ("pad", c_u32), ("entries", kvm_msr_entry * n)]

    return _Msrs()


class kvm_msr_list_header(Structure):  # noqa: N801
    _fields_ = [("nmsrs", c_u32)]


class kvm_cpuid_entry2(Structure):  # noqa: N801
    _fields_ = [("function", c_u32), ("index", c_u32), ("flags", c_u32), ("eax", c_u32),
                ("ebx", c_u32), ("ecx", c_u32), ("edx", c_u32), ("padding", c_u32 * 3)]


class kvm_cpuid2_header(Structure):  # noqa: N801
    _fields_ = [("nent", c_u32), ("padding", c_u32)]


def kvm_cpuid2(n: int) -> Any:
    """A ``struct kvm_cpuid2`` with room for ``n`` entries."""

    class _Cpuid2(Structure):
        _fields_ = [("nent", c_u32), ("padding", c_u32), ("entries", kvm_cpuid_entry2 * n)]

    return _Cpuid2()


class kvm_userspace_memory_region(Structure):  # noqa: N801
    _fields_ = [("slot", c_u32), ("flags", c_u32), ("guest_phys_addr", c_u64),
                ("memory_size", c_u64), ("userspace_addr", c_u64)]


class kvm_irq_level(Structure):  # noqa: N801
    _fields_ = [("irq", c_u32), ("level", c_u32)]


class kvm_msi(Structure):  # noqa: N801
    _fields_ = [("address_lo", c_u32), ("address_hi", c_u32), ("data", c_u32),
                ("flags", c_u32), ("devid", c_u32), ("pad", c_u8 * 12)]


class kvm_pit_config(Structure):  # noqa: N801
    _fields_ = [("flags", c_u32), ("pad", c_u32 * 15)]


class kvm_ioeventfd(Structure):  # noqa: N801
    _fields_ = [("datamatch", c_u64), ("addr", c_u64), ("len", c_u32), ("fd", c_s32),
                ("flags", c_u32), ("pad", c_u8 * 36)]


class kvm_lapic_state(Structure):  # noqa: N801
    _fields_ = [("regs", c_u8 * 1024)]


class kvm_mp_state(Structure):  # noqa: N801
    _fields_ = [("mp_state", c_u32)]


class kvm_translation(Structure):  # noqa: N801
    _fields_ = [("linear_address", c_u64), ("physical_address", c_u64), ("valid", c_u8),
                ("writeable", c_u8), ("usermode", c_u8), ("pad", c_u8 * 5)]


class _ev_exception(Structure):  # noqa: N801
    _fields_ = [("injected", c_u8), ("nr", c_u8), ("has_error_code", c_u8), ("pending", c_u8),
                ("error_code", c_u32)]


class _ev_interrupt(Structure):  # noqa: N801
    _fields_ = [("injected", c_u8), ("nr", c_u8), ("soft", c_u8), ("shadow", c_u8)]


class _ev_nmi(Structure):  # noqa: N801
    _fields_ = [("injected", c_u8), ("pending", c_u8), ("masked", c_u8), ("pad", c_u8)]


class _ev_smi(Structure):  # noqa: N801
    _fields_ = [("smm", c_u8), ("pending", c_u8), ("smm_inside_nmi", c_u8),
                ("latched_init", c_u8)]


class kvm_vcpu_events(Structure):  # noqa: N801
    _fields_ = [("exception", _ev_exception), ("interrupt", _ev_interrupt), ("nmi", _ev_nmi),
                ("sipi_vector", c_u32), ("flags", c_u32), ("smi", _ev_smi),
                ("triple_fault_pending", c_u8), ("reserved", c_u8 * 26),
                ("exception_has_payload", c_u8), ("exception_payload", c_u64)]


class kvm_debugregs(Structure):  # noqa: N801
    _fields_ = [("db", c_u64 * 4), ("dr6", c_u64), ("dr7", c_u64), ("flags", c_u64),
                ("reserved", c_u64 * 9)]


class kvm_xcr(Structure):  # noqa: N801
    _fields_ = [("xcr", c_u32), ("reserved", c_u32), ("value", c_u64)]


class kvm_xcrs(Structure):  # noqa: N801
    _fields_ = [("nr_xcrs", c_u32), ("flags", c_u32), ("xcrs", kvm_xcr * 16),
                ("padding", c_u64 * 16)]


class kvm_xsave(Structure):  # noqa: N801
    """The XSAVE image in standard (non-compacted) format; the first 512 bytes are FXSAVE's."""

    _fields_ = [("region", c_u8 * 4096)]


class kvm_irqchip(Structure):  # noqa: N801
    _fields_ = [("chip_id", c_u32), ("pad", c_u32), ("chip", c_u8 * 512)]


class kvm_pit_channel_state(Structure):  # noqa: N801
    _fields_ = [("count", c_u32), ("latched_count", c_u16), ("count_latched", c_u8),
                ("status_latched", c_u8), ("status", c_u8), ("read_state", c_u8),
                ("write_state", c_u8), ("write_latch", c_u8), ("rw_mode", c_u8),
                ("mode", c_u8), ("bcd", c_u8), ("gate", c_u8), ("count_load_time", ctypes.c_int64)]


class kvm_pit_state2(Structure):  # noqa: N801
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_u32),
                ("reserved", c_u32 * 9)]


# --- ioctls -------------------------------------------------------------------------------
# /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, kvm_msr_list_header)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2_header)
# VM
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, c_u64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _iowr(0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, kvm_irqchip)  # sic: the kernel declares it _IOR
KVM_CREATE_PIT2 = _iow(0x77, kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, kvm_ioeventfd)
KVM_GET_PIT2 = _ior(0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, kvm_pit_state2)
KVM_SIGNAL_MSI = _iow(0xA5, kvm_msi)
# vCPU
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, kvm_translation)
KVM_GET_MSRS = _iowr(0x88, kvm_msrs_header)
KVM_SET_MSRS = _iow(0x89, kvm_msrs_header)
KVM_GET_FPU = _ior(0x8C, kvm_fpu)
KVM_SET_FPU = _iow(0x8D, kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2_header)
KVM_GET_MP_STATE = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, kvm_mp_state)
KVM_GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
KVM_GET_XSAVE = _ior(0xA4, kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, kvm_xsave)
KVM_GET_XCRS = _ior(0xA6, kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, kvm_xcrs)

KVM_API_VERSION = 12

# --- capabilities -------------------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_IMMEDIATE_EXIT = 136

# --- constants ----------------------------------------------------------------------------
KVM_MEM_READONLY = 1 << 1
KVM_PIT_SPEAKER_DUMMY = 1
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED = 0, 1, 2
KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED = 3, 4
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1
KVM_VCPUEVENT_VALID_SHADOW = 1 << 2
KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI = 1, 2

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30

EXIT_REASON_NAMES = {
    value: name[len("KVM_EXIT_"):] for name, value in list(globals().items())
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1
INTERNAL_ERROR_NAMES = {
    KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    KVM_INTERNAL_ERROR_SIMUL_EX: "simultaneous exceptions",
    KVM_INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason",
}

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_run layout (byte offsets into the vCPU mapping).
RUN_REQUEST_INTERRUPT_WINDOW = 0
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = 8
RUN_IF_FLAG = 13
RUN_CR8 = 16
RUN_APIC_BASE = 24
RUN_UNION = 32
# io: direction u8, size u8, port u16, count u32, data_offset u64
RUN_IO = RUN_UNION
# mmio: phys_addr u64, data[8], len u32, is_write u8
RUN_MMIO_ADDR, RUN_MMIO_DATA, RUN_MMIO_LEN, RUN_MMIO_IS_WRITE = 32, 40, 48, 52
# internal: suberror u32, ndata u32, data u64[16] (emulation_failure: flags @40, insn @48)
RUN_INTERNAL_SUBERROR, RUN_INTERNAL_NDATA, RUN_INTERNAL_DATA = 32, 36, 40
RUN_EMUL_INSN_SIZE, RUN_EMUL_INSN_BYTES = 48, 49

# In-kernel LAPIC register page offsets.
APIC_ID = 0x20
APIC_TASKPRI = 0x80
APIC_SPIV = 0xF0
APIC_LVT0, APIC_LVT1 = 0x350, 0x360
APIC_DM_NMI, APIC_DM_EXTINT = 0x4, 0x7  # delivery mode, bits 10:8 of an LVT entry


# --- helpers ------------------------------------------------------------------------------


def ioctl(fd: int, request: int, arg: Any = 0) -> int:
    """``ioctl(2)`` with an int or a ctypes structure (filled in place for _IOR/_IOWR).

    Integer arguments are passed as a C ``unsigned long`` through libc, since fcntl.ioctl
    takes a signed int (0xfffbd000 for KVM_SET_TSS_ADDR would overflow).
    """
    if isinstance(arg, int):
        if -(1 << 31) <= arg < (1 << 31):
            return int(fcntl.ioctl(fd, request, arg))
        return _libc_ioctl(fd, request, arg)
    return int(fcntl.ioctl(fd, request, arg, True))


_libc: Any = None


def _libc_ioctl(fd: int, request: int, arg: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        _libc.ioctl.restype = ctypes.c_int
    ret = int(_libc.ioctl(fd, request, arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret
