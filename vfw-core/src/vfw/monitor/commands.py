"""vfw's built-in QMP commands (QEMU's qapi/*.json commands that vfw implements).

Each runs under the BQL in the main loop. Run-state commands only post requests; vfw's run
loop (vfw.vl.run_machine) performs them and emits the events (STOP, RESUME, RESET, SHUTDOWN).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from ..errors import VfwError
from ..qom import TABLE, Object, resolve_path
from ..runstate import RunState, ShutdownCause
from .qmp import QmpError, command

if TYPE_CHECKING:
    from .qmp import QmpMonitor


# -- protocol and state ------------------------------------------------------------------
@command("qmp_capabilities", {"enable": ("array", False)}, preneg=True)
def qmp_capabilities(mon: QmpMonitor, enable: list[Any] | None = None) -> None:
    if mon.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored",
                       "CommandNotFound")
    for cap in enable or []:
        if cap != "oob":
            raise QmpError(f"Parameter 'enable' does not accept value '{cap}'")
    mon.negotiated = True


@command("query-version")
def query_version(mon: QmpMonitor) -> dict[str, Any]:
    return mon.version_info()


@command("query-commands")
def query_commands(mon: QmpMonitor) -> list[dict[str, str]]:
    return [{"name": name} for name in sorted(mon.commands)]


@command("query-status")
def query_status(mon: QmpMonitor) -> dict[str, Any]:
    state = mon.machine.runstate
    return {"status": state.value, "running": state is RunState.RUNNING,
            "singlestep": False}


@command("stop")
def stop(mon: QmpMonitor) -> None:
    if mon.machine.runstate is RunState.RUNNING:
        mon.machine.request_stop()


@command("cont")
def cont(mon: QmpMonitor) -> None:
    if mon.machine.runstate in (RunState.PAUSED, RunState.PRELAUNCH):
        mon.machine.request_cont()
    elif mon.machine.runstate in (RunState.SHUTDOWN, RunState.INTERNAL_ERROR,
                                  RunState.GUEST_PANICKED):
        raise QmpError("Resetting the Virtual Machine is required")


@command("system_reset")
def system_reset(mon: QmpMonitor) -> None:
    mon.machine.request_reset(ShutdownCause.HOST_QMP_SYSTEM_RESET)


@command("system_powerdown")
def system_powerdown(mon: QmpMonitor) -> None:
    mon.machine.powerdown()


@command("quit")
def quit_(mon: QmpMonitor) -> None:
    mon.machine.request_shutdown(ShutdownCause.HOST_QMP_QUIT)


# -- CPUs and accelerators ---------------------------------------------------------------
def _thread_id(accel: Any, cpu: Any) -> int:
    try:
        thread = accel.vcpu_of(cpu).thread
        if thread is not None and thread.native_id is not None:
            return int(thread.native_id)
    except (AttributeError, VfwError):
        pass
    return threading.main_thread().native_id or os.getpid()


def cpu_props(machine: Any, cpu: Any) -> dict[str, int]:
    """socket/core/thread ids of ``cpu`` from the topology (QEMU's CpuInstanceProperties)."""
    smp = machine.smp
    index = int(cpu.cpu_index)
    if smp is None:
        return {"socket-id": index, "core-id": 0, "thread-id": 0}
    threads, cores = max(smp.threads, 1), max(smp.cores, 1)
    props = {"socket-id": index // (threads * cores * max(smp.dies, 1)),
             "core-id": index // threads % cores, "thread-id": index % threads}
    if smp.dies > 1:
        props["die-id"] = index // (threads * cores) % smp.dies
    return props


@command("query-cpus-fast")
def query_cpus_fast(mon: QmpMonitor) -> list[dict[str, Any]]:
    machine = mon.machine
    out = []
    cpu: Any
    for cpu in machine.cpus:
        if machine.accel is not None:
            machine.accel.synchronize_state(cpu)
        out.append({"cpu-index": int(cpu.cpu_index), "qom-path": cpu.path,
                    "thread-id": _thread_id(machine.accel, cpu),
                    "props": cpu_props(machine, cpu), "target": "x86_64"})
    return out


@command("query-kvm")
def query_kvm(mon: QmpMonitor) -> dict[str, bool]:
    accel = mon.machine.accel
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        present = False
    else:
        os.close(fd)
        present = True
    return {"enabled": accel is not None and accel.accel_name() == "kvm", "present": present}


@command("query-machines", {"compat-props": ("boolean", False)})
def query_machines(mon: QmpMonitor, compat_props: bool = False) -> list[dict[str, Any]]:
    from ..machine import machine_classes

    out = []
    for cls in machine_classes():
        info: dict[str, Any] = {"name": cls.machine_name(), "cpu-max": cls.MAX_CPUS,
                                "hotpluggable-cpus": False, "numa-mem-supported": False,
                                "deprecated": False, "acpi": False}
        if cls.ALIAS:
            info["alias"] = cls.ALIAS
        if cls.IS_DEFAULT:
            info["is-default"] = True
        if cls.DEFAULT_CPU_TYPE:
            info["default-cpu-type"] = cls.DEFAULT_CPU_TYPE
        out.append(info)
    return out


# -- QOM -----------------------------------------------------------------------------------
@command("qom-list-types", {"implements": ("string", False), "abstract": ("boolean", False)})
def qom_list_types(mon: QmpMonitor, implements: str | None = None,
                   abstract: bool = False) -> list[dict[str, str]]:
    if implements is not None and TABLE.find(implements) is None:
        return []
    out = []
    for cls in TABLE.get_list_sorted(implements, abstract):
        entry = {"name": cls.TYPE}
        parent = cls.parent_type()
        if parent is not None:
            entry["parent"] = parent
        out.append(entry)
    return out


def _object(path: str) -> Object:
    obj = resolve_path(path)
    if obj is None:
        raise QmpError(f"Device '{path}' not found", "DeviceNotFound")
    return obj


@command("qom-list", {"path": ("string", True)})
def qom_list(mon: QmpMonitor, path: str) -> list[dict[str, str]]:
    return [{"name": name, "type": kind} for name, kind in _object(path).properties()]


@command("qom-get", {"path": ("string", True), "property": ("string", True)})
def qom_get(mon: QmpMonitor, path: str, property: str) -> Any:
    return _object(path).get_property_json(property)


@command("qom-set", {"path": ("string", True), "property": ("string", True),
                     "value": ("any", True)})
def qom_set(mon: QmpMonitor, path: str, property: str, value: Any) -> None:
    _object(path).set_property(property, value)


@command("device-list-properties", {"typename": ("string", True)})
def device_list_properties(mon: QmpMonitor, typename: str) -> list[dict[str, Any]]:
    from ..qdev import Device

    impl = TABLE.find(typename)
    if impl is None:
        raise QmpError(f"Device '{typename}' not found", "DeviceNotFound")
    cls = TABLE.initialize(impl)
    if not issubclass(cls, Device):
        raise QmpError("Parameter 'typename' expects device")
    if cls.is_abstract():
        raise QmpError("Parameter 'typename' expects a non-abstract device type")
    out = []
    for name, p in sorted(cls.class_properties().items()):
        entry: dict[str, Any] = {"name": name, "type": p.type_name}
        if p.description:
            entry["description"] = p.description
        if p.default is not None:
            try:
                entry["default-value"] = p.kind.to_json(p.default)
            except Exception:  # a default that has no JSON form is left out
                pass
        out.append(entry)
    return out


# -- the human monitor through QMP ----------------------------------------------------------
@command("human-monitor-command", {"command-line": ("string", True),
                                   "cpu-index": ("int", False)})
def human_monitor_command(mon: QmpMonitor, command_line: str,
                          cpu_index: int | None = None) -> str:
    from .hmp import HumanMonitor

    hmp = HumanMonitor(mon.machine, None)
    if cpu_index is not None:
        hmp.set_cpu(cpu_index)
    return hmp.run_command(command_line)
