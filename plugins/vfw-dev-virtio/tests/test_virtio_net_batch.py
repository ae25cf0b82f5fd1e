"""virtio-net batches: the tx chains of one kick go out in ring order with one used.idx update
and one interrupt, also when a bad chain follows good ones; rx fills only as many buffers as
frames are ready and gives the others back, sets num_buffers also in a header split over
descriptors, and survives any rx chain a hostile driver posts.

The back end is a non-blocking datagram socketpair standing in for the tap (one frame per
read or write, EAGAIN when empty); the frames on it carry the 12-byte virtio-net header, as
on a tap with IFF_VNET_HDR.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_rng_net import Net
from virtio_driver import STATUS_NEEDS_RESET

from vfw import net as netdev
from vfw.main_loop import main_loop

pytestmark = pytest.mark.requires("vfw-board-pc")

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
MANY = settings(max_examples=10_000 if CI else 300, deadline=None,
                suppress_health_check=list(HealthCheck))

HDR = bytes(10) + b"\xff\xff"  # num_buffers as garbage: the device must set it to 1


class FakeTapNet(Net):
    """A virtio-net-pci whose back end is one end of a datagram socketpair."""

    def __init__(self) -> None:
        super().__init__()
        self.host, dev_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.host.setblocking(False)
        dev_side.setblocking(False)
        self.backend = netdev.NetBackend("fake", dev_side.detach())
        self.dev.vdev.backend = self.backend
        self.backend.attached = self.dev  # unrealize stops polling it
        self.interrupts = 0
        transport = self.dev.vdev.transport
        real = transport._interrupt

        def counting(vector: int, isr_bit: int) -> None:
            if isr_bit == 1:
                self.interrupts += 1
            real(vector, isr_bit)

        transport._interrupt = counting

    def close(self) -> None:
        self.backend.close()
        self.host.close()

    def frames_out(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.host.recv(65536))
            except BlockingIOError:
                return got

    def poll(self) -> None:
        for _ in range(4):
            main_loop().poll(0)


@pytest.fixture
def fnet() -> Iterator[FakeTapNet]:
    n = FakeTapNet()
    try:
        yield n
    finally:
        n.close()


def test_tx_batch_in_order_one_interrupt(fnet: FakeTapNet) -> None:
    n, g = fnet, fnet.guest
    frames = [bytes([k]) * (60 + k) for k in range(6)]
    for k, f in enumerate(frames):
        a = n.buf + 2048 * k
        g.write(a, HDR + f)
        if k % 2:  # header and frame in separate descriptors
            n.tx.add([(a, 12), (a + 12, len(f))], [])
        else:
            n.tx.add([(a, 12 + len(f))], [])
    n.tx.publish()
    before = n.interrupts
    n.tx.kick()
    assert n.frames_out() == [HDR + f for f in frames]
    assert [u.length for u in n.tx.get_used()] == [0] * 6
    assert n.interrupts - before == 1 and n.dev.vdev.tx_frames == 6


def test_tx_bad_chain_behind_good_ones(fnet: FakeTapNet) -> None:
    n, g = fnet, fnet.guest
    g.write(n.buf, HDR + b"\x01" * 60)
    heads = [n.tx.add([(n.buf, 72)], []), n.tx.add([(n.buf, 72)], []),
             n.tx.add([(n.buf, 4)], []), n.tx.add([(n.buf, 72)], [])]
    n.tx.publish()
    n.tx.kick()
    assert n.frames_out() == [HDR + b"\x01" * 60] * 2
    assert [u.head for u in n.tx.get_used()] == heads[:2]
    assert n.drv.status & STATUS_NEEDS_RESET


def _post(n: FakeTapNet, count: int, size: int = 2048) -> dict[int, int]:
    where = {}
    for k in range(count):
        a = n.buf + 4096 * k
        where[n.rx.add([], [(a, size)])] = a
    n.rx.publish()
    n.rx.kick()
    return where


def test_rx_uses_as_many_buffers_as_frames(fnet: FakeTapNet) -> None:
    n, g = fnet, fnet.guest
    where = _post(n, 8)
    order = list(where)
    q = n.dev.vdev.transport.virtqueue(0)
    for k in range(3):
        n.host.send(HDR + bytes([k + 1]) * 100)
    n.poll()
    used = n.rx.get_used()
    assert [u.head for u in used] == order[:3] and [u.length for u in used] == [112] * 3
    for k, u in enumerate(used):
        assert g.read(where[u.head], 112) == bytes(10) + b"\x01\x00" + bytes([k + 1]) * 100
    assert q.last_avail_idx == 3  # the other five were given back
    for k in range(7):  # more frames than buffers left: five now, two after a refill
        n.host.send(HDR + bytes([k + 10]) * 80)
    n.poll()
    used = n.rx.get_used()
    assert [u.head for u in used] == order[3:] and [u.length for u in used] == [92] * 5
    assert not n.drv.status & STATUS_NEEDS_RESET
    _post(n, 2)
    n.poll()
    assert [u.length for u in n.rx.get_used()] == [92] * 2


def test_rx_header_split_over_descriptors(fnet: FakeTapNet) -> None:
    n, g = fnet, fnet.guest
    g.write(n.buf, b"\xee" * 64)
    n.rx.add([], [(n.buf, 5), (n.buf + 16, 6), (n.buf + 32, 2000)])
    n.rx.publish()
    n.rx.kick()
    n.host.send(HDR + b"\x07" * 50)
    n.poll()
    (u,) = n.rx.get_used()
    assert u.length == 62
    assert g.read(n.buf + 16, 6) == bytes(5) + b"\x01" and g.read(n.buf + 32, 1) == b"\x00"
    assert g.read(n.buf + 33, 50) == b"\x07" * 50


def test_rx_bad_buffer_behind_good_ones(fnet: FakeTapNet) -> None:
    n = fnet
    heads = list(_post(n, 2))
    n.rx.add([(n.buf, 16)], [(n.buf + 64, 2000)])  # device-readable rx buffer
    n.rx.publish()
    n.rx.kick()
    for _ in range(3):
        n.host.send(HDR + b"\x02" * 60)
    n.poll()
    assert [u.head for u in n.rx.get_used()] == heads
    assert n.drv.status & STATUS_NEEDS_RESET


def test_unpop_many_and_a_deferred_error() -> None:
    n = Net()
    q = n.dev.vdev.transport.virtqueue(0)
    good = [n.rx.add([], [(n.buf + 4096 * k, 2048)]) for k in range(3)]
    n.rx.add([(n.buf, 16)], [])  # no writable part: fine for the walker
    n.rx.write_desc(n.rx.free[-1], n.buf, 16, 1, 999)  # a chain with a bad next index
    bad = n.rx.free.pop()
    n.rx.put_avail(bad)
    n.rx.publish()
    chains = q.pop_batch(16)
    assert [c[0] for c in chains] == [*good, chains[3][0]]
    q.unpop(2)  # the last good one and the readable one: walked again next time
    again = q.pop_batch(16)
    assert [c[0] for c in again] == [c[0] for c in chains[2:]]
    with pytest.raises(Exception, match="next index"):
        q.pop_batch(16)


_FN: dict[str, FakeTapNet] = {}


@MANY
@given(outs=st.lists(st.integers(0, 64), max_size=2),
       ins=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
       frames=st.lists(st.integers(0, 2000), max_size=3), posted=st.integers(1, 3))
def test_rx_any_buffers_and_frames(outs: Any, ins: Any, frames: Any, posted: int) -> None:
    from vfw.qom import get_root

    if "n" not in _FN or get_root().children.get("machine") is not _FN["n"].machine:
        _FN["n"] = FakeTapNet()
    n = _FN["n"]
    n.frames_out()
    while True:  # frames left from an earlier case
        try:
            os.read(n.backend.fd, 65536)
        except BlockingIOError:
            break
    if n.drv.status & STATUS_NEEDS_RESET or len(n.rx.free) < 16:
        n.start()
    for _ in range(posted):
        n.rx.add([(n.buf, k) for k in outs], [(n.buf + 4096, k) for k in ins])
    n.rx.publish()
    n.rx.kick()
    for size in frames:
        n.host.send(HDR + b"\x05" * size)
    n.poll()
    used = n.rx.get_used()
    if n.drv.status & STATUS_NEEDS_RESET:
        assert outs and any(outs) or sum(ins) < 12
        return
    assert len(used) <= min(posted, len(frames))
    for u, size in zip(used, frames, strict=False):
        assert u.length == min(12 + size, sum(ins))
    # Use up the buffers left over, so that the next case starts with an empty ring.
    for _ in range(posted - len(used)):
        n.host.send(HDR)
    n.poll()
    n.rx.get_used()


# --- a real tap in a network namespace ---------------------------------------------------


def test_real_tap_batches_and_truncation() -> None:
    """Runs :func:`real_tap_batches` in a private network namespace (``unshare --net``)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from vfw.testing import need

    need(os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("unshare")
         is not None and os.path.exists("/dev/net/tun"),
         "needs root, iproute2 (ip), unshare and /dev/net/tun for a tap in a netns")
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import test_virtio_net_batch as t; "
            f"t.real_tap_batches(); print('TAP OK')")
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "TAP OK" in r.stdout, r.stdout + r.stderr


def real_tap_batches() -> None:
    """Five frames into eight posted buffers, one of them too short for its frame; then a
    tx batch of four frames (run inside a netns)."""
    import subprocess

    tap = f"vfwtb{os.getpid() % 10000}"
    n = Net("-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            dev="virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc")
    backend = n.dev.vdev.backend
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    try:
        try:  # no IPv6 neighbour discovery frames from the kernel in between
            with open(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        sock.bind((tap, 0))
        sizes = [2048, 2048, 100, 2048, 2048, 2048, 2048, 2048]  # the third is too short
        heads = [n.rx.add([], [(n.buf + 4096 * k, size)]) for k, size in enumerate(sizes)]
        n.rx.publish()
        n.rx.kick()
        frames = [bytes.fromhex("525400aabbcc020000000001") + b"\x88\xb5" + bytes([k]) * 500
                  for k in range(5)]
        for f in frames:
            sock.send(f)
        used: list[Any] = []
        for _ in range(100):
            main_loop().poll(20_000_000)
            used += n.rx.get_used()
            if len(used) >= 5:
                break
        assert [u.head for u in used] == heads[:5]
        assert [u.length for u in used] == [12 + 514, 12 + 514, 100, 12 + 514, 12 + 514]
        for k, u in enumerate(used):
            data = n.guest.read(n.buf + 4096 * k, u.length)
            assert data[10:12] == b"\x01\x00" and data[12:] == (frames[k] + bytes(12))[:u.length - 12]
        assert n.dev.vdev.transport.virtqueue(0).last_avail_idx == 5
        out = [bytes(6 * [0xFF]) + bytes.fromhex("525400aabbcc") + b"\x88\xb5" + bytes([k]) * 60
               for k in range(4)]
        for k, f in enumerate(out):
            n.guest.write(n.buf + 65536 + 2048 * k, bytes(12) + f)
            n.tx.add([(n.buf + 65536 + 2048 * k, 12 + len(f))], [])
        n.tx.publish()
        n.tx.kick()
        assert len(n.tx.get_used()) == 4 and n.dev.vdev.tx_frames == 4
        sock.settimeout(2)
        seen = []
        while len(seen) < 4:
            pkt = sock.recv(2048)
            if pkt[:6] == bytes(6 * [0xFF]):
                seen.append(pkt[:len(out[0])])
        assert seen == out
    finally:
        sock.close()
        from vfw.qom import reset_root

        reset_root()
        backend.close()
