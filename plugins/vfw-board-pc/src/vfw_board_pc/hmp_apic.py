"""``info lapic [cpu]`` for the human monitor (QEMU's x86 command): the software local APIC's
registers and timer, to see why a vCPU is (not) getting its interrupts."""

from __future__ import annotations

from typing import Any

from vfw.monitor.hmp import HmpError, HumanMonitor, info_command

_LVT_NAMES = ("LVTT", "LVTTHMR", "LVTPC", "LVT0", "LVT1", "LVTERR")
_DM_NAMES = {0: "Fixed", 1: "LowPrio", 2: "SMI", 4: "NMI", 5: "INIT", 6: "SIPI", 7: "ExtINT"}


def _vectors(bits: int) -> str:
    return " ".join(str(v) for v in range(256) if bits >> v & 1) or "(none)"


def format_lapic(apic: Any) -> str:
    """The state of one software ``apic`` device, in the spirit of QEMU's ``info lapic``."""
    from .apic import LVT_MASKED, LVT_TIMER_PERIODIC

    lines = [f"dumping local APIC state for CPU {apic.cpu.cpu_index if apic.cpu else '?'}", ""]
    for name, lvt in zip(_LVT_NAMES, apic.lvt, strict=True):
        mode = "periodic" if name == "LVTT" and lvt & LVT_TIMER_PERIODIC else ""
        dm = "Fixed" if name in ("LVTT", "LVTERR") else _DM_NAMES.get(lvt >> 8 & 7, "?")
        lines.append(f"{name:<8} 0x{lvt:08x} {'masked' if lvt & LVT_MASKED else 'active':<7}"
                     f" {mode:<9}{dm} (vec {lvt & 0xFF})")
    timer = apic._timer
    armed = "not armed"
    if timer is not None and timer.pending:
        armed = f"fires in {(timer.expire_ns - apic.clock.now_ns()) / 1e6:.3f} ms"
    lines.append(f"Timer    DCR=0x{apic.tdcr:x} initial_count = {apic.initial_count}"
                 f" current_count = {apic.current_count()} ({armed})")
    lines.append(f"SPIV     0x{apic.svr:08x} APIC {'enabled' if apic.sw_enabled() else 'disabled'}")
    lines.append(f"ICR      0x{apic.icr_lo:08x} ICR2 0x{apic.icr_hi:08x}")
    lines.append(f"ESR      0x{apic.esr:08x}")
    lines.append(f"ISR      {_vectors(apic.isr)}")
    lines.append(f"IRR      {_vectors(apic.irr)}")
    lines.append(f"TMR      {_vectors(apic.tmr)}")
    lines.append("")
    lines.append(f"APR 0x{apic.apr():02x} TPR 0x{apic.tpr:02x} DFR 0x{apic.dfr:02x}"
                 f" LDR 0x{apic.ldr:02x} PPR 0x{apic.ppr():02x}")
    return "\n".join(lines)


@info_command("lapic", "show local apic state ([cpu]: default the current CPU)")
def _info_lapic(mon: HumanMonitor, args: list[str]) -> str:
    from .apic import APIC

    cpus = list(mon.machine.cpus)
    if args:
        try:
            index = int(args[0], 0)
        except ValueError:
            raise HmpError(f"invalid CPU index '{args[0]}'") from None
        cpus = [c for c in cpus if int(c.cpu_index) == index]
        if not cpus:
            raise HmpError(f"CPU {index} does not exist")
    else:
        cpus = [mon.cpu()]
    apic = getattr(cpus[0], "interrupt_controller", None)
    if not isinstance(apic, APIC):
        raise HmpError("local APIC state not available (the accelerator's in-kernel irqchip"
                       " holds it)")
    return format_lapic(apic)
