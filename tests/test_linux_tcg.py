"""Debian's Linux kernel boots to userspace under vfw's TCG and drives vfw's virtio devices.

Issue 6. A boot takes minutes in a Python CPU, so one boot (``-smp 2``) serves every check: the
busybox initramfs (tests/linux/initramfs.py) prints what the guest sees, reads the virtio-blk
disk's md5, reads /dev/hwrng, configures virtio-net behind a tap device in a network namespace
the test creates, sends the first MiB of the disk over TCP to a listener in that namespace
(which pings the guest meanwhile), pings the host side, writes a pattern to the disk, syncs
and runs ``poweroff -f``. A second, smaller boot (``-smp 1``, no script) runs at the same time
and ends with ``reboot -f`` under ``-no-reboot``.

Needs Debian's linux-image-cloud-amd64 and busybox-static; the network part also needs root,
iproute2 and /dev/net/tun (it skips without them, or fails under VFW_TESTS_STRICT=1). Each
boot has a deadline (a hung guest fails the tests with the tail of its output; the whole
output is in ``boot.log`` / ``reboot-boot.log`` in the pytest temp dir) and is killed early
when the kernel panics. busybox's ``ping`` computes its statistics with SSE2 floating
point, so the ping test also checks the TCG's SSE arithmetic on a real userspace.
"""

from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc", "vfw-accel-tcg", "vfw-dev-virtio")

HERE = Path(__file__).resolve().parent
#: Seconds one boot may take before the test gives up (reaching /init takes ~2 min here).
BOOT_TIMEOUT = 1500
#: Seconds the kernel gets to print its panic message before vfw is killed.
PANIC_GRACE = 5
APPEND = "console=ttyS0 quiet cryptomgr.notests"
MARKER = "VFW-INIT-REACHED"
DISK_SIZE = 4 << 20
PATTERN = b"VFW-PATTERN-WRITTEN-BY-THE-GUEST"
PATTERN_SECTOR = 100
NET_HOST, NET_GUEST, NET_PORT = "10.0.2.2", "10.0.2.15", 5555
NET_BYTES = 1 << 20
TAP = "vfwtap0"

GUEST_SCRIPT = """
echo "vda-md5: $(md5sum /dev/vda)"
echo "rng: $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
"""
GUEST_NET_SCRIPT = f"""
IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
echo "net-if: $IF"
ip link set "$IF" up
ip addr add {NET_GUEST}/24 dev "$IF"
head -c {NET_BYTES} /dev/vda | nc -w 30 {NET_HOST} {NET_PORT}
echo "nc: status $?"
ping -c 3 -w 60 {NET_HOST} > /tmp/ping 2>&1
echo "ping: status $? replies $(grep -c 'bytes from' /tmp/ping)"
"""
GUEST_WRITE_SCRIPT = f"""
printf '{PATTERN.decode()}' | dd of=/dev/vda bs=512 seek={PATTERN_SECTOR} conv=notrunc 2>/dev/null
sync
echo "pattern: written"
"""

#: The TCP listener the test runs inside the network namespace: one connection, read to EOF.
LISTENER = """
import os, socket, struct, sys, time
host, port, out, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])


def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping(addr, count=3, wait=20.0):
    # ICMP echo from the host side (raw socket, root): the guest kernel answers.
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        for seq in range(count):
            body = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, seq) + b"vfw" * 8
            body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            s.sendto(body, (addr, 0))
            end = time.monotonic() + wait
            while time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    packet, peer = s.recvfrom(2048)
                except socket.timeout:
                    break
                icmp = packet[(packet[0] & 15) * 4:]
                if peer[0] == addr and icmp[0] == 0 and icmp[6:8] == struct.pack("!H", seq):
                    replies += 1
                    break
    return replies


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1)
s.settimeout(timeout)
print("listening", flush=True)
c, peer = s.accept()
print("connection from", peer[0], flush=True)
print("host-ping replies", ping(peer[0]), flush=True)
c.settimeout(120)
data = bytearray()
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    data += chunk
open(out, "wb").write(data)
print("received", len(data), flush=True)
"""


class GuestRun:
    """One vfw process booting Linux: its output is collected by a thread, with times."""

    def __init__(self, name: str, argv: Sequence[str], log: Path,
                 timeout: float = BOOT_TIMEOUT):
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.timeout = timeout
        self.lines: list[tuple[float, str]] = []
        self.timed_out = False
        self.panicked = False
        env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
        self.start = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.returncode: int | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "w") as log:  # a live copy, to watch a slow boot
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
                t = time.monotonic() - self.start
                self.lines.append((t, line))
                log.write(f"[{t:7.1f}] {line}\n")
                log.flush()
                if "Kernel panic" in line and not self.panicked:
                    self.panicked = True
                    threading.Timer(PANIC_GRACE, self.kill).start()

    def kill(self) -> None:
        """Kill vfw (and anything it started) if it still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> GuestRun:
        """Wait for the end of the boot or its deadline (then kill it); return self."""
        if self.returncode is None:
            try:
                self.proc.wait(max(0.0, self.start + self.timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.timed_out = True
                self.kill()
                self.proc.wait()
            self.reader.join(10)
            self.returncode = self.proc.returncode
        return self

    @property
    def seconds(self) -> float:
        return self.lines[-1][0] if self.lines else time.monotonic() - self.start

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def when(self, text: str) -> float | None:
        """Seconds after the start at which a line containing ``text`` appeared."""
        return next((t for t, line in self.lines if text in line), None)

    def describe(self) -> str:
        """The failure context: how the run ended and the tail of the guest's output."""
        how = (f"timed out after {self.timeout} s" if self.timed_out else
               "kernel panic" if self.panicked else f"exit status {self.returncode}")
        tail = "\n".join(f"[{t:7.1f}] {line}" for t, line in self.lines[-60:])
        return (f"\n{self.name}: {how}; command: {' '.join(self.argv)[:400]}\n"
                f"--- last guest output (all of it: {self.log}) ---\n{tail}")

    def line(self, prefix: str) -> str:
        """The rest of the first output line starting with ``prefix``."""
        for _, line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise AssertionError(f"no line starting with {prefix!r}" + self.describe())


class Net:
    """A network namespace with a tap device and a one-shot TCP listener in it."""

    def __init__(self, work: Path):
        self.ns = f"vfw-linux-{os.getpid()}"
        self.received = work / "received.bin"
        self.listener: subprocess.Popen[str] | None = None
        self.created = False

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def setup(self) -> None:
        self._ip("netns", "add", self.ns)
        self.created = True
        self._ip("-n", self.ns, "link", "set", "lo", "up")
        self._ip("-n", self.ns, "tuntap", "add", "mode", "tap", "name", TAP)
        self._ip("-n", self.ns, "addr", "add", f"{NET_HOST}/24", "dev", TAP)
        self._ip("-n", self.ns, "link", "set", TAP, "up")
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", LISTENER, NET_HOST,
             str(NET_PORT), str(self.received), str(BOOT_TIMEOUT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.listener.stdout is not None
        ready = self.listener.stdout.readline()
        if "listening" not in ready:
            raise OSError(f"the TCP listener in {self.ns} did not start: {ready}"
                          f"{self.listener.stdout.read()}")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def listener_report(self) -> str:
        """What the listener printed (waits a little for it to finish)."""
        if self.listener is None:
            return ""
        try:
            out, _ = self.listener.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.listener.kill()
            out, _ = self.listener.communicate()
            out += "(killed: still waiting)"
        return out

    def teardown(self) -> None:
        if self.listener is not None and self.listener.poll() is None:
            self.listener.kill()
            self.listener.wait()
        if self.created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)


def _net_unavailable() -> str:
    """Why this machine cannot run the virtio-net check ("" when it can)."""
    if os.geteuid() != 0:
        return "the virtio-net check creates a network namespace and a tap device: needs root"
    if shutil.which("ip") is None:
        return "the virtio-net check needs iproute2 (the ip command)"
    if not os.path.exists("/dev/net/tun"):
        return "the virtio-net check needs /dev/net/tun"
    return ""


class Guest:
    """The kernel, the initramfs and the command line both boots share."""

    def __init__(self, kernel: str, initrd: Path):
        self.kernel, self.initrd = kernel, initrd

    def argv(self, smp: int, append: str, extra: Sequence[str] = ()) -> list[str]:
        return [sys.executable, "-m", "vfw", "run", "-accel", "tcg", "-m", "512",
                "-smp", str(smp), "-kernel", self.kernel, "-initrd", str(self.initrd),
                "-nographic", "-append", append, *extra]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Guest:
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    need(bool(kernels), "Debian's linux-image-cloud-amd64 is not installed")
    need(shutil.which("busybox") is not None, "busybox-static is not installed")
    sys.path.insert(0, str(HERE / "linux"))
    try:
        from initramfs import build_initramfs
    finally:
        sys.path.pop(0)
    work = tmp_path_factory.mktemp("initramfs")
    return Guest(kernels[-1], build_initramfs(work / "initramfs.cpio.gz", kernels[-1]))


@pytest.fixture(scope="module")
def reboot_started(guest: Guest) -> Iterator[GuestRun]:
    """The second boot (``-smp 1 -no-reboot``; /init ends with ``reboot -f``), started."""
    run = GuestRun("reboot boot", guest.argv(1, f"{APPEND} vfw.reboot", ["-no-reboot"]),
                   guest.initrd.parent / "reboot-boot.log")
    yield run
    run.kill()


class Boot:
    """The shared boot and what the host prepared for it."""

    def __init__(self, run: GuestRun, disk: Path, disk_data: bytes, net: Net | None,
                 net_reason: str):
        self.run, self.disk, self.disk_data = run, disk, disk_data
        self.net, self.net_reason = net, net_reason
        self.listener_output = net.listener_report() if net is not None else ""


@pytest.fixture(scope="module")
def boot(request: pytest.FixtureRequest, guest: Guest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boot]:
    # The reboot boot is small: run it alongside this one if it is to run at all.
    if any("reboot_started" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        request.getfixturevalue("reboot_started")
    work = tmp_path_factory.mktemp("linux")
    disk = work / "disk.img"
    disk_data = os.urandom(DISK_SIZE)
    disk.write_bytes(disk_data)
    net: Net | None = None
    net_reason = _net_unavailable()
    if not net_reason:
        net = Net(work)
        try:
            net.setup()
        except OSError as exc:
            net.teardown()
            net, net_reason = None, f"could not set up the network namespace: {exc}"
    script = GUEST_SCRIPT + (GUEST_NET_SCRIPT if net else "") + GUEST_WRITE_SCRIPT
    encoded = base64.b64encode(script.encode()).decode()
    extra = ["-drive", f"file={disk},if=none,id=d0,format=raw",
             "-device", "virtio-blk-pci,drive=d0", "-device", "virtio-rng-pci"]
    if net is not None:
        extra += ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                  "-device", "virtio-net-pci,netdev=n0"]
    argv = guest.argv(2, f"{APPEND} vfw.run={encoded}", extra)
    run = GuestRun("shared boot", (net.prefix() if net else []) + argv, work / "boot.log")
    try:
        run.wait()
        print(f"\nshared boot: {MARKER} at {run.when(MARKER)} s, "
              f"VFW-INIT-DONE at {run.when('VFW-INIT-DONE')} s, exit after {run.seconds:.1f} s")
        yield Boot(run, disk, disk_data, net, net_reason)
    finally:
        run.kill()
        if net is not None:
            net.teardown()


def test_boots_to_init_and_powers_off_with_status_0(boot: Boot) -> None:
    run = boot.run
    assert MARKER in run.output, run.describe()
    assert "VFW-INIT-DONE" in run.output, run.describe()
    assert not run.timed_out and not run.panicked and run.returncode == 0, run.describe()
    kernel = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1]
    assert run.line("uname:") == os.path.basename(kernel).removeprefix("vmlinuz-")
    assert run.line("cpu:") == "QEMU Virtual CPU version 2.5+"
    assert not re.search(r"insmod \S+ failed", run.output), run.describe()


def test_smp_2_and_memory_size(boot: Boot) -> None:
    run = boot.run
    assert run.line("cpus:") == "2", run.describe()
    match = re.search(r"MemTotal:\s+(\d+) kB", run.output)
    assert match, run.describe()
    assert abs(int(match.group(1)) - 512 * 1024) <= 512 * 1024 // 10, match.group(0)


def test_virtio_blk_reads_the_host_image_and_the_flushed_write_reaches_the_file(
        boot: Boot) -> None:
    run = boot.run
    assert run.line("vda-md5:").split()[0] == hashlib.md5(boot.disk_data).hexdigest()
    assert run.line("pattern:") == "written", run.describe()
    data = boot.disk.read_bytes()
    offset = PATTERN_SECTOR * 512
    assert data[offset:offset + len(PATTERN)] == PATTERN
    assert data[:offset] == boot.disk_data[:offset]  # nothing else changed
    assert data[offset + 512:] == boot.disk_data[offset + 512:]


def test_virtio_rng_gives_entropy(boot: Boot) -> None:
    rng = boot.run.line("rng:")
    assert re.fullmatch(r"[0-9a-f]{32}", rng) and rng != "0" * 32, boot.run.describe()


def _net_boot(boot: Boot) -> Net:
    need(boot.net is not None, boot.net_reason)
    assert boot.net is not None
    return boot.net


def test_virtio_net_sends_a_file_over_tcp_and_answers_pings(boot: Boot) -> None:
    """The guest configures eth0 and sends the disk's first MiB to the test's listener in
    the namespace, which pings the guest's address meanwhile (ICMP echo both ways through
    virtio-net; the guest kernel answers)."""
    net = _net_boot(boot)
    run = boot.run
    context = run.describe() + "\nlistener: " + boot.listener_output
    assert run.line("net-if:") == "eth0", context
    assert run.line("nc:") == "status 0", context
    assert f"connection from {NET_GUEST}" in boot.listener_output, context
    replies = re.search(r"host-ping replies (\d+)", boot.listener_output)
    assert replies and int(replies.group(1)) >= 1, context
    assert net.received.exists(), "nothing arrived" + context
    data = net.received.read_bytes()
    assert len(data) == NET_BYTES, context
    assert data == boot.disk_data[:NET_BYTES], "the bytes sent over TCP arrived changed"


def test_virtio_net_guest_pings_the_host(boot: Boot) -> None:
    _net_boot(boot)
    ping = boot.run.line("ping:")
    assert ping.startswith("status 0") and not ping.endswith(" 0"), (
        f"ping: {ping}" + boot.run.describe())


def test_reboot_with_no_reboot_ends_vfw(reboot_started: GuestRun) -> None:
    run = reboot_started.wait()
    print(f"\nreboot boot: {MARKER} at {run.when(MARKER)} s, exit after {run.seconds:.1f} s")
    assert "VFW-INIT-DONE" in run.output, run.describe()
    assert not run.timed_out and not run.panicked and run.returncode == 0, run.describe()
    assert run.output.count(MARKER) == 1, "the guest rebooted instead" + run.describe()


def _cpio_files(archive: Path) -> dict[str, bytes]:
    """The regular files of a gzip-compressed "newc" cpio archive, by name."""
    data = gzip.decompress(archive.read_bytes())
    files: dict[str, bytes] = {}
    pos = 0
    while data[pos:pos + 6] == b"070701":
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            break
        if mode & 0o170000 == 0o100000:
            files[name] = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
    return files


def test_initramfs_has_virtio_net_and_its_dependencies(guest: Guest) -> None:
    """The initramfs holds virtio_net with failover and net_failover, and /init loads them
    in dependency order."""
    files = _cpio_files(guest.initrd)
    order = files["etc/modules-order"].decode().split()
    names = [name.split(".ko")[0] for name in order]
    for module in ("virtio", "virtio_ring", "virtio_pci", "virtio_blk", "virtio-rng",
                   "failover", "net_failover", "virtio_net"):
        assert module in names, names
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")
    for name in order:
        assert files[f"lib/modules/{name}"][:4] == b"\x7fELF", name
    init = files["init"].decode()
    assert "for m in $(cat /etc/modules-order); do insmod /lib/modules/$m" in init
