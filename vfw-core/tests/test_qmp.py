"""QMP: the JSON stream, dispatch rules and error texts, plugin commands, run-state commands.

The end-to-end tests run ``vfw run -M testboard -accel null -S`` (the test board from
conftest): in prelaunch the run loop serves the main loop, so QMP works without a guest.
Tests against a real guest under KVM, with the PyPI client, are in tests/test_monitor_guest.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vfw.monitor.qmp import MAX_NESTING, JsonStreamer, StreamError


def feed(data: bytes) -> list[Any]:
    return list(JsonStreamer().feed(data))


def test_stream_splits_messages_and_accepts_single_quotes() -> None:
    s = JsonStreamer()
    assert list(s.feed(b'{"a": 1}{"b": [1, {"c": "}"}]}\n')) == [{"a": 1}, {"b": [1, {"c": "}"}]}]
    assert list(s.feed(b'{"x": ')) == []
    assert list(s.feed(b'"y"}')) == [{"x": "y"}]
    assert feed(b"{'execute': 'it\\'s \"q\"'}") == [{"execute": 'it\'s "q"'}]


def test_stream_errors_use_qemu_texts() -> None:
    assert feed(b'{"execute": }') == [StreamError("JSON parse error, expecting value")]
    assert feed(b"}") == [StreamError("JSON parse error, stray '}'")]
    assert feed(b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)) == [
        StreamError("JSON nesting depth limit exceeded")]
    assert feed(b"12 ") == [12]


def test_stream_refuses_a_huge_message_once_and_recovers() -> None:
    s = JsonStreamer()
    out: list[Any] = []
    big = b'{"x": "' + b"A" * ((64 << 20) + 10) + b'"}{"ok": 1}'
    for i in range(0, len(big), 1 << 20):
        out += s.feed(big[i:i + (1 << 20)])
    assert out == [StreamError("JSON token size limit exceeded"), {"ok": 1}]


HOOK_PLUGIN = '''
VFW_API = "1.0"
from vfw.hookspecs import hookimpl


def hello(monitor, name="world"):
    return {"hello": name, "status": monitor.machine.runstate.value}


@hookimpl
def vfw_qmp_commands():
    return {"x-hello": hello}
'''


class Client:
    def __init__(self, path: str):
        deadline = time.monotonic() + 20
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                self.sock.close()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        self.sock.settimeout(20)
        self.file = self.sock.makefile("rb")

    def read(self) -> Any:
        line = self.file.readline()
        assert line.endswith(b"\r\n"), line
        return json.loads(line)

    def ask(self, message: Any) -> Any:
        self.sock.sendall(message if isinstance(message, bytes) else
                          json.dumps(message).encode())
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def prelaunch_vm(test_board: Any, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    test_board.add("vfw-qmp-hello", "1.0", {"qmphello/__init__.py": HOOK_PLUGIN}, "qmphello")
    path = str(tmp_path / "qmp.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfw", "run", "-M", "testboard", "-accel", "null", "-S",
         "-qmp", f"unix:{path},server=on,wait=off"],
        env=test_board.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield proc, path
    finally:
        proc.kill()
        proc.wait()


def test_negotiation_errors_and_plugin_commands(prelaunch_vm: Any) -> None:
    proc, path = prelaunch_vm
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    c = Client(path)
    greeting = c.read()
    assert greeting == {"QMP": {"version": {"qemu": {"major": 0, "minor": 1, "micro": 0},
                                            "package": "vfw"}, "capabilities": ["oob"]}}
    assert c.ask({"execute": "query-status", "id": 1}) == {
        "error": {"class": "CommandNotFound",
                  "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}
    assert c.ask({"execute": "qmp_capabilities"}) == {"return": {}}
    assert c.ask({"execute": "qmp_capabilities"})["error"] == {
        "class": "CommandNotFound",
        "desc": "Capabilities negotiation is already complete, command ignored"}
    assert c.ask({"execute": "query-status", "id": {"any": ["json"]}}) == {
        "return": {"status": "prelaunch", "running": False, "singlestep": False},
        "id": {"any": ["json"]}}
    assert c.ask({"execute": "nosuch"})["error"] == {
        "class": "CommandNotFound", "desc": "The command nosuch has not been found"}
    assert c.ask({"execute": "stop", "arguments": {"bogus": 1}})["error"]["desc"] == \
        "Parameter 'bogus' is unexpected"
    assert c.ask({"execute": "qom-get", "arguments": {"path": "/machine"}})["error"]["desc"] \
        == "Parameter 'property' is missing"
    assert c.ask({"execute": "qom-list", "arguments": {"path": "/nope"}})["error"] == {
        "class": "DeviceNotFound", "desc": "Device '/nope' not found"}
    assert c.ask({"execute": "qom-get", "arguments": {"path": "/machine", "property": "nope"}}
                 )["error"]["desc"] == "Property 'testboard-machine.nope' not found"
    assert c.ask({"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}}
                 ) == {"return": "testboard-machine"}
    assert c.ask(b"{'execute': 'query-version'}")["return"]["package"] == "vfw"
    assert c.ask({"arguments": {}})["error"]["desc"] == "QMP input lacks member 'execute'"
    assert c.ask({"execute": 1})["error"]["desc"] == \
        "QMP input member 'execute' must be a string"
    assert c.ask({"execute": "stop", "arguments": []})["error"]["desc"] == \
        "QMP input member 'arguments' must be an object"
    names = {cmd["name"] for cmd in c.ask({"execute": "query-commands"})["return"]}
    assert "x-hello" in names and "qom-list-types" in names
    assert c.ask({"execute": "x-hello", "arguments": {"name": "vfw"}}) == {
        "return": {"hello": "vfw", "status": "prelaunch"}}
    assert c.ask({"execute": "x-hello", "arguments": {"nme": 1}})["error"]["desc"] == \
        "Parameter 'nme' is unexpected"
    types = c.ask({"execute": "qom-list-types", "arguments": {"implements": "machine"}})
    assert {"name": "testboard-machine", "parent": "machine"} in types["return"]
    machines = c.ask({"execute": "query-machines"})["return"]
    assert any(m["name"] == "testboard" for m in machines)
    hmp = c.ask({"execute": "human-monitor-command",
                 "arguments": {"command-line": "info status"}})
    assert hmp == {"return": "VM status: paused (prelaunch)\n"}
    # A client that leaves mid-command: the next one is served from scratch.
    c.sock.sendall(b'{"execute": "qu')
    c.close()
    c = Client(path)
    c.read()
    assert c.ask({"execute": "qmp_capabilities"}) == {"return": {}}
    c.sock.sendall(b'{"execute": "quit"}')
    assert c.read() == {"return": {}}
    event = c.read()
    assert event["event"] == "SHUTDOWN"
    assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    assert c.file.readline() == b""  # then EOF
    assert proc.wait(timeout=20) == 0
    assert "null accel ran" not in proc.communicate()[0]


def test_cont_leaves_prelaunch_with_a_resume_event(prelaunch_vm: Any) -> None:
    proc, path = prelaunch_vm
    c = Client(path)
    c.read()
    c.ask({"execute": "qmp_capabilities"})
    assert c.ask({"execute": "cont"}) == {"return": {}}
    assert c.read()["event"] == "RESUME"
    # The null accelerator returns at once: the machine shuts down as a guest would.
    event = c.read()
    assert event["event"] == "SHUTDOWN" and event["data"]["guest"] is True
    assert proc.wait(timeout=20) == 0
    assert "null accel ran" in proc.communicate()[0]


def test_system_powerdown_reports_the_event_and_reset_while_paused(prelaunch_vm: Any) -> None:
    proc, path = prelaunch_vm
    c = Client(path)
    c.read()
    c.ask({"execute": "qmp_capabilities"})
    c.sock.sendall(b'{"execute": "system_powerdown"}')
    assert c.read()["event"] == "POWERDOWN"
    assert c.read() == {"return": {}}
    assert c.ask({"execute": "system_reset"}) == {"return": {}}
    assert c.read()["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert c.ask({"execute": "query-status"})["return"]["status"] == "prelaunch"
    c.sock.sendall(b'{"execute": "quit"}')
    c.read()
    c.close()
    assert proc.wait(timeout=20) == 0


def test_qmp_over_tcp(test_board: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfw", "run", "-M", "testboard", "-accel", "null", "-S",
         "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"],
        env=test_board.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=20)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        f = sock.makefile("rb")
        assert "QMP" in json.loads(f.readline())
        sock.sendall(b'{"execute": "qmp_capabilities"}{"execute": "quit", "id": "q"}')
        assert json.loads(f.readline()) == {"return": {}}
        assert json.loads(f.readline()) == {"return": {}, "id": "q"}
        sock.close()
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
