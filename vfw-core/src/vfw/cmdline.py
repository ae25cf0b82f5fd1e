"""The QEMU-style command line that ``vfw run`` accepts: the option table and the argv parser.

Like QEMU's vl.c this only sorts the arguments: each option is looked up in ``OPTIONS``, options
with a group are parsed into QemuOpts (``vfw.options``), the rest are kept as strings or flags.
What the values mean is for the code that builds the machine; ``CommandLine.order`` keeps the
command-line order because -device objects are created in it.

This module is imported on every ``vfw run``: it imports only ``vfw.options`` and ``vfw.errors``.
"""

from __future__ import annotations

from typing import NamedTuple

from vfw.errors import OptionError
from vfw.options import (
    MEMORY_GROUP,
    SMP_GROUP,
    OptDesc,
    Opts,
    OptsGroup,
    OptsList,
    parse_opts,
)

__all__ = [
    "OPTIONS",
    "CommandLine",
    "OptionDef",
    "help_text",
    "parse_command_line",
    "parse_global",
]

# Groups as QEMU 7.2 declares them (name, implied key, merging). desc=None means the consumer
# validates the keys (machine, device and object properties, drive and netdev options...).
MACHINE_GROUP = OptsGroup("machine", implied_key="type", merge_lists=True)
ACCEL_GROUP = OptsGroup("accel", implied_key="accel")
NAME_GROUP = OptsGroup(
    "name",
    implied_key="guest",
    desc=(
        OptDesc("guest", "str", "Sets the name of the guest"),
        OptDesc("process", "str", "Sets the name of the QEMU process, as shown in top etc"),
        OptDesc("debug-threads", "bool", "When enabled, name the individual threads"),
    ),
    merge_lists=True,
)
DRIVE_GROUP = OptsGroup("drive")
DEVICE_GROUP = OptsGroup("device", implied_key="driver")
NETDEV_GROUP = OptsGroup("netdev", implied_key="type")
NET_GROUP = OptsGroup("net", implied_key="type")
CHARDEV_GROUP = OptsGroup("chardev", implied_key="backend")
DISPLAY_GROUP = OptsGroup("display", implied_key="type")
MON_GROUP = OptsGroup(
    "mon",
    implied_key="chardev",
    desc=(OptDesc("mode", "str"), OptDesc("chardev", "str"), OptDesc("pretty", "bool")),
)
BOOT_GROUP = OptsGroup(
    "boot-opts",
    implied_key="order",
    desc=(
        OptDesc("order", "str"),
        OptDesc("once", "str"),
        OptDesc("menu", "bool"),
        OptDesc("splash", "str"),
        OptDesc("splash-time", "number"),
        OptDesc("reboot-timeout", "number"),
        OptDesc("strict", "bool"),
    ),
    merge_lists=True,
)
RTC_GROUP = OptsGroup(
    "rtc",
    desc=(OptDesc("base", "str"), OptDesc("clock", "str"), OptDesc("driftfix", "str")),
    merge_lists=True,
)
OBJECT_GROUP = OptsGroup("object", implied_key="qom-type")
GLOBAL_GROUP = OptsGroup(
    "global",
    desc=(OptDesc("driver", "str"), OptDesc("property", "str"), OptDesc("value", "str")),
)


class OptionDef(NamedTuple):
    """One command-line option. ``arg`` None makes it a flag; ``multi`` keeps every value."""

    name: str
    aliases: tuple[str, ...]
    arg: str | None
    group: OptsGroup | None
    help: str
    multi: bool = False


def _flag(name: str, help: str) -> OptionDef:
    return OptionDef(name, (), None, None, help)


def _value(name: str, arg: str, help: str, multi: bool = False) -> OptionDef:
    return OptionDef(name, (), arg, None, help, multi)


def _grouped(name: str, arg: str, group: OptsGroup, help: str) -> OptionDef:
    return OptionDef(name, (), arg, group, help)


OPTIONS: tuple[OptionDef, ...] = (
    OptionDef(
        "machine",
        ("M",),
        "[type=]name[,prop=value...]",
        MACHINE_GROUP,
        "select the emulated machine",
    ),
    _grouped(
        "accel",
        "[accel=]name[,prop=value...]",
        ACCEL_GROUP,
        "select an accelerator (repeat to list fallbacks)",
    ),
    _flag("enable-kvm", "enable KVM full virtualization support"),
    _value("cpu", "model[,feature...]", "select the CPU model ('-cpu help' lists them)"),
    _grouped(
        "m",
        "[size=]megs[,slots=n,maxmem=size]",
        MEMORY_GROUP,
        "set the guest RAM size (MiB unless suffixed)",
    ),
    _grouped(
        "smp",
        "[cpus=]n[,maxcpus=n][,sockets=n][,dies=n][,clusters=n][,cores=n][,threads=n]",
        SMP_GROUP,
        "set the number of CPUs and their topology",
    ),
    _grouped(
        "name",
        "[guest=]name[,process=name][,debug-threads=on|off]",
        NAME_GROUP,
        "set the guest name",
    ),
    _value("uuid", "uuid", "set the system UUID"),
    _value("kernel", "bzImage", "boot this Linux kernel directly"),
    _value("initrd", "file", "use this file as the initial RAM disk"),
    _value("append", "cmdline", "use this as the kernel command line"),
    _value("bios", "file", "set the filename for the BIOS"),
    _grouped(
        "drive",
        "[file=file][,if=type][,format=f][,id=name][,...]",
        DRIVE_GROUP,
        "define a block drive",
    ),
    _value("hda", "file", "use file as IDE hard disk 0 image (also: a bare file argument)"),
    _value("hdb", "file", "use file as IDE hard disk 1 image"),
    _value("hdc", "file", "use file as IDE hard disk 2 image"),
    _value("hdd", "file", "use file as IDE hard disk 3 image"),
    _flag("snapshot", "write to temporary files instead of disk image files"),
    _grouped(
        "device",
        "driver[,prop=value][,...]",
        DEVICE_GROUP,
        "add a device ('-device help' lists them)",
    ),
    _value("global", "driver.prop=value", "set a default value of a device property", True),
    _grouped(
        "netdev", "type,id=str[,prop=value][,...]", NETDEV_GROUP, "configure a network back end"
    ),
    _grouped(
        "net", "nic|user|tap|...[,prop=value][,...]", NET_GROUP, "legacy NIC and network back end"
    ),
    _grouped(
        "chardev",
        "backend,id=id[,prop=value][,...]",
        CHARDEV_GROUP,
        "configure a character device",
    ),
    _value("serial", "dev", "redirect the next serial port to a host device", True),
    _value("parallel", "dev", "redirect the next parallel port to a host device", True),
    _value("monitor", "dev", "redirect the human monitor to a host device", True),
    _value("qmp", "dev", "serve QMP on a host device (unix:path,server=on,wait=off)", True),
    _grouped(
        "mon",
        "[chardev=]name[,mode=readline|control][,pretty=on|off]",
        MON_GROUP,
        "attach a monitor to a chardev",
    ),
    _grouped("display", "type[,opt=value...]", DISPLAY_GROUP, "select the display back end"),
    _flag("nographic", "disable graphical output; serial and monitor go to stdio"),
    _value("vnc", "display[,option...]", "start a VNC server on display"),
    _value("vga", "type", "select the video card type"),
    _value("k", "language", "use a keyboard layout (e.g. fr, de)"),
    _flag("usb", "enable the on-board USB host controller"),
    _grouped(
        "boot",
        "[order=drives][,once=drives][,menu=on|off][,strict=on|off]...",
        BOOT_GROUP,
        "set the boot order",
    ),
    _grouped(
        "rtc",
        "[base=utc|localtime|date][,clock=host|rt|vm][,driftfix=none|slew]",
        RTC_GROUP,
        "configure the real-time clock",
    ),
    _grouped("object", "type[,prop=value...]", OBJECT_GROUP, "create a user-creatable object"),
    _flag("nodefaults", "do not create the default devices"),
    _flag("no-user-config", "do not load any user-provided config files"),
    _flag("no-reboot", "exit instead of rebooting"),
    _flag("no-shutdown", "stop (do not exit) when the guest shuts down"),
    _flag("no-hpet", "disable the HPET"),
    _flag("S", "freeze the CPUs at start-up (continue with 'cont' on the monitor)"),
    _flag("s", "shorthand for -gdb tcp::1234"),
    _value("gdb", "dev", "accept a gdb connection on device"),
    _value("d", "item1[,...]", "enable logging of the given items"),
    _value("D", "logfile", "output the log to logfile (default stderr)"),
    _value("pidfile", "file", "write the process id to file"),
    _flag("daemonize", "daemonize after initializing"),
)

_BY_NAME: dict[str, OptionDef] = {}
for _opt in OPTIONS:
    for _spelling in (_opt.name, *_opt.aliases):
        assert _spelling not in _BY_NAME, _spelling
        _BY_NAME[_spelling] = _opt
del _opt, _spelling

#: A bare (non-option) argument is a disk image, as in QEMU: ``qemu-system-x86_64 disk.img``.
POSITIONAL_OPTION = "hda"


class CommandLine:
    """A sorted command line. Keys are option names without the dash (``machine`` for -M too)."""

    def __init__(self) -> None:
        self.groups: dict[str, OptsList] = {}  # group name -> instances in order
        self.values: dict[str, str] = {}  # single-value options; last wins
        self.multi: dict[str, list[str]] = {}  # repeatable plain options
        self.flags: set[str] = set()
        self.order: list[tuple[str, object]] = []  # (name, Opts | str | True)

    def opts(self, group_name: str) -> OptsList:
        """The instances of a group by its QEMU name ("machine", "smp-opts", "memory", ...)."""
        return self.groups[group_name]


def parse_global(text: str) -> tuple[str, str, str]:
    """Split a -global value into (driver, property, value), as qemu_global_option does.

    ``driver.prop=value`` is the usual form; ``driver=d,property=p,value=v`` is also accepted.
    """
    dot, eq = text.find("."), text.find("=")
    if 0 < dot < eq - 1 and dot <= 63 and eq - dot - 1 <= 63:
        return text[:dot], text[dot + 1 : eq], text[eq + 1 :]
    opts = parse_opts(GLOBAL_GROUP, text)
    driver, prop, value = opts.get("driver"), opts.get("property"), opts.get("value")
    if driver is None or prop is None or value is None:
        raise OptionError("options 'driver', 'property', and 'value' are required")
    return driver, prop, value


def parse_command_line(argv: list[str]) -> CommandLine:
    """Sort ``argv`` (without the program name) into a CommandLine.

    ``-opt`` and ``--opt`` are the same; ``--opt=value`` is not an option (QEMU has no such
    form). Errors carry the option as written and its argument: ``-m foo=1: Invalid parameter
    'foo'``.
    """
    cl = CommandLine()
    for known in OPTIONS:
        if known.group is not None:
            cl.groups[known.group.name] = OptsList(known.group)
        elif known.multi:
            cl.multi[known.name] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            cl.values[POSITIONAL_OPTION] = arg
            cl.order.append((POSITIONAL_OPTION, arg))
            continue
        opt = _BY_NAME.get(arg[2:] if arg.startswith("--") else arg[1:])
        if opt is None:
            raise OptionError("invalid option", arg)
        if opt.arg is None:
            cl.flags.add(opt.name)
            cl.order.append((opt.name, True))
            continue
        if i >= len(argv):
            raise OptionError("requires an argument", arg)
        value = argv[i]
        i += 1
        try:
            _store(cl, opt, value)
        except OptionError as err:
            raise err.located(arg, value) from None
    return cl


def _store(cl: CommandLine, opt: OptionDef, value: str) -> None:
    item: Opts | str = value
    if opt.group is not None:
        item = parse_opts(opt.group, value)
        cl.groups[opt.group.name].add(item)
    elif opt.multi:
        if opt.name == "global":
            parse_global(value)
        cl.multi[opt.name].append(value)
    else:
        cl.values[opt.name] = value
    cl.order.append((opt.name, item))


def help_text() -> str:
    """The option table as a readable list, one option per line (long ones wrap the text)."""
    width = 40
    lines = []
    for opt in OPTIONS:
        spellings = ", ".join(f"-{name}" for name in (opt.name, *opt.aliases))
        left = f"  {spellings} {opt.arg}" if opt.arg else f"  {spellings}"
        if len(left) < width:
            lines.append(f"{left:<{width}}{opt.help}")
        else:
            lines.append(left)
            lines.append(f"{'':<{width}}{opt.help}")
    return "\n".join(lines) + "\n"
