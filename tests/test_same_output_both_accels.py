"""The board's guests print the same thing, and end the same way, under TCG as under KVM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vfw.testing import need, need_kvm

pytestmark = pytest.mark.requires("vfw-board-pc", "vfw-accel-kvm", "vfw-accel-tcg")

HERE = Path(__file__).resolve().parent
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=4")


def guest(name: str) -> str:
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    sys.path.insert(0, str(HERE / "guests"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return str(build.build(name))


def run(accel: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    r = subprocess.run([sys.executable, "-m", "vfw", "run", "-accel", accel, *args],
                       capture_output=True, text=True, timeout=300, env=env,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.replace("\r", "")


@pytest.mark.parametrize("name,args", [
    ("hello", ("-m", "256", "-append", "exit=5")),
    ("smp", ("-smp", "4", "-append", "cpus=4")),
])
def test_multiboot_guests(name, args):
    need_kvm()
    kernel = guest(name)
    kvm = run("kvm", "-kernel", kernel, *args, *DEBUG_EXIT)
    tcg = run("tcg", "-kernel", kernel, *args, *DEBUG_EXIT)
    assert kvm[0] in (11, 9) and tcg == kvm


def test_default_firmware_guest_sees_the_same_machine():
    """CPU flags differ by design (each accelerator filters the model to what it can run);
    everything else the firmware prints must match."""
    need_kvm()
    kvm = run("kvm", "-m", "256", "-device", "virtio-rng-pci")
    tcg = run("tcg", "-m", "256", "-device", "virtio-rng-pci")
    assert kvm[0] == tcg[0] == 0

    def comparable(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if not line.startswith(("CPU flags:", "  rng:", "virtio-rng"))
                and "random" not in line]

    assert comparable(tcg[1]) == comparable(kvm[1])
    assert "1af4:1044" in kvm[1]
