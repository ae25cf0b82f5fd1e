"""CPUID for the x86 CPU models: feature names as ``-cpu`` spells them, and the leaf encoder.

Features live in *feature words*: the 32-bit registers of CPUID leaves that hold flag bits
(``FeatureWord(1, 0, "edx")``), plus one MSR-based word (IA32_ARCH_CAPABILITIES). The names
are QEMU's user-visible flag names, so ``-cpu Haswell,-hle,+pcid`` means the same here.
The bit positions are architectural (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, appendix E);
they were checked against QEMU 7.2 by enabling each flag on ``-cpu base`` and reading its
``feature-words`` over QMP.

``cpuid_leaf(src, leaf, subleaf)`` builds one leaf from a ``CPUIDSource`` (the X86CPU): the
static words plus the parts hardware computes on the fly (APIC id, topology, OSXSAVE/OSPKE
mirrored from CR4, XSAVE sizes from XCR0, HTT for multi-threaded packages).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .cpu_state import CR4_OSXSAVE, CR4_PKE, MSR_IA32_APICBASE_ENABLE, X86CPUState


class FeatureWord(NamedTuple):
    """Where 32 feature bits live: CPUID ``leaf``/``subleaf`` register ``reg`` ("eax".."edx"),
    or the MSR numbered ``leaf`` when ``reg`` is "msr"."""

    leaf: int
    subleaf: int
    reg: str


FEAT_1_EDX = FeatureWord(1, 0, "edx")
FEAT_1_ECX = FeatureWord(1, 0, "ecx")
FEAT_6_EAX = FeatureWord(6, 0, "eax")
FEAT_7_0_EBX = FeatureWord(7, 0, "ebx")
FEAT_7_0_ECX = FeatureWord(7, 0, "ecx")
FEAT_7_0_EDX = FeatureWord(7, 0, "edx")
FEAT_7_1_EAX = FeatureWord(7, 1, "eax")
FEAT_XSAVE = FeatureWord(0xD, 1, "eax")
FEAT_KVM = FeatureWord(0x40000001, 0, "eax")
FEAT_KVM_HINTS = FeatureWord(0x40000001, 0, "edx")
FEAT_8000_0001_EDX = FeatureWord(0x80000001, 0, "edx")
FEAT_8000_0001_ECX = FeatureWord(0x80000001, 0, "ecx")
FEAT_8000_0007_EDX = FeatureWord(0x80000007, 0, "edx")
FEAT_8000_0008_EBX = FeatureWord(0x80000008, 0, "ebx")
FEAT_SVM = FeatureWord(0x8000000A, 0, "edx")
FEAT_ARCH_CAPABILITIES = FeatureWord(0x10A, 0, "msr")


def _word(spec: str) -> dict[int, str]:
    """``"0:fpu 1:vme ..."`` -> {bit: name}."""
    out = {}
    for item in spec.split():
        bit, name = item.split(":")
        out[int(bit)] = name
    return out


#: Every named bit, by word, in the order ``-cpu help`` and QMP list the words.
FEATURE_WORDS: dict[FeatureWord, dict[int, str]] = {
    FEAT_1_EDX: _word(
        "0:fpu 1:vme 2:de 3:pse 4:tsc 5:msr 6:pae 7:mce 8:cx8 9:apic 11:sep 12:mtrr 13:pge"
        " 14:mca 15:cmov 16:pat 17:pse36 18:pn 19:clflush 21:ds 22:acpi 23:mmx 24:fxsr 25:sse"
        " 26:sse2 27:ss 28:ht 29:tm 30:ia64 31:pbe"),
    FEAT_1_ECX: _word(
        "0:pni 1:pclmulqdq 2:dtes64 3:monitor 4:ds-cpl 5:vmx 6:smx 7:est 8:tm2 9:ssse3 10:cid"
        " 12:fma 13:cx16 14:xtpr 15:pdcm 17:pcid 18:dca 19:sse4.1 20:sse4.2 21:x2apic 22:movbe"
        " 23:popcnt 24:tsc-deadline 25:aes 26:xsave 28:avx 29:f16c 30:rdrand 31:hypervisor"),
    FEAT_6_EAX: _word("2:arat"),
    FEAT_7_0_EBX: _word(
        "0:fsgsbase 1:tsc-adjust 2:sgx 3:bmi1 4:hle 5:avx2 7:smep 8:bmi2 9:erms 10:invpcid"
        " 11:rtm 14:mpx 16:avx512f 17:avx512dq 18:rdseed 19:adx 20:smap 21:avx512ifma"
        " 22:pcommit 23:clflushopt 24:clwb 25:intel-pt 26:avx512pf 27:avx512er 28:avx512cd"
        " 29:sha-ni 30:avx512bw 31:avx512vl"),
    FEAT_7_0_ECX: _word(
        "1:avx512vbmi 2:umip 3:pku 5:waitpkg 6:avx512vbmi2 8:gfni 9:vaes 10:vpclmulqdq"
        " 11:avx512vnni 12:avx512bitalg 14:avx512-vpopcntdq 16:la57 22:rdpid"
        " 24:bus-lock-detect 25:cldemote 27:movdiri 28:movdir64b 30:sgxlc 31:pks"),
    FEAT_7_0_EDX: _word(
        "2:avx512-4vnniw 3:avx512-4fmaps 4:fsrm 8:avx512-vp2intersect 10:md-clear"
        " 14:serialize 16:tsx-ldtrk 19:arch-lbr 22:amx-bf16 23:avx512-fp16 24:amx-tile"
        " 25:amx-int8 26:spec-ctrl 27:stibp 29:arch-capabilities 30:core-capability 31:ssbd"),
    FEAT_7_1_EAX: _word("4:avx-vnni 5:avx512-bf16"),
    FEAT_XSAVE: _word("0:xsaveopt 1:xsavec 2:xgetbv1 3:xsaves 4:xfd"),
    FEAT_KVM: _word(
        "0:kvmclock 1:kvm-nopiodelay 2:kvm-mmu 3:kvmclock 4:kvm-asyncpf 5:kvm-steal-time"
        " 6:kvm-pv-eoi 7:kvm-pv-unhalt 9:kvm-pv-tlb-flush 11:kvm-pv-ipi 12:kvm-poll-control"
        " 13:kvm-pv-sched-yield 14:kvm-asyncpf-int 15:kvm-msi-ext-dest-id"
        " 24:kvmclock-stable-bit"),
    FEAT_KVM_HINTS: _word("0:kvm-hint-dedicated"),
    FEAT_8000_0001_EDX: _word(
        "11:syscall 20:nx 22:mmxext 25:fxsr-opt 26:pdpe1gb 27:rdtscp 29:lm 30:3dnowext"
        " 31:3dnow"),
    FEAT_8000_0001_ECX: _word(
        "0:lahf-lm 1:cmp-legacy 2:svm 3:extapic 4:cr8legacy 5:abm 6:sse4a 7:misalignsse"
        " 8:3dnowprefetch 9:osvw 10:ibs 11:xop 12:skinit 13:wdt 15:lwp 16:fma4 17:tce"
        " 19:nodeid-msr 21:tbm 22:topoext 23:perfctr-core 24:perfctr-nb"),
    FEAT_8000_0007_EDX: _word("8:invtsc"),
    FEAT_8000_0008_EBX: _word(
        "0:clzero 2:xsaveerptr 9:wbnoinvd 12:ibpb 14:ibrs 15:amd-stibp 24:amd-ssbd"
        " 25:virt-ssbd 26:amd-no-ssb"),
    FEAT_SVM: _word(
        "0:npt 1:lbrv 2:svm-lock 3:nrip-save 4:tsc-scale 5:vmcb-clean 6:flushbyasid"
        " 7:decodeassists 10:pause-filter 12:pfthreshold 13:avic 15:v-vmsave-vmload 16:vgif"
        " 28:svme-addr-chk"),
    FEAT_ARCH_CAPABILITIES: _word(
        "0:rdctl-no 1:ibrs-all 2:rsba 3:skip-l1dfl-vmentry 4:ssb-no 5:mds-no 6:pschange-mc-no"
        " 7:tsx-ctrl 8:taa-no"),
}

#: name -> the (word, mask) pairs it sets; "kvmclock" names two bits, as in QEMU.
FEATURES: dict[str, list[tuple[FeatureWord, int]]] = {}
for _w, _bits in FEATURE_WORDS.items():
    for _bit, _name in _bits.items():
        FEATURES.setdefault(_name, []).append((_w, 1 << _bit))

#: Other spellings QEMU accepts (after '_' -> '-'), mapped to the canonical name.
ALIASES: dict[str, str] = {
    "sse3": "pni", "pclmuldq": "pclmulqdq", "sse4-1": "sse4.1", "sse4-2": "sse4.2",
    "xd": "nx", "ffxsr": "fxsr-opt", "i64": "lm",
}

#: Accepted for old command lines but not stored: these bits mirror CR4 at run time
#: (CPUID.1:ECX.OSXSAVE = CR4.OSXSAVE, CPUID.7:ECX.OSPKE = CR4.PKE). QEMU 7.2 rejects them;
#: vfw accepts them so older libvirt/OpenStack ``-cpu`` lines keep working.
IGNORED_FEATURES = frozenset({"osxsave", "ospke"})

#: Feature words that only make sense with another feature: clearing the key clears the word.
WORD_DEPENDS_ON: dict[FeatureWord, str] = {
    FEAT_XSAVE: "xsave",
    FEAT_SVM: "svm",
    FEAT_ARCH_CAPABILITIES: "arch-capabilities",
}

#: Leaf-1 EDX bits that AMD CPUs repeat in CPUID 0x80000001 EDX.
AMD_ALIAS_MASK = 0x0183F3FF
CPUID_EDX_APIC, CPUID_EDX_HT = 1 << 9, 1 << 28
CPUID_ECX_XSAVE, CPUID_ECX_OSXSAVE = 1 << 26, 1 << 27
CPUID_7_ECX_PKU, CPUID_7_ECX_OSPKE = 1 << 3, 1 << 4
CPUID_EXT3_CMP_LEGACY = 1 << 1

VENDOR_INTEL = "GenuineIntel"
VENDOR_AMD = "AuthenticAMD"


def canonical_feature(name: str) -> str | None:
    """The canonical flag name for what a user typed (``sse4_1`` -> ``sse4.1``), or None if
    it names no feature. ``_`` and ``-`` are interchangeable, as in QEMU."""
    name = name.replace("_", "-")
    name = ALIASES.get(name, name)
    if name in FEATURES or name in IGNORED_FEATURES:
        return name
    return None


def feature_masks(name: str) -> list[tuple[FeatureWord, int]]:
    """The (word, mask) pairs of a canonical name (empty for the ignored ones)."""
    return FEATURES.get(name, [])


def features_from_names(names: list[str] | tuple[str, ...]) -> dict[FeatureWord, int]:
    """Feature words with the named flags set; unknown names are a programming error."""
    words: dict[FeatureWord, int] = {}
    for name in names:
        canon = canonical_feature(name)
        if canon is None:
            raise KeyError(f"unknown CPUID flag {name!r}")
        for word, mask in feature_masks(canon):
            words[word] = words.get(word, 0) | mask
    return words


def feature_names(features: Mapping[FeatureWord, int]) -> list[str]:
    """The names of every set bit, word by word (bits without a name are left out)."""
    out: list[str] = []
    for word, bits in FEATURE_WORDS.items():
        value = features.get(word, 0)
        for bit, name in sorted(bits.items()):
            if value >> bit & 1 and name not in out:
                out.append(name)
    return out


def all_flag_names() -> list[str]:
    """Every recognised flag, sorted, as ``-cpu help`` lists them."""
    return sorted(FEATURES)


def describe_bit(word: FeatureWord, bit: int) -> str:
    """QEMU's way to name a bit in warnings: ``CPUID.01H:ECX.x2apic [bit 21]``."""
    name = FEATURE_WORDS.get(word, {}).get(bit, "")
    if word.reg == "msr":
        where = f"MSR({word.leaf:X}H)"
    else:
        where = f"CPUID.{word.leaf:02X}H:{word.reg.upper()}"
    return f"{where}.{name} [bit {bit}]" if name else f"{where} [bit {bit}]"


# -- caches ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheInfo:
    """One cache as CPUID leaf 4 / 0x8000001D and the AMD leaves 0x80000005/6 describe it."""

    level: int
    kind: int  # 1 data, 2 instruction, 3 unified
    size: int  # bytes
    ways: int
    line: int = 64
    partitions: int = 1
    lines_per_tag: int = 1
    self_init: bool = True
    no_invd_sharing: bool = False
    inclusive: bool = False
    complex_indexing: bool = False

    @property
    def sets(self) -> int:
        return self.size // (self.ways * self.line * self.partitions)


@dataclass(frozen=True)
class CacheModel:
    """The caches a model reports: ``cpuid4`` for Intel's leaves 2/4, ``amd`` for AMD's
    0x80000005/6/0x8000001D, and the four leaf-2 descriptor bytes (L1D, L1I, L2, L3)."""

    cpuid4: tuple[CacheInfo, CacheInfo, CacheInfo, CacheInfo]
    amd: tuple[CacheInfo, CacheInfo, CacheInfo, CacheInfo]
    leaf2: tuple[int, int, int, int]


#: What QEMU reports for models without their own cache table (all here but EPYC).
LEGACY_CACHES = CacheModel(
    cpuid4=(CacheInfo(1, 1, 32 << 10, 8, no_invd_sharing=True),
            CacheInfo(1, 2, 32 << 10, 8, no_invd_sharing=True),
            CacheInfo(2, 3, 4 << 20, 16, no_invd_sharing=True),
            CacheInfo(3, 3, 16 << 20, 16, inclusive=True, complex_indexing=True)),
    amd=(CacheInfo(1, 1, 64 << 10, 2, no_invd_sharing=True),
         CacheInfo(1, 2, 64 << 10, 2, no_invd_sharing=True),
         CacheInfo(2, 3, 512 << 10, 16),
         CacheInfo(3, 3, 16 << 20, 16, inclusive=True, complex_indexing=True)),
    # 0x2C: L1D 32K 8-way; 0x30: L1I 32K 8-way; 0x7D: L2 2M 8-way; 0x4D: L3 16M 16-way.
    leaf2=(0x2C, 0x30, 0x7D, 0x4D),
)

_EPYC = (CacheInfo(1, 1, 32 << 10, 8, no_invd_sharing=True),
         CacheInfo(1, 2, 64 << 10, 4, no_invd_sharing=True),
         CacheInfo(2, 3, 512 << 10, 8, self_init=False),
         CacheInfo(3, 3, 8 << 20, 16, inclusive=True, complex_indexing=True))
#: AMD EPYC (Zen 1): 32K/64K L1, 512K L2 per core, 8M L3 per CCX.
EPYC_CACHES = CacheModel(cpuid4=_EPYC, amd=_EPYC, leaf2=(0xFF, 0, 0, 0))

# AMD 0x80000005/6 TLB words QEMU reports for every model: 255-entry 1-way L1 TLBs,
# 512-entry 4-way L2 4K TLBs, no L2 2M/4M TLB.
_L1_TLB_2M4M, _L1_TLB_4K, _L2_TLB_2M4M, _L2_TLB_4K = 0x01FF01FF, 0x01FF01FF, 0, 0x42004200
_AMD_ASSOC = {1: 1, 2: 2, 4: 4, 8: 6, 16: 8, 32: 0xA, 48: 0xB, 64: 0xC, 96: 0xD, 128: 0xE}


def _amd_assoc(ways: int) -> int:
    return _AMD_ASSOC.get(ways, 0xF)


def _amd_l1(c: CacheInfo) -> int:
    return ((c.size >> 10) << 24 | (c.ways & 0xFF) << 16 | c.lines_per_tag << 8 | c.line)


def _cache_leaf(c: CacheInfo, sharing: int, cores_field: int) -> tuple[int, int, int, int]:
    """Leaf 4 / 0x8000001D layout: type, level, sharing, geometry, flags."""
    eax = (c.kind | c.level << 5 | (c.self_init << 8) | (max(sharing, 1) - 1) << 14
           | cores_field << 26)
    ebx = (c.line - 1) | (c.partitions - 1) << 12 | (c.ways - 1) << 22
    ecx = c.sets - 1
    edx = int(c.no_invd_sharing) | int(c.inclusive) << 1 | int(c.complex_indexing) << 2
    return eax, ebx, ecx, edx


# -- XSAVE --------------------------------------------------------------------------------------
#: XSAVE state components: bit -> (feature that enables it, size, standard-format offset).
XSAVE_COMPONENTS: dict[int, tuple[str, int, int]] = {
    2: ("avx", 256, 576),          # YMM_Hi128
    3: ("mpx", 64, 960),           # BNDREGS
    4: ("mpx", 64, 1024),          # BNDCSR
    5: ("avx512f", 64, 1088),      # opmask
    6: ("avx512f", 512, 1152),     # ZMM_Hi256
    7: ("avx512f", 1024, 1664),    # Hi16_ZMM
    9: ("pku", 8, 2688),           # PKRU
}
XSAVE_LEGACY_SIZE = 576  # FXSAVE area + XSAVE header


def xsave_components(features: Mapping[FeatureWord, int]) -> int:
    """The XCR0 bits a CPU with these features supports (x87 and SSE always, with XSAVE)."""

    def on(name: str) -> bool:
        return all(features.get(w, 0) & m for w, m in feature_masks(name))

    if not on("xsave"):
        return 0
    mask = 0b11
    for bit, (name, _size, _off) in XSAVE_COMPONENTS.items():
        if on(name):
            mask |= 1 << bit
    return mask


def xsave_area_size(mask: int, compacted: bool = False) -> int:
    """Bytes an XSAVE area needs for the components in ``mask``."""
    size = XSAVE_LEGACY_SIZE
    for bit, (_name, csize, offset) in sorted(XSAVE_COMPONENTS.items()):
        if mask >> bit & 1:
            size = size + csize if compacted else max(size, offset + csize)
    return size


# -- topology -----------------------------------------------------------------------------------
def _bits_for(count: int) -> int:
    """Bits of APIC id needed to number ``count`` items (QEMU's apicid_bitwidth_for_count)."""
    return (max(count, 1) - 1).bit_length()


def apic_id_for_index(index: int, topology: tuple[int, int, int]) -> int:
    """The initial APIC id of CPU ``index``: socket, core and thread fields, each as wide as
    its count needs (the x2APIC topology layout QEMU and real CPUs use)."""
    _sockets, cores, threads = topology
    thread = index % threads
    core = index // threads % cores
    socket = index // (threads * cores)
    core_offset = _bits_for(threads)
    pkg_offset = core_offset + _bits_for(cores)
    return socket << pkg_offset | core << core_offset | thread


# -- the leaf encoder ---------------------------------------------------------------------------
class CPUIDSource(Protocol):
    """What ``cpuid_leaf`` reads from a CPU (X86CPU provides it)."""

    env: X86CPUState
    features: dict[FeatureWord, int]
    topology: tuple[int, int, int]
    cache_model: CacheModel

    @property
    def vendor(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def family(self) -> int: ...
    @property
    def model(self) -> int: ...
    @property
    def stepping(self) -> int: ...
    @property
    def level(self) -> int: ...
    @property
    def xlevel(self) -> int: ...
    @property
    def phys_bits(self) -> int: ...
    @property
    def apic_id(self) -> int: ...


def signature(family: int, model: int, stepping: int) -> int:
    """CPUID.1:EAX: stepping, model, family, with the extended fields families >= 15 use."""
    eax = stepping & 0xF | (model & 0xF) << 4 | (model >> 4 & 0xF) << 16
    if family > 0xF:
        eax |= 0xF << 8 | (family - 0xF) << 20
    else:
        eax |= family << 8
    return eax


def vendor_words(vendor: str) -> tuple[int, int, int]:
    """EBX, EDX, ECX of leaf 0 for a 12-character vendor string."""
    raw = vendor.encode("latin-1", "replace")[:12].ljust(12, b"\0")
    return (int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little"),
            int.from_bytes(raw[8:12], "little"))


def brand_words(model_id: str) -> list[int]:
    """The 12 dwords of leaves 0x80000002..4: the model id, NUL padded to 48 bytes."""
    raw = model_id.encode("utf-8", "replace")[:48].ljust(48, b"\0")
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 48, 4)]


def min_levels(features: Mapping[FeatureWord, int]) -> tuple[int, int]:
    """The lowest basic and extended max leaves that still show every set feature (QEMU
    raises the model's level/xlevel to these unless the user set them)."""
    level, xlevel = 0, 0
    for word, value in features.items():
        if not value or word.reg == "msr" or 0x40000000 <= word.leaf < 0x80000000:
            continue
        if word.leaf >= 0x80000000:
            xlevel = max(xlevel, word.leaf)
        else:
            level = max(level, word.leaf)
    if features.get(FEAT_1_ECX, 0) & CPUID_ECX_XSAVE:
        level = max(level, 0xD)
    if features.get(FEAT_8000_0001_ECX, 0) & (1 << 2):  # svm
        xlevel = max(xlevel, 0x8000000A)
    return level, xlevel


def cpuid_leaf(src: CPUIDSource, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """EAX, EBX, ECX, EDX for CPUID(leaf, subleaf) on ``src``.

    Leaves above the maximum basic or extended leaf return the highest basic leaf, as Intel
    CPUs do; the hypervisor range 0x40000000..0x4FFFFFFF is the accelerator's and reads 0.
    """
    leaf &= 0xFFFFFFFF
    subleaf &= 0xFFFFFFFF
    level = src.level
    if 0x40000000 <= leaf < 0x50000000:
        return 0, 0, 0, 0
    if leaf & 0x80000000:
        if leaf > src.xlevel:
            leaf = level
    elif leaf > level:
        leaf = level
    f = src.features
    env = src.env
    _sockets, cores, threads = src.topology
    per_pkg = cores * threads
    apic_id = src.apic_id
    vendor = src.vendor
    is_amd = vendor == VENDOR_AMD

    if leaf == 0:
        ebx, edx, ecx = vendor_words(vendor)
        return level, ebx, ecx, edx
    if leaf == 1:
        eax = signature(src.family, src.model, src.stepping)
        ebx = (apic_id & 0xFF) << 24 | 8 << 8  # CLFLUSH line size in 8-byte units
        ecx = f.get(FEAT_1_ECX, 0) & ~CPUID_ECX_OSXSAVE
        edx = f.get(FEAT_1_EDX, 0)
        if ecx & CPUID_ECX_XSAVE and env.cr[4] & CR4_OSXSAVE:
            ecx |= CPUID_ECX_OSXSAVE
        if not env.apic_base & MSR_IA32_APICBASE_ENABLE:
            edx &= ~CPUID_EDX_APIC  # a software-disabled APIC disappears from CPUID
        if per_pkg > 1:
            ebx |= (per_pkg & 0xFF) << 16
            edx |= CPUID_EDX_HT
        return eax, ebx, ecx, edx
    if leaf == 2:
        if is_amd:
            return 0, 0, 0, 0
        d_l1d, d_l1i, d_l2, d_l3 = src.cache_model.leaf2
        return 1, 0, d_l3, d_l1d << 16 | d_l1i << 8 | d_l2
    if leaf == 4:
        if is_amd:
            return 0, 0, 0, 0
        caches = src.cache_model.cpuid4
        if subleaf >= len(caches):
            return 0, 0, 0, 0
        c = caches[subleaf]
        if c.level == 1:
            sharing = 1
        elif c.level == 2:
            sharing = threads
        else:
            sharing = 1 << (_bits_for(threads) + _bits_for(cores))
        return _cache_leaf(c, sharing, cores - 1)
    if leaf == 5:
        return 0, 0, 3, 0  # MONITOR/MWAIT: extensions + interrupt break-event, no sizes
    if leaf == 6:
        return f.get(FEAT_6_EAX, 0), 0, 0, 0
    if leaf == 7:
        if subleaf == 0:
            ecx = f.get(FEAT_7_0_ECX, 0) & ~CPUID_7_ECX_OSPKE
            if ecx & CPUID_7_ECX_PKU and env.cr[4] & CR4_PKE:
                ecx |= CPUID_7_ECX_OSPKE
            max_sub = 1 if f.get(FEAT_7_1_EAX, 0) else 0
            return max_sub, f.get(FEAT_7_0_EBX, 0), ecx, f.get(FEAT_7_0_EDX, 0)
        if subleaf == 1:
            return f.get(FEAT_7_1_EAX, 0), 0, 0, 0
        return 0, 0, 0, 0
    if leaf == 0xB:
        core_offset = _bits_for(threads)
        if subleaf == 0:
            return core_offset, threads, 0x100, apic_id
        if subleaf == 1:
            return core_offset + _bits_for(cores), per_pkg, 0x200 | 1, apic_id
        return 0, 0, subleaf & 0xFF, apic_id
    if leaf == 0xD:
        supported = xsave_components(f)
        if not supported:
            return 0, 0, 0, 0
        if subleaf == 0:
            return (supported & 0xFFFFFFFF, xsave_area_size(env.xcr0 & supported | 3),
                    xsave_area_size(supported), supported >> 32)
        if subleaf == 1:
            return f.get(FEAT_XSAVE, 0), xsave_area_size(supported, compacted=True), 0, 0
        comp = XSAVE_COMPONENTS.get(subleaf)
        if comp is None or not supported >> subleaf & 1:
            return 0, 0, 0, 0
        return comp[1], comp[2], 0, 0
    if leaf == 0x80000000:
        ebx, edx, ecx = vendor_words(vendor)
        return src.xlevel, ebx, ecx, edx
    if leaf == 0x80000001:
        eax = signature(src.family, src.model, src.stepping)
        ecx = f.get(FEAT_8000_0001_ECX, 0)
        edx = f.get(FEAT_8000_0001_EDX, 0)
        if is_amd:
            edx = edx & ~AMD_ALIAS_MASK | f.get(FEAT_1_EDX, 0) & AMD_ALIAS_MASK
        if per_pkg > 1 and vendor != VENDOR_INTEL:
            ecx |= CPUID_EXT3_CMP_LEGACY  # Linux reads thread info from leaf 1 otherwise
        return eax, 0, ecx, edx
    if 0x80000002 <= leaf <= 0x80000004:
        words = brand_words(src.model_id)
        i = (leaf - 0x80000002) * 4
        return words[i], words[i + 1], words[i + 2], words[i + 3]
    if leaf == 0x80000005:
        l1d, l1i = src.cache_model.amd[0], src.cache_model.amd[1]
        return _L1_TLB_2M4M, _L1_TLB_4K, _amd_l1(l1d), _amd_l1(l1i)
    if leaf == 0x80000006:
        l2, l3 = src.cache_model.amd[2], src.cache_model.amd[3]
        ecx = (l2.size >> 10) << 16 | _amd_assoc(l2.ways) << 12 | l2.lines_per_tag << 8 | l2.line
        edx = ((l3.size >> 19) << 18 | _amd_assoc(l3.ways) << 12 | l3.lines_per_tag << 8
               | l3.line)
        return _L2_TLB_2M4M, _L2_TLB_4K, ecx, edx
    if leaf == 0x80000007:
        return 0, 0, 0, f.get(FEAT_8000_0007_EDX, 0)
    if leaf == 0x80000008:
        lm = f.get(FEAT_8000_0001_EDX, 0) & (1 << 29)
        eax = src.phys_bits | (48 << 8 if lm else 0)
        ecx = 0
        if per_pkg > 1:
            ecx = (_bits_for(threads) + _bits_for(cores)) << 12 | (per_pkg - 1)
        return eax, f.get(FEAT_8000_0008_EBX, 0), ecx, 0
    if leaf == 0x8000000A:
        if not f.get(FEAT_8000_0001_ECX, 0) & (1 << 2):
            return 0, 0, 0, 0
        return 1, 0x10, 0, f.get(FEAT_SVM, 0)  # SVM revision 1, 16 ASIDs
    if leaf == 0x8000001D:
        caches = src.cache_model.amd
        if subleaf >= len(caches):
            return 0, 0, 0, 0
        c = caches[subleaf]
        return _cache_leaf(c, per_pkg if c.level == 3 else threads, 0)
    if leaf == 0x8000001E:  # AMD extended APIC id / core / node (one node per package)
        core_id = apic_id >> _bits_for(threads) & ((1 << _bits_for(cores)) - 1)
        return apic_id, core_id | (threads - 1) << 8, 0, 0
    return 0, 0, 0, 0
