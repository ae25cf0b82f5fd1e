"""Interrupt lines (QEMU's qemu_irq).

An :class:`IRQ` is an input pin of some device: setting its level calls the device's handler
with the pin number and the new level. Levels are ints (0 low, nonzero high) and are passed on
every ``set``, changed or not, as QEMU does: an edge-triggered device compares with its own
state. A line without a handler is an unconnected pin: setting it only records the level.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["IRQ", "IRQHandler", "allocate_irqs", "split_irq"]

#: handler(n, level): ``n`` is the pin number given when the line was made.
IRQHandler = Callable[[int, int], None]


class IRQ:
    """One interrupt input line."""

    __slots__ = ("_handler", "_level", "n", "name")

    def __init__(self, handler: IRQHandler | None, n: int = 0, name: str = ""):
        self._handler = handler
        self.n = n
        self.name = name
        self._level = 0

    @property
    def level(self) -> int:
        """The level last set (0 before any)."""
        return self._level

    def set(self, level: int) -> None:
        """Drive the line to ``level`` and notify the device."""
        self._level = level
        if self._handler is not None:
            self._handler(self.n, level)

    def raise_(self) -> None:
        self.set(1)

    def lower(self) -> None:
        self.set(0)

    def pulse(self) -> None:
        """Raise then lower the line (an edge for edge-triggered inputs)."""
        self.set(1)
        self.set(0)

    def __repr__(self) -> str:
        name = self.name or "irq"
        wired = "" if self._handler is not None else " unconnected"
        return f"<IRQ {name}[{self.n}] level={self._level}{wired}>"


def allocate_irqs(handler: IRQHandler | None, count: int, name: str = "") -> list[IRQ]:
    """``count`` input lines numbered 0..count-1 sharing one handler (qemu_allocate_irqs)."""
    if count < 0:
        raise ValueError(f"IRQ count must not be negative, not {count}")
    return [IRQ(handler, n, name) for n in range(count)]


def split_irq(*targets: IRQ) -> IRQ:
    """A line that drives all ``targets`` to its level, in order (QEMU's TYPE_SPLIT_IRQ).

    For example an ISA interrupt wired to both the i8259 and the I/O APIC.
    """
    outputs = tuple(targets)
    for t in outputs:
        if not isinstance(t, IRQ):
            raise TypeError(f"split_irq targets must be IRQ lines, not {t!r}")

    def fan_out(_n: int, level: int) -> None:
        for t in outputs:
            t.set(level)

    names = ",".join(t.name or "irq" for t in outputs)
    return IRQ(fan_out, 0, f"split({names})")
