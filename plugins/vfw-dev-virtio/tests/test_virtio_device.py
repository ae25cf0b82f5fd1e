"""The abstract virtio device: its feature bits follow its properties."""

from __future__ import annotations

from typing import Any

import pytest

from vfw.errors import TypeLookupError
from vfw.qom import TABLE, TypeInfo, object_new, type_register

VERSION_1, INDIRECT, EVENT_IDX = 1 << 32, 1 << 28, 1 << 29


def test_virtio_device_is_abstract() -> None:
    with pytest.raises(TypeLookupError, match="object type 'virtio-device' is abstract"):
        object_new("virtio-device")


def test_host_features_follow_properties() -> None:
    if TABLE.find("test-virtio-concrete") is None:
        type_register(TypeInfo(name="test-virtio-concrete", parent="virtio-device"))
    dev: Any = object_new("test-virtio-concrete")
    assert dev.host_features() == VERSION_1 | INDIRECT | EVENT_IDX
    dev.set_property("event-idx", "off")
    dev.set_property("indirect-desc", "no")
    assert dev.host_features() == VERSION_1
