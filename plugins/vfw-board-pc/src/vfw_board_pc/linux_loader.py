"""Direct Linux boot (``-kernel bzImage [-initrd] [-append]``) through the 64-bit entry point.

Instead of running firmware and the kernel's real-mode setup code, the loader does what a boot
loader does per Linux's Documentation/arch/x86/boot.rst and then starts the BSP the way
Firecracker does: already in long mode, at ``startup_64`` (load address + 0x200), with RSI
pointing at the "zero page" (struct boot_params). Guest memory it uses below 1 MiB::

    0x00500  GDT (null, null, 0x10 64-bit code, 0x18 data, 0x20 TSS)
    0x07000  boot_params (4 KiB)              0x08ff0  initial stack pointer
    0x09000  PML4, 0x0a000 PDPT, 0x0b000-0x0efff page directories (identity map of 4 GiB)
    0x20000  kernel command line

The protected-mode kernel goes to its preferred address (16 MiB for distribution kernels), the
initrd to the top of RAM below 4 GiB (under the header's initrd_addr_max).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from vfw.errors import VfwError

from .cpu_state import (
    CR0_ET,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    DESC_A_MASK,
    DESC_B_MASK,
    DESC_CS_MASK,
    DESC_G_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_RW_MASK,
    DESC_S_MASK,
    DESC_TYPE_SHIFT,
    DESC_TYPE_TSS_BUSY,
    EFER_LMA,
    EFER_LME,
    MP_STATE_RUNNABLE,
    R_CS,
    R_DS,
    R_ES,
    R_ESI,
    R_ESP,
    R_FS,
    R_GS,
    R_SS,
    SegmentCache,
    X86CPUState,
)
from .e820 import E820_RAM, E820Entry, encode_e820

__all__ = [
    "BOOT_PARAMS_ADDR",
    "CMDLINE_ADDR",
    "GDT_ADDR",
    "PAGE_TABLES_ADDR",
    "BootImage",
    "KernelLoadError",
    "LinuxBootImage",
    "SetupHeader",
    "load_linux",
    "parse_setup_header",
]


class KernelLoadError(VfwError):
    """A -kernel/-initrd file cannot be booted (wrong format, too old, does not fit)."""


GDT_ADDR = 0x500
BOOT_PARAMS_ADDR = 0x7000
STACK_TOP = 0x8FF0
PAGE_TABLES_ADDR = 0x9000
CMDLINE_ADDR = 0x20000
HIGH_MEMORY = 0x100000
PAGE_SIZE = 0x1000

# Selectors of the boot GDT (Linux's __BOOT_CS / __BOOT_DS) and the TSS.
BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20

# boot_params / setup header offsets (Documentation/arch/x86/boot.rst, zero-page.rst).
BP_ACPI_RSDP_ADDR = 0x070
BP_E820_ENTRIES = 0x1E8
BP_SETUP_HEADER = 0x1F1
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
HDR_SETUP_SECTS = 0x1F1
HDR_SYSSIZE = 0x1F4
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200
HDR_HEADER = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_RELOCATABLE = 0x234
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260
HDR_END_MIN = 0x264  # the fields this loader reads end here

LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
TYPE_OF_LOADER_UNDEFINED = 0xFF
MIN_PROTOCOL = 0x20C  # 2.12: xloadflags and the 64-bit entry
PROTOCOL_ACPI_RSDP = 0x20E  # 2.14: boot_params.acpi_rsdp_addr

PTE_PRESENT, PTE_RW, PTE_PS = 0x1, 0x2, 0x80

CODE64_FLAGS = (DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK
                | DESC_L_MASK | DESC_G_MASK)
CODE32_FLAGS = (DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_RW_MASK | DESC_A_MASK
                | DESC_B_MASK | DESC_G_MASK)
DATA_FLAGS = DESC_P_MASK | DESC_S_MASK | DESC_RW_MASK | DESC_A_MASK | DESC_B_MASK | DESC_G_MASK
TSS_BUSY_FLAGS = DESC_P_MASK | (DESC_TYPE_TSS_BUSY << DESC_TYPE_SHIFT)


def _descriptor(base: int, limit: int, flags: int) -> int:
    """An 8-byte segment descriptor; ``flags`` in SegmentCache layout, ``limit`` the raw
    20-bit field (in pages when G is set)."""
    high = ((base >> 16) & 0xFF) | flags | (((limit >> 16) & 0xF) << 16) | (base & 0xFF000000)
    return (limit & 0xFFFF) | ((base & 0xFFFF) << 16) | (high << 32)


def boot_gdt(code_flags: int) -> bytes:
    """The boot GDT: null, null, code at 0x10, flat data at 0x18, a 16-byte TSS at 0x20."""
    entries = [0, 0, _descriptor(0, 0xFFFFF, code_flags), _descriptor(0, 0xFFFFF, DATA_FLAGS),
               _descriptor(0, 0x67, TSS_BUSY_FLAGS), 0]
    return struct.pack(f"<{len(entries)}Q", *entries)


def set_flat_segments(env: X86CPUState, code_flags: int, gdt_addr: int) -> None:
    """Load CS (0x10) and DS/ES/SS/FS/GS (0x18) with flat 4 GiB descriptors, GDTR and TR as
    :func:`boot_gdt` describes them at ``gdt_addr``."""
    env.segs[R_CS] = SegmentCache(BOOT_CS, 0, 0xFFFFFFFF, code_flags)
    for i in (R_DS, R_ES, R_SS, R_FS, R_GS):
        env.segs[i] = SegmentCache(BOOT_DS, 0, 0xFFFFFFFF, DATA_FLAGS)
    env.gdt = SegmentCache(0, gdt_addr, len(boot_gdt(code_flags)) - 1, 0)
    env.tr = SegmentCache(BOOT_TSS, 0, 0x67, TSS_BUSY_FLAGS)


def identity_page_tables(base: int) -> bytes:
    """PML4 at ``base``, PDPT at +4 KiB and four page directories mapping 0..4 GiB with 2 MiB
    pages (24 KiB in all)."""
    pml4 = struct.pack("<Q", (base + PAGE_SIZE) | PTE_PRESENT | PTE_RW).ljust(PAGE_SIZE, b"\0")
    pdpt = struct.pack("<4Q", *((base + (2 + i) * PAGE_SIZE) | PTE_PRESENT | PTE_RW
                                for i in range(4))).ljust(PAGE_SIZE, b"\0")
    pds = struct.pack("<2048Q", *((i << 21) | PTE_PRESENT | PTE_RW | PTE_PS for i in range(2048)))
    return pml4 + pdpt + pds


@dataclass
class BootImage:
    """What a -kernel loader produces: bytes to copy into guest RAM and the BSP's entry state.

    The board applies ``writes`` and calls :meth:`set_entry_state` on the BSP's freshly reset
    state at every system reset (the guest may have overwritten memory); APs stay waiting for
    INIT/SIPI.
    """

    writes: list[tuple[int, bytes]]
    entry_point: int

    def set_entry_state(self, env: X86CPUState) -> None:
        raise NotImplementedError

    def occupied(self) -> list[tuple[int, int]]:
        """The (start, end) guest-physical ranges the writes cover."""
        return [(addr, addr + len(data)) for addr, data in self.writes]


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header the loader uses."""

    setup_sects: int
    syssize: int
    protocol: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    header_end: int  # offset just past the header (0x202 + the jump's displacement)

    @property
    def setup_size(self) -> int:
        """Bytes of real-mode code before the protected-mode kernel."""
        return (self.setup_sects or 4) * 512 + 512

    @property
    def kernel_64(self) -> bool:
        return bool(self.xloadflags & XLF_KERNEL_64)

    @property
    def protocol_str(self) -> str:
        return f"{self.protocol >> 8}.{self.protocol & 0xFF:02d}"


def parse_setup_header(kernel: bytes, kernel_path: str) -> SetupHeader:
    """Check that ``kernel`` is a bzImage and read its setup header."""
    if len(kernel) < HDR_END_MIN or kernel[HDR_HEADER:HDR_HEADER + 4] != b"HdrS":
        raise KernelLoadError(f"-kernel {kernel_path}: not a Linux bzImage (no HdrS signature)")
    (boot_flag,) = struct.unpack_from("<H", kernel, HDR_BOOT_FLAG)
    if boot_flag != 0xAA55:
        raise KernelLoadError(f"-kernel {kernel_path}: not a Linux bzImage (boot flag "
                              f"0x{boot_flag:04x}, expected 0xaa55)")
    (protocol,) = struct.unpack_from("<H", kernel, HDR_VERSION)

    def u32(off: int) -> int:
        return int(struct.unpack_from("<I", kernel, off)[0])

    hdr = SetupHeader(
        setup_sects=kernel[HDR_SETUP_SECTS],
        syssize=u32(HDR_SYSSIZE),
        protocol=protocol,
        loadflags=kernel[HDR_LOADFLAGS],
        initrd_addr_max=u32(HDR_INITRD_ADDR_MAX) if protocol >= 0x203 else 0x37FFFFFF,
        kernel_alignment=u32(HDR_KERNEL_ALIGNMENT) if protocol >= 0x205 else 0x100000,
        relocatable=bool(kernel[HDR_RELOCATABLE]) if protocol >= 0x205 else False,
        xloadflags=struct.unpack_from("<H", kernel, HDR_XLOADFLAGS)[0] if protocol >= 0x20C
        else 0,
        cmdline_size=u32(HDR_CMDLINE_SIZE) if protocol >= 0x206 else 255,
        pref_address=struct.unpack_from("<Q", kernel, HDR_PREF_ADDRESS)[0]
        if protocol >= 0x20A else 0,
        init_size=u32(HDR_INIT_SIZE) if protocol >= 0x20A else 0,
        header_end=HDR_HEADER + kernel[HDR_JUMP + 1],
    )
    return hdr


@dataclass
class LinuxBootImage(BootImage):
    """A bzImage laid out for the 64-bit boot protocol."""

    header: SetupHeader | None = None
    kernel_addr: int = 0
    initrd_addr: int = 0
    initrd_size: int = 0
    boot_params: bytes = field(default=b"", repr=False)

    def set_entry_state(self, env: X86CPUState) -> None:
        """Long mode, paging on with the identity map, CS.L=1, RSI = boot_params."""
        env.regs = [0] * 16
        env.regs[R_ESI] = BOOT_PARAMS_ADDR
        env.regs[R_ESP] = STACK_TOP
        env.rip = self.entry_point
        env.eflags = 0x2
        set_flat_segments(env, CODE64_FLAGS, GDT_ADDR)
        env.idt = SegmentCache(0, 0, 0, 0)
        env.cr[0] = CR0_PE | CR0_ET | CR0_NE | CR0_PG
        env.cr[3] = PAGE_TABLES_ADDR
        env.cr[4] = CR4_PAE
        env.efer = EFER_LME | EFER_LMA
        env.halted = False
        env.mp_state = MP_STATE_RUNNABLE
        env.interrupt_shadow = False


def _usable_top(e820: Sequence[E820Entry], limit: int) -> int:
    """The end of the highest E820 RAM range below ``limit`` (clipped to it)."""
    top = 0
    for e in e820:
        if e.type == E820_RAM and e.addr < limit:
            top = max(top, min(e.end, limit))
    return top


def load_linux(kernel: bytes, initrd: bytes | None, cmdline: str, *, ram_below_4g: int,
               e820: Sequence[E820Entry], acpi_rsdp_addr: int | None,
               kernel_path: str, initrd_path: str = "") -> LinuxBootImage:
    """Lay out ``kernel`` (a bzImage), ``initrd`` and ``cmdline`` for 64-bit direct boot.

    ``ram_below_4g`` is the end of RAM below 4 GiB; the initrd goes at the top of the highest
    E820 RAM range under it (mark ACPI tables or other board data at the top of RAM as
    non-RAM in ``e820`` to keep it away). ``e820`` is passed to the kernel as is.
    """
    hdr = parse_setup_header(kernel, kernel_path)
    where = f"-kernel {kernel_path}"
    if hdr.protocol < MIN_PROTOCOL:
        raise KernelLoadError(f"{where}: Linux boot protocol {hdr.protocol_str} is too old for "
                              f"64-bit direct boot (2.12 or later needed)")
    if not hdr.loadflags & LOADED_HIGH:
        raise KernelLoadError(f"{where}: a zImage (loaded below 1 MiB) is not supported")
    if not hdr.kernel_64:
        raise KernelLoadError(f"{where}: the kernel has no 64-bit entry point (xloadflags "
                              f"0x{hdr.xloadflags:x}); a 64-bit x86 kernel is needed")
    if hdr.setup_size >= len(kernel):
        raise KernelLoadError(f"{where}: truncated bzImage (setup code is {hdr.setup_size} "
                              f"bytes, the file {len(kernel)})")
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise KernelLoadError(f"{where}: too many memory map entries ({len(e820)})")
    pm_kernel = kernel[hdr.setup_size:]

    load_addr = hdr.pref_address if hdr.pref_address >= HIGH_MEMORY else HIGH_MEMORY
    if load_addr & (PAGE_SIZE - 1):
        load_addr = (load_addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    kernel_end = load_addr + max(len(pm_kernel), hdr.init_size)
    if kernel_end > ram_below_4g:
        raise KernelLoadError(
            f"{where}: the kernel needs RAM up to 0x{kernel_end:x} ({kernel_end >> 20} MiB) to "
            f"decompress, but RAM below 4 GiB ends at 0x{ram_below_4g:x}; give more memory (-m)")

    encoded_cmdline = cmdline.encode("utf-8")
    if len(encoded_cmdline) > hdr.cmdline_size:
        raise KernelLoadError(f"{where}: kernel command line too long ({len(encoded_cmdline)} "
                              f"bytes, this kernel takes at most {hdr.cmdline_size})")

    writes: list[tuple[int, bytes]] = []
    initrd_addr = initrd_size = 0
    if initrd is not None:
        initrd_size = len(initrd)
        limit = min(hdr.initrd_addr_max + 1, ram_below_4g)
        top = _usable_top(e820, limit)
        initrd_addr = (top - initrd_size) & ~(PAGE_SIZE - 1)
        if initrd_size >= 1 << 32 or initrd_addr < kernel_end:
            name = initrd_path or "the initrd"
            raise KernelLoadError(
                f"-initrd {name}: initrd too large ({initrd_size} bytes) to fit between the "
                f"kernel (ends at 0x{kernel_end:x}) and 0x{top:x}; give more memory (-m)")

    bp = bytearray(PAGE_SIZE)
    bp[BP_SETUP_HEADER:hdr.header_end] = kernel[BP_SETUP_HEADER:hdr.header_end]
    bp[HDR_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    bp[HDR_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<I", bp, HDR_CODE32_START, load_addr)
    struct.pack_into("<H", bp, HDR_HEAP_END_PTR, 0xFE00 - 0x200)
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<II", bp, HDR_RAMDISK_IMAGE, initrd_addr, initrd_size)
    if acpi_rsdp_addr is not None and hdr.protocol >= PROTOCOL_ACPI_RSDP:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, acpi_rsdp_addr)
    bp[BP_E820_ENTRIES] = len(e820)
    table = encode_e820(e820)
    bp[BP_E820_TABLE:BP_E820_TABLE + len(table)] = table
    boot_params = bytes(bp)

    writes.append((GDT_ADDR, boot_gdt(CODE64_FLAGS)))
    writes.append((BOOT_PARAMS_ADDR, boot_params))
    writes.append((PAGE_TABLES_ADDR, identity_page_tables(PAGE_TABLES_ADDR)))
    writes.append((CMDLINE_ADDR, encoded_cmdline + b"\0"))
    writes.append((load_addr, pm_kernel))
    if initrd is not None:
        writes.append((initrd_addr, bytes(initrd)))
    return LinuxBootImage(writes=writes, entry_point=load_addr + 0x200, header=hdr,
                          kernel_addr=load_addr, initrd_addr=initrd_addr,
                          initrd_size=initrd_size, boot_params=boot_params)
