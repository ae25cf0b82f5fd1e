"""``isa-debug-exit`` (a guest ends vfw with a status of its choosing) and the port-0x80 sink.

isa-debug-exit: a write of value ``v`` to any of its ports ends the VM with exit status
``(v << 1) | 1`` (so a test can never be mistaken for vfw's own 0), as QEMU's does; reads give 0.
Port 0x80 is the POST-code / I/O-delay port: writes are ignored and reads return all-ones, as
on QEMU's pc machine.
"""

from __future__ import annotations

from collections.abc import Callable

from vfw.memory import MemoryRegion
from vfw.props import UINT32, prop
from vfw.qom import register_type, resolve_path
from vfw.runstate import ShutdownCause

from .isa import ISADevice

__all__ = ["ISADebugExit", "Port80", "debug_exit_status"]


def debug_exit_status(value: int) -> int:
    """The exit status a write of ``value`` asks for."""
    return (value << 1) | 1


@register_type
class ISADebugExit(ISADevice):
    """QEMU's isa-debug-exit (``-device isa-debug-exit,iobase=0xf4,iosize=4`` in tests)."""

    TYPE = "isa-debug-exit"
    CATEGORY = "misc"
    DESC = "exit vfw with a status the guest writes"

    iobase = prop(UINT32, 0x501, "I/O base port")
    iosize = prop(UINT32, 0x02, "number of ports")

    def instance_init(self) -> None:
        #: Called with the exit status; None: ``/machine``'s request_shutdown.
        self.exit_request: Callable[[int], None] | None = None

    def realize(self) -> None:
        region = MemoryRegion.io("isa-debug-exit", self.iosize, self._read, self._write,
                                 valid_sizes=(1, 4), impl_sizes=(1, 4))
        self.isa_register_io(self.iobase, region)

    def _read(self, offset: int, size: int) -> int:
        return 0

    def _write(self, offset: int, value: int, size: int) -> None:
        status = debug_exit_status(value)
        if self.exit_request is not None:
            self.exit_request(status)
            return
        machine = resolve_path("/machine")
        request = getattr(machine, "request_shutdown", None)
        if request is not None:
            request(ShutdownCause.GUEST_SHUTDOWN, exit_code=status)


@register_type
class Port80(ISADevice):
    """The POST/delay port: ignores writes, reads all-ones."""

    TYPE = "port80"
    USER_CREATABLE = False
    DESC = "POST code port (0x80), ignored"

    iobase = prop(UINT32, 0x80, "I/O port")

    def realize(self) -> None:
        region = MemoryRegion.io("ioport80", 1, self._read, self._write,
                                 valid_sizes=(1, 4), impl_sizes=(1, 1))
        self.isa_register_io(self.iobase, region)

    def _read(self, offset: int, size: int) -> int:
        return 0xFF

    def _write(self, offset: int, value: int, size: int) -> None:
        pass
