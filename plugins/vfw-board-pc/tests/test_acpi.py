"""ACPI tables (parsed back and disassembled with iasl), the AML encoder, the E820 layout and
the ACPI PM device."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from vfw.irq import IRQ
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import TABLE
from vfw.testing import need
from vfw.timer import CLOCK_VIRTUAL
from vfw_board_pc import aml
from vfw_board_pc.acpi import (
    SLP_TYP_S5,
    AcpiTables,
    build_acpi_tables,
    checksum,
    pc_pci_irq_index,
)
from vfw_board_pc.acpi_pm import (
    PM_TIMER_FREQUENCY,
    PWRBTN_STS,
    SCI_EN,
    SLP_EN,
    TMR_STS,
    WAK_STS,
    AcpiPM,
)
from vfw_board_pc.e820 import (
    E820_ACPI,
    E820_RAM,
    E820_RESERVED,
    E820Entry,
    e820_add,
    encode_e820,
    fw_cfg_e820,
    pc_e820_table,
    pc_ram_split,
)

MiB = 1 << 20
GiB = 1 << 30
BASE = 0xE0040


def build(cpus=(0, 1, 2, 3), **kw) -> AcpiTables:
    kw.setdefault("base_address", BASE)
    kw.setdefault("pci_hole", (0x08000000, 0xFEBFFFFF))
    return build_acpi_tables(list(cpus), **kw)


class Memory:
    """The tables as the guest sees them: RSDP at 0xE0000, blob at its base."""

    def __init__(self, t: AcpiTables, rsdp_addr: int = 0xE0000):
        self.t = t
        self.rsdp_addr = rsdp_addr

    def read(self, addr: int, size: int) -> bytes:
        if self.rsdp_addr <= addr < self.rsdp_addr + len(self.t.rsdp):
            off = addr - self.rsdp_addr
            return self.t.rsdp[off:off + size]
        off = addr - self.t.base_address
        assert off >= 0 and off + size <= len(self.t.blob), hex(addr)
        return self.t.blob[off:off + size]

    def table(self, addr: int) -> bytes:
        length = struct.unpack("<I", self.read(addr + 4, 4))[0]
        data = self.read(addr, length)
        assert sum(data) % 256 == 0, f"bad checksum in {data[:4]!r}"
        return data


def parse(t: AcpiTables) -> dict[str, bytes]:
    """Walk RSDP → XSDT → FADT → DSDT/FACS like an OS; check every checksum and length."""
    mem = Memory(t)
    rsdp = t.rsdp
    assert len(rsdp) == 36
    assert rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    sig, _csum, oem, rev, rsdt_addr, length, xsdt_addr = struct.unpack_from("<8sB6sBIIQ", rsdp)
    assert (oem, rev, length) == (b"VFW   ", 2, 36)
    xsdt = mem.table(xsdt_addr)
    rsdt = mem.table(rsdt_addr)
    assert xsdt[:4] == b"XSDT" and rsdt[:4] == b"RSDT"
    x_ptrs = struct.unpack(f"<{(len(xsdt) - 36) // 8}Q", xsdt[36:])
    r_ptrs = struct.unpack(f"<{(len(rsdt) - 36) // 4}I", rsdt[36:])
    assert list(x_ptrs) == list(r_ptrs)
    tables = {"XSDT": xsdt, "RSDT": rsdt}
    for p in x_ptrs:
        data = mem.table(p)
        tables[data[:4].decode()] = data
    fadt = tables["FACP"]
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    x_facs, x_dsdt = struct.unpack_from("<QQ", fadt, 132)
    assert x_dsdt == dsdt_addr and x_facs in (0, facs_addr)
    tables["DSDT"] = mem.table(dsdt_addr)
    facs = mem.read(facs_addr, 64)
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    assert facs_addr % 64 == 0
    tables["FACS"] = facs
    for sig4, data in tables.items():
        if sig4 != "FACS":
            assert struct.unpack_from("<I", data, 4)[0] == len(data)
            assert data[10:16] == b"VFW   "
    return tables


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    out = []
    off = 44
    while off < len(madt):
        typ, length = madt[off], madt[off + 1]
        assert length >= 2
        out.append((typ, madt[off:off + length]))
        off += length
    assert off == len(madt)
    return out


# --- tables --------------------------------------------------------------------------------

def test_rsdp_and_table_layout():
    t = build()
    tables = parse(t)
    assert set(tables) == {"XSDT", "RSDT", "FACP", "APIC", "DSDT", "FACS"}
    assert set(t.tables) == {"XSDT", "RSDT", "FACP", "APIC", "DSDT", "FACS"}
    for sig, (addr, length) in t.tables.items():
        assert t.base_address <= addr and addr + length <= t.end_address
        assert addr % 16 == 0
        assert t.blob[addr - BASE:addr - BASE + 4] == sig.encode()
    # RSDP is placement independent: its pointers name the blob's tables.
    rsdt_addr, xsdt_addr = struct.unpack_from("<I", t.rsdp, 16)[0], struct.unpack_from(
        "<Q", t.rsdp, 24)[0]
    assert rsdt_addr == t.address_of("RSDT") and xsdt_addr == t.address_of("XSDT")
    # The blob fits between 0xE0000 and the BIOS at 0xF0000 for small machines.
    assert t.end_address < 0xF0000


def test_tables_move_with_base_address():
    a, b = build(base_address=0xE0040), build(base_address=0x7FF0000)
    assert parse(a) and parse(b)
    assert b.address_of("DSDT") - a.address_of("DSDT") == 0x7FF0000 - 0xE0040
    with pytest.raises(ValueError, match="64-byte aligned"):
        build(base_address=0xE0010)
    with pytest.raises(ValueError, match="inclusive"):
        build(pci_hole=(0x8000000, 0xFEC00000))
    with pytest.raises(ValueError):
        build(cpus=())


def test_fadt_fields():
    fadt = parse(build())["FACP"]
    assert fadt[8] >= 3 and len(fadt) == 244
    sci, smi = struct.unpack_from("<HI", fadt, 46)
    assert (sci, smi) == (9, 0)
    pm1a_evt, pm1b_evt, pm1a_cnt, pm1b_cnt, pm2, tmr, gpe0, gpe1 = struct.unpack_from(
        "<8I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, tmr) == (0x600, 0x604, 0x608)
    assert pm1b_evt == pm1b_cnt == pm2 == gpe0 == gpe1 == 0
    assert tuple(fadt[88:94]) == (4, 2, 0, 4, 0, 0)  # PM1_EVT, PM1_CNT, PM2, TMR, GPE0/1 lens
    boot_arch = struct.unpack_from("<H", fadt, 109)[0]
    assert boot_arch & 0x3 == 0x3  # LEGACY_DEVICES | 8042
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 0) and flags & (1 << 2) and flags & (1 << 10)  # WBINVD, C1, RESET_REG
    space, width, _off, access, addr = struct.unpack_from("<BBBBQ", fadt, 116)
    assert (space, width, addr) == (1, 8, 0xCF9) and fadt[128] == 0x06
    x_evt = struct.unpack_from("<BBBBQ", fadt, 148)
    x_cnt = struct.unpack_from("<BBBBQ", fadt, 172)
    x_tmr = struct.unpack_from("<BBBBQ", fadt, 208)
    assert (x_evt[0], x_evt[1], x_evt[4]) == (1, 32, 0x600)
    assert (x_cnt[0], x_cnt[1], x_cnt[4]) == (1, 16, 0x604)
    assert (x_tmr[0], x_tmr[1], x_tmr[4]) == (1, 32, 0x608)
    no_kbd = parse(build(i8042=False))["FACP"]
    assert struct.unpack_from("<H", no_kbd, 109)[0] & 0x2 == 0


def test_madt_entries():
    t = build(cpus=(0, 1, 2, 5))
    madt = parse(t)["APIC"]
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == 0xFEE00000 and flags & 1
    entries = madt_entries(madt)
    lapics = [struct.unpack("<BBBBI", e) for typ, e in entries if typ == 0]
    assert [(uid, apic, fl) for _, _, uid, apic, fl in lapics] == [
        (0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 5, 1)]
    ioapics = [struct.unpack("<BBBBII", e) for typ, e in entries if typ == 1]
    assert [(i[2], i[4], i[5]) for i in ioapics] == [(0, 0xFEC00000, 0)]
    isos = {struct.unpack("<BBBBIH", e)[3]: struct.unpack("<BBBBIH", e)[4:]
            for typ, e in entries if typ == 2}
    assert isos[0] == (2, 0)
    for irq in (5, 9, 10, 11):
        assert isos[irq] == (irq, 0xD)  # active high, level
    nmis = [struct.unpack("<BBBHB", e) for typ, e in entries if typ == 4]
    assert nmis == [(4, 6, 0xFF, 0, 1)]


def test_madt_x2apic_for_large_apic_ids():
    madt = parse(build(cpus=(0, 300)))["APIC"]
    entries = madt_entries(madt)
    x2 = [struct.unpack("<BBHIII", e) for typ, e in entries if typ == 9]
    assert x2 == [(9, 16, 0, 300, 1, 1)]


def test_checksum_helper():
    data = bytearray(b"abc\x00")
    data[3] = checksum(data)
    assert sum(data) % 256 == 0


def _disassemble(tmp_path, t: AcpiTables) -> dict[str, str]:
    need(shutil.which("iasl") is not None, "iasl (acpica-tools) is not installed")
    out = {}
    for sig, (addr, length) in t.tables.items():
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(t.blob[addr - t.base_address:addr - t.base_address + length])
        proc = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True,
                              timeout=60)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text
        assert "Error" not in text and "Warning" not in text, text
        dsl = (tmp_path / f"{sig.lower()}.dsl").read_text()
        assert "Error" not in dsl and "Invalid" not in dsl, dsl[:2000]
        out[sig] = dsl
    return out


def test_iasl_disassembles_every_table(tmp_path):
    t = build(pci_hole64=(0x800000000, 0xFFFFFFFFF))
    dsl = _disassemble(tmp_path, t)
    dsdt = dsl["DSDT"]
    for text in ("PNP0A03", "PNP0501", "PNP0B00", "PNP0303", "_S5_", "_PRT", "ACPI0007"):
        assert text in dsdt, text
    assert re.search(r"Name \(\\_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*Zero,\s*Zero,\s*Zero",
                     dsdt), dsdt[-400:]
    # _CRS: bus numbers, the config ports, both I/O windows, VGA, the 32- and 64-bit holes.
    assert re.search(r"WordBusNumber \([^\n]*\n\s*0x0000,\s*// Granularity\s*0x0000,\s*"
                     r"// Range Minimum\s*0x00FF", dsdt)
    assert re.search(r"IO \(Decode16,\s*0x0CF8,\s*// Range Minimum\s*0x0CF8,.*?0x08,",
                     dsdt, re.S)
    for lo, hi in (("0x0000", "0x0CF7"), ("0x0D00", "0xFFFF"), ("0x000A0000", "0x000BFFFF"),
                   ("0x08000000", "0xFEBFFFFF"), ("0x0000000800000000", "0x0000000FFFFFFFFF")):
        assert re.search(lo + r",\s*// Range Minimum\s*" + hi + r",\s*// Range Maximum",
                         dsdt), (lo, hi)
    # COM1: _UID 1, 0x3f8 len 8, IRQ 4.
    com1 = dsdt[dsdt.index("Device (COM1)"):]
    assert "Name (_UID, One)" in com1
    assert re.search(r"0x03F8,\s*// Range Minimum\s*0x03F8,\s*// Range Maximum\s*"
                     r"0x01,\s*// Alignment\s*0x08,\s*// Length", com1)
    assert re.search(r"IRQNoFlags \(\)\s*\{4\}", com1)
    assert "FEC00000" in dsl["APIC"] and "Local Apic ID : 03" in dsl["APIC"]
    assert "PM1A Event Block Address : 00000600" in dsl["FACP"]


def _prt_from_dsl(dsdt: str) -> dict[tuple[int, int], int]:
    body = dsdt[dsdt.index("Name (_PRT"):]
    pkgs = re.findall(r"Package \(0x04\)\s*\{\s*(\w+),\s*(\w+),\s*(\w+),\s*(\w+)\s*\}", body)
    words = {"Zero": 0, "One": 1}

    def num(s: str) -> int:
        return words[s] if s in words else int(s, 16)

    out = {}
    for addr, pin, src, gsi in pkgs[:128]:
        assert num(src) == 0 and num(addr) & 0xFFFF == 0xFFFF
        out[(num(addr) >> 16, num(pin))] = num(gsi)
    return out


def test_prt_routes_every_slot_and_pin_with_the_swizzle(tmp_path):
    gsis = (16, 17, 18, 19)
    t = build(pci_irq_gsis=gsis)
    prt = _prt_from_dsl(_disassemble(tmp_path, t)["DSDT"])
    assert len(prt) == 128
    for slot in range(32):
        for pin in range(4):
            assert prt[(slot, pin)] == gsis[(slot + pin) % 4] == gsis[pc_pci_irq_index(slot,
                                                                                        pin)]
    # A board with QEMU's PIIX3 swizzle can say so.
    t2 = build(pci_irq_gsis=gsis, pci_irq_swizzle=lambda slot, pin: (slot - 1 + pin) & 3)
    prt2 = _prt_from_dsl(_disassemble(tmp_path, t2)["DSDT"])
    assert prt2[(1, 0)] == 16 and prt2[(2, 0)] == 17 and prt2[(0, 0)] == 19


def test_acpiexec_loads_the_namespace(tmp_path):
    need(shutil.which("acpiexec") is not None, "acpiexec (acpica-tools) is not installed")
    t = build()
    files = []
    for sig in ("DSDT", "FACP", "APIC"):
        addr, length = t.tables[sig]
        path = tmp_path / f"{sig}.dat"
        path.write_bytes(t.blob[addr - BASE:addr - BASE + length])
        files.append(str(path))
    proc = subprocess.run(["acpiexec", "-b", "evaluate \\_SB.PCI0._PRT; evaluate \\_S5; "
                           "evaluate \\_SB.PCI0.ISA.COM1._HID", *files],
                          capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Contains 128 Elements" in text
    assert "[Integer] = 0000000000000005" in text
    # (acpiexec's own hardware self-tests print "Unexpected AE_..." lines: not about us.)
    assert "ACPI Error" not in text and "ACPI Exception" not in text, text


# --- AML encoder ----------------------------------------------------------------------------

def test_aml_primitives():
    assert aml.pkg_length(10) == b"\x0b"
    assert aml.pkg_length(0x3E) == b"\x3f"
    assert aml.pkg_length(0x3F) == bytes([0x41, 0x04])  # 0x41 total
    assert aml.pkg_length(0xFFD) == bytes([0x4F, 0xFF])  # 0xFFF total
    assert aml.pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])  # 0x1003 total
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(0x12) == b"\x0a\x12"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0x12345678) == b"\x0c\x78\x56\x34\x12"
    assert aml.integer(1 << 32) == b"\x0e" + (1 << 32).to_bytes(8, "little")
    assert aml.integer((1 << 64) - 1) == b"\xff"
    assert aml.string("ab") == b"\x0dab\x00"
    assert aml.eisaid("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    assert aml.name_string("^^X") == b"^^X___"
    assert aml.name_string("\\") == b"\\\x00"
    assert aml.name("_UID", 1) == b"\x08_UID\x01"
    assert aml.package(1, 2) == b"\x12\x05\x02\x01\x0a\x02"
    assert aml.method("_STA", 0, aml.return_(0x0F)) == b"\x14\x09_STA\x00\xa4\x0a\x0f"
    assert aml.end_tag() == b"\x79\x00"
    with pytest.raises(ValueError):
        aml.name_seg("TOOLONG")
    with pytest.raises(ValueError):
        aml.eisaid("pnp0a03")
    with pytest.raises(ValueError):
        aml.integer(-1)


def test_aml_resource_descriptors():
    assert aml.io(0x3F8, 0x3F8, 1, 8) == bytes([0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8])
    assert aml.irq_no_flags(4) == bytes([0x22, 0x10, 0x00])
    word = aml.word_io(0x0D00, 0xFFFF)
    assert word[0] == 0x88 and struct.unpack_from("<H", word, 1)[0] == len(word) - 3 == 13
    assert struct.unpack_from("<5H", word, 6) == (0, 0x0D00, 0xFFFF, 0, 0xF300)
    dword = aml.dword_memory(0xE0000000, 0xFEBFFFFF)
    assert dword[0] == 0x87 and len(dword) == 26
    qword = aml.qword_memory(1 << 35, (1 << 36) - 1)
    assert qword[0] == 0x8A and len(qword) == 46
    tmpl = aml.resource_template(aml.irq_no_flags(1))
    assert tmpl == b"\x11\x08\x0a\x05" + bytes([0x22, 0x02, 0x00, 0x79, 0x00])


# --- E820 --------------------------------------------------------------------------------

def test_ram_split():
    assert pc_ram_split(128 * MiB) == (128 * MiB, 0)
    assert pc_ram_split(0xDFFFF000) == (0xDFFFF000, 0)
    assert pc_ram_split(0xE0000000) == (0xE0000000, 0)
    assert pc_ram_split(8 * GiB) == (0xE0000000, 8 * GiB - 0xE0000000)


def test_pc_e820_layout():
    table = pc_e820_table(128 * MiB)
    assert table == [E820Entry(0, 0x9FC00, E820_RAM),
                     E820Entry(0x9FC00, 0x400, E820_RESERVED),
                     E820Entry(0xF0000, 0x10000, E820_RESERVED),
                     E820Entry(0x100000, 127 * MiB, E820_RAM)]
    big = pc_e820_table(6 * GiB, kvm_reserved=True)
    assert E820Entry(0x100000, 0xE0000000 - 0x100000, E820_RAM) in big
    assert E820Entry(0xFEFFC000, 0x4000, E820_RESERVED) in big
    assert big[-1] == E820Entry(4 * GiB, 6 * GiB - 0xE0000000, E820_RAM)
    assert [e.addr for e in big] == sorted(e.addr for e in big)
    assert fw_cfg_e820(6 * GiB) == [E820Entry(0, 0xE0000000, E820_RAM),
                                    E820Entry(4 * GiB, 6 * GiB - 0xE0000000, E820_RAM)]


def test_e820_add_carves_ranges():
    table = pc_e820_table(128 * MiB, extra=[E820Entry(128 * MiB - 0x10000, 0x10000,
                                                      E820_ACPI)])
    assert table[-2:] == [E820Entry(0x100000, 127 * MiB - 0x10000, E820_RAM),
                          E820Entry(128 * MiB - 0x10000, 0x10000, E820_ACPI)]
    middle = e820_add([E820Entry(0, 0x10000, E820_RAM)], E820Entry(0x4000, 0x1000, E820_ACPI))
    assert middle == [E820Entry(0, 0x4000, E820_RAM), E820Entry(0x4000, 0x1000, E820_ACPI),
                      E820Entry(0x5000, 0xB000, E820_RAM)]
    # Laying RAM back over RAM merges.
    assert e820_add(middle, E820Entry(0x4000, 0x1000, E820_RAM)) == [
        E820Entry(0, 0x10000, E820_RAM)]


def test_e820_encoding():
    raw = encode_e820([E820Entry(0x1000, 0x2000, E820_RAM), E820Entry(1 << 32, 5, 2)])
    assert len(raw) == 40
    assert struct.unpack("<QQIQQI", raw) == (0x1000, 0x2000, 1, 1 << 32, 5, 2)


# --- the PM device ----------------------------------------------------------------------------

class FakeClock:
    def __init__(self, monkeypatch, start: int = 10**9):
        self.now = start
        monkeypatch.setattr(CLOCK_VIRTUAL, "now_ns", lambda: self.now)


@pytest.fixture
def pm(monkeypatch):
    clock = FakeClock(monkeypatch)
    dev = TABLE.lookup("vfw-acpi-pm")()
    assert isinstance(dev, AcpiPM) and not dev.USER_CREATABLE
    levels: list[int] = []
    dev.sci = IRQ(lambda n, level: levels.append(level), 0, "sci")
    shutdowns: list[bool] = []
    dev.shutdown_request = lambda: shutdowns.append(True)
    dev.set_realized(True)
    dev.reset()
    root = MemoryRegion.container("io", 1 << 16)
    root.add_subregion(0x600, dev.pm_io)
    space = AddressSpace("io", root)
    dev.test_clock = clock
    dev.test_levels = levels
    dev.test_shutdowns = shutdowns
    dev.test_io = space
    yield dev
    dev.set_realized(False)
    CLOCK_VIRTUAL.timers._heap.clear()


def test_pm_reset_state(pm):
    io = pm.test_io
    assert io.read(0x600, 2) == 0 and io.read(0x602, 2) == 0
    assert io.read(0x604, 2) == SCI_EN  # no SMI_CMD: always in ACPI mode
    assert io.read(0x60C, 4) == 0
    assert pm.test_levels[-1] == 0


def test_pm_timer_counts_at_3_58_mhz(pm):
    io = pm.test_io
    pm.test_clock.now = 0
    assert io.read(0x608, 4) == 0
    pm.test_clock.now = 10**9
    assert io.read(0x608, 4) == PM_TIMER_FREQUENCY & 0xFFFFFF
    pm.test_clock.now = 10 * 10**9  # wraps at 24 bits
    assert io.read(0x608, 4) == (10 * PM_TIMER_FREQUENCY) & 0xFFFFFF
    assert io.read(0x608, 4) >> 24 == 0
    io.write(0x608, 0x12345678, 4)  # read-only
    assert io.read(0x608, 4) == (10 * PM_TIMER_FREQUENCY) & 0xFFFFFF
    # Byte reads see the same counter.
    value = io.read(0x608, 4)
    assert io.read(0x608, 1) == value & 0xFF and io.read(0x60A, 1) == (value >> 16) & 0xFF


def test_pm_timer_overflow_sets_tmr_sts_and_sci(pm):
    io = pm.test_io
    half = (1 << 23) * 10**9 // PM_TIMER_FREQUENCY + 1  # ns per bit-23 toggle
    pm.test_clock.now = 0
    pm.reset()
    assert io.read(0x600, 2) & TMR_STS == 0
    pm.test_clock.now = half
    assert io.read(0x600, 2) & TMR_STS
    io.write(0x600, TMR_STS, 2)  # write 1 to clear
    assert io.read(0x600, 2) & TMR_STS == 0
    assert pm.test_levels[-1] == 0
    # With TMR_EN the SCI follows, from a timer at the next toggle.
    io.write(0x602, TMR_STS, 2)
    pm.test_clock.now = 2 * half + 10
    assert CLOCK_VIRTUAL.timers.run_expired()
    assert pm.test_levels[-1] == 1
    io.write(0x600, TMR_STS, 2)
    assert pm.test_levels[-1] == 0


def test_pm_power_button_raises_sci_when_enabled(pm):
    io = pm.test_io
    pm.power_button()
    assert io.read(0x600, 2) & PWRBTN_STS
    assert pm.test_levels[-1] == 0  # not enabled
    io.write(0x602, PWRBTN_STS, 2)
    assert pm.test_levels[-1] == 1
    io.write(0x601, PWRBTN_STS >> 8, 1)  # byte write clears the high status byte
    assert io.read(0x600, 2) & PWRBTN_STS == 0
    assert pm.test_levels[-1] == 0
    # SCI_EN gates the interrupt.
    io.write(0x604, 0, 2)
    pm.power_button()
    assert pm.test_levels[-1] == 0
    io.write(0x604, SCI_EN, 2)
    assert pm.test_levels[-1] == 1
    pm.reset()
    assert pm.test_levels[-1] == 0 and io.read(0x600, 2) == 0


def test_pm_s5_requests_shutdown(pm):
    io = pm.test_io
    io.write(0x604, SCI_EN | (SLP_TYP_S5 << 10), 2)  # ACPICA writes SLP_TYP first
    assert pm.test_shutdowns == []
    io.write(0x604, SCI_EN | (SLP_TYP_S5 << 10) | SLP_EN, 2)
    assert pm.test_shutdowns == [True]
    assert io.read(0x604, 2) & SLP_EN == 0  # write-only
    # A byte write of the high half works too (SLP_TYP and SLP_EN are both in it).
    io.write(0x605, ((SLP_TYP_S5 << 10) | SLP_EN) >> 8, 1)
    assert pm.test_shutdowns == [True, True]


def test_pm_other_sleep_states_wake_at_once(pm, caplog):
    io = pm.test_io
    io.write(0x604, SCI_EN | (1 << 10) | SLP_EN, 2)
    assert pm.test_shutdowns == []
    assert io.read(0x600, 2) & WAK_STS
    io.write(0x600, WAK_STS, 2)
    assert io.read(0x600, 2) & WAK_STS == 0


def test_pm_without_shutdown_hook_does_not_crash(pm):
    pm.shutdown_request = None
    pm.test_io.write(0x604, (SLP_TYP_S5 << 10) | SLP_EN, 2)


def test_pm_ignores_reserved_and_wide_accesses(pm):
    io = pm.test_io
    io.write(0x606, 0xFFFF, 2)
    io.write(0x60C, 0xFFFFFFFF, 4)
    assert io.read(0x606, 2) == 0 and io.read(0x60C, 4) == 0
    assert io.read(0x600, 8) == (1 << 64) - 1  # 8-byte accesses are refused
    io.write(0x600, (1 << 64) - 1, 8)
    assert pm.test_shutdowns == []
