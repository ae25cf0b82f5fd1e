"""The pc board's ACPI tables: RSDP, RSDT/XSDT, FADT, FACS, MADT and a DSDT in AML.

Modern Linux (Debian's cloud kernel has no MP-table parser) learns the interrupt controllers
and the other CPUs from the MADT, the power-management ports and the reset register from the
FADT, and the PCI root bridge, its interrupt routing and the ISA devices from the DSDT.

:func:`build_acpi_tables` lays every table out contiguously for loading at one guest-physical
address (``AcpiTables.blob``); the RSDP (``AcpiTables.rsdp``) does not depend on where it is
placed, so the board may put it in the BIOS area (Linux scans 0xE0000-0xFFFFF on 16-byte
boundaries for "RSD PTR ") or anywhere and pass its address in boot_params.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import aml

__all__ = [
    "CENTURY_CMOS_INDEX",
    "IOAPIC_ADDRESS",
    "LAPIC_ADDRESS",
    "OEM_ID",
    "PM1A_CNT_BLK",
    "PM1A_EVT_BLK",
    "PM_IO_BASE",
    "PM_TMR_BLK",
    "RESET_PORT",
    "RESET_VALUE",
    "SCI_IRQ",
    "SLP_TYP_S5",
    "AcpiTables",
    "build_acpi_tables",
    "checksum",
    "pc_pci_irq_index",
]

OEM_ID = "VFW   "
OEM_TABLE_ID = "VFWPC   "
CREATOR_ID = "VFW "
CREATOR_REVISION = 1

#: SLP_TYP value of \_S5 (soft off); the PM device powers off when the guest writes it.
SLP_TYP_S5 = 5
PM_IO_BASE = 0x600
PM1A_EVT_BLK = PM_IO_BASE + 0x0  # PM1_STS (2) + PM1_EN (2)
PM1A_CNT_BLK = PM_IO_BASE + 0x4
PM_TMR_BLK = PM_IO_BASE + 0x8
SCI_IRQ = 9
RESET_PORT = 0xCF9
RESET_VALUE = 0x06  # reset CPU + system (hard) reset
CENTURY_CMOS_INDEX = 0x32
IOAPIC_ADDRESS = 0xFEC00000
LAPIC_ADDRESS = 0xFEE00000

# FADT flags (ACPI 6.4 table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6  # no RTC wake status in the fixed registers
FADT_RESET_REG_SUP = 1 << 10
# IAPC_BOOT_ARCH flags.
BOOT_ARCH_LEGACY_DEVICES = 1 << 0
BOOT_ARCH_8042 = 1 << 1
# Generic Address Structure address spaces and access sizes.
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE, GAS_ACCESS_WORD, GAS_ACCESS_DWORD = 1, 2, 3

# MADT.
MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
MADT_LOCAL_X2APIC = 9
MADT_ENABLED = 1
MPS_INTI_CONFORMS = 0x0
MPS_INTI_HIGH_LEVEL = 0x1 | (0x3 << 2)  # active high, level triggered

_HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = _HEADER.size  # 36
FACS_SIZE = 64
FADT_REVISION = 3
FADT_SIZE = 244


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero (mod 256) when stored in its checksum field."""
    return (-sum(data)) & 0xFF


def _ascii(text: str, size: int, what: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > size:
        raise ValueError(f"ACPI {what} {text!r} is longer than {size} characters")
    return raw.ljust(size, b" ")


def _table(signature: str, revision: int, body: bytes, oem_id: bytes, oem_table_id: bytes) -> bytes:
    """A complete table: the standard header (with its checksum) followed by ``body``."""
    length = HEADER_SIZE + len(body)
    header = _HEADER.pack(signature.encode("ascii"), length, revision, 0, oem_id, oem_table_id,
                          1, CREATOR_ID.encode("ascii"), CREATOR_REVISION)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def _gas(space: int, bit_width: int, access: int, address: int) -> bytes:
    return struct.pack("<BBBBQ", space, bit_width, 0, access, address)


def pc_pci_irq_index(slot: int, pin: int) -> int:
    """Which of the board's 4 PCI interrupt lines INTx# (pin 0 = INTA) of ``slot`` drives: the
    (slot + pin) mod 4 swizzle the DSDT's _PRT describes; the PCI host must wire the same."""
    return (slot + pin) & 3


@dataclass(frozen=True)
class AcpiTables:
    """Tables built for loading at ``base_address``.

    ``blob`` holds every table but the RSDP, contiguously; ``tables`` maps each signature to its
    guest-physical address and length. ``rsdp`` is 36 bytes valid at any address (put it on a
    16-byte boundary in 0xE0000-0xFFFFF for guests that scan, or pass its address).
    """

    blob: bytes
    base_address: int
    rsdp: bytes
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def end_address(self) -> int:
        return self.base_address + len(self.blob)

    def address_of(self, signature: str) -> int:
        return self.tables[signature][0]


# --- individual tables ---------------------------------------------------------------------

def _facs() -> bytes:
    # No header checksum: signature, length, hardware signature, waking vectors, global lock,
    # flags, 64-bit waking vector, version.
    body = struct.pack("<4sIIIIIQB", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 1)
    return body.ljust(FACS_SIZE, b"\x00")


def _fadt(facs: int, dsdt: int, *, i8042: bool, pm_io_base: int, sci_irq: int,
          oem_id: bytes, oem_table_id: bytes) -> bytes:
    evt, cnt, tmr = pm_io_base, pm_io_base + 4, pm_io_base + 8
    flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP
    boot_arch = BOOT_ARCH_LEGACY_DEVICES | (BOOT_ARCH_8042 if i8042 else 0)
    body = bytearray()
    body += struct.pack("<II", facs, dsdt)  # FIRMWARE_CTRL, DSDT
    body += struct.pack("<BBHI", 0, 0, sci_irq, 0)  # reserved, PM profile, SCI_INT, SMI_CMD
    body += struct.pack("<BBBB", 0, 0, 0, 0)  # ACPI_ENABLE/DISABLE, S4BIOS_REQ, PSTATE_CNT
    body += struct.pack("<IIIIIIII", evt, 0, cnt, 0, 0, tmr, 0, 0)  # PM1a/b EVT, CNT, PM2, TMR,
    #                                                                   GPE0, GPE1 blocks
    body += struct.pack("<BBBBBBBB", 4, 2, 0, 4, 0, 0, 0, 0)  # lengths, GPE1_BASE, CST_CNT
    body += struct.pack("<HHHH", 0xFFF, 0xFFF, 0, 0)  # C2/C3 latency (> max: unsupported), flush
    body += struct.pack("<BBBBB", 0, 0, 0, 0, CENTURY_CMOS_INDEX)  # duty, alarms, century
    body += struct.pack("<HB", boot_arch, 0)  # IAPC_BOOT_ARCH, reserved
    body += struct.pack("<I", flags)
    body += _gas(GAS_SYSTEM_IO, 8, GAS_ACCESS_BYTE, RESET_PORT)  # RESET_REG
    body += struct.pack("<BHB", RESET_VALUE, 0, 0)  # RESET_VALUE, ARM_BOOT_ARCH, minor version
    # X_FIRMWARE_CTRL stays 0: the FACS is below 4 GiB and naming it twice makes Linux
    # install it twice. X_DSDT repeats DSDT (ACPICA prefers the 64-bit field).
    body += struct.pack("<QQ", 0, dsdt)  # X_FIRMWARE_CTRL, X_DSDT
    body += _gas(GAS_SYSTEM_IO, 32, GAS_ACCESS_WORD, evt)  # X_PM1a_EVT_BLK
    body += _gas(0, 0, 0, 0)  # X_PM1b_EVT_BLK
    body += _gas(GAS_SYSTEM_IO, 16, GAS_ACCESS_WORD, cnt)  # X_PM1a_CNT_BLK
    body += _gas(0, 0, 0, 0)  # X_PM1b_CNT_BLK
    body += _gas(0, 0, 0, 0)  # X_PM2_CNT_BLK
    body += _gas(GAS_SYSTEM_IO, 32, GAS_ACCESS_DWORD, tmr)  # X_PM_TMR_BLK
    body += _gas(0, 0, 0, 0)  # X_GPE0_BLK
    body += _gas(0, 0, 0, 0)  # X_GPE1_BLK
    table = _table("FACP", FADT_REVISION, bytes(body), oem_id, oem_table_id)
    assert len(table) == FADT_SIZE, len(table)
    return table


def _madt(cpus: Sequence[int], *, ioapic_id: int, ioapic_address: int, sci_irq: int,
          level_irqs: Sequence[int], oem_id: bytes, oem_table_id: bytes) -> bytes:
    body = bytearray(struct.pack("<II", LAPIC_ADDRESS, MADT_PCAT_COMPAT))
    for uid, apic_id in enumerate(cpus):
        if apic_id < 255 and uid < 255:
            body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, apic_id, MADT_ENABLED)
        else:
            body += struct.pack("<BBHIII", MADT_LOCAL_X2APIC, 16, 0, apic_id, MADT_ENABLED, uid)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ioapic_id, 0, ioapic_address, 0)
    # ISA IRQ0 (PIT) is wired to IOAPIC pin 2; bus-default polarity/trigger (edge, high).
    body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, 0, 2, MPS_INTI_CONFORMS)
    for irq in sorted({sci_irq, *level_irqs}):
        body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, irq, irq, MPS_INTI_HIGH_LEVEL)
    # LINT1 of every processor (UID 0xff) is the NMI input.
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)
    return _table("APIC", 1, bytes(body), oem_id, oem_table_id)


def _pci0_crs(pci_hole: tuple[int, int], pci_hole64: tuple[int, int] | None) -> bytes:
    descs = [
        aml.word_bus_number(0x00, 0xFF),
        aml.io(0x0CF8, 0x0CF8, 0x01, 0x08),  # the config ports, consumed by the bridge itself
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(0x000A0000, 0x000BFFFF, aml.MEM_CACHEABLE),  # legacy VGA window
        aml.dword_memory(pci_hole[0], pci_hole[1]),
    ]
    if pci_hole64 is not None:
        descs.append(aml.qword_memory(pci_hole64[0], pci_hole64[1]))
    return aml.resource_template(*descs)


def _prt(route: Callable[[int, int], int]) -> bytes:
    entries = []
    for slot in range(32):
        for pin in range(4):
            # {Address (slot, any function), Pin, Source (0: a GSI, no link device), GSI}
            entries.append(aml.package((slot << 16) | 0xFFFF, pin, 0, route(slot, pin)))
    return aml.package(*entries)


def _isa_devices(serial_ports: Sequence[tuple[int, int]], i8042: bool) -> list[bytes]:
    devs = [aml.device(
        "RTC",
        aml.name("_HID", aml.eisaid("PNP0B00")),
        aml.name("_CRS", aml.resource_template(aml.io(0x70, 0x70, 0x01, 0x02),
                                               aml.irq_no_flags(8))),
    )]
    if i8042:
        devs.append(aml.device(
            "KBD",
            aml.name("_HID", aml.eisaid("PNP0303")),
            aml.name("_CRS", aml.resource_template(aml.io(0x60, 0x60, 0x01, 0x01),
                                                   aml.io(0x64, 0x64, 0x01, 0x01),
                                                   aml.irq_no_flags(1))),
        ))
        devs.append(aml.device(
            "MOU",
            aml.name("_HID", aml.eisaid("PNP0F13")),
            aml.name("_CRS", aml.resource_template(aml.irq_no_flags(12))),
        ))
    for i, (iobase, irq) in enumerate(serial_ports):
        devs.append(aml.device(
            f"COM{i + 1}",
            aml.name("_HID", aml.eisaid("PNP0501")),
            aml.name("_UID", i + 1),
            aml.name("_CRS", aml.resource_template(aml.io(iobase, iobase, 0x01, 0x08),
                                                   aml.irq_no_flags(irq))),
        ))
    return devs


def _dsdt(cpus: Sequence[int], *, pci_hole: tuple[int, int], pci_hole64: tuple[int, int] | None,
          route: Callable[[int, int], int], serial_ports: Sequence[tuple[int, int]],
          i8042: bool, isa_bridge_slot: int, oem_id: bytes, oem_table_id: bytes) -> bytes:
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisaid("PNP0A03")),
        aml.name("_ADR", 0),
        aml.name("_UID", 0),
        aml.name("_CRS", _pci0_crs(pci_hole, pci_hole64)),
        aml.name("_PRT", _prt(route)),
        aml.device("ISA", aml.name("_ADR", isa_bridge_slot << 16),
                   *_isa_devices(serial_ports, i8042)),
    )
    processors = [aml.device(f"C{uid:03X}", aml.name("_HID", "ACPI0007"), aml.name("_UID", uid))
                  for uid in range(len(cpus))]
    body = (aml.scope("\\_SB", pci0, *processors)
            + aml.name("\\_S0", aml.package(0, 0, 0, 0))
            + aml.name("\\_S5", aml.package(SLP_TYP_S5, 0, 0, 0)))
    # Revision 2: 64-bit integers (the QWordMemory window needs them).
    return _table("DSDT", 2, body, oem_id, oem_table_id)


def _rsdp(rsdt: int, xsdt: int, oem_id: bytes) -> bytes:
    head = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, oem_id, 2, rsdt))
    head[8] = checksum(head)
    full = bytearray(head + struct.pack("<IQB3s", 36, xsdt, 0, b"\x00" * 3))
    full[32] = checksum(full)
    return bytes(full)


# --- the whole set -------------------------------------------------------------------------

def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & -alignment


def build_acpi_tables(cpus: Sequence[int], *, base_address: int, pci_hole: tuple[int, int],
                      pci_hole64: tuple[int, int] | None = None,
                      pci_irq_gsis: Sequence[int] = (10, 10, 11, 11),
                      pci_irq_swizzle: Callable[[int, int], int] = pc_pci_irq_index,
                      serial_ports: Sequence[tuple[int, int]] = ((0x3F8, 4),),
                      i8042: bool = True, isa_bridge_slot: int = 1,
                      pm_io_base: int = PM_IO_BASE, sci_irq: int = SCI_IRQ,
                      ioapic_id: int = 0, ioapic_address: int = IOAPIC_ADDRESS,
                      oem_id: str = OEM_ID, oem_table_id: str = OEM_TABLE_ID) -> AcpiTables:
    """Build the tables for a pc board with ``cpus`` (their APIC ids, in CPU-index order).

    ``base_address`` (64-byte aligned, below 4 GiB) is where ``blob`` will be loaded.
    ``pci_hole`` is the 32-bit MMIO window (first, last) with ``last`` inclusive, e.g.
    ``(below_4g_ram_end, 0xfebfffff)``; ``pci_hole64`` an optional 64-bit window likewise.
    INTx# ``pin`` of device ``slot`` is routed to GSI
    ``pci_irq_gsis[pci_irq_swizzle(slot, pin)]``. ``serial_ports`` lists (iobase, irq) for
    COM1, COM2, ...; ``i8042`` adds the PS/2 controller (and sets the FADT's 8042 flag).
    """
    if not cpus:
        raise ValueError("ACPI tables need at least one CPU")
    if base_address % FACS_SIZE or not 0 <= base_address < 1 << 32:
        raise ValueError(f"ACPI tables base 0x{base_address:x} must be 64-byte aligned and "
                         f"below 4 GiB")
    for lo, hi in (pci_hole, *([pci_hole64] if pci_hole64 else [])):
        if lo & 0xFFF or (hi + 1) & 0xFFF or not lo <= hi:
            raise ValueError(f"PCI window 0x{lo:x}-0x{hi:x} must be (first, last) inclusive, "
                             f"4 KiB granular")
    if len(pci_irq_gsis) != 4:
        raise ValueError("pci_irq_gsis must name the GSI of each of the 4 PCI interrupt lines")
    oem = _ascii(oem_id, 6, "OEM id")
    oem_table = _ascii(oem_table_id, 8, "OEM table id")
    gsis = tuple(pci_irq_gsis)

    def route(slot: int, pin: int) -> int:
        return gsis[pci_irq_swizzle(slot, pin) & 3]

    # Layout: FACS first (64-byte alignment), then the others 16-byte aligned.
    facs_addr = base_address
    dsdt = _dsdt(cpus, pci_hole=pci_hole, pci_hole64=pci_hole64, route=route,
                 serial_ports=serial_ports, i8042=i8042, isa_bridge_slot=isa_bridge_slot,
                 oem_id=oem, oem_table_id=oem_table)
    dsdt_addr = facs_addr + FACS_SIZE
    fadt_addr = _align(dsdt_addr + len(dsdt), 16)
    fadt = _fadt(facs_addr, dsdt_addr, i8042=i8042, pm_io_base=pm_io_base, sci_irq=sci_irq,
                 oem_id=oem, oem_table_id=oem_table)
    madt_addr = _align(fadt_addr + len(fadt), 16)
    level_irqs = [5, 10, 11, *(g for g in gsis if g < 16)]
    madt = _madt(cpus, ioapic_id=ioapic_id, ioapic_address=ioapic_address, sci_irq=sci_irq,
                 level_irqs=level_irqs, oem_id=oem, oem_table_id=oem_table)
    pointed = [fadt_addr, madt_addr]
    xsdt_addr = _align(madt_addr + len(madt), 16)
    xsdt = _table("XSDT", 1, struct.pack(f"<{len(pointed)}Q", *pointed), oem, oem_table)
    rsdt_addr = _align(xsdt_addr + len(xsdt), 16)
    rsdt = _table("RSDT", 1, struct.pack(f"<{len(pointed)}I", *pointed), oem, oem_table)
    if rsdt_addr + len(rsdt) > 1 << 32:
        raise ValueError("ACPI tables would cross 4 GiB")

    placed = [("FACS", facs_addr, _facs()), ("DSDT", dsdt_addr, dsdt), ("FACP", fadt_addr, fadt),
              ("APIC", madt_addr, madt), ("XSDT", xsdt_addr, xsdt), ("RSDT", rsdt_addr, rsdt)]
    blob = bytearray(rsdt_addr + len(rsdt) - base_address)
    tables: dict[str, tuple[int, int]] = {}
    for sig, addr, data in placed:
        off = addr - base_address
        blob[off:off + len(data)] = data
        tables[sig] = (addr, len(data))
    return AcpiTables(bytes(blob), base_address, _rsdp(rsdt_addr, xsdt_addr, oem), tables)
