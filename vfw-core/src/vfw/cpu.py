"""The architecture-neutral part of a vCPU (QEMU's CPUState).

Architectural state (registers, modes) belongs to each architecture's CPU type, defined by the
board plugin beside its CPU models, and is shared by every accelerator.
"""

from __future__ import annotations

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
