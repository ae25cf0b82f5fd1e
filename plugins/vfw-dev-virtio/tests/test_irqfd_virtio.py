"""virtio-pci MSI-X through KVM irqfds: routes follow the guest's table entry and mask, a
masked vector sets its PBA bit instead of firing, and the message reaches the in-kernel LAPIC;
a multiboot guest (guests/virtio_msix.c) takes its virtio-blk interrupts through them.
Under TCG (no irqfd) interrupts keep going through msix_notify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_virtio_blk import IMAGE_SIZE, T_IN, Blk
from virtio_driver import Guest, VirtioPCIDriver

from vfw.cmdline import parse_command_line
from vfw.qom import reset_root
from vfw.testing import need, need_kvm
from vfw.vl import build

pytestmark = pytest.mark.requires("vfw-board-pc")
NO_EVENT_IDX = ((1 << 64) - 1) & ~(1 << 29)  # every request interrupts


def _lapic(vcpu: Any) -> Any:
    from vfw_accel_kvm import kvm_api as k

    lapic = k.kvm_lapic_state()
    vcpu.ioctl(k.KVM_GET_LAPIC, lapic)
    return lapic


def _enable_lapic(vcpu: Any) -> None:
    from vfw_accel_kvm import kvm_api as k

    lapic = _lapic(vcpu)
    spiv = int.from_bytes(bytes(lapic.regs[k.APIC_SPIV:k.APIC_SPIV + 4]), "little") | 0x1FF
    lapic.regs[k.APIC_SPIV:k.APIC_SPIV + 4] = list(spiv.to_bytes(4, "little"))
    vcpu.ioctl(k.KVM_SET_LAPIC, lapic)


def _irr(vcpu: Any, vector: int) -> bool:
    regs = bytes(_lapic(vcpu).regs)
    off = 0x200 + 0x10 * (vector // 32)
    return bool(int.from_bytes(regs[off:off + 4], "little") >> (vector % 32) & 1)


def _msi_routes(machine: Any) -> list[tuple[int, int]]:
    router = machine.accel.gsi_router
    return [] if router is None else [(r.address, r.data) for r in router.msi.values()]


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return str(path)


@pytest.mark.requires("vfw-accel-kvm")
def test_msix_goes_through_irqfd_and_follows_mask_and_table(image: str) -> None:
    need_kvm()
    blk = Blk(image)
    machine, dev, drv = blk.machine, blk.dev, blk.drv
    assert machine.accel.irqfd_supported()
    vcpu = machine.accel.vcpus[0]
    _enable_lapic(vcpu)
    drv.enable_msix()  # vector i: 0xfee00000 <- 0x40 + i
    blk.start(NO_EVENT_IDX)
    drv.cw(0x10, 0, 2)
    drv.cw(0x16, 0, 2)
    drv.cw(0x1A, 1, 2)  # queue 0 -> vector 1
    entry = drv.msix_base + 16 * 1

    assert blk.request(T_IN, 0, in_len=512)[0] == 0
    assert (dev.irqfd_interrupts, dev.msix_notify_interrupts) == (1, 0)
    assert _msi_routes(machine) == [(0xFEE00000, 0x41)]
    assert _irr(vcpu, 0x41)

    # Masked: the route goes away, the interrupt becomes a pending bit, nothing is delivered.
    blk.guest.mem.write(entry + 12, 1, 4)
    assert _msi_routes(machine) == [] and dev._irqfds == {}
    blk.request(T_IN, 0, in_len=512)
    assert (dev.irqfd_interrupts, dev.msix_notify_interrupts) == (1, 1)
    assert dev.msix_is_pending(1)
    # The guest retargets the masked entry, then unmasks: the pending message goes out
    # (through send_msi) with the new data, and the next one sets up a route for it.
    blk.guest.mem.write(entry + 8, 0x47, 4)
    assert not _irr(vcpu, 0x47)
    blk.guest.mem.write(entry + 12, 0, 4)
    assert not dev.msix_is_pending(1) and _irr(vcpu, 0x47)
    blk.request(T_IN, 0, in_len=512)
    assert dev.irqfd_interrupts == 2 and _msi_routes(machine) == [(0xFEE00000, 0x47)]

    # Rewritten while unmasked: the route is updated before the next signal.
    blk.guest.mem.write(entry + 8, 0x48, 4)
    blk.request(T_IN, 0, in_len=512)
    assert dev.irqfd_interrupts == 3 and _msi_routes(machine) == [(0xFEE00000, 0x48)]
    assert _irr(vcpu, 0x48)
    assert dev.msix_notify_interrupts == 1

    drv.reset()  # device reset releases the routes
    assert _msi_routes(machine) == [] and dev._irqfds == {}


@pytest.mark.requires("vfw-accel-kvm")
def test_intercepted_msi_sink_is_not_bypassed(image: str) -> None:
    need_kvm()
    blk = Blk(image)
    sent: list[tuple[int, int]] = []
    blk.machine.pci_bus.msi_sink = lambda a, d: sent.append((a, d))
    blk.drv.enable_msix()
    blk.start(NO_EVENT_IDX)
    blk.drv.cw(0x16, 0, 2)
    blk.drv.cw(0x1A, 1, 2)
    blk.request(T_IN, 0, in_len=512)
    assert sent == [(0xFEE00000, 0x41)] and blk.dev.irqfd_interrupts == 0


@pytest.mark.requires("vfw-accel-tcg")
def test_tcg_uses_msix_notify(image: str) -> None:
    reset_root()
    machine = build(parse_command_line([
        "-M", "pc", "-accel", "tcg", "-m", "64M",
        "-drive", f"file={image},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"]))
    assert machine.accel is not None and not machine.accel.irqfd_supported()
    bus: Any = getattr(machine, "pci_bus")  # noqa: B009 - the pc board's attribute
    dev = next(d for d in bus.pci_devices() if d.type_name == "virtio-blk-pci")
    sent: list[tuple[int, int]] = []
    bus.msi_sink = lambda a, d: sent.append((a, d))
    blk = Blk.__new__(Blk)
    blk.machine, blk.dev, blk.path = machine, dev, image
    blk.guest = Guest(machine)
    blk.drv = VirtioPCIDriver(blk.guest, dev)
    blk.drv.enable_msix()
    blk.start(NO_EVENT_IDX)
    blk.drv.cw(0x16, 0, 2)
    blk.drv.cw(0x1A, 1, 2)
    blk.request(T_IN, 0, in_len=512)
    assert sent == [(0xFEE00000, 0x41)]
    assert (dev.irqfd_interrupts, dev.msix_notify_interrupts) == (0, 1)


HERE = Path(__file__).resolve().parent
GUESTS = HERE.parents[2] / "tests" / "guests"  # multiboot.S, link.ld, guest.h
CFLAGS = ("-m32", "-march=i686", "-O2", "-ffreestanding", "-fno-pic", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-nostdlib", "-nostdinc", "-static", "-no-pie",
          "-Wall", "-Werror", "-Wno-unused-function")
_COUNT_IRQS = """
import sys
from vfw_dev_virtio import pci
devs = []
orig = pci.VirtioPCI.realize
def realize(self):
    devs.append(self)
    return orig(self)
pci.VirtioPCI.realize = realize
from vfw import vl
rc = vl.main(sys.argv[1:])
print("IRQS", rc, *[f"{d.irqfd_interrupts} {d.msix_notify_interrupts}" for d in devs])
"""


def _build_msix_guest(out: Path) -> Path:
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    elf = out / "virtio_msix.elf"
    subprocess.run(["gcc", *CFLAGS, "-I", str(GUESTS), "-T", str(GUESTS / "link.ld"), "-o",
                    str(elf), str(GUESTS / "multiboot.S"), str(HERE / "guests" / "virtio_msix.c")],
                   check=True, capture_output=True, text=True)
    return elf


@pytest.mark.parametrize("accel", [
    pytest.param("kvm", marks=pytest.mark.requires("vfw-accel-kvm")),
    pytest.param("tcg", marks=pytest.mark.requires("vfw-accel-tcg")),
])
def test_guest_takes_msix_interrupts(tmp_path: Path, image: str, accel: str) -> None:
    if accel == "kvm":
        need_kvm()
    elf = _build_msix_guest(tmp_path)
    argv = ["-accel", accel, "-m", "64", "-kernel", str(elf), "-append", "count=4",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-display", "none",
            "-serial", "stdio", "-drive", f"file={image},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    r = subprocess.run([sys.executable, "-c", _COUNT_IRQS, *argv], capture_output=True,
                       text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    out = r.stdout.replace("\r", "")
    assert "virtio-msix: irqs 4" in out, (out, r.stderr)
    line = next(ln for ln in out.splitlines() if ln.startswith("IRQS"))
    _, rc, irqfd, notify = line.split()
    assert rc == "1", (out, r.stderr)  # debug exit 0
    # Under KVM every interrupt went through an irqfd; under TCG through msix_notify.
    assert (int(irqfd), int(notify)) == ((4, 0) if accel == "kvm" else (0, 4))
