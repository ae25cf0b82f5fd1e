"""Local APICs (``apic``, xAPIC version 0x14 with six LVT entries) and the APIC bus.

Each vCPU has a local APIC: it accepts fixed interrupts into IRR, hands the highest one whose
priority class beats the processor priority (TPR / in-service) to the CPU on INTA, and
broadcasts the EOI of level-triggered vectors to the I/O APICs. It also sends IPIs (ICR), runs
the local timer from ``CLOCK_VIRTUAL`` (the current count is computed from elapsed time at a
1 GHz bus clock divided per TDCR), and passes the i8259's INT through LINT0 when it is in
ExtINT mode, when the APIC is globally disabled (APIC base MSR bit 11), and on the BSP before
software enables the APIC (virtual-wire mode, as firmware and early boot expect).

The CPU side follows the board's CPU contract: ``cpu.interrupt_controller`` is the local APIC
(``has_interrupt()``, ``acknowledge()``), deliverable interrupts call ``cpu.kick()``, NMIs set
``env.nmi_pending``, INIT sets ``env.mp_state = MP_STATE_INIT_RECEIVED`` and a SIPI in the
wait-for-SIPI state sets ``env.sipi_vector`` and ``MP_STATE_SIPI_RECEIVED``.

:class:`APICBus` connects the local APICs with each other, the I/O APICs, MSIs and the i8259,
and owns the one MMIO region at 0xfee00000 that dispatches to the accessing CPU's APIC. APIC
base relocation, x2APIC and TSC-deadline mode are not modelled.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from vfw.cpu import current_cpu
from vfw.irq import IRQ, allocate_irqs
from vfw.memory import MemoryRegion
from vfw.qdev import Device
from vfw.qom import register_type
from vfw.timer import CLOCK_VIRTUAL, Clock, Timer

from .cpu_state import (
    APIC_DEFAULT_ADDRESS,
    MP_STATE_INIT_RECEIVED,
    MP_STATE_SIPI_RECEIVED,
    MP_STATE_UNINITIALIZED,
    MSR_IA32_APICBASE_BSP,
    MSR_IA32_APICBASE_ENABLE,
)

__all__ = ["APIC", "APICBus", "APIC_VERSION"]

guest_log = logging.getLogger("vfw.guest_errors")

APIC_VERSION = 0x50014  # version 0x14 (integrated xAPIC), max LVT entry 5

# Register indexes (MMIO offset >> 4).
R_ID, R_VERSION, R_TPR, R_APR, R_PPR, R_EOI, R_RRD, R_LDR, R_DFR, R_SVR = (
    0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)
R_ISR, R_TMR, R_IRR, R_ESR = 0x10, 0x18, 0x20, 0x28
R_ICR_LO, R_ICR_HI = 0x30, 0x31
R_LVT = 0x32  # LVT timer .. LVT error: 0x32..0x37
R_TMICT, R_TMCCT, R_TDCR = 0x38, 0x39, 0x3E

LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)
NUM_LVT = 6

LVT_MASKED = 1 << 16
LVT_LEVEL_TRIGGER = 1 << 15
LVT_TIMER_PERIODIC = 1 << 17
#: Writable bits per LVT entry (delivery status and remote IRR are read-only; no TSC deadline).
LVT_WRITABLE = (0x300FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF)

SVR_ENABLE = 1 << 8
SVR_WRITABLE = 0x3FF  # vector, software enable, focus checking (no EOI-broadcast suppression)

# Delivery modes.
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

# ESR bits.
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

#: Timer input clock before the divider: 1 GHz, i.e. one tick per nanosecond (as QEMU).
TIMER_NS_PER_TICK = 1

_U32 = 0xFFFFFFFF


class CPULike(Protocol):
    """What a local APIC needs from its CPU (vfw_board_pc.cpu.X86CPU, or a test double)."""

    env: Any
    apic_id: int

    def kick(self) -> None: ...


class PICLike(Protocol):
    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


class IOAPICLike(Protocol):
    def eoi(self, vector: int) -> None: ...


def _highest(bits: int) -> int:
    return bits.bit_length() - 1


@register_type
class APIC(Device):
    """One CPU's local APIC; create them with :meth:`APICBus.add_cpu`."""

    TYPE = "apic"
    DESC = "local APIC"
    USER_CREATABLE = False

    def instance_init(self) -> None:
        self.cpu: CPULike | None = None
        self.bus: APICBus | None = None
        #: The i8259 pair behind LINT0 (ExtINT / virtual wire), or None.
        self.pic: PICLike | None = None
        self.apic_id = 0
        self._timer: Timer | None = None
        #: LINT0 and LINT1 input lines.
        self.lint: list[IRQ] = allocate_irqs(self._set_lint, 2, "apic-lint")
        self._lint_levels = [0, 0]
        self._base_enabled = True  # APIC base enable bit as last seen (to catch 1 -> 0)
        self._warned_relocation = False
        self._init_registers()

    @property
    def clock(self) -> Clock:
        return self.bus.clock if self.bus is not None else CLOCK_VIRTUAL

    # -- reset -------------------------------------------------------------------------------
    def _init_registers(self) -> None:
        """The state after INIT (everything but the APIC ID)."""
        self.tpr = 0
        self.svr = 0xFF
        self.isr = self.irr = self.tmr = 0
        self.ldr = 0
        self.dfr = 0xF
        self.esr = 0
        self._esr_pending = 0
        self.icr_lo = self.icr_hi = 0
        self.lvt = [LVT_MASKED] * NUM_LVT
        self.tdcr = 0
        self._timer_shift = 1  # divide by 2
        self.initial_count = 0
        self._load_time = 0
        self._extint_pending = False
        if self._timer is not None:
            self._timer.delete()

    def reset(self) -> None:
        """Power-on reset: ID from the CPU, and on the BSP LINT0 in ExtINT mode so the i8259
        reaches the CPU before software sets the APIC up (as QEMU does)."""
        self._init_registers()
        if self.cpu is not None:
            self.apic_id = self.cpu.apic_id & 0xFF
        self._base_enabled = self.hw_enabled()
        if self.is_bsp():
            self.lvt[LVT_LINT0] = DM_EXTINT << 8

    def init_reset(self) -> None:
        """An INIT: registers return to their power-on values except the APIC ID."""
        self._init_registers()

    def unrealize(self) -> None:
        if self._timer is not None:
            self._timer.delete()

    # -- state queries ---------------------------------------------------------------------
    def hw_enabled(self) -> bool:
        """APIC base MSR bit 11 (a globally disabled APIC is off the bus)."""
        cpu = self.cpu
        return cpu is None or bool(cpu.env.apic_base & MSR_IA32_APICBASE_ENABLE)

    def sw_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    def is_bsp(self) -> bool:
        cpu = self.cpu
        if cpu is None:
            return self.apic_id == 0
        bsp = getattr(cpu, "is_bsp", None)
        if callable(bsp):
            bsp = bsp()
        if bsp is None:
            index = getattr(cpu, "cpu_index", None)
            return (cpu.apic_id == 0) if index is None else index == 0
        return bool(bsp)

    def ppr(self) -> int:
        """Processor priority: the TPR or the class of the highest in-service vector."""
        isrv = max(_highest(self.isr), 0)
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr
        return isrv & 0xF0

    def apr(self) -> int:
        """Arbitration priority (for lowest-priority delivery)."""
        isrv = max(_highest(self.isr), 0)
        irrv = max(_highest(self.irr), 0)
        if (self.tpr >> 4) >= (irrv >> 4) and (self.tpr >> 4) > (isrv >> 4):
            return self.tpr
        return max(self.tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def _pending_vector(self) -> int:
        """The vector INTA would take from IRR, -1 if none, -2 if held back by PPR."""
        irrv = _highest(self.irr)
        if irrv < 0:
            return -1
        if (irrv & 0xF0) <= (self.ppr() & 0xF0):
            return -2
        return irrv

    def _apic_active(self) -> bool:
        return self.hw_enabled() and self.sw_enabled()

    def pic_accepted(self) -> bool:
        """Whether the i8259's INT reaches this CPU now (ExtINT / virtual wire)."""
        if not self.hw_enabled() or self._extint_pending:
            return True
        lint0 = self.lvt[LVT_LINT0]
        if not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DM_EXTINT:
            return True
        return not self.sw_enabled() and self.is_bsp()

    # -- the CPU's interrupt_controller contract ---------------------------------------------
    def has_interrupt(self) -> bool:
        pic = self.pic
        if pic is not None and self.pic_accepted() and pic.has_interrupt():
            return True
        return self._apic_active() and self._pending_vector() >= 0

    def acknowledge(self) -> int:
        """INTA: an ExtINT goes to the i8259 (it ignores priorities); otherwise the highest
        deliverable IRR vector moves to ISR; with nothing left, the spurious vector."""
        pic = self.pic
        if (pic is not None and self.pic_accepted()
                and (pic.has_interrupt() or not self._apic_active())):
            self._extint_pending = False
            return pic.acknowledge()
        if self._apic_active():
            vector = self._pending_vector()
            if vector >= 0:
                bit = 1 << vector
                self.irr &= ~bit
                self.isr |= bit
                return vector
        return self.svr & 0xFF

    def _update(self) -> None:
        if self.cpu is not None and self.has_interrupt():
            self.cpu.kick()

    # -- accepting interrupts ------------------------------------------------------------------
    def set_irq(self, vector: int, level_triggered: bool) -> None:
        """Accept a fixed interrupt into IRR (TMR records its trigger mode)."""
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        if level_triggered:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._update()

    def deliver(self, delivery_mode: int, vector: int, trigger_mode: int) -> None:
        """An interrupt message addressed to this APIC (from the bus, an IPI or an LVT)."""
        cpu = self.cpu
        if delivery_mode in (DM_FIXED, DM_LOWEST):
            self.set_irq(vector, bool(trigger_mode))
        elif delivery_mode == DM_NMI:
            if cpu is not None:
                cpu.env.nmi_pending = True
                cpu.kick()
        elif delivery_mode == DM_INIT:
            self.init_reset()
            if cpu is not None:
                cpu.env.mp_state = MP_STATE_INIT_RECEIVED
                cpu.kick()
        elif delivery_mode == DM_SIPI:
            if cpu is not None and cpu.env.mp_state in (MP_STATE_UNINITIALIZED,
                                                       MP_STATE_INIT_RECEIVED):
                cpu.env.sipi_vector = vector
                cpu.env.mp_state = MP_STATE_SIPI_RECEIVED
                cpu.kick()
        elif delivery_mode == DM_EXTINT:
            self._extint_pending = True
            self._update()
        else:
            guest_log.debug("apic %d: delivery mode %d (SMI or reserved) ignored",
                            self.apic_id, delivery_mode)

    def _local_deliver(self, index: int) -> None:
        """Raise the interrupt an LVT entry describes (timer, error, LINT, ...)."""
        lvt = self.lvt[index]
        if lvt & LVT_MASKED or not self.hw_enabled():
            return
        mode = (lvt >> 8) & 7 if index not in (LVT_TIMER, LVT_ERROR) else DM_FIXED
        if mode == DM_FIXED:
            level = index in (LVT_LINT0, LVT_LINT1) and bool(lvt & LVT_LEVEL_TRIGGER)
            self.set_irq(lvt & 0xFF, level)
        else:
            self.deliver(mode, lvt & 0xFF, 0)

    def _error(self, bits: int) -> None:
        self._esr_pending |= bits
        self._local_deliver(LVT_ERROR)

    def _set_lint(self, n: int, level: int) -> None:
        level = 1 if level else 0
        rising = level and not self._lint_levels[n]
        self._lint_levels[n] = level
        lvt = self.lvt[LVT_LINT0 + n]
        if n == 0 and self.pic_accepted():
            if level:
                self._update()
            return
        if lvt & LVT_MASKED:
            return
        mode = (lvt >> 8) & 7
        if mode == DM_FIXED and lvt & LVT_LEVEL_TRIGGER:
            if level:
                self._local_deliver(LVT_LINT0 + n)
            else:
                self.irr &= ~(1 << (lvt & 0xFF))
        elif rising:
            self._local_deliver(LVT_LINT0 + n)

    def eoi(self) -> None:
        """EOI: retire the highest in-service vector; level-triggered ones are broadcast."""
        isrv = _highest(self.isr)
        if isrv < 0:
            return
        bit = 1 << isrv
        self.isr &= ~bit
        if self.tmr & bit and self.bus is not None:
            self.bus.eoi_broadcast(isrv)
        self._update()

    # -- timer ---------------------------------------------------------------------------------
    def _timer_periodic(self) -> bool:
        return bool(self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC)

    def _elapsed_ticks(self, now: int) -> int:
        return max(0, now - self._load_time) // TIMER_NS_PER_TICK >> self._timer_shift

    def current_count(self) -> int:
        if not self.initial_count:
            return 0
        d = self._elapsed_ticks(self.clock.now_ns())
        if self._timer_periodic():
            return self.initial_count - d % self.initial_count
        return max(0, self.initial_count - d)

    def _tick_time(self, ticks: int) -> int:
        return self._load_time + (ticks << self._timer_shift) * TIMER_NS_PER_TICK

    def _arm_timer(self, now: int | None = None) -> None:
        """Arm for the next count-reaches-zero after ``now`` (default: the clock's now;
        missed periods coalesce)."""
        timer = self._timer
        if timer is not None:
            timer.delete()
        n = self.initial_count
        if not n or self.lvt[LVT_TIMER] & LVT_MASKED:
            return
        if now is None:
            now = self.clock.now_ns()
        d = self._elapsed_ticks(now)
        if self._timer_periodic():
            expire = self._tick_time((d // n + 1) * n)
        elif d < n:
            expire = self._tick_time(n)
        else:
            return
        if timer is None or timer.clock is not self.clock:
            timer = self._timer = Timer(self.clock, self._on_timer)
        timer.mod(expire)

    def _on_timer(self) -> None:
        self._local_deliver(LVT_TIMER)
        if self._timer_periodic():
            self._arm_timer()

    # -- registers -------------------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index == R_ID:
            return self.apic_id << 24
        if index == R_VERSION:
            return APIC_VERSION
        if index == R_TPR:
            return self.tpr
        if index == R_APR:
            return self.apr()
        if index == R_PPR:
            return self.ppr()
        if index in (R_EOI, R_RRD):
            return 0
        if index == R_LDR:
            return self.ldr << 24
        if index == R_DFR:
            return (self.dfr << 28) | 0x0FFFFFFF
        if index == R_SVR:
            return self.svr
        if R_ISR <= index < R_ISR + 8:
            return (self.isr >> (32 * (index - R_ISR))) & _U32
        if R_TMR <= index < R_TMR + 8:
            return (self.tmr >> (32 * (index - R_TMR))) & _U32
        if R_IRR <= index < R_IRR + 8:
            return (self.irr >> (32 * (index - R_IRR))) & _U32
        if index == R_ESR:
            return self.esr
        if index == R_ICR_LO:
            return self.icr_lo
        if index == R_ICR_HI:
            return self.icr_hi
        if R_LVT <= index < R_LVT + NUM_LVT:
            return self.lvt[index - R_LVT]
        if index == R_TMICT:
            return self.initial_count
        if index == R_TMCCT:
            return self.current_count()
        if index == R_TDCR:
            return self.tdcr
        self._error(ESR_ILLEGAL_REGISTER)
        return 0

    def write_register(self, index: int, value: int) -> None:
        value &= _U32
        if index == R_ID:
            self.apic_id = value >> 24
        elif index == R_TPR:
            self.tpr = value & 0xFF
            self._update()
        elif index == R_EOI:
            self.eoi()
        elif index == R_LDR:
            self.ldr = value >> 24
        elif index == R_DFR:
            self.dfr = value >> 28
        elif index == R_SVR:
            self.svr = value & SVR_WRITABLE
            if not self.sw_enabled():
                self.lvt = [v | LVT_MASKED for v in self.lvt]
                self._arm_timer()
            self._update()
        elif index == R_ESR:
            self.esr = self._esr_pending  # a write latches the errors seen since the last one
            self._esr_pending = 0
        elif index == R_ICR_LO:
            self.icr_lo = value & 0xCCFFF  # delivery status always reads idle
            self._send_ipi()
        elif index == R_ICR_HI:
            self.icr_hi = value & 0xFF000000
        elif R_LVT <= index < R_LVT + NUM_LVT:
            n = index - R_LVT
            v = value & LVT_WRITABLE[n]
            if not self.sw_enabled():
                v |= LVT_MASKED
            self.lvt[n] = v
            if n == LVT_TIMER:
                self._arm_timer()
            elif n == LVT_LINT0:
                self._update()
        elif index == R_TMICT:
            self.initial_count = value
            self._load_time = self.clock.now_ns()
            # Arm from the load instant: a short one-shot count (Linux programs ~60 ticks)
            # can run out before a second clock read, and must still fire.
            self._arm_timer(self._load_time)
        elif index == R_TDCR:
            now = self.clock.now_ns()
            d = self._elapsed_ticks(now)
            self.tdcr = value & 0xB
            v = (value & 3) | ((value >> 1) & 4)
            self._timer_shift = (v + 1) & 7
            # Keep the count where it is; it continues at the new rate.
            self._load_time = now - (d << self._timer_shift) * TIMER_NS_PER_TICK
            self._arm_timer(now)
        elif index in (R_VERSION, R_APR, R_PPR, R_RRD, R_TMCCT) or (R_ISR <= index < R_IRR + 8):
            guest_log.debug("apic %d: write of 0x%x to read-only register 0x%x ignored",
                            self.apic_id, value, index << 4)
        else:
            self._error(ESR_ILLEGAL_REGISTER)

    def _send_ipi(self) -> None:
        lo = self.icr_lo
        vector = lo & 0xFF
        mode = (lo >> 8) & 7
        dest_mode = (lo >> 11) & 1
        shorthand = (lo >> 18) & 3
        if mode == DM_INIT and not lo & (1 << 14) and lo & LVT_LEVEL_TRIGGER:
            return  # INIT level de-assert: only resynchronises arbitration IDs
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        bus = self.bus
        if bus is None:
            if shorthand in (1, 2):
                self.deliver(mode, vector, 0)
            return
        if shorthand == 0:
            targets = bus.match(self.icr_hi >> 24, dest_mode)
        elif shorthand == 1:
            targets = [self]
        elif shorthand == 2:
            targets = [a for a in bus.lapics if a.hw_enabled()]
        else:
            targets = [a for a in bus.lapics if a.hw_enabled() and a is not self]
        bus.deliver_to(targets, mode, vector, (lo >> 15) & 1)

    # -- MSR and CR8 hooks -------------------------------------------------------------------
    def get_base(self) -> int:
        """IA32_APIC_BASE as the CPU's RDMSR returns it."""
        return int(self.cpu.env.apic_base) if self.cpu is not None else (
            APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE)

    def set_base(self, value: int) -> bool:
        """WRMSR IA32_APIC_BASE: bit 11 enables the APIC globally (clearing it resets the APIC
        and routes the i8259 straight to the CPU); the BSP flag is read-only. Relocation is
        not modelled (the MMIO window stays at 0xfee00000). Returns False to raise #GP."""
        if value & ~0xFFFFFFFFFF900 & ((1 << 64) - 1) or value & (1 << 10):
            return False  # reserved bits or x2APIC enable
        cpu = self.cpu
        if cpu is None:
            return True
        old = cpu.env.apic_base
        new = (value & ~MSR_IA32_APICBASE_BSP) | (old & MSR_IA32_APICBASE_BSP)
        cpu.env.apic_base = new
        self.apic_base_changed(new)
        return True

    def apic_base_changed(self, value: int) -> None:
        """After IA32_APIC_BASE was written (X86CPU's ``apic_base_listeners``): a global
        disable resets the APIC; the i8259 then reaches the CPU directly."""
        enabled = bool(value & MSR_IA32_APICBASE_ENABLE)
        if self._base_enabled and not enabled:
            self.init_reset()
        self._base_enabled = enabled
        if value & 0xFFFFFFFFFF000 != APIC_DEFAULT_ADDRESS and not self._warned_relocation:
            self._warned_relocation = True
            guest_log.warning("apic %d: relocation to 0x%x is not supported (the APIC stays "
                              "at 0x%x)", self.apic_id, value & ~0xFFF, APIC_DEFAULT_ADDRESS)
        self._update()

    def read_cr8(self) -> int:
        return self.tpr >> 4

    def write_cr8(self, value: int) -> None:
        self.tpr = (value & 0xF) << 4
        self._update()


class APICBus:
    """All local APICs of a machine, and the paths into them: IPIs, I/O APIC messages, MSIs,
    EOI broadcasts and the i8259 INT line; also the MMIO region at 0xfee00000."""

    def __init__(self, clock: Clock = CLOCK_VIRTUAL):
        self.clock = clock
        self.lapics: list[APIC] = []
        self.ioapics: list[IOAPICLike] = []
        self.pic: PICLike | None = None
        self._by_cpu: dict[int, APIC] = {}
        self.mmio = MemoryRegion.io("apic", 0x1000, self._mmio_read, self._mmio_write,
                                    valid_sizes=(1, 4), impl_sizes=(1, 4))

    # -- construction ----------------------------------------------------------------------
    def add_cpu(self, cpu: CPULike) -> APIC:
        """Create, realize and reset the local APIC of ``cpu``, make it the CPU's
        ``interrupt_controller`` and listen to its IA32_APIC_BASE writes."""
        lapic = APIC()
        lapic.cpu = cpu
        lapic.bus = self
        lapic.pic = self.pic
        lapic.set_realized(True)
        lapic.reset()
        self.lapics.append(lapic)
        self._by_cpu[id(cpu)] = lapic
        cpu.interrupt_controller = lapic  # type: ignore[attr-defined]
        listeners = getattr(cpu, "apic_base_listeners", None)
        if listeners is not None:
            listeners.append(lapic.apic_base_changed)
        return lapic

    def lapic_of(self, cpu: object) -> APIC | None:
        return self._by_cpu.get(id(cpu))

    def add_ioapic(self, ioapic: Any) -> None:
        """Wire an I/O APIC both ways: its messages to this bus, EOI broadcasts to it."""
        ioapic.apic_bus = self
        self.ioapics.append(ioapic)

    def connect_pic(self, pic: Any) -> None:
        """The i8259's INT goes to every LINT0 (``pic.output``); INTA is forwarded to it."""
        self.pic = pic
        for lapic in self.lapics:
            lapic.pic = pic
        pic.output = self.set_pic_level

    def cpu_reset(self, cpu: object) -> None:
        """Reset/INIT of ``cpu``: its local APIC returns to the power-on state."""
        lapic = self._by_cpu.get(id(cpu))
        if lapic is not None:
            lapic.reset()

    # -- delivery ------------------------------------------------------------------------------
    def set_pic_level(self, level: int) -> None:
        for lapic in self.lapics:
            lapic.lint[0].set(level)

    def match(self, dest: int, dest_mode: int) -> list[APIC]:
        """The enabled local APICs a physical (0) or logical (1) destination names."""
        out = []
        for lapic in self.lapics:
            if not lapic.hw_enabled():
                continue
            if dest_mode == 0:
                if dest == 0xFF or lapic.apic_id == dest:
                    out.append(lapic)
            elif lapic.dfr == 0xF:  # flat model: 8-bit mask
                if lapic.ldr & dest:
                    out.append(lapic)
            else:  # cluster model: 4-bit cluster, 4-bit mask (cluster 15: all)
                cluster = dest >> 4
                if (cluster in (0xF, lapic.ldr >> 4)) and lapic.ldr & dest & 0xF:
                    out.append(lapic)
        return out

    def deliver_to(self, targets: list[APIC], delivery_mode: int, vector: int,
                   trigger_mode: int) -> None:
        if delivery_mode == DM_LOWEST and len(targets) > 1:
            targets = [min(targets, key=lambda a: a.apr())]
        for lapic in targets:
            lapic.deliver(delivery_mode, vector, trigger_mode)

    def deliver(self, dest: int, dest_mode: int, delivery_mode: int, vector: int,
                trigger_mode: int) -> None:
        """An interrupt message on the bus (from an I/O APIC or an MSI)."""
        self.deliver_to(self.match(dest, dest_mode), delivery_mode, vector, trigger_mode)

    def deliver_msi(self, address: int, data: int) -> None:
        """An MSI write: address 0xFEExxxxx (destination in bits 12-19, bit 2 logical),
        data vector in bits 0-7, delivery mode 8-10, trigger mode bit 15."""
        if (address >> 20) & 0xFFF != 0xFEE or address >> 32:
            guest_log.debug("MSI to 0x%x (not the APIC window) dropped", address)
            return
        self.deliver((address >> 12) & 0xFF, (address >> 2) & 1, (data >> 8) & 7, data & 0xFF,
                     (data >> 15) & 1)

    def eoi_broadcast(self, vector: int) -> None:
        for ioapic in self.ioapics:
            ioapic.eoi(vector)

    # -- MMIO ----------------------------------------------------------------------------------
    def _current(self) -> APIC | None:
        cpu = current_cpu()
        lapic = self._by_cpu.get(id(cpu)) if cpu is not None else None
        if lapic is None and self.lapics:
            lapic = self.lapics[0]
        return lapic

    def _mmio_read(self, offset: int, size: int) -> int:
        lapic = self._current()
        if lapic is None or offset & 0xF >= 4:
            return 0
        return lapic.read_register(offset >> 4) >> (8 * (offset & 3))

    def _mmio_write(self, offset: int, value: int, size: int) -> None:
        lapic = self._current()
        if lapic is None:
            return
        if size != 4 or offset & 0xF:
            guest_log.debug("apic: ignored %d-byte write at offset 0x%x", size, offset)
            return
        lapic.write_register(offset >> 4, value)
