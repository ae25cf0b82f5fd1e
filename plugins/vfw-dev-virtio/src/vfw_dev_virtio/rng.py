"""virtio-rng (virtio 1.x section 5.4): ``virtio-rng-pci`` fills the driver's buffers with
entropy from the host kernel (``/dev/urandom`` read straight into guest RAM with readv)."""

from __future__ import annotations

import os

from vfw.props import UINT64, prop
from vfw.qom import register_type

from .device import VirtioDevice
from .pci import VirtioPCI

VIRTIO_ID_RNG = 4
#: At most this many bytes per request, so a huge guest buffer cannot stall the loop.
MAX_BYTES_PER_REQUEST = 64 * 1024


def _clip(views: list[memoryview], limit: int) -> list[memoryview]:
    out: list[memoryview] = []
    for v in views:
        if limit <= 0:
            break
        out.append(v[:limit])
        limit -= len(out[-1])
    return out


@register_type
class VirtioRng(VirtioDevice):
    """The entropy device model behind ``virtio-rng-pci``."""

    TYPE = "virtio-rng-device"
    VIRTIO_ID = VIRTIO_ID_RNG

    def instance_init(self) -> None:
        self.features = 0
        self._fd = -1

    def realize(self) -> None:
        self._fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)

    def unrealize(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def queue_sizes(self) -> list[int]:
        return [64]

    def handle_queue(self, index: int) -> None:
        q = self.transport.virtqueue(index)
        pushed = False
        for _ in range(2 * q.size):  # bounded: a driver may keep adding from another vCPU
            elem = q.pop()
            if elem is None:
                break
            views = _clip(elem.in_, MAX_BYTES_PER_REQUEST)
            n = 0
            if views:
                try:
                    n = os.readv(self._fd, views)
                except OSError:
                    data = os.getrandom(sum(len(v) for v in views))
                    for v in views:
                        v[:] = data[n:n + len(v)]
                        n += len(v)
            q.push(elem.head, n)
            pushed = True
        else:
            self.transport.requeue(index)
        if pushed:
            self.transport.notify_queue(index)


@register_type
class VirtioRngPCI(VirtioPCI):
    """``-device virtio-rng-pci``: host entropy for the guest."""

    TYPE = "virtio-rng-pci"
    DEVICE_ID = 0x1040 + VIRTIO_ID_RNG
    SUBSYSTEM_ID = VIRTIO_ID_RNG
    CLASS_ID = 0x00FF
    CATEGORY = "misc"
    DESC = "virtio 1.x entropy source"
    VDEV_TYPE = VirtioRng

    max_bytes = prop(UINT64, 1 << 62, "rate limit in bytes per period (accepted)")
    period = prop(UINT64, 1 << 16, "rate limit period in ms (accepted)")
