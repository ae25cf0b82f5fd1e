"""A third-party device plugin, end to end: examples/vfw-dev-edu built as a wheel and installed
into a fresh venv beside vfw-core, vfw-board-pc, vfw-accel-kvm and vfw-accel-tcg (non-editable,
as a user installs them), then seen through the CLI and driven by a multiboot guest under KVM
(and, the same guest, under TCG: the plugin does not care which accelerator runs it).

The venv is built once per test session (about half a minute); tests that uninstall the plugin
put it back before they return.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vfw.testing import need, need_kvm

REPO = Path(__file__).resolve().parent.parent
EDU = REPO / "examples" / "vfw-dev-edu"
DISTS = (REPO / "vfw-core", REPO / "plugins" / "vfw-board-pc", REPO / "plugins" / "vfw-accel-kvm",
         REPO / "plugins" / "vfw-accel-tcg")
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=4")
#: The edu guest exits with 42 when every check passed; isa-debug-exit makes that (42 << 1) | 1.
GUEST_OK = (42 << 1) | 1

# Runs where the plugin's base install is what the session tests (and once, not in every
# selective session that lacks KVM).
pytestmark = pytest.mark.requires("vfw-board-pc", "vfw-accel-kvm")


@dataclass
class Venv:
    root: Path
    wheel: Path
    cache: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VFW_", "PYTHON", "VIRTUAL_ENV"))}
        env["VFW_CACHE_DIR"] = str(self.cache)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=self.env(), stdin=subprocess.DEVNULL, cwd=self.root)

    def vfw(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.root / "bin" / "vfw"), *args, timeout=timeout)

    def pip(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = self.run(self.python, "-m", "pip", "--disable-pip-version-check", *args)
        assert r.returncode == 0, f"pip {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        return r


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv with vfw-core, vfw-board-pc, vfw-accel-kvm and the edu wheel installed."""
    root = tmp_path_factory.mktemp("edu-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True,
                   capture_output=True, timeout=300)
    wheels = root / "wheels"
    v = Venv(root / "venv", Path(), root / "vfw-cache")
    v.pip("wheel", "--no-deps", "-w", str(wheels), str(EDU))
    found = sorted(wheels.glob("vfw_dev_edu-*.whl"))
    assert len(found) == 1, found
    v.wheel = found[0]
    v.pip("install", *map(str, DISTS))
    v.pip("install", str(v.wheel))
    yield v


def test_the_wheel_depends_on_vfw_core_only_and_declares_its_types(venv: Venv) -> None:
    r = venv.run(venv.python, "-c", "from importlib.metadata import distribution as d;"
                 "x = d('vfw-dev-edu'); print([r for r in x.requires if 'extra' not in r]);"
                 "print(sorted((e.group, e.name, e.value) for e in x.entry_points))")
    assert r.returncode == 0, r.stderr
    requires, eps = r.stdout.splitlines()
    assert requires == "['vfw-core<0.2,>=0.1']" or requires == "['vfw-core>=0.1,<0.2']"
    assert eps == ("[('vfw.plugins', 'dev-edu', 'vfw_dev_edu'),"
                   " ('vfw.types', 'edu', 'vfw_dev_edu.edu')]")


def test_vfw_plugins_lists_it(venv: Venv) -> None:
    r = venv.vfw("plugins")
    assert r.returncode == 0, r.stderr
    block = r.stdout.split("vfw-dev-edu 0.1.0 [loaded]\n", 1)
    assert len(block) == 2, r.stdout
    assert block[1].startswith("  plugin module: vfw_dev_edu\n  edu\n")
    assert "error:" not in r.stdout


def test_device_help_lists_edu_with_its_distribution(venv: Venv) -> None:
    r = venv.vfw("run", "-device", "help")
    assert r.returncode == 0, r.stderr
    misc = r.stdout.split("Misc devices:\n", 1)[1].split("\n\n", 1)[0]
    line = next((ln for ln in misc.splitlines() if ln.startswith('name "edu"')), None)
    assert line is not None, r.stdout
    assert line.startswith('name "edu", bus PCI, desc "educational PCI device')
    assert line.endswith("from vfw-dev-edu 0.1.0")


def test_device_edu_help_lists_its_properties(venv: Venv) -> None:
    r = venv.vfw("run", "-device", "edu,help")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "edu options:"
    names = [ln.split("=")[0].strip() for ln in lines[1:]]
    assert "dma_mask" in names and "addr" in names and "multifunction" in names
    assert any(re.match(r"  dma_mask=<uint64> - DMA address mask.*\(default: 268435455\)$", ln)
               for ln in lines), r.stdout


def _guest() -> str:
    need(shutil.which("gcc") is not None, "gcc is needed to build the test guests")
    # tests/guests/build.py, loaded by path: "build" is also the name of pypa's build package.
    spec = importlib.util.spec_from_file_location("vfw_test_guests_build",
                                                  REPO / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.build("edu"))


def test_guest_finds_edu_computes_a_factorial_and_gets_the_interrupts(venv: Venv) -> None:
    need_kvm()
    kernel = _guest()
    r = venv.vfw("run", "-accel", "kvm", "-kernel", kernel, "-device", "edu", *DEBUG_EXIT)
    out = r.stdout.replace("\r", "")
    assert r.returncode == GUEST_OK, f"status {r.returncode}\n{out}\n{r.stderr}"
    assert "FAIL" not in out
    assert "vfw-guest: edu found at 00:" in out
    assert "ok: 10! = 3628800" in out and "ok: 12! = 479001600" in out
    assert re.search(r"^vfw-guest: edu INTx irq=1[01]$", out, re.M), out
    assert "vfw-guest: edu MSI vector=65" in out
    assert "vfw-guest: edu DMA ok" in out
    assert out.rstrip().endswith("vfw-guest: edu ok")
    assert "Traceback" not in r.stderr


def test_the_same_guest_passes_under_tcg(venv: Venv) -> None:
    kernel = _guest()
    r = venv.vfw("run", "-accel", "tcg", "-kernel", kernel, "-device", "edu", *DEBUG_EXIT)
    out = r.stdout.replace("\r", "")
    assert r.returncode == GUEST_OK, f"status {r.returncode}\n{out}\n{r.stderr}"
    assert "FAIL" not in out and out.rstrip().endswith("vfw-guest: edu ok")


def test_builtin_firmware_lists_edu_and_sizes_its_bar(venv: Venv) -> None:
    need_kvm()
    r = venv.vfw("run", "-accel", "kvm", "-device", "edu,addr=5")
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace("\r", "")
    assert re.search(r"^00:05\.0 1234:11e8 class 00ff00\n  BAR0 mem 0x[0-9a-f]+ size 0x100000$",
                     out, re.M), out


def test_uninstalled_plugin_gives_a_clear_one_line_error(venv: Venv) -> None:
    venv.pip("uninstall", "-y", "vfw-dev-edu")
    try:
        r = venv.vfw("plugins")
        assert r.returncode == 0 and "vfw-dev-edu" not in r.stdout
        r = venv.vfw("run", "-device", "edu,help")
        assert r.returncode == 1
        assert r.stderr.strip().splitlines()[-1] == "vfw: -device edu,help: Device 'edu' not found"
        ok, _why = _kvm()
        if ok:
            r = venv.vfw("run", "-accel", "kvm", "-device", "edu")
            assert r.returncode == 1
            errors = [ln for ln in r.stderr.splitlines() if "edu" in ln]
            assert errors == ["vfw: -device edu: 'edu' is not a valid device model name"], \
                r.stderr
            assert "Traceback" not in r.stderr
    finally:
        venv.pip("install", str(venv.wheel))
    assert venv.vfw("run", "-device", "edu,help").returncode == 0


def _kvm() -> tuple[bool, str]:
    from vfw.testing import kvm_usable

    return kvm_usable()
