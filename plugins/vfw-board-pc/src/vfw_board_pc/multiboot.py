"""Multiboot (version 1) kernels for ``-kernel``, as QEMU's multiboot loader boots them.

A file is a multiboot kernel when a header (magic 0x1BADB002, flags, checksum) sits 4-byte
aligned within its first 8 KiB. It is loaded from its ELF32 program headers or, with flag bit
16, from the header's own addresses (the "a.out kludge"); ``-initrd "a.bin arg,b.bin"`` lists
modules, loaded page-aligned after the kernel. The multiboot information block (with the memory
map, command lines, module list, loader name and a boot GDT) goes at 0x9000 like QEMU's, or
past the kernel and modules when that would overlap them. The BSP starts in flat 32-bit
protected mode with paging off, EAX = 0x2BADB002 and EBX = the information block's address.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cpu_state import (
    CR0_ET,
    CR0_PE,
    MP_STATE_RUNNABLE,
    R_EAX,
    R_EBX,
    SegmentCache,
    X86CPUState,
)
from .e820 import E820_RAM, E820Entry
from .linux_loader import (
    CODE32_FLAGS,
    PAGE_SIZE,
    BootImage,
    KernelLoadError,
    boot_gdt,
    set_flat_segments,
)

__all__ = [
    "MULTIBOOT_BOOTLOADER_MAGIC",
    "MULTIBOOT_HEADER_MAGIC",
    "MULTIBOOT_INFO_ADDR",
    "MultibootHeader",
    "MultibootImage",
    "find_multiboot_header",
    "load_multiboot",
    "split_multiboot_modules",
]

log = logging.getLogger(__name__)

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192
#: Where QEMU puts the information block; used unless the kernel or a module is there.
MULTIBOOT_INFO_ADDR = 0x9000
LOADER_NAME = "vfw"

# Header flags.
MB_PAGE_ALIGN = 1 << 0  # modules page-aligned (always done)
MB_MEMORY_INFO = 1 << 1  # mem_* and mmap (always given)
MB_VIDEO_MODE = 1 << 2  # video mode table (not supported: ignored with a warning, like QEMU)
MB_AOUT_KLUDGE = 1 << 16
MB_SUPPORTED_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE

# Information block flags and layout (88 bytes).
MBI_MEM, MBI_BOOTDEV, MBI_CMDLINE, MBI_MODS = 0x1, 0x2, 0x4, 0x8
MBI_MMAP, MBI_LOADER_NAME = 0x40, 0x200
MBI_SIZE = 88
MBI_FLAGS, MBI_MEM_LOWER, MBI_MEM_UPPER, MBI_BOOT_DEVICE = 0, 4, 8, 12
MBI_CMDLINE_PTR, MBI_MODS_COUNT, MBI_MODS_ADDR = 16, 20, 24
MBI_MMAP_LENGTH, MBI_MMAP_ADDR, MBI_BOOT_LOADER_NAME = 44, 48, 64
MOD_ENTRY_SIZE = 16
MMAP_ENTRY_SIZE = 24  # a 4-byte size field (20) + base, length, type
BOOT_DEVICE_NONE = 0x8000FFFF  # as QEMU passes it: BIOS drive 0x80, no partitions

# ELF.
PT_LOAD = 1
PF_X = 1
EM_386 = 3
ELFCLASS32, ELFCLASS64 = 1, 2


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_multiboot_header(kernel: bytes) -> MultibootHeader | None:
    """The first valid multiboot v1 header in the first 8 KiB (4-byte aligned), if any."""
    limit = min(len(kernel), MULTIBOOT_SEARCH) - 12
    for off in range(0, limit + 1, 4):
        magic, flags, csum = struct.unpack_from("<III", kernel, off)
        if magic == MULTIBOOT_HEADER_MAGIC and (magic + flags + csum) & 0xFFFFFFFF == 0:
            fields = (0, 0, 0, 0, 0)
            if flags & MB_AOUT_KLUDGE and off + 32 <= len(kernel):
                fields = struct.unpack_from("<5I", kernel, off + 12)
            return MultibootHeader(off, flags, *fields)
    return None


def split_multiboot_modules(spec: str) -> list[tuple[str, str]]:
    """Split ``-initrd "a.bin arg1,b.bin"`` into (path, command line) per module.

    Modules are separated by ',' (',,' stands for a literal comma, QEMU's option syntax); each
    module's command line is its whole text (path included, as GRUB and QEMU pass it) and its
    path the text up to the first space.
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == ",":
            if spec.startswith(",,", i):
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [(part.split(" ", 1)[0], part) for part in parts if part.strip()]


@dataclass
class MultibootImage(BootImage):
    """A multiboot kernel, its modules and information block laid out in guest memory."""

    info_addr: int = 0
    gdt_addr: int = 0
    kernel_range: tuple[int, int] = (0, 0)
    module_ranges: list[tuple[int, int]] = field(default_factory=list)
    info_range: tuple[int, int] = (0, 0)

    def set_entry_state(self, env: X86CPUState) -> None:
        """Flat 32-bit protected mode, paging off, EAX = magic, EBX = information block."""
        env.regs = [0] * 16
        env.regs[R_EAX] = MULTIBOOT_BOOTLOADER_MAGIC
        env.regs[R_EBX] = self.info_addr
        env.rip = self.entry_point
        env.eflags = 0x2
        set_flat_segments(env, CODE32_FLAGS, self.gdt_addr)
        env.idt = SegmentCache(0, 0, 0, 0)
        env.cr[0] = CR0_PE | CR0_ET
        env.cr[2] = env.cr[3] = env.cr[4] = 0
        env.efer = 0
        env.halted = False
        env.mp_state = MP_STATE_RUNNABLE
        env.interrupt_shadow = False


def _align_up(value: int, alignment: int = PAGE_SIZE) -> int:
    return (value + alignment - 1) & -alignment


def _load_elf(kernel: bytes, where: str, ram_limit: int
              ) -> tuple[list[tuple[int, bytes]], int, int, int]:
    """(writes, entry, low, high) from the ELF32 program headers, bss zero-filled."""
    if len(kernel) < 52 or kernel[:4] != b"\x7fELF":
        raise KernelLoadError(f"{where}: multiboot kernel is not ELF and does not use the "
                              f"a.out kludge (header flag bit 16)")
    if kernel[4] == ELFCLASS64:
        raise KernelLoadError(f"{where}: Cannot load x86-64 image, give a 32bit one.")
    if kernel[4] != ELFCLASS32 or kernel[5] != 1:
        raise KernelLoadError(f"{where}: not a little-endian ELF32 file")
    (e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIIIIIHHH", kernel, 16)
    if e_machine != EM_386:
        raise KernelLoadError(f"{where}: ELF machine {e_machine} is not i386")
    if e_phentsize < 32 or e_phoff + e_phnum * e_phentsize > len(kernel):
        raise KernelLoadError(f"{where}: bad ELF program header table")
    writes: list[tuple[int, bytes]] = []
    low, high = 1 << 32, 0
    entry = e_entry
    for i in range(e_phnum):
        (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags,
         _align) = struct.unpack_from("<8I", kernel, e_phoff + i * e_phentsize)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > len(kernel):
            raise KernelLoadError(f"{where}: ELF segment {i} lies outside the file")
        if p_paddr + p_memsz > ram_limit:
            raise KernelLoadError(
                f"{where}: ELF segment {i} (0x{p_paddr:x}-0x{p_paddr + p_memsz - 1:x}) is "
                f"outside RAM (0x{ram_limit:x} bytes below 4 GiB); give more memory (-m)")
        data = kernel[p_offset:p_offset + p_filesz] + bytes(p_memsz - p_filesz)
        writes.append((p_paddr, data))
        low, high = min(low, p_paddr), max(high, p_paddr + p_memsz)
        # e_entry is virtual: translate it when this executable segment is linked elsewhere.
        if (p_vaddr != p_paddr and p_flags & PF_X
                and p_vaddr <= e_entry < p_vaddr + p_filesz):
            entry = e_entry - p_vaddr + p_paddr
    if not writes:
        raise KernelLoadError(f"{where}: ELF file has nothing to load")
    return writes, entry, low, high


def _load_aout(kernel: bytes, hdr: MultibootHeader, where: str, ram_limit: int
               ) -> tuple[list[tuple[int, bytes]], int, int, int]:
    """(writes, entry, low, high) from the header's load addresses (flag bit 16)."""
    if hdr.offset + 32 > len(kernel):
        raise KernelLoadError(f"{where}: multiboot header truncated")
    if hdr.load_addr > hdr.header_addr or hdr.header_addr - hdr.load_addr > hdr.offset:
        raise KernelLoadError(f"{where}: multiboot header_addr 0x{hdr.header_addr:x} and "
                              f"load_addr 0x{hdr.load_addr:x} are inconsistent")
    file_offset = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise KernelLoadError(f"{where}: multiboot load_end_addr below load_addr")
        size = hdr.load_end_addr - hdr.load_addr
        if file_offset + size > len(kernel):
            raise KernelLoadError(f"{where}: multiboot load_end_addr 0x{hdr.load_end_addr:x} "
                                  f"lies beyond the end of the file")
    else:
        size = len(kernel) - file_offset
    load_end = hdr.load_addr + size
    mem_end = load_end
    if hdr.bss_end_addr:
        if hdr.bss_end_addr < load_end:
            raise KernelLoadError(f"{where}: multiboot bss_end_addr below the loaded image")
        mem_end = hdr.bss_end_addr
    if mem_end > ram_limit:
        raise KernelLoadError(
            f"{where}: kernel (0x{hdr.load_addr:x}-0x{mem_end - 1:x}) is outside RAM "
            f"(0x{ram_limit:x} bytes below 4 GiB); give more memory (-m)")
    if not hdr.load_addr <= hdr.entry_addr < mem_end:
        log.warning("%s: multiboot entry 0x%x lies outside the loaded image", where,
                    hdr.entry_addr)
    data = kernel[file_offset:file_offset + size] + bytes(mem_end - load_end)
    return [(hdr.load_addr, data)], hdr.entry_addr, hdr.load_addr, mem_end


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _in_ram(rng: tuple[int, int], e820: Sequence[E820Entry]) -> bool:
    return any(e.type == E820_RAM and e.addr <= rng[0] and rng[1] <= e.end for e in e820)


def _place(cursor: int, size: int, e820: Sequence[E820Entry], limit: int) -> int | None:
    """The lowest page-aligned address >= ``cursor`` where ``size`` bytes of RAM fit."""
    for e in sorted(e for e in e820 if e.type == E820_RAM):
        start = _align_up(max(cursor, e.addr))
        if start + size <= min(e.end, limit):
            return start
    return None


def load_multiboot(kernel: bytes, cmdline: str, modules: Sequence[tuple[bytes, str]], *,
                   ram_size_below_4g: int, e820: Sequence[E820Entry], kernel_path: str
                   ) -> MultibootImage | None:
    """Lay out a multiboot kernel; None when ``kernel`` has no multiboot header (not ours).

    ``cmdline`` is the kernel's whole command line as it will see it; by GRUB's and QEMU's
    convention that is ``"<kernel path> <-append text>"``. ``modules`` are (contents, command
    line) pairs, e.g. from :func:`split_multiboot_modules` with the files read.
    ``kernel_path`` names the file in error messages.
    """
    hdr = find_multiboot_header(kernel)
    if hdr is None:
        return None
    where = f"-kernel {kernel_path}"
    unknown = hdr.flags & 0xFFFF & ~MB_SUPPORTED_REQUIRED
    if unknown:
        raise KernelLoadError(f"{where}: multiboot kernel requires features vfw does not "
                              f"provide (header flags 0x{unknown:x})")
    if hdr.flags & MB_VIDEO_MODE:
        log.warning("%s: multiboot kernel asks for a video mode; ignored (text mode)", where)
    limit = min(ram_size_below_4g, 1 << 32)
    if hdr.flags & MB_AOUT_KLUDGE:
        writes, entry, low, high = _load_aout(kernel, hdr, where, limit)
    else:
        writes, entry, low, high = _load_elf(kernel, where, limit)

    for addr, data in writes:
        if data and not _in_ram((addr, addr + len(data)), e820):
            raise KernelLoadError(f"{where}: kernel range 0x{addr:x}-0x{addr + len(data) - 1:x}"
                                  f" is not RAM in the memory map")

    # Modules: page-aligned, one after another past the kernel (skipping non-RAM holes).
    module_ranges: list[tuple[int, int]] = []
    cursor = _align_up(high)
    for data, mod_cmdline in modules:
        start = _place(cursor, len(data), e820, limit)
        if start is None:
            name = mod_cmdline.split(" ", 1)[0]
            raise KernelLoadError(f"-initrd {name}: multiboot module ({len(data)} bytes) does "
                                  f"not fit in RAM after 0x{cursor:x} (RAM below 4 GiB ends at "
                                  f"0x{limit:x}); give more memory (-m)")
        end = start + len(data)
        writes.append((start, bytes(data)))
        module_ranges.append((start, end))
        cursor = _align_up(max(end, start + 1))

    # The information block: GDT, info struct, module list, memory map, then strings.
    strings = bytearray()

    def add_string(text: str) -> int:
        offset = len(strings)
        strings.extend(text.encode("utf-8") + b"\0")
        return offset

    cmdline_off = add_string(cmdline)
    mod_string_offs = [add_string(c) for _, c in modules]
    loader_off = add_string(LOADER_NAME)
    gdt = boot_gdt(CODE32_FLAGS)
    gdt_off = 0
    mbi_off = _align_up(len(gdt), 16)
    mods_off = mbi_off + MBI_SIZE
    mmap_off = mods_off + MOD_ENTRY_SIZE * len(modules)
    strings_off = mmap_off + MMAP_ENTRY_SIZE * len(e820)
    block_size = strings_off + len(strings)

    occupied = [(low, high), *module_ranges]
    candidates = [MULTIBOOT_INFO_ADDR] + sorted(_align_up(end) for _, end in occupied)
    info_base = None
    for base in candidates:
        rng = (base, base + block_size)
        if rng[1] <= limit and _in_ram(rng, e820) and not any(_overlaps(rng, o)
                                                              for o in occupied):
            info_base = base
            break
    if info_base is None:
        raise KernelLoadError(f"{where}: no room in RAM for the multiboot information block")

    block = bytearray(block_size)
    block[gdt_off:gdt_off + len(gdt)] = gdt
    mem_upper = next((e.size for e in e820 if e.type == E820_RAM and e.addr == 0x100000),
                     max(limit - 0x100000, 0)) // 1024
    mbi_flags = MBI_MEM | MBI_BOOTDEV | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    struct.pack_into("<IIII", block, mbi_off, mbi_flags, 640, mem_upper, BOOT_DEVICE_NONE)
    struct.pack_into("<III", block, mbi_off + MBI_CMDLINE_PTR,
                     info_base + strings_off + cmdline_off, len(modules), info_base + mods_off)
    struct.pack_into("<II", block, mbi_off + MBI_MMAP_LENGTH,
                     MMAP_ENTRY_SIZE * len(e820), info_base + mmap_off)
    struct.pack_into("<I", block, mbi_off + MBI_BOOT_LOADER_NAME,
                     info_base + strings_off + loader_off)
    for i, ((start, end), soff) in enumerate(zip(module_ranges, mod_string_offs, strict=True)):
        struct.pack_into("<IIII", block, mods_off + i * MOD_ENTRY_SIZE, start, end,
                         info_base + strings_off + soff, 0)
    for i, e in enumerate(e820):
        struct.pack_into("<IQQI", block, mmap_off + i * MMAP_ENTRY_SIZE, 20, e.addr, e.size,
                         e.type)
    block[strings_off:] = strings
    writes.append((info_base, bytes(block)))

    return MultibootImage(writes=writes, entry_point=entry, info_addr=info_base + mbi_off,
                          gdt_addr=info_base + gdt_off, kernel_range=(low, high),
                          module_ranges=module_ranges,
                          info_range=(info_base, info_base + block_size))
