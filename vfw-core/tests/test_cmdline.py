"""Tests for vfw.cmdline: the option table and the QEMU-style argv parser."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfw.cmdline import (
    OPTIONS,
    CommandLine,
    OptionDef,
    help_text,
    parse_command_line,
    parse_global,
)
from vfw.errors import OptionError
from vfw.options import MEMORY_GROUP, SMP_GROUP, Opts, parse_memory, parse_smp

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"


def parse(line: str) -> CommandLine:
    return parse_command_line(shlex.split(line))


def error_of(line: str) -> OptionError:
    with pytest.raises(OptionError) as info:
        parse(line)
    return info.value


def by_name(name: str) -> OptionDef:
    return next(opt for opt in OPTIONS if opt.name == name)


# --- the table ------------------------------------------------------------------------------


def test_spellings_are_unique() -> None:
    spellings = [s for opt in OPTIONS for s in (opt.name, *opt.aliases)]
    assert len(spellings) == len(set(spellings))


REQUIRED_GROUPS = {
    # option: (group name, implied key, merged)
    "machine": ("machine", "type", True),
    "accel": ("accel", "accel", False),
    "m": ("memory", "size", True),
    "smp": ("smp-opts", "cpus", True),
    "name": ("name", "guest", True),
    "drive": ("drive", None, False),
    "device": ("device", "driver", False),
    "netdev": ("netdev", "type", False),
    "net": ("net", "type", False),
    "chardev": ("chardev", "backend", False),
    "display": ("display", "type", False),
    "boot": ("boot-opts", "order", True),
    "rtc": ("rtc", None, True),
    "object": ("object", "qom-type", False),
}
REQUIRED_VALUES = [
    "cpu", "kernel", "initrd", "append", "bios", "vnc", "d", "D", "hda", "hdb", "hdc", "hdd",
    "gdb", "vga", "k", "pidfile",
]
REQUIRED_MULTI = ["serial", "global", "qmp", "monitor"]
REQUIRED_FLAGS = [
    "enable-kvm", "nographic", "nodefaults", "no-reboot", "no-shutdown", "S", "s", "snapshot",
    "no-hpet", "usb", "daemonize",
]


@pytest.mark.parametrize("name", sorted(REQUIRED_GROUPS))
def test_group_options(name: str) -> None:
    opt = by_name(name)
    assert opt.group is not None and opt.arg
    group_name, implied, merged = REQUIRED_GROUPS[name]
    assert (opt.group.name, opt.group.implied_key, opt.group.merge_lists) == (
        group_name, implied, merged
    )


def test_group_descriptions() -> None:
    assert by_name("m").group is MEMORY_GROUP
    assert by_name("smp").group is SMP_GROUP
    for accept_any in ("machine", "accel", "drive", "device", "netdev", "net", "chardev",
                       "display", "object"):
        group = by_name(accept_any).group
        assert group is not None and group.desc is None, accept_any
    name_group = by_name("name").group
    assert name_group is not None and name_group.desc is not None
    assert {d.name: d.kind for d in name_group.desc} == {
        "guest": "str", "process": "str", "debug-threads": "bool"
    }
    rtc_group = by_name("rtc").group
    assert rtc_group is not None and rtc_group.desc is not None
    assert {d.name: d.kind for d in rtc_group.desc} == dict.fromkeys(
        ["base", "clock", "driftfix"], "str"
    )


@pytest.mark.parametrize("name", REQUIRED_VALUES)
def test_value_options(name: str) -> None:
    opt = by_name(name)
    assert opt.group is None and opt.arg and not opt.multi
    cl = parse_command_line([f"-{name}", "one", f"-{name}", "two"])
    assert cl.values[name] == "two"  # last wins
    assert cl.order == [(name, "one"), (name, "two")]


@pytest.mark.parametrize("name", REQUIRED_MULTI)
def test_repeatable_options(name: str) -> None:
    opt = by_name(name)
    assert opt.group is None and opt.arg and opt.multi
    first, second = ("a.b=1", "c.d=2") if name == "global" else ("stdio", "null")
    cl = parse_command_line([f"-{name}", first, f"-{name}", second])
    assert cl.multi[name] == [first, second]
    assert name not in cl.values


@pytest.mark.parametrize("name", REQUIRED_FLAGS)
def test_flags(name: str) -> None:
    assert by_name(name).arg is None
    cl = parse_command_line([f"-{name}"])
    assert cl.flags == {name}
    assert cl.order == [(name, True)]


def test_s_and_S_are_different() -> None:
    assert parse("-s").flags == {"s"}
    assert parse("-S").flags == {"S"}


# --- parsing --------------------------------------------------------------------------------


def test_single_and_double_dash_and_alias() -> None:
    for line in ("-m 512", "--m 512"):
        assert parse(line).opts("memory").merged().get("size") == "512"
    for spelling in ("-machine", "--machine", "-M", "--M"):
        cl = parse_command_line([spelling, "q35"])
        assert [o.get("type") for o in cl.opts("machine")] == ["q35"]
        assert cl.order[0][0] == "machine"


def test_equals_form_is_not_an_option() -> None:
    err = error_of("--m=512")
    assert str(err) == "--m=512: invalid option"


def test_unknown_option() -> None:
    err = error_of("-m 512 -foo")
    assert str(err) == "-foo: invalid option"
    assert (err.option, err.value, err.message) == ("-foo", None, "invalid option")
    assert str(error_of("--")) == "--: invalid option"


def test_missing_argument() -> None:
    err = error_of("-enable-kvm -m")
    assert str(err) == "-m: requires an argument"
    assert str(error_of("--device")) == "--device: requires an argument"


def test_option_looking_argument_is_taken_as_the_value() -> None:
    assert parse("-append -v").values["append"] == "-v"


def test_positional_argument_is_the_hda_image() -> None:
    cl = parse("-m 1G disk.img")
    assert cl.values["hda"] == "disk.img"
    assert cl.order[-1] == ("hda", "disk.img")
    assert parse("-").values["hda"] == "-"  # a lone dash is a file name, as in QEMU


def test_empty_command_line() -> None:
    cl = parse_command_line([])
    assert cl.values == {} and cl.flags == set() and cl.order == []
    assert len(cl.opts("device")) == 0
    assert cl.multi["serial"] == []
    assert parse_smp(cl.opts("smp-opts").merged(), machine_name="pc", max_cpus=255).cpus == 1


def test_every_group_is_present() -> None:
    cl = parse_command_line([])
    expected = {opt.group.name for opt in OPTIONS if opt.group is not None}
    assert set(cl.groups) == expected
    with pytest.raises(KeyError):
        cl.opts("nosuch")


def test_groups_keep_command_line_order() -> None:
    cl = parse("-device e1000,id=a -drive file=x -device virtio-net-pci -device e1000,id=b")
    assert [(o.get("driver"), o.id) for o in cl.opts("device")] == [
        ("e1000", "a"), ("virtio-net-pci", None), ("e1000", "b")
    ]
    assert [name for name, _ in cl.order] == ["device", "drive", "device", "device"]
    assert all(isinstance(value, Opts) for _, value in cl.order)
    assert cl.opts("device").find("b") is cl.order[3][1]


def test_merged_groups_last_wins() -> None:
    cl = parse("-m 512 -smp 4 -m maxmem=4G -smp sockets=2 -M pc -machine q35,usb=off")
    assert parse_memory(cl.opts("memory").merged(), default_size=0).max_size == 4 << 30
    assert parse_smp(cl.opts("smp-opts").merged(), machine_name="q35", max_cpus=288).sockets == 2
    machine = cl.opts("machine").merged()
    assert machine.get("type") == "q35" and machine.get("usb") == "off"


def test_accel_is_repeatable_and_not_merged() -> None:
    cl = parse("-accel kvm -accel tcg,thread=multi")
    assert [(o.get("accel"), o.without("accel")) for o in cl.opts("accel")] == [
        ("kvm", {}), ("tcg", {"thread": "multi"})
    ]


def test_group_errors_are_located() -> None:
    err = error_of("-m foo=1")
    assert str(err) == "-m foo=1: Invalid parameter 'foo'"
    assert (err.option, err.value, err.message) == ("-m", "foo=1", "Invalid parameter 'foo'")
    assert str(error_of("--smp x")) == "--smp x: Parameter 'cpus' expects a number"
    assert str(error_of("-name vm,debug-threads=maybe")) == (
        "-name vm,debug-threads=maybe: Parameter 'debug-threads' expects 'on' or 'off'"
    )
    assert str(error_of("-device e1000,id=1x")) == (
        "-device e1000,id=1x: Parameter 'id' expects an identifier"
    )
    assert str(error_of("-m 1G,id=x")) == "-m 1G,id=x: Invalid parameter 'id'"
    assert str(error_of("-rtc base=utc,bogus=1")) == (
        "-rtc base=utc,bogus=1: Invalid parameter 'bogus'"
    )


@pytest.mark.parametrize("option", ["device", "drive", "netdev", "chardev"])
def test_duplicate_id_is_located(option: str) -> None:
    group = by_name(option).group
    assert group is not None
    err = error_of(f"-{option} x,id=a -{option} y,id=a")
    assert str(err) == f"-{option} y,id=a: Duplicate ID 'a' for {group.name}"


def test_same_id_in_different_groups_is_fine() -> None:
    cl = parse("-netdev user,id=n0 -device e1000,netdev=n0,id=n0")
    assert cl.opts("netdev").find("n0") is not None and cl.opts("device").find("n0") is not None


def test_help_requests_parse() -> None:
    assert parse("-device help").opts("device").merged().get("driver") == "help"
    opts = next(iter(parse("-device e1000,help").opts("device")))
    assert opts.help and opts.get("driver") == "e1000"
    assert parse("-machine help").opts("machine").merged().help
    assert parse("-smp help").opts("smp-opts").merged().help
    assert parse("-cpu help").values["cpu"] == "help"


# --- -global --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("e1000.mac=52:54:00:12:34:56", ("e1000", "mac", "52:54:00:12:34:56")),
        ("isa-fdc.driveA=", ("isa-fdc", "driveA", "")),
        ("kvm-pit.lost_tick_policy=discard", ("kvm-pit", "lost_tick_policy", "discard")),
        ("cfi.pflash01.secure=on", ("cfi", "pflash01.secure", "on")),
        ("a.b=c=d", ("a", "b", "c=d")),
        ("driver=e1000,property=mac,value=x", ("e1000", "mac", "x")),
        ("driver=a,,b,property=p,value=1,,2", ("a,b", "p", "1,2")),
    ],
)
def test_parse_global(text: str, expected: tuple[str, str, str]) -> None:
    assert parse_global(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "Invalid parameter 'foo'"),
        ("e1000.mac", "Invalid parameter 'e1000.mac'"),
        (".mac=1", "Invalid parameter '.mac'"),
        ("e1000.=1", "Invalid parameter 'e1000.'"),
        ("driver=e1000,property=mac", "options 'driver', 'property', and 'value' are required"),
        ("", "options 'driver', 'property', and 'value' are required"),
    ],
)
def test_parse_global_errors(text: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_global(text)
    assert str(info.value) == message


def test_global_is_validated_on_the_command_line() -> None:
    assert str(error_of("-global foo")) == "-global foo: Invalid parameter 'foo'"
    assert parse("-global e1000.mac=x").multi["global"] == ["e1000.mac=x"]


@given(
    st.text("abcdefghij-_0123456789", min_size=1, max_size=63),
    st.text("abcdefghij-_.0123456789", min_size=1, max_size=63),
    st.text(),
)
def test_parse_global_round_trip(driver: str, prop: str, value: str) -> None:
    assert parse_global(f"{driver}.{prop}={value}") == (driver, prop, value)


# --- the example command lines --------------------------------------------------------------


def example_argv(name: str) -> list[str]:
    from vfw.testing import need

    path = EXAMPLES / name
    need(path.is_file(), f"example command lines not found: {path} is absent")
    return shlex.split(path.read_text())[1:]  # without the program name


def test_basic_example() -> None:
    cl = parse_command_line(example_argv("basic-cmdline.txt"))
    assert cl.flags == {"enable-kvm"}
    assert cl.values == {"hda": "ubuntutest.qcow2", "vnc": ":19"}
    assert cl.opts("name").merged().get("guest") == "ubuntutest"
    assert parse_memory(cl.opts("memory").merged(), default_size=0).size == 2048 << 20
    assert [o.as_dict() for o in cl.opts("net")] == [
        {"type": "nic", "model": "virtio"},
        {"type": "tap", "ifname": "tap0", "script": "no", "downscript": "no"},
    ]


def test_openstack_example() -> None:
    cl = parse_command_line(example_argv("openstack-cmdline.txt"))
    assert cl.flags == {"enable-kvm"}
    machine = cl.opts("machine").merged()
    assert machine.as_dict() == {"type": "pc-i440fx-trusty", "accel": "kvm", "usb": "off"}
    assert cl.values["cpu"].startswith("SandyBridge,+erms,+smep,")
    assert cl.values["vnc"] == "0.0.0.0:12"
    smp = parse_smp(cl.opts("smp-opts").merged(), machine_name="pc", max_cpus=255,
                    dies_supported=True)
    assert (smp.cpus, smp.sockets, smp.cores, smp.threads) == (1, 1, 1, 1)
    assert cl.opts("rtc").merged().as_dict() == {"base": "utc", "driftfix": "slew"}
    drive = cl.opts("drive").find("drive-virtio-disk0")
    assert drive is not None and drive.get("cache") == "none"
    assert [o.id for o in cl.opts("device")] == ["virtio-disk0", "net0", "video0"]
    assert [o.get("driver") for o in cl.opts("device")] == [
        "virtio-blk-pci", "virtio-net-pci", "cirrus-vga"
    ]
    net0 = cl.opts("device").find("net0")
    assert net0 is not None and net0.get("mac") == "fa:16:3e:d1:2d:99"
    netdev = cl.opts("netdev").find("hostnet0")
    assert netdev is not None and netdev.without("type") == {
        "fd": "32", "vhost": "on", "vhostfd": "37"
    }
    chardev = cl.opts("chardev").find("charserial0")
    assert chardev is not None and chardev.get("backend") == "file"
    assert [name for name, _ in cl.order][:4] == ["enable-kvm", "name", "machine", "cpu"]


# --- help -----------------------------------------------------------------------------------


def test_help_text_lists_every_option() -> None:
    text = help_text()
    assert text.endswith("\n")
    for opt in OPTIONS:
        assert f"-{opt.name}" in text and opt.help in text
    assert "  -machine, -M [type=]name[,prop=value...]" in text
    assert "select the emulated machine" in text
    line = next(line for line in text.splitlines() if line.startswith("  -m "))
    assert line.split()[:2] == ["-m", "[size=]megs[,slots=n,maxmem=size]"]
    assert "set the guest RAM size" in line
    assert "\n  -nographic " in text
