"""The CPUID table a vCPU gets: the ``-cpu`` model's values limited to what KVM can run.

For every leaf KVM_GET_SUPPORTED_CPUID lists: feature bits are the model's ANDed with KVM's;
identification leaves (vendor, family, brand, caches) are the model's; KVM's hypervisor
leaves (0x40000000..) are kept as they are so Linux finds kvmclock; the hypervisor bit is
set and the APIC ids are patched in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

HYPERVISOR_BASE, HYPERVISOR_END = 0x40000000, 0x50000000
EXTENDED_BASE = 0x80000000
CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_ECX_OSXSAVE = 1 << 27
CPUID_1_EDX_APIC = 1 << 9

CpuidFn = Callable[[int, int], tuple[int, int, int, int]]


class CpuidEntry(NamedTuple):
    function: int
    subleaf: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


# (leaf, subleaf or None for all) -> which of (eax, ebx, ecx, edx) are feature masks.
_FEATURE_REGS: dict[tuple[int, int | None], tuple[bool, bool, bool, bool]] = {
    (1, None): (False, False, True, True),
    (7, 0): (False, True, True, True),
    (7, 1): (True, True, True, True),
    (0xD, 0): (True, False, False, True),  # supported XCR0 bits (EBX/ECX sizes: KVM's)
    (0xD, 1): (True, False, True, True),
    (0x80000001, None): (False, False, True, True),
}


def _feature_mask(function: int, index: int) -> tuple[bool, bool, bool, bool] | None:
    return _FEATURE_REGS.get((function, index)) or _FEATURE_REGS.get((function, None))


def build_cpuid(supported: Iterable[CpuidEntry], model: CpuidFn, apic_id: int) -> list[CpuidEntry]:
    """The entries for KVM_SET_CPUID2, from KVM's supported list and the model's ``cpuid``."""
    supported = list(supported)
    max_basic = model(0, 0)[0]
    max_ext = model(EXTENDED_BASE, 0)[0]
    kvm_max_basic = next((e.eax for e in supported if e.function == 0), 0)
    kvm_max_ext = next((e.eax for e in supported if e.function == EXTENDED_BASE), 0)
    xsave = next((e for e in supported if e.function == 0xD and e.subleaf == 0), None)
    xcr0_mask = 0
    if xsave is not None and max_basic >= 0xD:
        eax, _, _, edx = model(0xD, 0)
        xcr0_mask = (eax & xsave.eax) | (edx & xsave.edx) << 32
    out: list[CpuidEntry] = []
    for e in supported:
        fn, idx = e.function, e.subleaf
        if HYPERVISOR_BASE <= fn < HYPERVISOR_END:
            out.append(e)
            continue
        limit = max_ext if fn >= EXTENDED_BASE else max_basic
        if fn > limit:
            continue  # the model stops before this leaf
        regs = [r & 0xFFFFFFFF for r in model(fn, idx)]
        kvm_regs = [e.eax, e.ebx, e.ecx, e.edx]
        mask = _feature_mask(fn, idx)
        if mask is not None:
            regs = [m & k if is_mask else m
                    for m, k, is_mask in zip(regs, kvm_regs, mask, strict=True)]
        if fn == 0:
            regs[0] = min(max_basic, kvm_max_basic)
        elif fn == EXTENDED_BASE:
            regs[0] = min(max_ext, kvm_max_ext) if max_ext >= EXTENDED_BASE else 0
        elif fn == 1:
            regs[1] = (regs[1] & 0x00FFFFFF) | ((apic_id & 0xFF) << 24)
            regs[2] = (regs[2] | CPUID_1_ECX_HYPERVISOR) & ~CPUID_1_ECX_OSXSAVE
        elif fn == 0xD and idx == 0:
            regs[1], regs[2] = e.ebx, e.ecx
        elif fn == 0xD and idx >= 2:
            # A state component's size and offset are the host's, if the component is on.
            regs = kvm_regs if xcr0_mask >> idx & 1 else [0, 0, 0, 0]
        elif fn in (0xB, 0x1F):
            regs[3] = apic_id
        out.append(CpuidEntry(fn, idx, e.flags, *regs))
    return out
