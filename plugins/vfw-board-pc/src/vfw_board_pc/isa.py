"""The ISA bus (QEMU's hw/isa): legacy devices at fixed I/O ports with fixed interrupt lines.

The board makes one :class:`ISABus` with the machine's port-I/O container and the 16 ISA
interrupt lines it wired (to the i8259s and I/O APIC, or to the accelerator's irqchip), and
plugs :class:`ISADevice` objects into it. A device claims ports with ``isa_register_io`` while
it realizes; two ISA devices claiming the same port is a configuration error that names both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.memory import MemoryRegion
from vfw.qdev import Bus, Device
from vfw.qom import register_type

__all__ = ["ISA_NUM_IRQS", "ISABus", "ISADevice"]

ISA_NUM_IRQS = 16


@dataclass
class _Claim:
    start: int
    end: int  # inclusive
    device: ISADevice
    region: MemoryRegion


def _describe(dev: Device) -> str:
    where = dev.id and f"id '{dev.id}'" or dev.path or "unplaced"
    return f"'{dev.type_name}' ({where})"


@register_type
class ISABus(Bus):
    """The ISA bus. ``io`` is the port-I/O container the devices map into; ``irqs`` the
    ISA interrupt lines 0-15."""

    TYPE = "ISA"
    KIND = "ISA"

    def instance_init(self) -> None:
        self.io: MemoryRegion | None = None
        self.irqs: list[IRQ] = []
        self._claims: list[_Claim] = []
        #: The next COM port index isa-serial picks when it has none (QEMU counts them).
        self.next_serial_index = 0

    @classmethod
    def create(cls, io: MemoryRegion, irqs: list[IRQ], bus_name: str = "isa.0") -> ISABus:
        """A bus over ``io`` with ``irqs`` (16 lines); the board adds it to its tree."""
        bus = cls()
        bus.io = io
        bus.irqs = list(irqs)
        bus.bus_name = bus_name
        return bus

    def attach(self, dev: ISADevice) -> ISADevice:
        """Plug and realize a board-made device (QEMU's isa_create_simple); on failure the
        device is unplugged again and the error raised."""
        self.check_device(dev, {})
        self.plug(dev)
        try:
            dev.set_realized(True)
        except BaseException:
            self.remove(dev)
            raise
        return dev

    # -- port claims -------------------------------------------------------------------------
    def claim(self, dev: ISADevice, port: int, region: MemoryRegion, priority: int = 0) -> None:
        if self.io is None:
            raise VfwError(f"ISA bus '{self.bus_name}' has no I/O space")
        if region.size == 0:
            raise VfwError(f"{_describe(dev)}: empty I/O region '{region.name}'")
        start, end = port, port + region.size - 1
        if port < 0 or end > 0xFFFF:
            raise VfwError(f"{_describe(dev)}: I/O ports 0x{port:x}-0x{end:x} lie outside"
                           " the 64 KiB port space")
        for c in self._claims:
            if c.device is not dev and c.start <= end and start <= c.end:
                raise VfwError(
                    f"{_describe(dev)}: I/O ports 0x{start:x}-0x{end:x} overlap ports"
                    f" 0x{c.start:x}-0x{c.end:x} already used by {_describe(c.device)}")
        self.io.add_subregion(port, region, priority)
        self._claims.append(_Claim(start, end, dev, region))

    def release(self, dev: ISADevice) -> None:
        """Unmap every region ``dev`` claimed."""
        keep = []
        for c in self._claims:
            if c.device is dev:
                if self.io is not None and c.region.container_region is self.io:
                    self.io.del_subregion(c.region)
            else:
                keep.append(c)
        self._claims = keep

    def claims(self) -> list[tuple[int, int, ISADevice]]:
        """(first port, last port, device) of every claim, for ``info mtree``-like dumps."""
        return [(c.start, c.end, c.device) for c in sorted(self._claims, key=lambda c: c.start)]

    def get_irq(self, n: int) -> IRQ:
        if not 0 <= n < min(ISA_NUM_IRQS, len(self.irqs)):
            raise VfwError(f"isa irq {n} invalid")
        return self.irqs[n]


@register_type
class ISADevice(Device):
    """Base of ISA devices (QEMU's TYPE_ISA_DEVICE)."""

    TYPE = "isa-device"
    ABSTRACT = True
    BUS_TYPE = "ISA"

    @property
    def isa_bus(self) -> ISABus:
        bus = self.parent_bus
        if not isinstance(bus, ISABus):
            raise VfwError(f"{_describe(self)} is not plugged into an ISA bus")
        return bus

    def isa_register_io(self, port: int, region: MemoryRegion, priority: int = 0) -> None:
        """Map ``region`` at ``port`` of the bus's I/O space. On a clash with another ISA
        device, release what this device mapped so far and raise (its realize fails)."""
        bus = self.isa_bus
        try:
            bus.claim(self, port, region, priority)
        except VfwError:
            bus.release(self)
            raise

    def isa_irq(self, n: int) -> IRQ:
        """ISA interrupt line ``n`` (0-15)."""
        return self.isa_bus.get_irq(n)

    def unrealize(self) -> None:
        bus = self.parent_bus
        if isinstance(bus, ISABus):
            bus.release(self)

    def set_realized(self, value: bool) -> None:
        if value and not self.realized:
            try:
                super().set_realized(True)
            except BaseException:
                bus = self.parent_bus
                if isinstance(bus, ISABus):
                    bus.release(self)  # a realize that failed half-way maps nothing
                raise
            return
        super().set_realized(value)


def isa_create(bus: ISABus, type_name: str, **props: Any) -> ISADevice:
    """Create a device of ``type_name`` with ``props`` and attach it to ``bus``."""
    from vfw.qom import object_new

    dev = object_new(type_name, **props)
    if not isinstance(dev, ISADevice):
        raise VfwError(f"'{type_name}' is not an ISA device")
    return bus.attach(dev)
