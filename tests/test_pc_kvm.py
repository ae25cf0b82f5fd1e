"""The pc board under KVM with real guests: vfw's multiboot test kernels and Debian's kernel.

Guests are built from tests/guests with the host's gcc; KVM tests skip where /dev/kvm is
unusable (and fail instead under VFW_TESTS_STRICT=1, as CI sets).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vfw.testing import need, need_kvm

pytestmark = pytest.mark.requires("vfw-board-pc", "vfw-accel-kvm")

HERE = Path(__file__).resolve().parent
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=4")


def guest(name: str) -> str:
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    sys.path.insert(0, str(HERE / "guests"))
    try:
        import build  # tests/guests/build.py
    finally:
        sys.path.pop(0)
    return str(build.build(name))


def vfw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    return subprocess.run([sys.executable, "-m", "vfw", "run", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def hello() -> str:
    need_kvm()
    return guest("hello")


def test_multiboot_guest_prints_reads_fw_cfg_and_exits_with_its_status(hello):
    r = vfw("-accel", "kvm", "-m", "256", "-kernel", hello, "-append", "exit=7", *DEBUG_EXIT)
    assert r.returncode == (7 << 1) | 1, r.stderr
    lines = r.stdout.replace("\r", "").splitlines()
    assert lines[0] == "vfw-guest: hello"
    assert lines[1] == f"cmdline: {hello} exit=7"
    assert lines[2] == "mem_lower: 640 KiB, mem_upper: 261120 KiB"  # 256 MiB - 1 MiB
    assert lines[3] == "fw_cfg signature: QEMU"
    assert lines[4] == "fw_cfg cpus: 1"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("status", [0, 1, 42])
def test_isa_debug_exit_status_is_value_shifted_or_one(hello, status):
    r = vfw("-accel", "kvm", "-kernel", hello, "-append", f"exit={status}", *DEBUG_EXIT)
    assert r.returncode == (status << 1) | 1


@pytest.mark.parametrize("action,what", [(1, "resetting"), (2, "powering off"),
                                         (3, "triple fault")])
def test_reset_poweroff_and_triple_fault_end_the_vm_with_no_reboot(hello, action, what):
    r = vfw("-accel", "kvm", "-no-reboot", "-kernel", hello, "-append",
            f"action={action} exit=9", *DEBUG_EXIT)
    assert r.returncode == 0, r.stderr  # QEMU exits 0 when -no-reboot turns a reset into exit
    assert r.stdout.replace("\r", "").splitlines()[-1] == what


def test_reset_without_no_reboot_restarts_the_guest(hello):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    proc = subprocess.Popen([sys.executable, "-m", "vfw", "run", "-accel", "kvm", "-kernel",
                             hello, "-append", "action=1", *DEBUG_EXIT], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                break
            seen += line.startswith("vfw-guest: hello")
        assert seen >= 3, "the guest did not boot again after its reset"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_smp_guest_starts_every_ap_with_init_sipi():
    need_kvm()
    smp = guest("smp")
    r = vfw("-accel", "kvm", "-smp", "4", "-kernel", smp, "-append", "cpus=4", *DEBUG_EXIT)
    assert r.stdout.replace("\r", "").splitlines()[-1] == "vfw-guest: smp cpus=4"
    assert r.returncode == (4 << 1) | 1


def test_missing_kernel_file_is_one_clear_line():
    need_kvm()
    r = vfw("-accel", "kvm", "-kernel", "/nonexistent/vmlinuz")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "vfw: -kernel /nonexistent/vmlinuz: could not open kernel file '/nonexistent/vmlinuz':"
        " No such file or directory")


# -- the Linux boot protocol with Debian's kernel (built, not run: CPL0 is emulated here) ----
def debian_kernel() -> tuple[str, str]:
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    need(bool(kernels), "Debian's linux-image-cloud-amd64 is not installed (apt-get install"
         " linux-image-cloud-amd64)")
    initrd = kernels[-1].replace("vmlinuz", "initrd.img")
    need(os.path.exists(initrd), f"{initrd} is missing")
    return kernels[-1], initrd


BUILD_AND_DUMP = r"""
import json, sys
from vfw.cmdline import parse_command_line
from vfw.vl import build
m = build(parse_command_line(sys.argv[1:]))
mem = m.address_space_memory
env = m.cpus[0].env
out = {
    "zero_page": mem.read_bytes(0x7000, 4096).hex(),
    "rsdp": mem.read_bytes(0xE0000, 36).hex(),
    "rip": env.rip, "rsi": env.regs[6], "cr0": env.cr[0], "cr3": env.cr[3], "cr4": env.cr[4],
    "efer": env.efer, "cs_flags": env.segs[1].flags, "cs": env.segs[1].selector,
    "ap_mp_state": [c.env.mp_state for c in m.cpus[1:]],
}
tables = {}
rsdp = mem.read_bytes(0xE0000, 36)
xsdt = int.from_bytes(rsdp[24:32], "little")
length = int.from_bytes(mem.read_bytes(xsdt + 4, 4), "little")
for i in range(36, length, 8):
    addr = int.from_bytes(mem.read_bytes(xsdt + i, 8), "little")
    tlen = int.from_bytes(mem.read_bytes(addr + 4, 4), "little")
    tables[mem.read_bytes(addr, 4).decode()] = mem.read_bytes(addr, tlen).hex()
fadt = bytes.fromhex(tables["FACP"])
dsdt = int.from_bytes(fadt[140:148], "little") or int.from_bytes(fadt[40:44], "little")
dlen = int.from_bytes(mem.read_bytes(dsdt + 4, 4), "little")
tables["DSDT"] = mem.read_bytes(dsdt, dlen).hex()
out["tables"] = tables
print(json.dumps(out))
"""


def test_linux_boot_protocol_zero_page_e820_acpi_and_entry_state(tmp_path):
    need_kvm()
    kernel, initrd = debian_kernel()
    import json

    r = subprocess.run([sys.executable, "-c", BUILD_AND_DUMP, "-accel", "kvm", "-m", "512",
                        "-smp", "2", "-kernel", kernel, "-initrd", initrd, "-append",
                        "console=ttyS0 quiet", "-nodefaults"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    zp = bytes.fromhex(out["zero_page"])
    assert zp[0x202:0x206] == b"HdrS"
    version = struct.unpack_from("<H", zp, 0x206)[0]
    assert version >= 0x20C
    assert zp[0x210] == 0xFF  # type_of_loader: undefined loader
    cmd_line_ptr = struct.unpack_from("<I", zp, 0x228)[0]
    assert cmd_line_ptr == 0x20000
    ramdisk_image, ramdisk_size = struct.unpack_from("<II", zp, 0x218)
    assert ramdisk_size == os.path.getsize(initrd)
    assert ramdisk_image % 4096 == 0 and ramdisk_image + ramdisk_size <= 512 << 20
    e820_entries = zp[0x1E8]
    e820 = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(e820_entries)]
    ram = sum(size for _, size, kind in e820 if kind == 1)
    assert 500 << 20 < ram <= 512 << 20
    assert struct.unpack_from("<Q", zp, 0x070)[0] == 0xE0000  # acpi_rsdp_addr
    # Entry: 64-bit long mode, paging on, RSI = zero page, RIP = kernel + 0x200.
    assert out["cr0"] & 0x80000001 == 0x80000001 and out["cr4"] & 0x20
    assert out["efer"] & 0x500 == 0x500  # LME | LMA
    assert out["cs_flags"] & (1 << 21)  # CS.L
    assert out["rsi"] == 0x7000
    pref = struct.unpack_from("<Q", zp, 0x258)[0]
    assert out["rip"] == pref + 0x200
    assert out["ap_mp_state"] == [1]  # the AP waits for INIT/SIPI
    # ACPI: RSDP checksums, the MADT lists both CPUs and the IOAPIC, iasl decodes every table.
    rsdp = bytes.fromhex(out["rsdp"])
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    tables = {k: bytes.fromhex(v) for k, v in out["tables"].items()}
    assert {"FACP", "APIC", "DSDT"} <= set(tables)
    for sig, data in tables.items():
        assert sum(data) % 256 == 0, f"{sig} checksum"
    madt = tables["APIC"]
    entries, pos = [], 44
    while pos < len(madt):
        entries.append((madt[pos], madt[pos + 2:pos + madt[pos + 1]]))
        pos += madt[pos + 1]
    lapics = [e for t, e in entries if t == 0]
    assert [e[1] for e in lapics] == [0, 1] and all(e[2] & 1 for e in lapics)
    assert any(t == 1 and struct.unpack_from("<I", e, 2)[0] == 0xFEC00000 for t, e in entries)
    if shutil.which("iasl"):
        for sig, data in tables.items():
            path = tmp_path / f"{sig.lower()}.dat"
            path.write_bytes(data)
            d = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True,
                               cwd=tmp_path, timeout=60)
            assert d.returncode == 0, (sig, d.stdout, d.stderr)
        dsl = (tmp_path / "dsdt.dsl").read_text()
        for needle in ("PNP0A03", "PNP0501", "_S5_", "_PRT"):
            assert needle in dsl


def test_d_cpu_reset_and_guest_errors_go_to_the_D_file(hello, tmp_path):
    log_file = tmp_path / "vfw.log"
    r = vfw("-accel", "kvm", "-d", "cpu_reset,guest_errors", "-D", str(log_file), "-kernel",
            hello, "-append", "exit=0", *DEBUG_EXIT)
    assert r.returncode == 1, r.stderr
    text = log_file.read_text()
    assert text.startswith("CPU Reset (CPU 0)\nEAX=")
    assert "EFL=00000002" in text
