/* vfw firmware: PCI bus 0 through 0xcf8/0xcfc — list functions, assign BARs, enable decoding. */
#include "fw.h"

#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_CLASS_REVISION 0x08
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4

/* The PCI hole: memory BARs from 0xC0000000 (or above low RAM), I/O BARs from 0xC000. */
#define PCI_MEM_BASE 0xc0000000u
#define PCI_MEM_END 0xfec00000u     /* the IOAPIC; nothing of ours goes at or above it */
#define PCI_IO_BASE 0xc000u
#define PCI_IO_END 0x10000u

/* PIIX4 power management function (QEMU's 00:01.3): PMBA at 0x40, PMREGMISC bit 0 at 0x80. */
#define PIIX4_PM_VENDOR 0x8086
#define PIIX4_PM_DEVICE 0x7113
#define PIIX4_PMBA 0x40
#define PIIX4_PMREGMISC 0x80

static u32 config_address(u32 bdf, u8 reg) { return 0x80000000u | (bdf << 8) | (reg & 0xfc); }

u32 pci_read32(u32 bdf, u8 reg)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    return inl(PCI_CONFIG_DATA);
}

u16 pci_read16(u32 bdf, u8 reg)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    return inw(PCI_CONFIG_DATA + (reg & 2));
}

u8 pci_read8(u32 bdf, u8 reg)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    return inb(PCI_CONFIG_DATA + (reg & 3));
}

void pci_write32(u32 bdf, u8 reg, u32 v)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    outl(PCI_CONFIG_DATA, v);
}

void pci_write16(u32 bdf, u8 reg, u16 v)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    outw(PCI_CONFIG_DATA + (reg & 2), v);
}

void pci_write8(u32 bdf, u8 reg, u8 v)
{
    outl(PCI_CONFIG_ADDRESS, config_address(bdf, reg));
    outb(PCI_CONFIG_DATA + (reg & 3), v);
}

static u32 mem_next, io_next;

static u32 align_up(u32 v, u32 align) { return (v + align - 1) & ~(align - 1); }

/* Give one BAR an address (unless the board already did) and return the number of BAR slots it
   uses (2 for a 64-bit memory BAR). */
static int assign_bar(u32 bdf, int index)
{
    u8 reg = (u8)(PCI_BAR0 + 4 * index);
    u32 old = pci_read32(bdf, reg);
    int is64 = !(old & 1) && (old & 6) == 4;
    pci_write32(bdf, reg, 0xffffffffu);
    u32 mask = pci_read32(bdf, reg);
    u32 old_hi = 0, mask_hi = 0xffffffffu;
    if (is64 && index < 5) {
        old_hi = pci_read32(bdf, (u8)(reg + 4));
        pci_write32(bdf, (u8)(reg + 4), 0xffffffffu);
        mask_hi = pci_read32(bdf, (u8)(reg + 4));
    }
    int slots = is64 ? 2 : 1;
    if (mask == 0 || mask == 0xffffffffu) {     /* unimplemented BAR (or nothing answering) */
        pci_write32(bdf, reg, old);
        return 1;
    }
    const char *kind;
    u32 size, addr;
    if (mask & 1) {                             /* I/O */
        kind = "io";
        size = ~((mask & 0xfffffffcu) | 0xffff0000u) + 1;
        addr = old & 0xfffffffcu;
        if (!addr) {
            addr = align_up(io_next, size);
            if (addr + size > PCI_IO_END || addr < io_next) {
                print("  BAR%d io size 0x%x: no room\n", index, size);
                pci_write32(bdf, reg, old);
                return slots;
            }
            io_next = addr + size;
        }
    } else {
        kind = is64 ? "mem64" : "mem";
        size = ~(mask & 0xfffffff0u) + 1;
        addr = old & 0xfffffff0u;
        if (mask_hi != 0xffffffffu) {           /* 4 GiB or more: not for a 32-bit firmware */
            print("  BAR%d %s: too large, left unassigned\n", index, kind);
            pci_write32(bdf, reg, old);
            if (is64)
                pci_write32(bdf, (u8)(reg + 4), old_hi);
            return slots;
        }
        if (!addr && !old_hi) {
            u32 align = size < 0x1000 ? 0x1000 : size;
            addr = align_up(mem_next, align);
            if (addr < mem_next || addr + size > PCI_MEM_END || addr + size < addr) {
                print("  BAR%d %s size 0x%x: no room\n", index, kind, size);
                pci_write32(bdf, reg, old);
                if (is64)
                    pci_write32(bdf, (u8)(reg + 4), old_hi);
                return slots;
            }
            mem_next = addr + size;
        } else if (old_hi) {                    /* kept above 4 GiB: out of our reach */
            pci_write32(bdf, reg, old);
            pci_write32(bdf, (u8)(reg + 4), old_hi);
            print("  BAR%d %s above 4 GiB, kept\n", index, kind);
            return slots;
        }
    }
    pci_write32(bdf, reg, addr | (old & ((mask & 1) ? 0x3 : 0xf)));
    if (is64)
        pci_write32(bdf, (u8)(reg + 4), 0);
    print("  BAR%d %s 0x%x size 0x%x\n", index, kind, addr, size);
    return slots;
}

/* Program QEMU's PIIX4 PM function like a BIOS does so its ACPI block (PM1a_CNT, PM timer)
   decodes at 0x600; a board with the block fixed there ignores this. */
static void piix4_pm_setup(u32 bdf)
{
    pci_write32(bdf, PIIX4_PMBA, ACPI_PM_BASE | 1);
    pci_write8(bdf, PIIX4_PMREGMISC, 0x01);
    print("  ACPI PM I/O at 0x%x\n", ACPI_PM_BASE);
}

#define MAX_VIRTIO 8
static struct {
    u32 bdf;
    u16 device, subsystem;
} virtio_devs[MAX_VIRTIO];
static int nr_virtio;

static void setup_function(u32 bdf)
{
    u32 id = pci_read32(bdf, PCI_VENDOR_ID);
    u16 vendor = (u16)id, device = (u16)(id >> 16);
    u32 class = pci_read32(bdf, PCI_CLASS_REVISION) >> 8;
    u8 header = pci_read8(bdf, PCI_HEADER_TYPE) & 0x7f;
    print("00:%02x.%x %04x:%04x class %06x\n", bdf >> 3, bdf & 7, vendor, device, class);
    if (header != 0)
        return;     /* bridges and cardbus: bus 0 only, nothing to assign */
    u16 command = pci_read16(bdf, PCI_COMMAND);
    pci_write16(bdf, PCI_COMMAND, command & (u16)~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
    for (int i = 0; i < 6;)
        i += assign_bar(bdf, i);
    pci_write16(bdf, PCI_COMMAND,
                command | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    if (vendor == PIIX4_PM_VENDOR && device == PIIX4_PM_DEVICE)
        piix4_pm_setup(bdf);
    if (vendor == 0x1af4 && nr_virtio < MAX_VIRTIO) {
        virtio_devs[nr_virtio].bdf = bdf;
        virtio_devs[nr_virtio].device = device;
        virtio_devs[nr_virtio].subsystem = pci_read16(bdf, PCI_SUBSYSTEM_ID);
        nr_virtio++;
    }
}

void pci_setup(u32 low_ram_top)
{
    mem_next = PCI_MEM_BASE;
    if (low_ram_top > mem_next)
        mem_next = align_up(low_ram_top, 0x10000000u);
    io_next = PCI_IO_BASE;
    nr_virtio = 0;
    print("PCI bus 0:\n");
    for (u32 slot = 0; slot < 32; slot++) {
        u32 bdf = slot << 3;
        if (pci_read16(bdf, PCI_VENDOR_ID) == 0xffff)
            continue;
        int functions = (pci_read8(bdf, PCI_HEADER_TYPE) & 0x80) ? 8 : 1;
        for (int fn = 0; fn < functions; fn++)
            if (pci_read16(bdf + fn, PCI_VENDOR_ID) != 0xffff)
                setup_function(bdf + fn);
    }
    for (int i = 0; i < nr_virtio; i++)
        virtio_probe(virtio_devs[i].bdf, virtio_devs[i].device, virtio_devs[i].subsystem);
}

/* The CPU-visible address of a memory BAR below 4 GiB, or 0. */
u32 pci_bar_address(u32 bdf, u8 bar)
{
    if (bar > 5)
        return 0;
    u8 reg = (u8)(PCI_BAR0 + 4 * bar);
    u32 lo = pci_read32(bdf, reg);
    if (lo & 1)
        return 0;
    if ((lo & 6) == 4 && (bar == 5 || pci_read32(bdf, (u8)(reg + 4)) != 0))
        return 0;
    return lo & 0xfffffff0u;
}
