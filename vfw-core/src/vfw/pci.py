"""Conventional PCI: the bus, the device base type, BARs, capabilities, MSI, MSI-X, INTx, DMA.

QEMU's hw/pci/pci.c, msi.c and msix.c in one place. A host bridge creates a :class:`PCIBus`
(``PCIBus.create``) with the board's routing: where BARs are mapped (``mem_region`` /
``io_region``), the address space devices DMA through, INTx routing (``map_irq`` then
``set_irq``) and where MSI messages go (``msi_sink``). Configuration mechanism #1 (ports
0xcf8/0xcfc) lives in :mod:`vfw.pci_host`.

Device models subclass :class:`PCIDevice` and describe the header with class attributes.
``CLASS_ID`` is QEMU's 16-bit class code (base class << 8 | subclass, e.g. 0x0200 Ethernet); the
programming interface is the separate ``PROG_IF``. Guest writes go through ``config_write``, which
applies per-byte write masks (``wmask``) and write-1-to-clear masks (``w1cmask``): everything
else is read-only to the guest. As in QEMU the device-specific area 0x40-0xff is guest-writable
until a capability claims bytes there (capabilities are read-only except the fields their
``wmask`` opens).

BARs are mapped as subregions of the bus's ``mem_region`` / ``io_region`` at priority 1, whose
offset 0 is bus address 0 (QEMU's PCI address space). The pc board puts that container into
system memory at a priority below RAM (QEMU's ``pc_pci_as_mapping_init``), so a BAR a guest
programs over RAM stays hidden behind RAM and BARs that overlap each other resolve by "moved
last wins", exactly as in QEMU.

MSI and MSI-X messages are memory writes by the device, so, as in QEMU, they are dropped while
the Bus Master Enable bit is clear; so are DMA helpers (they raise GuestError).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import GuestError, GuestMemoryError, PropertyError, VfwError
from .memory import MemoryRegion, memory_transaction
from .props import BOOL, STR, UINT32, PropertyType, prop
from .qdev import Bus, Device
from .qom import register_type

if TYPE_CHECKING:
    from .memory import AddressSpace
    from .qom import Object

__all__ = [
    "PCIBar",
    "PCIBus",
    "PCIDevice",
    "PCI_DEVFN",
    "PciDevfnType",
    "pci_class_description",
]

guest_log = logging.getLogger("vfw.guest_errors")
log = logging.getLogger("vfw.pci")

# --- configuration space layout (type 0 header) ---------------------------------------------
CONFIG_SPACE_SIZE = 0x100
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
PCI_CONFIG_HEADER_SIZE = 0x40
PCI_NUM_BARS = 6

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400

PCI_STATUS_INTERRUPT = 0x8
PCI_STATUS_CAP_LIST = 0x10
#: Error bits software clears by writing 1 (parity, target/master aborts, SERR, parity error).
PCI_STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000

PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80

PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8

PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11

PCI_MSI_FLAGS_ENABLE = 0x1
PCI_MSI_FLAGS_QMASK = 0x0E  # multiple message capable (log2)
PCI_MSI_FLAGS_QSIZE = 0x70  # multiple message enable (log2)
PCI_MSI_FLAGS_64BIT = 0x80
PCI_MSI_FLAGS_MASKBIT = 0x100

PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_VECTOR_CTRL = 12
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1
PCI_MSIX_MAX_ENTRIES = 2048

#: Default subsystem ids QEMU gives devices that set none (Red Hat / QEMU).
PCI_SUBVENDOR_ID_REDHAT_QUMRANET = 0x1AF4
PCI_SUBDEVICE_ID_QEMU = 0x1100

#: Priority of BARs inside the bus's address spaces (QEMU's memory_region_add_subregion_overlap
#: with 1): a BAR shows over anything the board put there at the default priority.
BAR_PRIORITY = 1

PCI_SLOT_MAX = 32
PCI_FUNC_MAX = 8

#: QEMU prints an unmapped BAR's address as PCI_BAR_UNMAPPED (all ones).
_BAR_UNMAPPED = (1 << 64) - 1

SetIrqFn = Callable[[int, int], None]
MapIrqFn = Callable[[int, int], int]
MsiSinkFn = Callable[[int, int], None]


def _overlaps(a: int, alen: int, b: int, blen: int) -> bool:
    return a < b + blen and b < a + alen


def default_map_irq(devfn: int, pin: int) -> int:
    """The standard swizzle: INTx pin ``pin`` (0 = INTA) of slot S drives PIRQ (S + pin) % 4."""
    return ((devfn >> 3) + pin) % 4


# --- the addr= property ---------------------------------------------------------------------

_DEVFN_RE = re.compile(r"\s*(?:0[xX])?([0-9a-fA-F]+)(?:\.\s*(?:0[xX])?([0-9a-fA-F]+))?")


class PciDevfnType(PropertyType):
    """QEMU's PCI devfn property: text ``slot[.fn]`` in hex (``4``, ``0x4``, ``04.1``), or an
    int devfn in [-1, 255] (-1: the bus picks a free slot). Shown as ``int32`` in help, and
    as ``SS.F`` once set."""

    name = "int32"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> int:
        m = _DEVFN_RE.fullmatch(text)
        if m is not None:
            slot = int(m.group(1), 16)
            fn = int(m.group(2), 16) if m.group(2) is not None else 0
            if slot < PCI_SLOT_MAX and fn < PCI_FUNC_MAX:
                return slot << 3 | fn
        owner_type = owner.type_name if owner is not None else "?"
        raise PropertyError(f"Property '{owner_type}.{prop}' doesn't take value '{text}'")

    def check(self, value: Any, prop: str, owner: Object | None = None) -> int:
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 255:
            raise PropertyError(f"Parameter '{prop}' expects a value between -1 and 255")
        return value

    def format(self, value: Any) -> str:
        if value is None or value < 0:
            return "-1"
        return f"{value >> 3:02x}.{value & 7:x}"

    def to_json(self, value: Any) -> Any:
        return value


PCI_DEVFN = PciDevfnType()


# --- class descriptions for `info pci` (QEMU's pci_class_descriptions) -----------------------

_CLASS_DESCRIPTIONS: dict[int, str] = {
    0x0001: "VGA controller", 0x0100: "SCSI controller", 0x0101: "IDE controller",
    0x0102: "Floppy controller", 0x0103: "IPI controller", 0x0104: "RAID controller",
    0x0106: "SATA controller", 0x0107: "SAS controller", 0x0180: "Storage controller",
    0x0200: "Ethernet controller", 0x0201: "Token Ring controller", 0x0202: "FDDI controller",
    0x0203: "ATM controller", 0x0280: "Network controller", 0x0300: "VGA controller",
    0x0301: "XGA controller", 0x0302: "3D controller", 0x0380: "Display controller",
    0x0400: "Video controller", 0x0401: "Audio controller", 0x0402: "Phone",
    0x0403: "Audio controller", 0x0480: "Multimedia controller", 0x0500: "RAM controller",
    0x0501: "Flash controller", 0x0580: "Memory controller", 0x0600: "Host bridge",
    0x0601: "ISA bridge", 0x0602: "EISA bridge", 0x0603: "MC bridge", 0x0604: "PCI bridge",
    0x0605: "PCMCIA bridge", 0x0606: "NUBUS bridge", 0x0607: "CARDBUS bridge",
    0x0608: "RACEWAY bridge", 0x0680: "Bridge", 0x0700: "Serial port",
    0x0701: "Parallel port", 0x0800: "Interrupt controller", 0x0801: "DMA controller",
    0x0802: "Timer", 0x0803: "RTC", 0x0900: "Keyboard", 0x0901: "Pen", 0x0902: "Mouse",
    0x0A00: "Dock station", 0x0B00: "i386 cpu", 0x0C00: "Firewire controller",
    0x0C01: "Access bus controller", 0x0C02: "SSA controller", 0x0C03: "USB controller",
    0x0C04: "Fibre channel controller", 0x0C05: "SMBus",
}


def pci_class_description(class_id: int) -> str:
    """How ``info pci`` names a 16-bit class code: ``Ethernet controller`` or ``Class 00ff``."""
    return _CLASS_DESCRIPTIONS.get(class_id, f"Class {class_id:04x}")


# --- the bus --------------------------------------------------------------------------------


@register_type
class PCIBus(Bus):
    """A conventional PCI bus (QEMU's TYPE_PCI_BUS, "PCI"); bus number 0 of its host bridge.

    Board-supplied routing, set with :meth:`configure` (or :meth:`create`):

    * ``mem_region`` / ``io_region``: containers MMIO and I/O BARs are mapped into (offset =
      bus address). Either may be None: BARs of that kind then never map.
    * ``dma_as``: the AddressSpace device DMA goes through (the machine's memory).
    * ``map_irq(devfn, pin) -> pirq``, pin 0..3 for INTA..INTD (default: the swizzle
      ``(slot + pin) % 4``) and ``set_irq(pirq, level)``: the level of a PIRQ line is high
      while any device routed to it asserts INTx (QEMU's irq_count).
    * ``msi_sink(address, data)``: receives MSI/MSI-X messages (LAPIC bus or KVM).
    """

    TYPE = "PCI"
    KIND = "PCI"

    def instance_init(self) -> None:
        self.bus_num = 0
        self.mem_region: MemoryRegion | None = None
        self.io_region: MemoryRegion | None = None
        self.dma_as: AddressSpace | None = None
        self.set_irq: SetIrqFn | None = None
        self.map_irq: MapIrqFn = default_map_irq
        self.msi_sink: MsiSinkFn | None = None
        #: How many INTx sources currently assert each PIRQ.
        self.irq_count: dict[int, int] = {}
        self._devfns: dict[int, PCIDevice] = {}

    @classmethod
    def create(cls, name: str = "pci.0", **routing: Any) -> PCIBus:
        """A new bus named ``name`` configured with ``routing`` (see :meth:`configure`); the
        host bridge then adds it as its child (``bridge.add_child(name, bus)``)."""
        bus = cls()
        bus.bus_name = name
        bus.configure(**routing)
        return bus

    def configure(self, *, mem_region: MemoryRegion | None = None,
                  io_region: MemoryRegion | None = None, dma_as: AddressSpace | None = None,
                  set_irq: SetIrqFn | None = None, map_irq: MapIrqFn | None = None,
                  msi_sink: MsiSinkFn | None = None) -> None:
        """Install the board's routing (arguments left out keep their current value)."""
        if mem_region is not None:
            self.mem_region = mem_region
        if io_region is not None:
            self.io_region = io_region
        if dma_as is not None:
            self.dma_as = dma_as
        if set_irq is not None:
            self.set_irq = set_irq
        if map_irq is not None:
            self.map_irq = map_irq
        if msi_sink is not None:
            self.msi_sink = msi_sink

    # -- plugging ---------------------------------------------------------------------------
    def device_at(self, devfn: int) -> PCIDevice | None:
        """The device at ``devfn`` (slot << 3 | function), if any."""
        return self._devfns.get(devfn)

    def pci_devices(self) -> list[PCIDevice]:
        """The plugged devices in devfn order."""
        return [self._devfns[d] for d in sorted(self._devfns)]

    def _pick_devfn(self, dev: PCIDevice) -> int:
        """The devfn ``dev`` would get (its addr=, or the first free slot); refuse conflicts
        with QEMU's messages."""
        name = dev.type_name
        devfn = dev.devfn
        if devfn < 0:
            for candidate in range(0, 256, PCI_FUNC_MAX):
                if candidate not in self._devfns:
                    return candidate
            raise VfwError(f"PCI: no slot/function available for {name}, all in use or reserved")
        slot, fn = devfn >> 3, devfn & 7
        if slot >= PCI_SLOT_MAX:
            raise VfwError(f"PCI: slot {slot} is out of range for {name} (max {PCI_SLOT_MAX - 1})")
        other = self._devfns.get(devfn)
        if other is not None and other is not dev:
            raise VfwError(f"PCI: slot {slot} function {fn} not available for {name},"
                           f" in use by {other.type_name}")
        if fn:
            f0 = self._devfns.get(devfn & ~7)
            if f0 is not None and not f0.multifunction:
                raise VfwError(f"PCI: single function device can't be populated in function"
                               f" {slot:x}.{fn:x}")
        elif not dev.multifunction:
            for func in range(1, PCI_FUNC_MAX):
                if (devfn | func) in self._devfns:
                    raise VfwError(f"PCI: {slot:x}.0 indicates single function, but"
                                   f" {slot:x}.{func:x} is already populated.")
        return devfn

    def check_device(self, dev: Device, props: dict[str, Any]) -> None:
        super().check_device(dev, props)
        if not isinstance(dev, PCIDevice):
            raise VfwError(f"Bus '{self.bus_name}' takes PCI devices, not '{dev.type_name}'")
        self._pick_devfn(dev)

    def plug(self, dev: Device) -> None:
        """Plug ``dev`` at its addr= (or the first free slot, written back to addr)."""
        if not isinstance(dev, PCIDevice):
            raise VfwError(f"Bus '{self.bus_name}' takes PCI devices, not '{dev.type_name}'")
        devfn = self._pick_devfn(dev)
        dev.addr = devfn
        super().plug(dev)
        self._devfns[devfn] = dev

    def remove(self, dev: Device) -> None:
        if isinstance(dev, PCIDevice) and self._devfns.get(dev.addr) is dev:
            dev._detach()
            del self._devfns[dev.addr]
        super().remove(dev)

    # -- configuration space ----------------------------------------------------------------
    def config_read(self, devfn: int, offset: int, size: int) -> int:
        """Read a device's configuration space; absent devices read all-ones."""
        dev = self._devfns.get(devfn)
        if dev is None or not dev.realized:
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        return dev.config_read(offset, size)

    def config_write(self, devfn: int, offset: int, value: int, size: int) -> None:
        """Write a device's configuration space; writes to absent devices vanish."""
        dev = self._devfns.get(devfn)
        if dev is not None and dev.realized:
            dev.config_write(offset, value, size)

    # -- interrupts -------------------------------------------------------------------------
    def _change_irq_level(self, dev: PCIDevice, pin: int, change: int) -> None:
        pirq = self.map_irq(dev.addr, pin)
        count = self.irq_count.get(pirq, 0) + change
        if count < 0:  # a bookkeeping bug; never let the line stick
            log.error("PCI: irq_count of PIRQ %d went negative", pirq)
            count = 0
        self.irq_count[pirq] = count
        if self.set_irq is not None:
            self.set_irq(pirq, 1 if count else 0)

    def irq_level(self, pirq: int) -> int:
        """The current level of PIRQ ``pirq`` as this bus drives it."""
        return 1 if self.irq_count.get(pirq, 0) else 0

    def send_msi(self, address: int, data: int) -> None:
        """Deliver an MSI message to the board's sink."""
        if self.msi_sink is None:
            guest_log.debug("PCI %s: MSI 0x%x <- 0x%x dropped: no MSI sink", self.bus_name,
                            address, data)
            return
        self.msi_sink(address, data)

    # -- monitor --------------------------------------------------------------------------
    def info(self) -> list[str]:
        """``info pci`` lines for this bus, QEMU's format."""
        lines: list[str] = []
        for dev in self.pci_devices():
            lines += dev.info_lines(self.bus_num)
        return lines


# --- BARs -----------------------------------------------------------------------------------

BAR_KINDS = ("io", "mem32", "mem64")


@dataclass
class PCIBar:
    """A registered Base Address Register and where it is mapped."""

    index: int
    region: MemoryRegion
    kind: str
    prefetchable: bool
    #: Decoded size: the region's size rounded up to the minimum (4 for I/O, 16 for memory).
    size: int
    #: Bus address where the region is mapped, or None.
    address: int | None = None
    space: MemoryRegion | None = None

    @property
    def type_bits(self) -> int:
        if self.kind == "io":
            return PCI_BASE_ADDRESS_SPACE_IO
        bits = PCI_BASE_ADDRESS_MEM_TYPE_64 if self.kind == "mem64" else 0
        return bits | (PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetchable else 0)


# --- the device -------------------------------------------------------------------------------


@register_type
class PCIDevice(Device):
    """Base of every PCI function (QEMU's TYPE_PCI_DEVICE, "pci-device").

    Subclasses set the header class attributes (the header is built when the object is
    created, the multifunction bit when it is realized), register BARs and capabilities in
    ``realize``, may override ``config_read`` / ``config_write`` (calling ``super()``) to
    compute or watch their registers, and override ``reset`` calling ``super().reset()``.
    """

    TYPE = "pci-device"
    ABSTRACT = True
    BUS_TYPE = "PCI"

    VENDOR_ID: ClassVar[int] = 0
    DEVICE_ID: ClassVar[int] = 0
    REVISION: ClassVar[int] = 0
    #: 16-bit class code, base class << 8 | subclass (QEMU's class_id), e.g. 0x0200.
    CLASS_ID: ClassVar[int] = 0x00FF
    #: Programming interface byte (0x09).
    PROG_IF: ClassVar[int] = 0
    #: 0 and 0: QEMU's default subsystem 1af4:1100.
    SUBSYSTEM_VENDOR_ID: ClassVar[int] = 0
    SUBSYSTEM_ID: ClassVar[int] = 0
    #: Header layout (0: normal device). The multifunction bit comes from the property.
    HEADER_TYPE: ClassVar[int] = 0
    #: 1 = INTA# .. 4 = INTD#, 0 = no INTx.
    INTERRUPT_PIN: ClassVar[int] = 0

    addr = prop(PCI_DEVFN, -1, "Slot and optional function number, example: 06.0 or 06")
    multifunction = prop(BOOL, False, "on/off")
    romfile = prop(STR, None, "option ROM image (accepted; no ROM BAR is emulated)")
    rombar = prop(UINT32, 1, "expose the option ROM BAR (accepted; no ROM BAR is emulated)")

    def instance_init(self) -> None:
        cls = type(self)
        if not 0 <= cls.CLASS_ID <= 0xFFFF:
            raise ValueError(f"{cls.TYPE}: CLASS_ID 0x{cls.CLASS_ID:x} is not a 16-bit class"
                             f" code (put the programming interface in PROG_IF)")
        #: Configuration space and its guest write masks (QEMU's config/wmask/w1cmask).
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self.bars: dict[int, PCIBar] = {}
        #: (cap_id, offset, size) in list order.
        self._caps: list[tuple[int, int, int]] = []
        self._cap_used = bytearray(CONFIG_SPACE_SIZE)
        self._intx_level = 0
        self._warned_no_pin = False
        self.msi_cap = 0
        self.msix_cap = 0
        self.msix_entries = 0
        self.msix_table = bytearray()
        self.msix_pba = bytearray()
        self.msix_table_region: MemoryRegion | None = None
        self.msix_pba_region: MemoryRegion | None = None
        self._msix_fmasked = True
        #: Called with (vector, masked) when a vector's effective mask changes (KVM irqfds).
        self.msix_mask_notifiers: list[Callable[[int, bool], None]] = []
        self._init_header()

    def _init_header(self) -> None:
        cls = type(self)
        self.set_config(PCI_VENDOR_ID, cls.VENDOR_ID, 2)
        self.set_config(PCI_DEVICE_ID, cls.DEVICE_ID, 2)
        self.set_config(PCI_REVISION_ID, cls.REVISION, 1)
        self.set_config(PCI_CLASS_PROG, cls.PROG_IF, 1)
        self.set_config(PCI_CLASS_DEVICE, cls.CLASS_ID, 2)
        self.set_config(PCI_HEADER_TYPE, cls.HEADER_TYPE & 0x7F, 1)
        svid, sid = cls.SUBSYSTEM_VENDOR_ID, cls.SUBSYSTEM_ID
        if cls.HEADER_TYPE & 0x7F == 0:
            if not svid and not sid:
                svid, sid = PCI_SUBVENDOR_ID_REDHAT_QUMRANET, PCI_SUBDEVICE_ID_QEMU
            self.set_config(PCI_SUBSYSTEM_VENDOR_ID, svid, 2)
            self.set_config(PCI_SUBSYSTEM_ID, sid, 2)
        self.set_config(PCI_INTERRUPT_PIN, cls.INTERRUPT_PIN, 1)
        self.set_wmask(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                       | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE, 2)
        self.set_w1cmask(PCI_STATUS, PCI_STATUS_W1C, 2)
        self.set_wmask(PCI_CACHE_LINE_SIZE, 0xFF, 1)
        self.set_wmask(PCI_LATENCY_TIMER, 0xFF, 1)
        self.set_wmask(PCI_INTERRUPT_LINE, 0xFF, 1)
        self.wmask[PCI_CONFIG_HEADER_SIZE:] = b"\xff" * (CONFIG_SPACE_SIZE - PCI_CONFIG_HEADER_SIZE)

    # -- identity ---------------------------------------------------------------------------
    @property
    def devfn(self) -> int:
        """slot << 3 | function; -1 until plugged."""
        return int(self.addr)

    @property
    def slot(self) -> int:
        return self.devfn >> 3

    @property
    def function(self) -> int:
        return self.devfn & 7

    @property
    def pci_bus(self) -> PCIBus | None:
        bus = self.parent_bus
        return bus if isinstance(bus, PCIBus) else None

    # -- lifecycle --------------------------------------------------------------------------
    def set_realized(self, value: bool) -> None:
        if value and not self.realized:
            if self.pci_bus is None or self.devfn < 0:
                raise VfwError(f"PCI device '{self.type_name}' must be plugged into a PCI bus"
                               f" before it is realized")
            if self.multifunction:
                self.config[PCI_HEADER_TYPE] |= PCI_HEADER_TYPE_MULTI_FUNCTION
            else:
                self.config[PCI_HEADER_TYPE] &= ~PCI_HEADER_TYPE_MULTI_FUNCTION & 0xFF
        elif not value and self.realized:
            self._detach()
        super().set_realized(value)

    def _detach(self) -> None:
        """Leave the bus quietly: drop INTx and unmap every BAR."""
        self._deassert_intx()
        with memory_transaction():
            for bar in self.bars.values():
                self._unmap_bar(bar)

    def reset(self) -> None:
        """Power-on state of the generic registers (QEMU's pci_do_device_reset): command,
        status error bits, interrupt line, cache line size, BAR addresses (BARs unmapped),
        MSI and MSI-X state; INTx deasserted. Device-specific registers are the subclass's."""
        super().reset()
        self._deassert_intx()
        for off, size in ((PCI_COMMAND, 2), (PCI_STATUS, 2), (PCI_INTERRUPT_LINE, 1)):
            clear = self.get_wmask(off, size) | self.get_w1cmask(off, size)
            self.set_config(off, self.get_config(off, size) & ~clear, size)
        self.config[PCI_CACHE_LINE_SIZE] = 0
        for bar in self.bars.values():
            off = PCI_BASE_ADDRESS_0 + 4 * bar.index
            self.set_config(off, bar.type_bits, 4)
            if bar.kind == "mem64":
                self.set_config(off + 4, 0, 4)
        self._update_mappings()
        self._msi_reset()
        self._msix_reset()

    # -- raw configuration space (device side) ---------------------------------------------
    @staticmethod
    def _check_range(offset: int, size: int) -> None:
        if size < 1 or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            raise ValueError(f"configuration space range 0x{offset:x}+{size} is out of bounds")

    def get_config(self, offset: int, size: int) -> int:
        """Little-endian ``size`` bytes of configuration space (no side effects)."""
        self._check_range(offset, size)
        return int.from_bytes(self.config[offset:offset + size], "little")

    def set_config(self, offset: int, value: int, size: int) -> None:
        """Set configuration bytes as the device (ignores the guest write masks)."""
        self._check_range(offset, size)
        self.config[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")

    def set_config_bytes(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        self.config[offset:offset + len(data)] = data

    def get_wmask(self, offset: int, size: int) -> int:
        self._check_range(offset, size)
        return int.from_bytes(self.wmask[offset:offset + size], "little")

    def set_wmask(self, offset: int, mask: int, size: int) -> None:
        """Which bits of ``size`` bytes at ``offset`` the guest may write."""
        self._check_range(offset, size)
        self.wmask[offset:offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")

    def get_w1cmask(self, offset: int, size: int) -> int:
        self._check_range(offset, size)
        return int.from_bytes(self.w1cmask[offset:offset + size], "little")

    def set_w1cmask(self, offset: int, mask: int, size: int) -> None:
        """Which bits the guest clears by writing 1 (status-style)."""
        self._check_range(offset, size)
        self.w1cmask[offset:offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")

    # -- guest configuration accesses -------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """A guest read of configuration space (override to compute registers, call super)."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            guest_log.debug("%s: bad config read 0x%x size %d", self.type_name, offset, size)
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, value: int, size: int) -> None:
        """A guest write of configuration space through the masks, then the side effects:
        BAR (re)mapping, INTx disable, MSI/MSI-X enable and mask changes."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            guest_log.debug("%s: bad config write 0x%x size %d", self.type_name, offset, size)
            return
        was_intx_disabled = self.intx_disabled()
        was_fmasked = self._msix_fmasked
        val = value
        for i in range(size):
            a = offset + i
            b = val & 0xFF
            wm, w1c = self.wmask[a], self.w1cmask[a]
            self.config[a] = ((self.config[a] & ~wm) | (b & wm)) & ~(b & w1c) & 0xFF
            val >>= 8
        touches_command = _overlaps(offset, size, PCI_COMMAND, 2)
        if touches_command or _overlaps(offset, size, PCI_BASE_ADDRESS_0, 4 * PCI_NUM_BARS):
            self._update_mappings()
        if touches_command:
            self._update_irq_disabled(was_intx_disabled)
        if self.msi_cap and _overlaps(offset, size, self.msi_cap, self._msi_size()):
            self._msi_write_config()
        if self.msix_cap and _overlaps(offset, size, self.msix_cap + 3, 1):
            self._msix_write_config(was_fmasked)

    # -- command register -------------------------------------------------------------------
    @property
    def command(self) -> int:
        return self.get_config(PCI_COMMAND, 2)

    def bus_master_enabled(self) -> bool:
        return bool(self.config[PCI_COMMAND] & PCI_COMMAND_MASTER)

    def intx_disabled(self) -> bool:
        return bool(self.get_config(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)

    # -- BARs -------------------------------------------------------------------------------
    def register_bar(self, index: int, region: MemoryRegion, kind: str = "mem32",
                     prefetchable: bool = False) -> PCIBar:
        """Declare BAR ``index`` (0-5) decoding ``region``: ``kind`` "io", "mem32" or "mem64"
        (a 64-bit BAR also takes register ``index + 1``). The region's size must be a power of
        two; the device keeps owning it, and the framework maps it wherever the guest says."""
        if kind not in BAR_KINDS:
            raise ValueError(f"BAR kind must be one of {BAR_KINDS}, not {kind!r}")
        if not 0 <= index < PCI_NUM_BARS or (kind == "mem64" and index == PCI_NUM_BARS - 1):
            raise ValueError(f"{self.type_name}: BAR index {index} is out of range for {kind}")
        if kind == "io" and prefetchable:
            raise ValueError(f"{self.type_name}: an I/O BAR cannot be prefetchable")
        taken = set()
        for bar in self.bars.values():
            taken.add(bar.index)
            if bar.kind == "mem64":
                taken.add(bar.index + 1)
        if index in taken or (kind == "mem64" and index + 1 in taken):
            raise ValueError(f"{self.type_name}: BAR {index} is already registered")
        size = region.size
        if size <= 0 or size & (size - 1):
            raise ValueError(f"{self.type_name}: BAR {index} region size 0x{size:x} is not a"
                             f" power of two")
        if region.container_region is not None:
            raise ValueError(f"{self.type_name}: BAR {index} region {region.name!r} is already"
                             f" mapped in {region.container_region.name!r}")
        size = max(size, 4 if kind == "io" else 16)
        if kind != "mem64" and size > 1 << 31:
            raise ValueError(f"{self.type_name}: BAR {index} is too large for a 32-bit BAR")
        bar = PCIBar(index, region, kind, prefetchable, size)
        self.bars[index] = bar
        off = PCI_BASE_ADDRESS_0 + 4 * index
        mask = ~(size - 1) & ((1 << 64) - 1)
        self.set_config(off, bar.type_bits, 4)
        self.set_wmask(off, mask & (0xFFFFFFFC if kind == "io" else 0xFFFFFFF0), 4)
        if kind == "mem64":
            self.set_config(off + 4, 0, 4)
            self.set_wmask(off + 4, mask >> 32, 4)
        self._update_mappings()
        return bar

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` is mapped now (bus address), or None."""
        bar = self.bars.get(index)
        return None if bar is None else bar.address

    def _bar_target(self, bar: PCIBar) -> int | None:
        """Where the BAR registers and the command register say the BAR belongs (QEMU's
        pci_bar_address): None while decoding is off, at 0, or wrapping past the top."""
        off = PCI_BASE_ADDRESS_0 + 4 * bar.index
        cmd = self.get_config(PCI_COMMAND, 2)
        size = bar.size
        if bar.kind == "io":
            if not cmd & PCI_COMMAND_IO:
                return None
            addr = self.get_config(off, 4) & ~(size - 1)
            last = addr + size - 1
            if addr == 0 or last >= 0xFFFFFFFF:
                return None
            return addr
        if not cmd & PCI_COMMAND_MEMORY:
            return None
        if bar.kind == "mem64":
            addr = self.get_config(off, 8) & ~(size - 1)
        else:
            addr = self.get_config(off, 4) & ~(size - 1)
        last = addr + size - 1
        if addr == 0 or last >= _BAR_UNMAPPED:
            return None
        if bar.kind != "mem64" and last >= 0xFFFFFFFF:
            return None
        return addr

    def _unmap_bar(self, bar: PCIBar) -> None:
        if bar.space is not None and bar.region.container_region is bar.space:
            bar.space.del_subregion(bar.region)
        bar.address, bar.space = None, None

    def _update_mappings(self) -> None:
        """Bring every BAR's mapping in line with its register and the command register."""
        bus = self.pci_bus
        with memory_transaction():
            for bar in self.bars.values():
                new = self._bar_target(bar) if self._on_bus() else None
                if new == bar.address:
                    continue
                self._unmap_bar(bar)
                if new is None or bus is None:
                    continue
                space = bus.io_region if bar.kind == "io" else bus.mem_region
                if space is None:
                    continue
                space.add_subregion(new, bar.region, BAR_PRIORITY)
                bar.address, bar.space = new, space

    def _on_bus(self) -> bool:
        """Plugged at its devfn: BARs map and INTx reaches the bus only then."""
        bus = self.pci_bus
        return bus is not None and bus.device_at(self.devfn) is self

    # -- capabilities -----------------------------------------------------------------------
    def add_capability(self, cap_id: int, size: int, offset: int | None = None) -> int:
        """Add a capability of ``size`` bytes (id and next pointer included) at ``offset`` or
        the first free 4-byte-aligned space from 0x40; link it at the end of the list and
        return its offset. Its bytes become read-only (open fields with ``set_wmask``)."""
        if not 0 <= cap_id <= 0xFF:
            raise ValueError(f"capability id 0x{cap_id:x} is not a byte")
        if not 2 <= size <= CONFIG_SPACE_SIZE - PCI_CONFIG_HEADER_SIZE:
            raise ValueError(f"capability size {size} is out of range")
        span = (size + 3) & ~3
        if offset is None:
            for cand in range(PCI_CONFIG_HEADER_SIZE, CONFIG_SPACE_SIZE - span + 1, 4):
                if not any(self._cap_used[cand:cand + span]):
                    offset = cand
                    break
            else:
                raise VfwError(f"{self.type_name}: no space for PCI capability 0x{cap_id:x}"
                               f" ({size} bytes) in configuration space")
        else:
            if offset & 3 or offset < PCI_CONFIG_HEADER_SIZE or offset + size > CONFIG_SPACE_SIZE:
                raise ValueError(f"{self.type_name}: capability offset 0x{offset:x} is not a"
                                 f" 4-byte aligned offset in 0x40..0xff with room for {size}")
            for cid, coff, csize in self._caps:
                if _overlaps(offset, size, coff, (csize + 3) & ~3):
                    raise VfwError(f"{self.type_name}: Attempt to add PCI capability"
                                   f" {cap_id:x} at offset {offset:x} overlaps existing"
                                   f" capability {cid:x} at offset {coff:x}")
        self.config[offset:offset + size] = bytes(size)
        self.config[offset] = cap_id
        if self._caps:
            self.config[self._caps[-1][1] + 1] = offset
        else:
            self.config[PCI_CAPABILITY_LIST] = offset
        self._caps.append((cap_id, offset, size))
        self.config[PCI_STATUS] |= PCI_STATUS_CAP_LIST
        self._cap_used[offset:offset + span] = b"\x01" * span
        self.wmask[offset:offset + size] = bytes(size)
        self.w1cmask[offset:offset + size] = bytes(size)
        return offset

    def write_capability(self, cap_offset: int, body: bytes, writable: bytes | None = None,
                         at: int = 2) -> None:
        """Fill a capability's bytes from ``cap_offset + at`` (default: just after id and next)
        with ``body``; ``writable`` (same length) is the guest write mask of those bytes (e.g.
        virtio's VIRTIO_PCI_CAP_PCI_CFG window), default read-only."""
        cap = next((c for c in self._caps if c[1] == cap_offset), None)
        if cap is None:
            raise ValueError(f"{self.type_name}: no capability at offset 0x{cap_offset:x}")
        if at < 2 or at + len(body) > cap[2]:
            raise ValueError(f"{self.type_name}: {len(body)} bytes at +{at} overflow the"
                             f" {cap[2]}-byte capability at 0x{cap_offset:x}")
        start = cap_offset + at
        self.config[start:start + len(body)] = body
        if writable is not None:
            if len(writable) != len(body):
                raise ValueError("writable mask must be as long as the body")
            self.wmask[start:start + len(body)] = writable

    def find_capability(self, cap_id: int) -> int:
        """Offset of the first capability ``cap_id`` in list order, 0 if none."""
        for cid, off, _size in self._caps:
            if cid == cap_id:
                return off
        return 0

    def capabilities(self) -> list[tuple[int, int]]:
        """(cap_id, offset) in list order."""
        return [(cid, off) for cid, off, _size in self._caps]

    # -- INTx -------------------------------------------------------------------------------
    @property
    def intx_level(self) -> int:
        return self._intx_level

    def pci_set_irq(self, level: int) -> None:
        """Drive this function's INTx pin. The status Interrupt bit follows the pin; the bus
        line does not while the command register's Interrupt Disable bit is set."""
        pin = self.config[PCI_INTERRUPT_PIN]
        if not 1 <= pin <= 4:
            if not self._warned_no_pin:
                self._warned_no_pin = True
                log.warning("%s: pci_set_irq() on a device without an interrupt pin",
                            self.type_name)
            return
        level = 1 if level else 0
        change = level - self._intx_level
        if not change:
            return
        self._intx_level = level
        if level:
            self.config[PCI_STATUS] |= PCI_STATUS_INTERRUPT
        else:
            self.config[PCI_STATUS] &= ~PCI_STATUS_INTERRUPT & 0xFF
        bus = self.pci_bus
        if self.intx_disabled() or bus is None or not self._on_bus():
            return
        bus._change_irq_level(self, pin - 1, change)

    def _deassert_intx(self) -> None:
        if self._intx_level:
            self.pci_set_irq(0)

    def _update_irq_disabled(self, was_disabled: bool) -> None:
        disabled = self.intx_disabled()
        if disabled == was_disabled or not self._intx_level:
            return
        bus = self.pci_bus
        pin = self.config[PCI_INTERRUPT_PIN]
        if bus is not None and 1 <= pin <= 4 and self._on_bus():
            bus._change_irq_level(self, pin - 1, -1 if disabled else 1)

    # -- message delivery -------------------------------------------------------------------
    def _send_message(self, address: int, data: int) -> None:
        if not self.bus_master_enabled():
            guest_log.debug("%s: MSI 0x%x <- 0x%x dropped: bus mastering is disabled",
                            self.type_name, address, data)
            return
        bus = self.pci_bus
        if bus is not None:
            bus.send_msi(address, data)

    # -- MSI --------------------------------------------------------------------------------
    def _msi_flags(self) -> int:
        return self.get_config(self.msi_cap + 2, 2)

    def _msi_size(self) -> int:
        flags = self._msi_flags()
        size = 0x0E if flags & PCI_MSI_FLAGS_64BIT else 0x0A
        if flags & PCI_MSI_FLAGS_MASKBIT:
            size += 0x0A
        return size

    def _msi_offsets(self) -> tuple[int, int, int]:
        """(data, mask bits, pending bits) offsets."""
        is64 = self._msi_flags() & PCI_MSI_FLAGS_64BIT
        data = self.msi_cap + (0x0C if is64 else 0x08)
        mask = self.msi_cap + (0x10 if is64 else 0x0C)
        return data, mask, mask + 4

    def msi_init(self, vectors: int = 1, is_64bit: bool = True, per_vector_mask: bool = False,
                 offset: int | None = None) -> int:
        """Add an MSI capability offering ``vectors`` (1, 2, 4, .. 32) messages; returns its
        offset."""
        if self.msi_cap:
            raise ValueError(f"{self.type_name}: MSI is already initialised")
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"{self.type_name}: MSI vector count {vectors} is not a power of"
                             f" two up to 32")
        size = (0x0E if is_64bit else 0x0A) + (0x0A if per_vector_mask else 0)
        cap = self.add_capability(PCI_CAP_ID_MSI, size, offset)
        self.msi_cap = cap
        flags = (vectors.bit_length() - 1) << 1
        if is_64bit:
            flags |= PCI_MSI_FLAGS_64BIT
        if per_vector_mask:
            flags |= PCI_MSI_FLAGS_MASKBIT
        self.set_config(cap + 2, flags, 2)
        self.set_wmask(cap + 2, PCI_MSI_FLAGS_QSIZE | PCI_MSI_FLAGS_ENABLE, 2)
        self.set_wmask(cap + 4, 0xFFFFFFFC, 4)
        if is_64bit:
            self.set_wmask(cap + 8, 0xFFFFFFFF, 4)
        data, mask, _pending = self._msi_offsets()
        self.set_wmask(data, 0xFFFF, 2)
        if per_vector_mask:
            self.set_wmask(mask, (1 << vectors) - 1, 4)
        return cap

    def msi_enabled(self) -> bool:
        return bool(self.msi_cap) and bool(self._msi_flags() & PCI_MSI_FLAGS_ENABLE)

    def msi_vectors_enabled(self) -> int:
        """How many vectors the guest enabled (clamped to what the capability offers)."""
        flags = self._msi_flags()
        log_max = (flags & PCI_MSI_FLAGS_QMASK) >> 1
        log_num = min((flags & PCI_MSI_FLAGS_QSIZE) >> 4, log_max)
        return 1 << log_num

    def msi_get_message(self, vector: int = 0) -> tuple[int, int]:
        """(address, data) vector ``vector`` would send now."""
        flags = self._msi_flags()
        address = self.get_config(self.msi_cap + 4, 4)
        if flags & PCI_MSI_FLAGS_64BIT:
            address |= self.get_config(self.msi_cap + 8, 4) << 32
        data_off = self._msi_offsets()[0]
        nr = self.msi_vectors_enabled()
        data = (self.get_config(data_off, 2) & ~(nr - 1)) | (vector & (nr - 1))
        return address, data

    def msi_is_masked(self, vector: int) -> bool:
        if not self._msi_flags() & PCI_MSI_FLAGS_MASKBIT:
            return False
        return bool(self.get_config(self._msi_offsets()[1], 4) >> vector & 1)

    def msi_notify(self, vector: int = 0) -> None:
        """Signal MSI ``vector``: sent if enabled and unmasked, pending while masked."""
        if not self.msi_cap or not self.msi_enabled():
            return
        if not 0 <= vector < self.msi_vectors_enabled():
            guest_log.debug("%s: MSI vector %d is not enabled", self.type_name, vector)
            return
        if self.msi_is_masked(vector):
            pend = self._msi_offsets()[2]
            self.set_config(pend, self.get_config(pend, 4) | 1 << vector, 4)
            return
        self._send_message(*self.msi_get_message(vector))

    def _msi_write_config(self) -> None:
        if not self.msi_enabled():
            return
        # MSI and INTx are mutually exclusive (PCI 3.0 6.8.3.3).
        self._deassert_intx()
        flags = self._msi_flags()
        if not flags & PCI_MSI_FLAGS_MASKBIT:
            return
        nr = self.msi_vectors_enabled()
        pend_off = self._msi_offsets()[2]
        pending = self.get_config(pend_off, 4) & ((1 << nr) - 1)
        self.set_config(pend_off, pending, 4)
        for vector in range(nr):
            if pending >> vector & 1 and not self.msi_is_masked(vector):
                pending &= ~(1 << vector)
                self.set_config(pend_off, pending, 4)
                self.msi_notify(vector)

    def _msi_reset(self) -> None:
        if not self.msi_cap:
            return
        cap = self.msi_cap
        flags = self._msi_flags() & ~(PCI_MSI_FLAGS_QSIZE | PCI_MSI_FLAGS_ENABLE)
        size = self._msi_size()
        self.config[cap + 4:cap + size] = bytes(size - 4)
        self.set_config(cap + 2, flags, 2)

    # -- MSI-X ------------------------------------------------------------------------------
    @property
    def msix_vector_count(self) -> int:
        """Table size (0 without MSI-X)."""
        return self.msix_entries

    def msix_init(self, nentries: int, table_bar_index: int, table_offset: int,
                  pba_bar_index: int, pba_offset: int, *, table_bar: MemoryRegion | None = None,
                  pba_bar: MemoryRegion | None = None, offset: int | None = None) -> int:
        """Add an MSI-X capability with ``nentries`` vectors whose table and PBA are MMIO
        subregions at the given offsets of BAR regions the device owns (``table_bar`` /
        ``pba_bar``, default: the regions registered as those BARs). Returns the cap offset."""
        if self.msix_cap:
            raise ValueError(f"{self.type_name}: MSI-X is already initialised")
        if not 1 <= nentries <= PCI_MSIX_MAX_ENTRIES:
            raise ValueError(f"{self.type_name}: MSI-X needs 1..{PCI_MSIX_MAX_ENTRIES}"
                             f" vectors, not {nentries}")
        for idx in (table_bar_index, pba_bar_index):
            if not 0 <= idx < PCI_NUM_BARS:
                raise ValueError(f"{self.type_name}: MSI-X BAR index {idx} is out of range")
        if table_bar is None:
            table_bar = self._bar_region(table_bar_index)
        if pba_bar is None:
            pba_bar = table_bar if pba_bar_index == table_bar_index else \
                self._bar_region(pba_bar_index)
        table_size = nentries * PCI_MSIX_ENTRY_SIZE
        pba_size = ((nentries + 63) // 64) * 8
        if ((table_offset | pba_offset) & 7 or table_offset < 0 or pba_offset < 0
                or table_offset + table_size > table_bar.size
                or pba_offset + pba_size > pba_bar.size
                or (table_bar is pba_bar
                    and _overlaps(table_offset, table_size, pba_offset, pba_size))):
            raise ValueError(f"{self.type_name}: MSI-X table (0x{table_offset:x}+0x"
                             f"{table_size:x}) / PBA (0x{pba_offset:x}+0x{pba_size:x}) do not"
                             f" fit their BARs")
        cap = self.add_capability(PCI_CAP_ID_MSIX, 12, offset)
        self.msix_cap = cap
        self.msix_entries = nentries
        self.msix_table = bytearray(table_size)
        self.msix_pba = bytearray(pba_size)
        self._msix_mask_all()
        self.set_config(cap + 2, nentries - 1, 2)
        self.set_config(cap + 4, table_offset | table_bar_index, 4)
        self.set_config(cap + 8, pba_offset | pba_bar_index, 4)
        self.wmask[cap + 3] = (PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE) >> 8
        self._msix_fmasked = True
        self.msix_table_region = MemoryRegion.io(
            f"{self.type_name}-msix-table", table_size, self._msix_table_read,
            self._msix_table_write, valid_sizes=(4, 8), impl_sizes=(4, 4), unaligned=False)
        self.msix_pba_region = MemoryRegion.io(
            f"{self.type_name}-msix-pba", pba_size, self._msix_pba_read, self._msix_pba_write,
            valid_sizes=(4, 8), impl_sizes=(4, 4), unaligned=False)
        with memory_transaction():
            table_bar.add_subregion(table_offset, self.msix_table_region)
            pba_bar.add_subregion(pba_offset, self.msix_pba_region)
        return cap

    def msix_init_exclusive_bar(self, nentries: int, bar_index: int,
                                kind: str = "mem32") -> int:
        """MSI-X in a BAR of its own (QEMU's msix_init_exclusive_bar): a 4 KiB (or larger)
        memory BAR with the table at 0 and the PBA in the upper half. Returns the cap offset."""
        table_size = nentries * PCI_MSIX_ENTRY_SIZE
        pba_size = ((nentries + 63) // 64) * 8
        bar_size = 4096
        pba_offset = max(bar_size // 2, table_size)
        if pba_offset + pba_size > bar_size:
            bar_size = pba_offset + pba_size
        bar_size = 1 << (bar_size - 1).bit_length()
        region = MemoryRegion.container(f"{self.type_name}-msix", bar_size)
        cap = self.msix_init(nentries, bar_index, 0, bar_index, pba_offset, table_bar=region,
                             pba_bar=region)
        self.register_bar(bar_index, region, kind)
        return cap

    def _bar_region(self, index: int) -> MemoryRegion:
        bar = self.bars.get(index)
        if bar is None:
            raise ValueError(f"{self.type_name}: BAR {index} is not registered (register it"
                             f" before msix_init or pass the region)")
        return bar.region

    def msix_enabled(self) -> bool:
        return bool(self.msix_cap) and bool(
            self.get_config(self.msix_cap + 2, 2) & PCI_MSIX_FLAGS_ENABLE)

    def _msix_function_masked(self) -> bool:
        ctrl = self.get_config(self.msix_cap + 2, 2)
        return not ctrl & PCI_MSIX_FLAGS_ENABLE or bool(ctrl & PCI_MSIX_FLAGS_MASKALL)

    def _msix_vector_masked(self, vector: int, fmasked: bool) -> bool:
        ctrl = self.msix_table[vector * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL]
        return fmasked or bool(ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def msix_is_masked(self, vector: int) -> bool:
        """Masked by the vector's control bit, the function mask, or MSI-X being off."""
        return self._msix_vector_masked(vector, self._msix_fmasked)

    def msix_is_pending(self, vector: int) -> bool:
        return bool(self.msix_pba[vector // 8] >> (vector % 8) & 1)

    def msix_set_pending(self, vector: int) -> None:
        self.msix_pba[vector // 8] |= 1 << (vector % 8)

    def msix_clr_pending(self, vector: int) -> None:
        self.msix_pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def msix_get_message(self, vector: int) -> tuple[int, int]:
        """(address, data) of table entry ``vector``."""
        base = vector * PCI_MSIX_ENTRY_SIZE
        entry = self.msix_table[base:base + PCI_MSIX_ENTRY_SIZE]
        return int.from_bytes(entry[0:8], "little"), int.from_bytes(entry[8:12], "little")

    def msix_notify(self, vector: int) -> None:
        """Signal MSI-X ``vector``: sent if enabled and unmasked, its PBA bit set while masked.
        Out-of-range vectors (e.g. a guest-chosen virtio vector) are ignored."""
        if not self.msix_cap or not 0 <= vector < self.msix_entries:
            guest_log.debug("%s: MSI-X vector %d out of range", self.type_name, vector)
            return
        if not self.msix_enabled():
            return
        if self.msix_is_masked(vector):
            self.msix_set_pending(vector)
            return
        self._send_message(*self.msix_get_message(vector))

    def _msix_handle_mask_update(self, vector: int, was_masked: bool) -> None:
        masked = self.msix_is_masked(vector)
        if masked == was_masked:
            return
        for notifier in list(self.msix_mask_notifiers):
            notifier(vector, masked)
        if not masked and self.msix_is_pending(vector):
            self.msix_clr_pending(vector)
            self.msix_notify(vector)

    def _msix_write_config(self, was_fmasked: bool) -> None:
        self._msix_fmasked = self._msix_function_masked()
        if not self.msix_enabled():
            return
        self._deassert_intx()
        if self._msix_fmasked == was_fmasked:
            return
        for vector in range(self.msix_entries):
            self._msix_handle_mask_update(vector, self._msix_vector_masked(vector, was_fmasked))

    def _msix_table_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.msix_table):
            guest_log.debug("%s: MSI-X table read out of bounds at 0x%x", self.type_name, offset)
            return 0
        return int.from_bytes(self.msix_table[offset:offset + size], "little")

    def _msix_table_write(self, offset: int, value: int, size: int) -> None:
        if offset < 0 or offset + size > len(self.msix_table) or offset & 3:
            guest_log.debug("%s: MSI-X table write out of bounds at 0x%x", self.type_name,
                            offset)
            return
        vector = offset // PCI_MSIX_ENTRY_SIZE
        was_masked = self.msix_is_masked(vector)
        self.msix_table[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")
        self._msix_handle_mask_update(vector, was_masked)

    def _msix_pba_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(self.msix_pba):
            guest_log.debug("%s: MSI-X PBA read out of bounds at 0x%x", self.type_name, offset)
            return 0
        return int.from_bytes(self.msix_pba[offset:offset + size], "little")

    def _msix_pba_write(self, offset: int, value: int, size: int) -> None:
        guest_log.debug("%s: MSI-X PBA is read-only (write at 0x%x)", self.type_name, offset)

    def _msix_mask_all(self) -> None:
        for vector in range(self.msix_entries):
            self.msix_table[vector * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL] |= \
                PCI_MSIX_ENTRY_CTRL_MASKBIT

    def _msix_reset(self) -> None:
        if not self.msix_cap:
            return
        self.config[self.msix_cap + 3] &= ~self.wmask[self.msix_cap + 3] & 0xFF
        self.msix_table[:] = bytes(len(self.msix_table))
        self.msix_pba[:] = bytes(len(self.msix_pba))
        self._msix_fmasked = True
        self._msix_mask_all()

    # -- DMA --------------------------------------------------------------------------------
    def _dma_space(self, what: str, addr: int, length: int) -> AddressSpace:
        if not self.bus_master_enabled():
            guest_log.debug("%s: DMA %s 0x%x+0x%x refused: bus mastering is disabled",
                            self.type_name, what, addr, length)
            raise GuestError(f"{self.type_name}: DMA {what} at 0x{addr:x} with bus mastering"
                             f" disabled")
        bus = self.pci_bus
        if bus is None or bus.dma_as is None:
            raise GuestMemoryError(f"{self.type_name}: no DMA address space (not on a bus)")
        return bus.dma_as

    def dma_read(self, addr: int, length: int) -> bytes:
        """Read guest RAM as this device (GuestError without bus mastering or outside RAM)."""
        space = self._dma_space("read", addr, length)
        try:
            return space.read_bytes(addr, length)
        except GuestMemoryError as exc:
            guest_log.debug("%s: DMA read failed: %s", self.type_name, exc)
            raise

    def dma_write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write guest RAM as this device (GuestError without bus mastering or outside RAM)."""
        space = self._dma_space("write", addr, len(data))
        try:
            space.write_bytes(addr, data)
        except GuestMemoryError as exc:
            guest_log.debug("%s: DMA write failed: %s", self.type_name, exc)
            raise

    def dma_view(self, addr: int, length: int, *, writable: bool = True) -> memoryview:
        """Zero-copy view of guest RAM (one RAM section) for this device's DMA."""
        space = self._dma_space("map", addr, length)
        try:
            return space.ram_view(addr, length, writable=writable)
        except GuestMemoryError as exc:
            guest_log.debug("%s: DMA map failed: %s", self.type_name, exc)
            raise

    # -- monitor ----------------------------------------------------------------------------
    def info_lines(self, bus_num: int = 0) -> list[str]:
        """This function's ``info pci`` entry, as QEMU prints it."""
        class_id = self.get_config(PCI_CLASS_DEVICE, 2)
        lines = [
            f"  Bus {bus_num:2d}, device {self.slot:3d}, function {self.function}:",
            f"    {pci_class_description(class_id)}: PCI device"
            f" {self.get_config(PCI_VENDOR_ID, 2):04x}:{self.get_config(PCI_DEVICE_ID, 2):04x}",
        ]
        if self.config[PCI_HEADER_TYPE] & 0x7F == 0:
            lines.append(f"      PCI subsystem {self.get_config(PCI_SUBSYSTEM_VENDOR_ID, 2):04x}:"
                         f"{self.get_config(PCI_SUBSYSTEM_ID, 2):04x}")
        pin = self.config[PCI_INTERRUPT_PIN]
        if pin:
            lines.append(f"      IRQ {self.config[PCI_INTERRUPT_LINE]}, pin"
                         f" {chr(ord('A') + pin - 1) if pin <= 4 else '?'}")
        for index in sorted(self.bars):
            bar = self.bars[index]
            addr = _BAR_UNMAPPED if bar.address is None else bar.address
            last = (addr + bar.size - 1) & _BAR_UNMAPPED
            if bar.kind == "io":
                lines.append(f"      BAR{index}: I/O at 0x{addr:04x} [0x{last:04x}].")
            else:
                bits = 64 if bar.kind == "mem64" else 32
                pf = " prefetchable" if bar.prefetchable else ""
                lines.append(f"      BAR{index}: {bits} bit{pf} memory at 0x{addr:08x}"
                             f" [0x{last:08x}].")
        lines.append(f'      id "{self.id or ""}"')
        return lines
