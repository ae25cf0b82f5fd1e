"""virtio-blk (virtio 1.x section 5.2) over a :mod:`vfw.block` back end: ``virtio-blk-pci``.

Requests move data between the image and guest RAM with ``preadv``/``pwritev`` on views of the
guest's buffers (no Python copy). FLUSH calls fsync before the status byte is written, so a
driver that saw the completion may rely on the data surviving a crash of vfw. Every request
field is checked: lengths must be whole sectors, ranges must lie inside the disk, GET_ID
buffers must hold 20 bytes; a malformed request gets IOERR/UNSUPP, a request without room for
its header or status byte breaks the device (DEVICE_NEEDS_RESET).

A notification processes everything available in batches (:meth:`VirtQueue.pop_batch`):
reads and writes of a batch go to the drive in one ``run_batch`` call, which with
``aio=threads`` and O_DIRECT/O_DSYNC runs them on a thread pool, several in flight; the batch
completes with one used.idx update and at most one interrupt. The batch is synchronous (the
notification returns when its I/O is done, under the BQL): unlike QEMU, a vCPU or the main
loop waits for the disk, but nothing is ever in flight across a device reset.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

from vfw import block
from vfw.block import BatchJob
from vfw.errors import VfwError
from vfw.props import BOOL, STR, UINT16, prop
from vfw.qom import register_type

from .device import VirtioDevice
from .pci import VirtioPCI
from .virtqueue import Chain, Element, Flat3, VirtQueue, VirtqueueError, flat3_chain

guest_log = logging.getLogger("vfw.guest_errors")
log = logging.getLogger("vfw.virtio")

VIRTIO_ID_BLOCK = 2
SECTOR = 512

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

ID_BYTES = 20
#: Sectors one discard / write-zeroes segment may cover (QEMU's default, 4 GiB - 512).
MAX_DISCARD_SECTORS = (1 << 32) // SECTOR - 1
_HDR = struct.Struct("<IIQ")
_HDR_TS = struct.Struct("<I4xQ")  # type and sector only
_SEG = struct.Struct("<QII")
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


def _gather(views: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """The first ``n`` bytes of ``views`` (copied; headers are small) and the views after."""
    head = bytearray()
    rest: list[memoryview] = []
    for i, v in enumerate(views):
        need = n - len(head)
        if need <= 0:
            rest.extend(views[i:])
            break
        head += v[:need]
        if len(v) > need:
            rest.append(v[need:])
    return bytes(head), rest


def _split_last(views: list[memoryview]) -> tuple[list[memoryview], memoryview]:
    """All but the last byte of ``views``, and a view of that last byte."""
    last = views[-1]
    data = views[:-1]
    if len(last) > 1:
        data.append(last[:-1])
    return data, last[len(last) - 1:]


@register_type
class VirtioBlk(VirtioDevice):
    """The block device model behind ``virtio-blk-pci``."""

    TYPE = "virtio-blk-device"
    VIRTIO_ID = VIRTIO_ID_BLOCK

    def instance_init(self) -> None:
        self.backend: block.BlockBackend | None = None
        self.serial = ""
        self.num_queues = 1
        self.queue_size = 256
        self.offer_discard = True
        self.offer_write_zeroes = True
        self.features = 0

    @property
    def _drv(self) -> block.BlockDriver:
        assert self.backend is not None
        return self.backend.driver

    def capacity(self) -> int:
        return self.backend.length // SECTOR if self.backend is not None else 0

    def readonly(self) -> bool:
        return self.backend is None or self.backend.readonly

    def queue_sizes(self) -> list[int]:
        return [self.queue_size] * self.num_queues

    def device_features(self) -> int:
        f = (1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE | 1 << VIRTIO_BLK_F_FLUSH)
        if self.readonly():
            f |= 1 << VIRTIO_BLK_F_RO
        if self.num_queues > 1:
            f |= 1 << VIRTIO_BLK_F_MQ
        if not self.readonly() and self.backend is not None:
            if self.offer_discard and self._drv.CAN_DISCARD:
                f |= 1 << VIRTIO_BLK_F_DISCARD
            if self.offer_write_zeroes and self._drv.CAN_WRITE_ZEROES:
                f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
        return f

    def config_bytes(self) -> bytes:
        return _CONFIG.pack(
            self.capacity(), 0, self.queue_size - 2,  # capacity, size_max, seg_max
            0, 0, 0,                                  # geometry
            SECTOR, 0, 0, 0, 0,                       # blk_size, topology
            1, 0, self.num_queues,                    # writeback, unused, num_queues
            MAX_DISCARD_SECTORS, 1, 1,                # discard limits
            MAX_DISCARD_SECTORS, 1, 1)                # write-zeroes limits, may_unmap

    # -- requests ---------------------------------------------------------------------------
    def handle_queue(self, index: int) -> None:
        """Process everything the driver made available: whole batches are walked, executed
        (reads/writes on the drive's thread pool when it has one) and returned with one
        used.idx update; one interrupt (subject to EVENT_IDX) for all of it."""
        q = self.transport.virtqueue(index)
        budget = 2 * q.size  # bounded: a driver may keep adding from another vCPU
        pushed = False
        drv = self.backend.driver if self.backend is not None else None
        # Requests run inline on a plain descriptor: the flat form saves their views.
        flat = drv is not None and drv.plain_fd >= 0 and drv.pool is None
        while budget > 0:
            elems = q.pop_batch_flat(budget, _HDR.size, 1) if flat else q.pop_batch(budget)
            if not elems:
                break
            budget -= len(elems)
            self._run_batch(q, elems)
            pushed = True
        else:
            self.transport.requeue(index)
        if pushed:
            self.transport.notify_queue(index)

    def _run_batch(self, q: VirtQueue, elems: Sequence[Chain | Flat3]) -> None:
        """Execute ``elems`` and push them all. Reads and writes are collected into one
        :meth:`~vfw.block.BlockDriver.run_batch` call (the pool runs them concurrently);
        any other request first waits for the data requests before it (ring order), so a
        flush covers every write the driver queued ahead of it."""
        backend = self.backend
        done: list[tuple[int, int]] = []
        jobs: list[BatchJob] = []
        waiting: list[memoryview] = []  # status byte of each job
        chain: Any  # a Flat3 or a Chain
        try:
            if backend is None:
                for chain in elems:
                    if len(chain) == 7:
                        chain = flat3_chain(chain, _HDR.size, 1)
                    done.append((chain[0], self.handle_request(Element(*chain))))
                return
            drv = backend.driver
            pooled = drv.pool is not None and len(elems) > 1
            preadv, pwritev = drv.preadv, drv.pwritev
            readonly = backend.readonly
            cap = backend.length // SECTOR
            unpack_hdr = _HDR.unpack_from
            unpack_ts = _HDR_TS.unpack_from
            append = done.append
            # The common requests in their common layout (pop_batch_flat: header | data,
            # status for a read, header, data | status for a write, three consecutive
            # descriptors) on a plain descriptor with no pool, so run inline in ring order:
            # the header is read and the status stored in place, only the data is sliced.
            # The same checks as the general path below; anything else goes there.
            fd = -1 if pooled else drv.plain_fd
            if fd < 0:  # not popped flat by handle_queue; if so, the general path for all
                elems = [flat3_chain(c, _HDR.size, 1) if len(c) == 7 else c for c in elems]
            wfd = -1 if readonly else fd
            sys_preadv, sys_pwritev = os.preadv, os.pwritev
            for chain in elems:
                try:  # a flat chain: header (16 bytes), data, status (1 byte)
                    head, view, o0, o1, l1, o2, write1 = chain
                except ValueError:  # a Chain (5 items)
                    pass
                else:
                    rtype, sector = unpack_ts(view, o0)
                    # l1 > 0 (flat), so a whole number of sectors is >= 1 and
                    # l1 >> 9 <= cap - sector also refuses sector > cap.
                    if not l1 & 511 and l1 >> 9 <= cap - sector:
                        if rtype == VIRTIO_BLK_T_IN and write1:
                            io, io_fd, complete, used = sys_preadv, fd, preadv, l1 + 1
                        elif rtype == VIRTIO_BLK_T_OUT and not write1 and wfd >= 0:
                            io, io_fd, complete, used = sys_pwritev, wfd, pwritev, 1
                        else:
                            io = None
                        if io is not None:
                            try:
                                data = [view[o1:o1 + l1]]
                                if io(io_fd, data, sector << 9) != l1:
                                    complete(sector << 9, data)  # short: the complete path
                                view[o2] = VIRTIO_BLK_S_OK
                            except OSError as exc:
                                log.error("virtio-blk %s: host I/O error: %s", backend.id,
                                          exc)
                                view[o2] = VIRTIO_BLK_S_IOERR
                            append((head, used))
                            continue
                    chain = flat3_chain(chain, _HDR.size, 1)
                head, out, in_, out_len, in_len = chain
                if out_len < _HDR.size or in_len < 1:
                    raise VirtqueueError("virtio-blk request without header or status byte")
                first = out[0]
                if len(first) < _HDR.size:
                    header, out_data = _gather(out, _HDR.size)
                    rtype, _reserved, sector = _HDR.unpack(header)
                elif len(first) == _HDR.size:
                    rtype, _reserved, sector = unpack_hdr(first)
                    out_data = out[1:]
                else:
                    rtype, _reserved, sector = unpack_hdr(first)
                    out_data = [first[_HDR.size:], *out[1:]]
                if rtype == VIRTIO_BLK_T_IN:
                    write = False
                    nbytes = in_len - 1
                    last = in_[-1]
                    data = in_[:-1]
                    if len(last) > 1:
                        data.append(last[:-1])
                elif rtype == VIRTIO_BLK_T_OUT and not readonly:
                    write = True
                    nbytes = out_len - _HDR.size
                    data = out_data
                    last = in_[-1]
                else:  # everything else in ring order after the data requests before it
                    if jobs:
                        self._finish_jobs(drv, jobs, waiting)
                    append((head, self.handle_request(Element(*chain))))
                    continue
                if nbytes & (SECTOR - 1) or sector > cap or nbytes >> 9 > cap - sector:
                    self._range_ok(sector, nbytes, "write" if write else "read")  # logs why
                    last[-1] = VIRTIO_BLK_S_IOERR
                    append((head, 1))
                    continue
                append((head, 1 if write else nbytes + 1))
                if not nbytes:
                    last[-1] = VIRTIO_BLK_S_OK
                elif pooled:
                    jobs.append((write, sector * SECTOR, data))
                    waiting.append(last)
                else:
                    try:
                        if write:
                            pwritev(sector * SECTOR, data)
                        else:
                            preadv(sector * SECTOR, data)
                        last[-1] = VIRTIO_BLK_S_OK
                    except OSError as exc:
                        log.error("virtio-blk %s: host I/O error: %s", backend.id, exc)
                        last[-1] = VIRTIO_BLK_S_IOERR
            if jobs:
                self._finish_jobs(drv, jobs, waiting)
        finally:
            # Everything executed goes back to the driver, also when a later chain of the
            # batch broke the device (the driver must reset it then anyway).
            if jobs:
                self._finish_jobs(backend.driver if backend else None, jobs, waiting)
            if done:
                q.push_batch(done)

    def _finish_jobs(self, drv: block.BlockDriver | None, jobs: list[BatchJob],
                     waiting: list[memoryview]) -> None:
        """Run the collected data requests and write their status bytes; empties both."""
        assert drv is not None
        batch, views = jobs[:], waiting[:]
        jobs.clear()  # taken, also if run_batch raises: the caller's finally must not rerun
        waiting.clear()
        results = drv.run_batch(batch)
        for status_view, result in zip(views, results, strict=True):
            if isinstance(result, OSError):
                log.error("virtio-blk %s: host I/O error: %s",
                          self.backend.id if self.backend else "?", result)
                status_view[-1] = VIRTIO_BLK_S_IOERR
            else:
                status_view[-1] = VIRTIO_BLK_S_OK

    def handle_request(self, elem: Element) -> int:
        """Execute one request; returns the byte count written to the driver's buffers."""
        if elem.out_len < _HDR.size or elem.in_len < 1:
            raise VirtqueueError("virtio-blk request without header or status byte")
        header, out_data = _gather(elem.out, _HDR.size)
        rtype, _reserved, sector = _HDR.unpack(header)
        in_data, status_view = _split_last(elem.in_)
        in_data_len = elem.in_len - 1
        status, written = self._execute(rtype, sector, out_data, elem.out_len - _HDR.size,
                                        in_data, in_data_len)
        status_view[0] = status
        return written + 1

    def _range_ok(self, sector: int, nbytes: int, what: str) -> bool:
        if nbytes % SECTOR:
            guest_log.debug("virtio-blk: %s length %d is not a multiple of 512", what, nbytes)
            return False
        if sector > self.capacity() or nbytes // SECTOR > self.capacity() - sector:
            guest_log.debug("virtio-blk: %s sector %d + %d bytes beyond the disk", what,
                            sector, nbytes)
            return False
        return True

    def _execute(self, rtype: int, sector: int, out_data: list[memoryview], out_len: int,
                 in_data: list[memoryview], in_len: int) -> tuple[int, int]:
        if self.backend is None:
            return VIRTIO_BLK_S_IOERR, 0
        try:
            if rtype == VIRTIO_BLK_T_IN:
                if not self._range_ok(sector, in_len, "read"):
                    return VIRTIO_BLK_S_IOERR, 0
                if in_len:
                    self._drv.preadv(sector * SECTOR, in_data)
                return VIRTIO_BLK_S_OK, in_len
            if rtype == VIRTIO_BLK_T_OUT:
                if self.readonly() or not self._range_ok(sector, out_len, "write"):
                    return VIRTIO_BLK_S_IOERR, 0
                if out_len:
                    self._drv.pwritev(sector * SECTOR, out_data)
                return VIRTIO_BLK_S_OK, 0
            if rtype == VIRTIO_BLK_T_FLUSH:
                if not self.readonly():
                    self._drv.flush()
                return VIRTIO_BLK_S_OK, 0
            if rtype == VIRTIO_BLK_T_GET_ID:
                if in_len < ID_BYTES:
                    return VIRTIO_BLK_S_IOERR, 0
                ident = self.serial.encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
                pos = 0
                for v in in_data:
                    n = min(len(v), ID_BYTES - pos)
                    v[:n] = ident[pos:pos + n]
                    pos += n
                    if pos == ID_BYTES:
                        break
                return VIRTIO_BLK_S_OK, ID_BYTES
            if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                return self._discard_or_zero(rtype, out_data, out_len), 0
        except OSError as exc:
            log.error("virtio-blk %s: host I/O error: %s", self.backend.id, exc)
            return VIRTIO_BLK_S_IOERR, 0
        guest_log.debug("virtio-blk: unsupported request type %d", rtype)
        return VIRTIO_BLK_S_UNSUPP, 0

    def _discard_or_zero(self, rtype: int, out_data: list[memoryview], out_len: int) -> int:
        discard = rtype == VIRTIO_BLK_T_DISCARD
        bit = VIRTIO_BLK_F_DISCARD if discard else VIRTIO_BLK_F_WRITE_ZEROES
        if not self.has_feature(bit):
            return VIRTIO_BLK_S_UNSUPP
        if out_len != _SEG.size:  # max_*_seg is 1
            return VIRTIO_BLK_S_UNSUPP if out_len % _SEG.size == 0 and out_len else \
                VIRTIO_BLK_S_IOERR
        seg, _ = _gather(out_data, _SEG.size)
        sector, num, flags = _SEG.unpack(seg)
        if flags & ~1 or (discard and flags) or num > MAX_DISCARD_SECTORS:
            return VIRTIO_BLK_S_UNSUPP
        if self.readonly() or not self._range_ok(sector, num * SECTOR, "discard"):
            return VIRTIO_BLK_S_IOERR
        try:
            if discard:
                if self.backend is not None and self.backend.discard_enabled:
                    self._drv.discard(sector * SECTOR, num * SECTOR)
            else:
                self._drv.write_zeroes(sector * SECTOR, num * SECTOR)
        except NotImplementedError:
            return VIRTIO_BLK_S_OK if discard else VIRTIO_BLK_S_UNSUPP
        return VIRTIO_BLK_S_OK


@register_type
class VirtioBlkPCI(VirtioPCI):
    """``-device virtio-blk-pci,drive=ID``: a virtio 1.x block device."""

    TYPE = "virtio-blk-pci"
    DEVICE_ID = 0x1040 + VIRTIO_ID_BLOCK
    SUBSYSTEM_ID = VIRTIO_ID_BLOCK
    CLASS_ID = 0x0100
    CATEGORY = "storage"
    DESC = "virtio 1.x block device"
    VDEV_TYPE = VirtioBlk

    drive = prop(STR, None, "ID of a -drive (if=none or if=virtio)")
    serial = prop(STR, "", "disk serial number (GET_ID)")
    num_queues = prop(UINT16, 1, "number of request queues")
    queue_size = prop(UINT16, 256, "size of each request queue (power of 2, <= 1024)")
    scsi = prop(BOOL, False, "SCSI pass-through (accepted only as off)")
    discard = prop(BOOL, True, "offer VIRTIO_BLK_F_DISCARD (with -drive discard=unmap)")
    write_zeroes = prop(BOOL, True, "offer VIRTIO_BLK_F_WRITE_ZEROES")

    def configure_vdev(self, vdev: Any) -> None:
        super().configure_vdev(vdev)
        if self.scsi:
            raise VfwError("virtio-blk-pci: scsi=on is not supported (virtio 1.x has no SCSI "
                           "pass-through)")
        if not self.drive:
            raise VfwError("virtio-blk-pci: drive property not set")
        backend = block.find_backend(self.drive)
        if backend is None:
            raise VfwError(f"virtio-blk-pci: Property 'virtio-blk-pci.drive' can't find value "
                           f"'{self.drive}'")
        if backend.attached is not None and backend.attached is not self:
            raise VfwError(f"virtio-blk-pci: Drive '{self.drive}' is already in use by "
                           f"another device")
        qs = self.queue_size
        if qs < 4 or qs > 1024 or qs & (qs - 1):
            raise VfwError(f"virtio-blk-pci: queue-size {qs} must be a power of 2 in 4..1024")
        if not 1 <= self.num_queues <= 64:
            raise VfwError(f"virtio-blk-pci: num-queues {self.num_queues} must be 1..64")
        backend.attached = self
        vdev.backend = backend
        vdev.serial = self.serial or backend.serial or ""
        vdev.num_queues = self.num_queues
        vdev.queue_size = qs
        vdev.offer_discard = self.discard
        vdev.offer_write_zeroes = self.write_zeroes
        if self.vectors == 2 and self.num_queues > 1:  # default: one per queue + config
            self.vectors = self.num_queues + 1

    def unrealize(self) -> None:
        super().unrealize()
        if self.vdev is not None:
            backend = getattr(self.vdev, "backend", None)
            if backend is not None and backend.attached is self:
                backend.attached = None
