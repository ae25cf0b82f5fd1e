"""The abstract virtio device: feature bits every virtio device offers."""

from __future__ import annotations

from vfw.props import BOOL, prop
from vfw.qdev import Device
from vfw.qom import register_type

VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32


@register_type
class VirtioDevice(Device):
    """A virtio device behind some transport; offers VERSION_1 plus the optional ring features."""

    TYPE = "virtio-device"
    ABSTRACT = True

    indirect_desc = prop(BOOL, True, "offer VIRTIO_RING_F_INDIRECT_DESC")
    event_idx = prop(BOOL, True, "offer VIRTIO_RING_F_EVENT_IDX")

    def host_features(self) -> int:
        """The feature bits this device offers the driver."""
        features = 1 << VIRTIO_F_VERSION_1
        if self.indirect_desc:
            features |= 1 << VIRTIO_F_INDIRECT_DESC
        if self.event_idx:
            features |= 1 << VIRTIO_F_EVENT_IDX
        return features
