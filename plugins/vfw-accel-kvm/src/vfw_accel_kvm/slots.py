"""Memory listeners: guest RAM/ROM sections become KVM memory slots, ioeventfds become
KVM_IOEVENTFD registrations (QEMU's kvm_memory_listener / kvm_io_listener).

Everything not in a slot (I/O regions, unassigned space) makes KVM exit to userspace with
KVM_EXIT_MMIO, which the vCPU threads dispatch through ``machine.address_space_memory``.
"""

from __future__ import annotations

import logging
import mmap
import os

from vfw.errors import AccelError
from vfw.memory import MemoryListener, Section

from . import kvm_api as k

log = logging.getLogger("vfw.accel.kvm")

PAGE = mmap.PAGESIZE


class Slot:
    """One KVM memory slot, as registered."""

    __slots__ = ("flags", "gpa", "host", "id", "size")

    def __init__(self, slot_id: int, gpa: int, size: int, host: int, flags: int):
        self.id, self.gpa, self.size, self.host, self.flags = slot_id, gpa, size, host, flags

    def __repr__(self) -> str:
        ro = " ro" if self.flags & k.KVM_MEM_READONLY else ""
        return f"Slot({self.id}: 0x{self.gpa:x}+0x{self.size:x}{ro})"


class KvmMemoryListener(MemoryListener):
    """Keeps KVM's memory slots equal to the RAM/ROM sections of an address space."""

    def __init__(self, vm_fd: int, readonly_mem: bool, max_slots: int):
        self.vm_fd = vm_fd
        self.readonly_mem = readonly_mem
        self.max_slots = max_slots
        #: section -> slot (the page-aligned part of the section).
        self.slots: dict[Section, Slot] = {}
        self._free: list[int] = []
        self._next_id = 0
        self._warned_rom = False

    def _alloc_id(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next_id >= self.max_slots:
            raise AccelError(f"kvm: out of memory slots ({self.max_slots} in use)")
        self._next_id += 1
        return self._next_id - 1

    def _set(self, slot_id: int, flags: int, gpa: int, size: int, host: int) -> None:
        region = k.kvm_userspace_memory_region(slot=slot_id, flags=flags, guest_phys_addr=gpa,
                                               memory_size=size, userspace_addr=host)
        try:
            k.ioctl(self.vm_fd, k.KVM_SET_USER_MEMORY_REGION, region)
        except OSError as exc:
            what = "deleting" if size == 0 else f"registering 0x{gpa:x}+0x{size:x}"
            raise AccelError(f"kvm: error {what} as memory slot {slot_id}: "
                             f"{os.strerror(exc.errno or 0)}") from None

    def region_add(self, section: Section) -> None:
        # KVM maps whole pages: trim an unaligned section (the rest exits as MMIO, which the
        # address space still serves from RAM).
        start = -(-section.start // PAGE) * PAGE
        end = section.end // PAGE * PAGE
        host = section.host_address + (start - section.start)
        if end <= start or host % PAGE:
            log.debug("kvm: RAM section %r is not page aligned; left to MMIO exits", section)
            return
        flags = 0
        if section.readonly:
            if self.readonly_mem:
                flags |= k.KVM_MEM_READONLY
            elif not self._warned_rom:
                self._warned_rom = True
                log.warning("kvm: no KVM_CAP_READONLY_MEM; ROM is mapped writable")
        slot = Slot(self._alloc_id(), start, end - start, host, flags)
        try:
            self._set(slot.id, slot.flags, slot.gpa, slot.size, slot.host)
        except AccelError:
            self._free.append(slot.id)
            raise
        self.slots[section] = slot

    def region_del(self, section: Section) -> None:
        slot = self.slots.pop(section, None)
        if slot is None:
            return
        self._set(slot.id, 0, slot.gpa, 0, slot.host)
        self._free.append(slot.id)

    def eventfd_add(self, addr: int, size: int, data: int | None, fd: int) -> None:
        ioeventfd(self.vm_fd, addr, size, data, fd, pio=False, assign=True)

    def eventfd_del(self, addr: int, size: int, data: int | None, fd: int) -> None:
        ioeventfd(self.vm_fd, addr, size, data, fd, pio=False, assign=False)

    def slot_for(self, gpa: int) -> Slot | None:
        for slot in self.slots.values():
            if slot.gpa <= gpa < slot.gpa + slot.size:
                return slot
        return None

    def remove_all(self) -> None:
        for section in list(self.slots):
            self.region_del(section)


class KvmIoListener(MemoryListener):
    """Port-I/O ioeventfds (the I/O address space has no RAM to map)."""

    def __init__(self, vm_fd: int):
        self.vm_fd = vm_fd

    def eventfd_add(self, addr: int, size: int, data: int | None, fd: int) -> None:
        ioeventfd(self.vm_fd, addr, size, data, fd, pio=True, assign=True)

    def eventfd_del(self, addr: int, size: int, data: int | None, fd: int) -> None:
        ioeventfd(self.vm_fd, addr, size, data, fd, pio=True, assign=False)


def ioeventfd(vm_fd: int, addr: int, size: int, data: int | None, fd: int, *, pio: bool,
              assign: bool) -> None:
    """Register (or, with ``assign=False``, remove) an ioeventfd with KVM."""
    flags = (k.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (
        0 if assign else k.KVM_IOEVENTFD_FLAG_DEASSIGN)
    if data is not None:
        flags |= k.KVM_IOEVENTFD_FLAG_DATAMATCH
    arg = k.kvm_ioeventfd(datamatch=data or 0, addr=addr, len=size, fd=fd, flags=flags)
    try:
        k.ioctl(vm_fd, k.KVM_IOEVENTFD, arg)
    except OSError as exc:
        space = "pio" if pio else "mmio"
        what = "adding" if assign else "removing"
        message = (f"kvm: error {what} ioeventfd ({space} 0x{addr:x} size {size}): "
                   f"{os.strerror(exc.errno or 0)}")
        if not assign:  # the fd may already be gone with its device; not fatal
            log.warning("%s", message)
            return
        raise AccelError(message) from None
