"""Accelerators (QEMU's AccelClass) and ``-accel`` selection with fallback.

An accelerator type is named ``<name>-accel``. The board never asks which accelerator runs it;
it asks the accelerator what it provides (``irqchip_in_kernel``) and hands it RAM and CPUs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar, Protocol

from .errors import AccelError, OptionError, VfwError
from .qom import TABLE, Object, register_type

if TYPE_CHECKING:
    from .machine import Machine

ACCEL_SUFFIX = "-accel"


class IrqfdRoute(Protocol):
    """An MSI route behind an eventfd (KVM's irqfd): writing 8 bytes to ``fd``
    (``os.eventfd_write(fd, 1)``) delivers the route's message without a system call into
    the accelerator, from any thread."""

    fd: int


@register_type
class Accel(Object):
    """Base of accelerators. ``init_machine`` raises AccelError when this host cannot run it."""

    TYPE = "accel"
    ABSTRACT = True
    DESC: ClassVar[str] = ""
    #: CPU feature defaults this accelerator applies before the user's -cpu options (QEMU's
    #: kvm_default_props / tcg_default_props), by the architecture's feature names.
    CPU_FEATURE_DEFAULTS: ClassVar[dict[str, bool]] = {}

    @classmethod
    def accel_name(cls) -> str:
        return cls.TYPE[: -len(ACCEL_SUFFIX)]

    def init_machine(self, machine: Machine) -> None:
        """Prepare to run ``machine`` (open devices, map RAM); AccelError if impossible."""
        raise AccelError(f"accelerator {self.accel_name()} cannot run machines")

    def irqchip_in_kernel(self) -> bool:
        """True when interrupt controllers and the PIT are provided by the accelerator."""
        return False

    def run(self, machine: Machine) -> None:
        """Run the machine's vCPUs until a request is pending (``machine.request_event``)."""
        raise AccelError(f"accelerator {self.accel_name()} cannot run vCPUs")

    # -- the rest of the seam: the board calls these ---------------------------------------
    def create_vcpu(self, cpu: Object) -> None:
        """The board realized ``cpu``; prepare to run it (KVM: KVM_CREATE_VCPU)."""

    def synchronize_state(self, cpu: Object) -> None:
        """Make ``cpu.env`` current (KVM: read registers back from the kernel)."""

    def synchronize_post_reset(self, cpu: Object) -> None:
        """``cpu.env`` was reset by the board; load it before the vCPU runs again."""

    def set_irq(self, gsi: int, level: int) -> None:
        """Drive an interrupt line of the in-kernel irqchip (only if irqchip_in_kernel)."""
        raise AccelError(f"accelerator {self.accel_name()} has no in-kernel irqchip")

    def send_msi(self, address: int, data: int) -> None:
        """Deliver an MSI through the in-kernel irqchip (only if irqchip_in_kernel)."""
        raise AccelError(f"accelerator {self.accel_name()} has no in-kernel irqchip")

    # -- optional: interrupts through eventfds (QEMU's kvm_irqchip_add_msi_route + irqfd) -----
    def irqfd_supported(self) -> bool:
        """True when add_msi_irqfd can return routes (KVM with KVM_CAP_IRQFD)."""
        return False

    def add_msi_irqfd(self, address: int, data: int) -> IrqfdRoute | None:
        """A new route delivering MSI (``address``, ``data``) whenever its ``.fd`` (an eventfd)
        is written; None when unsupported or out of routes (use send_msi then)."""
        return None

    def update_msi_irqfd(self, route: IrqfdRoute, address: int, data: int) -> None:
        """Point ``route`` at a new message (the guest rewrote an MSI-X table entry)."""

    def remove_msi_irqfd(self, route: IrqfdRoute) -> None:
        """Detach and free ``route`` and close its eventfd."""


def accel_classes() -> list[type[Accel]]:
    from .modules import loader

    loader().load_all(only=ACCEL_SUFFIX)
    classes = [TABLE.lookup(n) for n in TABLE.registered_names() if n.endswith(ACCEL_SUFFIX)]
    return sorted((c for c in classes if issubclass(c, Accel) and not c.is_abstract()),
                  key=lambda c: c.TYPE)


def accel_help() -> str:
    lines = ["Accelerators supported in QEMU binary:"]
    for cls in accel_classes():
        where = cls.provider().distribution
        lines.append(cls.accel_name() + (f" [{where}]" if where else ""))
    if len(lines) == 1:
        lines.append("  (none: install vfw-accel-tcg or vfw-accel-kvm)")
    return "\n".join(lines)


def find_accel_class(name: str) -> type[Accel]:
    """The accelerator class for ``-accel NAME``, or an OptionError saying what to install."""
    from .modules import missing_type_hint

    try:
        impl = TABLE.find(name + ACCEL_SUFFIX)
    except VfwError as exc:  # provided by a plugin that is disabled or broken
        raise OptionError(f"invalid accelerator {name}: {exc}") from None
    if impl is None:
        raise OptionError(f"invalid accelerator {name}{missing_type_hint(name + ACCEL_SUFFIX)}")
    cls = TABLE.initialize(impl)
    if not issubclass(cls, Accel) or cls.is_abstract():
        raise OptionError(f"invalid accelerator {name}")
    return cls


def init_accelerator(machine: Machine, choices: list[tuple[str, dict[str, str]]],
                     default: bool) -> Accel:
    """Try each ``(name, properties)`` in order; the first that initialises wins.

    ``default`` marks the built-in kvm:tcg choice, which skips accelerators that are not
    installed and says which one it picked.
    """
    failures = []
    for i, (name, props) in enumerate(choices):
        last = i == len(choices) - 1
        try:
            cls = find_accel_class(name)
        except OptionError as exc:
            if last:
                raise
            if not default:  # QEMU reports an unknown name in a list and tries the next
                print(f"vfw: {exc}", file=sys.stderr)
            continue
        accel = cls()
        for key, value in props.items():
            accel.set_property(key, value)
        try:
            accel.init_machine(machine)
        except AccelError as exc:
            failures.append(f"{exc}")
            if last:
                raise AccelError(f"{exc}") from exc
            print(f"vfw: {exc}; falling back to {choices[i + 1][0]}", file=sys.stderr)
            continue
        if default:
            print(f"vfw: using accelerator {name}", file=sys.stderr)
        machine.accel = accel
        return accel
    raise AccelError("no accelerator found: " + "; ".join(failures) if failures else
                     "no accelerator is installed (pip install vfw-accel-tcg or vfw-accel-kvm)")
