"""Architectural constants of x86 the software CPU needs.

They mirror ``vfw_board_pc.cpu_state`` (the accelerator must not import the board) and follow
the same layouts: segment descriptor flags in place in ``SegmentCache.flags``.
"""

from __future__ import annotations

M8, M16, M32, M64 = 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
MASK = {1: M8, 2: M16, 4: M32, 8: M64}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x80000000, 8: 0x8000000000000000}

# General registers (encoding order) and segment registers.
R_EAX, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, R_ESI, R_EDI = range(8)
R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

# EFLAGS.
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = (0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000,
                                      0x100000, 0x200000)
ARITH = CF | PF | AF | ZF | SF | OF

# Segment descriptor flags (QEMU's layout, high dword bits 8..23 in place).
DESC_A = 1 << 8
DESC_RW = 1 << 9
DESC_C = 1 << 10
DESC_E = 1 << 10
DESC_CS = 1 << 11
DESC_S = 1 << 12
DESC_DPL_SHIFT = 13
DESC_DPL = 3 << 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23
DESC_TYPE_SHIFT = 8

# Control registers.
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 16, 32
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE = 1, 2, 4, 8, 16, 32
CR4_MCE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 64, 128, 256, 512, 1024
CR4_UMIP, CR4_LA57 = 1 << 11, 1 << 12
CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP = (1 << 16, 1 << 17, 1 << 18,
                                                           1 << 20, 1 << 21)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11

# MSRs the CPU itself implements.
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_EFER = 0xC0000080
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_FSBASE, MSR_GSBASE, MSR_KERNELGSBASE, MSR_TSC_AUX = (0xC0000100, 0xC0000101, 0xC0000102,
                                                         0xC0000103)

# Exception vectors.
EXC_DE, EXC_DB, EXC_NMI, EXC_BP, EXC_OF, EXC_BR, EXC_UD, EXC_NM = range(8)
EXC_DF, EXC_TS, EXC_NP, EXC_SS, EXC_GP, EXC_PF = 8, 10, 11, 12, 13, 14
EXC_MF, EXC_AC, EXC_MC, EXC_XM = 16, 17, 18, 19

# Multiprocessor states (KVM's values, as X86CPUState.mp_state uses them).
MP_STATE_RUNNABLE, MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED = 0, 1, 2
MP_STATE_HALTED, MP_STATE_SIPI_RECEIVED = 3, 4

#: PF for each low result byte (EFLAGS.PF set when the number of 1 bits is even).
PARITY = tuple(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))

#: TSC rate: the guest's TSC counts nanoseconds of virtual time (1 GHz).
TSC_HZ = 1_000_000_000
