"""`vfw run` out of the box: with no arguments it boots vfw's own firmware on the default
machine, which prints what the machine looks like from inside (CPU, memory, PCI) and powers
off; vfw exits 0 within seconds, under KVM and under TCG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from vfw.testing import need_kvm

pytestmark = pytest.mark.requires("vfw-board-pc")

#: "A few seconds" with room for a loaded CI machine (it takes well under one here).
KVM_SECONDS = 10
TCG_SECONDS = 30


def vfw_run(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "vfw", "run", *args], capture_output=True,
                       text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return r, time.perf_counter() - start


def check_report(out: str, memory_mib: int = 128, cpus: int = 1) -> None:
    lines = [ln for ln in out.replace("\r", "").splitlines() if ln.strip()]
    assert lines[0].startswith("vfw firmware "), out
    assert re.search(r"^CPU vendor: (GenuineIntel|AuthenticAMD|\S+)$", out, re.M), out
    assert re.search(r"^CPU brand: \S", out, re.M), out
    flags = re.search(r"^CPU flags: (.*)$", out, re.M)
    assert flags is not None and {"fpu", "tsc", "apic", "sse2"} <= set(flags.group(1).split())
    assert f"CPUs: {cpus}" in lines
    assert f"memory: {memory_mib} MiB" in lines
    pci = lines.index("PCI bus 0:")
    assert lines[pci + 1].startswith("00:00.0 8086:1237 ")  # i440FX host bridge
    assert lines[pci + 2].startswith("00:01.0 8086:7000 ")  # PIIX3 ISA bridge
    assert lines[-1] == "vfw firmware: powering off"


@pytest.mark.requires("vfw-accel-kvm")
def test_builtin_guest_under_kvm_reports_the_machine_and_exits_0() -> None:
    need_kvm()
    r, seconds = vfw_run("-accel", "kvm")
    assert r.returncode == 0, r.stderr
    check_report(r.stdout)
    assert seconds < KVM_SECONDS
    assert "Traceback" not in r.stderr


@pytest.mark.requires("vfw-accel-kvm")
def test_no_arguments_at_all_picks_kvm_and_says_so() -> None:
    need_kvm()
    r, seconds = vfw_run()
    assert r.returncode == 0, r.stderr
    assert "vfw: using accelerator kvm" in r.stderr.splitlines()
    check_report(r.stdout)
    assert seconds < KVM_SECONDS


@pytest.mark.requires("vfw-accel-kvm")
def test_the_report_follows_the_command_line() -> None:
    need_kvm()
    r, _ = vfw_run("-accel", "kvm", "-m", "512", "-smp", "2")
    assert r.returncode == 0, r.stderr
    check_report(r.stdout, memory_mib=512, cpus=2)


@pytest.mark.requires("vfw-accel-tcg")
def test_builtin_guest_under_tcg_reports_the_machine_and_exits_0() -> None:
    r, seconds = vfw_run("-accel", "tcg")
    assert r.returncode == 0, r.stderr
    check_report(r.stdout)
    assert seconds < TCG_SECONDS


@pytest.mark.requires("vfw-accel-tcg")
@pytest.mark.requires_absent("vfw-accel-kvm")
def test_software_only_install_runs_the_builtin_guest_under_tcg_and_says_so() -> None:
    r, seconds = vfw_run()
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("vfw: using accelerator tcg") for line in r.stderr.splitlines())
    check_report(r.stdout)
    assert seconds < TCG_SECONDS
