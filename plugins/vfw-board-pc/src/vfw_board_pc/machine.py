"""The ``pc`` machine types (QEMU's pc-i440fx-X.Y)."""

from __future__ import annotations

from vfw.errors import MachineError
from vfw.machine import Machine
from vfw.qom import register_type


@register_type
class PCI440FXMachine(Machine):
    """Standard PC: i440FX host bridge, PIIX3 south bridge, legacy ISA devices."""

    TYPE = "pc-i440fx-7.2-machine"
    DESC = "Standard PC (i440FX + PIIX, 1996)"
    ALIAS = "pc"
    IS_DEFAULT = True
    MAX_CPUS = 255
    DEFAULT_RAM_SIZE = 128 << 20
    DEFAULT_CPU_TYPE = "qemu64-x86_64-cpu"
    SMP_DIES_SUPPORTED = True

    def init(self) -> None:
        raise MachineError("machine 'pc-i440fx-7.2': this version of vfw-board-pc cannot build"
                           " the board yet")
