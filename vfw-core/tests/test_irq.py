"""Tests for vfw.irq."""

from __future__ import annotations

import pytest

from vfw.irq import IRQ, allocate_irqs, split_irq


class Pins:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, n: int, level: int) -> None:
        self.calls.append((n, level))


def test_set_calls_handler_with_pin_and_level() -> None:
    pins = Pins()
    irq = IRQ(pins, 5, "uart")
    assert irq.level == 0
    irq.set(1)
    irq.set(1)  # passed on even when unchanged, as QEMU does
    irq.set(0)
    assert pins.calls == [(5, 1), (5, 1), (5, 0)]
    assert irq.level == 0
    assert irq.n == 5
    assert irq.name == "uart"


def test_raise_lower_pulse() -> None:
    pins = Pins()
    irq = IRQ(pins)
    irq.raise_()
    assert irq.level == 1
    irq.lower()
    assert irq.level == 0
    irq.pulse()
    assert irq.level == 0
    assert pins.calls == [(0, 1), (0, 0), (0, 1), (0, 0)]


def test_unconnected_line_is_a_no_op() -> None:
    irq = IRQ(None, 3)
    irq.raise_()
    irq.pulse()
    irq.set(7)
    assert irq.level == 7
    assert "unconnected" in repr(irq)


def test_allocate_irqs_numbers_lines() -> None:
    pins = Pins()
    lines = allocate_irqs(pins, 4, "pic")
    assert [line.n for line in lines] == [0, 1, 2, 3]
    assert all(line.name == "pic" for line in lines)
    lines[2].raise_()
    lines[0].lower()
    assert pins.calls == [(2, 1), (0, 0)]
    assert allocate_irqs(pins, 0, "none") == []
    with pytest.raises(ValueError):
        allocate_irqs(pins, -1, "bad")


def test_split_irq_drives_all_targets_in_order() -> None:
    pic, ioapic = Pins(), Pins()
    a, b = IRQ(pic, 4, "i8259"), IRQ(ioapic, 4, "ioapic")
    isa4 = split_irq(a, b)
    isa4.raise_()
    assert pic.calls == [(4, 1)] and ioapic.calls == [(4, 1)]
    assert a.level == b.level == isa4.level == 1
    isa4.pulse()
    assert pic.calls == [(4, 1), (4, 1), (4, 0)]
    assert ioapic.calls == pic.calls


def test_split_irq_with_unconnected_and_nested_targets() -> None:
    pins = Pins()
    nested = split_irq(IRQ(pins, 1), IRQ(None))
    top = split_irq(nested, IRQ(pins, 2))
    top.set(1)
    assert pins.calls == [(1, 1), (2, 1)]
    with pytest.raises(TypeError):
        split_irq(pins)  # type: ignore[arg-type]
