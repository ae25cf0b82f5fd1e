"""The gdbstub's protocol handling against a fake machine and accelerator.

The real gdb against a real guest under KVM is in tests/test_monitor_guest.py.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from vfw.gdbstub import REG_SIZES, TARGET_XML, GdbStub, _checksum, _escape
from vfw.memory import AddressSpace, MemoryRegion
from vfw.runstate import RunState


class FakeAccel:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int], bool, bool]] = []

    def synchronize_state(self, cpu: Any) -> None:
        pass

    def set_guest_debug(self, cpu: Any, breakpoints: list[int], single_step: bool,
                        on_debug: Any) -> None:
        self.calls.append((cpu.cpu_index, list(breakpoints), single_step, on_debug is not None))


class FakeMachine:
    def __init__(self) -> None:
        system = MemoryRegion.container("system", 1 << 64)
        system.add_subregion(0, MemoryRegion.ram("ram", 1 << 20))
        self.address_space_memory = AddressSpace("memory", system)
        env = SimpleNamespace(regs=list(range(16)), rip=0x1000, eflags=0x202,
                              segs=[SimpleNamespace(selector=i * 8, base=0, flags=0)
                                    for i in range(6)],
                              cr=[0] * 9, efer=0, st=[0] * 8, xmm=[0] * 16, mxcsr=0x1F80,
                              fcw=0x37F, fsw=0, ftw=0, fop=0, fip=0, fdp=0)
        self.cpus = [SimpleNamespace(cpu_index=0, env=env)]
        self.accel = FakeAccel()
        self.event_listeners: list[Any] = []
        self.runstate = RunState.PAUSED
        self.requests: list[str] = []
        self.exit_code = 0

    def request_stop(self) -> None:
        self.requests.append("stop")

    def request_cont(self) -> None:
        self.requests.append("cont")

    def request_shutdown(self, cause: Any) -> None:
        self.requests.append("shutdown")


@pytest.fixture
def stub() -> Iterator[GdbStub]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    machine = FakeMachine()
    s = GdbStub(machine, listener, "test")  # type: ignore[arg-type]
    s.stopped = True
    yield s
    s.close()


def test_target_description_is_xml_for_amd64() -> None:
    root = ET.fromstring(TARGET_XML.split("?>", 1)[1].split(">", 1)[1])
    assert root.find("architecture").text == "i386:x86-64"  # type: ignore[union-attr]
    regs = root.findall(".//reg")
    assert [r.get("name") for r in regs[:3]] == ["rax", "rbx", "rcx"]
    assert [int(r.get("bitsize", 0)) // 8 for r in regs] == REG_SIZES


def test_packet_framing_helpers() -> None:
    assert _checksum(b"OK") == b"9a"
    assert _escape(b"a}b#c$d*") == b"a}]b}\x03c}\x04d}\x0a"


def test_registers_memory_and_breakpoints(stub: GdbStub) -> None:
    machine: Any = stub.machine
    env = machine.cpus[0].env
    regs = bytes.fromhex(stub.handle(b"g").decode())  # type: ignore[union-attr]
    assert len(regs) == sum(REG_SIZES)
    assert int.from_bytes(regs[0:8], "little") == 0  # rax = regs[0]
    assert int.from_bytes(regs[8:16], "little") == 3  # rbx = regs[3] (encoding order)
    assert stub.handle(b"p10") == (0x1000).to_bytes(8, "little").hex().encode()
    assert stub.handle(b"P10=" + (0x2000).to_bytes(8, "little").hex().encode()) == b"OK"
    assert env.rip == 0x2000
    assert stub.handle(b"M100,4:deadbeef") == b"OK"
    assert stub.handle(b"m100,4") == b"deadbeef"
    assert stub.handle(b"m200000,4") == b"E14"  # outside RAM
    assert stub.handle(b"Z1,1234,1") == b"OK"
    assert stub.handle(b"Z0,5678,1") == b"OK"
    assert machine.accel.calls[-1] == (0, [0x1234, 0x5678], False, True)
    assert stub.handle(b"Z2,100,4") == b""  # watchpoints: unsupported
    assert stub.handle(b"z0,5678,1") == b"OK"
    assert stub.handle(b"s") is None
    assert machine.accel.calls[-1] == (0, [0x1234], True, True)
    assert machine.requests[-1] == "cont" and stub.running
    # The accelerator reports the step; the machine stops; the stop reply follows.
    stub._on_debug(machine.cpus[0], 0x2001)
    assert machine.requests[-1] == "stop"
    assert stub.debug_hit and not stub.stopped
    assert b"qXfer:features:read+" in stub.handle(b"qSupported:xmlRegisters=i386")  # type: ignore[operator]
    assert stub.handle(b"qfThreadInfo") == b"m01"
    assert stub.handle(b"Hg1") == b"OK"
    assert stub.handle(b"bogus") == b""
    xml = stub.handle(b"qXfer:features:read:target.xml:0,40")
    assert xml is not None and xml.startswith(b"m")
