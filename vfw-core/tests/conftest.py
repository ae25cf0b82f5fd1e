"""Fixtures for vfw-core's own tests: fake plugin distributions on a private sys.path entry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


def write_dist(site: Path, name: str, version: str, files: dict[str, str],
               plugin_module: str | None, types: dict[str, str]) -> None:
    """Write an installed distribution the way pip leaves one: modules plus a .dist-info."""
    for rel, source in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    if plugin_module:
        lines += ["[vfw.plugins]", f"{name} = {plugin_module}", ""]
    if types:
        lines += ["[vfw.types]"] + [f"{t} = {m}" for t, m in types.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


class FakeSite:
    """A directory of fake distributions and a way to run Python or vfw against it."""

    def __init__(self, root: Path):
        self.site = root / "site"
        self.site.mkdir()
        self.cache = root / "cache"

    def add(self, name: str, version: str = "1.0", files: dict[str, str] | None = None,
            plugin_module: str | None = None, types: dict[str, str] | None = None) -> None:
        write_dist(self.site, name, version, files or {}, plugin_module, types or {})

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
        env["PYTHONPATH"] = str(self.site)
        env["VFW_CACHE_DIR"] = str(self.cache)
        env.update(extra)
        return env

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, env=self.env(**env), timeout=120)

    def vfw(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vfw", *args], capture_output=True,
                              text=True, env=self.env(**env), timeout=120)


@pytest.fixture
def fake_site(tmp_path: Path) -> FakeSite:
    return FakeSite(tmp_path)


DEVICE_MODULE = """
    from vfw.qdev import Device
    from vfw.props import prop, UINT32
    from vfw.qom import register_type

    @register_type
    class {cls}(Device):
        TYPE = "{type}"
        CATEGORY = "misc"
        DESC = "{desc}"
        level = prop(UINT32, 3, "a level")
"""


def device_module(type_name: str, cls: str = "Dev", desc: str = "a test device") -> str:
    return DEVICE_MODULE.format(type=type_name, cls=cls, desc=desc)


PLUGIN_MODULE = 'VFW_API = "{api}"\n'


def plugin_module(api: str = "1.0") -> str:
    return PLUGIN_MODULE.format(api=api)


@pytest.fixture
def make_plugin(fake_site: FakeSite) -> Callable[..., None]:
    """Add a one-device plugin: package ``pkg`` with ``pkg/dev.py`` registering ``type_name``."""

    def make(name: str, pkg: str, type_name: str, version: str = "1.0", api: str = "1.0",
             extra_files: dict[str, str] | None = None,
             extra_types: dict[str, str] | None = None) -> None:
        files = {f"{pkg}/__init__.py": plugin_module(api), f"{pkg}/dev.py": device_module(type_name)}
        files.update(extra_files or {})
        types = {type_name: f"{pkg}.dev"}
        types.update(extra_types or {})
        fake_site.add(name, version, files, pkg, types)

    return make


BOARD_MODULE = """
    from vfw.accel import Accel
    from vfw.machine import Machine
    from vfw.qom import register_type

    @register_type
    class TestBoard(Machine):
        '''A board with nothing on it: lets tests drive vl without a real board plugin.'''
        TYPE = "testboard-machine"
        DESC = "an empty test board"
        MAX_CPUS = 8
        SMP_DIES_SUPPORTED = True

        def init(self):
            print(f"board init: ram={self.ram_size} cpus={self.smp.cpus}"
                  f" accel={self.accel.accel_name()}")

    @register_type
    class NullAccel(Accel):
        '''An accelerator that runs nothing (DESIGN.md's fake accelerator).'''
        TYPE = "null-accel"

        def init_machine(self, machine):
            pass

        def run(self, machine):
            print("null accel ran")
"""


@pytest.fixture
def test_board(fake_site: FakeSite) -> FakeSite:
    """Install a board ``testboard`` and an accelerator ``null`` into the fake site."""
    fake_site.add("vfw-board-test", "1.0", {"testboard/__init__.py": plugin_module(),
                                            "testboard/board.py": BOARD_MODULE},
                  "testboard", {"testboard-machine": "testboard.board",
                                "null-accel": "testboard.board"})
    return fake_site
