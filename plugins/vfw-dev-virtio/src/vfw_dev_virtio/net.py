"""virtio-net (virtio 1.x section 5.1) over a :mod:`vfw.net` back end: ``virtio-net-pci``.

Queue 0 receives, queue 1 transmits. The tap back end uses the same 12-byte virtio-net header
as a VERSION_1 driver, so frames move with ``readv``/``writev`` straight between the tap and
the guest's buffers. Both queues are processed in batches (:meth:`VirtQueue.pop_batch` /
``push_batch``): a tx kick sends every available chain, one ``writev`` each, and completes
them with one used.idx update and at most one interrupt. Receiving runs from the main loop
while the tap is readable and the driver has posted buffers: each callback fills as many
buffers as the tap has frames ready (non-blocking ``readv``), gives the unused chains back,
and completes the filled ones at once; when the rx ring is empty the device stops polling
the tap until the driver kicks queue 0. Rx buffers are the non-mergeable layouts (one
buffer per frame, num_buffers 1), header and data in one descriptor or spread over several.
The offloads the tap may deliver follow the guest's GUEST_* features.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import struct
from typing import Any

from vfw import net as netdev
from vfw.errors import BackendError, VfwError
from vfw.main_loop import BQL
from vfw.props import BOOL, MACADDR, STR, UINT16, prop
from vfw.qom import register_type

from .device import VirtioDevice
from .pci import VirtioPCI
from .virtqueue import VirtqueueError

guest_log = logging.getLogger("vfw.guest_errors")
log = logging.getLogger("vfw.virtio")

VIRTIO_ID_NET = 1
RX_QUEUE, TX_QUEUE = 0, 1
QUEUE_SIZE = 256
HDR_LEN = 12
#: Frames handled per main-loop callback / per kick, so one device cannot starve the loop.
BATCH = 256
#: The most rx chains walked before the first read of a callback (chains walked for frames
#: that have not come are given back: a bound on that waste).
RX_FIRST_CHUNK = 64

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1

_mac_counter = 0


def _default_mac() -> bytes:
    """QEMU's scheme: 52:54:00:12:34:56, then :57, ... for each NIC without mac=."""
    global _mac_counter
    mac = bytes([0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + _mac_counter) & 0xFF])
    _mac_counter += 1
    return mac


@register_type
class VirtioNet(VirtioDevice):
    """The NIC model behind ``virtio-net-pci``."""

    TYPE = "virtio-net-device"
    VIRTIO_ID = VIRTIO_ID_NET

    def instance_init(self) -> None:
        self.backend: netdev.NetBackend | None = None
        self.mac = b"\x52\x54\x00\x12\x34\x56"
        self.link_up = True
        self.features = 0
        self.offloads = True
        self.tx_dropped = 0
        self.rx_frames = 0
        self.tx_frames = 0
        self.sizes = [QUEUE_SIZE, QUEUE_SIZE]
        #: Chains walked first per rx callback (adapts to the bursts the tap delivers).
        self._rx_chunk = 8
        #: One bound method, so that set_reader sees the same callback and does not
        #: re-register the tap with the main loop on every rx kick.
        self._rx_callback = self._rx_ready
        #: read(2) into guest buffers on the back end's fd (made when the fd is first read).
        self._reader: io.FileIO | None = None

    def queue_sizes(self) -> list[int]:
        return list(self.sizes)

    def device_features(self) -> int:
        f = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
        if self.offloads and self.backend is not None:
            for bit in (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
                        VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN,
                        VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
                        VIRTIO_NET_F_HOST_ECN):
                f |= 1 << bit
        return f

    def config_bytes(self) -> bytes:
        status = VIRTIO_NET_S_LINK_UP if self.link_up else 0
        return self.mac + struct.pack("<HHH", status, 1, 1500)

    def set_link(self, up: bool) -> None:
        """Link status (QEMU's set_link): changes the config and interrupts the driver."""
        if up != self.link_up:
            self.link_up = up
            self.transport.notify_config()
            if up:
                self._update_polling()

    def set_features(self, features: int) -> None:
        super().set_features(features)
        if self.backend is None:
            return
        flags = 0
        if features >> VIRTIO_NET_F_GUEST_CSUM & 1:
            flags |= netdev.TUN_F_CSUM
            if features >> VIRTIO_NET_F_GUEST_TSO4 & 1:
                flags |= netdev.TUN_F_TSO4
            if features >> VIRTIO_NET_F_GUEST_TSO6 & 1:
                flags |= netdev.TUN_F_TSO6
            if features >> VIRTIO_NET_F_GUEST_ECN & 1:
                flags |= netdev.TUN_F_TSO_ECN
        try:
            self.backend.set_offload(flags)
        except BackendError as exc:
            log.warning("virtio-net: %s", exc)

    def driver_ok(self) -> None:
        self._update_polling()

    def virtio_reset(self) -> None:
        super().virtio_reset()
        self._rx_chunk = 8
        if self.backend is not None:
            self.backend.set_reader(None)
            try:
                self.backend.set_offload(0)
            except BackendError:
                pass

    def _can_receive(self) -> bool:
        return (self.backend is not None and self.link_up and self.transport.driver_running())

    def _update_polling(self) -> None:
        if self.backend is None:
            return
        self.backend.set_reader(self._rx_callback if self._can_receive() else None)

    # -- transmit ------------------------------------------------------------------------
    def handle_queue(self, index: int) -> None:
        if index == RX_QUEUE:  # new rx buffers: poll the tap again
            self._update_polling()
            return
        self._transmit(index)

    def _transmit(self, index: int) -> None:
        """Send everything the driver made available, in batches
        (:meth:`VirtQueue.pop_batch_single`): one ``write``/``writev`` per frame straight
        from guest RAM, one used.idx update per batch, at most one interrupt for all of
        it."""
        q = self.transport.virtqueue(index)
        backend = self.backend
        fd = backend.fd if backend is not None and self.link_up else -1
        write, writev = os.write, os.writev
        budget = 2 * q.size  # bounded: a driver may keep adding from another vCPU
        pushed = False
        while budget > 0:
            # One-descriptor frames come flat (head, view, offset, length): no list, no
            # view made until the write.
            chains = q.pop_batch_single(budget, False)
            if not chains:
                break
            budget -= len(chains)
            done: list[int] = []  # heads; a sent frame's used length is 0
            append = done.append
            dropped = 0
            chain: Any
            try:
                for chain in chains:
                    # The 12-byte virtio_net_hdr (VERSION_1 layout) is what the tap takes in
                    # front of each frame (TUNSETVNETHDRSZ 12): it goes out as the guest wrote
                    # it, the tap checks its flags and GSO fields.
                    try:
                        head, view, off, length = chain
                        frame: Any = view[off:off + length]
                    except ValueError:  # a Chain: any other layout
                        head, out, _in, length, _in_len = chain
                        frame = out[0] if len(out) == 1 else out
                    if length < HDR_LEN:
                        raise VirtqueueError("virtio-net: tx buffer shorter than the header")
                    if fd >= 0:
                        try:
                            if frame.__class__ is list:
                                writev(fd, frame)
                            else:
                                write(fd, frame)
                        except OSError as exc:
                            dropped += 1
                            if exc.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL):
                                log.warning("virtio-net: tap write: %s", exc)
                    else:
                        dropped += 1
                    append(head)
            finally:
                # What was sent goes back to the driver, also when a later chain of the
                # batch broke the device.
                if fd >= 0:
                    self.tx_dropped += dropped
                self.tx_frames += len(done) - dropped
                if done:
                    q.push_batch_heads(done)
                    pushed = True
        else:
            self.transport.requeue(index)
        if pushed:
            self.transport.notify_queue(index)

    # -- receive -------------------------------------------------------------------------
    def _rx_ready(self) -> None:
        with BQL:
            try:
                self._receive()
            except VirtqueueError as exc:
                self.transport.set_broken(str(exc))

    def _receive(self) -> None:
        """Move the frames the tap has ready (at most BATCH) into the buffers the driver
        posted: chains are walked a chunk at a time (:meth:`VirtQueue.pop_batch_single`),
        each filled by one non-blocking read straight into guest RAM (``readinto`` for a
        one-descriptor buffer, ``readv`` otherwise); the chains left over when the tap runs
        dry are given back. One used.idx update, at most one interrupt."""
        if not self._can_receive():
            self._update_polling()
            return
        backend = self.backend
        assert backend is not None
        q = self.transport.virtqueue(RX_QUEUE)
        if not q.ready:
            backend.set_reader(None)
            return
        fd = backend.fd
        readv = os.readv
        reader = self._reader
        if reader is None or reader.fileno() != fd:
            # read(2) straight into a guest buffer: cheaper than os.readv (no iovec list).
            reader = self._reader = io.FileIO(fd, "r", closefd=False)
        readinto = reader.readinto
        done: list[tuple[int, int]] = []
        append = done.append
        # The first chunk: one chain more than frames came last time (they tend to arrive in
        # bursts of similar size, and the spare chain's EAGAIN tells that the tap is empty);
        # then small chunks, doubling, so that few chains are walked for nothing.
        chunk = self._rx_chunk
        first_chunk = True
        chain: Any
        try:
            while len(done) < BATCH:
                # One-descriptor buffers come flat (head, view, offset, length).
                chains = q.pop_batch_single(min(chunk, BATCH - len(done)), True)
                if not chains:
                    backend.set_reader(None)  # until the driver posts buffers
                    break
                used = 0
                for chain in chains:
                    try:
                        head, view, off, in_len = chain
                    except ValueError:  # a Chain: any other layout
                        head, out, in_, _out_len, in_len = chain
                        if in_len < HDR_LEN or out:
                            raise VirtqueueError("virtio-net: rx buffer shorter than the "
                                                 "header or device-readable") from None
                        try:
                            n = readv(fd, in_)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            log.warning("virtio-net: tap read: %s", exc)
                            break
                        # num_buffers (u16 at offset 10 of the header) = 1: the tap skips it.
                        first = in_[0]
                        if len(first) >= HDR_LEN:
                            first[10] = 1
                            first[11] = 0
                        else:
                            _set_num_buffers(in_)
                    else:
                        if in_len < HDR_LEN:
                            raise VirtqueueError("virtio-net: rx buffer shorter than the "
                                                 "header or device-readable")
                        try:
                            n = readinto(view[off:off + in_len])
                        except OSError as exc:
                            log.warning("virtio-net: tap read: %s", exc)
                            break
                        if n is None:  # EAGAIN: the tap is empty
                            break
                        view[off + 10] = 1  # num_buffers = 1
                        view[off + 11] = 0
                    # A frame longer than the buffer is cut (the read returns what it
                    # copied); the used length never exceeds the buffer whatever the back
                    # end says.
                    append((head, n if n <= in_len else in_len))
                    used += 1
                if used < len(chains):
                    q.unpop(len(chains) - used)
                    break
                chunk = 8 if first_chunk else 2 * chunk
                first_chunk = False
        finally:
            if done:
                q.push_batch(done)
                self.rx_frames += len(done)
                self._rx_chunk = min(len(done) + 1, RX_FIRST_CHUNK)
        if done:
            self.transport.notify_queue(RX_QUEUE)


def _set_num_buffers(views: list[memoryview]) -> None:
    """num_buffers (u16 at offset 10 of the header) = 1, for a header split over several
    buffers."""
    value = b"\x01\x00"
    pos = 0
    for v in views:
        for i in range(len(v)):
            if 10 <= pos < 12:
                v[i] = value[pos - 10]
            pos += 1
            if pos >= 12:
                return


@register_type
class VirtioNetPCI(VirtioPCI):
    """``-device virtio-net-pci,netdev=ID``: a virtio 1.x NIC."""

    TYPE = "virtio-net-pci"
    DEVICE_ID = 0x1040 + VIRTIO_ID_NET
    SUBSYSTEM_ID = VIRTIO_ID_NET
    CLASS_ID = 0x0200
    CATEGORY = "network"
    DESC = "virtio 1.x network device"
    VDEV_TYPE = VirtioNet

    netdev = prop(STR, None, "ID of a -netdev")
    mac = prop(MACADDR, None, "MAC address (default: 52:54:00:12:34:56 + n)")
    mq = prop(BOOL, False, "multiqueue (accepted only as off)")
    csum = prop(BOOL, True, "offer checksum/segmentation offloads")
    rx_queue_size = prop(UINT16, QUEUE_SIZE, "receive queue size (power of 2, 256..1024)",
                         name="rx_queue_size")
    tx_queue_size = prop(UINT16, QUEUE_SIZE, "transmit queue size (power of 2, 256..1024)",
                         name="tx_queue_size")
    host_mtu = prop(UINT16, 0, "MTU advertised to the guest (accepted; config mtu is 1500)",
                    name="host_mtu")

    def configure_vdev(self, vdev: Any) -> None:
        super().configure_vdev(vdev)
        if self.mq:
            raise VfwError("virtio-net-pci: mq=on is not supported by vfw")
        if self.netdev:
            backend = netdev.find_netdev(self.netdev)
            if backend is None:
                raise VfwError(f"virtio-net-pci: Property 'virtio-net-pci.netdev' can't find "
                               f"value '{self.netdev}'")
            if backend.attached is not None and backend.attached is not self:
                raise VfwError(f"virtio-net-pci: netdev '{self.netdev}' is already in use")
            backend.attached = self
            vdev.backend = backend
        for name in ("rx_queue_size", "tx_queue_size"):
            size = self.get_property(name)
            if size < 256 or size > 1024 or size & (size - 1):
                raise VfwError(f"virtio-net-pci: {name} {size} must be a power of 2 in "
                               f"256..1024")
        vdev.sizes = [self.rx_queue_size, self.tx_queue_size]
        vdev.mac = self.mac if self.mac is not None else _default_mac()
        vdev.offloads = self.csum

    def unrealize(self) -> None:
        super().unrealize()
        backend = getattr(self.vdev, "backend", None)
        if backend is not None and backend.attached is self:
            backend.set_reader(None)
            backend.attached = None
