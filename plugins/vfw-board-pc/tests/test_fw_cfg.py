"""fw_cfg_io through its ports: selector/data, the file directory, and DMA (hostile included)."""

from __future__ import annotations

import struct

import pytest

from vfw.errors import VfwError
from vfw.irq import IRQ
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import reset_root
from vfw_board_pc.fw_cfg import FW_CFG_FILE_FIRST, FWCfgIO, FWCfgKey
from vfw_board_pc.isa import ISABus

RAM_SIZE = 1 << 20
CTL_ERROR, CTL_READ, CTL_SKIP, CTL_SELECT, CTL_WRITE = 1, 2, 4, 8, 16


class Machine:
    """Port I/O space, 1 MiB of RAM at 0 (and a ROM at 1 MiB), fw_cfg as the board maps it."""

    def __init__(self, **props) -> None:
        self.io = MemoryRegion.container("io", 1 << 16)
        self.io_space = AddressSpace("I/O", self.io)
        self.sysmem = MemoryRegion.container("system", 1 << 64)
        self.ram = MemoryRegion.ram("ram", RAM_SIZE)
        self.sysmem.add_subregion(0, self.ram)
        self.mem = AddressSpace("memory", self.sysmem)
        bus = ISABus.create(self.io, [IRQ(None, n) for n in range(16)])
        self.fw_cfg = FWCfgIO(**props)
        self.fw_cfg.dma_as = self.mem
        bus.attach(self.fw_cfg)

    def select(self, key: int) -> None:
        self.io_space.write(0x510, key, 2)

    def read(self, n: int) -> bytes:
        return bytes(self.io_space.read(0x511, 1) for _ in range(n))

    def dma(self, addr: int) -> None:
        """What Linux and SeaBIOS do: outl(cpu_to_be32(high), 0x514), then the low half."""
        bswap = lambda v: int.from_bytes(v.to_bytes(4, "big"), "little")  # noqa: E731
        self.io_space.write(0x514, bswap(addr >> 32), 4)
        self.io_space.write(0x518, bswap(addr & 0xFFFFFFFF), 4)

    def put_descriptor(self, at: int, control: int, length: int, address: int) -> None:
        self.mem.write_bytes(at, struct.pack(">IIQ", control, length, address))

    def control(self, at: int) -> int:
        return int(struct.unpack(">I", self.mem.read_bytes(at, 4))[0])


@pytest.fixture(autouse=True)
def fresh_tree():
    reset_root()
    yield
    reset_root()


def test_signature_id_and_reads_past_the_end():
    m = Machine()
    m.select(FWCfgKey.SIGNATURE)
    assert m.read(6) == b"QEMU\0\0"
    m.select(FWCfgKey.ID)
    assert m.read(4) == struct.pack("<I", 3)  # traditional interface + DMA
    m.select(0x3FFF)  # no such key: nothing selected, reads give 0
    assert m.read(2) == b"\0\0"
    m.select(FWCfgKey.SIGNATURE)
    assert m.read(2) == b"QE"
    m.fw_cfg.reset()
    assert m.read(4) == b"QEMU"  # reset selects the signature again
    assert m.io_space.read(0x514, 4) == int.from_bytes(b"QEMU", "little")
    assert m.io_space.read(0x510, 2) == 0xFFFF  # only byte reads of the data port are valid
    no_dma = Machine(dma_enabled=False)
    no_dma.select(FWCfgKey.ID)
    assert no_dma.read(4) == struct.pack("<I", 1)
    assert no_dma.io_space.read(0x514, 4) == 0xFFFFFFFF  # not mapped


def test_integers_and_the_file_directory():
    m = Machine()
    f = m.fw_cfg
    f.add_i16(FWCfgKey.NB_CPUS, 4)
    f.add_i32(FWCfgKey.KERNEL_SIZE, 0x12345678)
    f.add_i64(FWCfgKey.RAM_SIZE, 128 << 20)
    f.add_string(FWCfgKey.KERNEL_CMDLINE, "console=ttyS0")
    m.select(FWCfgKey.NB_CPUS)
    assert m.read(2) == b"\x04\x00"
    m.select(FWCfgKey.KERNEL_SIZE)
    assert m.read(4) == bytes.fromhex("78563412")
    m.select(FWCfgKey.RAM_SIZE)
    assert m.read(8) == struct.pack("<Q", 128 << 20)
    m.select(FWCfgKey.KERNEL_CMDLINE)
    assert m.read(14) == b"console=ttyS0\0"
    assert f.add_file("etc/zeta", b"zzz") == FW_CFG_FILE_FIRST
    assert f.add_file("bootorder", b"/pci@i0cf8/\0") == FW_CFG_FILE_FIRST + 1
    assert f.add_file("etc/acpi/tables", bytes(100)) == FW_CFG_FILE_FIRST + 2
    m.select(FWCfgKey.FILE_DIR)
    count = struct.unpack(">I", m.read(4))[0]
    entries = [struct.unpack(">IHH56s", m.read(64)) for _ in range(count)]
    assert [(e[3].rstrip(b"\0").decode(), e[0], e[1], e[2]) for e in entries] == [
        ("bootorder", 12, 0x21, 0), ("etc/acpi/tables", 100, 0x22, 0), ("etc/zeta", 3, 0x20, 0)]
    m.select(0x21)
    assert m.read(12) == b"/pci@i0cf8/\0"
    f.modify_file("etc/zeta", b"longer now")
    m.select(FWCfgKey.FILE_DIR)
    raw = m.read(4 + 3 * 64)
    assert struct.unpack_from(">I", raw, 4 + 2 * 64)[0] == 10
    with pytest.raises(VfwError, match="^duplicate fw_cfg file name: bootorder$"):
        f.add_file("bootorder", b"")
    with pytest.raises(VfwError, match="file name too long"):
        f.add_file("x" * 56, b"")


def test_dma_read_with_select_and_zero_fill():
    m = Machine()
    m.fw_cfg.add_file("etc/test", b"0123456789")
    key = m.fw_cfg.file_key("etc/test")
    assert key is not None
    m.mem.write_bytes(0x2000, b"\xAA" * 32)
    m.put_descriptor(0x1000, (key << 16) | CTL_SELECT | CTL_READ, 4, 0x2000)
    m.dma(0x1000)
    assert m.control(0x1000) == 0
    assert m.mem.read_bytes(0x2000, 5) == b"0123\xAA"
    m.put_descriptor(0x1000, CTL_SKIP, 2, 0)  # skip "45", same selection
    m.dma(0x1000)
    m.put_descriptor(0x1000, CTL_READ, 8, 0x2010)  # 4 bytes left, then zeros
    m.dma(0x1000)
    assert m.control(0x1000) == 0
    assert m.mem.read_bytes(0x2010, 9) == b"6789\0\0\0\0\xAA"
    assert m.read(1) == b"\0"  # the port interface shares the position: at the end
    m.put_descriptor(0x1000, (FWCfgKey.SIGNATURE << 16) | CTL_SELECT, 0, 0)
    m.dma(0x1000)  # select only
    assert m.read(4) == b"QEMU"
    m.io_space.write(0x514, int.from_bytes((0x1000).to_bytes(8, "big"), "little"), 8)
    assert m.control(0x1000) == 0  # one 8-byte write starts it too


def test_hostile_dma_descriptors():
    m = Machine()
    m.fw_cfg.add_file("etc/blob", bytes(range(64)))
    key = m.fw_cfg.file_key("etc/blob")
    assert key is not None
    before = m.mem.read_bytes(0, RAM_SIZE)
    # The descriptor itself outside RAM: nothing happens, nothing breaks.
    for addr in (0xDEAD0000, (1 << 64) - 8, (1 << 64) - 1):
        m.dma(addr)
    assert m.mem.read_bytes(0, RAM_SIZE) == before
    # Half of it in RAM: unreadable, but its control field is RAM and gets the error bit.
    m.dma(RAM_SIZE - 8)
    assert m.control(RAM_SIZE - 8) == CTL_ERROR
    m.mem.write_bytes(RAM_SIZE - 8, bytes(8))
    sel_read = (key << 16) | CTL_SELECT | CTL_READ
    # A target outside RAM, straddling its end, or wrapping past 2^64: the error bit.
    for length, target in ((16, 0xDEAD0000), (64, RAM_SIZE - 8), (16, (1 << 64) - 8),
                           (0xFFFFFFFF, 0x3000), (0xFFFFFFFF, 0)):
        m.put_descriptor(0x1000, sel_read, length, target)
        m.dma(0x1000)
        assert m.control(0x1000) == CTL_ERROR, (length, target)
    assert m.mem.read_bytes(RAM_SIZE - 8, 8) == before[-8:]
    # Writes are refused; so is an unknown key (reads give zeros, writes an error).
    m.put_descriptor(0x1000, (key << 16) | CTL_SELECT | CTL_WRITE, 4, 0x3000)
    m.dma(0x1000)
    assert m.control(0x1000) == CTL_ERROR
    m.mem.write_bytes(0x3000, b"\xFF" * 4)
    m.put_descriptor(0x1000, (0x3FFF << 16) | CTL_SELECT | CTL_READ, 4, 0x3000)
    m.dma(0x1000)
    assert m.control(0x1000) == 0 and m.mem.read_bytes(0x3000, 4) == b"\0\0\0\0"
    # A descriptor whose target is the descriptor itself: data lands, status overwrites.
    m.put_descriptor(0x1000, sel_read, 16, 0x1000)
    m.dma(0x1000)
    assert m.mem.read_bytes(0x1004, 12) == bytes(range(4, 16))
    assert m.control(0x1000) == 0
    # No DMA address space: logged, ignored.
    m.fw_cfg.dma_as = None
    m.dma(0x1000)
