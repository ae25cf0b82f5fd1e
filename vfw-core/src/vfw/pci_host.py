"""PCI configuration mechanism #1 for host bridges (QEMU's hw/pci/pci_host.c).

The guest writes ``enable(31) | bus(23:16) | devfn(15:8) | register(7:2)`` as a dword to the
address port (0xcf8) and then accesses the dword register through the data window
(0xcfc-0xcff) with byte, word or dword accesses at the window offset. A host bridge model
owns a :class:`PCIHostState` and the board maps its two regions in the I/O space.
"""

from __future__ import annotations

import logging

from .memory import MemoryRegion
from .pci import PCIBus

__all__ = ["CONFIG_ADDRESS_PORT", "CONFIG_DATA_PORT", "PCIHostState"]

guest_log = logging.getLogger("vfw.guest_errors")

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
_ENABLE = 1 << 31


class PCIHostState:
    """The address register and data window of one host bridge, decoding to bus 0.

    ``conf_region`` (4 bytes) latches dword writes at offset 0 only, as on the i440FX: byte
    and word writes there are ignored (the board may overlay port 0xcf9, the reset control
    register, at a higher priority). Reads return the latched register's bytes.
    ``data_region`` (4 bytes, 1/2/4-byte accesses) reads all-ones while the enable bit is
    clear, for other bus numbers and for absent functions.
    """

    def __init__(self, bus: PCIBus, name: str = "pci-conf"):
        self.bus = bus
        #: The last dword written to the address port (QEMU's config_reg).
        self.config_reg = 0
        self.conf_region = MemoryRegion.io(f"{name}-idx", 4, self._conf_read, self._conf_write,
                                           valid_sizes=(1, 4), impl_sizes=(1, 4))
        self.data_region = MemoryRegion.io(f"{name}-data", 4, self._data_read,
                                           self._data_write, valid_sizes=(1, 4),
                                           impl_sizes=(1, 4))

    def map(self, io_space: MemoryRegion, address_port: int = CONFIG_ADDRESS_PORT,
            data_port: int = CONFIG_DATA_PORT) -> None:
        """Put the two regions in ``io_space`` (the machine's system I/O)."""
        io_space.add_subregion(address_port, self.conf_region)
        io_space.add_subregion(data_port, self.data_region)

    def reset(self) -> None:
        self.config_reg = 0

    # -- address port -----------------------------------------------------------------------
    def _conf_read(self, offset: int, size: int) -> int:
        return (self.config_reg >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _conf_write(self, offset: int, value: int, size: int) -> None:
        if offset != 0 or size != 4:
            guest_log.debug("PCI host: ignored %d-byte write of 0x%x to config address +%d",
                            size, value, offset)
            return
        self.config_reg = value & 0xFFFFFFFF

    # -- data window ------------------------------------------------------------------------
    def _target(self, offset: int, size: int) -> tuple[int, int] | None:
        """(devfn, register offset) the window access at ``offset`` addresses, or None."""
        reg = self.config_reg
        if not reg & _ENABLE or (reg >> 16) & 0xFF != self.bus.bus_num:
            return None
        where = (reg & 0xFC) + offset
        if offset < 0 or where + size > 0x100:
            return None
        return (reg >> 8) & 0xFF, where

    def _data_read(self, offset: int, size: int) -> int:
        target = self._target(offset, size)
        if target is None:
            return (1 << (8 * size)) - 1
        return self.bus.config_read(target[0], target[1], size)

    def _data_write(self, offset: int, value: int, size: int) -> None:
        target = self._target(offset, size)
        if target is not None:
            self.bus.config_write(target[0], target[1], value, size)

    # -- direct access (firmware set-up, tests) ---------------------------------------------
    def config_read(self, address: int, size: int) -> int:
        """Read through mechanism #1 as the guest would: ``address`` in 0xcf8 format."""
        saved = self.config_reg
        self.config_reg = address & ~3
        try:
            return self._data_read(address & 3, size)
        finally:
            self.config_reg = saved

    def config_write(self, address: int, value: int, size: int) -> None:
        """Write through mechanism #1 as the guest would: ``address`` in 0xcf8 format."""
        saved = self.config_reg
        self.config_reg = address & ~3
        try:
            self._data_write(address & 3, value, size)
        finally:
            self.config_reg = saved
