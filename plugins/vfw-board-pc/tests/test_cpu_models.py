"""x86 CPU models: CPUID leaves, -cpu feature syntax, MSRs and reset state.

Expected values are computed here from QEMU 7.2's model definitions (bit numbers from the
Intel SDM / AMD APM); the literal words were also observed on qemu-system-x86_64 7.2 (TCG,
``-cpu X`` plus the features TCG filters, read with CPUID from a tiny firmware).
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from vfw.errors import MachineError, PropertyError, VfwError
from vfw.options import parse_cpu_model
from vfw.qom import TABLE
from vfw_board_pc import cpu_state as cs
from vfw_board_pc.cpu import (
    MODELS,
    X86CPU,
    find_cpu_model,
    x86_cpu_from_options,
)
from vfw_board_pc.cpuid import FEAT_XSAVE, FeatureWord


def bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


def make(spec: str = "qemu64", **props) -> X86CPU:
    model, options = parse_cpu_model(spec)
    cpu = x86_cpu_from_options(model, options, **props)
    cpu.realize()
    return cpu


def reg_words(text: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(text[i:i + 4], "little") for i in range(0, len(text), 4))


# -- CPUID ---------------------------------------------------------------------------------
def test_qemu64_vendor_and_max_leaves():
    cpu = make("qemu64")
    auth, enti, camd = reg_words(b"AuthenticAMD")
    assert cpu.cpuid(0) == (0xD, auth, camd, enti)  # EBX, EDX, ECX spell the vendor
    assert cpu.cpuid(0x80000000) == (0x8000000A, auth, camd, enti)
    intel = make("Nehalem")
    genu, inei, ntel = reg_words(b"GenuineIntel")
    assert intel.cpuid(0) == (0xB, genu, ntel, inei)


def test_qemu64_signature_and_extended_family():
    cpu = make("qemu64")
    family, model, stepping = 15, 107, 1
    expected = stepping | (model & 0xF) << 4 | family << 8 | (model >> 4) << 16
    assert cpu.cpuid(1)[0] == expected == 0x00060FB1
    assert cpu.cpuid(0x80000001)[0] == expected
    epyc = make("EPYC")  # family 23 = 0xF + extended family 8
    assert epyc.cpuid(1)[0] == 2 | 1 << 4 | 0xF << 8 | (23 - 15) << 20 == 0x00800F12
    assert make("Skylake-Client").cpuid(1)[0] == 3 | (94 & 0xF) << 4 | 6 << 8 | 5 << 16


def test_qemu64_feature_bits():
    cpu = make("qemu64")
    # fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr
    # sse sse2
    edx = bits(0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26)
    ecx = bits(0, 13, 31)  # pni cx16 hypervisor
    eax, ebx, ecx1, edx1 = cpu.cpuid(1)
    assert (ecx1, edx1) == (ecx, edx) == (0x80002001, 0x078BFBFD)
    assert ebx == 8 << 8  # APIC id 0, CLFLUSH 64 bytes, one logical CPU
    amd_aliases = edx & 0x0183F3FF
    ext = cpu.cpuid(0x80000001)
    assert ext[2] == bits(0, 2)  # lahf-lm svm
    assert ext[3] == amd_aliases | bits(11, 20, 29) == 0x2193FBFD  # + syscall nx lm
    assert cpu.cpuid(0x80000008)[0] == 40 | 48 << 8
    assert cpu.cpuid(0x8000000A) == (1, 0x10, 0, 0)
    assert cpu.cpuid(7) == (0, 0, 0, 0)
    assert cpu.cpuid(2) == (0, 0, 0, 0) and cpu.cpuid(4) == (0, 0, 0, 0)  # AMD: no leaf 2/4


# (model, leaf, subleaf, register index, value) as QEMU 7.2 defines the model.
QEMU_WORDS = [
    ("Nehalem", 1, 0, 2, 0x80982201), ("Nehalem", 0x80000001, 0, 3, 0x20100800),
    ("Westmere", 1, 0, 2, 0x82982203), ("Westmere", 6, 0, 0, 4),
    ("SandyBridge", 1, 0, 2, 0x97B82203), ("SandyBridge", 0x80000001, 0, 3, 0x28100800),
    ("IvyBridge", 1, 0, 2, 0xF7B82203), ("IvyBridge", 7, 0, 1, 0x281),
    ("Haswell", 1, 0, 2, 0xF7FA3203), ("Haswell", 7, 0, 1, 0xFB9),
    ("Haswell", 0x80000001, 0, 2, 0x21),
    ("Skylake-Client", 7, 0, 1, 0x1C0FB9), ("Skylake-Client", 0xD, 1, 0, 7),
    ("Skylake-Client", 0x80000001, 0, 2, 0x121),
    ("EPYC", 1, 0, 2, 0xF6D8320B), ("EPYC", 7, 0, 1, 0x209C01A9),
    ("EPYC", 0x80000001, 0, 2, 0x004003F5), ("EPYC", 0x80000001, 0, 3, 0x2FD3FBFD),
    ("EPYC", 0x8000000A, 0, 3, 9),
]


@pytest.mark.parametrize("model,leaf,subleaf,reg,value", QEMU_WORDS)
def test_named_models_match_qemu(model, leaf, subleaf, reg, value):
    assert make(model).cpuid(leaf, subleaf)[reg] == value


def test_intel_cache_leaves():
    cpu = make("Skylake-Client")
    assert cpu.cpuid(2) == (1, 0, 0x4D, 0x002C307D)
    assert cpu.cpuid(4, 0) == (0x121, 0x01C0003F, 0x3F, 1)  # L1D 32K 8-way
    assert cpu.cpuid(4, 3) == (0x163, 0x03C0003F, 0x3FFF, 6)  # L3 16M 16-way
    assert cpu.cpuid(4, 4) == (0, 0, 0, 0)
    smp = make("Skylake-Client")
    smp.topology = (2, 2, 2)
    assert smp.cpuid(4, 0)[0] == 0x04000121  # 2 cores per package
    assert smp.cpuid(4, 2)[0] == 0x04004143  # L2 shared by the 2 threads of a core
    assert smp.cpuid(4, 3)[0] == 0x0400C163  # L3 shared by the package's 4 threads
    assert smp.cpuid(1)[1] == 4 << 16 | 8 << 8
    assert smp.cpuid(1)[3] & 1 << 28  # HTT
    assert smp.cpuid(0xB, 0) == (1, 2, 0x100, 0)
    assert smp.cpuid(0xB, 1) == (2, 4, 0x201, 0)
    assert smp.cpuid(0xB, 2) == (0, 0, 2, 0)


@pytest.mark.parametrize("topology,count", [((1, 2, 1), 2), ((1, 2, 2), 4), ((2, 1, 1), 1)])
def test_multi_core_packages_on_amd(topology, count):
    cpu = make("qemu64")
    cpu.topology = topology
    eax, ebx, ecx, edx = cpu.cpuid(1)
    multi = count > 1
    assert ebx == (count << 16 if multi else 0) | 8 << 8
    assert bool(edx & 1 << 28) == multi  # HTT
    assert bool(cpu.cpuid(0x80000001)[2] & 1 << 1) == multi  # CmpLegacy, AMD only
    pkg_bits = {1: 0, 2: 1, 4: 2}[count]
    assert cpu.cpuid(0x80000008)[2] == ((pkg_bits << 12 | count - 1) if multi else 0)


def test_apic_ids_follow_topology_and_property():
    ids = []
    for i in range(12):
        cpu = make("qemu64", cpu_index=i)
        cpu.topology = (2, 3, 2)
        ids.append(cpu.apic_id)
    assert ids == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    cpu = make("qemu64", cpu_index=1)
    cpu.set_property("apic-id", 7)
    assert cpu.apic_id == 7 == cpu.get_property("apic-id")
    assert cpu.cpuid(1)[1] >> 24 == 7
    assert cpu.cpuid(0xB, 0)[3] == 7


def test_brand_string_and_model_id():
    cpu = make("qemu64")
    raw = b"".join(w.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                   for w in cpu.cpuid(leaf))
    assert raw == b"QEMU Virtual CPU version 2.5+".ljust(48, b"\0")
    custom = make("qemu64,model-id=My Own CPU,vendor=GenuineIntel")
    raw = b"".join(w.to_bytes(4, "little") for w in custom.cpuid(0x80000002))
    assert raw == b"My Own CPU\0\0\0\0\0\0"
    assert custom.cpuid(0)[1] == reg_words(b"Genu")[0]


def test_leaves_above_the_max_return_the_highest_basic_leaf():
    cpu = make("Skylake-Client")
    top = cpu.cpuid(0xD, 0)
    assert top[0] == 7  # x87 | SSE | AVX
    assert cpu.cpuid(0x14, 0) == top
    assert cpu.cpuid(0x80000009, 0) == top  # above xlevel 0x80000008
    assert cpu.cpuid(0x80000009, 2) == cpu.cpuid(0xD, 2) == (256, 576, 0, 0)
    assert cpu.cpuid(0x40000000) == (0, 0, 0, 0)  # hypervisor leaves: the accelerator's
    lowered = make("Skylake-Client,level=7")
    assert lowered.cpuid(0xD) == lowered.cpuid(7) != (0, 0, 0, 0)


def test_levels_rise_with_features_unless_set():
    assert make("Nehalem").level == 0xB
    assert make("Nehalem,+xsave").level == 0xD
    assert make("Nehalem,+xsave,level=5").level == 5
    assert make("Nehalem,+svm").xlevel == 0x8000000A


def test_dynamic_bits_follow_cr4_xcr0_and_apic_base():
    cpu = make("Skylake-Client")
    assert not cpu.cpuid(1)[2] & 1 << 27
    cpu.env.cr[4] |= cs.CR4_OSXSAVE
    assert cpu.cpuid(1)[2] & 1 << 27
    assert cpu.cpuid(0xD, 0)[1] == 576
    cpu.env.xcr0 = 7
    assert cpu.cpuid(0xD, 0)[1] == 576 + 256
    assert cpu.cpuid(1)[3] & 1 << 9
    cpu.env.apic_base &= ~cs.MSR_IA32_APICBASE_ENABLE
    assert not cpu.cpuid(1)[3] & 1 << 9


# -- -cpu syntax ---------------------------------------------------------------------------
def test_plus_minus_precedence():
    assert not make("qemu64,+sse4.1,-sse4.1").has_feature("sse4.1")
    assert not make("qemu64,-sse4.1,+sse4.1").has_feature("sse4.1")  # '-' wins
    assert not make("qemu64,sse4_1=on,-sse4_1").has_feature("sse4.1")
    assert make("qemu64,sse4-2").has_feature("sse4.2")
    assert make("qemu64,+lahf_lm,+ds_cpl").has_feature("ds-cpl")
    cpu = make("qemu64,pni=off,sse3=on")  # later key=value wins; sse3 is pni
    assert cpu.has_feature("pni")
    assert not make("qemu64,-sse3").cpuid(1)[2] & 1
    assert make("qemu64,+ssse3").cpuid(1)[2] & 1 << 9


def test_unknown_feature_and_model():
    for spec in ("qemu64,+foo", "qemu64,-foo", "qemu64,foo=on", "qemu64,foo"):
        with pytest.raises(PropertyError, match=r"^Property 'qemu64-x86_64-cpu\.foo' not found$"):
            make(spec)
    with pytest.raises(MachineError, match=r"^unable to find CPU model 'foo'$"):
        find_cpu_model("foo")
    with pytest.raises(MachineError, match="unable to find CPU model 'x86_64'"):
        find_cpu_model("x86_64")  # the abstract type is not a model
    assert find_cpu_model("Haswell") is find_cpu_model("Haswell-x86_64-cpu")
    with pytest.raises(PropertyError, match="expects 'on' or 'off'"):
        make("qemu64,sse=maybe")
    with pytest.raises(PropertyError, match="vendor' doesn't take value 'abc'"):
        make("qemu64,vendor=abc")
    with pytest.raises(PropertyError, match="maximum: 270"):
        make("qemu64,family=300")


def test_host_requires_kvm():
    with pytest.raises(MachineError, match="^CPU model 'host' requires KVM$"):
        x86_cpu_from_options("host", [], accel="tcg")
    assert x86_cpu_from_options("host", [], accel="kvm").MODEL == "host"
    find_cpu_model("qemu64").check_accel("tcg")


def test_openstack_cpu_line_is_accepted():
    spec = ("SandyBridge,+erms,+smep,+fsgsbase,+pdpe1gb,+rdrand,+f16c,+osxsave,+dca,+pcid,"
            "+pdcm,+xtpr,+tm2,+est,+smx,+vmx,+ds_cpl,+monitor,+dtes64,+pbe,+tm,+ht,+ss,+acpi,"
            "+ds,+vme")
    cpu = make(spec)
    for name in ("erms", "smep", "fsgsbase", "pdpe1gb", "rdrand", "f16c", "dca", "pcid",
                 "pdcm", "xtpr", "tm2", "est", "smx", "vmx", "ds-cpl", "monitor", "dtes64",
                 "pbe", "tm", "ht", "ss", "acpi", "ds", "vme", "avx"):
        assert cpu.has_feature(name), name
    assert cpu.cpuid(7)[1] & bits(0, 7, 9) == bits(0, 7, 9)
    assert not cpu.cpuid(1)[2] & 1 << 27  # OSXSAVE mirrors CR4, whatever -cpu says
    assert not cpu.has_feature("osxsave")


def test_dependent_words_are_cleared():
    cpu = make("Skylake-Client,-xsave")
    assert cpu.features.get(FEAT_XSAVE, 0) == 0
    assert not cpu.has_feature("xsaveopt")
    assert cpu.cpuid(0xD, 1) == (0, 0, 0, 0)
    assert make("Skylake-Client,-avx").cpuid(0xD, 0)[0] == 3


def test_filter_features_warns_and_enforces():
    cpu = make("SandyBridge")
    x2apic = FeatureWord(1, 0, "ecx")
    warnings = cpu.filter_features(lambda w: ~(1 << 21) & 0xFFFFFFFF if w == x2apic
                                   else 0xFFFFFFFF)
    assert warnings == ["TCG doesn't support requested feature: CPUID.01H:ECX.x2apic [bit 21]"]
    assert not cpu.has_feature("x2apic")
    strict = x86_cpu_from_options("SandyBridge", [("enforce", "on")])
    with pytest.raises(MachineError, match="x2apic"):
        strict.filter_features(lambda w: 0)


# -- MSRs ----------------------------------------------------------------------------------
def test_msrs_follow_the_model():
    cpu = make("qemu64")
    assert cpu.wrmsr(cs.MSR_IA32_SYSENTER_EIP, 0xFFFFFFFF81000000)
    assert cpu.rdmsr(cs.MSR_IA32_SYSENTER_EIP) == 0xFFFFFFFF81000000
    assert not cpu.wrmsr(cs.MSR_IA32_SYSENTER_EIP, 0x0000800000000000)  # not canonical
    assert make("qemu64,-sep").rdmsr(cs.MSR_IA32_SYSENTER_CS) is None
    assert cpu.rdmsr(cs.MSR_TSC_AUX) is None and not cpu.wrmsr(cs.MSR_TSC_AUX, 1)
    aux = make("qemu64,+rdtscp")
    assert aux.wrmsr(cs.MSR_TSC_AUX, 3) and aux.rdmsr(cs.MSR_TSC_AUX) == 3
    assert not aux.wrmsr(cs.MSR_TSC_AUX, 1 << 32)
    assert cpu.wrmsr(cs.MSR_LSTAR, 0xFFFF800000001000) and cpu.rdmsr(cs.MSR_LSTAR)
    assert cpu.wrmsr(cs.MSR_FSBASE, 0x7000) and cpu.env.segs[cs.R_FS].base == 0x7000
    assert make("qemu64,-lm").rdmsr(cs.MSR_LSTAR) is None
    assert cpu.rdmsr(cs.MSR_IA32_ARCH_CAPABILITIES) is None
    assert cpu.rdmsr(cs.MSR_IA32_SPEC_CTRL) is None
    assert cpu.rdmsr(0x12345678) is None and not cpu.wrmsr(0x12345678, 0)
    assert not cpu.wrmsr(cs.MSR_STAR, 1 << 64)


def test_amd_syscfg_reads_zero_and_drops_writes():
    from vfw_board_pc.cpu import MSR_K8_SYSCFG

    amd = make("qemu64")
    assert amd.rdmsr(MSR_K8_SYSCFG) == 0
    assert amd.wrmsr(MSR_K8_SYSCFG, 1 << 23) and amd.rdmsr(MSR_K8_SYSCFG) == 0
    intel = make("Nehalem")
    assert intel.rdmsr(MSR_K8_SYSCFG) is None and not intel.wrmsr(MSR_K8_SYSCFG, 0)


def test_efer_reserved_bits_refused():
    cpu = make("qemu64")
    assert cpu.wrmsr(cs.MSR_EFER, cs.EFER_SCE | cs.EFER_LME | cs.EFER_NXE | cs.EFER_SVME)
    assert cpu.rdmsr(cs.MSR_EFER) == cs.EFER_SCE | cs.EFER_LME | cs.EFER_NXE | cs.EFER_SVME
    assert not cpu.wrmsr(cs.MSR_EFER, 1 << 1)
    assert not cpu.wrmsr(cs.MSR_EFER, cs.EFER_FFXSR)  # qemu64 has no fxsr-opt
    assert cpu.wrmsr(cs.MSR_EFER, cs.EFER_LMA) and cpu.env.efer == 0  # LMA is read-only
    assert not make("Nehalem").wrmsr(cs.MSR_EFER, cs.EFER_SVME)
    assert not make("qemu64,-nx").wrmsr(cs.MSR_EFER, cs.EFER_NXE)
    paging = make("qemu64")
    paging.env.cr[0] |= cs.CR0_PG
    assert not paging.wrmsr(cs.MSR_EFER, cs.EFER_LME)


def test_tsc_apicbase_pat_mtrr_mce():
    cpu = make("qemu64")
    assert cpu.rdmsr(cs.MSR_IA32_TSC) == 0
    cpu.env.tsc = 12345
    assert cpu.rdmsr(cs.MSR_IA32_TSC) == 12345
    assert cpu.wrmsr(cs.MSR_IA32_TSC, 99) and cpu.env.tsc == 99
    assert cpu.rdmsr(cs.MSR_IA32_APICBASE) == 0xFEE00900
    assert not cpu.wrmsr(cs.MSR_IA32_APICBASE, 0xFEE00900 | 1 << 10)  # no x2apic
    assert not cpu.wrmsr(cs.MSR_IA32_APICBASE, 0xFEE00901)  # reserved bit 0
    assert not cpu.wrmsr(cs.MSR_IA32_APICBASE, 1 << 45 | 0x900)  # above phys-bits
    seen = []
    cpu.apic_base_listeners.append(seen.append)
    assert cpu.wrmsr(cs.MSR_IA32_APICBASE, 0xFED00900) and seen == [0xFED00900]
    assert cpu.rdmsr(cs.MSR_PAT) == 0x0007040600070406
    assert not cpu.wrmsr(cs.MSR_PAT, 0x0007040600070402)  # type 2 is reserved
    assert cpu.rdmsr(cs.MSR_MTRRcap) == 0x508 and not cpu.wrmsr(cs.MSR_MTRRcap, 0)
    assert cpu.wrmsr(cs.MSR_MTRRdefType, 0xC06) and cpu.rdmsr(cs.MSR_MTRRdefType) == 0xC06
    assert not cpu.wrmsr(cs.MSR_MTRRdefType, 0x2)
    assert cpu.wrmsr(cs.MSR_MTRRphysBase0 + 1, 0xFF_C000_0800)  # mask, valid
    assert not cpu.wrmsr(cs.MSR_MTRRphysBase0, 0x1_0000_0000_0006)  # above 40 bits
    assert cpu.rdmsr(cs.MSR_MCG_CAP) == 0x0100010A and not cpu.wrmsr(cs.MSR_MCG_CAP, 0)
    assert not cpu.wrmsr(cs.MSR_MC0_CTL + 1, 5) and cpu.wrmsr(cs.MSR_MC0_CTL + 1, 0)
    assert make("qemu64,-mtrr").rdmsr(cs.MSR_MTRRcap) is None
    assert make("qemu64,-mca").rdmsr(cs.MSR_MCG_CAP) is None
    assert sorted(set(cpu.advertised_msrs())) == cpu.advertised_msrs()
    assert cs.MSR_TSC_AUX not in cpu.advertised_msrs()


def test_msr_hooks_take_precedence():
    cpu = make("qemu64")
    cpu.register_msr(0x6E0, lambda: 42, lambda v: v < 100)
    assert cpu.rdmsr(0x6E0) == 42 and cpu.wrmsr(0x6E0, 1) and not cpu.wrmsr(0x6E0, 100)


# -- reset and kick -----------------------------------------------------------------------
def test_reset_state():
    bsp = make("qemu64", cpu_index=0)
    env = bsp.env
    assert bsp.is_bsp
    assert (env.segs[cs.R_CS].selector, env.segs[cs.R_CS].base, env.rip) == (
        0xF000, 0xFFFF0000, 0xFFF0)
    assert env.mp_state == cs.MP_STATE_RUNNABLE and not env.halted
    assert env.regs[cs.R_EDX] == bsp.cpuid(1)[0] == 0x00060FB1
    assert env.apic_base == 0xFEE00000 | cs.MSR_IA32_APICBASE_ENABLE | cs.MSR_IA32_APICBASE_BSP
    assert (env.xcr0, env.tsc) == (1, 0)
    ap = make("Haswell", cpu_index=1)
    assert not ap.is_bsp
    assert ap.env.mp_state == cs.MP_STATE_UNINITIALIZED  # waits for INIT/SIPI
    assert not ap.env.apic_base & cs.MSR_IA32_APICBASE_BSP
    assert ap.env.regs[cs.R_EDX] == 0x000306C4
    # INIT keeps MTRRs and the TSC, power-on clears them.
    assert bsp.wrmsr(cs.MSR_MTRRdefType, 0xC06)
    env.tsc, env.rip = 1000, 0x1234
    bsp.reset(init=True)
    assert bsp.rdmsr(cs.MSR_MTRRdefType) == 0xC06 and env.tsc == 1000 and env.rip == 0xFFF0
    bsp.reset()
    assert bsp.rdmsr(cs.MSR_MTRRdefType) == 0 and env.tsc == 0


def test_kick_sets_interrupt_request_and_calls_handlers():
    cpu = make("qemu64")
    calls = []
    cpu.kick_handlers.append(lambda: calls.append(1))
    assert cpu.interrupt_controller is None and not cpu.env.interrupt_request
    cpu.kick()
    assert cpu.env.interrupt_request and calls == [1]


# -- registration and -cpu help ---------------------------------------------------------------
def test_every_model_is_a_declared_type():
    declared = {ep.name for ep in entry_points(group="vfw.types")
                if ep.value == "vfw_board_pc.cpu"}
    for d in MODELS:
        assert f"{d.name}-x86_64-cpu" in declared
        cls = TABLE.lookup(f"{d.name}-x86_64-cpu")
        assert d.name == cls.MODEL and issubclass(cls, X86CPU)
    assert "x86_64-cpu" in declared and TABLE.lookup("x86_64-cpu").is_abstract()
    with pytest.raises(VfwError, match="abstract"):
        TABLE.lookup("x86_64-cpu")()


def test_cpu_help_through_the_cli():
    vfw = Path(sys.executable).with_name("vfw")
    out = subprocess.run([str(vfw), "run", "-cpu", "help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").split("\n")
    assert lines[0] == "Available CPUs:"
    assert "x86 qemu64                QEMU Virtual CPU version 2.5+" in lines
    assert "x86 SandyBridge           Intel Xeon E312xx (Sandy Bridge)" in lines
    assert "x86 Skylake-Client        Intel Core Processor (Skylake)" in lines
    models = [line.split()[1] for line in lines if line.startswith("x86 ")]
    assert models[-2:] == ["host", "max"] and models[0] == "EPYC"
    i = lines.index("Recognized CPUID flags:")
    assert lines[i - 1] == ""
    flags = lines[i + 1:]
    assert all(line.startswith("  ") and len(line) <= 75 for line in flags)
    words = " ".join(flags).split()
    assert words == sorted(words) and {"sse4.1", "lahf-lm", "pdpe1gb", "x2apic"} <= set(words)
    # wrapped greedily: the next word would not have fitted on the previous line
    for prev, nxt in zip(flags[:-1], flags[1:], strict=True):
        assert len(prev) + 1 + len(nxt.split()[0]) > 75
