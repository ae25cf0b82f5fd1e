"""QEMU's firmware configuration interface (fw_cfg), I/O-port flavour (``fw_cfg_io``).

Firmware (SeaBIOS, OVMF) and Linux's qemu_fw_cfg driver read configuration blobs by key:
the guest writes a 16-bit key to the selector port (0x510) and reads the blob a byte at a time
from the data port (0x511); reads past the end give 0. Keys from 0x20 are named files listed in
the directory at key 0x19. With DMA (port 0x514) the guest writes the guest-physical address
of a ``FWCfgDmaAccess {control BE32, length BE32, address BE64}`` (high half, then the low half,
which starts the transfer); the result goes back into ``control`` (0, or the error bit).

Every guest-supplied address and length is checked against guest RAM through the DMA address
space the board provides (``dma_as``); a bad one sets the error bit and nothing else happens.
Writes through DMA are refused (error), as nothing here is writable.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable

from vfw.errors import GuestMemoryError, VfwError
from vfw.memory import AddressSpace, MemoryRegion
from vfw.props import BOOL, UINT16, UINT32, prop
from vfw.qom import register_type

from .isa import ISADevice

__all__ = ["FWCfgIO", "FWCfgKey"]

guest_log = logging.getLogger("vfw.guest_errors")


class FWCfgKey(enum.IntEnum):
    """The standard keys (QEMU's FW_CFG_*)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    KERNEL_CMDLINE = 0x09
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    KERNEL_ENTRY = 0x10
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18
    FILE_DIR = 0x19


FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_FILE_DIR = FWCfgKey.SIGNATURE, FWCfgKey.ID, FWCfgKey.FILE_DIR
#: The first file key.
FW_CFG_FILE_FIRST = 0x20
#: x86's arch-local keys (ACPI tables, SMBIOS, IRQ0 override, e820, HPET) have this bit.
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ENTRY_MASK = 0x3FFF
FW_CFG_MAX_FILE_PATH = 56

#: ID bits: the port interface, and DMA.
FW_CFG_VERSION = 0x01
FW_CFG_VERSION_DMA = 0x02

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10
#: What an 8-byte read of the DMA port returns, big-endian.
DMA_SIGNATURE = b"QEMU CFG"

_DMA_ACCESS = struct.Struct(">IIQ")
_FILE_ENTRY = struct.Struct(f">IHH{FW_CFG_MAX_FILE_PATH}s")
_ZERO_CHUNK = bytes(64 * 1024)
_ZERO_VIEW = memoryview(_ZERO_CHUNK)


def _bswap(value: int, size: int) -> int:
    return int.from_bytes(value.to_bytes(size, "little"), "big")


@register_type
class FWCfgIO(ISADevice):
    """fw_cfg at ports 0x510 (selector) / 0x511 (data) and, with DMA, 0x514."""

    TYPE = "fw_cfg_io"
    USER_CREATABLE = False
    DESC = "QEMU firmware configuration interface (I/O ports)"

    iobase = prop(UINT32, 0x510, "selector/data port base")
    dma_iobase = prop(UINT32, 0x514, "DMA address port")
    dma_enabled = prop(BOOL, True, "offer the DMA interface")
    file_slots = prop(UINT16, 0x20, "number of file keys", name="x-file-slots")

    def instance_init(self) -> None:
        #: Guest memory as fw_cfg DMA sees it; the board sets it (DMA fails without it).
        self.dma_as: AddressSpace | None = None
        # Entries: [generic, arch-local], key (masked) -> data.
        self._entries: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self._select_callbacks: dict[tuple[int, int], Callable[[], None]] = {}
        self._files: dict[str, int] = {}  # name -> key, in insertion order
        self._cur: int | None = None
        self._offset = 0
        self._dma_addr = 0
        self.add_bytes(FW_CFG_SIGNATURE, b"QEMU")
        self.add_i32(FW_CFG_ID, FW_CFG_VERSION)
        self._update_file_dir()

    # -- configuration API (board) ---------------------------------------------------------
    @property
    def max_entries(self) -> int:
        return FW_CFG_FILE_FIRST + int(self.file_slots)

    def _slot(self, key: int) -> tuple[int, int]:
        index = key & FW_CFG_ENTRY_MASK
        if not 0 <= key <= 0xFFFF or key & FW_CFG_WRITE_CHANNEL or index >= self.max_entries:
            raise VfwError(f"fw_cfg: invalid key 0x{key:x}")
        return (1 if key & FW_CFG_ARCH_LOCAL else 0), index

    def add_bytes(self, key: int, data: bytes) -> None:
        """Set the blob of ``key`` (replacing any earlier one)."""
        table, index = self._slot(key)
        self._entries[table][index] = bytes(data)

    def add_string(self, key: int, text: str) -> None:
        """A NUL-terminated string (QEMU's fw_cfg_add_string)."""
        self.add_bytes(key, text.encode() + b"\0")

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value & 0xFFFF))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value & 0xFFFFFFFF))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def get_bytes(self, key: int) -> bytes | None:
        table, index = self._slot(key)
        return self._entries[table].get(index)

    def add_file(self, name: str, data: bytes,
                 select_callback: Callable[[], None] | None = None) -> int:
        """Add the named file; returns its key (0x20 upward, in the order files are added; the
        directory lists them sorted by name, as QEMU's does)."""
        encoded = name.encode()
        if len(encoded) >= FW_CFG_MAX_FILE_PATH:
            raise VfwError(f"fw_cfg: file name too long (max {FW_CFG_MAX_FILE_PATH - 1}"
                           f" bytes): {name}")
        if name in self._files:
            raise VfwError(f"duplicate fw_cfg file name: {name}")
        if len(self._files) >= self.file_slots:
            raise VfwError(f"fw_cfg: no free file slot for {name}"
                           f" (x-file-slots={self.file_slots})")
        key = FW_CFG_FILE_FIRST + len(self._files)
        self._files[name] = key
        self.add_bytes(key, data)
        if select_callback is not None:
            self._select_callbacks[self._slot(key)] = select_callback
        self._update_file_dir()
        return key

    def modify_file(self, name: str, data: bytes) -> int:
        """Replace a file's contents (adding it if new); returns its key."""
        key = self._files.get(name)
        if key is None:
            return self.add_file(name, data)
        self.add_bytes(key, data)
        self._update_file_dir()
        return key

    def file_key(self, name: str) -> int | None:
        return self._files.get(name)

    def _update_file_dir(self) -> None:
        entries = sorted(self._files.items())
        blob = bytearray(struct.pack(">I", len(entries)))
        for name, key in entries:
            size = len(self._entries[0].get(key & FW_CFG_ENTRY_MASK, b""))
            blob += _FILE_ENTRY.pack(size, key, 0, name.encode())
        self._entries[0][FW_CFG_FILE_DIR] = bytes(blob)

    # -- life cycle ------------------------------------------------------------------------------
    def realize(self) -> None:
        self.add_i32(FW_CFG_ID, FW_CFG_VERSION | (FW_CFG_VERSION_DMA if self.dma_enabled
                                                   else 0))
        comb = MemoryRegion.io("fwcfg", 2, self._comb_read, self._comb_write,
                               valid_sizes=(1, 2), impl_sizes=(1, 2))
        self.isa_register_io(self.iobase, comb)
        if self.dma_enabled:
            dma = MemoryRegion.io("fwcfg.dma", 8, self._dma_read, self._dma_write,
                                  valid_sizes=(1, 8), impl_sizes=(1, 8))
            self.isa_register_io(self.dma_iobase, dma)

    def reset(self) -> None:
        self._dma_addr = 0
        self.select(FW_CFG_SIGNATURE)

    # -- the traditional interface ------------------------------------------------------------
    def select(self, key: int) -> bool:
        """Select ``key`` and rewind; False (and nothing selected) for an unknown key."""
        self._offset = 0
        key &= 0xFFFF
        if (key & FW_CFG_ENTRY_MASK) >= self.max_entries:
            self._cur = None
            return False
        self._cur = key
        callback = self._select_callbacks.get(
            (1 if key & FW_CFG_ARCH_LOCAL else 0, key & FW_CFG_ENTRY_MASK))
        if callback is not None:
            callback()
        return True

    def _current(self) -> bytes | None:
        if self._cur is None:
            return None
        return self._entries[1 if self._cur & FW_CFG_ARCH_LOCAL else 0].get(
            self._cur & FW_CFG_ENTRY_MASK)

    def read_data(self) -> int:
        """One byte of the selected blob; 0 past its end or with nothing selected."""
        data = self._current()
        if data is None or self._offset >= len(data):
            return 0
        value = data[self._offset]
        self._offset += 1
        return value

    def _comb_read(self, offset: int, size: int) -> int:
        if offset == 1 and size == 1:
            return self.read_data()
        guest_log.debug("fw_cfg: invalid read of size %d at offset %d", size, offset)
        return (1 << (8 * size)) - 1

    def _comb_write(self, offset: int, value: int, size: int) -> None:
        if offset == 0 and size == 2:
            self.select(value)
        elif offset == 1 and size == 1:
            guest_log.debug("fw_cfg: write to the data port ignored")
        else:
            guest_log.debug("fw_cfg: invalid write of size %d at offset %d", size, offset)

    # -- DMA -------------------------------------------------------------------------------------
    def _dma_read(self, offset: int, size: int) -> int:
        chunk = DMA_SIGNATURE[offset:offset + size].ljust(size, b"\0")
        return int.from_bytes(chunk, "little")

    def _dma_write(self, offset: int, value: int, size: int) -> None:
        # The register is big-endian: the guest's value arrives byte-swapped.
        if size == 4 and offset == 0:
            self._dma_addr = _bswap(value, 4) << 32
        elif size == 4 and offset == 4:
            self._dma_addr |= _bswap(value, 4)
            self.dma_transfer()
        elif size == 8 and offset == 0:
            self._dma_addr = _bswap(value, 8)
            self.dma_transfer()
        else:
            guest_log.debug("fw_cfg: invalid DMA register write of size %d at offset %d",
                            size, offset)

    def dma_transfer(self) -> None:
        """Run the FWCfgDmaAccess at the address the guest wrote (QEMU's
        fw_cfg_dma_transfer); every guest mistake ends as the error bit or a log line."""
        addr, self._dma_addr = self._dma_addr, 0
        space = self.dma_as
        if space is None:
            guest_log.warning("fw_cfg: DMA requested but the board gave no DMA address space")
            return
        try:
            control, length, target = _DMA_ACCESS.unpack(space.read_bytes(addr, 16))
        except GuestMemoryError as exc:
            guest_log.debug("fw_cfg: DMA descriptor at 0x%x unreadable: %s", addr, exc)
            self._dma_status(space, addr, DMA_CTL_ERROR)
            return
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        if control & DMA_CTL_READ:
            mode = "read"
        elif control & DMA_CTL_WRITE:
            mode = "write"
        elif control & DMA_CTL_SKIP:
            mode = "skip"
        else:
            mode, length = "none", 0
        status = 0
        data = self._current()
        while length > 0 and not status & DMA_CTL_ERROR:
            if data is None or self._offset >= len(data):
                n = length
                if mode == "read":
                    status |= self._dma_zero(space, target, n)
                elif mode == "write":
                    status |= DMA_CTL_ERROR
            else:
                n = min(length, len(data) - self._offset)
                if mode == "read":
                    try:
                        space.write_bytes(target, data[self._offset:self._offset + n])
                    except GuestMemoryError as exc:
                        guest_log.debug("fw_cfg: DMA read into 0x%x+0x%x failed: %s",
                                        target, n, exc)
                        status |= DMA_CTL_ERROR
                elif mode == "write":
                    status |= DMA_CTL_ERROR  # nothing here is writable
                self._offset += n
            target = (target + n) & 0xFFFFFFFFFFFFFFFF
            length -= n
        self._dma_status(space, addr, status)

    @staticmethod
    def _dma_zero(space: AddressSpace, target: int, length: int) -> int:
        """Zero guest RAM (a read past the end of a blob); the error bit if it is not RAM."""
        try:
            views = space.ram_views(target, length)
        except GuestMemoryError as exc:
            guest_log.debug("fw_cfg: DMA zero-fill of 0x%x+0x%x failed: %s", target, length, exc)
            return DMA_CTL_ERROR
        for view in views:
            for i in range(0, len(view), len(_ZERO_CHUNK)):
                n = min(len(_ZERO_CHUNK), len(view) - i)
                view[i:i + n] = _ZERO_VIEW[:n]
        return 0

    @staticmethod
    def _dma_status(space: AddressSpace, addr: int, status: int) -> None:
        try:
            space.write_bytes(addr, struct.pack(">I", status))
        except GuestMemoryError as exc:
            guest_log.debug("fw_cfg: cannot write DMA status to 0x%x: %s", addr, exc)
