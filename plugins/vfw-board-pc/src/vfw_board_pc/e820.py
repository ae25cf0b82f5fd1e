"""The PC's physical memory map as firmware reports it (the BIOS "E820" table).

Guests learn where RAM is from this table: Linux from ``boot_params`` (direct kernel boot),
multiboot kernels from the info block's mmap, firmware from fw_cfg's ``etc/e820`` file. The
layout follows QEMU's pc machine with SeaBIOS: conventional memory up to the EBDA at 0x9fc00,
the BIOS area reserved, RAM from 1 MiB to the PCI hole and the rest above 4 GiB.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "E820_ACPI",
    "E820_NVS",
    "E820_RAM",
    "E820_RESERVED",
    "E820_UNUSABLE",
    "EBDA_START",
    "E820Entry",
    "KVM_RESERVED_BASE",
    "KVM_RESERVED_SIZE",
    "PC_BELOW_4G_LIMIT",
    "e820_add",
    "encode_e820",
    "fw_cfg_e820",
    "pc_e820_table",
    "pc_ram_split",
]

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3  # ACPI tables, reclaimable by the OS once parsed
E820_NVS = 4
E820_UNUSABLE = 5

_TYPE_NAMES = {E820_RAM: "RAM", E820_RESERVED: "reserved", E820_ACPI: "ACPI",
               E820_NVS: "NVS", E820_UNUSABLE: "unusable"}

GIB = 1 << 30
FOUR_GIB = 4 * GIB
#: i440fx: with this much RAM or more, RAM below 4 GiB stops here (3.5 GiB) and the rest is
#: mapped above 4 GiB, leaving room for the 32-bit PCI hole.
PC_BELOW_4G_LIMIT = 0xE0000000
#: Start of the extended BIOS data area: conventional memory ends here (639 KiB).
EBDA_START = 0x9FC00
#: QEMU reserves this range under KVM for the identity-map page and TSS KVM needs on Intel.
KVM_RESERVED_BASE = 0xFEFFC000
KVM_RESERVED_SIZE = 0x4000

_ENTRY = struct.Struct("<QQI")


class E820Entry(NamedTuple):
    """One range of the map: ``[addr, addr + size)`` of ``type`` (E820_RAM, ...)."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size

    def __repr__(self) -> str:
        kind = _TYPE_NAMES.get(self.type, str(self.type))
        return f"E820Entry(0x{self.addr:x}-0x{self.end - 1:x} {kind})"


def pc_ram_split(ram_size: int) -> tuple[int, int]:
    """RAM below and above 4 GiB for the i440fx pc board, as QEMU splits it.

    Below 0xe0000000 (3.5 GiB) all RAM sits below 4 GiB; from there on 3.5 GiB stays below and
    the rest moves above 4 GiB.
    """
    if ram_size < 0:
        raise ValueError(f"RAM size must not be negative, not {ram_size}")
    if ram_size >= PC_BELOW_4G_LIMIT:
        return PC_BELOW_4G_LIMIT, ram_size - PC_BELOW_4G_LIMIT
    return ram_size, 0


def e820_add(entries: Iterable[E820Entry], new: E820Entry) -> list[E820Entry]:
    """``entries`` with ``new`` laid over them: what it covers is cut out of the old ranges.

    Used to mark ACPI tables or firmware areas inside RAM; the result is sorted by address and
    adjacent ranges of one type are merged.
    """
    out: list[E820Entry] = []
    for e in entries:
        if e.end <= new.addr or e.addr >= new.end:
            out.append(e)
            continue
        if e.addr < new.addr:
            out.append(E820Entry(e.addr, new.addr - e.addr, e.type))
        if e.end > new.end:
            out.append(E820Entry(new.end, e.end - new.end, e.type))
    if new.size > 0:
        out.append(new)
    out.sort()
    merged: list[E820Entry] = []
    for e in out:
        if e.size <= 0:
            continue
        if merged and merged[-1].type == e.type and merged[-1].end == e.addr:
            last = merged.pop()
            e = E820Entry(last.addr, last.size + e.size, e.type)
        merged.append(e)
    return merged


def pc_e820_table(ram_size: int, *, kvm_reserved: bool = False,
                  extra: Iterable[E820Entry] = ()) -> list[E820Entry]:
    """The full map a guest sees on the pc board (what SeaBIOS's E820 call would return).

    ``kvm_reserved`` adds QEMU's reservation at 0xfeffc000 (KVM's TSS/identity-map pages);
    ``extra`` entries (ACPI tables placed in RAM, say) are laid over the result with e820_add.
    """
    below, above = pc_ram_split(ram_size)
    table: list[E820Entry] = []
    table.append(E820Entry(0, min(below, EBDA_START), E820_RAM))
    if below > EBDA_START:
        table.append(E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED))
    table.append(E820Entry(0xF0000, 0x10000, E820_RESERVED))
    if below > 0x100000:
        table.append(E820Entry(0x100000, below - 0x100000, E820_RAM))
    if kvm_reserved:
        table.append(E820Entry(KVM_RESERVED_BASE, KVM_RESERVED_SIZE, E820_RESERVED))
    if above:
        table.append(E820Entry(FOUR_GIB, above, E820_RAM))
    for e in extra:
        table = e820_add(table, e)
    return table


def fw_cfg_e820(ram_size: int, *, kvm_reserved: bool = False) -> list[E820Entry]:
    """What QEMU puts in fw_cfg's ``etc/e820``: RAM from 0 to the hole, RAM above 4 GiB and the
    KVM reservation; the firmware adds its own low-memory holes."""
    below, above = pc_ram_split(ram_size)
    table = [E820Entry(0, below, E820_RAM)]
    if kvm_reserved:
        table.append(E820Entry(KVM_RESERVED_BASE, KVM_RESERVED_SIZE, E820_RESERVED))
    if above:
        table.append(E820Entry(FOUR_GIB, above, E820_RAM))
    return table


def encode_e820(entries: Iterable[E820Entry]) -> bytes:
    """The 20-byte little-endian records (u64 address, u64 length, u32 type) used by fw_cfg's
    ``etc/e820`` and Linux's boot_params table."""
    return b"".join(_ENTRY.pack(e.addr, e.size, e.type) for e in entries)
