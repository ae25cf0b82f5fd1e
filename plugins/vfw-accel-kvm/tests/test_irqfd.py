"""The GSI routing table model and irqfds: table contents, and that an eventfd write reaches
the in-kernel LAPIC (read back with KVM_GET_LAPIC) while the default PIC routes still work."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator

import pytest

from vfw.accel import Accel
from vfw.qom import object_new
from vfw.testing import need_kvm
from vfw_accel_kvm import irqfd
from vfw_accel_kvm import kvm_api as k
from vfw_accel_kvm.accel import KvmAccel
from vfw_accel_kvm.irqfd import KVM_IRQ_ROUTING_IRQCHIP as CHIP
from vfw_accel_kvm.irqfd import KVM_IRQ_ROUTING_MSI as MSI
from vfw_accel_kvm.irqfd import GsiRouter, Route

MASTER, SLAVE, IOAPIC = k.KVM_IRQCHIP_PIC_MASTER, k.KVM_IRQCHIP_PIC_SLAVE, k.KVM_IRQCHIP_IOAPIC


def test_abi_numbers_and_sizes() -> None:
    assert irqfd.KVM_SET_GSI_ROUTING == 0x4008AE6A
    assert irqfd.KVM_IRQFD == 0x4020AE76
    assert ctypes.sizeof(irqfd.kvm_irq_routing_entry) == 48
    assert ctypes.sizeof(irqfd.kvm_irqfd) == 32


def test_default_routes_are_kvms() -> None:
    routes = irqfd.default_routes()
    assert len(routes) == 16 * 2 + 8
    by_gsi: dict[int, set[tuple[int, int]]] = {}
    for r in routes:
        assert r.type == CHIP
        by_gsi.setdefault(r.gsi, set()).add((r.a, r.b))
    assert by_gsi[0] == {(MASTER, 0), (IOAPIC, 0)}
    assert by_gsi[7] == {(MASTER, 7), (IOAPIC, 7)}
    assert by_gsi[8] == {(SLAVE, 0), (IOAPIC, 8)}
    assert by_gsi[15] == {(SLAVE, 7), (IOAPIC, 15)}
    assert all(by_gsi[g] == {(IOAPIC, g)} for g in range(16, 24))


def test_router_model_adds_updates_removes() -> None:
    r = GsiRouter(None)
    a = r.add(0xFEE00000, 0x41)
    b = r.add(0xFEE01000, 0x42)
    assert a is not None and b is not None
    assert (a.gsi, b.gsi) == (24, 25)
    table = r.routes()
    assert table[:40] == irqfd.default_routes()
    assert table[40:] == [Route(24, MSI, 0xFEE00000, 0x41), Route(25, MSI, 0xFEE01000, 0x42)]
    r.update(a, 0xFEE00000, 0x51)
    assert Route(24, MSI, 0xFEE00000, 0x51) in r.routes()
    commits = r.commits
    r.update(a, 0xFEE00000, 0x51)  # unchanged: no new table
    assert r.commits == commits
    r.remove(a)
    assert a.fd == -1
    assert r.routes()[40:] == [Route(25, MSI, 0xFEE01000, 0x42)]
    c = r.add(0xFEE00000, 0x43)
    assert c is not None and c.gsi == 24  # freed GSIs are reused
    r.close()
    assert r.routes() == irqfd.default_routes() and b.fd == -1 and c.fd == -1


def test_router_table_full_and_struct_layout() -> None:
    r = GsiRouter(None, max_routes=26)
    assert r.add(1, 2) is not None and r.add(3, 4) is not None
    assert r.add(5, 6) is None
    table = irqfd.routing_table(r.routes())
    raw = bytes(table)
    assert int.from_bytes(raw[0:4], "little") == 42
    e = raw[8 + 48 * 41:8 + 48 * 42]  # the last entry: GSI 25, MSI 3 <- 4
    assert [int.from_bytes(e[i:i + 4], "little") for i in range(0, 28, 4)] == \
        [25, MSI, 0, 0, 3, 0, 4]
    r.close()


def test_base_accel_has_no_irqfd() -> None:
    assert Accel.irqfd_supported(Accel.__new__(Accel)) is False


# -- with /dev/kvm ------------------------------------------------------------------------------


@pytest.fixture
def vm() -> Iterator[tuple[KvmAccel, int]]:
    need_kvm()
    accel = object_new("kvm-accel")
    assert isinstance(accel, KvmAccel)
    accel.init_machine(None)
    vcpu = k.ioctl(accel.vm_fd, k.KVM_CREATE_VCPU, 0)
    lapic = k.kvm_lapic_state()
    k.ioctl(vcpu, k.KVM_GET_LAPIC, lapic)
    spiv = int.from_bytes(bytes(lapic.regs[k.APIC_SPIV:k.APIC_SPIV + 4]), "little") | 0x1FF
    lapic.regs[k.APIC_SPIV:k.APIC_SPIV + 4] = list(spiv.to_bytes(4, "little"))
    k.ioctl(vcpu, k.KVM_SET_LAPIC, lapic)  # software-enabled: it accepts fixed interrupts
    try:
        yield accel, vcpu
    finally:
        os.close(vcpu)
        accel.instance_finalize()


def _irr(vcpu: int, vector: int) -> bool:
    lapic = k.kvm_lapic_state()
    k.ioctl(vcpu, k.KVM_GET_LAPIC, lapic)
    off = 0x200 + 0x10 * (vector // 32)
    return bool(int.from_bytes(bytes(lapic.regs[off:off + 4]), "little") >> (vector % 32) & 1)


def _wait_irr(vcpu: int, vector: int) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if _irr(vcpu, vector):
            return True
        time.sleep(0.005)
    return False


def _pic_irr(accel: KvmAccel, chip: int) -> int:
    c = k.kvm_irqchip(chip_id=chip)
    k.ioctl(accel.vm_fd, k.KVM_GET_IRQCHIP, c)
    return int(c.chip[1])  # kvm_pic_state: last_irr, irr, imr, ...


def test_irqfd_write_reaches_the_lapic(vm: tuple[KvmAccel, int]) -> None:
    accel, vcpu = vm
    assert accel.irqfd_supported()
    route = accel.add_msi_irqfd(0xFEE00000, 0x45)  # APIC ID 0, fixed, vector 0x45
    assert route is not None and route.fd >= 0
    assert not _irr(vcpu, 0x45)
    os.eventfd_write(route.fd, 1)
    assert _wait_irr(vcpu, 0x45)
    accel.update_msi_irqfd(route, 0xFEE00000, 0x66)
    os.eventfd_write(route.fd, 1)
    assert _wait_irr(vcpu, 0x66)
    assert accel.gsi_router is not None
    assert accel.gsi_router.routes()[-1] == Route(24, MSI, 0xFEE00000, 0x66)
    accel.remove_msi_irqfd(route)
    assert route.fd == -1 and accel.gsi_router.routes() == irqfd.default_routes()


def test_default_routes_survive_set_gsi_routing(vm: tuple[KvmAccel, int]) -> None:
    accel, _ = vm
    route = accel.add_msi_irqfd(0xFEE00000, 0x45)  # replaces KVM's table with the model's
    assert route is not None
    accel.set_irq(3, 1)
    accel.set_irq(10, 1)
    assert _pic_irr(accel, MASTER) & 1 << 3
    assert _pic_irr(accel, SLAVE) & 1 << 2
    accel.remove_msi_irqfd(route)
