"""Devices and buses (QEMU's qdev): realize/unrealize, reset, bus plugging, device help.

A device is configured through its properties, then realized; realizing is where it claims
its I/O ports, MMIO ranges and interrupt lines. Static properties refuse changes afterwards.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .errors import OptionError, PropertyError, VfwError
from .props import Property
from .qom import Object, register_type

#: Category headings in ``-device help``, in QEMU's order.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("bridge", "Controller/Bridge/Hub devices"),
    ("usb", "USB devices"),
    ("storage", "Storage devices"),
    ("network", "Network devices"),
    ("input", "Input devices"),
    ("display", "Display devices"),
    ("sound", "Sound devices"),
    ("misc", "Misc devices"),
    ("cpu", "CPU devices"),
    ("watchdog", "Watchdog devices"),
    ("uncategorized", "Uncategorized devices"),
)


_global_props: list[tuple[str, str, str]] = []


def set_global_properties(specs: list[str]) -> None:
    """Install ``-global driver.prop=value`` defaults, applied to every new device of that type
    (QEMU's qdev global properties); replaces any earlier set."""
    from .cmdline import parse_global

    _global_props[:] = [parse_global(spec) for spec in specs]


@register_type
class Device(Object):
    """Base of every device (QEMU's TYPE_DEVICE)."""

    TYPE = "device"
    ABSTRACT = True
    #: ``-device help`` heading key (see CATEGORIES).
    CATEGORY: ClassVar[str] = "uncategorized"
    DESC: ClassVar[str] = ""
    #: The kind of bus this device plugs into ("PCI", "ISA", "System"), or None.
    BUS_TYPE: ClassVar[str | None] = None
    #: Another name users may give to -device.
    ALIAS: ClassVar[str | None] = None
    #: False for devices only a board may create (QEMU's user_creatable).
    USER_CREATABLE: ClassVar[bool] = True

    def instance_init(self) -> None:
        self.realized = False
        self.id: str | None = None
        self.parent_bus: Bus | None = None

    def instance_post_init(self) -> None:
        for driver, name, value in _global_props:
            if self.implements(driver):
                try:
                    self.set_property(name, value)
                except PropertyError as exc:
                    raise OptionError(f"can't apply global {driver}.{name}={value}: {exc}"
                                      ) from None

    def check_property_writable(self, p: Property) -> None:
        if self.realized and p.static:
            raise PropertyError(
                f"Attempt to set property '{p.name}' on device '{self.id or ''}' "
                f"(type '{self.type_name}') after it was realized")

    # -- lifecycle ---------------------------------------------------------------------------
    def realize(self) -> None:
        """Claim resources and become guest-visible; raise a VfwError to refuse."""

    def unrealize(self) -> None:
        """Release what realize claimed."""

    def reset(self) -> None:
        """Return to the power-on state (QEMU's legacy reset / hold phase)."""

    def set_realized(self, value: bool) -> None:
        if value == self.realized:
            return
        if value:
            self.realize()
            self.realized = True
            for bus in self.child_buses():
                for dev in bus.devices:
                    dev.set_realized(True)
        else:
            for bus in self.child_buses():
                for dev in bus.devices:
                    dev.set_realized(False)
            self.unrealize()
            self.realized = False

    def child_buses(self) -> list[Bus]:
        return [c for c in self.children.values() if isinstance(c, Bus)]

    def reset_all(self) -> None:
        """Reset this device and everything on its buses."""
        self.reset()
        for bus in self.child_buses():
            for dev in bus.devices:
                dev.reset_all()

    def instance_finalize(self) -> None:
        if self.realized:
            self.set_realized(False)
        if self.parent_bus is not None:
            self.parent_bus.remove(self)

    # -- introspection -------------------------------------------------------------------
    @classmethod
    def user_properties(cls) -> list[Property]:
        return sorted(cls.class_properties().values(), key=lambda p: p.name)

    @classmethod
    def help_text(cls) -> str:
        """``-device X,help``: "X options:" then one line per property."""
        lines = [f"{cls.TYPE} options:"]
        lines += [f"  {p.describe()}" for p in cls.user_properties()]
        return "\n".join(lines)

    @classmethod
    def help_line(cls) -> str:
        """One ``-device help`` line, QEMU's format plus where the type comes from."""
        text = f'name "{cls.TYPE}"'
        if cls.BUS_TYPE:
            text += f", bus {cls.BUS_TYPE}"
        if cls.ALIAS:
            text += f', alias "{cls.ALIAS}"'
        if cls.DESC:
            text += f', desc "{cls.DESC}"'
        provider = cls.provider()
        if provider.distribution:
            text += f", from {provider.distribution} {provider.version}"
        return text


@register_type
class Bus(Object):
    """A bus devices plug into (QEMU's TYPE_BUS); boards name them (``pci.0``)."""

    TYPE = "bus"
    ABSTRACT = True
    #: The bus kind devices ask for with BUS_TYPE.
    KIND: ClassVar[str] = ""

    def instance_init(self) -> None:
        self.devices: list[Device] = []
        self.bus_name = ""

    def check_device(self, dev: Device, props: dict[str, Any]) -> None:
        """Refuse a device before it is plugged (address taken, wrong kind, bus full)."""
        if dev.BUS_TYPE != self.KIND:
            raise VfwError(f"Bus '{self.bus_name}' is not of type '{dev.BUS_TYPE}'"
                           f" ('{dev.type_name}' needs one)")

    def plug(self, dev: Device) -> None:
        self.devices.append(dev)
        dev.parent_bus = self

    def remove(self, dev: Device) -> None:
        if dev in self.devices:
            self.devices.remove(dev)
        dev.parent_bus = None


def device_help(classes: list[type[Device]]) -> str:
    """``-device help``: user-creatable devices grouped under QEMU's category headings."""
    by_cat: dict[str, list[type[Device]]] = {}
    for cls in classes:
        if cls.USER_CREATABLE:
            key = cls.CATEGORY if cls.CATEGORY in dict(CATEGORIES) else "uncategorized"
            by_cat.setdefault(key, []).append(cls)
    out: list[str] = []
    for key, heading in CATEGORIES:
        if key in by_cat:
            if out:
                out.append("")
            out.append(f"{heading}:")
            out += [cls.help_line() for cls in sorted(by_cat[key], key=lambda c: c.TYPE)]
    return "\n".join(out)
