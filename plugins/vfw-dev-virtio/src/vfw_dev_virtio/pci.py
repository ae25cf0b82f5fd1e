"""The virtio 1.x ("modern") PCI transport: ``virtio-pci``, base of ``virtio-*-pci``.

Layout (QEMU's): BAR 1 holds the MSI-X table and PBA; BAR 4 (64-bit prefetchable memory,
16 KiB) holds common config at 0x0000, ISR at 0x1000, device config at 0x2000 and the
notification area at 0x3000 (``notify_off_multiplier`` 4, queue N notifies at 4 * N). The
capability list has one vendor capability per structure plus the PCI-cfg access capability,
then MSI-X.

Each queue's notify address carries an ioeventfd (``MemoryRegion.add_eventfd``): under KVM the
kernel signals it without a vCPU exit and the main loop runs the queue; under any other
accelerator the same write reaches :meth:`_notify_write` through ordinary MMIO dispatch.
Interrupts go by MSI-X when the driver enabled it, else through INTx and the ISR. When the
accelerator offers irqfds (KVM), each MSI-X vector the device signals gets an MSI route behind
an eventfd (QEMU's kvm_virtio_pci_vector_use): a used-ring notification writes the eventfd and
the kernel injects the message. The route follows the guest's table entry (re-read before each
signal) and is released when the vector is masked; a masked vector goes through msix_notify so
its PBA bit is set, and the core re-sends it when the guest unmasks it.

The driver is never trusted: register accesses are bounds-checked, status changes that make
no sense are ignored, and a ring-protocol violation (:class:`VirtqueueError`) puts the device
into DEVICE_NEEDS_RESET: it stops processing until the driver resets it, and the VM runs on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar

from vfw.errors import VfwError
from vfw.main_loop import BQL, main_loop
from vfw.memory import MemoryRegion, memory_transaction
from vfw.pci import PCI_CAP_ID_VNDR, PCIDevice
from vfw.props import BOOL, INT32, STR, UINT32, prop
from vfw.qom import register_type, resolve_path

from .device import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VirtioDevice
from .virtqueue import VirtQueue, VirtqueueError

guest_log = logging.getLogger("vfw.guest_errors")
log = logging.getLogger("vfw.virtio")

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040

# Device status bits.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

# Capability cfg_type values.
CAP_COMMON = 1
CAP_NOTIFY = 2
CAP_ISR = 3
CAP_DEVICE = 4
CAP_PCI_CFG = 5

NO_VECTOR = 0xFFFF
MODERN_BAR = 4
MSIX_BAR = 1
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
MODERN_BAR_SIZE = 0x4000
NOTIFY_MULTIPLIER = 4
COMMON_SIZE = 0x38

# Common configuration registers: offset -> width.
_COMMON_REGS = {
    0x00: 4, 0x04: 4, 0x08: 4, 0x0C: 4, 0x10: 2, 0x12: 2, 0x14: 1, 0x15: 1, 0x16: 2, 0x18: 2,
    0x1A: 2, 0x1C: 2, 0x1E: 2, 0x20: 8, 0x28: 8, 0x30: 8,
}
_QUEUE_ADDR_REGS = {0x20: "desc_addr", 0x28: "avail_addr", 0x30: "used_addr"}

#: Feature bits the transport itself understands (the device adds its own).
_TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_INDIRECT_DESC
                       | 1 << VIRTIO_F_EVENT_IDX)


@register_type
class VirtioPCI(PCIDevice):
    """Base of the virtio PCI devices: the transport plus one virtio device (``vdev``)."""

    TYPE = "virtio-pci"
    ABSTRACT = True
    VENDOR_ID = VIRTIO_PCI_VENDOR_ID
    REVISION = 1
    INTERRUPT_PIN = 1
    SUBSYSTEM_VENDOR_ID = VIRTIO_PCI_VENDOR_ID
    #: The QOM type of the device this transport carries (set by subclasses).
    VDEV_TYPE: ClassVar[type[VirtioDevice]]

    vectors = prop(UINT32, 2, "number of MSI-X vectors (0: INTx only)")
    ioeventfd = prop(BOOL, True, "notify queues through an ioeventfd (KVM: no vCPU exit)")
    disable_legacy = prop(STR, "on", "vfw implements only the modern interface: on/auto")
    disable_modern = prop(BOOL, False, "must be off: vfw has no legacy virtio interface")
    indirect_desc = VirtioDevice.__dict__["indirect_desc"]
    event_idx = VirtioDevice.__dict__["event_idx"]
    bootindex = prop(INT32, -1, "boot order (accepted; vfw's firmware boots multiboot images)")

    def instance_init(self) -> None:
        self.vdev: VirtioDevice | None = None
        self.queues: list[VirtQueue] = []
        self._eventfds: list[int] = []
        #: vector -> (irqfd route, the address and data it was set up with).
        self._irqfds: dict[int, tuple[Any, int, int]] = {}
        self._irqfd_accel: Any = None  # resolved on the first MSI-X interrupt
        self._msi_sink_at_realize: Any = None
        #: MSI-X interrupts signalled through an irqfd / through msix_notify (tests, stats).
        self.irqfd_interrupts = 0
        self.msix_notify_interrupts = 0
        self._virtio_reset_state()

    def _virtio_reset_state(self) -> None:
        self.status = 0
        self.isr = 0
        self.dfselect = 0
        self.gfselect = 0
        self.guest_features = 0
        self.msix_config = NO_VECTOR
        self.queue_sel = 0
        self.config_generation = 0
        self.broken_reason: str | None = None

    # -- device-specific hooks -------------------------------------------------------------
    def configure_vdev(self, vdev: VirtioDevice) -> None:
        """Copy this proxy's device properties into ``vdev`` (subclasses extend)."""
        vdev.indirect_desc = self.indirect_desc
        vdev.event_idx = self.event_idx

    # -- realize ----------------------------------------------------------------------------
    def realize(self) -> None:
        if self.disable_modern:
            raise VfwError(f"{self.type_name}: disable-modern=on needs the legacy virtio "
                           f"interface, which vfw does not implement")
        if self.disable_legacy not in ("on", "auto"):
            raise VfwError(f"{self.type_name}: disable-legacy={self.disable_legacy}: vfw "
                           f"implements only the modern (virtio 1.x) interface")
        vdev = type(self).VDEV_TYPE()
        self.configure_vdev(vdev)
        vdev.attach(self)
        self.add_child("virtio-backend", vdev)
        vdev.set_realized(True)
        self.vdev = vdev
        self.queues = [VirtQueue(i, size) for i, size in enumerate(vdev.queue_sizes())]
        bus = self.pci_bus
        self._msi_sink_at_realize = bus.msi_sink if bus is not None else None
        if self.vectors > 2048:
            raise VfwError(f"{self.type_name}: vectors={self.vectors} is above 2048")
        self._build_bar()
        self._build_caps()
        if self.vectors:
            self.msix_init_exclusive_bar(self.vectors, MSIX_BAR)
            self.msix_mask_notifiers.append(self._msix_mask_changed)

    def _build_bar(self) -> None:
        bar = MemoryRegion.container(f"{self.type_name}-modern", MODERN_BAR_SIZE)
        self.common_region = MemoryRegion.io(
            "virtio-pci-common", REGION_SIZE, self._common_read, self._common_write,
            valid_sizes=(1, 8), impl_sizes=(1, 4))
        self.isr_region = MemoryRegion.io(
            "virtio-pci-isr", REGION_SIZE, self._isr_read, self._ignore_write,
            valid_sizes=(1, 4), impl_sizes=(1, 1))
        self.device_region = MemoryRegion.io(
            "virtio-pci-device", REGION_SIZE, self._device_read, self._device_write,
            valid_sizes=(1, 8), impl_sizes=(1, 4))
        self.notify_region = MemoryRegion.io(
            "virtio-pci-notify", REGION_SIZE, self._notify_read, self._notify_write,
            valid_sizes=(1, 4), impl_sizes=(1, 4))
        with memory_transaction():
            bar.add_subregion(COMMON_OFFSET, self.common_region)
            bar.add_subregion(ISR_OFFSET, self.isr_region)
            bar.add_subregion(DEVICE_OFFSET, self.device_region)
            bar.add_subregion(NOTIFY_OFFSET, self.notify_region)
        self.register_bar(MODERN_BAR, bar, "mem64", prefetchable=True)
        if self.ioeventfd:
            for q in self.queues:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._eventfds.append(fd)
                self.notify_region.add_eventfd(NOTIFY_MULTIPLIER * q.index, 0, None, fd)
                main_loop().add_reader(fd, self._eventfd_handler(fd, q.index))

    def _add_vendor_cap(self, cfg_type: int, offset: int, length: int, extra: int = 0) -> int:
        size = 16 + extra
        cap = self.add_capability(PCI_CAP_ID_VNDR, size)
        self.set_config(cap + 2, size, 1)
        self.set_config(cap + 3, cfg_type, 1)
        self.set_config(cap + 4, MODERN_BAR, 1)
        self.set_config(cap + 8, offset, 4)
        self.set_config(cap + 12, length, 4)
        return cap

    def _build_caps(self) -> None:
        self._add_vendor_cap(CAP_COMMON, COMMON_OFFSET, REGION_SIZE)
        self._add_vendor_cap(CAP_ISR, ISR_OFFSET, REGION_SIZE)
        assert self.vdev is not None
        self._add_vendor_cap(CAP_DEVICE, DEVICE_OFFSET, REGION_SIZE)
        notify = self._add_vendor_cap(CAP_NOTIFY, NOTIFY_OFFSET, REGION_SIZE, 4)
        self.set_config(notify + 16, NOTIFY_MULTIPLIER, 4)
        cfg = self._add_vendor_cap(CAP_PCI_CFG, 0, 0, 4)
        self.set_config(cfg + 4, 0, 1)
        self.pci_cfg_cap = cfg
        self.set_wmask(cfg + 4, 0xFF, 1)        # bar
        self.set_wmask(cfg + 8, 0xFFFFFFFF, 4)  # offset
        self.set_wmask(cfg + 12, 0xFFFFFFFF, 4)  # length
        self.set_wmask(cfg + 16, 0xFFFFFFFF, 4)  # pci_cfg_data

    def unrealize(self) -> None:
        self._release_irqfds()
        for q, fd in zip(self.queues, self._eventfds, strict=False):
            main_loop().remove_reader(fd)
            try:
                self.notify_region.del_eventfd(NOTIFY_MULTIPLIER * q.index, 0, None, fd)
            except ValueError:
                pass
            os.close(fd)
        self._eventfds = []
        if self.vdev is not None:
            self.vdev.set_realized(False)

    def reset(self) -> None:
        super().reset()
        self._virtio_device_reset()

    def _virtio_device_reset(self) -> None:
        self._release_irqfds()
        self._virtio_reset_state()
        for q in self.queues:
            q.reset()
        self._deassert_intx()
        if self.vdev is not None:
            self.vdev.virtio_reset()

    # -- the transport API devices use -------------------------------------------------------
    def virtqueue(self, index: int) -> VirtQueue:
        return self.queues[index]

    def driver_running(self) -> bool:
        return bool(self.status & STATUS_DRIVER_OK) and self.broken_reason is None

    def set_broken(self, why: str) -> None:
        """The driver broke the protocol: DEVICE_NEEDS_RESET, stop processing, tell it."""
        guest_log.warning("%s: %s; device needs reset", self.type_name, why)
        if self.broken_reason is not None:
            return
        self.broken_reason = why
        self.status |= STATUS_NEEDS_RESET
        if self.status & STATUS_DRIVER_OK:
            self.notify_config()

    def requeue(self, index: int) -> None:
        """Come back to queue ``index`` from the main loop (a device that stopped after a
        bounded batch so that one busy queue cannot starve everything else)."""
        if index < len(self._eventfds):
            os.write(self._eventfds[index], (1).to_bytes(8, "little"))
        else:
            from vfw.timer import CLOCK_VIRTUAL, Timer

            Timer(CLOCK_VIRTUAL, lambda: self._kick(index)).mod_in(0)

    def notify_queue(self, index: int) -> None:
        """Interrupt the driver for queue ``index`` if it asked for one."""
        q = self.queues[index]
        if q.should_notify():
            self._interrupt(q.msix_vector, 1)

    def notify_config(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        self._interrupt(self.msix_config, 2)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        if self.msix_enabled():
            if vector != NO_VECTOR:
                self._msix_signal(vector)
            return
        self.isr |= isr_bit
        self.pci_set_irq(1)

    # -- MSI-X through irqfds (KVM) ---------------------------------------------------------
    def _msix_signal(self, vector: int) -> None:
        if 0 <= vector < self.msix_entries and not self.msix_is_masked(vector):
            fd = self._irqfd_for(vector)
            if fd is not None:
                os.eventfd_write(fd, 1)
                self.irqfd_interrupts += 1
                return
        self.msix_notify(vector)  # sent, or its PBA bit set while masked
        self.msix_notify_interrupts += 1

    def _accel_with_irqfd(self) -> Any:
        if self._irqfd_accel is None:
            machine = resolve_path("/machine")
            accel = getattr(machine, "accel", None)
            supported = getattr(accel, "irqfd_supported", None)
            self._irqfd_accel = accel if supported is not None and supported() else False
        return self._irqfd_accel or None

    def _msi_sink_is_accel(self, accel: Any) -> bool:
        """Only when MSIs go straight to the accelerator (the bus's sink is the one the board
        installed, which forwards to ``accel.send_msi``): an irqfd would bypass anything put in
        between since (a remapping unit, a test's probe)."""
        bus = self.pci_bus
        if bus is None or bus.msi_sink is not self._msi_sink_at_realize:
            return False
        sink = bus.msi_sink
        machine = resolve_path("/machine")
        return bool(sink == accel.send_msi or getattr(machine, "msi_sink", None) == accel.send_msi)

    def _irqfd_for(self, vector: int) -> int | None:
        """The eventfd of ``vector``'s route, set up or updated to the table entry's current
        message (the guest may rewrite an unmasked entry); None: use msix_notify."""
        accel = self._accel_with_irqfd()
        if accel is None or not self._msi_sink_is_accel(accel):
            return None
        address, data = self.msix_get_message(vector)
        entry = self._irqfds.get(vector)
        if entry is None:
            route = accel.add_msi_irqfd(address, data)
            if route is None:
                return None
            self._irqfds[vector] = (route, address, data)
        else:
            route = entry[0]
            if entry[1:] != (address, data):
                accel.update_msi_irqfd(route, address, data)
                self._irqfds[vector] = (route, address, data)
        fd = int(route.fd)
        if fd < 0:  # the accelerator closed it (VM torn down)
            del self._irqfds[vector]
            return None
        return fd

    def _msix_mask_changed(self, vector: int, masked: bool) -> None:
        """A masked vector must not fire: drop its route (the core sets its pending bit and
        re-sends on unmask; the next signal sets up a route with the message then current)."""
        if masked:
            self._release_irqfd(vector)

    def _release_irqfd(self, vector: int) -> None:
        entry = self._irqfds.pop(vector, None)
        if entry is not None and self._irqfd_accel:
            self._irqfd_accel.remove_msi_irqfd(entry[0])

    def _release_irqfds(self) -> None:
        for vector in list(self._irqfds):
            self._release_irqfd(vector)

    # -- notifications ----------------------------------------------------------------------
    def _eventfd_handler(self, fd: int, index: int) -> Callable[[], None]:
        return lambda: self._eventfd_ready(fd, index)

    def _eventfd_ready(self, fd: int, index: int) -> None:
        try:
            os.read(fd, 8)
        except BlockingIOError:
            return
        with BQL:
            self._kick(index)

    def _notify_write(self, offset: int, value: int, size: int) -> None:
        if offset % NOTIFY_MULTIPLIER:
            guest_log.debug("%s: notify write at unaligned offset 0x%x", self.type_name, offset)
            return
        index = offset // NOTIFY_MULTIPLIER
        if index >= len(self.queues):
            guest_log.debug("%s: notify of queue %d (has %d)", self.type_name, index,
                            len(self.queues))
            return
        self._kick(index)

    def _notify_read(self, offset: int, size: int) -> int:
        return 0

    def _kick(self, index: int) -> None:
        if not self.driver_running() or not self.bus_master_enabled():
            return
        q = self.queues[index]
        if not q.ready:
            return
        assert self.vdev is not None
        try:
            self.vdev.handle_queue(index)
        except VirtqueueError as exc:
            self.set_broken(str(exc))

    # -- ISR and device config --------------------------------------------------------------
    def _isr_read(self, offset: int, size: int) -> int:
        if offset:
            return 0
        value = self.isr
        self.isr = 0
        self.pci_set_irq(0)
        return value

    def _ignore_write(self, offset: int, value: int, size: int) -> None:
        guest_log.debug("%s: write to read-only virtio register 0x%x", self.type_name, offset)

    def _device_read(self, offset: int, size: int) -> int:
        assert self.vdev is not None
        data = self.vdev.config_bytes()
        if offset + size > len(data):
            guest_log.debug("%s: device config read 0x%x+%d beyond %d bytes", self.type_name,
                            offset, size, len(data))
            return 0
        return int.from_bytes(data[offset:offset + size], "little")

    def _device_write(self, offset: int, value: int, size: int) -> None:
        assert self.vdev is not None
        if offset + size > len(self.vdev.config_bytes()):
            guest_log.debug("%s: device config write 0x%x beyond the config", self.type_name,
                            offset)
            return
        self.vdev.config_write(offset, value, size)

    # -- common config ----------------------------------------------------------------------
    def _sel_queue(self) -> VirtQueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _common_value(self, reg: int) -> int:
        q = self._sel_queue()
        assert self.vdev is not None
        if reg == 0x00:
            return self.dfselect
        if reg == 0x04:
            return (self._offered_features() >> (32 * self.dfselect)) & 0xFFFFFFFF \
                if self.dfselect < 2 else 0
        if reg == 0x08:
            return self.gfselect
        if reg == 0x0C:
            return (self.guest_features >> (32 * self.gfselect)) & 0xFFFFFFFF \
                if self.gfselect < 2 else 0
        if reg == 0x10:
            return self.msix_config
        if reg == 0x12:
            return len(self.queues)
        if reg == 0x14:
            return self.status
        if reg == 0x15:
            return self.config_generation
        if reg == 0x16:
            return self.queue_sel
        if q is None:
            return NO_VECTOR if reg == 0x1A else 0
        if reg == 0x18:
            return q.size
        if reg == 0x1A:
            return q.msix_vector
        if reg == 0x1C:
            return 1 if q.enabled else 0
        if reg == 0x1E:
            return q.index
        return int(getattr(q, _QUEUE_ADDR_REGS[reg]))

    def _common_read(self, offset: int, size: int) -> int:
        for reg, width in _COMMON_REGS.items():
            if reg <= offset < reg + width:
                if offset + size > reg + width:
                    break
                shift = 8 * (offset - reg)
                return (self._common_value(reg) >> shift) & ((1 << (8 * size)) - 1)
        guest_log.debug("%s: common config read 0x%x size %d", self.type_name, offset, size)
        return 0

    def _offered_features(self) -> int:
        assert self.vdev is not None
        return self.vdev.host_features()

    def _common_write(self, offset: int, value: int, size: int) -> None:
        if offset in _QUEUE_ADDR_REGS or offset - 4 in _QUEUE_ADDR_REGS:
            self._queue_addr_write(offset, value, size)
            return
        width = _COMMON_REGS.get(offset)
        if width is None or size != width:
            guest_log.debug("%s: common config write 0x%x size %d ignored", self.type_name,
                            offset, size)
            return
        q = self._sel_queue()
        if offset == 0x00:
            self.dfselect = value
        elif offset == 0x08:
            self.gfselect = value
        elif offset == 0x0C:
            if self.status & STATUS_FEATURES_OK or self.gfselect >= 2:
                guest_log.debug("%s: driver_feature write ignored", self.type_name)
                return
            shift = 32 * self.gfselect
            self.guest_features = (self.guest_features & ~(0xFFFFFFFF << shift)) | value << shift
        elif offset == 0x10:
            self.msix_config = value if value < self.msix_entries else NO_VECTOR
        elif offset == 0x14:
            self._set_status(value)
        elif offset == 0x16:
            self.queue_sel = value
        elif q is None or offset in (0x04, 0x12, 0x15, 0x1E):
            guest_log.debug("%s: write 0x%x to read-only register/absent queue 0x%x",
                            self.type_name, value, offset)
        elif offset == 0x1A:
            q.msix_vector = value if value < self.msix_entries else NO_VECTOR
        elif q.enabled:
            guest_log.debug("%s: queue %d reconfigured while enabled; ignored",
                            self.type_name, q.index)
        elif offset == 0x18:
            q.size = value
        elif offset == 0x1C and value == 1:  # 0 is not allowed (no queue reset)
            self._enable_queue(q)

    def _queue_addr_write(self, offset: int, value: int, size: int) -> None:
        q = self._sel_queue()
        if q is None or q.enabled:
            guest_log.debug("%s: queue address write ignored (queue %d)", self.type_name,
                            self.queue_sel)
            return
        base = offset if offset in _QUEUE_ADDR_REGS else offset - 4
        attr = _QUEUE_ADDR_REGS[base]
        old = int(getattr(q, attr))
        if size == 8 and offset == base:
            new = value
        elif size == 4:
            shift = 32 * (offset - base) // 4
            new = (old & ~(0xFFFFFFFF << shift)) | (value & 0xFFFFFFFF) << shift
        else:
            guest_log.debug("%s: queue address write of size %d ignored", self.type_name, size)
            return
        setattr(q, attr, new)

    def _enable_queue(self, q: VirtQueue) -> None:
        bus = self.pci_bus
        if bus is None or bus.dma_as is None:
            return
        why = q.enable(bus.dma_as, event_idx=bool(self.guest_features >> VIRTIO_F_EVENT_IDX & 1),
                       indirect=bool(self.guest_features >> VIRTIO_F_INDIRECT_DESC & 1))
        if why is not None:
            self.set_broken(f"refusing to enable {why}")

    def _set_status(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self._virtio_device_reset()
            return
        value &= ~STATUS_NEEDS_RESET
        old = self.status
        if value & old & 0xBF != old & 0xBF:
            guest_log.debug("%s: status 0x%x -> 0x%x clears bits; ignored", self.type_name,
                            old, value)
            return
        assert self.vdev is not None
        if value & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
            offered = self._offered_features()
            if self.guest_features & ~offered or not self.guest_features >> VIRTIO_F_VERSION_1 & 1:
                guest_log.warning("%s: driver features 0x%x not acceptable (offered 0x%x)",
                                  self.type_name, self.guest_features, offered)
                value &= ~STATUS_FEATURES_OK
            else:
                self.vdev.set_features(self.guest_features)
        if value & STATUS_DRIVER_OK and not value & STATUS_FEATURES_OK:
            guest_log.debug("%s: DRIVER_OK without FEATURES_OK; ignored", self.type_name)
            value &= ~STATUS_DRIVER_OK
        self.status = value | (old & STATUS_NEEDS_RESET)
        if value & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            self.vdev.driver_ok()
            for q in self.queues:  # requests made available before DRIVER_OK
                if q.ready:
                    self._kick(q.index)

    # -- PCI configuration access capability -------------------------------------------------
    def _cfg_window(self) -> tuple[int, int] | None:
        cap = self.pci_cfg_cap
        bar = self.get_config(cap + 4, 1)
        off = self.get_config(cap + 8, 4)
        length = self.get_config(cap + 12, 4)
        if bar != MODERN_BAR or length not in (1, 2, 4) or off % length \
                or off + length > MODERN_BAR_SIZE:
            return None
        return off, length

    def _bar_access(self, off: int, length: int, value: int | None) -> int:
        for base, region in ((COMMON_OFFSET, self.common_region), (ISR_OFFSET, self.isr_region),
                             (DEVICE_OFFSET, self.device_region),
                             (NOTIFY_OFFSET, self.notify_region)):
            if base <= off < base + REGION_SIZE:
                ops = region.ops
                assert ops is not None
                if value is None:
                    return int(ops.read(off - base, length))
                ops.write(off - base, value, length)
        return 0

    def config_read(self, offset: int, size: int) -> int:
        cap = getattr(self, "pci_cfg_cap", 0)
        if cap and offset == cap + 16 and size in (1, 2, 4):
            window = self._cfg_window()
            if window is not None:
                value = self._bar_access(window[0], window[1], None)
                self.set_config(cap + 16, value, 4)
        return super().config_read(offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        super().config_write(offset, value, size)
        cap = getattr(self, "pci_cfg_cap", 0)
        if cap and offset == cap + 16 and size in (1, 2, 4):
            window = self._cfg_window()
            if window is not None:
                self._bar_access(window[0], window[1], value & ((1 << (8 * window[1])) - 1))

