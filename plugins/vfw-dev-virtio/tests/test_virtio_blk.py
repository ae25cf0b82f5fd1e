"""virtio-blk-pci driven by the test driver through port I/O and MMIO, as a guest would."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio_driver import (
    STATUS_DRIVER_OK,
    STATUS_NEEDS_RESET,
    Guest,
    VirtioPCIDriver,
    make_machine,
)

from vfw.errors import VfwError

pytestmark = pytest.mark.requires("vfw-board-pc")

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
IMAGE_SIZE = 1 << 20
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WZ = 0, 1, 4, 8, 11, 13


class Blk:
    def __init__(self, path: str, *extra: str, dev_opts: str = "", drive_opts: str = ""):
        self.path = path
        self.machine = make_machine(
            "-drive", f"file={path},if=none,id=d0,format=raw{drive_opts}",
            "-device", f"virtio-blk-pci,drive=d0,serial=vfw-serial-0123456789AB{dev_opts}",
            *extra)
        self.dev = next(d for d in self.machine.pci_bus.pci_devices()
                        if d.type_name == "virtio-blk-pci")
        self.guest = Guest(self.machine)
        self.drv = VirtioPCIDriver(self.guest, self.dev)
        self.start()

    def start(self, want: int | None = None) -> None:
        self.guest.free_all()
        self.features = self.drv.negotiate(want)
        self.q = self.drv.setup_queue(0)
        self.drv.driver_ok()
        self.hdr = self.guest.alloc(16)
        self.st = self.guest.alloc(1)
        self.buf = self.guest.alloc(256 * 1024, 4096)

    def request(self, rtype: int, sector: int = 0, out: bytes = b"", in_len: int = 0,
                indirect: bool = False) -> tuple[int, int, bytes]:
        g = self.guest
        g.write(self.hdr, struct.pack("<IIQ", rtype, 0, sector))
        g.write(self.st, b"\xff")
        outs = [(self.hdr, 16)]
        if out:
            g.write(self.buf, out)
            outs.append((self.buf, len(out)))
        ins = ([(self.buf, in_len)] if in_len else []) + [(self.st, 1)]
        self.q.add(outs, ins, indirect=indirect)
        self.q.publish()
        self.q.kick()
        used = self.q.get_used()
        assert len(used) == 1
        return g.read(self.st, 1)[0], used[0].length, g.read(self.buf, in_len)


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(IMAGE_SIZE))
    return str(path)


@pytest.fixture
def blk(image: str) -> Blk:
    return Blk(image)


def test_identity_and_capabilities(blk: Blk) -> None:
    g, d = blk.guest, blk.dev.devfn
    assert g.cfg_read(d, 0, 2) == 0x1AF4 and g.cfg_read(d, 2, 2) == 0x1042
    assert g.cfg_read(d, 8, 1) == 1  # revision 1: modern
    assert set(blk.drv.caps) == {1, 2, 3, 4} and blk.drv.cfg_cap
    assert blk.drv.notify_mult == 4
    assert blk.drv.config_read(0, 8) == IMAGE_SIZE // 512
    assert blk.drv.config_read(20, 4) == 512
    assert blk.features >> 32 & 1 and blk.features >> 9 & 1  # VERSION_1, FLUSH


def test_read_write_flush(blk: Blk) -> None:
    data = Path(blk.path).read_bytes()
    status, used, got = blk.request(T_IN, 3, in_len=8192)
    assert (status, used) == (0, 8193) and got == data[3 * 512:3 * 512 + 8192]
    payload = os.urandom(4096)
    assert blk.request(T_OUT, 10, out=payload)[0] == 0
    assert blk.request(T_FLUSH)[0] == 0
    assert Path(blk.path).read_bytes()[5120:5120 + 4096] == payload
    assert blk.request(T_IN, 10, in_len=4096, indirect=True)[2] == payload


def test_get_id_and_errors(blk: Blk) -> None:
    status, _, got = blk.request(T_GET_ID, in_len=20)
    assert status == 0 and got == b"vfw-serial-0123456789AB"[:20]
    assert blk.request(T_GET_ID, in_len=8)[0] == 1                       # buffer < 20
    assert blk.request(T_IN, IMAGE_SIZE // 512, in_len=512)[0] == 1     # past the end
    assert blk.request(T_IN, (1 << 64) - 1, in_len=512)[0] == 1         # overflow
    assert blk.request(T_IN, 0, in_len=100)[0] == 1                     # not whole sectors
    assert blk.request(T_OUT, IMAGE_SIZE // 512 - 1, out=bytes(1024))[0] == 1
    assert blk.request(77)[0] == 2                                       # unsupported
    assert blk.drv.status & STATUS_DRIVER_OK and not blk.drv.status & STATUS_NEEDS_RESET


def test_discard_and_write_zeroes(image: str) -> None:
    blk = Blk(image, drive_opts=",discard=unmap")
    seg = struct.pack("<QII", 8, 16, 0)
    assert blk.request(T_WZ, out=seg)[0] == 0
    assert blk.request(T_DISCARD, out=struct.pack("<QII", 40, 8, 0))[0] == 0
    with open(image, "rb") as f:
        f.seek(8 * 512)
        assert f.read(16 * 512) == bytes(16 * 512)
        f.seek(40 * 512)
        assert f.read(8 * 512) == bytes(8 * 512)
    assert blk.request(T_WZ, out=struct.pack("<QII", IMAGE_SIZE // 512, 1, 0))[0] == 1
    assert blk.request(T_WZ, out=struct.pack("<QII", 0, 1, 2))[0] == 2  # unknown flag


def test_readonly(image: str) -> None:
    before = Path(image).read_bytes()
    blk = Blk(image, drive_opts=",readonly=on")
    assert blk.features >> 5 & 1  # VIRTIO_BLK_F_RO
    assert blk.request(T_OUT, 0, out=bytes(512))[0] == 1
    assert blk.request(T_IN, 0, in_len=512)[0] == 0
    assert Path(image).read_bytes() == before


def test_intx_and_isr(blk: Blk, monkeypatch: pytest.MonkeyPatch) -> None:
    levels = []
    monkeypatch.setattr(blk.dev, "pci_set_irq", lambda level: levels.append(level))
    blk.request(T_IN, 0, in_len=512)
    assert levels == [1]
    assert blk.drv.isr() == 1 and levels[-1] == 0
    assert blk.drv.isr() == 0


def test_msix(blk: Blk) -> None:
    sent = []
    blk.machine.pci_bus.msi_sink = lambda a, d: sent.append((a, d))
    blk.drv.enable_msix()
    blk.drv.negotiate()
    blk.drv.cw(0x10, 0, 2)  # config vector 0
    blk.q = blk.drv.setup_queue(0, vector=1)
    assert blk.drv.cr(0x1A, 2) == 1
    blk.drv.driver_ok()
    blk.request(T_IN, 0, in_len=512)
    assert sent == [(0xFEE00000, 0x41)]
    blk.drv.cw(0x1A, 999, 2)  # an out-of-range vector reads back NO_VECTOR
    assert blk.drv.cr(0x1A, 2) == 0xFFFF


def test_event_idx_suppresses_interrupts(blk: Blk, monkeypatch: pytest.MonkeyPatch) -> None:
    assert blk.features >> 29 & 1
    levels = []
    monkeypatch.setattr(blk.dev, "pci_set_irq", lambda level: levels.append(level))
    blk.q.set_used_event(0)
    blk.request(T_IN, 0, in_len=512)
    assert levels == [1]
    blk.q.set_used_event(50)  # the driver wants no interrupt until entry 50
    blk.request(T_IN, 0, in_len=512)
    assert levels == [1]


def test_hostile_chain_needs_reset_and_recovers(blk: Blk) -> None:
    q = blk.q
    q.write_desc(0, blk.hdr, 16, 1, 1)
    q.write_desc(1, blk.buf, 16, 1, 0)  # loop 0 -> 1 -> 0
    q.put_avail(0)
    q.publish()
    q.kick()
    assert blk.drv.status & STATUS_NEEDS_RESET
    q.kick()  # ignored while broken
    blk.start()
    assert not blk.drv.status & STATUS_NEEDS_RESET
    assert blk.request(T_IN, 0, in_len=512)[0] == 0


def test_refuses_bad_queue_and_features(blk: Blk) -> None:
    drv = blk.drv
    drv.reset()
    drv.cw(0x14, 3, 1)
    drv.cw(0x08, 1, 4)
    drv.cw(0x0C, 1 << 10, 4)  # a feature never offered
    drv.cw(0x14, 11, 1)
    assert not drv.status & 8
    drv.reset()
    blk.start()
    drv.reset()
    drv.negotiate()
    drv.cw(0x16, 0, 2)
    drv.cw(0x18, 100, 2)  # not a power of 2
    drv.cw(0x1C, 1, 2)
    assert drv.cr(0x1C, 2) == 0
    drv.cw(0x16, 7, 2)    # no such queue
    assert drv.cr(0x18, 2) == 0
    drv.cw(0x14, 0xFF, 1)  # nonsense status: ignored or sanitised, never a crash
    drv.reset()


def test_pci_cfg_access_capability(blk: Blk) -> None:
    g, d, cap = blk.guest, blk.dev.devfn, blk.drv.cfg_cap
    g.cfg_write(d, cap + 4, 4, 1)          # BAR 4
    g.cfg_write(d, cap + 8, 0x2000, 4)     # device config: capacity
    g.cfg_write(d, cap + 12, 4, 4)
    assert g.cfg_read(d, cap + 16, 4) == IMAGE_SIZE // 512


def test_if_virtio_and_errors(image: str) -> None:
    m = make_machine("-drive", f"file={image},if=virtio,format=raw")
    assert [d.type_name for d in m.pci_bus.pci_devices()].count("virtio-blk-pci") == 1
    with pytest.raises(VfwError, match="no IDE controller"):
        make_machine("-drive", f"file={image},format=raw")
    with pytest.raises(VfwError, match="vmdk"):
        make_machine("-drive", f"file={image},if=none,id=x,format=vmdk")
    with pytest.raises(VfwError, match="can't find value 'nope'"):
        make_machine("-device", "virtio-blk-pci,drive=nope")
    m = make_machine("-drive", f"file={image},if=none,id=d1,format=raw",
                     "-device", "virtio-blk-pci,drive=d1,bootindex=1,scsi=off,bus=pci.0,addr=6,"
                                "num-queues=2,queue-size=128")
    dev = m.pci_bus.device_at(6 << 3)
    assert dev is not None and len(dev.queues) == 2 and dev.queues[0].max_size == 128


# --- property test: arbitrary requests --------------------------------------------------

_BLK: dict[str, Blk] = {}


def _shared(tmp_path_factory: pytest.TempPathFactory) -> Blk:
    from vfw.qom import get_root

    if "b" not in _BLK or get_root().children.get("machine") is not _BLK["b"].machine:
        path = tmp_path_factory.mktemp("blkprop") / "disk.img"
        path.write_bytes(os.urandom(64 * 1024))
        _BLK["b"] = Blk(str(path), drive_opts=",discard=unmap")
    return _BLK["b"]


@settings(max_examples=10_000 if CI else 300, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(rtype=st.sampled_from([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WZ, 2, 99,
                              1 << 31]),
       sector=st.one_of(st.integers(0, 140), st.integers(0, (1 << 64) - 1)),
       out_len=st.sampled_from([0, 1, 16, 100, 512, 1024, 4096]),
       in_len=st.sampled_from([0, 1, 19, 20, 511, 512, 2048]),
       no_status=st.booleans(), indirect=st.booleans())
def test_any_request_is_answered_safely(tmp_path_factory: pytest.TempPathFactory, rtype: Any, sector: Any, out_len: Any, in_len: Any, no_status: Any, indirect: Any) -> None:
    b = _shared(tmp_path_factory)
    if b.drv.status & STATUS_NEEDS_RESET or not b.drv.status & STATUS_DRIVER_OK:
        b.start()
    g = b.guest
    g.write(b.hdr, struct.pack("<IIQ", rtype & 0xFFFFFFFF, 0, sector))
    g.write(b.st, b"\xff")
    outs = [(b.hdr, 16)] + ([(b.buf, out_len)] if out_len else [])
    ins = ([(b.buf + 8192, in_len)] if in_len else []) + ([] if no_status else [(b.st, 1)])
    if not ins:
        ins = []
    before = b.q.used_idx()
    b.q.add(outs, ins, indirect=indirect)
    b.q.publish()
    b.q.kick()
    if not ins:  # no status byte: the request is refused and the device needs reset
        assert b.drv.status & STATUS_NEEDS_RESET
        return
    if b.drv.status & STATUS_NEEDS_RESET:
        return
    used = b.q.get_used()
    assert b.q.used_idx() == (before + 1) & 0xFFFF and len(used) == 1
    status = g.read(b.st, 1)[0]
    if no_status:
        return  # the last byte of the data buffer took the status
    assert status in (0, 1, 2)
    if rtype == T_IN and status == 0:
        data = Path(b.path).read_bytes()
        assert g.read(b.buf + 8192, in_len) == data[sector * 512:sector * 512 + in_len]


# --- property test: arbitrary register traffic ---------------------------------------------

_REGION = st.sampled_from([0x0000, 0x1000, 0x2000, 0x3000])


@settings(max_examples=1_000 if CI else 200, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.tuples(st.sampled_from(["r", "w", "cfgr", "cfgw"]), _REGION,
                              st.integers(0, 0x40), st.sampled_from([1, 2, 4, 8]),
                              st.integers(0, (1 << 64) - 1)), max_size=30))
def test_any_register_traffic_is_safe(tmp_path_factory: pytest.TempPathFactory, ops: Any) -> None:
    """Random MMIO and configuration-space accesses never raise out of the device."""
    b = _shared(tmp_path_factory)
    mem, g, d = b.guest.mem, b.guest, b.dev.devfn
    base = b.drv.common
    for kind, region, off, size, value in ops:
        if kind == "r":
            mem.read(base + region + off, size)
        elif kind == "w":
            mem.write(base + region + off, value & ((1 << (8 * size)) - 1), size)
        elif size <= 4:
            reg = 0x40 + (off & ~(size - 1)) % 0xC0
            if kind == "cfgr":
                g.cfg_read(d, reg, size)
            elif reg >= 0x40:  # leave the BARs and command register as the driver set them
                g.cfg_write(d, reg, value & ((1 << (8 * size)) - 1), size)
    b.drv.reset()
    b.start()
    assert b.request(T_IN, 0, in_len=512)[0] == 0


def test_busy_queue_is_bounded_then_requeued(blk: Blk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that keeps adding while the device works cannot keep it in one loop."""
    from vfw.main_loop import main_loop

    vdev = blk.dev.vdev
    orig = vdev._run_batch
    calls = []

    def run_and_add_more(q: Any, elems: list[Any]) -> None:
        for _ in elems:  # one more request for every one the device takes
            calls.append(1)
            if len(calls) < 3 * blk.q.size:
                blk.q.get_used()  # reclaim what the device already completed
                blk.q.add([(blk.hdr, 16)], [(blk.buf, 512), (blk.st, 1)])
                blk.q.publish()
        orig(q, elems)

    monkeypatch.setattr(vdev, "_run_batch", run_and_add_more)
    blk.guest.write(blk.hdr, struct.pack("<IIQ", T_IN, 0, 0))
    blk.q.add([(blk.hdr, 16)], [(blk.buf, 512), (blk.st, 1)])
    blk.q.publish()
    blk.q.kick()
    assert len(calls) == 2 * blk.q.size
    for _ in range(10):
        main_loop().poll(0)
        blk.q.get_used()
    assert len(calls) == 3 * blk.q.size
