"""KVM exit round trips per second and start-up latency, vfw against QEMU, same guest, same run.

Exit rate: the multiboot guest ``tests/guests/exits.c`` runs a tight loop of N exits and then
ends the VMM through isa-debug-exit. Modes: ``pio`` (``outb`` to the unassigned port 0x3e0)
and ``mmio`` (32-bit writes to the unassigned address 0xfebf0000 in the PCI hole) at CPL0, and
the same loops at CPL3 (``pio3``, ``mmio3``: flat ring-3 segments, TSS I/O bitmap). Every mode
runs with a small and a large N, for vfw and for QEMU, interleaved in a shuffled order per
round. Two rates come out of the same runs:

* ``loop``: the guest writes one byte to COM1 just before its loop; the time from that byte
  reaching our stdout pipe to the process exit, at large N minus small N, divided by the
  difference in N. This cancels the start-up (firmware, loading) and the tear-down.
* ``whole``: the same difference over whole-process wall times. Also cancels the start-up,
  but QEMU's start-up (SeaBIOS, run by an emulator on some hosts) varies by seconds, so this
  one is noisy.
* ``CPU us/exit``: the VMM process's user+system CPU time (``os.wait4``), the same difference
  per exit. It includes the host kernel's (and a nested hypervisor's) share, and is steadier
  than wall time when other jobs load the machine.

Start latency: the ``hello`` guest; the time from process start until its first output byte
("v") arrives on stdout (``-serial stdio``). QEMU runs SeaBIOS first, which then boots the
multiboot kernel through its option ROM; vfw loads the multiboot kernel directly.

Every run must end with the debug-exit status ``(0 << 1) | 1 = 1``.

Usage (from the repo root): ``python benchmarks/kvm_exits.py [-r ROUNDS] [--n 1000 100000]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _util import REPO, child_env, table

EXIT_RATE_GOAL = 0.7   # vfw's exit rate at least 0.7x QEMU's
LATENCY_GOAL = 1.0     # vfw's start latency at most QEMU's
MODES = ("pio", "mmio", "pio3", "mmio3")
MODE_DESC = {"pio": "port I/O, CPL0", "mmio": "MMIO, CPL0",
             "pio3": "port I/O, CPL3", "mmio3": "MMIO, CPL3"}
RUN_TIMEOUT = 180.0
DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


def build_guests() -> dict[str, Path]:
    """Build (or reuse the cached) exits and hello guests with tests/guests/build.py."""
    spec = importlib.util.spec_from_file_location("vfw_guest_build",
                                                  REPO / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    build: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if not build.toolchain_available():
        raise SystemExit("gcc and ld are needed to build the guests")
    return {name: build.build(name) for name in ("exits", "hello")}


def vmm_argv(vmm: str, exe: str, kernel: Path, append: str) -> list[str]:
    common = ["-accel", "kvm", "-m", "128", "-nodefaults", "-serial", "stdio",
              "-kernel", str(kernel), "-append", append, *DEBUG_EXIT]
    if vmm == "vfw":
        return [exe, "run", *common]
    return [exe, "-M", "pc", *common, "-display", "none"]


def timed_run(argv: list[str], env: dict[str, str],
              marker: bytes) -> tuple[float, float, float, float]:
    """Run once: (seconds from start to the first stdout byte, seconds from that byte to the
    exit, whole wall seconds, user+system CPU seconds of the process). The first byte must be
    ``marker`` and the status 1."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
        watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            first = os.read(fd, 1)
            t_first = time.perf_counter()
            rest = first
            while chunk := os.read(fd, 4096):
                rest += chunk
            _, wait_status, usage = os.wait4(proc.pid, 0)   # wait() without its rusage
            t_end = time.perf_counter()
            status = proc.returncode = os.waitstatus_to_exitcode(wait_status)
        finally:
            watchdog.cancel()
            if proc.stdout is not None:
                proc.stdout.close()
        if status != 1 or first != marker:
            err.seek(0)
            raise SystemExit(f"run failed (status {status}, expected 1; first byte {first!r}, "
                             f"expected {marker!r}): {' '.join(argv)}\nstdout: {rest[:300]!r}\n"
                             f"stderr: {err.read().decode(errors='replace')[-2000:]}")
    return t_first - start, t_end - t_first, t_end - start, usage.ru_utime + usage.ru_stime


def rate(n: tuple[int, int], low: list[float], high: list[float]) -> float:
    """Exits per second from the medians at the two loop counts (nan if not increasing)."""
    dt = statistics.median(high) - statistics.median(low)
    return (n[1] - n[0]) / dt if dt > 0 else float("nan")


def fmt_rate(r: float) -> str:
    return "n/a" if r != r else f"{r:,.0f}"


def fmt_ratio(r: float) -> str:
    return "n/a" if r != r else f"{r:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vfw", default=str(REPO / ".venv" / "bin" / "vfw"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("-r", "--rounds", type=int, default=2, help="rounds of exit runs")
    ap.add_argument("--n", type=int, nargs=2, default=(1000, 100_000), metavar=("LOW", "HIGH"))
    ap.add_argument("-l", "--latency-runs", type=int, default=5)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = ap.parse_args()
    if not args.qemu:
        raise SystemExit("qemu-system-x86_64 not found (--qemu PATH)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise SystemExit("/dev/kvm is not usable here")
    n_low, n_high = args.n
    guests = build_guests()
    vmms = {"vfw": args.vfw, "qemu": args.qemu}

    with tempfile.TemporaryDirectory(prefix="vfw-bench-") as tmp:
        env = child_env(Path(tmp) / "cache", Path(tmp) / "pyc")
        # Warm-up (plugin index, .pyc files, page cache), untimed but checked.
        for vmm, exe in vmms.items():
            timed_run(vmm_argv(vmm, exe, guests["exits"], f"mode=pio n={n_low}"), env, b"L")

        loop: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        whole: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        cpu: dict[tuple[str, str, int], list[float]] = defaultdict(list)
        latency: dict[str, list[float]] = defaultdict(list)
        t0 = time.perf_counter()
        for r in range(args.rounds):
            jobs = [(mode, vmm, n) for mode in args.modes for vmm in vmms for n in (n_low, n_high)]
            random.shuffle(jobs)
            for mode, vmm, n in jobs:
                argv = vmm_argv(vmm, vmms[vmm], guests["exits"], f"mode={mode} n={n}")
                _, in_loop, total, cpu_s = timed_run(argv, env, b"L")
                loop[mode, vmm, n].append(in_loop)
                whole[mode, vmm, n].append(total)
                cpu[mode, vmm, n].append(cpu_s)
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
        for _ in range(args.latency_runs):
            order = list(vmms)
            random.shuffle(order)
            for vmm in order:
                argv = vmm_argv(vmm, vmms[vmm], guests["hello"], "exit=0")
                first, _, _, _ = timed_run(argv, env, b"v")
                latency[vmm].append(first * 1e3)

    ns = (n_low, n_high)
    rows = []
    verdicts = []
    for mode in args.modes:
        rates = {}
        for vmm in vmms:
            rates[vmm] = (rate(ns, loop[mode, vmm, n_low], loop[mode, vmm, n_high]),
                          rate(ns, whole[mode, vmm, n_low], whole[mode, vmm, n_high]))
        cpu_us = {vmm: 1e6 / rate(ns, cpu[mode, vmm, n_low], cpu[mode, vmm, n_high])
                  for vmm in vmms}
        ratio = rates["vfw"][0] / rates["qemu"][0]
        ratio_whole = rates["vfw"][1] / rates["qemu"][1]
        rows.append([f"{mode} ({MODE_DESC[mode]})", fmt_rate(rates["vfw"][0]),
                     fmt_rate(rates["qemu"][0]), fmt_ratio(ratio), fmt_rate(rates["vfw"][1]),
                     fmt_rate(rates["qemu"][1]), fmt_ratio(ratio_whole),
                     f"{cpu_us['vfw']:.1f}", f"{cpu_us['qemu']:.1f}"])
        verdicts.append(f"  {mode}: {fmt_ratio(ratio)} "
                        f"({'MET' if ratio >= EXIT_RATE_GOAL else 'MISSED'})")
    print(f"\nExit round trips per second: N = {n_low:,} and {n_high:,}, "
          f"median of {args.rounds} runs each")
    print(table(["mode", "vfw loop/s", "QEMU loop/s", "vfw/QEMU", "vfw whole/s",
                 "QEMU whole/s", "vfw/QEMU", "vfw CPU us/exit", "QEMU CPU us/exit"], rows))
    print(f"Goal: vfw >= {EXIT_RATE_GOAL}x QEMU (loop-timed rates):")
    print("\n".join(verdicts))

    lat_rows = []
    for vmm in vmms:
        s = latency[vmm]
        lat_rows.append([vmm, f"{statistics.median(s):.0f}", f"{min(s):.0f}", f"{max(s):.0f}"])
    lat_ratio = statistics.median(latency["vfw"]) / statistics.median(latency["qemu"])
    print(f"\nStart to first guest output byte (hello guest), ms, {args.latency_runs} runs")
    print(table(["VMM", "median", "min", "max"], lat_rows))
    print(f"vfw/QEMU median: {lat_ratio:.2f}x (goal <= {LATENCY_GOAL:g}x: "
          f"{'MET' if lat_ratio <= LATENCY_GOAL else 'MISSED'}); QEMU runs SeaBIOS first, "
          "vfw loads the multiboot kernel directly")


if __name__ == "__main__":
    main()
