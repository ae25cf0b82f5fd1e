"""``vfw run``: QEMU's vl.c start-up sequence over the installed plugins.

Order, as QEMU's: parse the command line → answer help requests early → select the machine
class → create the machine and apply its options → CPU topology and RAM size → accelerator
(with fallback) → board init → ``-device`` objects in command-line order → ready → run.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .errors import OptionError, PropertyError, TypeLookupError, VfwError
from .qom import TABLE

if TYPE_CHECKING:
    from .cmdline import CommandLine
    from .machine import Machine
    from .options import Opts
    from .qdev import Bus, Device
    from .qom import Object
    from .runstate import ShutdownCause

#: Accelerators tried when the user names none: KVM where it works, else TCG.
DEFAULT_ACCELS = ("kvm", "tcg")


def help_request(cl: CommandLine) -> str | None:
    """The text for a ``help``/``?`` request on the command line, or None."""
    from . import log

    if cl.values.get("d") == "help":
        return log.help_text()
    for opts in cl.opts("machine"):
        if opts.help or opts.get("type") in ("help", "?"):
            from .machine import machine_help, machine_properties_help, select_machine

            name = opts.get("type")
            if name in (None, "help", "?"):
                return machine_help()
            return machine_properties_help(select_machine(name))
    for opts in cl.opts("accel"):
        if opts.help or opts.get("accel") in ("help", "?"):
            from .accel import accel_help, find_accel_class

            name = opts.get("accel")
            if name in (None, "help", "?"):
                return accel_help()
            cls = find_accel_class(name)
            props = sorted(cls.class_properties().values(), key=lambda p: p.name)
            return "\n".join([f"{name}-accel options:"] + [f"  {p.describe()}" for p in props])
    if cl.values.get("cpu") in ("help", "?"):
        return cpu_help(cl)
    for opts in cl.opts("device"):
        driver = opts.get("driver")
        if driver in ("help", "?"):
            from .qdev import Device, device_help

            return device_help([c for c in TABLE.get_list("device") if issubclass(c, Device)])
        if opts.help:
            try:
                dev_cls = find_device_class(driver or "", for_help=True)
            except OptionError as exc:
                raise exc.located("-device", opts.text) from None
            return dev_cls.help_text()
    return None


def cpu_help(cl: CommandLine) -> str:
    """``-cpu help``: asks the machine's CPU type, which knows its architecture's models."""
    from .machine import select_machine

    machine_opts = _merged(cl, "machine")
    mcls = select_machine(machine_opts.get("type") if machine_opts else None)
    if not mcls.DEFAULT_CPU_TYPE:
        return f"machine '{mcls.machine_name()}' has no CPU models"
    cpu_cls: Any = TABLE.lookup(mcls.DEFAULT_CPU_TYPE)
    return str(cpu_cls.models_help())


def find_device_class(driver: str, for_help: bool = False) -> type[Device]:
    """The device class for ``-device DRIVER`` (by type name or alias)."""
    from .modules import missing_type_hint
    from .qdev import Device

    cls: type[Object] | None = None
    impl = TABLE.find(driver)
    if impl is not None:
        cls = TABLE.initialize(impl)
    else:  # an alias: only a full listing can tell
        for candidate in TABLE.get_list("device"):
            if issubclass(candidate, Device) and driver == candidate.ALIAS:
                cls = candidate
                break
    hint = missing_type_hint(driver)
    if cls is None or not issubclass(cls, Device):
        if driver in TABLE.rejected:
            raise TypeLookupError(TABLE.rejected[driver])
        if for_help:
            raise OptionError(f"Device '{driver}' not found{hint}")
        raise OptionError(f"'{driver}' is not a valid device model name{hint}")
    if cls.is_abstract():
        raise OptionError("Parameter 'driver' expects a non-abstract device type")
    if not cls.USER_CREATABLE:
        raise OptionError("Parameter 'driver' expects a pluggable device type")
    return cls


def find_bus(machine: Machine, name: str | None, kind: str | None) -> Bus | None:
    """The bus named ``name``, or the first bus of ``kind`` (QEMU's qbus_find)."""
    from .qdev import Bus

    buses = [o for o in machine.walk() if isinstance(o, Bus)]
    if name is not None:
        for bus in buses:
            if bus.bus_name == name:
                return bus
        raise OptionError(f"Bus '{name}' not found")
    if kind is None:
        return None
    for bus in buses:
        if kind == bus.KIND:
            return bus
    raise OptionError(f"No '{kind}' bus found for device")


def create_device(machine: Machine, opts: Opts) -> Device:
    """QEMU's qdev_device_add: create, configure, plug and realize one ``-device``."""
    driver = opts.get("driver")
    if not driver:
        raise OptionError("Parameter 'driver' is missing")
    cls = find_device_class(driver)
    dev = cls()
    dev.id = opts.id
    bus = find_bus(machine, opts.get("bus"), cls.BUS_TYPE)
    settings = {k: v for k, v in opts.as_dict().items() if k not in ("driver", "bus")}
    for key, value in settings.items():
        try:
            dev.set_property(key, value)
        except PropertyError as exc:
            raise OptionError(str(exc)) from None
    if bus is not None:
        bus.check_device(dev, settings)
    machine.add_user_device(dev, opts.id)
    if bus is not None:
        bus.plug(dev)
    dev.set_realized(True)
    return dev


def _merged(cl: CommandLine, group: str) -> Opts | None:
    lst = cl.opts(group)
    return lst.merged() if any(True for _ in lst) else None


def accel_choices(cl: CommandLine, machine_opts: Opts | None
                  ) -> tuple[list[tuple[str, dict[str, str]]], bool]:
    """The ordered accelerator choices and whether they are the built-in default."""
    accel_opts = list(cl.opts("accel"))
    legacy = machine_opts.get("accel") if machine_opts is not None else None
    if accel_opts and legacy:
        raise OptionError('The -accel and "-machine accel=" options are incompatible')
    if accel_opts:
        return [(o.get("accel") or "", o.without("accel")) for o in accel_opts], False
    if legacy:
        names = [n for n in legacy.split(":") if n]
        if "enable-kvm" in cl.flags and names != ["kvm"]:
            raise OptionError('The -accel and "-machine accel=" options are incompatible')
        return [(n, {}) for n in names], False
    if "enable-kvm" in cl.flags:
        return [("kvm", {})], False
    return [(n, {}) for n in DEFAULT_ACCELS], True


def build(cl: CommandLine) -> Machine:
    """Create and initialise the machine the command line describes (without running it)."""
    from . import block, log, net
    from .accel import init_accelerator
    from .machine import select_machine
    from .modules import loader
    from .options import parse_cpu_model, parse_memory, parse_smp
    from .qdev import set_global_properties
    from .qom import get_root

    if "d" in cl.values:
        log.set_mask(cl.values["d"])
    if "D" in cl.values:
        log.set_file(cl.values["D"])
    from .legacy_options import rewrite_legacy

    rewrite_legacy(cl)  # -hda.. and -net onto -drive/-netdev/-device
    machine_opts = _merged(cl, "machine")
    mcls = select_machine(machine_opts.get("type") if machine_opts else None)
    choices, default_accel = accel_choices(cl, machine_opts)
    set_global_properties(cl.multi.get("global", []))

    machine = mcls()
    get_root().add_child("machine", machine)
    machine.cmdline = cl  # type: ignore[attr-defined]
    machine.no_reboot = "no-reboot" in cl.flags
    if machine_opts is not None:
        for key, value in machine_opts.without("type", "accel").items():
            try:
                machine.set_property(key, value)
            except PropertyError as exc:
                raise OptionError(str(exc), "-machine", machine_opts.text) from None
    for option in ("kernel", "initrd", "append"):
        if option in cl.values:
            machine.set_property(option, cl.values[option])
    if "bios" in cl.values:
        machine.set_property("firmware", cl.values["bios"])
    machine.smp = parse_smp(_merged(cl, "smp-opts"), machine_name=mcls.machine_name(),
                            max_cpus=mcls.MAX_CPUS, min_cpus=mcls.MIN_CPUS,
                            dies_supported=mcls.SMP_DIES_SUPPORTED,
                            clusters_supported=mcls.SMP_CLUSTERS_SUPPORTED,
                            prefer_sockets=mcls.SMP_PREFER_SOCKETS)
    machine.ram_size = parse_memory(_merged(cl, "memory"), default_size=mcls.DEFAULT_RAM_SIZE).size
    if "cpu" in cl.values:
        model, features = parse_cpu_model(cl.values["cpu"])
        machine.cpu_type, machine.cpu_options = model, features

    hooks = loader().hooks()
    hooks.vfw_machine_created(machine=machine)
    init_accelerator(machine, choices, default_accel)
    block.init_drives(machine, cl)
    net.init_netdevs(machine, cl)
    machine.init()
    for opts in cl.opts("device"):
        try:
            create_device(machine, opts)
        except OptionError as exc:
            raise exc.located("-device", opts.text) from None
        except VfwError as exc:
            raise OptionError(str(exc), "-device", opts.text) from None
    block.create_if_virtio_devices(machine, cl)
    hooks.vfw_machine_ready(machine=machine)
    return machine


def _wait_for_request(machine: Machine) -> None:
    """Serve the main loop (monitors, timers) until a request is pending: while paused or
    in prelaunch nobody else polls it."""
    from .main_loop import main_loop

    loop = main_loop()
    kick = machine.kick_vcpus
    machine.kick_vcpus = loop.notify  # no vCPU runs: a request (a signal's) wakes the loop
    try:
        while not machine.request_event.is_set():
            loop.poll(None)
    finally:
        machine.kick_vcpus = kick


def _event_data(cause: ShutdownCause | None, default: ShutdownCause) -> dict[str, Any]:
    cause = cause or default
    return {"guest": cause.from_guest, "reason": cause.value}


def run_machine(machine: Machine, start_paused: bool) -> int:
    """Run until the machine shuts down; returns vfw's exit status (QEMU's main_loop).

    Paused (``-S``, a monitor's ``stop``) the loop serves the main loop until a monitor's
    ``cont`` (Request.CONT), a reset (done at once; the machine stays paused) or a shutdown.
    """
    from .main_loop import BQL
    from .modules import loader
    from .runstate import Request, RunState, ShutdownCause
    from .timer import CLOCK_VIRTUAL

    accel = machine.accel
    assert accel is not None
    hooks = loader().hooks()
    paused = start_paused
    while True:
        if paused:  # -S or stop: wait for cont (or a reset, or the end)
            CLOCK_VIRTUAL.pause()
            _wait_for_request(machine)
            request = machine.take_request()
            kind, cause = request if request is not None else (Request.STOP, None)
            CLOCK_VIRTUAL.resume()
            if kind is Request.CONT:
                paused = False
                machine.runstate = RunState.RUNNING
                machine.emit_event("RESUME")
                continue
        else:
            machine.runstate = RunState.RUNNING
            accel.run(machine)
            request = machine.take_request() or (Request.SHUTDOWN,
                                                 ShutdownCause.GUEST_SHUTDOWN)
            kind, cause = request
        if kind is Request.SHUTDOWN:
            machine.runstate = RunState.SHUTDOWN
            cause = cause or ShutdownCause.GUEST_SHUTDOWN
            machine.emit_event("SHUTDOWN", _event_data(cause, ShutdownCause.GUEST_SHUTDOWN))
            hooks.vfw_machine_shutdown(machine=machine, reason=cause.value)
            return machine.exit_code
        if kind is Request.RESET:
            with BQL:
                machine.system_reset()
                machine.emit_event("RESET", _event_data(cause, ShutdownCause.GUEST_RESET))
        elif kind is Request.STOP and not paused:
            paused = True
            machine.runstate = RunState.PAUSED
            machine.emit_event("STOP")


def _install_signal_handlers(machine: Machine) -> None:
    """SIGINT/SIGTERM/SIGHUP end the VM cleanly, as QEMU's "terminating on signal N"."""
    import signal

    from .runstate import ShutdownCause

    def handler(signum: int, _frame: Any) -> None:
        print(f"vfw: terminating on signal {signum}", file=sys.stderr)
        machine.request_shutdown(ShutdownCause.HOST_SIGNAL)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def main(argv: list[str]) -> int:
    """Entry of ``vfw run``: returns the process exit status."""
    from .cmdline import parse_command_line

    cl = parse_command_line(argv)
    text = help_request(cl)
    if text is not None:
        print(text)
        return 0
    machine = build(cl)
    from .gdbstub import create_gdbstub
    from .monitor import close_monitors, create_monitors

    monitors = create_monitors(machine, cl)
    stub = create_gdbstub(machine, cl)
    _install_signal_handlers(machine)
    try:
        return run_machine(machine, start_paused="S" in cl.flags)
    finally:
        if stub is not None:
            stub.close(machine.exit_code)
        close_monitors(monitors)


def run_cli(argv: list[str]) -> int:
    """``main`` with vfw's error convention: one line on stderr and status 1, no traceback."""
    try:
        return main(argv)
    except VfwError as exc:
        print(f"vfw: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
