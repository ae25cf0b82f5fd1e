"""The five distributions of this repository, installed side by side, seen through the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

ALL = ("vfw-core", "vfw-accel-kvm", "vfw-accel-tcg", "vfw-board-pc", "vfw-dev-virtio")


def vfw(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VFW_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "vfw", *args], capture_output=True, text=True,
                          timeout=120, env=full_env)


def test_version_and_help_read_like_a_guide():
    assert vfw("--version").stdout == "vfw 0.1.0\n"
    out = vfw("--help").stdout
    assert out.index("Examples:") < out.index("Commands:")
    for command in ("run", "plugins", "types"):
        assert re.search(rf"^  {command}\b", out, re.M), command
    run_help = vfw("run", "--help").stdout
    assert run_help.index("Examples:") < run_help.index("-machine")
    for option in ("-machine", "-accel", "-cpu", "-smp", "-kernel", "-drive", "-device",
                   "-netdev", "-chardev", "-serial", "-qmp", "-monitor", "-no-reboot"):
        assert option in run_help, option


@pytest.mark.requires(*ALL)
def test_plugins_lists_every_distribution_and_its_types():
    r = vfw("plugins")
    assert r.returncode == 0, r.stderr
    for dist in ALL:
        assert re.search(rf"^{dist} 0\.1\.0 \[loaded\]$", r.stdout, re.M), dist
    assert "  kvm-accel" in r.stdout and "  pc-i440fx-7.2-machine" in r.stdout
    assert "error:" not in r.stdout


@pytest.mark.requires(*ALL)
def test_types_tree_and_dot_show_the_hierarchy_with_providers():
    tree = vfw("types").stdout.splitlines()
    assert tree[0] == "object (abstract) [vfw-core]"
    assert any(line.endswith("kvm-accel [vfw-accel-kvm]") for line in tree)
    assert any(line.endswith("pc-i440fx-7.2-machine [vfw-board-pc]") for line in tree)
    # kvm-accel is drawn below accel: its prefix is deeper than accel's.
    accel = next(i for i, line in enumerate(tree) if "accel (abstract)" in line)
    kvm = next(i for i, line in enumerate(tree) if "kvm-accel" in line)
    assert kvm > accel and tree[kvm].index("kvm") > tree[accel].index("accel")
    dot = vfw("types", "--dot").stdout
    assert dot.startswith("digraph qom {") and dot.rstrip().endswith("}")
    nodes = set(re.findall(r'^  "([^"]+)" \[label=', dot, re.M))
    edges = re.findall(r'^  "([^"]+)" -> "([^"]+)";', dot, re.M)
    assert ("accel", "kvm-accel") in edges and ("machine", "pc-i440fx-7.2-machine") in edges
    assert all(a in nodes and b in nodes for a, b in edges)


@pytest.mark.requires("vfw-board-pc", "vfw-accel-tcg", "vfw-accel-kvm")
def test_listings_name_the_providing_distribution():
    assert "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)" \
        in vfw("run", "-machine", "help").stdout
    accels = vfw("run", "-accel", "help").stdout.splitlines()
    assert "kvm [vfw-accel-kvm]" in accels and "tcg [vfw-accel-tcg]" in accels
    assert "x86 qemu64" in vfw("run", "-cpu", "help").stdout
    props = vfw("run", "-accel", "tcg,help").stdout
    assert "thread=<TCGThread>" in props and "tb-size=<size>" in props


@pytest.mark.requires_absent("vfw-board-pc")
def test_core_alone_explains_what_to_install():
    r = vfw("run")
    assert r.returncode == 1
    assert r.stderr == ("vfw: No machine specified, and there is no default; no board plugin is"
                        " installed (pip install vfw-board-pc)\n")
    assert "(none: no board plugin is installed; pip install vfw-board-pc)" in \
        vfw("run", "-machine", "help").stdout


@pytest.mark.requires("vfw-board-pc")
@pytest.mark.requires_absent("vfw-accel-kvm")
def test_kvm_not_installed_names_its_distribution():
    r = vfw("run", "-accel", "kvm")
    assert r.stderr == ("vfw: invalid accelerator kvm (provided by vfw-accel-kvm, which is not"
                        " installed: pip install vfw-accel-kvm)\n")


@pytest.mark.requires("vfw-board-pc")
@pytest.mark.requires_absent("vfw-accel-tcg")
def test_tcg_not_installed_names_its_distribution():
    r = vfw("run", "-accel", "tcg")
    assert "provided by vfw-accel-tcg, which is not installed" in r.stderr
