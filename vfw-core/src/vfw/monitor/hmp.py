"""The human monitor (QEMU's HMP): ``-monitor stdio``, ``-monitor unix:...``, and QMP's
human-monitor-command.

Commands print what QEMU's do, in QEMU's layout where tools parse it (``info registers``,
``x``/``xp``, ``info mtree``). Guest memory is read through the machine's address space;
virtual addresses are translated by walking the guest's page tables from CR3 (non-paged,
2-level, PAE and 4/5-level), the way QEMU's ``x`` does it.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import GuestMemoryError, VfwError
from ..runstate import RunState, ShutdownCause
from ..timer import CLOCK_REALTIME, Timer

if TYPE_CHECKING:
    from ..chardev import Chardev
    from ..machine import Machine
    from ..memory import MemoryRegion

log = logging.getLogger("vfw.monitor")

PROMPT = "(qemu) "
MAX_LINE = 4096


class HmpError(VfwError):
    pass


# -- guest memory -------------------------------------------------------------------------
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
_PHYS_MASK = 0x000FFFFFFFFFF000


def _read_phys(machine: Any, addr: int, size: int) -> int:
    data = machine.address_space_memory.read_bytes(addr, size)
    return int.from_bytes(data, "little")


def translate(machine: Any, env: Any, vaddr: int) -> int | None:
    """The guest-physical address of linear ``vaddr`` under ``env``'s paging mode (QEMU's
    cpu_get_phys_page_debug); None when not mapped."""
    cr0, cr3, cr4 = env.cr[0], env.cr[3], env.cr[4]
    if not cr0 & CR0_PG:
        return int(vaddr) & 0xFFFFFFFFFFFFFFFF
    try:
        if env.efer & EFER_LMA:
            levels = 5 if cr4 & CR4_LA57 else 4
            table = cr3 & _PHYS_MASK
            for level in range(levels, 0, -1):
                shift = 12 + 9 * (level - 1)
                entry = _read_phys(machine, table + ((vaddr >> shift) & 0x1FF) * 8, 8)
                if not entry & 1:
                    return None
                if level in (2, 3) and entry & 0x80:  # 2 MiB / 1 GiB page
                    base = entry & _PHYS_MASK & ~((1 << shift) - 1)
                    return base | (vaddr & ((1 << shift) - 1))
                table = entry & _PHYS_MASK
            return int(table | (vaddr & 0xFFF))
        vaddr &= 0xFFFFFFFF
        if cr4 & CR4_PAE:
            pdpte = _read_phys(machine, (cr3 & 0xFFFFFFE0) + (vaddr >> 30) * 8, 8)
            if not pdpte & 1:
                return None
            pde = _read_phys(machine, (pdpte & _PHYS_MASK) + ((vaddr >> 21) & 0x1FF) * 8, 8)
            if not pde & 1:
                return None
            if pde & 0x80:
                return (pde & _PHYS_MASK & ~0x1FFFFF) | (vaddr & 0x1FFFFF)
            pte = _read_phys(machine, (pde & _PHYS_MASK) + ((vaddr >> 12) & 0x1FF) * 8, 8)
            return (pte & _PHYS_MASK) | (vaddr & 0xFFF) if pte & 1 else None
        pde = _read_phys(machine, (cr3 & 0xFFFFF000) + (vaddr >> 22) * 4, 4)
        if not pde & 1:
            return None
        if pde & 0x80 and cr4 & CR4_PSE:
            high = ((pde >> 13) & 0xFF) << 32
            return high | (pde & 0xFFC00000) | (vaddr & 0x3FFFFF)
        pte = _read_phys(machine, (pde & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4, 4)
        return (pte & 0xFFFFF000) | (vaddr & 0xFFF) if pte & 1 else None
    except GuestMemoryError:
        return None


def read_virtual(machine: Any, env: Any, vaddr: int, length: int) -> bytes:
    """``length`` bytes at linear ``vaddr``; GuestMemoryError where unmapped."""
    out = bytearray()
    while length > 0:
        n = min(length, 0x1000 - (vaddr & 0xFFF))
        phys = translate(machine, env, vaddr)
        if phys is None:
            raise GuestMemoryError(f"Cannot access memory at 0x{vaddr:x}")
        out += machine.address_space_memory.read_bytes(phys, n)
        vaddr, length = vaddr + n, length - n
    return bytes(out)


def write_virtual(machine: Any, env: Any, vaddr: int, data: bytes) -> None:
    """Write ``data`` at linear ``vaddr``; GuestMemoryError where unmapped."""
    pos = 0
    while pos < len(data):
        n = min(len(data) - pos, 0x1000 - ((vaddr + pos) & 0xFFF))
        phys = translate(machine, env, vaddr + pos)
        if phys is None:
            raise GuestMemoryError(f"Cannot access memory at 0x{vaddr + pos:x}")
        machine.address_space_memory.write_bytes(phys, data[pos:pos + n])
        pos += n


# -- register dump (QEMU's x86_cpu_dump_state) ----------------------------------------------
_FLAG_CHARS = ((11, "O"), (10, "D"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))
_SEG_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")
_SYS_TYPES = (
    ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16",
     "TrapGate16", "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32", "Reserved",
     "IntGate32", "TrapGate32"),
    ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved",
     "Reserved", "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64", "Reserved", "IntGate64",
     "TrapGate64"),
)


def _seg_line(name: str, seg: Any, wide: bool, pe: bool, lma: bool) -> str:
    base = f"{seg.base:016x}" if wide else f"{seg.base & 0xFFFFFFFF:08x}"
    line = f"{name:<3}={seg.selector:04x} {base} {seg.limit & 0xFFFFFFFF:08x} {seg.flags:08x}"
    f = seg.flags
    if not pe or not f & (1 << 15):
        return line
    line += f" DPL={(f >> 13) & 3} "
    if f & (1 << 12):
        if f & (1 << 11):
            line += "CS64" if f & (1 << 21) else ("CS32" if f & (1 << 22) else "CS16")
            line += f" [{'C' if f & (1 << 10) else '-'}{'R' if f & (1 << 9) else '-'}"
        else:
            line += "DS  " if f & (1 << 22) or lma else "DS16"
            line += f" [{'E' if f & (1 << 10) else '-'}{'W' if f & (1 << 9) else '-'}"
        line += f"{'A' if f & (1 << 8) else '-'}]"
    else:
        line += _SYS_TYPES[1 if lma else 0][(f >> 8) & 0xF]
    return line


def format_registers(env: Any) -> str:
    """``info registers`` for one x86 CPU, as QEMU prints it (with the FPU part)."""
    regs = env.regs
    pe = bool(env.cr[0] & 1)
    lma = bool(env.efer & EFER_LMA)
    cs_flags = env.segs[1].flags
    wide = lma and bool(cs_flags & (1 << 21))
    cpl = (env.segs[2].flags >> 13 & 3) if pe else 0
    if pe and env.eflags & (1 << 17):
        cpl = 3
    flags = "[" + "".join(c if env.eflags >> b & 1 else "-" for b, c in _FLAG_CHARS) + "]"
    tail = (f"CPL={cpl} II={int(bool(getattr(env, 'interrupt_shadow', False)))} A20=1 SMM=0 "
            f"HLT={int(bool(getattr(env, 'halted', False)))}")
    lines = []
    if wide:
        names = (("RAX", 0), ("RBX", 3), ("RCX", 1), ("RDX", 2), ("RSI", 6), ("RDI", 7),
                 ("RBP", 5), ("RSP", 4), ("R8 ", 8), ("R9 ", 9), ("R10", 10), ("R11", 11),
                 ("R12", 12), ("R13", 13), ("R14", 14), ("R15", 15))
        for row in range(4):
            lines.append(" ".join(f"{n}={regs[i]:016x}" for n, i in names[row * 4:row * 4 + 4]))
        lines.append(f"RIP={env.rip:016x} RFL={env.eflags:08x} {flags} {tail}")
    else:
        names32 = (("EAX", 0), ("EBX", 3), ("ECX", 1), ("EDX", 2), ("ESI", 6), ("EDI", 7),
                   ("EBP", 5), ("ESP", 4))
        for row in range(2):
            lines.append(" ".join(f"{n}={regs[i] & 0xFFFFFFFF:08x}"
                                  for n, i in names32[row * 4:row * 4 + 4]))
        lines.append(f"EIP={env.rip & 0xFFFFFFFF:08x} EFL={env.eflags:08x} {flags} {tail}")
    for i, name in enumerate(_SEG_NAMES):
        lines.append(_seg_line(name, env.segs[i], wide, pe, lma))
    lines.append(_seg_line("LDT", env.ldt, wide, pe, lma))
    lines.append(_seg_line("TR", env.tr, wide, pe, lma))
    w = 16 if wide else 8
    mask = (1 << (4 * w)) - 1
    lines.append(f"GDT=     {env.gdt.base & mask:0{w}x} {env.gdt.limit:08x}")
    lines.append(f"IDT=     {env.idt.base & mask:0{w}x} {env.idt.limit:08x}")
    lines.append(f"CR0={env.cr[0] & 0xFFFFFFFF:08x} CR2={env.cr[2] & mask:0{w}x} "
                 f"CR3={env.cr[3] & mask:0{w}x} CR4={env.cr[4] & 0xFFFFFFFF:08x}")
    dr = list(getattr(env, "dr", [0] * 8))
    lines.append("".join(f"DR{i}={dr[i] & mask:0{w}x} " for i in range(4)))
    lines.append(f"DR6={dr[6] & mask:0{w}x} DR7={dr[7] & mask:0{w}x}")
    lines.append(f"EFER={env.efer:016x}")
    fsw = getattr(env, "fsw", 0)
    lines.append(f"FCW={getattr(env, 'fcw', 0x37F):04x} FSW={fsw:04x} [ST={(fsw >> 11) & 7}] "
                 f"FTW={getattr(env, 'ftw', 0):02x} MXCSR={getattr(env, 'mxcsr', 0x1F80):08x}")
    st = list(getattr(env, "st", [0] * 8))
    for i in range(0, 8, 2):
        lines.append(" ".join(f"FPR{j}={st[j] & (2**64 - 1):016x} {st[j] >> 64 & 0xFFFF:04x}"
                              for j in (i, i + 1)))
    xmm = list(getattr(env, "xmm", [0] * 16))
    count = 16 if wide else 8
    for i in range(0, count, 2):
        lines.append(" ".join(
            f"XMM{j:02d}=" + "".join(f"{xmm[j] >> s & 0xFFFFFFFF:08x}" for s in (96, 64, 32, 0))
            for j in (i, i + 1)))
    return "\n".join(lines) + "\n"


# -- memory tree (QEMU's info mtree) ---------------------------------------------------------
def _kind(mr: MemoryRegion) -> str:
    from ..memory import RegionKind

    if mr.kind is RegionKind.ALIAS and mr.alias_target is not None:
        return _kind(mr.alias_target)
    if mr.kind is RegionKind.RAM:
        return "ram" if not mr.readonly else "rom"
    if mr.kind is RegionKind.ROM:
        return "rom"
    return "i/o"


def mtree_lines(mr: MemoryRegion, base: int, depth: int, out: list[str]) -> None:
    from ..memory import RegionKind

    start = base + (mr.address if depth else 0)
    end = start + mr.size - 1 if mr.size else start
    text = (f"{'  ' * (depth + 1)}{start:016x}-{end:016x} (prio {mr.priority}, {_kind(mr)}"
            f"{', readonly' if mr.readonly and mr.kind is not RegionKind.ROM else ''}): "
            f"{mr.name}")
    if mr.kind is RegionKind.ALIAS and mr.alias_target is not None:
        off = mr.alias_offset
        text += (f" alias {mr.name} @{mr.alias_target.name} {off:016x}-"
                 f"{off + mr.size - 1:016x}")
        text = text.replace(f": {mr.name} alias {mr.name}", f": alias {mr.name}")
    if not mr.enabled:
        text += " [disabled]"
    out.append(text)
    for sub in mr.subregions:
        mtree_lines(sub, start, depth + 1, out)


# -- the monitor ----------------------------------------------------------------------------
Handler = Callable[["HumanMonitor", list[str]], str]
_COMMANDS: dict[str, tuple[Handler, str, str]] = {}
_INFO: dict[str, tuple[Callable[[HumanMonitor, list[str]], str], str]] = {}


def hmp_command(name: str, args: str, help_text: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (fn, args, help_text)
        return fn
    return register


def info_command(name: str, help_text: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _INFO[name] = (fn, help_text)
        return fn
    return register


class HumanMonitor:
    """One human monitor: a line-oriented session on a chardev (or none, for
    human-monitor-command, where each command's output is returned as a string)."""

    def __init__(self, machine: Machine, chardev: Chardev | None, echo: bool = False):
        from .. import __version__

        self.machine = machine
        self.chardev = chardev
        self.echo = echo
        self.cpu_index = 0
        self._line = bytearray()
        self._last_cr = False
        self._pending = bytearray()
        self._retry = Timer(CLOCK_REALTIME, self._drain)
        self.version = __version__
        if chardev is not None:
            from .qmp import _watch_connection

            chardev.set_frontend(lambda: MAX_LINE, self._receive)
            _watch_connection(chardev, self._on_open, self._on_close)

    def _on_open(self) -> None:
        """A client connected (or the chardev opened): the banner and a prompt."""
        self._line.clear()
        self._write(f"QEMU {self.version} monitor (vfw) - type 'help' for more "
                    f"information\n{PROMPT}")

    def _on_close(self) -> None:
        self._line.clear()
        self._pending.clear()

    def close(self) -> None:
        self._retry.delete()
        if self.chardev is not None:
            self.chardev.clear_frontend(self._receive)

    def _write(self, text: str) -> None:
        if self.chardev is not None:
            self.chardev.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    def _receive(self, data: bytes) -> None:
        self._pending += data
        self._drain()

    def _drain(self) -> None:
        """Handle pending input; after a command that posted a run-state request, wait until
        the run loop took it, so the next command sees its effect (QEMU stops synchronously)."""
        from .qmp import GATE_RETRY_NS

        while self._pending:
            if self.machine.request_event.is_set():
                self._retry.mod_in(GATE_RETRY_NS)
                return
            end = next((i for i, b in enumerate(self._pending) if b in (0x0D, 0x0A)), -1)
            if end < 0:
                chunk = bytes(self._pending)
                self._pending.clear()
            else:
                chunk = bytes(self._pending[:end + 1])
                del self._pending[:end + 1]
            self._take(chunk)

    def _take(self, data: bytes) -> None:
        for byte in data:
            if byte in (0x0D, 0x0A):
                if byte == 0x0A and self._last_cr:
                    self._last_cr = False
                    continue
                self._last_cr = byte == 0x0D
                line = self._line.decode("utf-8", "replace")
                self._line.clear()
                if self.echo:
                    self._write("\n")
                output = self.run_command(line)
                self._write(output)
                if self.machine.runstate is not RunState.SHUTDOWN:
                    self._write(PROMPT)
                continue
            self._last_cr = False
            if byte in (0x08, 0x7F):
                if self._line:
                    self._line.pop()
                    if self.echo:
                        self._write("\b \b")
            elif byte >= 0x20 and len(self._line) < MAX_LINE:
                self._line.append(byte)
                if self.echo:
                    self._write(chr(byte))

    def set_cpu(self, index: int) -> None:
        if not 0 <= index < len(self.machine.cpus):
            raise HmpError("invalid CPU index")
        self.cpu_index = index

    def cpu(self) -> Any:
        if not self.machine.cpus:
            raise HmpError("No CPU available")
        cpu = self.machine.cpus[min(self.cpu_index, len(self.machine.cpus) - 1)]
        if self.machine.accel is not None:
            self.machine.accel.synchronize_state(cpu)
        return cpu

    def run_command(self, line: str) -> str:
        """Execute one command line; its output (ending in a newline if non-empty)."""
        line = line.strip()
        if not line:
            return ""
        name, _, rest = line.partition(" ")
        fmt = ""
        if "/" in name:
            name, _, fmt = name.partition("/")
        entry = _COMMANDS.get(name)
        if entry is None:
            return f"unknown command: '{name}'\n"
        try:
            args = shlex.split(rest) if name != "x" and name != "xp" else [rest.strip()]
            if fmt:
                args.insert(0, "/" + fmt)
            out = entry[0](self, args)
        except (HmpError, VfwError, ValueError) as exc:
            return f"Error: {exc}\n" if not str(exc).startswith(("Cannot", "invalid")) \
                else f"{exc}\n"
        except Exception as exc:  # a bug must not take the monitor down
            log.exception("HMP command failed")
            return f"Error: {type(exc).__name__}: {exc}\n"
        return out if not out or out.endswith("\n") else out + "\n"


# -- commands -------------------------------------------------------------------------------
@hmp_command("help", "[cmd]", "show the help")
def _help(mon: HumanMonitor, args: list[str]) -> str:
    if args and args[0] == "info":
        return _info_help()
    lines = []
    for name, (_, params, text) in sorted(_COMMANDS.items()):
        if args and name != args[0]:
            continue
        lines.append(f"{name} {params} -- {text}".replace("  --", " --"))
    return "\n".join(lines) + "\n"


_COMMANDS["?"] = _COMMANDS["help"]


def _info_help() -> str:
    return "\n".join(f"info {name} -- {text}" for name, (_, text) in sorted(_INFO.items())) + "\n"


@hmp_command("info", "[subcommand]", "show various information about the system state")
def _info(mon: HumanMonitor, args: list[str]) -> str:
    if not args:
        return _info_help()
    entry = _INFO.get(args[0])
    if entry is None:
        return _info_help()
    return entry[0](mon, args[1:])


@hmp_command("stop", "", "stop emulation")
def _stop(mon: HumanMonitor, args: list[str]) -> str:
    if mon.machine.runstate is RunState.RUNNING:
        mon.machine.request_stop()
    return ""


@hmp_command("cont", "", "resume emulation")
def _cont(mon: HumanMonitor, args: list[str]) -> str:
    if mon.machine.runstate in (RunState.PAUSED, RunState.PRELAUNCH):
        mon.machine.request_cont()
    return ""


_COMMANDS["c"] = _COMMANDS["cont"]


@hmp_command("system_reset", "", "reset the system")
def _system_reset(mon: HumanMonitor, args: list[str]) -> str:
    mon.machine.request_reset(ShutdownCause.HOST_QMP_SYSTEM_RESET)
    return ""


@hmp_command("system_powerdown", "", "send system power down event")
def _system_powerdown(mon: HumanMonitor, args: list[str]) -> str:
    mon.machine.powerdown()
    return ""


@hmp_command("quit", "", "quit the emulator")
def _quit(mon: HumanMonitor, args: list[str]) -> str:
    mon.machine.request_shutdown(ShutdownCause.HOST_QMP_QUIT)
    return ""


_COMMANDS["q"] = _COMMANDS["quit"]


@hmp_command("cpu", "index", "set the default CPU")
def _cpu(mon: HumanMonitor, args: list[str]) -> str:
    if not args:
        raise HmpError("missing CPU index")
    mon.set_cpu(int(args[0], 0))
    return ""


@info_command("status", "show the current VM status (running|paused)")
def _info_status(mon: HumanMonitor, args: list[str]) -> str:
    state = mon.machine.runstate
    if state is RunState.RUNNING:
        return "VM status: running\n"
    if state is RunState.PAUSED:
        return "VM status: paused\n"
    return f"VM status: paused ({state.value})\n"


@info_command("registers", "show the cpu registers (-a: all CPUs)")
def _info_registers(mon: HumanMonitor, args: list[str]) -> str:
    cpus: list[Any] = list(mon.machine.cpus)
    if not cpus:
        raise HmpError("No CPU available")
    if "-a" in args:
        out = []
        for cpu in cpus:
            if mon.machine.accel is not None:
                mon.machine.accel.synchronize_state(cpu)
            out.append(f"\nCPU#{int(cpu.cpu_index)}\n" + format_registers(cpu.env))
        return "".join(out)
    return format_registers(mon.cpu().env)


@info_command("cpus", "show infos for each CPU")
def _info_cpus(mon: HumanMonitor, args: list[str]) -> str:
    from .commands import _thread_id

    lines = []
    cpu: Any
    for cpu in mon.machine.cpus:
        if mon.machine.accel is not None:
            mon.machine.accel.synchronize_state(cpu)
        mark = "*" if int(cpu.cpu_index) == mon.cpu_index else " "
        lines.append(f"{mark} CPU #{int(cpu.cpu_index)}: pc=0x{cpu.env.rip:016x}"
                     f"{' (halted)' if cpu.env.halted else ''}"
                     f" thread_id={_thread_id(mon.machine.accel, cpu)}")
    return "\n".join(lines) + "\n"


@info_command("mtree", "show memory tree")
def _info_mtree(mon: HumanMonitor, args: list[str]) -> str:
    out: list[str] = []
    for space in (mon.machine.address_space_memory, mon.machine.address_space_io):
        out.append(f"address-space: {space.name}")
        mtree_lines(space.root, 0, 0, out)
        out.append("")
    return "\n".join(out) + "\n"


@info_command("qtree", "show device tree")
def _info_qtree(mon: HumanMonitor, args: list[str]) -> str:
    from ..qdev import Bus, Device

    out: list[str] = []
    printed: set[int] = set()

    def dev_lines(dev: Device, indent: int) -> None:
        if id(dev) in printed:  # a host bridge sits on the bus it owns
            return
        printed.add(id(dev))
        pad = " " * indent
        out.append(f"{pad}dev: {dev.type_name}, id \"{dev.id or ''}\"")
        for p in sorted(type(dev).class_properties().values(), key=lambda p: p.name):
            try:
                value = p.kind.format(p.get(dev))
            except Exception:
                continue
            out.append(f"{pad}  {p.name} = {value}")
        for bus in dev.child_buses():
            bus_lines(bus, indent + 2)

    def bus_lines(bus: Bus, indent: int) -> None:
        if id(bus) in printed:
            return
        printed.add(id(bus))
        pad = " " * indent
        out.append(f"{pad}bus: {bus.bus_name or bus.type_name}")
        out.append(f"{pad}  type {bus.KIND or bus.type_name}")
        for dev in bus.devices:
            dev_lines(dev, indent + 2)

    out.append("bus: main-system-bus")
    out.append("  type System")
    objects = list(mon.machine.walk())
    for dev in objects:
        if isinstance(dev, Device) and dev.parent_bus is None:
            dev_lines(dev, 2)
    for bus in objects:  # buses no listed device owns (a host bridge that is no Device)
        if isinstance(bus, Bus) and id(bus) not in printed:
            bus_lines(bus, 2)
    return "\n".join(out) + "\n"


@info_command("pci", "show PCI info")
def _info_pci(mon: HumanMonitor, args: list[str]) -> str:
    devs = [o for o in mon.machine.walk() if o.implements("pci-device")]
    lines: list[str] = []
    for dev in sorted(devs, key=lambda d: (getattr(d, "slot", 0), getattr(d, "function", 0))):
        bus_num = getattr(dev, "bus_number", 0)
        info = getattr(dev, "info_lines", None)
        if info is not None:
            lines += info(bus_num if isinstance(bus_num, int) else 0)
    return "\n".join(lines) + "\n" if lines else ""


@info_command("version", "show the version of QEMU")
def _info_version(mon: HumanMonitor, args: list[str]) -> str:
    from .. import __version__

    return f"{__version__} (vfw)\n"


@info_command("kvm", "show KVM information")
def _info_kvm(mon: HumanMonitor, args: list[str]) -> str:
    accel = mon.machine.accel
    on = accel is not None and accel.accel_name() == "kvm"
    return f"kvm support: {'enabled' if on else 'disabled'}\n"


# -- x / xp ---------------------------------------------------------------------------------
_FMT_RE = re.compile(r"^/(\d*)([xduocia]?)([bhwg]?)([xduocia]?)$")
_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
_REG_NAMES = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7,
              "rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsp": 4, "rbp": 5, "rsi": 6, "rdi": 7}


def _parse_address(mon: HumanMonitor, text: str) -> int:
    """A number, ``$reg`` (``$pc``/``$eip``/``$rip``/GPRs) or a sum of them."""
    total = 0
    for term in re.split(r"\s*\+\s*", text.strip()):
        if term.startswith("$"):
            name = term[1:].lower()
            env = mon.cpu().env
            if name in ("pc", "eip", "rip"):
                cs = env.segs[1]
                code64 = env.efer & EFER_LMA and cs.flags & (1 << 21)
                total += env.rip if code64 else cs.base + env.rip
            elif name in _REG_NAMES:
                total += env.regs[_REG_NAMES[name]]
            elif re.fullmatch(r"r\d+", name) and int(name[1:]) < 16:
                total += env.regs[int(name[1:])]
            else:
                raise HmpError(f"unknown register '{term}'")
        else:
            total += int(term, 0)
    return total & 0xFFFFFFFFFFFFFFFF


def _memory_dump(mon: HumanMonitor, args: list[str], physical: bool) -> str:
    fmt_text = args[0] if args and args[0].startswith("/") else "/"
    rest = args[1:] if args and args[0].startswith("/") else args
    text = " ".join(rest).strip()
    m = _FMT_RE.match(fmt_text)
    if m is None:
        raise HmpError(f"invalid format '{fmt_text}'")
    count = int(m.group(1) or 1)
    fmt = m.group(2) or m.group(4) or "x"
    size = _SIZES.get(m.group(3), 4 if fmt != "c" else 1)
    if not text:
        raise HmpError("address expected")
    addr = _parse_address(mon, text)
    env = mon.cpu().env

    def read(a: int, n: int) -> bytes:
        if physical:
            return mon.machine.address_space_memory.read_bytes(a, n)
        return read_virtual(mon.machine, env, a, n)

    if fmt == "i":
        return _disassemble(mon, env, addr, count, read)
    lines = []
    per_line = 16 // size if fmt != "c" else 16
    digits = {"x": size * 2, "o": (size * 8 + 2) // 3, "d": (size * 8 * 10 + 32) // 33,
              "u": (size * 8 * 10 + 32) // 33, "c": 1, "a": size * 2}.get(fmt, size * 2)
    done = 0
    while done < count:
        n = min(per_line, count - done)
        here = addr + done * size
        try:
            data = read(here, n * size)
        except GuestMemoryError:
            lines.append(f"{here:016x}: Cannot access memory")
            break
        parts = []
        for i in range(n):
            v = int.from_bytes(data[i * size:(i + 1) * size], "little")
            if fmt in ("x", "a"):
                parts.append(f"0x{v:0{digits}x}")
            elif fmt == "o":
                parts.append(f"0{v:0{digits}o}")
            elif fmt == "u":
                parts.append(f"{v:{digits}d}")
            elif fmt == "d":
                if v >> (size * 8 - 1):
                    v -= 1 << (size * 8)
                parts.append(f"{v:{digits}d}")
            elif fmt == "c":
                parts.append(chr(v) if 0x20 <= v < 0x7F else f"\\x{v:02x}")
        sep = "" if fmt == "c" else " "
        lines.append(f"{here:016x}:" + (" " if fmt == "c" else sep) + sep.join(parts))
        done += n
    return "\n".join(lines) + "\n"


def _disassemble(mon: HumanMonitor, env: Any, addr: int, count: int,
                 read: Callable[[int, int], bytes]) -> str:
    try:
        import capstone
    except ImportError:
        raise HmpError("x/i needs capstone (pip install capstone)") from None
    cs = env.segs[1]
    if env.efer & EFER_LMA and cs.flags & (1 << 21):
        mode = capstone.CS_MODE_64
    elif env.cr[0] & 1 and cs.flags & (1 << 22):
        mode = capstone.CS_MODE_32
    else:
        mode = capstone.CS_MODE_16
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT
    lines = []
    pc = addr
    for _ in range(count):
        code = b""
        for n in (16, 8, 4, 2, 1):
            try:
                code = read(pc, n)
                break
            except GuestMemoryError:
                continue
        if not code:
            lines.append(f"0x{pc:016x}:  Cannot access memory")
            break
        insn = next(md.disasm(code, pc, 1), None)
        if insn is None:
            lines.append(f"0x{pc:016x}:  .byte 0x{code[0]:02x}")
            pc += 1
            continue
        lines.append(f"0x{pc:016x}:  {insn.mnemonic} {insn.op_str}".rstrip())
        pc += insn.size
    return "\n".join(lines) + "\n"


@hmp_command("x", "/fmt addr", "virtual memory dump starting at 'addr'")
def _x(mon: HumanMonitor, args: list[str]) -> str:
    return _memory_dump(mon, _split_fmt(args), physical=False)


@hmp_command("xp", "/fmt addr", "physical memory dump starting at 'addr'")
def _xp(mon: HumanMonitor, args: list[str]) -> str:
    return _memory_dump(mon, _split_fmt(args), physical=True)


def _split_fmt(args: list[str]) -> list[str]:
    """``x`` takes ``/fmt addr`` as one string; split off the format."""
    text = " ".join(args).strip()
    if text.startswith("/"):
        fmt, _, rest = text.partition(" ")
        return [fmt, rest]
    return [text]
