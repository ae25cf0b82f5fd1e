"""The tcg accelerator type and its properties."""

from __future__ import annotations

import pytest

from vfw.errors import AccelError, PropertyError
from vfw.qom import object_new


def test_tcg_accel_properties():
    accel = object_new("tcg-accel", tb_size="64M")
    assert accel.tb_size == 64 << 20
    assert accel.thread == "single"
    assert accel.irqchip_in_kernel() is False
    with pytest.raises(PropertyError, match="does not accept value 'many'"):
        accel.set_property("thread", "many")


def test_multi_threaded_tcg_is_refused_with_the_reason():
    with pytest.raises(AccelError, match="thread=multi is not supported"):
        object_new("tcg-accel", thread="multi").init_machine(None)
