"""virtio-net over a tap, through the test driver, beside raw reads/writes on a second tap.

    sudo python benchmarks/virtio_net.py     # ~20 s; --frames 20000 (root: taps in a netns)

Runs itself again under ``unshare --net`` so the taps live in a private network namespace.
Two taps: ``vfwa`` is vfw's ``-netdev tap`` behind a ``virtio-net-pci`` that the tests' driver
(plugins/vfw-dev-virtio/tests/virtio_driver.py) plays the guest of; ``rawb`` is opened by this
script. The kernel side of each tap is an AF_PACKET socket.

* tx: the driver queues frames on the tx ring, 32 per kick, and the device writes them to the
  tap; counted as they arrive on the AF_PACKET socket of ``vfwa``. Raw: ``os.writev`` of the
  same frames (with the 12-byte vnet header) on the ``rawb`` fd, counted the same way.
* rx: frames sent from the AF_PACKET socket of the tap, 32 at a time; the device reads them
  from the main loop into buffers the driver posted. Raw: ``os.read`` on the ``rawb`` fd.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins" / "vfw-dev-virtio" / "tests"))
MARK = "VFW_BENCH_IN_NETNS"
QD = 32
HDR = bytes(12)


def _frame(size: int) -> bytes:
    return bytes.fromhex("525400aabbcc020000000001") + b"\x88\xb5" + bytes(size - 14)


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(65536)
        except BlockingIOError:
            return n
        n += 1


def _raw(frames: int, size: int) -> tuple[float, float]:
    """(tx seconds, rx seconds) for ``frames`` frames on a raw tap fd."""
    from vfw.net import open_tap

    fd, name = open_tap("rawb")
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    s = _packet_socket(name)
    frame = _frame(size)
    got = 0
    t0 = time.perf_counter()
    while got < frames:
        for _ in range(QD):
            os.writev(fd, [HDR, frame])
        got += _drain(s)
    tx = time.perf_counter() - t0
    got = 0
    t0 = time.perf_counter()
    while got < frames:
        for _ in range(QD):
            s.send(frame)
        while True:
            try:
                os.read(fd, 65536)
            except BlockingIOError:
                break
            got += 1
    rx = time.perf_counter() - t0
    s.close()
    os.close(fd)
    return tx, rx


def _virtio(frames: int, size: int) -> tuple[float, float]:
    vd: Any = importlib.import_module("virtio_driver")  # plugins/vfw-dev-virtio/tests
    Guest, VirtioPCIDriver, make_machine = vd.Guest, vd.VirtioPCIDriver, vd.make_machine

    from vfw.main_loop import main_loop

    m = make_machine("-netdev", "tap,id=n0,ifname=vfwa,script=no,downscript=no",
                     "-device", "virtio-net-pci,netdev=n0", mem="128M")
    dev = next(d for d in m.pci_bus.pci_devices() if d.type_name == "virtio-net-pci")
    subprocess.run(["ip", "link", "set", "vfwa", "up"], check=True)
    g = Guest(m)
    drv = VirtioPCIDriver(g, dev)
    drv.negotiate()
    rxq, txq = drv.setup_queue(0), drv.setup_queue(1)
    drv.driver_ok()
    s = _packet_socket("vfwa")
    frame = _frame(size)
    bufs = [g.alloc(2048, 64) for _ in range(QD)]
    for b in bufs:
        g.write(b, HDR + frame)
    got = 0
    t0 = time.perf_counter()
    while got < frames:
        for b in bufs:
            txq.add([(b, 12 + size)], [])
        txq.publish()
        txq.kick()
        txq.get_used()
        got += _drain(s)
    tx = time.perf_counter() - t0
    rx_bufs = {}
    for _ in range(128):
        a = g.alloc(2048, 64)
        rx_bufs[rxq.add([], [(a, 2048)])] = a
    rxq.publish()
    rxq.kick()
    got = 0
    t0 = time.perf_counter()
    while got < frames:
        for _ in range(QD):
            s.send(frame)
        main_loop().poll(0)
        done = [rx_bufs.pop(u.head) for u in rxq.get_used()]
        got += len(done)
        for addr in done:
            rx_bufs[rxq.add([], [(addr, 2048)])] = addr
        rxq.publish()
        rxq.kick()
    rx = time.perf_counter() - t0
    s.close()
    return tx, rx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    args = ap.parse_args()
    if not os.environ.get(MARK):
        if os.geteuid() != 0:
            sys.exit("virtio_net.py needs root (taps in a network namespace)")
        os.environ[MARK] = "1"
        os.execvp("unshare", ["unshare", "--net", sys.executable, *sys.argv])
    print("| frames of | path | tx frames/s | tx MB/s | rx frames/s | rx MB/s |")
    print("|---|---|---:|---:|---:|---:|")
    for size in (64, 1514):
        for name, fn in (("raw tap fd (Python)", _raw), ("virtio-net-pci", _virtio)):
            tx, rx = fn(args.frames, size)
            print(f"| {size} B | {name} | {args.frames / tx:,.0f} | "
                  f"{args.frames * size / tx / 1e6:,.1f} | {args.frames / rx:,.0f} | "
                  f"{args.frames * size / rx / 1e6:,.1f} |")


if __name__ == "__main__":
    main()
