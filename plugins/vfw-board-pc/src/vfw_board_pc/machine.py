"""The ``pc`` machine types (QEMU's pc-i440fx-X.Y): how the PC's parts are put together.

Order, as QEMU's pc_init1: RAM and the PCI hole → CPUs → interrupt controllers (the
accelerator's in-kernel ones, or software models) → PCI host bridge and ISA bridge → legacy
ISA devices → fw_cfg, ACPI → the boot image (``-kernel`` or firmware).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from vfw.errors import MachineError, OptionError
from vfw.machine import Machine
from vfw.props import BOOL, prop
from vfw.qom import object_new, register_type
from vfw.runstate import ShutdownCause

if TYPE_CHECKING:
    from vfw.irq import IRQ

    from .e820 import E820Entry

# The board's parts are imported where the board is built, not with the module: listing
# machines (`vfw run -machine help`) imports this module and must stay cheap.

FOUR_GIB = 1 << 32
BIOS_SIZE_MAX = 16 << 20
ISA_BIOS_SIZE = 128 << 10
#: GSIs that PCI INTA-D lines reach, after the (slot + pin) % 4 swizzle; the ACPI _PRT says
#: the same. Level-triggered, shared.
PCI_IRQ_GSIS = (10, 10, 11, 11)
SCI_IRQ = 9
#: Where ACPI tables go for a direct kernel boot (the BIOS area Linux scans for the RSDP).
ACPI_BASE = 0xE0000
IOAPIC_ADDRESS = 0xFEC00000
APIC_ADDRESS = 0xFEE00000


def _read_file(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OptionError(f"could not open {option.lstrip('-')} file '{path}': "
                          f"{exc.strerror}", option, path) from None


@register_type
class PCI440FXMachine(Machine):
    """Standard PC: i440FX host bridge, PIIX3 south bridge, legacy ISA devices."""

    TYPE = "pc-i440fx-7.2-machine"
    DESC = "Standard PC (i440FX + PIIX, 1996)"
    ALIAS = "pc"
    IS_DEFAULT = True
    MAX_CPUS = 255
    DEFAULT_RAM_SIZE = 128 << 20
    DEFAULT_CPU_TYPE = "qemu64-x86_64-cpu"
    SMP_DIES_SUPPORTED = True

    acpi = prop(BOOL, True, "Enable ACPI (tables and the power-management block)")
    hpet = prop(BOOL, False, "Enable HPET (not provided by vfw: accepted only as off)")
    vmport = prop(BOOL, False, "Enable vmport (not provided by vfw)")

    # -- init ---------------------------------------------------------------------------------
    def init(self) -> None:
        if self.hpet or self.vmport:
            raise MachineError("machine pc: hpet and vmport are not provided by vfw")
        accel = self.accel
        assert accel is not None and self.smp is not None
        self.boot_writes: list[tuple[int, bytes]] = []
        self.boot_entry: Any = None
        self._init_memory()
        self._init_cpus()
        self.gsi = self._init_interrupts()
        self._init_pci()
        self._init_isa()
        self._load_boot_image()
        self.reset_hooks.append(self._reset_cpus)
        from . import hmp_apic  # noqa: F401  (``info lapic`` for the human monitor)
        self._reset_cpus()

    def _init_memory(self) -> None:
        from vfw.memory import MemoryRegion

        from .e820 import pc_ram_split

        below, above = pc_ram_split(self.ram_size)
        self.below_4g, self.above_4g = below, above
        try:
            self.ram = MemoryRegion.ram("pc.ram", self.ram_size)
        except (ValueError, MemoryError) as exc:
            raise MachineError(f"cannot allocate {self.ram_size} bytes of guest RAM: {exc}"
                               ) from None
        self.system_memory.add_subregion(0, MemoryRegion.alias("ram-below-4g", self.ram, 0,
                                                               below))
        if above:
            self.system_memory.add_subregion(
                FOUR_GIB, MemoryRegion.alias("ram-above-4g", self.ram, below, above))
        # BARs live in the PCI address space, under RAM (QEMU's pci_memory at priority -1).
        self.pci_memory = MemoryRegion.container("pci", 1 << 64)
        self.system_memory.add_subregion(0, self.pci_memory, priority=-1)

    def _init_cpus(self) -> None:
        from .cpu import x86_cpu_from_options

        assert self.smp is not None and self.accel is not None
        model = (self.cpu_type or "qemu64").removesuffix("-x86_64-cpu")
        accel_name = self.accel.accel_name()
        for index in range(self.smp.cpus):
            cpu: Any = x86_cpu_from_options(model, self.cpu_options, accel=accel_name,
                                            accel_defaults=self.accel.CPU_FEATURE_DEFAULTS)
            cpu.cpu_index = index
            cpu.topology = (self.smp.sockets, self.smp.cores, self.smp.threads)
            for warning in cpu.filter_features(self.accel.supported_cpuid, accel_name) \
                    if hasattr(self.accel, "supported_cpuid") else ():
                print(f"vfw: warning: {warning}", file=sys.stderr)
            self.add_board_device(cpu)
            cpu.set_realized(True)
            self.cpus.append(cpu)
            self.accel.create_vcpu(cpu)

    def _init_interrupts(self) -> list[IRQ]:
        """24 GSI lines: to the accelerator's irqchip, or to software PIC + IOAPIC."""
        from vfw.irq import IRQ, split_irq

        accel = self.accel
        assert accel is not None
        if accel.irqchip_in_kernel():
            self.msi_sink = accel.send_msi
            return [IRQ(lambda n, level: accel.set_irq(n, level), n, f"gsi{n}")
                    for n in range(24)]
        from vfw.timer import CLOCK_VIRTUAL

        from .apic import APICBus

        pic: Any = object_new("isa-i8259")
        self.add_board_device(pic, "pic")
        pic.set_realized(True)
        self.system_io.add_subregion(0x20, pic.master_io)
        self.system_io.add_subregion(0xA0, pic.slave_io)
        self.system_io.add_subregion(0x4D0, pic.elcr_io)
        ioapic: Any = object_new("ioapic")
        self.add_board_device(ioapic, "ioapic")
        ioapic.set_realized(True)
        self.system_memory.add_subregion(IOAPIC_ADDRESS, ioapic.mmio)
        self.apic_bus = APICBus(clock=CLOCK_VIRTUAL)
        self.apic_bus.add_ioapic(ioapic)
        for cpu in self.cpus:
            self.apic_bus.add_cpu(cpu)  # sets cpu.interrupt_controller to its LAPIC
        self.apic_bus.connect_pic(pic)
        # The LAPIC window sits above RAM and PCI; it serves the accessing CPU's LAPIC.
        self.system_memory.add_subregion(APIC_ADDRESS, self.apic_bus.mmio, priority=1)
        self.msi_sink = self.apic_bus.deliver_msi
        self.pic, self.ioapic = pic, ioapic
        # ISA IRQ n drives PIC input n and IOAPIC pin n, except IRQ0 → pin 2 (the MADT's
        # interrupt source override); IRQ2 is the PIC cascade and drives nothing.
        lines = []
        for n in range(24):
            if n == 2:
                lines.append(IRQ(None, n, "gsi2"))
            elif n < 16:
                lines.append(split_irq(pic.irqs[n], ioapic.irqs[2 if n == 0 else n]))
            else:
                lines.append(ioapic.irqs[n])
        pit: Any = object_new("isa-pit")
        self.add_board_device(pit, "pit")
        pit.irq0 = lines[0]
        pit.set_realized(True)
        self.system_io.add_subregion(0x40, pit.io)
        self.system_io.add_subregion(0x61, pit.speaker_io)
        return lines

    def _init_pci(self) -> None:
        from vfw.pci import PCIBus
        from vfw.pci_host import PCIHostState

        from .i440fx import I440FXHostBridge, PIIX3ISABridge

        host = I440FXHostBridge()
        self.add_board_device(host, "i440fx")
        self.pci_bus = PCIBus.create(
            "pci.0", mem_region=self.pci_memory, io_region=self.system_io,
            dma_as=self.address_space_memory,
            set_irq=lambda pirq, level: self.gsi[PCI_IRQ_GSIS[pirq]].set(level),
            msi_sink=lambda address, data: self.msi_sink(address, data))
        host.add_child("pci.0", self.pci_bus)
        self.pci_host = PCIHostState(self.pci_bus)
        self.pci_host.map(self.system_io)
        host.set_property("addr", 0)
        self.pci_bus.plug(host)
        host.set_realized(True)
        piix3 = PIIX3ISABridge()
        piix3.set_property("addr", 1 << 3)
        piix3.set_property("multifunction", True)
        self.add_board_device(piix3, "piix3")
        self.pci_bus.plug(piix3)
        piix3.set_realized(True)
        self.piix3 = piix3

    def _init_isa(self) -> None:
        from vfw.chardev import serial_chardev

        from .isa import ISABus, ISADevice, isa_create
        from .rtc import pc_cmos_memory

        self.isa_bus = ISABus.create(self.system_io, self.gsi[:16])
        self.piix3.add_child("isa.0", self.isa_bus)

        def isa(type_name: str, **props: Any) -> ISADevice:
            dev = isa_create(self.isa_bus, type_name, **props)
            self.add_board_device(dev)
            return dev

        for spec in self._serial_specs(getattr(self, "cmdline", None)):
            chardev = serial_chardev(spec)
            if chardev is not None:
                isa("isa-serial", chardev=chardev.label)
        guest_reset = lambda: self.request_reset(ShutdownCause.GUEST_RESET)  # noqa: E731
        isa("i8042").reset_request = guest_reset  # type: ignore[attr-defined]
        isa("pc-reset-control").reset_request = guest_reset  # type: ignore[attr-defined]
        self.rtc: Any = isa("mc146818rtc")
        isa("port80")
        assert self.smp is not None
        pc_cmos_memory(self.rtc, self.below_4g, self.above_4g, self.smp.cpus)
        if self.acpi:
            pm: Any = object_new("vfw-acpi-pm")
            self.add_board_device(pm, "pm")
            pm.sci = self.gsi[SCI_IRQ]
            pm.shutdown_request = lambda: self.request_shutdown(ShutdownCause.GUEST_SHUTDOWN)
            pm.set_realized(True)
            self.system_io.add_subregion(0x600, pm.pm_io)
            self.acpi_pm = pm
        self._init_fw_cfg(isa("fw_cfg_io"))

    def _serial_specs(self, cl: Any) -> list[str]:
        """QEMU's defaults: -serial as given; -nographic means stdio; -nodefaults means none;
        vfw has no graphical console, so the default serial port is stdio too."""
        specs = list(cl.multi.get("serial", [])) if cl is not None else []
        if specs:
            return specs
        if cl is not None and "nodefaults" in cl.flags:
            return []
        return ["stdio"]

    def _init_fw_cfg(self, fw: Any) -> None:
        from .e820 import encode_e820, fw_cfg_e820
        from .fw_cfg import FWCfgKey

        assert self.smp is not None
        fw.dma_as = self.address_space_memory
        fw.add_i16(FWCfgKey.NB_CPUS, self.smp.cpus)
        fw.add_i16(FWCfgKey.MAX_CPUS, self.smp.max_cpus)
        fw.add_i64(FWCfgKey.RAM_SIZE, self.ram_size)
        fw.add_i16(FWCfgKey.NOGRAPHIC, 1)
        fw.add_file("etc/e820", encode_e820(fw_cfg_e820(self.ram_size)))
        self.fw_cfg = fw

    # -- boot ---------------------------------------------------------------------------------
    def _acpi_tables(self) -> Any:
        from .acpi import build_acpi_tables

        return build_acpi_tables([cpu.apic_id for cpu in self.cpus],
                                 pci_hole=(self.below_4g, IOAPIC_ADDRESS - 1),
                                 pci_irq_gsis=PCI_IRQ_GSIS, base_address=ACPI_BASE + 0x100)

    def _load_boot_image(self) -> None:
        from .e820 import pc_e820_table

        e820 = pc_e820_table(self.ram_size)
        rsdp_addr = None
        if self.acpi:
            tables = self._acpi_tables()
            self.boot_writes.append((ACPI_BASE + 0x100, tables.blob))
            self.boot_writes.append((ACPI_BASE, tables.rsdp))
            rsdp_addr = ACPI_BASE
            e820 = self._reserve(e820, ACPI_BASE, 0x20000)
        if self.kernel:
            self._load_kernel(e820, rsdp_addr)
        else:
            if self.initrd or self.append:
                raise OptionError("-initrd and -append need -kernel")
            self._load_firmware()

    @staticmethod
    def _reserve(e820: list[E820Entry], addr: int, size: int) -> list[E820Entry]:
        from .e820 import E820_RESERVED, E820Entry, e820_add

        return e820_add(e820, E820Entry(addr, size, E820_RESERVED))

    def _load_kernel(self, e820: list[E820Entry], rsdp_addr: int | None) -> None:
        from .linux_loader import load_linux
        from .multiboot import load_multiboot, split_multiboot_modules

        kernel = _read_file("-kernel", str(self.kernel))
        image = None
        modules: list[tuple[bytes, str]] = []
        if self.initrd:
            for path, args in split_multiboot_modules(str(self.initrd)):
                modules.append((_read_file("-initrd", path), args))
        image = load_multiboot(kernel, f"{self.kernel} {self.append or ''}".strip(), modules,
                               ram_size_below_4g=self.below_4g, e820=e820,
                               kernel_path=str(self.kernel))
        if image is None:
            initrd = _read_file("-initrd", str(self.initrd)) if self.initrd else None
            image = load_linux(kernel, initrd, self.append or "", ram_below_4g=self.below_4g,
                               e820=e820, acpi_rsdp_addr=rsdp_addr,
                               kernel_path=str(self.kernel))
        self.boot_writes.extend(image.writes)
        self.boot_entry = image.set_entry_state

    def _load_firmware(self) -> None:
        if self.firmware:
            rom = _read_file("-bios", str(self.firmware))
        else:
            from .firmware import bios_image

            rom = bios_image()
        size = len(rom)
        from vfw.memory import MemoryRegion

        if size == 0 or size > BIOS_SIZE_MAX or size % 65536:
            raise OptionError(f"invalid firmware image size {size} (a multiple of 64 KiB up"
                              " to 16 MiB)", "-bios", str(self.firmware or "built-in"))
        bios = MemoryRegion.rom("pc.bios", size)
        bios.view[:] = rom
        self.system_memory.add_subregion(FOUR_GIB - size, bios)
        isa_size = min(size, ISA_BIOS_SIZE)
        self.system_memory.add_subregion(
            0x100000 - isa_size, MemoryRegion.alias("isa-bios", bios, size - isa_size, isa_size),
            priority=1)

    def powerdown(self) -> None:
        """QMP system_powerdown: press the ACPI power button (the guest decides)."""
        super().powerdown()  # the POWERDOWN event
        pm = getattr(self, "acpi_pm", None)
        if pm is not None:
            pm.power_button()

    # -- reset --------------------------------------------------------------------------------
    def _reset_cpus(self) -> None:
        """Power-on state for every CPU, then the boot image and its entry state (a reset
        re-loads a -kernel, as QEMU's option ROM does)."""
        for addr, data in self.boot_writes:
            self.address_space_memory.write_bytes(addr, data)
        apic_bus = getattr(self, "apic_bus", None)
        for cpu in self.cpus:
            cpu.reset()
            if apic_bus is not None:
                apic_bus.cpu_reset(cpu)
        if self.boot_entry is not None:
            self.boot_entry(self.cpus[0].env)
        assert self.accel is not None
        for cpu in self.cpus:
            self.accel.synchronize_post_reset(cpu)
