"""x86 CPU types: the abstract ``x86_64-cpu`` and one type per ``-cpu`` model (QEMU's
target/i386/cpu.c in short).

A model is a table row (vendor, family/model/stepping, brand string, max leaves, feature names,
caches) turned into a registered type ``<model>-x86_64-cpu``, QEMU's naming. An X86CPU carries
its architectural state in ``env`` (X86CPUState, shared by every accelerator), its CPUID
feature words in ``features``, and answers CPUID (``cpuid``) and the model-specific registers
its features advertise (``rdmsr``/``wrmsr``); accelerators call these on guest CPUID/RDMSR/WRMSR.

How a board builds one (QEMU's order): ``find_cpu_model(name)`` → ``check_accel`` → create →
accelerator defaults → the user's ``-cpu`` options (``set_features``) → ``filter_features``
with what the accelerator can do → realize → reset. ``x86_cpu_from_options`` does the first five.

``max`` means "every feature vfw's accelerators may support": its table is a conservative
superset (no AVX state, no nested virtualisation, no x2APIC) that each accelerator narrows with
``filter_features``. ``host`` exists only under KVM; the KVM accelerator fills in its CPUID.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vfw.cpu import CPU
from vfw.errors import MachineError, OptionError, PropertyError
from vfw.options import parse_bool
from vfw.props import BOOL, STR, UINT32, prop
from vfw.qom import TABLE, register_type

from . import cpuid as cpuid_mod
from .cpu_state import (
    APIC_DEFAULT_ADDRESS,
    CR0_PG,
    EFER_FFXSR,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    EFER_SVME,
    MSR_CSTAR,
    MSR_EFER,
    MSR_FMASK,
    MSR_FSBASE,
    MSR_GSBASE,
    MSR_IA32_APICBASE,
    MSR_IA32_APICBASE_BSP,
    MSR_IA32_APICBASE_ENABLE,
    MSR_IA32_ARCH_CAPABILITIES,
    MSR_IA32_FEATURE_CONTROL,
    MSR_IA32_MISC_ENABLE,
    MSR_IA32_PRED_CMD,
    MSR_IA32_SPEC_CTRL,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC,
    MSR_IA32_TSC_ADJUST,
    MSR_IA32_UCODE_REV,
    MSR_KERNELGSBASE,
    MSR_LSTAR,
    MSR_MC0_CTL,
    MSR_MCG_CAP,
    MSR_MCG_CTL,
    MSR_MCG_STATUS,
    MSR_PAT,
    MSR_STAR,
    MSR_TSC_AUX,
    MSR_VM_CR,
    MSR_VM_HSAVE_PA,
    R_EDX,
    R_FS,
    R_GS,
    MSR_MTRRcap,
    MSR_MTRRdefType,
    MSR_MTRRfix4K_C0000,
    MSR_MTRRfix16K_80000,
    MSR_MTRRfix16K_A0000,
    MSR_MTRRfix64K_00000,
    MSR_MTRRphysBase0,
    X86CPUState,
)
from .cpuid import (
    FEAT_ARCH_CAPABILITIES,
    LEGACY_CACHES,
    VENDOR_AMD,
    VENDOR_INTEL,
    WORD_DEPENDS_ON,
    CacheModel,
    FeatureWord,
    all_flag_names,
    apic_id_for_index,
    canonical_feature,
    cpuid_leaf,
    describe_bit,
    feature_masks,
    features_from_names,
    min_levels,
)

CPU_SUFFIX = "-x86_64-cpu"
_U64 = (1 << 64) - 1
log = logging.getLogger("vfw.cpu")

MCE_BANKS = 10
#: MCG_CAP: 10 banks, MCG_CTL present (bit 8), software error recovery (bit 24); QEMU's value.
MCG_CAP_VALUE = 1 << 24 | 1 << 8 | MCE_BANKS
#: MTRRcap: 8 variable ranges, fixed ranges (bit 8), write-combining (bit 10).
MTRR_CAP_VALUE = 1 << 10 | 1 << 8 | 8
MTRR_VAR_COUNT = 8
MISC_ENABLE_FAST_STRING, MISC_ENABLE_MWAIT = 1, 1 << 18
UCODE_REV_INTEL, UCODE_REV_OTHER = 0x100000000, 0x01000065  # QEMU's defaults
_MTRR_TYPES = frozenset({0, 1, 4, 5, 6})  # UC WC WT WP WB
_PAT_TYPES = frozenset({0, 1, 4, 5, 6, 7})  # ... and UC-
_FIXED_MTRRS = (MSR_MTRRfix64K_00000, MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000,
                *range(MSR_MTRRfix4K_C0000, MSR_MTRRfix4K_C0000 + 8))
#: MSRs INIT leaves alone: MTRRs, PAT, machine-check state, misc enables (SDM vol. 3, 9.1.2).
_KEPT_ON_INIT = frozenset({MSR_MTRRdefType, MSR_PAT, MSR_IA32_MISC_ENABLE, MSR_MCG_STATUS,
                           MSR_MCG_CTL, MSR_IA32_FEATURE_CONTROL, MSR_IA32_TSC_ADJUST,
                           *_FIXED_MTRRS,
                           *range(MSR_MTRRphysBase0, MSR_MTRRphysBase0 + 2 * MTRR_VAR_COUNT),
                           *range(MSR_MC0_CTL, MSR_MC0_CTL + 4 * MCE_BANKS)})


@dataclass(frozen=True)
class CPUModelDef:
    """One ``-cpu`` model as QEMU 7.2 defines it (the v1 version its unversioned name means on
    pc-i440fx-7.2). ``features`` is a space-separated list of flag names; every model also gets
    ``hypervisor``, as in QEMU."""

    name: str
    vendor: str
    family: int
    model: int
    stepping: int
    model_id: str
    level: int
    xlevel: int
    features: str
    desc: str = ""  # ``-cpu help`` text; the model id when empty
    caches: CacheModel = LEGACY_CACHES
    kvm_only: bool = False


_QEMU64_FEATURES = (
    "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse"
    " sse2 pni cx16 syscall nx lm lahf-lm svm")
_NEHALEM_FEATURES = (
    "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse"
    " sse2 pni ssse3 cx16 sse4.1 sse4.2 popcnt syscall nx lm lahf-lm")
_WESTMERE_FEATURES = _NEHALEM_FEATURES + " pclmulqdq aes arat"
_SANDYBRIDGE_FEATURES = (
    _WESTMERE_FEATURES + " x2apic tsc-deadline xsave avx rdtscp xsaveopt")
_IVYBRIDGE_FEATURES = _SANDYBRIDGE_FEATURES + " f16c rdrand fsgsbase smep erms"
_HASWELL_FEATURES = (
    _IVYBRIDGE_FEATURES + " fma pcid movbe abm bmi1 hle avx2 bmi2 invpcid rtm")
_SKYLAKE_CLIENT_FEATURES = (
    _HASWELL_FEATURES + " xsavec xgetbv1 3dnowprefetch rdseed adx smap")
_EPYC_FEATURES = (
    "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse"
    " sse2 pni pclmulqdq monitor ssse3 fma cx16 sse4.1 sse4.2 movbe popcnt aes xsave avx f16c"
    " rdrand xsaveopt xsavec xgetbv1 lahf-lm svm cr8legacy abm sse4a misalignsse"
    " 3dnowprefetch osvw topoext syscall nx mmxext fxsr-opt pdpe1gb rdtscp lm npt nrip-save"
    " arat fsgsbase bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha-ni")
#: What vfw can describe and an accelerator may grant: qemu64 plus the SSE3..SSE4.2 family,
#: common scalar extensions, 1G pages, RDTSCP, SMEP/SMAP/UMIP and XSAVE with x87/SSE state
#: only. Left out on purpose: AVX state, nested virtualisation, x2APIC, TSC deadline, PKU.
_MAX_FEATURES = (
    _QEMU64_FEATURES.replace(" svm", "")
    + " vme pclmulqdq ssse3 sse4.1 sse4.2 movbe popcnt aes xsave rdrand xsaveopt abm"
      " pdpe1gb rdtscp fsgsbase bmi1 bmi2 erms smep smap adx rdseed clflushopt umip rdpid arat")

MODELS: tuple[CPUModelDef, ...] = (
    CPUModelDef("qemu64", VENDOR_AMD, 15, 107, 1, "QEMU Virtual CPU version 2.5+",
                0xD, 0x8000000A, _QEMU64_FEATURES),
    CPUModelDef("Nehalem", VENDOR_INTEL, 6, 26, 3, "Intel Core i7 9xx (Nehalem Class Core i7)",
                0xB, 0x80000008, _NEHALEM_FEATURES),
    CPUModelDef("Westmere", VENDOR_INTEL, 6, 44, 1, "Westmere E56xx/L56xx/X56xx (Nehalem-C)",
                0xB, 0x80000008, _WESTMERE_FEATURES),
    CPUModelDef("SandyBridge", VENDOR_INTEL, 6, 42, 1, "Intel Xeon E312xx (Sandy Bridge)",
                0xD, 0x80000008, _SANDYBRIDGE_FEATURES),
    CPUModelDef("IvyBridge", VENDOR_INTEL, 6, 58, 9, "Intel Xeon E3-12xx v2 (Ivy Bridge)",
                0xD, 0x80000008, _IVYBRIDGE_FEATURES),
    CPUModelDef("Haswell", VENDOR_INTEL, 6, 60, 4, "Intel Core Processor (Haswell)",
                0xD, 0x80000008, _HASWELL_FEATURES),
    CPUModelDef("Skylake-Client", VENDOR_INTEL, 6, 94, 3, "Intel Core Processor (Skylake)",
                0xD, 0x80000008, _SKYLAKE_CLIENT_FEATURES),
    CPUModelDef("EPYC", VENDOR_AMD, 23, 1, 2, "AMD EPYC Processor",
                0xD, 0x8000001E, _EPYC_FEATURES, caches=cpuid_mod.EPYC_CACHES),
    CPUModelDef("host", VENDOR_AMD, 15, 107, 1, "QEMU Virtual CPU version 2.5+", 0xD,
                0x80000008, _MAX_FEATURES, kvm_only=True,
                desc="processor with all supported host features"),
    CPUModelDef("max", VENDOR_AMD, 15, 107, 1, "QEMU TCG CPU version 2.5+", 0xD, 0x80000008,
                _MAX_FEATURES,
                desc="Enables all features supported by the accelerator in the current host"),
)


def _canonical(value: int, la57: bool) -> bool:
    bits = 57 if la57 else 48
    top = value >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _get(attr: str) -> Callable[[Any], Any]:
    return lambda obj: getattr(obj, attr)


def _set_vendor(cpu: X86CPU, value: str) -> None:
    if len(value) != 12 or not value.isascii():
        raise PropertyError(f"Property '{cpu.type_name}.vendor' doesn't take value '{value}'")
    cpu._vendor = value


def _set_model_id(cpu: X86CPU, value: str) -> None:
    cpu._model_id = value.encode("utf-8")[:48].decode("utf-8", "ignore")  # QEMU truncates


def _ranged(attr: str, name: str, maximum: int) -> Callable[[Any, int], None]:
    def setter(cpu: X86CPU, value: int) -> None:
        if value > maximum:
            raise PropertyError(f"Property {cpu.type_name}.{name} doesn't take value {value}"
                                f" (minimum: 0, maximum: {maximum})")
        setattr(cpu, attr, value)
    return setter


def _set_level(cpu: X86CPU, value: int) -> None:
    cpu._level = value


def _set_xlevel(cpu: X86CPU, value: int) -> None:
    cpu._xlevel = value


def _set_apic_id(cpu: X86CPU, value: int) -> None:
    cpu._apic_id = value


def _get_level(cpu: X86CPU) -> int:
    if cpu._level is not None:
        return cpu._level
    return max(cpu.DEFINITION.level, min_levels(cpu.features)[0])


def _get_xlevel(cpu: X86CPU) -> int:
    if cpu._xlevel is not None:
        return cpu._xlevel
    return max(cpu.DEFINITION.xlevel, min_levels(cpu.features)[1])


def _get_apic_id(cpu: X86CPU) -> int:
    if cpu._apic_id is not None:
        return cpu._apic_id
    return apic_id_for_index(cpu.cpu_index, cpu.topology)


@register_type
class X86CPU(CPU):
    """An x86-64 vCPU: architectural state, CPUID per its model, and its MSRs.

    Attributes besides the properties: ``env`` (X86CPUState), ``features`` (feature words,
    ``{FeatureWord(leaf, subleaf, reg): bits}``), ``topology`` ((sockets, cores, threads) of
    the machine, set by the board; it shapes leaves 1, 4, 0xB and the APIC id),
    ``interrupt_controller`` (set by the board: ``has_interrupt()``/``acknowledge()``),
    ``kick_handlers`` (called by ``kick()``), ``apic_base_listeners`` (called with the new
    value after a guest writes IA32_APIC_BASE) and ``msr_hooks`` (MSRs other devices own, such
    as the LAPIC's TSC deadline: ``register_msr``).
    """

    TYPE = "x86_64-cpu"
    ABSTRACT = True
    #: The model table row this type was made from.
    DEFINITION: ClassVar[CPUModelDef] = MODELS[0]
    MODEL_DESC: ClassVar[str] = ""
    #: Only usable with KVM (``host``): its CPUID comes from the kernel.
    KVM_ONLY: ClassVar[bool] = False

    apic_id = prop(UINT32, None, "initial APIC id (default: from cpu-index and topology)",
                   getter=_get_apic_id, setter=_set_apic_id)
    vendor = prop(STR, None, "CPUID vendor string (12 characters)",
                  getter=_get("_vendor"), setter=_set_vendor)
    model_id = prop(STR, None, "CPUID brand string (up to 48 bytes)",
                    getter=_get("_model_id"), setter=_set_model_id)
    family = prop(UINT32, None, "CPUID family", getter=_get("_family"),
                  setter=_ranged("_family", "family", 0xFF + 0xF))
    model = prop(UINT32, None, "CPUID model", getter=_get("_model"),
                 setter=_ranged("_model", "model", 0xFF))
    stepping = prop(UINT32, None, "CPUID stepping", getter=_get("_stepping"),
                    setter=_ranged("_stepping", "stepping", 0xF))
    level = prop(UINT32, None, "highest basic CPUID leaf (default: the model's, raised as"
                 " features need)", getter=_get_level, setter=_set_level)
    xlevel = prop(UINT32, None, "highest extended CPUID leaf (default: the model's, raised as"
                  " features need)", getter=_get_xlevel, setter=_set_xlevel)
    phys_bits = prop(UINT32, 40, "physical address bits reported in CPUID 0x80000008")
    check = prop(BOOL, True, "warn about features the accelerator cannot provide")
    enforce = prop(BOOL, False, "refuse to start if the accelerator cannot provide a feature")

    def instance_init(self) -> None:
        d = type(self).DEFINITION
        self.env = X86CPUState()
        self.features: dict[FeatureWord, int] = features_from_names(
            tuple(d.features.split()) + ("hypervisor",))
        #: Bits an accelerator removed (QEMU's filtered-features).
        self.filtered_features: dict[FeatureWord, int] = {}
        self.topology: tuple[int, int, int] = (1, 1, 1)
        self.cache_model: CacheModel = d.caches
        self._vendor, self._model_id = d.vendor, d.model_id
        self._family, self._model, self._stepping = d.family, d.model, d.stepping
        self._level: int | None = None
        self._xlevel: int | None = None
        self._apic_id: int | None = None
        self._explicit: dict[str, bool] = {}
        self.interrupt_controller: Any = None
        self.kick_handlers: list[Callable[[], None]] = []
        self.apic_base_listeners: list[Callable[[int], None]] = []
        self.msr_hooks: dict[int, tuple[Callable[[], int | None], Callable[[int], bool]]] = {}

    # -- model lookup --------------------------------------------------------------------
    @classmethod
    def check_accel(cls, accel_name: str | None) -> None:
        """Refuse a model the accelerator cannot run (``host`` outside KVM)."""
        if cls.KVM_ONLY and accel_name != "kvm":
            raise MachineError(f"CPU model '{cls.MODEL}' requires KVM")

    @classmethod
    def models_help(cls) -> str:
        """``-cpu help`` in QEMU's shape: the models, then the recognised flag names."""
        models = [c for c in TABLE.get_list("x86_64-cpu") if issubclass(c, X86CPU)]
        last = ("host", "max")
        models.sort(key=lambda c: (c.MODEL in last, last.index(c.MODEL) if c.MODEL in last
                                   else 0, c.MODEL))
        lines = ["Available CPUs:"]
        lines += [f"x86 {c.MODEL:<20}  {c.MODEL_DESC}" for c in models]
        lines += ["", "Recognized CPUID flags:"]
        current = ""
        for name in all_flag_names():
            if current and 2 + len(current) + 1 + len(name) > 75:
                lines.append("  " + current)
                current = name
            else:
                current = f"{current} {name}" if current else name
        if current:
            lines.append("  " + current)
        return "\n".join(lines)

    # -- features ------------------------------------------------------------------------
    def has_feature(self, name: str) -> bool:
        """Whether the flag ``name`` (any accepted spelling) is on. Unknown names raise
        KeyError; osxsave/ospke are run-time bits and read False here."""
        canon = canonical_feature(name)
        if canon is None:
            raise KeyError(f"unknown CPUID flag {name!r}")
        masks = feature_masks(canon)
        return bool(masks) and all(self.features.get(w, 0) & m == m for w, m in masks)

    def set_feature(self, name: str, on: bool, *, explicit: bool = True) -> None:
        """Turn one flag on or off (``explicit``: the user asked, so warn if it is dropped)."""
        canon = canonical_feature(name)
        if canon is None:
            raise PropertyError(f"Property '{self.type_name}.{name}' not found")
        if explicit:
            self._explicit[canon] = on
        for word, mask in feature_masks(canon):
            value = self.features.get(word, 0)
            self.features[word] = value | mask if on else value & ~mask

    def feature_names(self) -> list[str]:
        return cpuid_mod.feature_names(self.features)

    def apply_feature_defaults(self, defaults: Mapping[str, bool]) -> None:
        """An accelerator's defaults (QEMU's kvm_default_props), applied before the user's
        options so that those win."""
        for name, on in defaults.items():
            self.set_feature(name, on, explicit=False)

    def set_features(self, options: list[tuple[str, str]]) -> None:
        """Apply ``-cpu`` options as ``vfw.options.parse_cpu_model`` returns them: features
        (``feat=on|off``, ``+feat``/``-feat`` already ordered so that ``-`` wins) and properties
        (``level=13``, ``vendor=...``, ``model-id=...``, ``family=...``)."""
        if self.realized:
            raise PropertyError(f"CPU '{self.type_name}' is realized: features are fixed")
        for key, value in options:
            name = key.replace("_", "-")
            canon = canonical_feature(name)
            if canon is not None:
                try:
                    on = parse_bool(name, value)
                except OptionError as exc:
                    raise PropertyError(exc.message) from None
                if canon not in cpuid_mod.IGNORED_FEATURES:
                    self.set_feature(canon, on)
                continue
            if name == "type" or self.find_property(name) is None:
                raise PropertyError(f"Property '{self.type_name}.{name}' not found")
            self.set_property(name, value)
        self.expand_features()

    def expand_features(self) -> list[str]:
        """Clear words whose parent feature is off (no XSAVE: no XSAVEOPT...); returns the
        names dropped that the user had asked for."""
        dropped: list[str] = []
        for word, parent in WORD_DEPENDS_ON.items():
            if self.features.get(word) and not self.has_feature(parent):
                for name in cpuid_mod.feature_names({word: self.features[word]}):
                    if self._explicit.get(name):
                        dropped.append(name)
                        log.warning("CPU feature %s needs %s, which is off", name, parent)
                self.features[word] = 0
        return dropped

    def filter_features(self, supported: Callable[[FeatureWord], int],
                        accel_label: str = "TCG") -> list[str]:
        """Remove the bits ``supported(word)`` does not grant (QEMU's
        x86_cpu_filter_features); returns QEMU's warnings, one per bit. With ``enforce``
        on, any loss is a MachineError instead."""
        warnings: list[str] = []
        for word, value in list(self.features.items()):
            lost = value & ~supported(word)
            if not lost:
                continue
            self.features[word] = value & ~lost
            self.filtered_features[word] = self.filtered_features.get(word, 0) | lost
            for bit in range(32):
                if lost >> bit & 1:
                    warnings.append(f"{accel_label} doesn't support requested feature: "
                                    f"{describe_bit(word, bit)}")
        if warnings and self.enforce:
            raise MachineError("\n".join(warnings))
        return warnings

    # -- CPUID ---------------------------------------------------------------------------
    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """EAX, EBX, ECX, EDX of CPUID(leaf, subleaf) for this CPU now (CR4 and XCR0 shape a
        few bits). Hypervisor leaves 0x40000000.. read 0: accelerators answer those."""
        return cpuid_leaf(self, leaf, subleaf)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def is_bsp(self) -> bool:
        return int(self.cpu_index) == 0

    def realize(self) -> None:
        if not 32 <= self.phys_bits <= 52:
            raise PropertyError(f"phys-bits should be between 32 and 52 (but is {self.phys_bits})")
        self.expand_features()
        self.reset()

    def reset(self, *, init: bool = False) -> None:
        """Power-on state (``init=True``: the INIT signal, which keeps the TSC, the APIC base
        and the MTRR/PAT/machine-check MSRs). The BSP starts at F000:FFF0, APs wait for SIPI;
        EDX holds the CPUID signature."""
        from vfw import log

        if log.enabled("cpu_reset"):  # QEMU's -d cpu_reset: the state before the reset
            from vfw.monitor.hmp import format_registers

            log.write(f"CPU Reset (CPU {self.cpu_index})\n{format_registers(self.env)}\n")
        env = self.env
        kept: dict[int, int] = {}
        apic_base, tsc = env.apic_base, env.tsc
        if init:
            kept = {i: v for i, v in env.msrs.items() if i in _KEPT_ON_INIT}
        env.reset(bsp=self.is_bsp)
        env.xcr0 = 1
        if init:
            env.msrs.update(kept)
            env.apic_base, env.tsc = apic_base, tsc
        else:
            env.apic_base = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | (
                MSR_IA32_APICBASE_BSP if self.is_bsp else 0)
            env.tsc = 0
            env.msrs[MSR_IA32_MISC_ENABLE] = MISC_ENABLE_FAST_STRING | (
                MISC_ENABLE_MWAIT if self.has_feature("monitor") else 0)
            if self._has_mca():
                env.msrs[MSR_MCG_CTL] = _U64
                for bank in range(MCE_BANKS):
                    env.msrs[MSR_MC0_CTL + 4 * bank] = _U64
        env.regs[R_EDX] = self.cpuid(1)[0]

    # -- interrupts ------------------------------------------------------------------------
    def kick(self) -> None:
        """An interrupt source changed: flag it and wake whoever runs this vCPU."""
        self.env.interrupt_request = True
        for handler in list(self.kick_handlers):
            handler()

    # -- MSRs ------------------------------------------------------------------------------
    def register_msr(self, index: int, read: Callable[[], int | None],
                     write: Callable[[int], bool]) -> None:
        """Let a device own an MSR on this CPU (the LAPIC: TSC deadline, x2APIC registers)."""
        self.msr_hooks[index] = (read, write)

    def advertised_msrs(self) -> list[int]:
        """Every MSR index this CPU answers (KVM syncs these through ``env``)."""
        own = [i for i, m in _MSRS.items() if m.available(self)]
        return sorted(set(own) | set(self.msr_hooks))

    def rdmsr(self, index: int) -> int | None:
        """The MSR's value, or None if this model has no such MSR (the caller raises #GP)."""
        hook = self.msr_hooks.get(index)
        if hook is not None:
            return hook[0]()
        msr = _MSRS.get(index)
        if msr is None or not msr.available(self):
            return None
        return msr.read(self, index)

    def wrmsr(self, index: int, value: int) -> bool:
        """Write an MSR; False (the caller raises #GP) for an unknown MSR, a read-only one or
        a value with reserved bits set."""
        if not 0 <= value <= _U64:
            return False
        hook = self.msr_hooks.get(index)
        if hook is not None:
            return hook[1](value)
        msr = _MSRS.get(index)
        if msr is None or not msr.available(self):
            return False
        return msr.write(self, index, value)

    def _has_mca(self) -> bool:
        return self.has_feature("mce") and self.has_feature("mca")

    def _phys_mask(self) -> int:
        return (1 << int(self.phys_bits)) - 1

    def _canonical(self, value: int) -> bool:
        return _canonical(value, self.has_feature("la57"))


# -- the MSR table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _MSR:
    available: Callable[[X86CPU], bool]
    read: Callable[[X86CPU, int], int | None]
    write: Callable[[X86CPU, int, int], bool]


_MSRS: dict[int, _MSR] = {}


def _msr(indexes: range | tuple[int, ...] | int, available: Callable[[X86CPU], bool],
         read: Callable[[X86CPU, int], int | None],
         write: Callable[[X86CPU, int, int], bool]) -> None:
    for index in (indexes,) if isinstance(indexes, int) else indexes:
        _MSRS[index] = _MSR(available, read, write)


def _feat(*names: str) -> Callable[[X86CPU], bool]:
    """Available when any of the named features is on."""
    return lambda cpu: any(cpu.has_feature(n) for n in names)


def _always(cpu: X86CPU) -> bool:
    return True


def _stored(cpu: X86CPU, index: int) -> int:
    return cpu.env.msrs.get(index, 0)


def _store_if(check: Callable[[X86CPU, int], bool]) -> Callable[[X86CPU, int, int], bool]:
    def write(cpu: X86CPU, index: int, value: int) -> bool:
        if not check(cpu, value):
            return False
        cpu.env.msrs[index] = value
        return True
    return write


def _read_only(cpu: X86CPU, index: int, value: int) -> bool:
    return False


def _any(cpu: X86CPU, value: int) -> bool:
    return True


# TSC: ``env.tsc`` is the value at the last reset or write. The accelerator keeps it running:
# TCG adds the virtual time elapsed since then when the guest reads it (RDTSC/RDMSR), KVM keeps
# the live counter in the kernel and copies it back into ``env.tsc``.
def _read_tsc(cpu: X86CPU, index: int) -> int:
    return cpu.env.tsc


def _write_tsc(cpu: X86CPU, index: int, value: int) -> bool:
    delta = value - cpu.env.tsc
    cpu.env.tsc = value
    if cpu.has_feature("tsc-adjust"):  # SDM 17.17.3: TSC writes move IA32_TSC_ADJUST too
        adjust = cpu.env.msrs.get(MSR_IA32_TSC_ADJUST, 0)
        cpu.env.msrs[MSR_IA32_TSC_ADJUST] = (adjust + delta) & _U64
    return True


def _write_tsc_adjust(cpu: X86CPU, index: int, value: int) -> bool:
    old = cpu.env.msrs.get(MSR_IA32_TSC_ADJUST, 0)
    cpu.env.tsc = (cpu.env.tsc + value - old) & _U64
    cpu.env.msrs[MSR_IA32_TSC_ADJUST] = value
    return True


_msr(MSR_IA32_TSC, _feat("tsc"), _read_tsc, _write_tsc)
_msr(MSR_IA32_TSC_ADJUST, _feat("tsc-adjust"), _stored, _write_tsc_adjust)

X2APIC_ENABLE = 1 << 10


def _read_apic_base(cpu: X86CPU, index: int) -> int:
    return cpu.env.apic_base


def _write_apic_base(cpu: X86CPU, index: int, value: int) -> bool:
    reserved = 0xFF | 1 << 9 | ~cpu._phys_mask() & _U64
    if not cpu.has_feature("x2apic"):
        reserved |= X2APIC_ENABLE
    if value & reserved:
        return False
    old = cpu.env.apic_base
    enabled, x2 = bool(value & MSR_IA32_APICBASE_ENABLE), bool(value & X2APIC_ENABLE)
    if x2 and not enabled:
        return False  # x2APIC without xAPIC enable is an invalid state
    if old & X2APIC_ENABLE and old & MSR_IA32_APICBASE_ENABLE and enabled and not x2:
        return False  # x2APIC -> xAPIC directly is not allowed (SDM 10.12.5)
    cpu.env.apic_base = value
    for listener in list(cpu.apic_base_listeners):
        listener(value)
    return True


_msr(MSR_IA32_APICBASE, _feat("apic"), _read_apic_base, _write_apic_base)


def _write_feature_control(cpu: X86CPU, index: int, value: int) -> bool:
    old = cpu.env.msrs.get(index, 0)
    if old & 1:
        return False  # locked until reset
    allowed = 1
    if cpu.has_feature("vmx"):
        allowed |= 1 << 2
        if cpu.has_feature("smx"):
            allowed |= 1 << 1
    if cpu.has_feature("smx"):
        allowed |= 0x7F << 8 | 1 << 15
    if value & ~allowed:
        return False
    cpu.env.msrs[index] = value
    return True


_msr(MSR_IA32_FEATURE_CONTROL, _feat("vmx", "smx"), _stored, _write_feature_control)


def _spec_ctrl_allowed(cpu: X86CPU) -> int:
    bits = 0
    if cpu.has_feature("spec-ctrl") or cpu.has_feature("ibrs"):
        bits |= 1
    if cpu.has_feature("stibp") or cpu.has_feature("amd-stibp"):
        bits |= 2
    if cpu.has_feature("ssbd") or cpu.has_feature("amd-ssbd"):
        bits |= 4
    return bits


_msr(MSR_IA32_SPEC_CTRL, _feat("spec-ctrl", "ibrs", "amd-stibp", "amd-ssbd"), _stored,
     _store_if(lambda cpu, v: not v & ~_spec_ctrl_allowed(cpu)))
_msr(MSR_IA32_PRED_CMD, _feat("spec-ctrl", "ibpb"), lambda cpu, i: None,
     lambda cpu, i, v: v in (0, 1))  # write-only: IBPB is a command
_msr(MSR_IA32_UCODE_REV, _always,
     lambda cpu, i: UCODE_REV_INTEL if cpu.vendor == VENDOR_INTEL else UCODE_REV_OTHER,
     lambda cpu, i, v: True)  # the microcode loader's "clear, CPUID, read" sequence
_msr(MSR_IA32_ARCH_CAPABILITIES, _feat("arch-capabilities"),
     lambda cpu, i: cpu.features.get(FEAT_ARCH_CAPABILITIES, 0), _read_only)

# SYSENTER/SYSCALL.
_msr(MSR_IA32_SYSENTER_CS, _feat("sep"), _stored,
     lambda cpu, i, v: _store_if(_any)(cpu, i, v & 0xFFFF))
_msr((MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP), _feat("sep"), _stored,
     _store_if(lambda cpu, v: cpu._canonical(v) if cpu.has_feature("lm") else v >> 32 == 0))
_msr(MSR_STAR, _feat("syscall", "lm"), _stored, _store_if(_any))
_msr((MSR_LSTAR, MSR_CSTAR, MSR_KERNELGSBASE), _feat("lm"), _stored,
     _store_if(lambda cpu, v: cpu._canonical(v)))
_msr(MSR_FMASK, _feat("lm"), _stored, lambda cpu, i, v: _store_if(_any)(cpu, i, v & 0xFFFFFFFF))


def _seg_base(cpu: X86CPU, index: int) -> int:
    return cpu.env.segs[R_FS if index == MSR_FSBASE else R_GS].base


def _write_seg_base(cpu: X86CPU, index: int, value: int) -> bool:
    if not cpu._canonical(value):
        return False
    cpu.env.segs[R_FS if index == MSR_FSBASE else R_GS].base = value
    return True


_msr((MSR_FSBASE, MSR_GSBASE), _feat("lm"), _seg_base, _write_seg_base)
_msr(MSR_TSC_AUX, _feat("rdtscp", "rdpid"), _stored, _store_if(lambda cpu, v: v >> 32 == 0))

#: AMD's SYSCFG: Linux reads it unchecked at boot on any AMD CPU (memory encryption, TOM2).
#: Like QEMU (no fault) and Xen: reads 0 (no SME, no TOM2, no fixed-range MTRR extensions),
#: writes are dropped.
MSR_K8_SYSCFG = 0xC0010010
_msr(MSR_K8_SYSCFG, lambda cpu: cpu.vendor == VENDOR_AMD, lambda cpu, i: 0,
     lambda cpu, i, v: True)


def _efer_allowed(cpu: X86CPU) -> int:
    bits = 0
    for name, bit in (("syscall", EFER_SCE), ("lm", EFER_LME | EFER_LMA), ("nx", EFER_NXE),
                      ("svm", EFER_SVME), ("fxsr-opt", EFER_FFXSR)):
        if cpu.has_feature(name):
            bits |= bit
    return bits


def _read_efer(cpu: X86CPU, index: int) -> int:
    return cpu.env.efer


def _write_efer(cpu: X86CPU, index: int, value: int) -> bool:
    env = cpu.env
    if value & ~_efer_allowed(cpu):
        return False
    if (value ^ env.efer) & EFER_LME and env.cr[0] & CR0_PG:
        return False  # LME may not change while paging is on
    env.efer = value & ~EFER_LMA | env.efer & EFER_LMA  # LMA is the CPU's to set
    return True


_msr(MSR_EFER, _feat("syscall", "lm", "nx", "svm", "fxsr-opt"), _read_efer, _write_efer)


def _pat_ok(cpu: X86CPU, value: int) -> bool:
    return all(value >> (8 * i) & 0xFF in _PAT_TYPES for i in range(8))


_msr(MSR_PAT, _feat("pat"), lambda cpu, i: cpu.env.msrs.get(i, 0x0007040600070406),
     _store_if(_pat_ok))
_msr(MSR_IA32_MISC_ENABLE, _always, _stored, _store_if(_any))

# MTRRs: values are stored for the guest's benefit; memory types do not change emulation.
_msr(MSR_MTRRcap, _feat("mtrr"), lambda cpu, i: MTRR_CAP_VALUE, _read_only)
_msr(MSR_MTRRdefType, _feat("mtrr"), _stored,
     _store_if(lambda cpu, v: not v & ~0xCFF and v & 0xFF in _MTRR_TYPES))
_msr(_FIXED_MTRRS, _feat("mtrr"), _stored,
     _store_if(lambda cpu, v: all(v >> (8 * i) & 0xFF in _MTRR_TYPES for i in range(8))))


def _write_var_mtrr(cpu: X86CPU, index: int, value: int) -> bool:
    addr_bits = cpu._phys_mask() & ~0xFFF
    if (index - MSR_MTRRphysBase0) % 2 == 0:  # PhysBase: type, address
        ok = not value & ~(addr_bits | 0xFF) and value & 0xFF in _MTRR_TYPES
    else:  # PhysMask: valid bit, mask
        ok = not value & ~(addr_bits | 1 << 11)
    if ok:
        cpu.env.msrs[index] = value
    return ok


_msr(range(MSR_MTRRphysBase0, MSR_MTRRphysBase0 + 2 * MTRR_VAR_COUNT), _feat("mtrr"),
     _stored, _write_var_mtrr)


# Machine check architecture: 10 banks, nothing ever reports an error.
def _mca(cpu: X86CPU) -> bool:
    return cpu._has_mca()


def _write_mc_bank(cpu: X86CPU, index: int, value: int) -> bool:
    reg = (index - MSR_MC0_CTL) % 4
    if reg == 0 and value not in (0, _U64):
        return False  # MCi_CTL: all or nothing
    if reg == 1 and value != 0:
        return False  # MCi_STATUS: software may only clear it
    cpu.env.msrs[index] = value
    return True


_msr(MSR_MCG_CAP, _mca, lambda cpu, i: MCG_CAP_VALUE, _read_only)
_msr(MSR_MCG_STATUS, _mca, _stored, _store_if(_any))
_msr(MSR_MCG_CTL, _mca, _stored, _store_if(lambda cpu, v: v in (0, _U64)))
_msr(range(MSR_MC0_CTL, MSR_MC0_CTL + 4 * MCE_BANKS), _mca, _stored, _write_mc_bank)


# SVM: what a guest hypervisor probes before EFER.SVME.
def _write_vm_cr(cpu: X86CPU, index: int, value: int) -> bool:
    if value & ~0x18:  # only LOCK (3) and SVMDIS (4)
        return False
    if value & 0x10 and cpu.env.efer & EFER_SVME:
        return False
    cpu.env.msrs[index] = value
    return True


_msr(MSR_VM_CR, _feat("svm"), _stored, _write_vm_cr)
_msr(MSR_VM_HSAVE_PA, _feat("svm"), _stored,
     _store_if(lambda cpu, v: not v & 0xFFF and not v & ~cpu._phys_mask()))


# -- the model types ---------------------------------------------------------------------------
def _model_class(d: CPUModelDef) -> type[X86CPU]:
    ns: dict[str, Any] = {
        "TYPE": d.name + CPU_SUFFIX, "MODEL": d.name, "DEFINITION": d,
        "MODEL_DESC": d.desc or d.model_id, "KVM_ONLY": d.kvm_only,
        "__doc__": f"The ``{d.name}`` CPU model.", "__module__": __name__,
    }
    pyname = "X86CPU_" + re.sub(r"\W", "_", d.name)
    return register_type(type(pyname, (X86CPU,), ns))


#: model name -> its type, in table order.
MODEL_CLASSES: dict[str, type[X86CPU]] = {d.name: _model_class(d) for d in MODELS}
Qemu64CPU = MODEL_CLASSES["qemu64"]
MaxCPU = MODEL_CLASSES["max"]
HostCPU = MODEL_CLASSES["host"]


def find_cpu_model(name: str) -> type[X86CPU]:
    """The type of ``-cpu NAME`` (``qemu64`` or its type name ``qemu64-x86_64-cpu``)."""
    type_name = name if name.endswith(CPU_SUFFIX) else name + CPU_SUFFIX
    impl = TABLE.find(type_name) if name and name != "x86_64" else None
    if impl is not None and not impl.abstract:
        cls = TABLE.initialize(impl)
        if issubclass(cls, X86CPU):
            return cls
    raise MachineError(f"unable to find CPU model '{name}'")


def x86_cpu_from_options(model: str, options: list[tuple[str, str]], *,
                         accel: str | None = None,
                         accel_defaults: Mapping[str, bool] | None = None,
                         **props: Any) -> X86CPU:
    """Create an (unrealized) CPU for ``-cpu model,options`` (``vfw.options.parse_cpu_model``
    output), after the accelerator check and defaults; ``props`` set properties first
    (``cpu_index=1``)."""
    cls = find_cpu_model(model)
    cls.check_accel(accel)
    cpu = cls(**props)
    if accel_defaults:
        cpu.apply_feature_defaults(accel_defaults)
    cpu.set_features(options)
    return cpu
