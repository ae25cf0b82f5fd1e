"""Multiboot v1 kernels: header search, ELF and a.out-kludge loading, modules, the information
block and the 32-bit entry state. Test kernels are assembled with binutils (as, ld, objcopy)."""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vfw.testing import need
from vfw_board_pc.cpu_state import (
    CR0_PE,
    CR0_PG,
    DESC_B_MASK,
    DESC_L_MASK,
    R_CS,
    R_DS,
    R_EAX,
    R_EBX,
    R_SS,
    X86CPUState,
)
from vfw_board_pc.e820 import pc_e820_table
from vfw_board_pc.linux_loader import KernelLoadError
from vfw_board_pc.multiboot import (
    MULTIBOOT_INFO_ADDR,
    MultibootImage,
    find_multiboot_header,
    load_multiboot,
    split_multiboot_modules,
)

MiB = 1 << 20
RAM = 128 * MiB
MAGIC = 0x1BADB002

ELF_SOURCE = """
    .section .multiboot, "a"
    .align 4
mb_header:
    .long 0x1BADB002
    .long {flags}
    .long -(0x1BADB002 + {flags})
    .text
    .globl _start
_start:
    movl $0xdeadbeef, %eax
    hlt
    jmp _start
    .data
data_marker:
    .ascii "ELF-DATA-SEGMENT"
    .bss
    .globl bss_area
bss_area:
    .space {bss}
"""

ELF_SCRIPT = """
ENTRY(_start)
SECTIONS {{
    . = {vaddr};
    .text : AT({paddr}) {{ *(.multiboot) *(.text) }}
    .data : {{ *(.data) }}
    .bss : {{ *(.bss) *(COMMON) }}
}}
"""

AOUT_SOURCE = """
    .text
    .globl start
start:
    .ascii "PADDING-16-BYTES"
mb_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long mb_header
    .long start
    .long _edata
    .long _end
    .long entry
entry:
    movl $0xcafef00d, %eax
    hlt
    .data
    .ascii "AOUT-DATA"
    .bss
    .space 0x3000
"""

AOUT_SCRIPT = """
SECTIONS {{
    . = {base};
    .text : {{ *(.text) *(.data) }}
    _edata = .;
    .bss : {{ *(.bss) }}
    _end = .;
}}
"""


def tools() -> None:
    for tool in ("as", "ld", "objcopy", "nm"):
        need(shutil.which(tool) is not None, f"binutils' {tool} is not installed")


def assemble(tmp: Path, name: str, source: str, script: str) -> Path:
    tools()
    (tmp / f"{name}.S").write_text(source)
    (tmp / f"{name}.ld").write_text(script)
    subprocess.run(["as", "--32", "-o", str(tmp / f"{name}.o"), str(tmp / f"{name}.S")],
                   check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(tmp / f"{name}.ld"), "-o",
                    str(tmp / f"{name}.elf"), str(tmp / f"{name}.o")],
                   check=True, capture_output=True)
    return tmp / f"{name}.elf"


def symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines())
            if len(parts) == 3}


def elf_kernel(tmp: Path, base: int, *, vaddr: int | None = None, flags: int = 0x3,
               bss: int = 0x2000) -> tuple[bytes, dict[str, int]]:
    elf = assemble(tmp, f"elf{base:x}", ELF_SOURCE.format(flags=f"0x{flags:x}", bss=bss),
                   ELF_SCRIPT.format(vaddr=f"0x{vaddr or base:x}", paddr=f"0x{base:x}"))
    return elf.read_bytes(), symbols(elf)


def aout_kernel(tmp: Path, base: int) -> tuple[bytes, dict[str, int]]:
    elf = assemble(tmp, f"aout{base:x}", AOUT_SOURCE, AOUT_SCRIPT.format(base=f"0x{base:x}"))
    raw = tmp / f"aout{base:x}.bin"
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(raw)], check=True,
                   capture_output=True)
    return raw.read_bytes(), symbols(elf)


class Ram:
    """Guest RAM after the loader's writes, pre-filled with 0xAA to catch unzeroed bss."""

    def __init__(self, image: MultibootImage, size: int = RAM):
        self.data = bytearray(b"\xaa" * size)
        for addr, blob in image.writes:
            self.data[addr:addr + len(blob)] = blob

    def u32(self, addr: int) -> int:
        return int(struct.unpack_from("<I", self.data, addr)[0])

    def cstr(self, addr: int) -> str:
        end = self.data.index(0, addr)
        return self.data[addr:end].decode()


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def load(kernel: bytes, cmdline: str = "", modules=(), path: str = "/boot/mb.elf"
         ) -> MultibootImage:
    image = load_multiboot(kernel, f"{path} {cmdline}".strip(), list(modules),
                           ram_size_below_4g=RAM,
                           e820=pc_e820_table(RAM), kernel_path=path)
    assert image is not None
    return image


def check_info(image: MultibootImage, ram: Ram, cmdline: str,
               modules: list[tuple[bytes, str]]) -> None:
    info = image.info_addr
    flags = ram.u32(info)
    assert flags & 0x1 and flags & 0x4 and flags & 0x8 and flags & 0x40 and flags & 0x200
    assert ram.u32(info + 4) == 640
    assert ram.u32(info + 8) == (RAM - MiB) // 1024
    assert ram.cstr(ram.u32(info + 16)) == cmdline
    assert ram.u32(info + 20) == len(modules)
    mods = ram.u32(info + 24)
    prev_end = image.kernel_range[1]
    for i, (data, mod_cmdline) in enumerate(modules):
        start, end, string, _ = struct.unpack_from("<IIII", ram.data, mods + 16 * i)
        assert start % 4096 == 0 and start >= prev_end
        assert end - start == len(data)
        assert bytes(ram.data[start:end]) == data
        assert ram.cstr(string) == mod_cmdline
        prev_end = end
    mmap_len, mmap_addr = ram.u32(info + 44), ram.u32(info + 48)
    e820 = pc_e820_table(RAM)
    assert mmap_len == 24 * len(e820)
    entries = [struct.unpack_from("<IQQI", ram.data, mmap_addr + 24 * i)
               for i in range(len(e820))]
    assert entries == [(20, e.addr, e.size, e.type) for e in e820]
    assert ram.cstr(ram.u32(info + 64)) == "vfw"
    # The block overlaps neither the kernel nor a module, and lies in RAM below 640 KiB or
    # above 1 MiB.
    for rng in [image.kernel_range, *image.module_ranges]:
        assert not overlaps(image.info_range, rng)
    assert image.info_range[0] <= info < image.info_range[1]
    assert image.info_range[1] <= 0x9FC00 or image.info_range[0] >= MiB


# --- header search -----------------------------------------------------------------------

def header(flags: int = 0, offset: int = 0, size: int = 16384, csum: int | None = None
           ) -> bytes:
    data = bytearray(size)
    csum = (-(MAGIC + flags)) & 0xFFFFFFFF if csum is None else csum
    struct.pack_into("<III", data, offset, MAGIC, flags, csum)
    return bytes(data)


def test_header_search():
    assert find_multiboot_header(bytes(16384)) is None
    assert find_multiboot_header(header(offset=8180)).offset == 8180
    assert find_multiboot_header(header(offset=8192)) is None  # past the first 8 KiB
    assert find_multiboot_header(header(offset=4002)) is None  # not 4-byte aligned
    assert find_multiboot_header(header(csum=0)) is None
    assert find_multiboot_header(b"") is None
    hdr = find_multiboot_header(header(flags=0x10003, offset=64))
    assert hdr is not None and hdr.flags == 0x10003


def test_non_multiboot_file_is_not_ours():
    assert load_multiboot(bytes(9000), "", [], ram_size_below_4g=RAM,
                          e820=pc_e820_table(RAM), kernel_path="/k") is None


def test_split_modules():
    assert split_multiboot_modules("") == []
    assert split_multiboot_modules("a.bin") == [("a.bin", "a.bin")]
    assert split_multiboot_modules("a.bin arg1 arg2,b.bin") == [
        ("a.bin", "a.bin arg1 arg2"), ("b.bin", "b.bin")]
    assert split_multiboot_modules("a.bin x=1,,2,b,,c.bin") == [
        ("a.bin", "a.bin x=1,2"), ("b,c.bin", "b,c.bin")]
    assert split_multiboot_modules("a,,b,") == [("a,b", "a,b")]


# --- ELF kernels ---------------------------------------------------------------------------

@pytest.mark.parametrize("base", [0x100000, 0x10000])
def test_elf_kernel(tmp_path, base):
    kernel, syms = elf_kernel(tmp_path, base)
    modules = [(b"module-one" * 100, "/m/one.bin arg=1"), (b"M2" * 5000, "/m/two.bin")]
    image = load(kernel, "console=ttyS0 x", modules)
    ram = Ram(image)
    assert image.entry_point == syms["_start"]
    assert ram.data[syms["_start"]:syms["_start"] + 5] == b"\xb8\xef\xbe\xad\xde"
    assert ram.data[syms["data_marker"]:syms["data_marker"] + 16] == b"ELF-DATA-SEGMENT"
    bss = syms["bss_area"]
    assert bytes(ram.data[bss:bss + 0x2000]) == bytes(0x2000)
    assert image.kernel_range == (base, bss + 0x2000)
    assert ram.u32(base) == MAGIC  # the header is the first thing in .text
    check_info(image, ram, "/boot/mb.elf console=ttyS0 x", modules)


def test_info_block_moves_when_the_kernel_covers_0x9000(tmp_path):
    kernel, syms = elf_kernel(tmp_path, 0x8000, bss=0x4000)
    image = load(kernel, "", [(b"mod", "m")])
    assert image.kernel_range[0] <= MULTIBOOT_INFO_ADDR < image.kernel_range[1]
    assert image.info_addr != MULTIBOOT_INFO_ADDR
    check_info(image, Ram(image), "/boot/mb.elf", [(b"mod", "m")])


def test_info_block_at_0x9000_by_default(tmp_path):
    kernel, _ = elf_kernel(tmp_path, 0x100000)
    image = load(kernel)
    assert image.info_range[0] == MULTIBOOT_INFO_ADDR


def test_elf_entry_translated_to_physical(tmp_path):
    kernel, syms = elf_kernel(tmp_path, 0x200000, vaddr=0xC0200000)
    image = load(kernel)
    assert syms["_start"] >= 0xC0200000
    assert image.entry_point == syms["_start"] - 0xC0200000 + 0x200000
    ram = Ram(image)
    assert ram.data[image.entry_point] == 0xB8  # movl $imm, %eax


def test_entry_state(tmp_path):
    kernel, syms = elf_kernel(tmp_path, 0x100000)
    image = load(kernel)
    env = X86CPUState()
    env.reset(bsp=True)
    image.set_entry_state(env)
    assert env.regs[R_EAX] == 0x2BADB002 and env.regs[R_EBX] == image.info_addr
    assert env.rip == syms["_start"] and env.eflags == 0x2
    assert env.cr[0] & CR0_PE and not env.cr[0] & CR0_PG
    assert env.efer == 0 and not env.long_mode_active
    cs, ds, ss = env.segs[R_CS], env.segs[R_DS], env.segs[R_SS]
    assert env.code32 and not cs.flags & DESC_L_MASK
    assert (cs.base, cs.limit, cs.selector) == (0, 0xFFFFFFFF, 0x10)
    assert (ds.base, ds.limit, ds.selector) == (0, 0xFFFFFFFF, 0x18)
    assert ss.flags & DESC_B_MASK
    # The GDT is in the information block, so it survives like the block does.
    assert image.info_range[0] <= env.gdt.base < image.info_range[1]
    ram = Ram(image)
    code = struct.unpack_from("<Q", ram.data, env.gdt.base + 0x10)[0]
    assert (code >> 32) & 0x00F0FF00 == cs.flags


def test_elf64_refused(tmp_path):
    kernel = bytearray(header(flags=0x3, offset=0x100))
    kernel[:5] = b"\x7fELF\x02"
    with pytest.raises(KernelLoadError, match="Cannot load x86-64 image, give a 32bit one"):
        load(bytes(kernel))


def test_not_elf_without_kludge_refused():
    with pytest.raises(KernelLoadError, match=r"-kernel /boot/mb.elf: multiboot kernel is not "
                                              r"ELF"):
        load(header(flags=0x3))


def test_unsupported_flags(tmp_path, caplog):
    with pytest.raises(KernelLoadError, match=r"requires features .* \(header flags 0x8\)"):
        load(header(flags=0x8))
    kernel, _ = elf_kernel(tmp_path, 0x100000, flags=0x7)
    with caplog.at_level(logging.WARNING):
        load(kernel)
    assert "video mode" in caplog.text


def test_module_too_big(tmp_path):
    kernel, _ = elf_kernel(tmp_path, 0x100000)
    with pytest.raises(KernelLoadError, match=r"-initrd /m/big: multiboot module"):
        load(kernel, "", [(bytes(RAM), "/m/big arg")])


def test_segment_outside_ram(tmp_path):
    kernel, _ = elf_kernel(tmp_path, RAM - 0x1000)
    with pytest.raises(KernelLoadError, match="outside RAM"):
        load(kernel)


# --- a.out kludge ---------------------------------------------------------------------------

@pytest.mark.parametrize("base", [0x100000, 0x10000])
def test_aout_kludge(tmp_path, base):
    raw, syms = aout_kernel(tmp_path, base)
    assert not raw.startswith(b"\x7fELF")
    hdr = find_multiboot_header(raw)
    assert hdr is not None and hdr.offset == 16
    assert (hdr.header_addr, hdr.load_addr, hdr.entry_addr) == (
        syms["mb_header"], base, syms["entry"])
    modules = [(b"\x01\x02\x03", "/mods/a.bin a,b")]
    image = load(raw, "c=1", modules, path="/k.bin")
    ram = Ram(image)
    assert image.entry_point == syms["entry"]
    assert bytes(ram.data[base:base + len(raw)]) == raw
    assert ram.data[syms["entry"]:syms["entry"] + 5] == b"\xb8\x0d\xf0\xfe\xca"
    assert bytes(ram.data[syms["_edata"]:syms["_end"]]) == bytes(syms["_end"] - syms["_edata"])
    assert image.kernel_range == (base, syms["_end"])
    check_info(image, ram, "/k.bin c=1", modules)


def test_aout_inconsistent_addresses(tmp_path):
    raw, syms = aout_kernel(tmp_path, 0x100000)
    bad = bytearray(raw)
    struct.pack_into("<I", bad, 16 + 16, syms["mb_header"] + 0x100)  # load_addr > header_addr
    with pytest.raises(KernelLoadError, match="inconsistent"):
        load(bytes(bad))
    bad = bytearray(raw)
    struct.pack_into("<I", bad, 16 + 20, 0x100000 + len(raw) + 0x1000)  # load_end past file
    with pytest.raises(KernelLoadError, match="beyond the end of the file"):
        load(bytes(bad))
