"""The one x86 CPU state (QEMU's CPUX86State), shared by every accelerator.

KVM copies it in and out of the kernel with its ioctls; TCG executes on it; the monitor, the
gdbstub, reset and differential tests read it. Accelerators receive it as ``cpu.env`` and must
not import this module's board: they rely only on the attribute names documented here.

Conventions
- ``regs``: 16 general registers in encoding order (RAX RCX RDX RBX RSP RBP RSI RDI R8..R15),
  always full 64-bit unsigned values.
- ``eflags``: the architectural value with bit 1 set. TCG keeps flags lazily while it runs and
  writes the materialised value back before anyone else reads the state.
- segments: ``SegmentCache(selector, base, limit, flags)`` where ``flags`` holds the
  descriptor's high dword bits 8..23 in place (QEMU's layout: type 8..11, S 12, DPL 13..14,
  P 15, AVL 20, L 21, D/B 22, G 23); ``limit`` is the expanded byte limit.
- ``cr``: index 0..8 (cr0, cr2, cr3, cr4, cr8 used); ``efer``, ``apic_base`` and ``msrs``
  (everything else by MSR number) hold model-specific registers.
- FPU/SSE: as FXSAVE lays them out, with ``st`` as 80-bit integers and ``xmm`` as 128-bit ints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# General register indexes (encoding order).
R_EAX, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, R_ESI, R_EDI = range(8)
# Segment register indexes (encoding order, as QEMU's R_ES..R_GS).
R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)

# Segment descriptor flag bits, in place in ``SegmentCache.flags``.
DESC_TYPE_SHIFT = 8
DESC_TYPE_MASK = 0xF << DESC_TYPE_SHIFT
DESC_A_MASK = 1 << 8  # accessed
DESC_RW_MASK = 1 << 9  # readable code / writable data
DESC_C_MASK = 1 << 10  # conforming code
DESC_E_MASK = 1 << 10  # expand-down data
DESC_CS_MASK = 1 << 11  # code segment
DESC_S_MASK = 1 << 12  # code/data (not system)
DESC_DPL_SHIFT = 13
DESC_DPL_MASK = 3 << DESC_DPL_SHIFT
DESC_P_MASK = 1 << 15
DESC_AVL_MASK = 1 << 20
DESC_L_MASK = 1 << 21  # 64-bit code
DESC_B_MASK = 1 << 22  # default operand size / big
DESC_G_MASK = 1 << 23  # granularity

# System segment types (in the type field).
DESC_TYPE_LDT = 2
DESC_TYPE_TSS_BUSY = 11
DESC_TYPE_TSS_AVAILABLE = 9

# Control register bits.
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 16, 32
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE = 1, 2, 4, 8, 16, 32
CR4_MCE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 64, 128, 256, 512, 1024
CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE = 1 << 16, 1 << 17, 1 << 18
CR4_SMEP, CR4_SMAP = 1 << 20, 1 << 21
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11

# EFLAGS bits.
CC_C, CC_P, CC_A, CC_Z, CC_S, CC_O = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
TF_MASK, IF_MASK, DF_MASK, IOPL_MASK, NT_MASK = 0x100, 0x200, 0x400, 0x3000, 0x4000
RF_MASK, VM_MASK, AC_MASK, VIF_MASK, VIP_MASK, ID_MASK = (
    0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000)

# MSR numbers the board's CPU models advertise.
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_PAT = 0x277
MSR_EFER = 0xC0000080
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_FSBASE, MSR_GSBASE, MSR_KERNELGSBASE, MSR_TSC_AUX = (
    0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103)

# More MSRs the models advertise (each only when its CPUID feature is on; see cpu.py).
MSR_IA32_FEATURE_CONTROL, MSR_IA32_TSC_ADJUST = 0x3A, 0x3B
MSR_IA32_SPEC_CTRL, MSR_IA32_PRED_CMD, MSR_IA32_UCODE_REV = 0x48, 0x49, 0x8B
MSR_IA32_ARCH_CAPABILITIES = 0x10A
MSR_MTRRcap, MSR_MTRRdefType = 0xFE, 0x2FF
MSR_MTRRphysBase0 = 0x200  # base n at 0x200 + 2n, mask n at 0x201 + 2n
MSR_MTRRfix64K_00000, MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000 = 0x250, 0x258, 0x259
MSR_MTRRfix4K_C0000 = 0x268  # eight of them, 0x268..0x26F
MSR_MCG_CAP, MSR_MCG_STATUS, MSR_MCG_CTL = 0x179, 0x17A, 0x17B
MSR_MC0_CTL = 0x400  # bank i: CTL, STATUS, ADDR, MISC at 0x400 + 4i + 0..3
MSR_VM_CR, MSR_VM_HSAVE_PA = 0xC0010114, 0xC0010117
EFER_SVME, EFER_FFXSR = 1 << 12, 1 << 14
CR4_PKE = 1 << 22

APIC_DEFAULT_ADDRESS = 0xFEE00000
MSR_IA32_APICBASE_BSP = 1 << 8
MSR_IA32_APICBASE_ENABLE = 1 << 11

# Multiprocessor states (KVM's KVM_MP_STATE_* values).
MP_STATE_RUNNABLE, MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED = 0, 1, 2
MP_STATE_HALTED, MP_STATE_SIPI_RECEIVED = 3, 4


@dataclass
class SegmentCache:
    """A segment register with its hidden (cached descriptor) part."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    flags: int = 0

    @property
    def dpl(self) -> int:
        return (self.flags & DESC_DPL_MASK) >> DESC_DPL_SHIFT

    @property
    def present(self) -> bool:
        return bool(self.flags & DESC_P_MASK)

    def copy(self) -> SegmentCache:
        return SegmentCache(self.selector, self.base, self.limit, self.flags)


def _segments() -> list[SegmentCache]:
    return [SegmentCache() for _ in range(6)]


@dataclass
class X86CPUState:
    """Architectural state of one x86-64 vCPU; see the module docstring for conventions."""

    regs: list[int] = field(default_factory=lambda: [0] * 16)
    rip: int = 0
    eflags: int = 2
    segs: list[SegmentCache] = field(default_factory=_segments)
    ldt: SegmentCache = field(default_factory=SegmentCache)
    tr: SegmentCache = field(default_factory=SegmentCache)
    gdt: SegmentCache = field(default_factory=SegmentCache)  # base and limit only
    idt: SegmentCache = field(default_factory=SegmentCache)  # base and limit only
    cr: list[int] = field(default_factory=lambda: [0] * 9)
    efer: int = 0
    apic_base: int = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE
    msrs: dict[int, int] = field(default_factory=dict)
    dr: list[int] = field(default_factory=lambda: [0] * 8)
    tsc: int = 0  # the TSC value at the last reset or write (accelerators keep it running)
    # FPU / SSE (FXSAVE layout).
    fcw: int = 0x37F
    fsw: int = 0
    ftw: int = 0  # abridged tag word: bit i set = st(i) valid
    fop: int = 0
    fip: int = 0
    fdp: int = 0
    st: list[int] = field(default_factory=lambda: [0] * 8)  # 80-bit values, physical order
    mxcsr: int = 0x1F80
    xmm: list[int] = field(default_factory=lambda: [0] * 16)
    xcr0: int = 1
    # Events and run state.
    halted: bool = False
    mp_state: int = MP_STATE_RUNNABLE
    sipi_vector: int = 0
    #: An exception being delivered or to deliver: vector, error code (None if none).
    exception_vector: int = -1
    exception_error_code: int | None = None
    nmi_pending: bool = False
    interrupt_shadow: bool = False  # after MOV SS / STI: no interrupt for one instruction
    #: Set by device models (PIC/LAPIC) when an external interrupt may be pending.
    interrupt_request: bool = False

    # -- derived views -----------------------------------------------------------------------
    @property
    def cpl(self) -> int:
        """Current privilege level: SS.DPL in protected mode (as VMX and KVM define it; it
        equals CS.DPL except inside conforming code), 0 in real mode, 3 in virtual-8086."""
        if not self.cr[0] & CR0_PE:
            return 0
        if self.eflags & VM_MASK:
            return 3
        return self.segs[R_SS].dpl

    @property
    def long_mode_active(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def code64(self) -> bool:
        return self.long_mode_active and bool(self.segs[R_CS].flags & DESC_L_MASK)

    @property
    def code32(self) -> bool:
        return bool(self.segs[R_CS].flags & DESC_B_MASK)

    def reset(self, bsp: bool) -> None:
        """The power-on / INIT state (Intel SDM vol. 3, table 9-1); RAM is untouched.

        APs start in the wait-for-SIPI state; the BSP at F000:FFF0 with CS base FFFF0000.
        """
        fresh = X86CPUState()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        self.cr[0] = CR0_ET | CR0_NW | CR0_CD  # 0x60000010
        self.regs[R_EDX] = 0x600  # family 6 signature, as QEMU sets it
        data = DESC_P_MASK | DESC_S_MASK | DESC_RW_MASK | DESC_A_MASK
        for i in range(6):
            self.segs[i] = SegmentCache(0, 0, 0xFFFF, data)
        self.segs[R_CS] = SegmentCache(0xF000, 0xFFFF0000, 0xFFFF,
                                       DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK
                                       | DESC_A_MASK)
        self.rip = 0xFFF0
        self.gdt = SegmentCache(0, 0, 0xFFFF, 0)
        self.idt = SegmentCache(0, 0, 0xFFFF, 0)
        self.ldt = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (DESC_TYPE_LDT << DESC_TYPE_SHIFT))
        self.tr = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (DESC_TYPE_TSS_BUSY << DESC_TYPE_SHIFT))
        self.dr[6], self.dr[7] = 0xFFFF0FF0, 0x400
        self.msrs[MSR_PAT] = 0x0007040600070406
        self.apic_base = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | (
            MSR_IA32_APICBASE_BSP if bsp else 0)
        self.mp_state = MP_STATE_RUNNABLE if bsp else MP_STATE_UNINITIALIZED
        self.halted = not bsp
