"""``vfw run`` start-up over a test board and a null accelerator in a fake site."""

from __future__ import annotations

from pathlib import Path

import pytest

RUN = ("run", "-M", "testboard", "-accel", "null")


@pytest.fixture
def site(test_board, make_plugin):
    make_plugin("vfw-dev-good", "good_pkg", "good-dev")
    return test_board


def one_line_error(r) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def tree_script(*argv: str) -> str:
    return f"""
        from vfw.cmdline import parse_command_line
        from vfw.vl import build
        from vfw.qom import resolve_path
        m = build(parse_command_line({list(argv)!r}))
        for obj in m.walk():
            if obj.type_name == "good-dev":
                print(obj.path, obj.level, obj.realized)
        print("ram", m.ram_size, "smp", m.smp.cpus, m.smp.sockets, m.smp.cores, m.smp.max_cpus)
    """


def test_board_init_then_devices_in_order_with_qemu_tree_paths(site):
    r = site.python(tree_script("-M", "testboard", "-accel", "null", "-m", "1G", "-smp", "4",
                                "-device", "good-dev,id=d0,level=7", "-device", "good-dev",
                                "-device", "good-dev"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"board init: ram={1 << 30} cpus=4 accel=null",
        "/machine/peripheral/d0 7 True",
        "/machine/peripheral-anon/device[0] 3 True",
        "/machine/peripheral-anon/device[1] 3 True",
        "ram 1073741824 smp 4 1 4 4",
    ]


def test_run_runs_the_accelerator_unless_started_paused(site):
    import signal
    import subprocess
    import sys
    import time

    r = site.vfw(*RUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "null accel ran"
    # -S waits (for a monitor's cont) without running the guest; a signal ends it cleanly.
    proc = subprocess.Popen([sys.executable, "-m", "vfw", *RUN, "-S"], env=site.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the board prints during init
        assert line.startswith("board init:")
        time.sleep(0.5)
        assert proc.poll() is None, "vfw -S exited instead of waiting"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "null accel ran" not in out
    assert err == f"vfw: terminating on signal {int(signal.SIGTERM)}\n"


def test_device_errors_use_qemu_wording(site):
    assert one_line_error(site.vfw(*RUN, "-device", "nosuch")) == \
        "vfw: -device nosuch: 'nosuch' is not a valid device model name"
    assert one_line_error(site.vfw(*RUN, "-device", "good-dev,bogus=1")) == \
        "vfw: -device good-dev,bogus=1: Property 'good-dev.bogus' not found"
    assert one_line_error(site.vfw(*RUN, "-device", "good-dev,level=x")) == \
        "vfw: -device good-dev,level=x: Parameter 'level' expects a number"
    assert one_line_error(site.vfw(*RUN, "-device", "device")) == \
        "vfw: -device device: Parameter 'driver' expects a non-abstract device type"
    assert one_line_error(site.vfw(*RUN, "-device", "good-dev,id=a", "-device", "good-dev,id=a")) \
        .endswith("Duplicate ID 'a' for device")
    assert one_line_error(site.vfw(*RUN, "-device", "good-dev,bus=pci.7")) == \
        "vfw: -device good-dev,bus=pci.7: Bus 'pci.7' not found"


@pytest.mark.requires("vfw-dev-virtio")
def test_device_of_ours_missing_from_the_installed_distribution(site):
    assert one_line_error(site.vfw(*RUN, "-device", "virtio-nosuch-pci")).endswith(
        "'virtio-nosuch-pci' is not a valid device model name (vfw-dev-virtio 0.1.0 is"
        " installed but does not provide it)")


@pytest.mark.requires_absent("vfw-dev-virtio")
def test_device_of_ours_not_installed_names_the_distribution(site):
    assert one_line_error(site.vfw(*RUN, "-device", "virtio-blk-pci")).endswith(
        "'virtio-blk-pci' is not a valid device model name (provided by vfw-dev-virtio, which"
        " is not installed: pip install vfw-dev-virtio)")


def test_global_properties_apply_to_new_devices(site):
    r = site.python(tree_script(*RUN[1:], "-global", "good-dev.level=9", "-device", "good-dev"))
    assert r.returncode == 0, r.stderr
    assert "/machine/peripheral-anon/device[0] 9 True" in r.stdout
    err = one_line_error(site.vfw(*RUN, "-global", "good-dev.nope=1", "-device", "good-dev"))
    assert "can't apply global good-dev.nope=1: Property 'good-dev.nope' not found" in err


def test_machine_options_and_errors(site):
    assert one_line_error(site.vfw("run", "-M", "testboard,bogus=on", "-accel", "null")) == \
        "vfw: -machine testboard,bogus=on: Property 'testboard-machine.bogus' not found"
    assert one_line_error(site.vfw("run", "-M", "testboard,usb=maybe", "-accel", "null")) == \
        "vfw: -machine testboard,usb=maybe: Parameter 'usb' expects 'on' or 'off'"
    r = site.vfw("run", "-M", "testboard,usb=off,graphics=no", "-accel", "null")
    assert r.returncode == 0, r.stderr
    err = one_line_error(site.vfw("run", "-M", "nosuch", "-accel", "null"))
    assert err == ("vfw: unsupported machine type 'nosuch'; use -machine help to list supported"
                   " machines")


def test_smp_and_memory_follow_qemu_rules(site):
    assert one_line_error(site.vfw(*RUN, "-smp", "4,sockets=2,cores=3,threads=1")) == (
        "vfw: Invalid CPU topology: product of the hierarchy must match maxcpus: sockets (2) *"
        " dies (1) * cores (3) * threads (1) != maxcpus (4)")
    assert one_line_error(site.vfw(*RUN, "-smp", "300")) == (
        "vfw: Invalid SMP CPUs 300. The max CPUs supported by machine 'testboard' is 8")
    r = site.python(tree_script(*RUN[1:], "-m", "512", "-smp", "sockets=2,cores=2"))
    assert "ram 536870912 smp 4 2 2 4" in r.stdout, r.stderr


def test_accelerator_selection_and_fallback(site):
    r = site.vfw("run", "-M", "testboard,accel=nosuch:null")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "vfw: invalid accelerator nosuch\n"  # reported, then the next one tried
    assert one_line_error(site.vfw("run", "-M", "testboard", "-accel", "nosuch")) == \
        "vfw: invalid accelerator nosuch"
    err = one_line_error(site.vfw("run", "-M", "testboard,accel=null", "-accel", "null"))
    assert err == 'vfw: The -accel and "-machine accel=" options are incompatible'


@pytest.mark.requires("vfw-accel-kvm")
def test_disabled_accelerator_says_so(site):
    err = one_line_error(site.vfw("run", "-M", "testboard", "-accel", "kvm",
                                  VFW_DISABLE_PLUGINS="vfw-accel-kvm"))
    assert err == ("vfw: invalid accelerator kvm: type 'kvm-accel' is provided by vfw-accel-kvm"
                   " 0.1.0, which is disabled (VFW_DISABLE_PLUGINS / VFW_DISABLE_PLUGIN_AUTOLOAD"
                   " or --disable-plugin)")


def test_uninstalled_accelerator_and_board_name_their_distribution(site):
    """With an index holding only vfw-core (what a core-only install sees)."""
    r = site.python("""
        from vfw import modules
        from vfw.errors import VfwError
        modules._loader = modules.ModuleLoader(index=[]).install()
        from vfw.accel import find_accel_class
        from vfw.machine import select_machine
        for call in (lambda: find_accel_class("kvm"), lambda: select_machine(None),
                     lambda: select_machine("pc")):
            try:
                call()
            except VfwError as e:
                print(e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "invalid accelerator kvm (provided by vfw-accel-kvm, which is not installed:"
        " pip install vfw-accel-kvm)",
        "No machine specified, and there is no default; no board plugin is installed"
        " (pip install vfw-board-pc)",
        "unsupported machine type 'pc' (provided by vfw-board-pc, which is not installed:"
        " pip install vfw-board-pc); use -machine help to list supported machines",
    ]


@pytest.mark.requires("vfw-accel-kvm", "vfw-accel-tcg")
def test_default_accelerator_falls_back_with_a_note(site):
    # Neither kvm nor tcg installed (disabled): the default names what to install.
    r = site.vfw("run", "-M", "testboard", VFW_DISABLE_PLUGINS="vfw-accel-kvm,vfw-accel-tcg")
    err = one_line_error(r)
    assert err.startswith("vfw: invalid accelerator tcg: type 'tcg-accel' is provided by"
                          " vfw-accel-tcg 0.1.0, which is disabled")
    r = site.vfw("run", "-M", "testboard", VFW_DISABLE_PLUGINS="vfw-accel-kvm")
    assert r.returncode == 1  # tcg is chosen, with a note, then its run refuses (no CPU yet)
    assert r.stderr.splitlines()[0] == "vfw: using accelerator tcg"


def test_help_requests(site):
    r = site.vfw("run", "-machine", "help")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "Supported machines are:"
    assert "testboard            an empty test board [vfw-board-test]" in r.stdout
    r = site.vfw("run", "-M", "?")
    assert "Supported machines are:" in r.stdout
    r = site.vfw("run", "-accel", "help")
    assert "null [vfw-board-test]" in r.stdout
    r = site.vfw("run", "-device", "help")
    assert 'name "good-dev", desc "a test device", from vfw-dev-good 1.0' in r.stdout
    assert r.stdout.splitlines()[0].endswith("devices:")
    r = site.vfw("run", "-device", "good-dev,help")
    assert r.stdout.splitlines() == ["good-dev options:", "  level=<uint32> - a level (default: 3)"]
    assert one_line_error(site.vfw("run", "-device", "nosuch,help")) == \
        "vfw: -device nosuch,help: Device 'nosuch' not found"
    r = site.vfw("run", "-d", "help")
    assert r.stdout.startswith("Log items (comma separated):")
    assert one_line_error(site.vfw(*RUN, "-d", "bogus")).endswith("unknown log item 'bogus' (-d help lists them)")


def test_machine_help_imports_only_machine_plugins(site):
    r = site.python("""
        import sys
        from vfw.machine import machine_help
        machine_help()
        print("good_pkg.dev" in sys.modules, "testboard.board" in sys.modules)
    """)
    assert r.stdout.split() == ["False", "True"], r.stderr


def test_openstack_command_line_fails_with_one_clear_line():
    """The real plugins are installed in the test venv; nothing may trace back."""
    examples = Path(__file__).resolve().parents[3] / "shared" / "examples"
    from vfw.testing import need

    need(examples.is_dir(), f"shared examples not found at {examples}")
    import subprocess
    import sys

    argv = (examples / "openstack-cmdline.txt").read_text().split()[1:]
    r = subprocess.run([sys.executable, "-m", "vfw", "run", *argv], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfw: "), lines


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    """``vfw run -d help | head -1``: the reader leaves early; no traceback, SIGPIPE's status."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "vfw", "run", "-d", "help"], stdout=write_end,
                           stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert r.stderr == b""
    assert r.returncode == 141
