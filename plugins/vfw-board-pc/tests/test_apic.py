"""Local APICs and the APIC bus with fake CPUs on a controllable virtual clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vfw.cpu import set_current_cpu
from vfw.memory import AddressSpace, MemoryRegion
from vfw.qom import TABLE
from vfw.testing import ManualClock
from vfw_board_pc.apic import APIC, APIC_VERSION, APICBus
from vfw_board_pc.cpu_state import (
    MP_STATE_INIT_RECEIVED,
    MP_STATE_RUNNABLE,
    MP_STATE_SIPI_RECEIVED,
    MP_STATE_UNINITIALIZED,
    MSR_IA32_APICBASE_BSP,
    MSR_IA32_APICBASE_ENABLE,
    X86CPUState,
)
from vfw_board_pc.i8259 import PICPair

APIC_BASE = 0xFEE00000

# Register offsets.
ID, VER, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVTT, LVT0, LVT1, LVTERR, TMICT, TMCCT, TDCR = 0x320, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3E0


class FakeCPU:
    """The CPU contract the local APIC relies on: env, apic_id, kick()."""

    def __init__(self, index: int) -> None:
        self.env = X86CPUState()
        self.env.reset(bsp=index == 0)
        self.apic_id = index
        self.cpu_index = index
        self.kicks = 0
        self.interrupt_controller: APIC | None = None

    def kick(self) -> None:
        self.kicks += 1
        self.env.interrupt_request = True


class Board:
    def __init__(self, ncpus: int = 2) -> None:
        self.clock = ManualClock(start_ns=5_000_000_000)
        self.bus = APICBus(self.clock)
        self.cpus = [FakeCPU(i) for i in range(ncpus)]
        self.lapics = [self.bus.add_cpu(c) for c in self.cpus]
        root = MemoryRegion.container("sysmem", 1 << 32)
        root.add_subregion(APIC_BASE, self.bus.mmio)
        self.mem = AddressSpace("memory", root)

    def write(self, cpu: int, reg: int, value: int) -> None:
        set_current_cpu(self.cpus[cpu])  # type: ignore[arg-type]
        try:
            self.mem.write(APIC_BASE + reg, value, 4)
        finally:
            set_current_cpu(None)

    def read(self, cpu: int, reg: int) -> int:
        set_current_cpu(self.cpus[cpu])  # type: ignore[arg-type]
        try:
            return self.mem.read(APIC_BASE + reg, 4)
        finally:
            set_current_cpu(None)

    def enable(self, cpu: int) -> None:
        self.write(cpu, SVR, 0x1FF)

    def ipi(self, cpu: int, low: int, dest: int = 0) -> None:
        self.write(cpu, ICR_HI, dest << 24)
        self.write(cpu, ICR_LO, low)

    def take(self, cpu: int) -> int | None:
        """The vector the CPU would take now (INTA), or None."""
        lapic = self.lapics[cpu]
        return lapic.acknowledge() if lapic.has_interrupt() else None


@pytest.fixture
def b() -> Board:
    return Board()


def test_type_is_registered_and_wired_to_the_cpu(b: Board) -> None:
    assert TABLE.lookup("apic") is APIC
    assert APIC.USER_CREATABLE is False
    assert b.cpus[1].interrupt_controller is b.lapics[1]
    assert b.lapics[1].cpu is b.cpus[1]


def test_identification_and_mmio_dispatch_by_current_cpu(b: Board) -> None:
    assert b.read(0, VER) == APIC_VERSION == 0x50014
    assert b.read(1, ID) == 1 << 24
    assert b.read(0, ID) == 0
    assert b.mem.read(APIC_BASE + ID, 4) == 0  # no current CPU: CPU 0's APIC
    assert b.mem.read(APIC_BASE + ID + 3, 1) == 0
    assert b.read(0, SVR) == 0xFF
    assert b.read(1, LVT0) == 0x10000  # masked on an AP
    assert b.read(0, LVT0) == 0x700  # ExtINT on the BSP (virtual wire)
    assert b.read(0, DFR) == 0xFFFFFFFF


def test_fixed_ipi_between_two_cpus(b: Board) -> None:
    b.enable(0)
    b.enable(1)
    b.ipi(0, 0x0000_4040, dest=1)  # fixed, physical, assert, vector 0x40 -> APIC 1
    assert b.read(0, ICR_LO) == 0x4040  # delivery status idle
    assert b.cpus[1].kicks == 1 and b.cpus[0].kicks == 0
    assert b.read(1, IRR + 0x20) == 1  # bit 0x40 of IRR
    assert b.take(1) == 0x40
    assert b.take(0) is None
    assert b.read(1, ISR + 0x20) == 1
    b.write(1, EOI, 0)
    assert b.read(1, ISR + 0x20) == 0


def test_shorthands_and_logical_destinations(b: Board) -> None:
    for i in range(2):
        b.enable(i)
        b.write(i, DFR, 0xFFFFFFFF)
        b.write(i, LDR, (1 << i) << 24)
    b.ipi(0, 0x0004_40F0)  # self
    assert b.lapics[0].irr == 1 << 0xF0 and b.lapics[1].irr == 0
    b.ipi(0, 0x000C_40F1)  # all excluding self
    assert b.lapics[0].irr == 1 << 0xF0 and b.lapics[1].irr == 1 << 0xF1
    b.ipi(1, 0x0008_40F2)  # all including self
    assert b.lapics[0].irr & (1 << 0xF2) and b.lapics[1].irr & (1 << 0xF2)
    b.ipi(0, 0x0000_48F3, dest=0x02)  # logical flat: LDR bit 1 = CPU 1
    assert b.lapics[1].irr & (1 << 0xF3) and not b.lapics[0].irr & (1 << 0xF3)
    b.ipi(1, 0x0000_40F4, dest=0xFF)  # physical broadcast
    assert b.lapics[0].irr & (1 << 0xF4) and b.lapics[1].irr & (1 << 0xF4)


def test_lowest_priority_picks_the_least_busy(b: Board) -> None:
    for i in range(2):
        b.enable(i)
        b.write(i, LDR, 0xFF000000)
    b.write(0, TPR, 0x80)
    b.ipi(0, 0x0000_4950, dest=0x03)  # lowest priority, logical
    assert b.lapics[1].irr == 1 << 0x50 and b.lapics[0].irr == 0
    b.write(0, TPR, 0)
    b.write(1, TPR, 0x80)
    b.ipi(0, 0x0000_4951, dest=0x03)
    assert b.lapics[0].irr == 1 << 0x51


def test_tpr_gates_delivery_and_ppr(b: Board) -> None:
    b.enable(0)
    b.write(0, TPR, 0x60)
    b.lapics[0].set_irq(0x55, False)
    assert not b.lapics[0].has_interrupt()
    assert b.read(0, PPR) == 0x60
    kicks = b.cpus[0].kicks
    b.write(0, TPR, 0x50)  # same class as the vector: still held
    assert not b.lapics[0].has_interrupt()
    b.write(0, TPR, 0x40)  # lowering the TPR releases it, and kicks the CPU
    assert b.cpus[0].kicks > kicks
    assert b.take(0) == 0x55
    assert b.read(0, PPR) == 0x50  # in-service class now outranks the TPR
    b.lapics[0].write_cr8(0x7)
    assert b.read(0, TPR) == 0x70 and b.read(0, PPR) == 0x70


def test_eoi_retires_highest_in_service_first(b: Board) -> None:
    b.enable(0)
    lapic = b.lapics[0]
    lapic.set_irq(0x31, False)
    assert b.take(0) == 0x31
    lapic.set_irq(0x82, False)  # higher class: nests
    lapic.set_irq(0x32, False)  # same class as the one in service: waits
    assert b.take(0) == 0x82
    assert b.take(0) is None
    assert lapic.isr == (1 << 0x31) | (1 << 0x82)
    b.write(0, EOI, 0)
    assert lapic.isr == 1 << 0x31
    assert b.take(0) is None  # 0x32 still blocked by 0x31
    b.write(0, EOI, 0)
    assert lapic.isr == 0
    assert b.take(0) == 0x32


def test_timer_one_shot(b: Board) -> None:
    b.enable(0)
    b.write(0, TDCR, 0x3)  # divide by 16
    assert b.read(0, TDCR) == 0x3
    b.write(0, LVTT, 0xEC)  # one-shot, vector 0xec
    b.write(0, TMICT, 1000)
    b.clock.advance(8000)
    assert b.read(0, TMCCT) == 500
    assert b.lapics[0].irr == 0
    b.clock.advance(7999)
    assert b.lapics[0].irr == 0
    b.clock.advance(1)
    assert b.lapics[0].irr == 1 << 0xEC
    assert b.read(0, TMCCT) == 0
    assert b.take(0) == 0xEC
    b.write(0, EOI, 0)
    b.clock.advance(1_000_000)
    assert b.take(0) is None  # one-shot: no second interrupt


def test_timer_periodic_and_count_readback(b: Board) -> None:
    b.enable(0)
    b.write(0, TDCR, 0xB)  # divide by 1
    b.write(0, LVTT, 0x200EC)  # periodic
    b.write(0, TMICT, 1000)
    taken = 0
    for _ in range(10):
        b.clock.advance(1000)
        while (v := b.take(0)) is not None:
            assert v == 0xEC
            b.write(0, EOI, 0)
            taken += 1
    assert taken == 10
    b.clock.advance(250)
    assert b.read(0, TMCCT) == 750
    b.write(0, LVTT, 0x300EC)  # masked: counting goes on, no interrupts
    b.clock.advance(5000)
    assert b.take(0) is None
    b.write(0, TMICT, 0)  # stops the timer
    assert b.read(0, TMCCT) == 0


def test_software_disable_masks_lvts(b: Board) -> None:
    b.enable(0)
    b.write(0, LVTT, 0x200EC)
    b.write(0, SVR, 0x0FF)
    assert b.read(0, LVTT) == 0x300EC
    b.write(0, LVTT, 0x200EC)  # cannot unmask while disabled
    assert b.read(0, LVTT) & 0x10000
    b.lapics[0].set_irq(0x40, False)
    assert not b.lapics[0].has_interrupt()


def test_init_and_sipi_change_the_mp_state(b: Board) -> None:
    ap = b.cpus[1]
    assert ap.env.mp_state == MP_STATE_UNINITIALIZED
    b.enable(1)
    b.write(1, TPR, 0x20)
    b.ipi(0, 0x0000_C500, dest=1)  # INIT, level assert
    assert ap.env.mp_state == MP_STATE_INIT_RECEIVED and ap.kicks == 1
    assert b.read(1, SVR) == 0xFF and b.read(1, TPR) == 0  # the APIC was reset too
    assert b.read(1, ID) == 1 << 24
    b.ipi(0, 0x0000_8500, dest=1)  # INIT level de-assert: no effect
    assert ap.env.mp_state == MP_STATE_INIT_RECEIVED and ap.kicks == 1
    b.ipi(0, 0x0000_4609, dest=1)  # STARTUP, vector 9 -> 0x9000
    assert ap.env.mp_state == MP_STATE_SIPI_RECEIVED and ap.env.sipi_vector == 9
    assert ap.kicks == 2
    ap.env.mp_state = MP_STATE_RUNNABLE  # the accelerator started it
    b.ipi(0, 0x0000_460A, dest=1)  # the second SIPI of INIT-SIPI-SIPI is ignored
    assert ap.env.sipi_vector == 9 and ap.env.mp_state == MP_STATE_RUNNABLE
    assert b.read(0, ESR) == 0


def test_nmi_ipi(b: Board) -> None:
    b.ipi(0, 0x0000_4400, dest=1)
    assert b.cpus[1].env.nmi_pending and b.cpus[1].kicks == 1
    assert not b.cpus[0].env.nmi_pending


def test_illegal_vector_sets_esr(b: Board) -> None:
    b.enable(0)
    b.write(0, LVTERR, 0xFE)
    b.ipi(0, 0x0000_4005, dest=1)
    assert b.lapics[1].irr == 0
    b.write(0, ESR, 0)
    assert b.read(0, ESR) == 0x20  # send illegal vector
    assert b.take(0) == 0xFE  # the error interrupt
    b.write(0, ESR, 0)
    assert b.read(0, ESR) == 0


def test_msi_decode(b: Board) -> None:
    b.enable(0)
    b.enable(1)
    b.bus.deliver_msi(0xFEE01000, 0x0061)  # physical dest 1, fixed, edge, vector 0x61
    assert b.lapics[1].irr == 1 << 0x61 and not b.lapics[1].tmr
    b.bus.deliver_msi(0xFEE00000, 0xC062)  # dest 0, level trigger
    assert b.lapics[0].irr == 1 << 0x62 and b.lapics[0].tmr == 1 << 0x62
    for i in range(2):
        b.write(i, LDR, (1 << i) << 24)
    b.write(1, TPR, 0x90)
    b.bus.deliver_msi(0xFEE0300C, 0x0163)  # logical dest 3, redirection hint, lowest prio
    assert b.lapics[0].irr & (1 << 0x63) and not b.lapics[1].irr & (1 << 0x63)
    b.bus.deliver_msi(0xFEE0000C, 0x0464)  # NMI
    b.bus.deliver_msi(0xFEE00004, 0x0464)  # logical dest 0: nobody
    b.bus.deliver_msi(0xFEE01000, 0x0400)
    assert b.cpus[1].env.nmi_pending and not b.cpus[0].env.nmi_pending
    b.bus.deliver_msi(0x12345000, 0x0065)  # not an MSI address: dropped
    assert not b.lapics[0].irr & (1 << 0x65)


def test_extint_through_lint0_and_virtual_wire(b: Board) -> None:
    pic = PICPair()
    b.bus.connect_pic(pic)
    for port, value in ((0, 0x11), (1, 0x30), (1, 0x04), (1, 0x01), (1, 0x00)):
        pic.master.write(port, value)
    pic.irqs[1].set(1)
    # Before software enable the BSP's LINT0 is ExtINT: the 8259 reaches CPU 0 only.
    assert b.cpus[0].kicks >= 1 and b.cpus[1].kicks == 0
    assert b.lapics[0].has_interrupt() and not b.lapics[1].has_interrupt()
    assert b.lapics[0].acknowledge() == 0x31
    pic.master.write(0, 0x20)
    pic.irqs[1].set(0)
    # Linux enables the APIC with LINT0 ExtINT still unmasked: an ExtINT beats the TPR.
    b.enable(0)
    b.write(0, TPR, 0xF0)
    pic.irqs[1].set(1)
    assert b.take(0) == 0x31
    pic.master.write(0, 0x20)
    pic.irqs[1].set(0)
    # check_timer masks LINT0: the 8259 is cut off.
    b.write(0, LVT0, 0x10700)
    pic.irqs[1].set(1)
    assert not b.lapics[0].has_interrupt()
    # Globally disabling the APIC (APIC base MSR) passes the 8259 straight through.
    assert b.lapics[0].set_base(0xFEE00000)
    assert b.cpus[0].env.apic_base == 0xFEE00000 | MSR_IA32_APICBASE_BSP
    assert b.lapics[0].get_base() & MSR_IA32_APICBASE_ENABLE == 0
    assert b.take(0) == 0x31
    assert not b.lapics[0].set_base(0xFEE00000 | (1 << 10))  # x2APIC: #GP


def test_apic_base_msr_listener_disables_and_reenables() -> None:
    class ListeningCPU(FakeCPU):
        def __init__(self, index: int) -> None:
            super().__init__(index)
            self.apic_base_listeners: list[Callable[[int], None]] = []

        def wrmsr_apic_base(self, value: int) -> None:  # what X86CPU.wrmsr does
            self.env.apic_base = value
            for listener in self.apic_base_listeners:
                listener(value)

    bus = APICBus(ManualClock(start_ns=5_000_000_000))
    cpu = ListeningCPU(1)
    lapic = bus.add_cpu(cpu)
    assert cpu.apic_base_listeners == [lapic.apic_base_changed]
    lapic.write_register(0x0F, 0x1FF)
    lapic.write_register(0x08, 0x40)
    cpu.wrmsr_apic_base(0xFEE00000)  # global disable: the APIC is reset and off the bus
    assert lapic.svr == 0xFF and lapic.tpr == 0
    assert bus.match(1, 0) == [] and not lapic.hw_enabled()
    bus.deliver(1, 0, 0, 0x40, 0)
    assert lapic.irr == 0
    cpu.wrmsr_apic_base(0xFEE00000 | MSR_IA32_APICBASE_ENABLE)
    assert bus.match(1, 0) == [lapic]


def test_lint0_fixed_and_lint1_nmi(b: Board) -> None:
    b.enable(1)
    b.write(1, LVT0, 0x0000_0077)  # fixed, edge, vector 0x77
    b.write(1, LVT1, 0x0000_0400)  # NMI
    b.lapics[1].lint[0].set(1)
    assert b.lapics[1].irr == 1 << 0x77
    b.lapics[1].lint[1].set(1)
    assert b.cpus[1].env.nmi_pending


def test_cpu_reset_and_eoi_broadcast_only_for_level(b: Board) -> None:
    seen: list[int] = []

    class IOAPICStub:
        apic_bus = None

        def eoi(self, vector: int) -> None:
            seen.append(vector)

    b.bus.add_ioapic(IOAPICStub())
    b.enable(0)
    b.lapics[0].set_irq(0x40, True)
    b.lapics[0].set_irq(0x41, False)
    assert b.take(0) == 0x41
    b.write(0, EOI, 0)
    assert b.take(0) == 0x40
    b.write(0, EOI, 0)
    assert seen == [0x40]
    b.write(0, TPR, 0x30)
    b.bus.cpu_reset(b.cpus[0])
    assert b.read(0, TPR) == 0 and b.read(0, SVR) == 0xFF and b.read(0, LVT0) == 0x700


def test_guest_errors_do_not_raise(b: Board) -> None:
    b.write(0, 0x3F0, 1)  # reserved register
    b.write(0, 0x20 + 4, 1)  # misaligned
    assert b.read(0, 0x3F0) == 0
    b.mem.write(APIC_BASE + SVR, 0x1FF, 2)  # narrow write ignored
    assert b.read(0, SVR) == 0xFF
    b.write(0, ESR, 0)
    assert b.read(0, ESR) == 0x80  # illegal register address
    b.write(0, TMICT, 0xFFFFFFFF)
    b.write(0, TDCR, 0xFF)
    assert b.read(0, TDCR) == 0xB
