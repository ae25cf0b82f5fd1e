"""virtio-blk throughput through the test driver, beside os.preadv/pwritev on the same file.

    .venv/bin/python benchmarks/virtio_blk.py   # ~1 min; --size-mib 256 --requests-4k 20000
                                    # --seq-passes 4 --repeat 3 --only cache|direct

Two configurations, in one run:

* **page cache**: ``-drive ...,cache=writeback`` against os.preadv/os.pwritev on the same file
  from one Python thread. The image is in the page cache (written just before), so both
  measure CPU cost, not the disk.
* **O_DIRECT**: ``-drive ...,cache=none,aio=threads`` (the device hands each batch to the
  shared pool of ``AIO_THREADS`` threads) against the same I/O done directly with O_DIRECT
  os.preadv/os.pwritev by the same number of threads, each issuing its share of the requests
  back to back (no batch barriers: the best that many threads get from this disk).

A pc machine is built (not run: the test driver plays the guest, see
plugins/vfw-dev-virtio/tests/virtio_driver.py). The driver keeps 32 requests in flight per
notification (QD 32): 32 request slots, each a descriptor chain written once
(``DriverQueue.prepare``, header -> data -> status, like a driver with fixed request slots).
Per batch it writes the 32 headers (type, sector) and avail-ring entries, publishes them
with one avail.idx update, kicks once through the notify MMIO register and reads the used
ring. The device walks and checks every chain anew each time. Rates are the best of
``--repeat`` interleaved runs (the box is shared and noisy); the ratio is given both as best
over best and as the median (and range) of the ratios of each vfw run to the direct run
just before it, which is steadier when the load changes during a run.
"""

from __future__ import annotations

import argparse
import importlib
import mmap
import os
import random
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins" / "vfw-dev-virtio" / "tests"))

from vfw.block.aio import AIO_THREADS  # noqa: E402

QD = 32
_HDR = struct.Struct("<IIQ")
Jobs = list[tuple[int, int]]


def _virtio(image: str, jobs: Jobs, write: bool, cache: str) -> float:
    """Seconds for ``jobs`` [(offset, length)] through virtio-blk at QD 32."""
    vd: Any = importlib.import_module("virtio_driver")  # plugins/vfw-dev-virtio/tests
    m = vd.make_machine("-drive", f"file={image},if=none,id=d0,format=raw,cache={cache}",
                        "-device", "virtio-blk-pci,drive=d0,queue-size=256", mem="256M")
    dev = next(d for d in m.pci_bus.pci_devices() if d.type_name == "virtio-blk-pci")
    g = vd.Guest(m)
    drv = vd.VirtioPCIDriver(g, dev)
    drv.negotiate()
    q = drv.setup_queue(0)
    drv.driver_ok()
    maxlen = max(n for _, n in jobs)
    assert all(n == maxlen for _, n in jobs)
    # The request headers in one array (a driver's per-slot request structs), each slot's
    # buffer and status byte apart from it.
    hdrs = g.alloc(_HDR.size * QD)
    heads = []
    for k in range(QD):
        hdr, buf, st = hdrs + _HDR.size * k, g.alloc(maxlen, 4096), g.alloc(1)
        if write:
            head = q.prepare([(hdr, 16), (buf, maxlen)], [(st, 1)])
        else:
            head = q.prepare([(hdr, 16)], [(buf, maxlen), (st, 1)])
        heads.append(head)
    rtype = 1 if write else 0
    pack = g.pack
    # The header fields of each batch, as the direct side has its (offset, length) list.
    fields = [[x for off, _n in jobs[i:i + QD] for x in (rtype, 0, off >> 9)]
              for i in range(0, len(jobs), QD)]
    t0 = time.perf_counter()
    for values in fields:
        n = len(values) // 3
        pack(_hdrs(n), hdrs, *values)  # the batch's headers, one store
        q.put_avail_many(heads[:n])
        q.publish()
        q.kick()
        done = q.reap_flat()
        assert len(done) == 2 * n, (len(done), n)
    elapsed = time.perf_counter() - t0
    return elapsed


def _hdrs(n: int, _cache: dict[int, struct.Struct] = {}) -> struct.Struct:  # noqa: B006
    """``n`` request headers back to back."""
    s = _cache.get(n)
    if s is None:
        s = _cache[n] = struct.Struct("<" + "IIQ" * n)
    return s


def _direct(image: str, jobs: Jobs, write: bool, cache: str) -> float:
    """The same I/O with os.preadv/pwritev: one thread over the page cache; for O_DIRECT,
    AIO_THREADS threads (as many as vfw's pool) each doing every AIO_THREADS-th request."""
    direct = cache == "none"
    fd = os.open(image, os.O_RDWR | (os.O_DIRECT if direct else 0))
    maxlen = max(n for _, n in jobs)
    nthreads = AIO_THREADS if direct else 1
    area = mmap.mmap(-1, QD * maxlen)  # page-aligned, like guest RAM
    bufs = [memoryview(area)[i * maxlen:(i + 1) * maxlen] for i in range(QD)]
    io: Callable[[int, list[memoryview], int], int] = os.pwritev if write else os.preadv

    def worker(k: int) -> None:
        for j in range(k, len(jobs), nthreads):
            off, n = jobs[j]
            io(fd, [bufs[j % QD][:n]], off)

    t0 = time.perf_counter()
    if nthreads == 1:
        worker(0)
    else:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--requests-4k", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved repetitions; the best time of each is reported")
    ap.add_argument("--seq-passes", type=int, default=4,
                    help="passes over the image of the 1 MiB sequential workloads")
    ap.add_argument("--only", choices=("cache", "direct"),
                    help="run one configuration (page cache or O_DIRECT)")
    args = ap.parse_args()
    size = args.size_mib << 20
    rnd = random.Random(1)
    four_k = [(rnd.randrange(size // 4096) * 4096, 4096) for _ in range(args.requests_4k)]
    seq = [(off, 1 << 20) for off in range(0, size, 1 << 20)] * args.seq_passes
    configs = [("writeback", "page cache: cache=writeback vs os.preadv, 1 thread"),
               ("none", f"O_DIRECT: cache=none,aio=threads vs O_DIRECT os.preadv, "
                        f"{AIO_THREADS} threads")]
    if args.only:
        configs = [configs[0 if args.only == "cache" else 1]]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("VFW_BENCH_DIR")) as tmp:
        image = os.path.join(tmp, "disk.img")
        with open(image, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        for cache, title in configs:
            rows = []
            for name, jobs in (("4 KiB random", four_k), ("1 MiB sequential", seq)):
                for write in (False, True):
                    pairs = []
                    for _ in range(args.repeat):
                        d = _direct(image, jobs, write, cache)
                        pairs.append((d, _virtio(image, jobs, write, cache)))
                    direct = min(d for d, _ in pairs)
                    virtio = min(v for _, v in pairs)
                    ratios = sorted(d / v for d, v in pairs)
                    nbytes = sum(n for _, n in jobs)
                    rows.append((f"{name} {'write' if write else 'read'}", len(jobs),
                                 len(jobs) / virtio, nbytes / virtio / 1e6,
                                 len(jobs) / direct, nbytes / direct / 1e6, direct / virtio,
                                 statistics.median(ratios), ratios[0], ratios[-1]))
            print(f"\n{title}\n")
            print(f"| workload (QD {QD}) | requests | virtio-blk req/s | MB/s | direct req/s "
                  "| MB/s | best / best | paired runs: median (range) |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for w, n, vr, vm, dr, dm, ratio, med, lo, hi in rows:
                print(f"| {w} | {n} | {vr:,.0f} | {vm:,.0f} | {dr:,.0f} | {dm:,.0f} | "
                      f"{ratio:.2f}x | {med:.2f}x ({lo:.2f}–{hi:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
