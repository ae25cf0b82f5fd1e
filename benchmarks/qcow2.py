"""qcow2 vs raw throughput through vfw's block driver API, and qemu-img bench on the same files.

    .venv/bin/python benchmarks/qcow2.py [--size-mib 256] [--seconds 1.5]

Workloads (queue depth 1, page cache warm, as a guest without O_DIRECT sees it):
  seq-read 1M   sequential 1 MiB reads of allocated data
  seq-write 1M  sequential 1 MiB overwrites of allocated data
  alloc-write 1M  sequential 1 MiB writes to a fresh (empty) image: cluster allocation
  rand-read 4K / rand-write 4K  random 4 KiB requests over allocated data
qemu-img bench runs the sequential workloads (it has no random pattern) with -d 1 -t writeback.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vfw-core" / "src"))

from vfw.block import open_image  # noqa: E402

MiB = 1 << 20


def run_for(seconds: float, step: Any) -> float:
    """Bytes per second of ``step()`` (which returns bytes moved) over about ``seconds``."""
    done = 0
    start = time.perf_counter()
    while True:
        done += int(step())
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def interleaved(seconds: float, steps: dict[str, Any], batch: int = 16) -> dict[str, float]:
    """Bytes per second of each step, run in alternating batches so that a busy machine slows
    them all alike (this host's page-cache copy speed varies by 2-3x from second to second)."""
    done = dict.fromkeys(steps, 0)
    spent = dict.fromkeys(steps, 0.0)
    end = time.perf_counter() + seconds * len(steps)
    while time.perf_counter() < end:
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(batch):
                done[name] += step()
            spent[name] += time.perf_counter() - t0
    return {name: done[name] / spent[name] for name in steps}


def vfw_workloads(paths: dict[str, Path], size: int, seconds: float
                  ) -> dict[str, dict[str, float]]:
    """Each workload on every image (format -> path), interleaved."""
    drivers = {fmt: open_image(str(path), format=fmt) for fmt, path in paths.items()}
    # page-aligned buffers, like guest RAM (an unaligned bytearray copies up to 2x slower)
    big = memoryview(mmap.mmap(-1, MiB))
    small = memoryview(mmap.mmap(-1, 4096))
    rnd = random.Random(1)

    def make(drv: Any, kind: str) -> Any:
        pos = [0]

        def step() -> int:
            if kind.startswith("seq"):
                off = pos[0]
                pos[0] = (pos[0] + MiB) % size
                buf = big
            else:
                off = rnd.randrange(size // 4096) * 4096
                buf = small
            if kind.endswith("read"):
                drv.preadv(off, [buf])
            else:
                drv.pwritev(off, [buf])
            return len(buf)
        return step

    out: dict[str, dict[str, float]] = {fmt: {} for fmt in paths}
    for kind, label in (("seq-read", "seq-read 1M"), ("seq-write", "seq-write 1M"),
                        ("rand-read", "rand-read 4K"), ("rand-write", "rand-write 4K")):
        rates = interleaved(seconds, {fmt: make(drv, kind) for fmt, drv in drivers.items()})
        for fmt, rate in rates.items():
            out[fmt][label] = rate
    for drv in drivers.values():
        drv.flush()
        drv.close()
    return out


def virtio_workloads(paths: dict[str, Path], seconds: float) -> dict[str, dict[str, float]]:
    """The sequential 1 MiB reads and random 4 KiB reads through virtio-blk-pci, driven by the
    virtio test driver (plugins/vfw-dev-virtio/tests/virtio_driver.py) as a guest would: one
    machine, one virtio-blk-pci per image, requests interleaved. Empty if unavailable."""
    tests = Path(__file__).resolve().parent.parent / "plugins" / "vfw-dev-virtio" / "tests"
    sys.path.insert(0, str(tests))
    try:
        from virtio_driver import (  # type: ignore[import-not-found]
            Guest,
            VirtioPCIDriver,
            make_machine,
        )
    except ImportError:
        return {}
    args: list[str] = []
    for i, (fmt, path) in enumerate(paths.items()):
        args += ["-drive", f"file={path},if=none,id=d{i},format={fmt},cache=writeback",
                 "-device", f"virtio-blk-pci,drive=d{i}"]
    try:
        machine = make_machine(*args, mem="64M")
    except Exception as exc:  # the device plugin or board may be missing
        print(f"(virtio-blk workloads skipped: {exc})", file=sys.stderr)
        return {}
    devs = [d for d in machine.pci_bus.pci_devices() if d.type_name == "virtio-blk-pci"]
    guest = Guest(machine)
    size = min(int(p.stat().st_size) for p in paths.values()) // MiB * MiB // 2
    rnd = random.Random(2)

    def make(dev: Any, kind: str) -> Any:
        drv = VirtioPCIDriver(guest, dev)
        drv.negotiate()
        q = drv.setup_queue(0)
        drv.driver_ok()
        hdr, st, buf = guest.alloc(16), guest.alloc(1), guest.alloc(MiB, 4096)
        pos = [0]

        def step() -> int:
            if kind == "seq":
                n, off = MiB, pos[0]
                pos[0] = (pos[0] + MiB) % size
            else:
                n, off = 4096, rnd.randrange(size // 4096) * 4096
            guest.write(hdr, struct.pack("<IIQ", 0, 0, off // 512))
            q.add([(hdr, 16)], [(buf, n), (st, 1)])
            q.publish()
            q.kick()
            used = q.get_used()
            if len(used) != 1 or guest.read(st, 1) != b"\0":
                raise SystemExit("virtio-blk request failed")
            return n
        return step

    out: dict[str, dict[str, float]] = {fmt: {} for fmt in paths}
    steps = {fmt: make(dev, "seq") for fmt, dev in zip(paths, devs, strict=True)}
    for fmt, rate in interleaved(seconds, steps).items():
        out[fmt]["virtio-blk seq-read 1M"] = rate
    steps = {fmt: make(dev, "rand") for fmt, dev in zip(paths, devs, strict=True)}
    for fmt, rate in interleaved(seconds, steps).items():
        out[fmt]["virtio-blk rand-read 4K"] = rate
    return out


def vfw_alloc(path: Path, fmt: str, size: int) -> float:
    """Bytes per second writing a fresh image from start to end in 1 MiB requests."""
    drv = open_image(str(path), format=fmt)
    buf = memoryview(mmap.mmap(-1, MiB))
    buf[:] = b"\x5a" * MiB
    start = time.perf_counter()
    for pos in range(0, size, MiB):
        drv.pwritev(pos, [buf])
    rate = size / (time.perf_counter() - start)
    drv.close()
    return rate


def qemu_img_bench(path: Path, fmt: str, size: int, write: bool, passes: int = 4
                   ) -> float | None:
    """Bytes per second of one ``qemu-img bench`` run (1 MiB requests, queue depth 1)."""
    if shutil.which("qemu-img") is None:
        return None
    count = passes * size // MiB  # qemu-img bench wraps around at the end of the image
    args = ["qemu-img", "bench", "-f", fmt, "-c", str(count), "-d", "1", "-s", "1M",
            "-t", "writeback"]
    if write:
        args.append("-w")
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True)
    found = re.search(r"Run completed in ([0-9.]+) seconds", proc.stdout)
    if proc.returncode != 0 or not found:
        return None
    return count * MiB / max(float(found.group(1)), 1e-6)


def qemu_img_workloads(paths: dict[str, Path], size: int, tmp: Path
                       ) -> dict[str, dict[str, float | None]]:
    """qemu-img bench on the same images, formats alternating, best of three runs each."""
    out: dict[str, dict[str, float | None]] = {fmt: {} for fmt in paths}
    for _ in range(3):
        for fmt, path in paths.items():
            fresh = tmp / f"fresh-qemu.{fmt}"
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(fresh), str(size)],
                           check=True)
            for label, image, write, passes in (
                    ("qemu-img seq-read 1M", path, False, 4),
                    ("qemu-img seq-write 1M", path, True, 4),
                    ("qemu-img alloc-write 1M", fresh, True, 1)):
                rate = qemu_img_bench(image, fmt, size, write, passes)
                best = out[fmt].get(label)
                out[fmt][label] = rate if best is None or (rate or 0) > best else best
            os.unlink(fresh)
    return out


def rewrite(path: Path) -> None:
    """Copy ``path`` onto itself in 1 MiB writes: both images then sit in the page cache the
    same way (how a file was written changes the kernel's folio sizes, and memcpy speed from
    the page cache by up to 3x, which would swamp the format's cost)."""
    tmp = path.with_suffix(".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(MiB):
            dst.write(chunk)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="vfw-qcow2-bench-") as tmp:
        d = Path(tmp)
        raw = d / "disk.raw"
        with open(raw, "wb") as f:
            rnd = random.Random(0)
            for _ in range(size // MiB):
                f.write(rnd.randbytes(MiB))
        qcow = d / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)],
                       check=True)
        for p in (raw, qcow):
            rewrite(p)
        results: dict[str, dict[str, float | None]] = {}
        measured: dict[str, dict[str, float]]
        measured = vfw_workloads({"raw": raw, "qcow2": qcow}, size, args.seconds)
        for fmt, rates in virtio_workloads({"raw": raw, "qcow2": qcow}, args.seconds).items():
            measured[fmt].update(rates)
        for fmt in ("raw", "qcow2"):
            results[fmt] = dict(measured[fmt])
            fresh = d / f"fresh.{fmt}"
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(fresh), str(size)],
                           check=True)
            results[fmt]["alloc-write 1M"] = vfw_alloc(fresh, fmt, size)
            os.unlink(fresh)
        for fmt, qrates in qemu_img_workloads({"raw": raw, "qcow2": qcow}, size, d).items():
            results[fmt].update(qrates)
    names = list(results["raw"])
    print(f"qcow2 benchmark: {args.size_mib} MiB images, MB/s (10^6 bytes), one run\n")
    print("| workload | vfw raw | vfw qcow2 | qcow2/raw |")
    print("|---|---:|---:|---:|")
    for name in names:
        r, q = results["raw"][name], results["qcow2"][name]
        if r is None or q is None:
            print(f"| {name} | n/a | n/a | |")
            continue
        print(f"| {name} | {r / 1e6:.0f} | {q / 1e6:.0f} | {q / r:.2f}x |")
    print("\nvfw qcow2 / qemu-img bench qcow2 (same image, same request size, depth 1):")
    for kind in ("seq-read 1M", "seq-write 1M", "alloc-write 1M"):
        ours, theirs = results["qcow2"].get(kind), results["qcow2"].get(f"qemu-img {kind}")
        if ours and theirs:
            print(f"  {kind}: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
