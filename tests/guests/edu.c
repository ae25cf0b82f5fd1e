/* edu: a driver for QEMU's educational PCI device (1234:11e8). Finds it on PCI bus 0, gives
 * BAR0 an address in the PCI hole, checks identification and liveness, computes factorials
 * with the completion interrupt over INTx (seen in the i8259's IRR) and over MSI (seen in the
 * local APIC's IRR), moves data through the device buffer by DMA and checks that an
 * out-of-range DMA request changes nothing. Interrupts stay disabled (cli): the guest checks
 * that the interrupt controllers latched the request, which needs no IDT.
 * Exits through isa-debug-exit with 42 when every check passed, else with the failure count. */
#include "guest.h"

#define EDU_ID 0x11e81234u      /* device << 16 | vendor */
#define PCI_MEM_BASE 0xc0000000u
#define LAPIC 0xfee00000u
#define MSI_VECTOR 0x41
#define SPIN_LIMIT 20000000u

#define REG_ID 0x00
#define REG_LIVENESS 0x04
#define REG_FACT 0x08
#define REG_STATUS 0x20
#define REG_IRQ_STATUS 0x24
#define REG_IRQ_ACK 0x64
#define REG_DMA_SRC 0x80
#define REG_DMA_DST 0x88
#define REG_DMA_COUNT 0x90
#define REG_DMA_CMD 0x98
#define DMA_BUFFER 0x40000u

static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read(u32 addr) { return *(volatile u32 *)addr; }

static u32 cfg_addr(u32 bdf, u8 reg) { return 0x80000000u | (bdf << 8) | (reg & 0xfc); }

static u32 cfg_read32(u32 bdf, u8 reg)
{
    outl(0xcf8, cfg_addr(bdf, reg));
    return inl(0xcfc);
}

static void cfg_write32(u32 bdf, u8 reg, u32 v)
{
    outl(0xcf8, cfg_addr(bdf, reg));
    outl(0xcfc, v);
}

static void cfg_write16(u32 bdf, u8 reg, u16 v)
{
    outl(0xcf8, cfg_addr(bdf, reg));
    outw((u16)(0xcfc + (reg & 2)), v);
}

static u16 cfg_read16(u32 bdf, u8 reg) { return (u16)(cfg_read32(bdf, reg) >> (8 * (reg & 2))); }

static int failures;

static void check(int ok, const char *what)
{
    puts(ok ? "ok: " : "FAIL: ");
    puts(what);
    puts("\n");
    if (!ok)
        failures++;
}

static u32 bar;

/* Wait until the given register's bits clear; 0 if they never do. */
static int wait_clear(u32 reg, u32 bits)
{
    for (u32 i = 0; i < SPIN_LIMIT; i++)
        if (!(mmio_read(bar + reg) & bits))
            return 1;
    return 0;
}

/* The i8259 pair's IRR (OCW3 "read IRR"), IRQ n at bit n. */
static u32 pic_irr(void)
{
    outb(0x20, 0x0a);
    outb(0xa0, 0x0a);
    return inb(0x20) | ((u32)inb(0xa0) << 8);
}

static int lapic_irr(u32 vector)
{
    return (mmio_read(LAPIC + 0x200 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static u8 src_buf[256], dst_buf[256];

static int dma(u32 src, u32 dst, u32 count, u32 cmd)
{
    mmio_write(bar + REG_DMA_SRC, src);
    mmio_write(bar + REG_DMA_DST, dst);
    mmio_write(bar + REG_DMA_COUNT, count);
    mmio_write(bar + REG_DMA_CMD, cmd | 1);
    return wait_clear(REG_DMA_CMD, 1);
}

static u32 find_edu(void)
{
    for (u32 slot = 0; slot < 32; slot++)
        if (cfg_read32(slot << 3, 0) == EDU_ID)
            return slot << 3;
    return 0xffffffffu;
}

static void factorial_intx(u32 bdf)
{
    u32 before = pic_irr();
    mmio_write(bar + REG_STATUS, 0x80);   /* interrupt when done */
    mmio_write(bar + REG_FACT, 10);
    check(wait_clear(REG_STATUS, 1), "factorial finishes");
    check(mmio_read(bar + REG_FACT) == 3628800, "10! = 3628800");
    check(mmio_read(bar + REG_IRQ_STATUS) == 1, "interrupt status says factorial");
    check(cfg_read16(bdf, 0x06) & 0x8, "PCI status shows INTx asserted");
    u32 raised = pic_irr() & ~before & 0xfe00;   /* PCI INTx reaches IRQ 9-15 */
    int irq = -1;
    for (int i = 9; i < 16; i++)
        if (raised & (1u << i))
            irq = i;
    check(irq >= 0, "i8259 latched the INTx interrupt");
    if (irq >= 0) {
        puts("vfw-guest: edu INTx irq=");
        putu((u32)irq);
        puts("\n");
    }
    mmio_write(bar + REG_IRQ_ACK, 1);
    check(mmio_read(bar + REG_IRQ_STATUS) == 0, "acknowledge clears interrupt status");
    check(!(cfg_read16(bdf, 0x06) & 0x8), "acknowledge deasserts INTx");
}

static u8 find_msi(u32 bdf)
{
    if (!(cfg_read16(bdf, 0x06) & 0x10))
        return 0;
    u8 ptr = (u8)cfg_read32(bdf, 0x34) & 0xfc;
    for (int n = 0; ptr && n < 48; n++) {
        u32 head = cfg_read32(bdf, ptr);
        if ((head & 0xff) == 0x05)
            return ptr;
        ptr = (u8)(head >> 8) & 0xfc;
    }
    return 0;
}

static void factorial_msi(u32 bdf)
{
    u8 cap = find_msi(bdf);
    check(cap != 0, "MSI capability present");
    if (!cap)
        return;
    mmio_write(LAPIC + 0xf0, mmio_read(LAPIC + 0xf0) | 0x100);   /* software-enable */
    mmio_write(LAPIC + 0x80, 0);                                  /* TPR: accept all */
    u32 apic_id = mmio_read(LAPIC + 0x20) >> 24;
    u16 control = cfg_read16(bdf, (u8)(cap + 2));
    int is64 = control & 0x80;
    cfg_write32(bdf, (u8)(cap + 4), LAPIC | (apic_id << 12));
    if (is64)
        cfg_write32(bdf, (u8)(cap + 8), 0);
    cfg_write16(bdf, (u8)(cap + (is64 ? 0x0c : 0x08)), MSI_VECTOR);
    cfg_write16(bdf, (u8)(cap + 2), (u16)(control | 1));
    check(cfg_read16(bdf, (u8)(cap + 2)) & 1, "MSI enabled");
    check(!lapic_irr(MSI_VECTOR), "vector idle before");
    mmio_write(bar + REG_STATUS, 0x80);
    mmio_write(bar + REG_FACT, 12);
    check(wait_clear(REG_STATUS, 1), "factorial finishes");
    check(mmio_read(bar + REG_FACT) == 479001600, "12! = 479001600");
    check(mmio_read(bar + REG_IRQ_STATUS) == 1, "interrupt status says factorial");
    int seen = 0;
    for (u32 i = 0; i < 100000 && !seen; i++)
        seen = lapic_irr(MSI_VECTOR);
    check(seen, "local APIC latched the MSI vector");
    if (seen)
        puts("vfw-guest: edu MSI vector=65\n");
    check(!(cfg_read16(bdf, 0x06) & 0x8), "no INTx while MSI is on");
    mmio_write(bar + REG_IRQ_ACK, 1);
    mmio_write(LAPIC + 0xb0, 0);   /* EOI (nothing in service; harmless) */
}

static void dma_checks(void)
{
    for (u32 i = 0; i < sizeof(src_buf); i++)
        src_buf[i] = (u8)(i * 7 + 3);
    check(dma((u32)src_buf, DMA_BUFFER + 0x100, sizeof(src_buf), 0x4), "DMA RAM->device ends");
    check(mmio_read(bar + REG_IRQ_STATUS) == 0x100, "DMA completion interrupt");
    mmio_write(bar + REG_IRQ_ACK, 0x100);
    /* Out of range (starts below the buffer): the device must refuse and change nothing. */
    check(dma((u32)dst_buf, DMA_BUFFER - 0x10, 0x20, 0), "out-of-range DMA ends");
    check(dma(DMA_BUFFER + 0x100, (u32)dst_buf, sizeof(dst_buf), 0x2), "DMA device->RAM ends");
    int same = 1;
    for (u32 i = 0; i < sizeof(dst_buf); i++)
        same &= dst_buf[i] == src_buf[i];
    check(same, "data came back unchanged");
    if (same)
        puts("vfw-guest: edu DMA ok\n");
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    uart_init();
    puts("vfw-guest: edu\n");
    u32 bdf = find_edu();
    if (bdf == 0xffffffffu) {
        puts("vfw-guest: edu: no 1234:11e8 on PCI bus 0\n");
        debug_exit(100);
    }
    puts("vfw-guest: edu found at 00:");
    putu(bdf >> 3);
    puts(".0\n");
    u16 command = cfg_read16(bdf, 0x04);
    cfg_write16(bdf, 0x04, (u16)(command & ~0x3));
    cfg_write32(bdf, 0x10, 0xffffffffu);
    u32 size = ~(cfg_read32(bdf, 0x10) & 0xfffffff0u) + 1;
    bar = PCI_MEM_BASE;   /* 1 GiB aligned: fits any BAR up to that size */
    cfg_write32(bdf, 0x10, bar);
    cfg_write16(bdf, 0x04, (u16)(command | 0x2 | 0x4));   /* memory decoding, bus master */
    puts("BAR0 ");
    puthex(bar);
    puts(" size ");
    puthex(size);
    puts("\n");
    check(size == 0x100000, "BAR0 is 1 MiB");
    u32 id = mmio_read(bar + REG_ID);
    check(id == 0x010000ed, "identification 0x010000ed");
    mmio_write(bar + REG_LIVENESS, 0x12345678);
    check(mmio_read(bar + REG_LIVENESS) == 0xedcba987, "liveness check inverts");
    factorial_intx(bdf);
    factorial_msi(bdf);
    dma_checks();
    if (failures) {
        puts("vfw-guest: edu failures=");
        putu((u32)failures);
        puts("\n");
        debug_exit((u32)failures);
    }
    puts("vfw-guest: edu ok\n");
    debug_exit(42);
}
