"""Direct Linux boot: bzImage header parsing, boot_params, memory layout and the 64-bit entry
state; with Debian's cloud kernel where installed and a synthetic bzImage otherwise."""

from __future__ import annotations

import glob
import struct
from pathlib import Path

import pytest

from vfw.errors import VfwError
from vfw.testing import need
from vfw_board_pc.cpu_state import (
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    DESC_B_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    EFER_LMA,
    EFER_LME,
    IF_MASK,
    R_CS,
    R_DS,
    R_ES,
    R_ESI,
    R_FS,
    R_GS,
    R_SS,
    X86CPUState,
)
from vfw_board_pc.e820 import E820_ACPI, E820Entry, encode_e820, pc_e820_table
from vfw_board_pc.linux_loader import (
    BOOT_PARAMS_ADDR,
    CMDLINE_ADDR,
    GDT_ADDR,
    PAGE_TABLES_ADDR,
    KernelLoadError,
    LinuxBootImage,
    load_linux,
    parse_setup_header,
)

MiB = 1 << 20
RAM = 256 * MiB


def debian_kernel() -> str:
    paths = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    need(bool(paths), "Debian's cloud kernel (/boot/vmlinuz-*-cloud-amd64) is not installed")
    return paths[-1]


def fake_bzimage(protocol: int = 0x20F, xloadflags: int = 0x7F, setup_sects: int = 4,
                 pm_size: int = 0x10000, init_size: int = 0x400000,
                 pref_address: int = 0x1000000, loadflags: int = 0x01) -> bytes:
    """A bzImage-shaped file: a setup header, then ``pm_size`` bytes of "kernel"."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, pm_size // 16)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x6A])  # jmp to 0x26c: header ends there
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    setup[0x234] = 1
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 2047)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    kernel = bytes((i * 7) & 0xFF for i in range(pm_size))
    return bytes(setup) + kernel


def load(kernel: bytes, initrd: bytes | None = None, cmdline: str = "console=ttyS0",
         ram: int = RAM, e820=None, rsdp: int | None = 0xE0000, path="/k") -> LinuxBootImage:
    return load_linux(kernel, initrd, cmdline, ram_below_4g=ram,
                      e820=pc_e820_table(ram) if e820 is None else e820,
                      acpi_rsdp_addr=rsdp, kernel_path=path)


def memory_of(image: LinuxBootImage) -> dict[int, bytes]:
    """The writes, checked not to overlap one another."""
    spans = sorted((a, a + len(d)) for a, d in image.writes)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "loader writes overlap"
    return dict(image.writes)


def read_u(image: LinuxBootImage, addr: int, fmt: str) -> int:
    for base, data in image.writes:
        if base <= addr < base + len(data):
            return struct.unpack_from(fmt, data, addr - base)[0]
    raise AssertionError(f"nothing written at 0x{addr:x}")


# --- with the real kernel ----------------------------------------------------------------

def test_debian_kernel_header():
    path = debian_kernel()
    kernel = Path(path).read_bytes()
    hdr = parse_setup_header(kernel, path)
    assert hdr.protocol >= 0x20F and hdr.protocol_str.startswith("2.")
    assert hdr.relocatable and hdr.kernel_64
    assert hdr.loadflags & 0x01  # LOADED_HIGH
    assert hdr.pref_address == 0x1000000 and hdr.kernel_alignment == 0x200000
    assert 16 * MiB < hdr.init_size < 128 * MiB
    assert hdr.cmdline_size >= 2047 and hdr.initrd_addr_max >= 0x37FFFFFF
    assert hdr.setup_size == (hdr.setup_sects + 1) * 512
    assert hdr.header_end > 0x268


def test_debian_kernel_layout_and_boot_params():
    path = debian_kernel()
    kernel = Path(path).read_bytes()
    initrd = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    e820 = pc_e820_table(RAM)
    image = load(kernel, initrd, "console=ttyS0 quiet", e820=e820, path=path)
    hdr = image.header
    assert hdr is not None
    mem = memory_of(image)
    # Kernel at its preferred address, entry at startup_64.
    assert image.kernel_addr == 0x1000000
    assert mem[0x1000000] == kernel[hdr.setup_size:]
    assert image.entry_point == 0x1000200
    # Initrd page-aligned at the top of RAM, above the kernel's decompression area.
    assert mem[image.initrd_addr] == initrd
    assert image.initrd_addr % 4096 == 0
    assert image.initrd_addr + len(initrd) <= RAM
    assert RAM - (image.initrd_addr + len(initrd)) < 4096
    assert image.initrd_addr >= 0x1000000 + hdr.init_size
    assert image.initrd_addr + len(initrd) <= hdr.initrd_addr_max + 1
    # Command line.
    assert mem[CMDLINE_ADDR] == b"console=ttyS0 quiet\0"
    # boot_params.
    bp = mem[BOOT_PARAMS_ADDR]
    assert len(bp) == 4096 and bp == image.boot_params
    end = hdr.header_end
    assert bp[0x1F1] == kernel[0x1F1]
    assert bp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", bp, 0x1FE)[0] == 0xAA55
    assert bp[0x206:0x210] == kernel[0x206:0x210]
    assert bp[0x210] == 0xFF  # type_of_loader
    assert bp[0x211] == kernel[0x211] | 0x80  # CAN_USE_HEAP
    assert struct.unpack_from("<I", bp, 0x214)[0] == 0x1000000  # code32_start
    assert struct.unpack_from("<II", bp, 0x218) == (image.initrd_addr, len(initrd))
    assert struct.unpack_from("<H", bp, 0x224)[0] == 0xFE00 - 0x200  # heap_end_ptr
    assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR
    assert bp[0x22C:0x264] == kernel[0x22C:0x264]  # read-only header fields copied
    assert bp[end:0x2D0] == bytes(0x2D0 - end)
    assert struct.unpack_from("<Q", bp, 0x070)[0] == 0xE0000  # acpi_rsdp_addr
    assert bp[0x1E8] == len(e820)
    assert bp[0x2D0:0x2D0 + 20 * len(e820)] == encode_e820(e820)
    assert bp[0x1EF] == 0  # sentinel left clear: the header was copied by a boot loader


def test_debian_kernel_without_initrd_or_rsdp():
    path = debian_kernel()
    image = load(Path(path).read_bytes(), None, "", rsdp=None, path=path)
    bp = image.boot_params
    assert struct.unpack_from("<II", bp, 0x218) == (0, 0)
    assert struct.unpack_from("<Q", bp, 0x070)[0] == 0
    assert dict(image.writes)[CMDLINE_ADDR] == b"\0"


def test_debian_kernel_needs_enough_ram():
    path = debian_kernel()
    with pytest.raises(KernelLoadError, match=r"-kernel .*vmlinuz.*: the kernel needs RAM up"):
        load(Path(path).read_bytes(), ram=48 * MiB, path=path)


# --- page tables and entry state -------------------------------------------------------

def translate(image: LinuxBootImage, vaddr: int) -> int:
    pml4e = read_u(image, PAGE_TABLES_ADDR + 8 * ((vaddr >> 39) & 511), "<Q")
    assert pml4e & 1
    pdpte = read_u(image, (pml4e & ~0xFFF) + 8 * ((vaddr >> 30) & 511), "<Q")
    assert pdpte & 1 and not pdpte & 0x80
    pde = read_u(image, (pdpte & ~0xFFF) + 8 * ((vaddr >> 21) & 511), "<Q")
    assert pde & 0x83 == 0x83  # present, writable, 2 MiB page
    return (pde & ~0x1FFFFF & ((1 << 52) - 1)) | (vaddr & 0x1FFFFF)


def test_identity_map_covers_4_gib():
    image = load(fake_bzimage(), None)
    for addr in (0, 0x7000, 0x1000200, 0x12345678, 0xFEC00000, 0xFEE00000, 0xFFFFFFFF):
        assert translate(image, addr) == addr
    assert read_u(image, PAGE_TABLES_ADDR + 8, "<Q") == 0  # nothing above 512 GiB
    assert read_u(image, PAGE_TABLES_ADDR + 0x1000 + 8 * 4, "<Q") == 0  # nor above 4 GiB


def decode_descriptor(raw: int) -> tuple[int, int, int]:
    """(base, limit in bytes, flags in SegmentCache layout) of an 8-byte descriptor."""
    base = ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24)
    limit = (raw & 0xFFFF) | (((raw >> 48) & 0xF) << 16)
    flags = (raw >> 32) & 0x00F0FF00
    if flags & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return base, limit, flags


def test_entry_state_is_64_bit_long_mode():
    image = load(fake_bzimage(), None)
    env = X86CPUState()
    env.reset(bsp=True)
    env.eflags |= IF_MASK
    env.regs[3] = 0x1234
    image.set_entry_state(env)
    assert env.rip == 0x1000200
    assert env.regs[R_ESI] == BOOT_PARAMS_ADDR
    assert env.regs[3] == 0  # every other register cleared
    assert env.eflags == 0x2
    assert env.cr[0] & (CR0_PE | CR0_PG) == CR0_PE | CR0_PG
    assert env.cr[3] == PAGE_TABLES_ADDR and env.cr[4] & CR4_PAE
    assert env.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert env.long_mode_active and env.code64 and not env.halted
    cs = env.segs[R_CS]
    assert cs.selector == 0x10 and cs.flags & DESC_L_MASK and not cs.flags & DESC_B_MASK
    for i in (R_DS, R_ES, R_SS, R_FS, R_GS):
        seg = env.segs[i]
        assert (seg.selector, seg.base, seg.limit) == (0x18, 0, 0xFFFFFFFF)
        assert seg.flags & DESC_P_MASK and seg.flags & DESC_B_MASK
    # The GDT in memory says the same as the segment caches.
    assert env.gdt.base == GDT_ADDR
    gdt = dict(image.writes)[GDT_ADDR]
    assert env.gdt.limit == len(gdt) - 1
    entries = struct.unpack(f"<{len(gdt) // 8}Q", gdt)
    assert entries[0] == 0
    assert decode_descriptor(entries[2]) == (0, 0xFFFFFFFF, cs.flags)
    ds = env.segs[R_DS]
    assert decode_descriptor(entries[3]) == (0, 0xFFFFFFFF, ds.flags)
    assert env.tr.selector == 0x20 and decode_descriptor(entries[4])[2] == env.tr.flags


def test_low_memory_areas_do_not_collide():
    image = load(fake_bzimage(), b"x" * 5000)
    spans = sorted((a, a + len(d)) for a, d in image.writes)
    assert spans[0][0] >= 0x500
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    below_1m = [s for s in spans if s[0] < 0x100000]
    assert all(end <= 0x9FC00 for _, end in below_1m)


# --- placement rules and errors (synthetic kernels) ---------------------------------------

def test_initrd_stays_below_reserved_top_of_ram():
    e820 = pc_e820_table(RAM, extra=[E820Entry(RAM - 0x20000, 0x20000, E820_ACPI)])
    image = load(fake_bzimage(), b"i" * 10000, e820=e820)
    assert image.initrd_addr + 10000 <= RAM - 0x20000
    assert image.initrd_addr % 4096 == 0


def test_initrd_respects_initrd_addr_max():
    kernel = bytearray(fake_bzimage())
    struct.pack_into("<I", kernel, 0x22C, 0x3FFFFFF)  # 64 MiB - 1
    image = load(bytes(kernel), b"i" * 8192)
    assert image.initrd_addr + 8192 <= 0x4000000


def test_initrd_too_large():
    with pytest.raises(KernelLoadError, match=r"-initrd .*initrd too large"):
        load(fake_bzimage(), bytes(250 * MiB))


def test_kernel_without_pref_address_goes_to_1_mib():
    image = load(fake_bzimage(pref_address=0), None)
    assert image.kernel_addr == 0x100000 and image.entry_point == 0x100200


def test_not_a_bzimage():
    with pytest.raises(KernelLoadError, match=r"^-kernel /x/y: not a Linux bzImage "
                                              r"\(no HdrS signature\)$"):
        load(b"\x7fELF" + bytes(4096), path="/x/y")
    with pytest.raises(KernelLoadError, match="not a Linux bzImage"):
        load(b"short", path="/x/y")
    bad_flag = bytearray(fake_bzimage())
    bad_flag[0x1FE:0x200] = b"\0\0"
    with pytest.raises(KernelLoadError, match="boot flag"):
        load(bytes(bad_flag))
    assert issubclass(KernelLoadError, VfwError)


def test_old_protocol_and_32_bit_kernels_are_refused():
    with pytest.raises(KernelLoadError, match=r"boot protocol 2\.11 is too old"):
        load(fake_bzimage(protocol=0x20B))
    with pytest.raises(KernelLoadError, match="no 64-bit entry point"):
        load(fake_bzimage(xloadflags=0))
    with pytest.raises(KernelLoadError, match="zImage"):
        load(fake_bzimage(loadflags=0))


def test_command_line_limit():
    load(fake_bzimage(), cmdline="a" * 2047)
    with pytest.raises(KernelLoadError, match="command line too long"):
        load(fake_bzimage(), cmdline="a" * 2048)


def test_truncated_and_too_big_kernels():
    with pytest.raises(KernelLoadError, match="truncated"):
        load(fake_bzimage()[:0x800])
    with pytest.raises(KernelLoadError, match="needs RAM"):
        load(fake_bzimage(init_size=300 * MiB))


def test_rsdp_address_needs_protocol_2_14():
    image = load(fake_bzimage(protocol=0x20D), None, rsdp=0xE0000)
    assert struct.unpack_from("<Q", image.boot_params, 0x070)[0] == 0
    image = load(fake_bzimage(protocol=0x20E), None, rsdp=0xE0000)
    assert struct.unpack_from("<Q", image.boot_params, 0x070)[0] == 0xE0000
