"""The monitors against a real guest under KVM (and, where cheap, TCG): QMP driven by the
unmodified PyPI client ``qemu.qmp``, the human monitor on a socket, and the gdbstub driven by
the real gdb."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vfw.testing import need, need_kvm

pytestmark = pytest.mark.requires("vfw-board-pc")
KVM = pytest.mark.requires("vfw-accel-kvm")
#: Both accelerators, for the tests cheap enough to run twice; TCG needs no /dev/kvm.
ACCELS = [pytest.param("kvm", marks=KVM, id="kvm"),
          pytest.param("tcg", marks=pytest.mark.requires("vfw-accel-tcg"), id="tcg")]

REPO = Path(__file__).resolve().parents[1]
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=4")


def guest(name: str) -> str:
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    spec = importlib.util.spec_from_file_location("vfw_test_guests_build",
                                                  REPO / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.build(name))


def wait_for_socket(path: str, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"vfw exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("the monitor socket never appeared")
        time.sleep(0.05)


def need_accel(accel: str) -> None:
    if accel == "kvm":
        need_kvm()


class Vm:
    def __init__(self, tmp: Path, *args: str, accel: str = "kvm"):
        self.qmp_path = str(tmp / "qmp.sock")
        self.serial = tmp / "serial.txt"
        self.accel = accel
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vfw", "run", "-accel", accel, "-display", "none",
             "-serial", f"file:{self.serial}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
        return self.proc.returncode, out, err


@pytest.fixture
def spin_vm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Vm]:
    """The spin guest with a QMP socket, under KVM (or ``indirect`` parametrized accel)."""
    accel = getattr(request, "param", "kvm")
    need_accel(accel)
    kernel = guest("spin")
    sock = str(tmp_path / "qmp.sock")
    vm = Vm(tmp_path, "-kernel", kernel, "-device", "isa-debug-exit,id=dx",
            "-qmp", f"unix:{sock},server=on,wait=off", accel=accel)
    try:
        wait_for_socket(sock, vm.proc)
        yield vm
    finally:
        vm.proc.kill()
        vm.proc.wait()


@pytest.mark.parametrize("spin_vm", ACCELS, indirect=True)
def test_qemu_qmp_client_drives_a_running_guest(spin_vm: Vm) -> None:
    need(importlib.util.find_spec("qemu") is not None
         and importlib.util.find_spec("qemu.qmp") is not None,
         "the qemu.qmp client is not installed (pip install 'vfw-core[test]')")
    from qemu.qmp import ExecuteError, QMPClient

    assert stat.S_IMODE(os.stat(spin_vm.qmp_path).st_mode) == 0o600

    async def session() -> dict[str, Any]:
        qmp = QMPClient("vfw-test")
        await qmp.connect(spin_vm.qmp_path)
        seen: dict[str, Any] = {"greeting": qmp.greeting}
        seen["status"] = await qmp.execute("query-status")
        with qmp.listener() as listener:
            await qmp.execute("stop")
            stop_event = await asyncio.wait_for(listener.get(), 10)
        seen["stop_event"] = stop_event
        seen["paused"] = await qmp.execute("query-status")
        seen["registers"] = await qmp.execute("human-monitor-command",
                                              {"command-line": "info registers"})
        with qmp.listener() as listener:
            await qmp.execute("cont")
            seen["resume_event"] = await asyncio.wait_for(listener.get(), 10)
        seen["running"] = await qmp.execute("query-status")
        seen["iobase"] = await qmp.execute("qom-get", {"path": "/machine/peripheral/dx",
                                                       "property": "iobase"})
        seen["cpus"] = await qmp.execute("query-cpus-fast")
        seen["kvm"] = await qmp.execute("query-kvm")
        seen["version"] = await qmp.execute("query-version")
        seen["commands"] = await qmp.execute("query-commands")
        seen["types"] = await qmp.execute("qom-list-types", {"implements": "device"})
        seen["props"] = await qmp.execute("device-list-properties",
                                          {"typename": "isa-debug-exit"})
        seen["list"] = await qmp.execute("qom-list", {"path": "/machine/peripheral/dx"})
        try:  # as in QEMU, static properties are fixed once the device is realized
            await qmp.execute("qom-set", {"path": "/machine/peripheral/dx",
                                          "property": "iobase", "value": 0x600})
        except ExecuteError as exc:
            seen["qom_set_error"] = exc.error.error.desc
        with qmp.listener() as listener:
            await qmp.execute("quit")
            seen["shutdown_event"] = await asyncio.wait_for(listener.get(), 10)
        await qmp.disconnect()
        return seen

    seen = asyncio.run(session())
    assert seen["greeting"].QMP.version["package"] == "vfw"
    assert seen["status"] == {"status": "running", "running": True, "singlestep": False}
    assert seen["stop_event"]["event"] == "STOP"
    assert set(seen["stop_event"]["timestamp"]) == {"seconds", "microseconds"}
    assert seen["paused"]["status"] == "paused" and seen["paused"]["running"] is False
    assert re.search(r"^EIP=[0-9a-f]{8} EFL=", seen["registers"], re.M), seen["registers"]
    assert seen["resume_event"]["event"] == "RESUME"
    assert seen["running"]["running"] is True
    assert seen["iobase"] == 0x501
    assert seen["cpus"][0]["cpu-index"] == 0 and seen["cpus"][0]["target"] == "x86_64"
    assert seen["cpus"][0]["props"] == {"socket-id": 0, "core-id": 0, "thread-id": 0}
    assert seen["kvm"]["enabled"] is (spin_vm.accel == "kvm")
    if spin_vm.accel == "kvm":
        assert seen["kvm"]["present"] is True
    assert seen["version"]["qemu"] == {"major": 0, "minor": 1, "micro": 0}
    names = {c["name"] for c in seen["commands"]}
    assert {"qom-get", "quit", "stop", "cont", "system_powerdown"} <= names
    assert any(t["name"] == "isa-debug-exit" for t in seen["types"])
    assert any(p["name"] == "iobase" for p in seen["props"])
    assert {"name": "type", "type": "string"} in seen["list"]
    assert "after it was realized" in seen["qom_set_error"]
    assert seen["shutdown_event"]["event"] == "SHUTDOWN"
    assert seen["shutdown_event"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    code, _, err = spin_vm.finish()
    assert code == 0, err
    assert "vfw-guest: spin" in spin_vm.serial.read_text()


def connect_unix(path: str, timeout: float = 20) -> socket.socket:
    """Connect, retrying while the listener is between bind() and listen()."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _raw(path: str) -> tuple[socket.socket, Any]:
    s = connect_unix(path)
    s.settimeout(30)
    return s, s.makefile("rb")


@KVM
def test_bad_input_and_disconnects_never_hurt_the_vm(spin_vm: Vm) -> None:
    import json

    s, f = _raw(spin_vm.qmp_path)
    json.loads(f.readline())
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    assert json.loads(f.readline()) == {"return": {}}

    def ask(data: bytes) -> Any:
        s.sendall(data)
        return json.loads(f.readline())

    assert ask(b'{"execute": }')["error"]["desc"] == "JSON parse error, expecting value"
    assert ask(b"[1, 2]\n")["error"]["desc"] == "QMP input must be a JSON object"
    assert ask(b'{"execute": "bogus", "id": 7}') == {
        "error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"},
        "id": 7}
    assert ask(b'{"execute": "qom-get", "arguments": {"path": 1, "property": "x"}}')[
        "error"]["desc"] == "Invalid parameter type for 'path', expected: string"
    assert ask(b'{"execute": "query-status", "arguments": {"bogus": 1}}')[
        "error"]["desc"] == "Parameter 'bogus' is unexpected"
    huge = b'{"execute": "query-status", "arguments": {"x": "' + b"A" * (65 << 20) + b'"}}'
    assert ask(huge)["error"]["desc"] == "JSON token size limit exceeded"
    assert ask(b'{"execute": "query-status", "id": "after"}')["id"] == "after"
    # Commands sent together: each sees the effect of the run-state change before it.
    s.sendall(b'{"execute": "stop"}{"execute": "query-status"}'
              b'{"execute": "cont"}{"execute": "query-status"}')
    replies = [json.loads(f.readline()) for _ in range(6)]
    assert [r.get("event") for r in replies if "event" in r] == ["STOP", "RESUME"]
    statuses = [r["return"]["status"] for r in replies if "return" in r and r["return"]]
    assert statuses == ["paused", "running"]
    # Disconnect in the middle of a command: the VM runs on and takes the next client.
    s.sendall(b'{"execute": "query-st')
    s.close()
    s, f = _raw(spin_vm.qmp_path)
    json.loads(f.readline())
    s.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-status"}')
    assert json.loads(f.readline()) == {"return": {}}
    assert json.loads(f.readline())["return"]["status"] == "running"
    s.sendall(b'{"execute": "quit"}')
    assert json.loads(f.readline()) == {"return": {}}
    s.close()
    code, _, err = spin_vm.finish()
    assert code == 0, err


@KVM
def test_load_10000_commands_over_one_connection(spin_vm: Vm) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from qmp_load import run_load
    finally:
        sys.path.pop(0)
    rate = run_load(spin_vm.qmp_path, 10_000)
    assert rate > 500, f"{rate:.0f} commands/s"
    s, f = _raw(spin_vm.qmp_path)
    f.readline()
    s.sendall(b'{"execute": "qmp_capabilities"}{"execute": "quit"}')
    f.readline()
    f.readline()
    s.close()
    assert spin_vm.finish()[0] == 0


@pytest.mark.parametrize("accel", ACCELS)
def test_human_monitor_on_a_socket(tmp_path: Path, accel: str) -> None:
    need_accel(accel)
    kernel = guest("spin")
    sock = str(tmp_path / "hmp.sock")
    vm = Vm(tmp_path, "-kernel", kernel, "-monitor", f"unix:{sock},server=on,wait=off",
            accel=accel)
    try:
        wait_for_socket(sock, vm.proc)
        s = connect_unix(sock)
        s.settimeout(20)
        buf = b""

        def until_prompt() -> str:
            nonlocal buf
            while b"(qemu) " not in buf:
                chunk = s.recv(65536)
                assert chunk, buf
                buf += chunk
            text, _, buf = buf.partition(b"(qemu) ")
            return text.decode().replace("\r\n", "\n")

        banner = until_prompt()
        assert "monitor" in banner and "help" in banner

        def cmd(line: str) -> str:
            s.sendall(line.encode() + b"\n")
            return until_prompt()

        assert cmd("info status") == "VM status: running\n"
        cmd("stop")
        assert cmd("info status") == "VM status: paused\n"
        regs = cmd("info registers")
        assert re.search(r"^EIP=[0-9a-f]{8} EFL=[0-9a-f]{8} \[[-ODSZAPC]{7}\] CPL=0 ", regs,
                         re.M), regs
        assert re.search(r"^CS =0010 00000000 ffffffff 00c09b00 DPL=0 CS32 \[-RA\]$", regs,
                         re.M), regs
        eip = int(re.search(r"EIP=([0-9a-f]{8})", regs).group(1), 16)  # type: ignore[union-attr]
        dis = cmd("x/3i $pc")
        assert dis.startswith(f"0x{eip:016x}:  "), dis
        assert len(dis.splitlines()) == 3
        words = cmd(f"xp/4xw 0x{eip:x}")
        assert re.fullmatch(rf"{eip:016x}: 0x[0-9a-f]{{8}} 0x[0-9a-f]{{8}} 0x[0-9a-f]{{8}}"
                            r" 0x[0-9a-f]{8}\n", words), words
        assert cmd(f"x/4xw 0x{eip:x}") == words  # no paging: virtual = physical
        assert cmd(f"x/2xb 0x{eip:x}").startswith(f"{eip:016x}: 0x")
        assert cmd(f"x/1xg 0x{eip:x}").count("0x") == 1
        mtree = cmd("info mtree")
        assert "address-space: memory" in mtree and "address-space: I/O" in mtree
        assert "(prio 0, ram)" in mtree
        qtree = cmd("info qtree")
        assert "bus: main-system-bus" in qtree and "dev: isa-serial" in qtree, qtree
        pci = cmd("info pci")
        assert "Bus  0, device   0, function 0:" in pci, pci
        assert "info registers" in cmd("help info")
        lapic = cmd("info lapic")
        if accel == "tcg":  # the board's software LAPIC (KVM keeps its own in the kernel)
            assert lapic.startswith("dumping local APIC state for CPU 0"), lapic
            assert re.search(r"^LVTT +0x[0-9a-f]{8} ", lapic, re.M), lapic
            assert re.search(r"^Timer +DCR=0x[0-9a-f]+ initial_count = \d+", lapic, re.M), lapic
        else:
            assert "local APIC state not available" in lapic, lapic
        assert "unknown command" in cmd("bogus")
        cmd("cont")
        assert cmd("info status") == "VM status: running\n"
        s.sendall(b"quit\n")
        code, _, err = vm.finish()
        assert code == 0, err
    finally:
        vm.proc.kill()
        vm.proc.wait()


def symbol(elf: str, name: str) -> int:
    """A symbol's address from the guest's ELF symbol table (nm)."""
    need(shutil.which("nm") is not None, "nm (binutils) is needed")
    out = subprocess.run(["nm", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in {elf}")


@KVM
def test_human_monitor_on_stdio(tmp_path: Path) -> None:
    need_kvm()
    kernel = guest("spin")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfw", "run", "-accel", "kvm", "-kernel", kernel, "-display",
         "none", "-serial", "null", "-monitor", "stdio", "-S"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate("info status\ncont\ninfo status\nstop\ninfo status\n"
                                    "quit\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    out = out.replace("\r\n", "\n")
    assert out.startswith("QEMU 0.1.0 monitor (vfw) - type 'help' for more information\n")
    assert re.findall(r"VM status: [a-z ()]+", out) == [
        "VM status: paused (prelaunch)", "VM status: running", "VM status: paused"]


GDB_SCRIPT = """\
set pagination off
set confirm off
set architecture i386:x86-64
target remote {address}
break gdb_target_step
continue
info registers rip
stepi
info registers rip
set {{int}} 0x{exit_code_addr:x} = 7
delete
continue
"""


@pytest.mark.parametrize("accel", ACCELS)
def test_gdb_breaks_at_a_symbol_steps_and_continues_to_exit(tmp_path: Path, accel: str) -> None:
    need_accel(accel)
    need(shutil.which("gdb") is not None, "gdb is needed for the gdbstub test")
    kernel = guest("gdbtarget")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vm = Vm(tmp_path, "-kernel", kernel, *DEBUG_EXIT, "-gdb", f"tcp:127.0.0.1:{port}", "-S",
            accel=accel)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and vm.proc.poll() is None
                time.sleep(0.1)
        # The probe connection above was served and closed: the stub takes the next one.
        script = tmp_path / "script.gdb"
        script.write_text(GDB_SCRIPT.format(address=f"127.0.0.1:{port}",
                                            exit_code_addr=symbol(kernel, "gdb_exit_code")))
        r = subprocess.run(["gdb", "-nx", "-batch", "-x", str(script), kernel],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout
        assert "Breakpoint 1, " in out and "in gdb_target_step" in out, out + r.stderr
        rips = re.findall(r"^rip\s+0x([0-9a-f]+)", out, re.M)
        assert len(rips) == 2, out
        assert int(rips[1], 16) > int(rips[0], 16)
        assert "exited with code 017" in out, out + r.stderr  # (7 << 1) | 1
        code, _, err = vm.finish()
        assert code == 15, err
        assert "gdbtarget done" in vm.serial.read_text()
    finally:
        vm.proc.kill()
        vm.proc.wait()



class GdbClient:
    """The GDB remote protocol's client side, bare: connect (retrying while vfw starts),
    send a packet and read the reply's payload (acks and checksums are not checked)."""

    def __init__(self, port: int, vm: Vm, timeout: float):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and vm.proc.poll() is None
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self._buf = b""

    def packet(self) -> bytes:
        while True:
            m = re.search(rb"\$([^#]*)#([0-9a-f]{2})", self._buf)
            if m:
                self._buf = self._buf[m.end():]
                return m.group(1)
            chunk = self.sock.recv(65536)
            assert chunk, self._buf
            self._buf += chunk

    def send(self, payload: bytes) -> bytes:
        self.sock.sendall(b"$" + payload + b"#%02x" % (sum(payload) & 0xFF))
        return self.packet()


@pytest.mark.parametrize("accel", ACCELS)
def test_gdb_interrupt_and_registers_over_the_raw_protocol(tmp_path: Path, accel: str) -> None:
    need_accel(accel)
    kernel = guest("spin")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vm = Vm(tmp_path, "-kernel", kernel, "-gdb", f"tcp:127.0.0.1:{port}", accel=accel)
    try:
        gdb = GdbClient(port, vm, timeout=20)
        s, packet, send = gdb.sock, gdb.packet, gdb.send
        assert b"qXfer:features:read+" in send(b"qSupported:multiprocess+")
        xml = send(b"qXfer:features:read:target.xml:0,ffff")
        assert xml.startswith(b"l") and b"i386:x86-64" in xml
        assert send(b"?").startswith(b"T")
        regs = send(b"g")
        assert len(regs) == 2 * (16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 16)
        rip = send(b"p10")
        assert len(rip) == 16
        assert len(send(b"m100000,10")) == 32
        s.sendall(b"$c#63")
        time.sleep(0.3)
        s.sendall(b"\x03")  # Ctrl-C
        assert packet().startswith(b"T02")
        s.sendall(b"$D#44")
        assert packet() == b"OK"
        s.close()
        time.sleep(0.3)
        assert vm.proc.poll() is None  # detached: the VM runs on
        vm.proc.terminate()
        vm.finish()
    finally:
        vm.proc.kill()
        vm.proc.wait()


@pytest.mark.requires("vfw-accel-tcg")
def test_gdb_under_tcg_smp_breakpoint_on_an_ap_stops_every_vcpu(tmp_path: Path) -> None:
    """TCG runs the vCPUs round-robin in one thread: a breakpoint hit by an AP (in real mode,
    at its SIPI trampoline) must stop the BSP too, and report the AP's thread."""
    kernel = guest("smp")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vm = Vm(tmp_path, "-kernel", kernel, "-append", "cpus=2", "-smp", "2", *DEBUG_EXIT,
            "-gdb", f"tcp:127.0.0.1:{port}", "-S", accel="tcg")
    try:
        gdb = GdbClient(port, vm, timeout=60)
        s, send = gdb.sock, gdb.send
        assert send(b"Z0,8000,1") == b"OK"
        assert send(b"vCont;c").startswith(b"T05thread:02;")
        assert send(b"Hg2") == b"OK"
        assert int.from_bytes(bytes.fromhex(send(b"p10").decode()), "little") == 0  # IP
        assert send(b"Hg1") == b"OK"
        bsp_rip = send(b"p10")
        time.sleep(0.3)
        assert send(b"p10") == bsp_rip  # the BSP is stopped as well
        assert send(b"z0,8000,1") == b"OK"
        assert send(b"c").startswith(b"W")
        s.close()
        code, _, err = vm.finish()
        assert code == (2 << 1) | 1, err
        assert "cpus=2" in vm.serial.read_text()
    finally:
        vm.proc.kill()
        vm.proc.wait()
