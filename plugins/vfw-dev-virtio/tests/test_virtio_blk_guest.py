"""The multiboot virtio-blk guest (tests/guests/virtio_blk.c) under ``vfw run -accel kvm``,
and durability: data written and flushed survives ``kill -9`` of vfw."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vfw.testing import need, need_kvm

pytestmark = pytest.mark.requires("vfw-board-pc")

GUESTS = Path(__file__).resolve().parents[3] / "tests" / "guests"
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=4")


def _guest(accel: str = "kvm") -> str:
    if accel == "kvm":
        need_kvm()
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    sys.path.insert(0, str(GUESTS))
    try:
        build: Any = importlib.import_module("build")  # tests/guests/build.py
    finally:
        sys.path.pop(0)
    return str(build.build("virtio_blk"))


def _argv(kernel: str, image: str, append: str = "", accel: str = "kvm") -> list[str]:
    return [sys.executable, "-m", "vfw", "run", "-accel", accel, "-m", "64", "-kernel", kernel,
            "-append", append, *DEBUG_EXIT, "-display", "none", "-serial", "stdio",
            "-drive", f"file={image},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0,serial=vfw-disk-1"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}


@pytest.mark.parametrize("accel", [
    pytest.param("kvm", marks=pytest.mark.requires("vfw-accel-kvm")),
    pytest.param("tcg", marks=pytest.mark.requires("vfw-accel-tcg")),
])
def test_guest_reads_writes_flushes_and_gets_id(tmp_path: Path, accel: str) -> None:
    kernel = _guest(accel)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 8 + os.urandom(1 << 20))
    r = subprocess.run(_argv(kernel, str(image), "sector=5", accel), capture_output=True, text=True,
                       timeout=120, env=_env(), stdin=subprocess.DEVNULL)
    out = r.stdout.replace("\r", "")
    assert r.returncode == 1, (out, r.stderr)  # debug exit 0 → (0 << 1) | 1
    assert f"capacity {(2048 + (1 << 20)) // 512} sectors" in out
    assert "sector 0 starts 0x00000000 0x00000001 0x00000002" in out
    assert "read back ok" in out and "serial vfw-disk-1" in out
    data = image.read_bytes()
    assert data[5 * 512:6 * 512] == bytes((i * 7 + 5) & 0xFF for i in range(512))
    assert "Traceback" not in r.stderr


@pytest.mark.requires("vfw-accel-kvm")
def test_flushed_write_survives_kill_9(tmp_path: Path) -> None:
    kernel = _guest()
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    proc = subprocess.Popen(_argv(kernel, str(image), "sector=9 hang=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_env())
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = b""
        while True:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                break
            seen += line
            if line.strip() == b"flushed":
                break
        assert b"flushed" in seen, seen
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    data = image.read_bytes()
    assert data[9 * 512:10 * 512] == bytes((i * 7 + 9) & 0xFF for i in range(512))


_COUNT_NOTIFY = """
import sys
from vfw_dev_virtio import pci
counts = {"mmio": 0, "eventfd": 0}
orig_n, orig_e = pci.VirtioPCI._notify_write, pci.VirtioPCI._eventfd_ready
def n(self, *a):
    counts["mmio"] += 1
    return orig_n(self, *a)
def e(self, *a):
    counts["eventfd"] += 1
    return orig_e(self, *a)
pci.VirtioPCI._notify_write = n
pci.VirtioPCI._eventfd_ready = e
from vfw import vl
rc = vl.main(sys.argv[1:])
print("COUNTS", rc, counts["mmio"], counts["eventfd"])
"""


@pytest.mark.requires("vfw-accel-kvm")
def test_kvm_notifications_arrive_through_ioeventfd(tmp_path: Path) -> None:
    kernel = _guest()
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    argv = _argv(kernel, str(image))[4:]  # drop python -m vfw run
    r = subprocess.run([sys.executable, "-c", _COUNT_NOTIFY, *argv], capture_output=True,
                       text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("COUNTS"))
    _, rc, mmio, eventfd = line.split()
    assert (rc, mmio) == ("1", "0") and int(eventfd) >= 4, (r.stdout, r.stderr)
