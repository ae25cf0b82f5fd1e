"""vfw's firmware ROM: reproducible from its sources, well formed, and it boots.

QEMU's pc machine is only a yardstick here: it runs the same firmware the vfw pc board loads,
so the firmware can be checked independently of the board.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from vfw.testing import need, need_kvm
from vfw_board_pc.firmware import bios_image

FIRMWARE_SOURCES = Path(__file__).resolve().parents[1] / "firmware"
BUILD_PY = FIRMWARE_SOURCES / "build.py"
ROM_SIZE = 64 * 1024
DISK_PATTERN = bytes(range(0xA0, 0xB0))


def _need_toolchain() -> None:
    need(shutil.which("gcc") is not None and shutil.which("objcopy") is not None,
         "building the firmware needs gcc and objcopy")


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vfw_firmware_build", BUILD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_binary_matches_its_sources() -> None:
    _need_toolchain()
    result = subprocess.run([sys.executable, str(BUILD_PY), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_a_stale_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _need_toolchain()
    build = _build_module()
    stale = bytearray(bios_image())
    stale[0x100] ^= 0xFF
    (tmp_path / "stale.bin").write_bytes(bytes(stale))
    monkeypatch.setattr(build, "SHIPPED", tmp_path / "stale.bin")
    assert build.main(["--check"]) == 1
    assert "differs from a rebuild" in capsys.readouterr().err
    assert build.main(["--output", str(tmp_path / "fresh.bin")]) == 0
    assert (tmp_path / "fresh.bin").read_bytes() == bios_image()


def test_rom_size_and_reset_vector() -> None:
    image = bios_image()
    assert len(image) == ROM_SIZE
    # 0xFFFFFFF0 (real mode, CS base 0xFFFF0000, IP 0xFFF0): a near jmp within the segment.
    vector = image[-16:]
    if vector[0] == 0xE9:
        ip = (0xFFF3 + int.from_bytes(vector[1:3], "little")) & 0xFFFF
    else:
        assert vector[0] == 0xEB, vector.hex()
        ip = (0xFFF2 + int.from_bytes(vector[1:2], "little", signed=True)) & 0xFFFF
    target = ip - (0x10000 - ROM_SIZE)
    assert 0 <= target < ROM_SIZE - 16
    assert image[target] == 0xFA        # cli: the real-mode entry
    assert set(vector[3:]) == {0xFF}


def _qemu(tmp_path: Path, *args: str) -> tuple[int, str]:
    need(shutil.which("qemu-system-x86_64") is not None,
         "the firmware boot test uses qemu-system-x86_64 as a yardstick")
    bios = tmp_path / "vfw-bios.bin"
    bios.write_bytes(bios_image())
    disk = tmp_path / "disk.img"
    disk.write_bytes(DISK_PATTERN + bytes(1024 * 1024 - len(DISK_PATTERN)))
    accel = "kvm" if "kvm" in args else "tcg"
    args = tuple(a for a in args if a != "kvm")
    cmd = ["qemu-system-x86_64", "-M", "pc", "-accel", accel, "-bios", str(bios), "-nographic",
           "-no-reboot", "-drive", f"file={disk},if=none,id=d0,format=raw", *args]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return result.returncode, result.stdout.decode("latin-1").replace("\r\n", "\n")


def _check_common(out: str, mib: int) -> None:
    assert "vfw firmware 0.1.0\n" in out
    assert re.search(r"^CPU family \d+ model \d+ stepping \d+$", out, re.M)
    total = re.search(r"^memory: (\d+) MiB$", out, re.M)
    assert total and abs(int(total.group(1)) - mib) <= 4, out
    assert re.search(r"^00:00\.0 8086:1237 class 060000$", out, re.M)
    rng = re.search(r"^virtio-rng 00:[0-9a-f]{2}\.\d: 16 bytes:((?: [0-9a-f]{2}){16})$", out, re.M)
    assert rng, out
    sector = " ".join(f"{b:02x}" for b in DISK_PATTERN)
    assert re.search(rf"^virtio-blk 00:[0-9a-f]{{2}}\.\d: sector 0: {sector} status 0$", out,
                     re.M), out
    assert out.rstrip().endswith("vfw firmware: powering off")


def test_boots_under_qemu_with_modern_virtio(tmp_path: Path) -> None:
    status, out = _qemu(tmp_path, "-cpu", "qemu64", "-m", "256", "-smp", "2",
                        "-device", "virtio-rng-pci,disable-legacy=on",
                        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on")
    assert status == 0, out
    _check_common(out, 256)
    assert "CPU vendor: AuthenticAMD\n" in out
    assert "CPU brand: QEMU Virtual CPU version" in out
    flags = re.search(r"^CPU flags:(.*)$", out, re.M)
    assert flags and {"fpu", "pae", "sse2", "lm", "nx", "syscall"} <= set(flags.group(1).split())
    assert "CPUs: 2\n" in out
    assert re.search(r"^00:[0-9a-f]{2}\.0 1af4:1044 class 00ff00$", out, re.M), out
    assert re.search(r"^00:[0-9a-f]{2}\.0 1af4:1042 class 010000$", out, re.M), out
    assert "virtio-blk" in out and "capacity 2048 sectors" in out


def test_boots_under_qemu_with_transitional_virtio(tmp_path: Path) -> None:
    status, out = _qemu(tmp_path, "-cpu", "max", "-m", "512",
                        "-device", "virtio-rng-pci", "-device", "virtio-blk-pci,drive=d0")
    assert status == 0, out
    _check_common(out, 512)
    flags = re.search(r"^CPU flags:(.*)$", out, re.M)
    assert flags and {"sse4.2", "popcnt", "hypervisor"} <= set(flags.group(1).split())
    assert re.search(r"^00:[0-9a-f]{2}\.0 1af4:1005 ", out, re.M), out
    assert re.search(r"^00:[0-9a-f]{2}\.0 1af4:1001 ", out, re.M), out


def test_without_acpi_falls_back_to_isa_debug_exit(tmp_path: Path) -> None:
    status, out = _qemu(tmp_path, "-machine", "acpi=off", "-device", "isa-debug-exit")
    assert status == 1, out     # isa-debug-exit: (0 << 1) | 1
    assert "memory: 128 MiB\n" in out
    assert out.rstrip().endswith("vfw firmware: powering off")


def test_boots_under_qemu_kvm(tmp_path: Path) -> None:
    """Under KVM this host emulates CPL0 code instruction by instruction: the firmware must stick
    to what KVM's emulator knows (plain integer code, no paging)."""
    need_kvm()
    status, out = _qemu(tmp_path, "kvm", "-m", "256", "-device", "virtio-rng-pci",
                        "-device", "virtio-blk-pci,drive=d0")
    assert status == 0, out
    _check_common(out, 256)
