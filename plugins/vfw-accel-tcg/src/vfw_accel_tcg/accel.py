"""The ``tcg`` accelerator type."""

from __future__ import annotations

from typing import Any

from vfw.accel import Accel
from vfw.errors import AccelError
from vfw.props import SIZE, EnumType, prop
from vfw.qom import register_type


@register_type
class TcgAccel(Accel):
    """Software emulation: works on any host, needs nothing from the kernel."""

    TYPE = "tcg-accel"
    DESC = "Tiny Code Generator, in Python"

    thread = prop(EnumType("TCGThread", ("single", "multi")), "single",
                  "vCPUs run round-robin in one thread (single) or one thread each (multi)")
    tb_size = prop(SIZE, 32 << 20, "translation cache size in bytes")

    def init_machine(self, machine: Any) -> None:
        if self.thread == "multi":
            raise AccelError("tcg: thread=multi is not supported; vCPUs run round-robin"
                             " in one thread (thread=single)")

    def run(self, machine: Any) -> None:
        raise AccelError("tcg: this version of vfw-accel-tcg cannot execute guest code yet")
