"""The architecture-neutral part of a vCPU (QEMU's CPUState).

Architectural state (registers, modes) belongs to each architecture's CPU type, defined by the
board plugin beside its CPU models, and is shared by every accelerator.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from .props import UINT32, prop
from .qdev import Device
from .qom import register_type


@register_type
class CPU(Device):
    """A virtual CPU. ``cpu_index`` orders CPUs; accelerators run them."""

    TYPE = "cpu"
    ABSTRACT = True
    CATEGORY = "cpu"
    USER_CREATABLE = False
    #: Name of the CPU model as ``-cpu`` spells it (``qemu64``), set by model classes.
    MODEL: ClassVar[str] = ""

    cpu_index = prop(UINT32, 0, "index of this CPU in the machine")

    def instance_init(self) -> None:
        self.halted = False
        self.stopped = True


_current = threading.local()


def set_current_cpu(cpu: CPU | None) -> None:
    """Accelerators call this around guest execution on each vCPU thread (QEMU's current_cpu),
    so MMIO handlers that are per-CPU (the local APIC) know which CPU accessed them."""
    _current.cpu = cpu


def current_cpu() -> CPU | None:
    return getattr(_current, "cpu", None)
