"""The implicit privileged accesses of mmu.py (interrupt frames, descriptor tables, TSS)."""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")


def test_a_page_crossing_system_write_faults_before_writing_either_page():
    import tcg_harness as h

    from vfw_accel_tcg import mmu
    from vfw_accel_tcg.excp import CpuException

    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m)
    pt = 0x390000  # 4 KiB pages for the first 2 MiB; 0x41000 not present
    m.write(pt, b"".join(struct.pack("<Q", (i << 12) | 3 if i != 0x41 else 0)
                         for i in range(512)))
    m.write(0x3F0000 + 0x2000, struct.pack("<Q", pt | 3))
    m.write(0x40FF8, b"\x11" * 8)
    v.sync_in()
    with pytest.raises(CpuException) as exc:
        mmu.wr_sys(v, 0x40FFC, 8, 0x8877665544332211)
    assert exc.value.vector == 14
    assert exc.value.cr2 == 0x41000
    assert m.read(0x40FF8, 8) == b"\x11" * 8  # nothing written on the present page
    mmu.wr_sys(v, 0x40FF4, 8, 0x8877665544332211)  # within present pages: written
    assert m.read(0x40FF4, 8) == bytes.fromhex("1122334455667788")
