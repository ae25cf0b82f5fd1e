"""Machines (QEMU's MachineClass/MachineState) and machine selection.

A board plugin registers machine types named ``<name>-machine`` (QEMU's naming), so that
``-machine NAME`` resolves by type name and imports only the plugin that provides it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import MachineError
from .props import BOOL, STR, prop
from .qom import TABLE, Object, register_type
from .runstate import Request, RunState, ShutdownCause

if TYPE_CHECKING:
    from .accel import Accel
    from .memory import AddressSpace, MemoryRegion
    from .options import SmpConfig

MACHINE_SUFFIX = "-machine"


@register_type
class Machine(Object):
    """Base of every board. A board sets the class attributes and implements ``init``."""

    TYPE = "machine"
    ABSTRACT = True
    DESC: ClassVar[str] = ""
    ALIAS: ClassVar[str | None] = None
    IS_DEFAULT: ClassVar[bool] = False
    MAX_CPUS: ClassVar[int] = 1
    MIN_CPUS: ClassVar[int] = 1
    DEFAULT_RAM_SIZE: ClassVar[int] = 128 << 20
    DEFAULT_CPU_TYPE: ClassVar[str | None] = None
    SMP_DIES_SUPPORTED: ClassVar[bool] = False
    SMP_CLUSTERS_SUPPORTED: ClassVar[bool] = False
    SMP_PREFER_SOCKETS: ClassVar[bool] = False

    kernel = prop(STR, None, "Linux kernel image file")
    initrd = prop(STR, None, "Linux initial ramdisk file")
    append = prop(STR, None, "Linux kernel command line")
    firmware = prop(STR, None, "Firmware image")
    usb = prop(BOOL, False, "Set on/off to enable/disable usb")
    graphics = prop(BOOL, True, "Set on/off to enable/disable graphics emulation")
    dump_guest_core = prop(BOOL, True, "Include guest memory in a core dump")
    mem_merge = prop(BOOL, True, "Enable/disable memory merge support")

    def instance_init(self) -> None:
        from .memory import AddressSpace, MemoryRegion

        self.ram_size = type(self).DEFAULT_RAM_SIZE
        self.smp: SmpConfig | None = None
        self.accel: Accel | None = None
        self.cpu_type = type(self).DEFAULT_CPU_TYPE
        self.cpu_options: list[tuple[str, str]] = []
        self.system_memory: MemoryRegion = MemoryRegion.container("system", 1 << 64)
        self.system_io: MemoryRegion = MemoryRegion.container("io", 1 << 16)
        self.address_space_memory: AddressSpace = AddressSpace("memory", self.system_memory)
        self.address_space_io: AddressSpace = AddressSpace("I/O", self.system_io)
        #: The vCPU objects the board created, in cpu_index order; accelerators run them.
        self.cpus: list[Object] = []
        self.runstate = RunState.PRELAUNCH
        self.exit_code = 0
        #: -no-reboot: a guest reset ends the VM instead.
        self.no_reboot = False
        self._request: tuple[Request, ShutdownCause | None] | None = None
        #: Set when a request is pending; accelerators and the run loop wait on it.
        self.request_event = threading.Event()
        #: Installed by the running accelerator: makes every vCPU return to it promptly.
        self.kick_vcpus: Callable[[], None] = lambda: None
        #: Called (under the BQL) by system_reset after devices are reset: CPUs, firmware.
        self.reset_hooks: list[Callable[[], None]] = []
        #: Called as ``listener(event, data, (seconds, microseconds))`` for QMP events (STOP,
        #: RESUME, RESET, SHUTDOWN, POWERDOWN...): the monitors subscribe here.
        self.event_listeners: list[Callable[[str, dict[str, Any] | None, tuple[int, int]],
                                            None]] = []

    @classmethod
    def machine_name(cls) -> str:
        return cls.TYPE[: -len(MACHINE_SUFFIX)] if cls.TYPE.endswith(MACHINE_SUFFIX) else cls.TYPE

    def init(self) -> None:
        """Build the board: CPUs, RAM, chipset, buses, firmware (QEMU's MachineClass::init)."""
        raise MachineError(f"machine '{self.machine_name()}' cannot be initialised")

    # -- requests (QEMU's qemu_system_*_request) -----------------------------------------------
    def request_shutdown(self, cause: ShutdownCause, exit_code: int | None = None) -> None:
        """End the VM; ``exit_code`` becomes vfw's status (isa-debug-exit sets it)."""
        if exit_code is not None:
            self.exit_code = exit_code
        self._set_request(Request.SHUTDOWN, cause)

    def request_reset(self, cause: ShutdownCause) -> None:
        """Reset the VM; with -no-reboot a guest-initiated reset ends it instead."""
        if self.no_reboot and cause.from_guest:
            self._set_request(Request.SHUTDOWN, cause)
        else:
            self._set_request(Request.RESET, cause)

    def request_stop(self) -> None:
        self._set_request(Request.STOP, None)

    def request_cont(self) -> None:
        """Resume from prelaunch (-S) or paused (a monitor's ``cont``)."""
        self._set_request(Request.CONT, None)

    def emit_event(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Tell every listener (the QMP monitors) about ``event``, stamped now."""
        now = time.time()
        stamp = (int(now), int((now % 1) * 1_000_000))
        for listener in list(self.event_listeners):
            listener(event, data, stamp)

    def powerdown(self) -> None:
        """The power button (QMP's system_powerdown). Boards with ACPI override this to
        press their power button; the base only reports the POWERDOWN event."""
        self.emit_event("POWERDOWN")

    def _set_request(self, request: Request, cause: ShutdownCause | None) -> None:
        # A shutdown is never downgraded by a later reset or stop.
        if self._request is None or self._request[0] is not Request.SHUTDOWN:
            self._request = (request, cause)
        self.request_event.set()
        self.kick_vcpus()

    def take_request(self) -> tuple[Request, ShutdownCause | None] | None:
        request, self._request = self._request, None
        self.request_event.clear()
        return request

    def system_reset(self) -> None:
        """Reset every device in the tree, then run the board's reset hooks (CPUs, firmware)."""
        from .qdev import Device

        for obj in self.walk():
            if isinstance(obj, Device):
                obj.reset()
        for hook in self.reset_hooks:
            hook()

    def add_user_device(self, dev: Object, dev_id: str | None) -> None:
        """Place a -device object in the tree as QEMU does (peripheral / peripheral-anon)."""
        if dev_id is not None:
            self.container("peripheral").add_child(dev_id, dev)
        else:
            anon = self.container("peripheral-anon")
            anon.add_child(anon.new_child_name("device"), dev)

    def add_board_device(self, dev: Object, name: str | None = None) -> None:
        """Place a board-created object under /machine/unattached (or under ``name``)."""
        parent = self.container("unattached")
        parent.add_child(name or parent.new_child_name("device"), dev)

    def container(self, name: str) -> Object:
        from .qom import Container

        child = self.children.get(name)
        if child is None:
            child = self.add_child(name, Container())
        return child


def machine_classes() -> list[type[Machine]]:
    """Every installed machine type; imports only plugins that declare ``*-machine`` types."""
    from .modules import loader

    loader().load_all(only=MACHINE_SUFFIX)
    classes = []
    for name in TABLE.registered_names():
        if name.endswith(MACHINE_SUFFIX):
            cls = TABLE.lookup(name)
            if issubclass(cls, Machine) and not cls.is_abstract():
                classes.append(cls)
    return sorted(classes, key=lambda c: c.TYPE)


def find_default_machine() -> type[Machine] | None:
    for cls in machine_classes():
        if cls.IS_DEFAULT:
            return cls
    return None


def select_machine(name: str | None) -> type[Machine]:
    """QEMU's select_machine: the named machine (or alias), else the default."""
    from .modules import missing_type_hint

    if name is None:
        cls = find_default_machine()
        if cls is None:
            raise MachineError(
                "No machine specified, and there is no default; no board plugin is installed"
                " (pip install vfw-board-pc)")
        return cls
    impl = TABLE.find(name + MACHINE_SUFFIX)
    if impl is not None:
        found = TABLE.initialize(impl)
        if issubclass(found, Machine) and not found.is_abstract():
            return found
    for cls in machine_classes():
        if name == cls.ALIAS:
            return cls
    hint = missing_type_hint(name + MACHINE_SUFFIX)
    raise MachineError(f"unsupported machine type '{name}'{hint}"
                       "; use -machine help to list supported machines")


def machine_help() -> str:
    """``-machine help`` in QEMU's layout, with the providing distribution."""
    lines = ["Supported machines are:"]
    for cls in machine_classes():
        where = cls.provider().distribution
        suffix = f" [{where}]" if where else ""
        if cls.ALIAS:
            lines.append(f"{cls.ALIAS:<20} {cls.DESC} (alias of {cls.machine_name()}){suffix}")
        default = " (default)" if cls.IS_DEFAULT else ""
        lines.append(f"{cls.machine_name():<20} {cls.DESC}{default}{suffix}")
    if len(lines) == 1:
        lines.append("  (none: no board plugin is installed; pip install vfw-board-pc)")
    return "\n".join(lines)


def machine_properties_help(cls: type[Machine]) -> str:
    lines = [f"{cls.machine_name()}-machine options:"]
    lines += [f"  {p.describe()}" for p in sorted(cls.class_properties().values(),
                                                  key=lambda p: p.name)]
    return "\n".join(lines)
