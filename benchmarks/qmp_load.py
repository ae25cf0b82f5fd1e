"""QMP load: N commands, one at a time, over one connection to a running guest.

    python benchmarks/qmp_load.py [-n 10000] [--command query-status] [--runs 3] [--no-qemu]

Starts the multiboot ``spin`` guest (tests/guests, it halts forever with interrupts on) under
``-accel kvm`` with ``-qmp unix:...`` in vfw and in ``qemu-system-x86_64`` (the yardstick),
negotiates, then sends each command and waits for its reply before sending the next (what a
client such as qemu.qmp does), and reports commands per second. Needs /dev/kvm and gcc.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_load(path: str, n: int, command: str = "query-status") -> float:
    """Connect to the QMP socket at ``path``, negotiate, run ``command`` ``n`` times with
    ids, checking every reply; the rate in commands per second."""
    deadline = time.monotonic() + 20
    while True:  # the listener may be between bind() and listen()
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            break
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    s.settimeout(30)
    f = s.makefile("rb")
    greeting = json.loads(f.readline())
    assert "QMP" in greeting, greeting
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    assert "return" in json.loads(f.readline())
    start = time.perf_counter()
    for i in range(n):
        s.sendall(b'{"execute": "%s", "id": %d}\n' % (command.encode(), i))
        while True:
            reply = json.loads(f.readline())
            if "event" not in reply:
                break
        if reply.get("id") != i or "return" not in reply:
            raise AssertionError(f"bad reply to command {i}: {reply}")
    elapsed = time.perf_counter() - start
    f.close()
    s.close()
    return n / elapsed


def _spin_guest() -> str:
    spec = importlib.util.spec_from_file_location("vfw_test_guests_build",
                                                  REPO / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.build("spin"))


def _measure(argv: list[str], sock: str, n: int, command: str) -> float:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not start: {proc.stderr.read().decode()}"
                                 if proc.stderr else argv[0])
            time.sleep(0.05)
        time.sleep(0.3)  # let the guest boot into its loop
        return run_load(sock, n, command)
    finally:
        proc.kill()
        proc.wait()
        if os.path.exists(sock):
            os.unlink(sock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--command", default="query-status")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()
    kernel = _spin_guest()
    tmp = tempfile.mkdtemp(prefix="qmp-load-")
    sock = os.path.join(tmp, "qmp.sock")
    rows = [("vfw", [sys.executable, "-m", "vfw", "run"])]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu and not args.no_qemu:
        rows.insert(0, ("qemu-system-x86_64", [qemu]))
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, prefix in rows:
            argv = [*prefix, "-accel", "kvm", "-kernel", kernel, "-display", "none",
                    "-serial", "null", "-qmp", f"unix:{sock},server=on,wait=off"]
            results.setdefault(name, []).append(_measure(argv, sock, args.n, args.command))
    print(f"{args.n} x {args.command}, one connection, {args.runs} runs")
    print(f"{'':<20} {'median cmd/s':>12} {'min':>8} {'max':>8}")
    for name, rates in results.items():
        print(f"{name:<20} {statistics.median(rates):>12.0f} {min(rates):>8.0f} "
              f"{max(rates):>8.0f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
