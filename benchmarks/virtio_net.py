"""virtio-net over a tap, through the test driver, beside raw reads/writes on a second tap.

    .venv/bin/python benchmarks/virtio_net.py   # as root, ~20 s; --frames 20000 --repeat 5
                                                # --chunk 2000

Runs itself again under ``unshare --net`` so the taps live in a private network namespace.
Two taps: ``vfwa`` is vfw's ``-netdev tap`` behind a ``virtio-net-pci`` that the tests' driver
(plugins/vfw-dev-virtio/tests/virtio_driver.py) plays the guest of, through port I/O and MMIO
as a vCPU would; ``rawb`` is opened by this script. The kernel side of each tap is an
AF_PACKET socket.

* tx: the driver keeps 32 fixed tx slots (one descriptor each: vnet header + frame, written
  once, like a driver with fixed request slots); per batch it puts the 32 heads on the avail
  ring, publishes them and kicks (if EVENT_IDX says the device wants it, as Linux decides),
  then reaps the used ring. The device writes each frame to the tap; counted as they arrive
  on the AF_PACKET socket of ``vfwa``. Raw: ``os.writev`` of the same frames (with the
  12-byte vnet header) on the ``rawb`` fd, counted the same way.
* rx: frames sent from the AF_PACKET socket of the tap, 32 at a time; the device reads them
  from the main loop (``main_loop().poll(0)``) into 128 posted 2048-byte buffers; the driver
  reaps and reposts the used ones. Raw: ``os.read`` on the ``rawb`` fd until EAGAIN.

The raw and virtio runs alternate every ``--chunk`` frames (load from other jobs on a shared
machine hits both alike); each of ``--repeat`` runs times ``--frames`` frames per path. The
table gives the best run of each path and the ratio both as best over best and as the median
(and range) of the paired runs' ratios.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins" / "vfw-dev-virtio" / "tests"))
MARK = "VFW_BENCH_IN_NETNS"
QD = 32
RX_BUFS = 128
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


class RawTap:
    """The baseline: a tap fd read and written directly by Python (the "raw tap copy")."""

    def __init__(self) -> None:
        from vfw.net import open_tap

        self.fd, name = open_tap("rawb")
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        self.sock = _packet_socket(name)

    def tx(self, frames: int, size: int) -> float:
        """Seconds to write ``frames`` frames (``os.writev`` of header + frame), QD at a time,
        counted as they arrive on the AF_PACKET socket."""
        fd, s, frame = self.fd, self.sock, _frame(size)
        _drain(s)
        got = 0
        t0 = time.perf_counter()
        while got < frames:
            for _ in range(QD):
                os.writev(fd, [HDR, frame])
            got += _drain(s)
        return time.perf_counter() - t0

    def rx(self, frames: int, size: int) -> float:
        """Seconds to read ``frames`` frames sent QD at a time from the AF_PACKET socket."""
        fd, s, frame = self.fd, self.sock, _frame(size)
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
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()
        os.close(self.fd)


class VirtioTap:
    """virtio-net-pci on tap ``vfwa``, the test driver playing the guest through MMIO."""

    def __init__(self) -> None:
        vd: Any = importlib.import_module("virtio_driver")  # plugins/vfw-dev-virtio/tests
        m = vd.make_machine("-netdev", "tap,id=n0,ifname=vfwa,script=no,downscript=no",
                            "-device", "virtio-net-pci,netdev=n0", mem="128M")
        dev = next(d for d in m.pci_bus.pci_devices() if d.type_name == "virtio-net-pci")
        subprocess.run(["ip", "link", "set", "vfwa", "up"], check=True)
        self.g = g = vd.Guest(m)
        drv = vd.VirtioPCIDriver(g, dev)
        self.event_idx = bool(drv.negotiate() >> vd.EVENT_IDX & 1)
        self.rxq, self.txq = drv.setup_queue(0), drv.setup_queue(1)
        drv.driver_ok()
        self.sock = _packet_socket("vfwa")
        # tx: QD fixed slots, each a one-descriptor chain (header + frame) written once per
        # frame size, like a driver with fixed request slots.
        self.tx_bufs = [g.alloc(2048, 64) for _ in range(QD)]
        self.tx_heads = [self.txq.prepare([(b, 12 + 1514)], []) for b in self.tx_bufs]
        # rx: RX_BUFS fixed slots of 2048 bytes (one device-writable descriptor each: the
        # layout of Linux's non-mergeable "small" buffers); each used one is posted again.
        rx_heads = [self.rxq.prepare([], [(g.alloc(2048, 64), 2048)]) for _ in range(RX_BUFS)]
        self.rxq.put_avail_many(rx_heads)
        self.rxq.publish()
        self.rxq.kick_if_needed(self.event_idx)

    def tx(self, frames: int, size: int) -> float:
        """Seconds to send ``frames`` frames: per batch the driver puts QD chains on the avail
        ring, publishes them and kicks once; counted on the AF_PACKET socket."""
        g, txq, s, heads = self.g, self.txq, self.sock, self.tx_heads
        for b, head in zip(self.tx_bufs, heads, strict=True):
            g.write(b, HDR + _frame(size))
            txq.write_desc(head, b, 12 + size, 0, 0)
        _drain(s)
        got = 0
        t0 = time.perf_counter()
        while got < frames:
            txq.put_avail_many(heads)
            txq.publish()
            txq.kick_if_needed(self.event_idx)
            assert len(txq.reap_flat()) == 2 * QD
            got += _drain(s)
        return time.perf_counter() - t0

    def rx(self, frames: int, size: int) -> float:
        """Seconds to receive ``frames`` frames sent QD at a time from the AF_PACKET socket:
        the device reads them from the main loop; the driver reposts what it reaped."""
        from vfw.main_loop import main_loop

        rxq, s, frame, loop = self.rxq, self.sock, _frame(size), main_loop()
        got = 0
        t0 = time.perf_counter()
        while got < frames:
            for _ in range(QD):
                s.send(frame)
            loop.poll(0)
            done = rxq.reap_flat()  # head, length, head, length, ...
            if done:
                got += len(done) // 2
                rxq.put_avail_many(list(done[0::2]))
                rxq.publish()
                rxq.kick_if_needed(self.event_idx)
        elapsed = time.perf_counter() - t0
        assert done[-1] == 12 + size, done[-2:]
        return elapsed

    def close(self) -> None:
        self.sock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000, help="frames per run")
    ap.add_argument("--chunk", type=int, default=2000,
                    help="frames per turn when the raw and virtio runs alternate")
    ap.add_argument("--repeat", type=int, default=5,
                    help="interleaved repetitions; the best time of each is reported")
    args = ap.parse_args()
    if not os.environ.get(MARK):
        if os.geteuid() != 0:
            sys.exit("virtio_net.py needs root (taps in a network namespace)")
        os.environ[MARK] = "1"
        os.execvp("unshare", ["unshare", "--net", sys.executable, *sys.argv])
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, {args.frames} frames x {args.repeat} runs "
          f"(alternating every {args.chunk})")
    raw, virtio = RawTap(), VirtioTap()
    rows = []
    frames = max(1, args.frames // args.chunk) * args.chunk
    for size in (64, 1514):
        for way in ("tx", "rx"):
            raw_run, virtio_run = getattr(raw, way), getattr(virtio, way)
            pairs = []
            for _ in range(args.repeat):
                # Interleaved in chunks of --chunk frames, so that the load of a shared
                # machine hits both paths alike.
                r = v = 0.0
                for _ in range(max(1, args.frames // args.chunk)):
                    r += raw_run(args.chunk, size)
                    v += virtio_run(args.chunk, size)
                pairs.append((r, v))
            best_raw = min(r for r, _ in pairs)
            best_virtio = min(v for _, v in pairs)
            ratios = sorted(r / v for r, v in pairs)
            rows.append((size, way, frames / best_raw, frames * size / best_raw / 1e6,
                         frames / best_virtio, frames * size / best_virtio / 1e6,
                         best_raw / best_virtio, statistics.median(ratios), ratios[0],
                         ratios[-1]))
    raw.close()
    virtio.close()
    print("| frames of | way | raw tap fd frames/s | MB/s | virtio-net-pci frames/s | MB/s "
          "| best / best | paired runs: median (range) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for size, way, rf, rm, vf, vm, ratio, med, lo, hi in rows:
        print(f"| {size} B | {way} | {rf:,.0f} | {rm:,.1f} | {vf:,.0f} | {vm:,.1f} | "
              f"{ratio:.2f}x | {med:.2f}x ({lo:.2f}–{hi:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
