"""The abstract virtio device: feature bits every virtio device offers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vfw.props import BOOL, prop
from vfw.qdev import Device
from vfw.qom import register_type

if TYPE_CHECKING:
    from .virtqueue import VirtQueue

VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32


@register_type
class VirtioDevice(Device):
    """A virtio device behind some transport; offers VERSION_1 plus the optional ring features."""

    TYPE = "virtio-device"
    ABSTRACT = True
    USER_CREATABLE = False

    indirect_desc = prop(BOOL, True, "offer VIRTIO_RING_F_INDIRECT_DESC")
    event_idx = prop(BOOL, True, "offer VIRTIO_RING_F_EVENT_IDX")

    def host_features(self) -> int:
        """The feature bits this device offers the driver."""
        features = 1 << VIRTIO_F_VERSION_1 | self.device_features()
        if self.indirect_desc:
            features |= 1 << VIRTIO_F_INDIRECT_DESC
        if self.event_idx:
            features |= 1 << VIRTIO_F_EVENT_IDX
        return features

    # -- what a concrete device provides (the transport calls these) -----------------------
    #: The virtio device type (1 net, 2 block, 4 entropy); the PCI id is 0x1040 + this.
    VIRTIO_ID = 0

    def attach(self, transport: VirtioTransport) -> None:
        """Called once by the transport that carries this device, before ``realize``."""
        self.transport = transport

    def queue_sizes(self) -> list[int]:
        """The maximum size of each virtqueue, in queue-index order."""
        return []

    def device_features(self) -> int:
        """Device-specific feature bits (added to :meth:`host_features`)."""
        return 0

    def config_bytes(self) -> bytes:
        """The device configuration structure as the driver reads it now."""
        return b""

    def config_write(self, offset: int, value: int, size: int) -> None:
        """A driver write to the device configuration (default: read-only, ignored)."""

    def set_features(self, features: int) -> None:
        """The driver accepted ``features`` (on FEATURES_OK)."""
        self.features = features

    def driver_ok(self) -> None:
        """The driver set DRIVER_OK: queues are live."""

    def handle_queue(self, index: int) -> None:
        """The driver notified queue ``index`` (runs under the BQL)."""

    def virtio_reset(self) -> None:
        """The driver (or a system reset) reset the device: forget all queue state."""
        self.features = 0

    def has_feature(self, bit: int) -> bool:
        return bool(getattr(self, "features", 0) >> bit & 1)


class VirtioTransport(Protocol):
    """What a virtio device may ask of the transport that carries it."""

    def virtqueue(self, index: int) -> VirtQueue: ...

    def notify_queue(self, index: int) -> None: ...

    def notify_config(self) -> None: ...

    def set_broken(self, why: str) -> None: ...

    def requeue(self, index: int) -> None: ...

    def driver_running(self) -> bool: ...
