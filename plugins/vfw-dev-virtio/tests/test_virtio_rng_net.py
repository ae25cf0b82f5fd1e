"""virtio-rng-pci and virtio-net-pci driven by the test driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio_driver import STATUS_DRIVER_OK, STATUS_NEEDS_RESET, Guest, VirtioPCIDriver, make_machine

from vfw.errors import VfwError
from vfw.main_loop import main_loop
from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
MANY = settings(max_examples=10_000 if CI else 300, deadline=None,
                suppress_health_check=list(HealthCheck))


def _device(machine: Any, type_name: str) -> Any:
    return next(d for d in machine.pci_bus.pci_devices() if d.type_name == type_name)


class Rng:
    def __init__(self) -> None:
        self.machine = make_machine("-device", "virtio-rng-pci")
        self.guest = Guest(self.machine)
        self.drv = VirtioPCIDriver(self.guest, _device(self.machine, "virtio-rng-pci"))
        self.start()

    def start(self) -> None:
        self.guest.free_all()
        self.drv.negotiate()
        self.q = self.drv.setup_queue(0)
        self.drv.driver_ok()
        self.buf = self.guest.alloc(128 * 1024)


def test_rng_fills_buffers() -> None:
    r = Rng()
    assert r.guest.cfg_read(r.drv.devfn, 2, 2) == 0x1044
    r.guest.write(r.buf, bytes(64))
    r.q.add([], [(r.buf, 32), (r.buf + 32, 32)])
    r.q.publish()
    r.q.kick()
    used = r.q.get_used()
    assert used[0].length == 64 and r.guest.read(r.buf, 64) != bytes(64)


_RNG: dict[str, Rng] = {}


@MANY
@given(ins=st.lists(st.integers(0, 8192), min_size=1, max_size=4),
       outs=st.lists(st.integers(0, 64), max_size=2))
def test_rng_any_request(ins: Any, outs: Any) -> None:
    from vfw.qom import get_root

    if "r" not in _RNG or get_root().children.get("machine") is not _RNG["r"].machine:
        _RNG["r"] = Rng()
    r = _RNG["r"]
    if r.drv.status & STATUS_NEEDS_RESET:
        r.start()
    r.q.add([(r.buf, n) for n in outs], [(r.buf, n) for n in ins])
    r.q.publish()
    r.q.kick()
    if outs and any(ins):
        pass  # readable buffers before writable ones are fine
    if r.drv.status & STATUS_NEEDS_RESET:
        return
    used = r.q.get_used()
    assert len(used) == 1 and used[0].length <= min(sum(ins), 64 * 1024)


# --- virtio-net ------------------------------------------------------------------------


class Net:
    def __init__(self, *extra: str, dev: str = "virtio-net-pci,mac=52:54:00:aa:bb:cc") -> None:
        self.machine = make_machine(*extra, "-device", dev)
        self.dev = _device(self.machine, "virtio-net-pci")
        self.guest = Guest(self.machine)
        self.drv = VirtioPCIDriver(self.guest, self.dev)
        self.start()

    def start(self, want: int | None = None) -> None:
        self.guest.free_all()
        self.features = self.drv.negotiate(want)
        self.rx = self.drv.setup_queue(0)
        self.tx = self.drv.setup_queue(1)
        self.drv.driver_ok()
        self.buf = self.guest.alloc(256 * 1024)


def test_net_config_and_link() -> None:
    n = Net()
    g = n.guest
    assert g.cfg_read(n.drv.devfn, 2, 2) == 0x1041
    mac = bytes(n.drv.config_read(i, 1) for i in range(6))
    assert mac == bytes.fromhex("525400aabbcc")
    assert n.drv.config_read(6, 2) & 1  # link up
    gen = n.drv.cr(0x15, 1)
    n.dev.vdev.set_link(False)
    assert not n.drv.config_read(6, 2) & 1 and n.drv.cr(0x15, 1) != gen
    assert n.drv.isr() & 2


def test_net_tx_without_backend_completes() -> None:
    n = Net()
    n.guest.write(n.buf, bytes(12) + b"\xff" * 60)
    n.tx.add([(n.buf, 72)], [])
    n.tx.publish()
    n.tx.kick()
    assert [u.length for u in n.tx.get_used()] == [0]
    n.tx.add([(n.buf, 4)], [])  # shorter than the header: protocol violation
    n.tx.publish()
    n.tx.kick()
    assert n.drv.status & STATUS_NEEDS_RESET


def test_netdev_errors() -> None:
    with pytest.raises(VfwError, match="Parameter 'type' does not accept value 'user'"):
        make_machine("-netdev", "user,id=n0")
    with pytest.raises(VfwError, match="fd="):
        make_machine("-netdev", "tap,id=n0,fd=3")
    with pytest.raises(VfwError, match="vhost"):
        make_machine("-netdev", "tap,id=n0,vhost=on")
    with pytest.raises(VfwError, match="can't find value 'zz'"):
        make_machine("-device", "virtio-net-pci,netdev=zz")


_NET: dict[str, Net] = {}


@MANY
@given(queue=st.sampled_from([0, 1]), outs=st.lists(st.integers(0, 2000), max_size=3),
       ins=st.lists(st.integers(0, 2000), min_size=1, max_size=3))
def test_net_any_request(queue: Any, outs: Any, ins: Any) -> None:
    from vfw.qom import get_root

    if "n" not in _NET or get_root().children.get("machine") is not _NET["n"].machine:
        _NET["n"] = Net()
    n = _NET["n"]
    if n.drv.status & STATUS_NEEDS_RESET or not n.drv.status & STATUS_DRIVER_OK:
        n.start()
    q = n.rx if queue == 0 else n.tx
    if len(q.free) < 8:
        n.start()
        q = n.rx if queue == 0 else n.tx
    q.add([(n.buf, k) for k in outs], [(n.buf + 4096, k) for k in ins])
    q.publish()
    q.kick()
    if n.drv.status & STATUS_NEEDS_RESET:
        return
    if queue == 1:
        assert len(q.get_used()) == 1


# --- a real tap in a network namespace ---------------------------------------------------


def _can_tap() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and os.path.exists(
        "/dev/net/tun")


def test_tap_rx_tx_in_a_network_namespace() -> None:
    """Runs :func:`tap_rx_tx` in a private network namespace (``unshare --net``), so the tap
    never appears on the host."""
    need(_can_tap() and shutil.which("unshare") is not None,
         "needs root, iproute2 (ip), unshare and /dev/net/tun for a tap in a netns")
    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import test_virtio_rng_net as t; "
            f"t.tap_rx_tx(); print('TAP OK')")
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "TAP OK" in r.stdout, r.stdout + r.stderr


def tap_rx_tx() -> None:
    """Frames both ways between the guest's rings and a tap (run inside a netns)."""
    import socket

    tap = f"vfwtap{os.getpid() % 10000}"
    n = Net("-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            dev="virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc")
    backend = n.dev.vdev.backend
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    try:
        subprocess.run(["ip", "link", "set", tap, "up"], check=True)
        assert backend.offload == (0x1 | 0x2 | 0x4 | 0x8)  # the guest negotiated them all
        sock.bind((tap, 0))
        where = {}
        for k in range(8):
            where[n.rx.add([], [(n.buf + 2048 * k, 2048)])] = n.buf + 2048 * k
        n.rx.publish()
        n.rx.kick()
        frame = bytes.fromhex("525400aabbcc") + bytes.fromhex("020000000001") + b"\x88\xb5" \
            + b"vfw rx test".ljust(50, b"\0")
        sock.send(frame)
        found = False
        for _ in range(100):
            main_loop().poll(20_000_000)
            for u in n.rx.get_used():
                pkt = n.guest.read(where[u.head], u.length)
                found = found or pkt[12:] == frame
            if found:
                break
        assert found, "the frame sent into the tap did not reach the rx ring"
        # tx: the guest sends a frame; the host socket sees it
        out = bytes(6 * [0xFF]) + bytes.fromhex("525400aabbcc") + b"\x88\xb5" \
            + b"vfw tx test".ljust(50, b"\0")
        n.guest.write(n.buf + 64 * 1024, bytes(12) + out)
        n.tx.add([(n.buf + 64 * 1024, 12 + len(out))], [])
        n.tx.publish()
        n.tx.kick()
        assert n.tx.get_used() and n.dev.vdev.tx_frames == 1
        sock.settimeout(2)
        for _ in range(20):
            pkt = sock.recv(2048)
            if pkt[:len(out)] == out:
                break
        else:
            raise AssertionError("tx frame not seen on the tap")
    finally:
        sock.close()
        from vfw.qom import reset_root

        reset_root()
        backend.close()


def test_openstack_style_command_line_is_accepted(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    m = make_machine(
        "-drive", f"file={image},format=raw,if=none,id=drive-virtio-disk0,cache=none,"
                  "discard=ignore",
        "-device", "virtio-blk-pci,scsi=off,bus=pci.0,addr=0x4,drive=drive-virtio-disk0,"
                   "id=virtio-disk0,bootindex=1",
        "-device", "virtio-net-pci,id=net0,mac=fa:16:3e:11:22:33,bus=pci.0,addr=0x3,"
                   "rx_queue_size=512,tx_queue_size=512",
        "-device", "virtio-rng-pci,id=rng0,bus=pci.0,addr=0x5")
    nic = m.pci_bus.device_at(3 << 3)
    assert nic.id == "net0" and [q.max_size for q in nic.queues] == [512, 512]
    assert m.pci_bus.device_at(4 << 3).id == "virtio-disk0"
    with pytest.raises(VfwError, match="fd="):
        make_machine("-netdev", "tap,fd=26,id=hostnet0,vhost=on,vhostfd=28")
