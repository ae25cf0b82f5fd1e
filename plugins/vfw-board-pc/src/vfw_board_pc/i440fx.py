"""The i440FX host bridge and the PIIX3 PCI-to-ISA bridge (as guests see them on PCI).

The host bridge owns bus ``pci.0`` and configuration mechanism #1 (0xcf8/0xcfc). PIIX3's PIRQ
route registers (0x60-0x63) are kept for guests that read them; vfw routes PCI interrupts
with the fixed table the board's ACPI ``_PRT`` describes, as QEMU's ACPI-built pc does.
"""

from __future__ import annotations

from vfw.pci import PCIDevice
from vfw.qom import register_type


@register_type
class I440FXHostBridge(PCIDevice):
    """00:00.0, Intel 82441FX PMC."""

    TYPE = "i440FX"
    DESC = "Host bridge"
    CATEGORY = "bridge"
    USER_CREATABLE = False
    VENDOR_ID = 0x8086
    DEVICE_ID = 0x1237
    REVISION = 0x02
    CLASS_ID = 0x0600


@register_type
class PIIX3ISABridge(PCIDevice):
    """00:01.0, Intel 82371SB PIIX3 ISA bridge (multi-function)."""

    TYPE = "PIIX3"
    DESC = "ISA bridge"
    CATEGORY = "bridge"
    USER_CREATABLE = False
    VENDOR_ID = 0x8086
    DEVICE_ID = 0x7000
    CLASS_ID = 0x0601

    def reset(self) -> None:
        super().reset()
        for reg in range(0x60, 0x64):
            self.config[reg] = 0x80  # PIRQ routing disabled, as at power-on
