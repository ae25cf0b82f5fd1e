"""KVM's GSI routing table and irqfds: MSI routes a device signals by writing an eventfd.

KVM_SET_GSI_ROUTING replaces the whole table, so :class:`GsiRouter` keeps a model of it: the
default irqchip routes KVM installs at KVM_CREATE_IRQCHIP (GSI 0-15 to the PICs and the IOAPIC,
16-23 to the IOAPIC only) plus one MSI route per GSI allocated from 24 upward. Each route is
bound to an eventfd with KVM_IRQFD, so a device thread writing the eventfd injects the message
without a vCPU exit or an ioctl of its own (QEMU's kvm_irqchip_add_msi_route + irqfd).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from vfw.errors import AccelError

from . import kvm_api as k

c_u32 = ctypes.c_uint32

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
#: The number of IOAPIC pins (and of GSIs with default routes); MSI GSIs start here.
IOAPIC_PINS = 24
PIC_PINS = 8
#: KVM_MAX_IRQ_ROUTES, used when KVM_CAP_IRQ_ROUTING does not say.
DEFAULT_MAX_ROUTES = 4096


class kvm_irq_routing_entry(k.Structure):  # noqa: N801 - the kernel's names
    """48 bytes: gsi, type, flags, pad, then a 32-byte union (irqchip or msi view)."""

    _fields_ = [("gsi", c_u32), ("type", c_u32), ("flags", c_u32), ("pad", c_u32),
                ("u", c_u32 * 8)]


class kvm_irq_routing_header(k.Structure):  # noqa: N801
    _fields_ = [("nr", c_u32), ("flags", c_u32)]


class kvm_irqfd(k.Structure):  # noqa: N801
    _fields_ = [("fd", c_u32), ("gsi", c_u32), ("flags", c_u32), ("resamplefd", c_u32),
                ("pad", ctypes.c_uint8 * 16)]


#: _IOW(KVMIO, 0x6a, struct kvm_irq_routing) and _IOW(KVMIO, 0x76, struct kvm_irqfd).
KVM_SET_GSI_ROUTING = 0x4000AE6A | ctypes.sizeof(kvm_irq_routing_header) << 16
KVM_IRQFD = 0x4000AE76 | ctypes.sizeof(kvm_irqfd) << 16


@dataclass(frozen=True)
class Route:
    """One routing table entry as the model keeps it."""

    gsi: int
    type: int
    #: irqchip: (chip, pin); msi: (address, data).
    a: int
    b: int


def default_routes() -> list[Route]:
    """KVM's default table (kvm_setup_default_irq_routing): GSI n < 16 to PIC master/slave pin
    n % 8 and IOAPIC pin n, GSI 16-23 to the IOAPIC only."""
    routes = []
    for gsi in range(IOAPIC_PINS):
        if gsi < 2 * PIC_PINS:
            chip = k.KVM_IRQCHIP_PIC_MASTER if gsi < PIC_PINS else k.KVM_IRQCHIP_PIC_SLAVE
            routes.append(Route(gsi, KVM_IRQ_ROUTING_IRQCHIP, chip, gsi % PIC_PINS))
        routes.append(Route(gsi, KVM_IRQ_ROUTING_IRQCHIP, k.KVM_IRQCHIP_IOAPIC, gsi))
    return routes


def routing_table(routes: list[Route]) -> Any:
    """A ``struct kvm_irq_routing`` holding ``routes``."""

    class _Routing(k.Structure):
        _fields_ = [("nr", c_u32), ("flags", c_u32),
                    ("entries", kvm_irq_routing_entry * max(len(routes), 1))]

    table = _Routing(nr=len(routes))
    for i, r in enumerate(routes):
        e = table.entries[i]
        e.gsi, e.type = r.gsi, r.type
        if r.type == KVM_IRQ_ROUTING_IRQCHIP:
            e.u[0], e.u[1] = r.a, r.b
        else:
            e.u[0], e.u[1], e.u[2] = r.a & 0xFFFFFFFF, (r.a >> 32) & 0xFFFFFFFF, r.b & 0xFFFFFFFF
    return table


class MsiIrqfd:
    """An MSI route bound to an eventfd (vfw.accel.IrqfdRoute)."""

    def __init__(self, gsi: int, fd: int, address: int, data: int):
        self.gsi = gsi
        self.fd = fd
        self.address = address
        self.data = data

    def __repr__(self) -> str:
        return f"MsiIrqfd(gsi={self.gsi}, fd={self.fd}, 0x{self.address:x} <- 0x{self.data:x})"


class GsiRouter:
    """The VM's GSI routing table and its irqfds. ``vm_fd`` None: model only (tests)."""

    def __init__(self, vm_fd: int | None, max_routes: int = DEFAULT_MAX_ROUTES):
        self.vm_fd = vm_fd
        self.max_gsi = max(max_routes, IOAPIC_PINS + 1)
        self.defaults = default_routes()
        self.msi: dict[int, MsiIrqfd] = {}
        self.commits = 0

    def routes(self) -> list[Route]:
        """The whole table, as KVM_SET_GSI_ROUTING gets it."""
        return self.defaults + [Route(r.gsi, KVM_IRQ_ROUTING_MSI, r.address, r.data)
                                for r in sorted(self.msi.values(), key=lambda r: r.gsi)]

    def _commit(self) -> None:
        self.commits += 1
        if self.vm_fd is not None:
            k.ioctl(self.vm_fd, KVM_SET_GSI_ROUTING, routing_table(self.routes()))

    def _irqfd(self, route: MsiIrqfd, flags: int) -> None:
        if self.vm_fd is not None:
            k.ioctl(self.vm_fd, KVM_IRQFD, kvm_irqfd(fd=route.fd, gsi=route.gsi, flags=flags))

    def _free_gsi(self) -> int | None:
        for gsi in range(IOAPIC_PINS, self.max_gsi):
            if gsi not in self.msi:
                return gsi
        return None

    def add(self, address: int, data: int) -> MsiIrqfd | None:
        """Allocate a GSI, route it to the message and bind a new eventfd (None: table full)."""
        gsi = self._free_gsi()
        if gsi is None:
            return None
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        route = MsiIrqfd(gsi, fd, address, data)
        self.msi[gsi] = route
        try:
            self._commit()
            self._irqfd(route, 0)
        except OSError as exc:
            del self.msi[gsi]
            os.close(fd)
            try:
                self._commit()
            except OSError:
                pass
            raise AccelError(f"kvm: cannot add MSI route on GSI {gsi}: "
                             f"{os.strerror(exc.errno or 0)}") from None
        return route

    def update(self, route: MsiIrqfd, address: int, data: int) -> None:
        if self.msi.get(route.gsi) is not route:
            raise AccelError(f"kvm: {route!r} is not an active route")
        if (route.address, route.data) == (address, data):
            return
        old = route.address, route.data
        route.address, route.data = address, data
        try:
            self._commit()
        except OSError:
            route.address, route.data = old  # the kernel kept the old table
            raise

    def remove(self, route: MsiIrqfd) -> None:
        if self.msi.get(route.gsi) is not route:
            return
        try:
            self._irqfd(route, KVM_IRQFD_FLAG_DEASSIGN)
        except OSError:
            pass  # already gone with the VM
        del self.msi[route.gsi]
        os.close(route.fd)
        route.fd = -1
        try:
            self._commit()
        except OSError:
            pass

    def close(self) -> None:
        """Forget every route and close the eventfds (the VM is going away)."""
        for route in list(self.msi.values()):
            if route.fd >= 0:
                os.close(route.fd)
                route.fd = -1
        self.msi.clear()
