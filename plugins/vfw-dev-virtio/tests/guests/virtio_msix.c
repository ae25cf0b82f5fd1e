/* virtio_msix: a multiboot guest that drives virtio-blk-pci with MSI-X interrupts. It enables
 * its LAPIC, installs an IDT gate for vector 0x41, points MSI-X entry 1 at itself (0xfee00000,
 * data 0x41) and queue 0 at that entry, then issues `count` reads of sector 0 and waits (hlt)
 * for one interrupt per request. Prints "irqs N" and exits 0 when every request interrupted,
 * 4 on a failed request, 6 when an interrupt did not arrive. */
#include "guest.h"

#define VENDOR_VIRTIO 0x1af4
#define DEVICE_BLK 0x1042
#define BAR_BASE 0xc0000000u
#define LAPIC 0xfee00000u
#define VECTOR 0x41
#define QSIZE 8

static u32 cfg_addr(u32 bdf, u8 reg) { return 0x80000000u | (bdf << 8) | (reg & 0xfc); }
static u32 cfg_read32(u32 bdf, u8 reg) { outl(0xcf8, cfg_addr(bdf, reg)); return inl(0xcfc); }
static void cfg_write32(u32 bdf, u8 reg, u32 v) { outl(0xcf8, cfg_addr(bdf, reg)); outl(0xcfc, v); }
static u8 cfg_read8(u32 bdf, u8 reg) { return (u8)(cfg_read32(bdf, reg) >> (8 * (reg & 3))); }
static inline u8 rd8(u32 a) { return *(volatile u8 *)a; }
static inline u32 rd32(u32 a) { return *(volatile u32 *)a; }
static inline void wr8(u32 a, u8 v) { *(volatile u8 *)a = v; }
static inline void wr16(u32 a, u16 v) { *(volatile u16 *)a = v; }
static inline void wr32(u32 a, u32 v) { *(volatile u32 *)a = v; }
#define barrier() __asm__ volatile("" ::: "memory")

struct desc { u64 addr; u32 len; u16 flags, next; };
static struct {
    struct desc d[QSIZE];
    u16 avail_flags, avail_idx, ring[QSIZE], used_event;
    u8 pad[4096 - 16 * QSIZE - 6 - 2 * QSIZE];
    volatile u16 used_flags, used_idx;
    volatile struct { u32 id, len; } used[QSIZE];
    u16 avail_event;
} vq __attribute__((aligned(4096)));
static struct { u32 type, reserved; u64 sector; } hdr __attribute__((aligned(16)));
static u8 data[512] __attribute__((aligned(16)));
static volatile u8 status;
static volatile u32 irqs;
static u32 common, notify;
static struct { u16 off_lo, sel; u8 zero, type; u16 off_hi; } idt[256] __attribute__((aligned(8)));

void irq_handler(void)
{
    irqs++;
    wr32(LAPIC + 0xb0, 0);  /* EOI */
}
/* Interrupts arrive only inside "sti; hlt" (and the next instruction is cli), so the stub
 * returns with "ret $8" (drop CS and EFLAGS) instead of IRET: KVM on a nested AMD host was
 * seen to hand this guest's protected-mode IRET to its emulator, which cannot do it. */
extern char irq_stub[];
__asm__(".globl irq_stub\nirq_stub:\n pushal\n cld\n call irq_handler\n popal\n ret $8\n");

static void setup_interrupts(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    u32 h = (u32)irq_stub;
    idt[VECTOR].off_lo = (u16)h;
    idt[VECTOR].sel = cs;
    idt[VECTOR].type = 0x8e;  /* present, DPL 0, 32-bit interrupt gate */
    idt[VECTOR].off_hi = (u16)(h >> 16);
    struct { u16 limit; u32 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u32)idt };
    __asm__ volatile("lidt %0" :: "m"(idtr));
    outb(0x21, 0xff);   /* mask the 8259s: only MSI-X may interrupt */
    outb(0xa1, 0xff);
    wr32(LAPIC + 0xf0, rd32(LAPIC + 0xf0) | 0x1ff);  /* software enable, spurious 0xff */
    wr32(LAPIC + 0x80, 0);                            /* TPR 0 */
}

static int request(u16 idx)
{
    hdr.type = 0;
    hdr.reserved = 0;
    hdr.sector = 0;
    status = 0xff;
    vq.d[0] = (struct desc){ (u32)&hdr, 16, 1, 1 };
    vq.d[1] = (struct desc){ (u32)data, 512, 1 | 2, 2 };
    vq.d[2] = (struct desc){ (u32)&status, 1, 2, 0 };
    vq.ring[(idx - 1) % QSIZE] = 0;
    barrier();
    vq.avail_idx = idx;
    barrier();
    u32 before = irqs;
    wr16(notify, 0);
    for (u32 spin = 0; irqs == before; spin++) {
        __asm__ volatile("sti; hlt; cli");   /* woken by the interrupt (or the timer) */
        if (spin > 2000000u)
            return -2;
    }
    if (vq.used_idx != idx)
        return -1;
    return status;
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    uart_init();
    const char *cmdline = (magic == 0x2BADB002 && (info->flags & 4)) ? (const char *)info->cmdline : "";
    u32 count = cmdline_number(cmdline, "count", 4);
    u32 bdf = 0xffffffffu;
    for (u32 d = 0; d < 32 * 8; d += 8)
        if (cfg_read32(d, 0) == (DEVICE_BLK << 16 | VENDOR_VIRTIO)) {
            bdf = d;
            break;
        }
    if (bdf == 0xffffffffu)
        debug_exit(2);
    cfg_write32(bdf, 0x10 + 4 * 4, BAR_BASE);
    cfg_write32(bdf, 0x10 + 4 * 5, 0);
    cfg_write32(bdf, 0x10 + 4 * 1, BAR_BASE + 0x10000);
    cfg_write32(bdf, 0x04, 0x6);
    u32 notify_mult = 0;
    u8 msix = 0;
    for (u8 pos = cfg_read8(bdf, 0x34), hops = 0; pos && hops < 48; hops++) {
        u8 id = cfg_read8(bdf, pos);
        if (id == 0x09) {
            u8 type = cfg_read8(bdf, (u8)(pos + 3));
            u32 bar = cfg_read8(bdf, (u8)(pos + 4));
            u32 addr = (cfg_read32(bdf, (u8)(0x10 + 4 * bar)) & ~0xfu) + cfg_read32(bdf, (u8)(pos + 8));
            if (type == 1 && !common)
                common = addr;
            else if (type == 2 && !notify) {
                notify = addr;
                notify_mult = cfg_read32(bdf, (u8)(pos + 16));
            }
        } else if (id == 0x11) {
            msix = pos;
        }
        pos = cfg_read8(bdf, (u8)(pos + 1));
    }
    if (!common || !notify || !msix)
        debug_exit(3);
    setup_interrupts();
    /* MSI-X: table in BAR1 at offset 0 (the capability says so); entry 1 -> vector 0x41. */
    u32 table = BAR_BASE + 0x10000 + (cfg_read32(bdf, (u8)(msix + 4)) & ~7u);
    wr32(table + 16 + 0, LAPIC);
    wr32(table + 16 + 4, 0);
    wr32(table + 16 + 8, VECTOR);
    wr32(table + 16 + 12, 0);
    cfg_write32(bdf, msix, cfg_read32(bdf, msix) | 0x80000000u);  /* MSI-X enable */
    wr8(common + 0x14, 0);
    wr8(common + 0x14, 1);
    wr8(common + 0x14, 1 | 2);
    wr32(common + 0x08, 0);
    wr32(common + 0x0c, 0);
    wr32(common + 0x08, 1);
    wr32(common + 0x0c, 1);                 /* VERSION_1 only: every request interrupts */
    wr8(common + 0x14, 1 | 2 | 8);
    if (!(rd8(common + 0x14) & 8))
        debug_exit(3);
    wr16(common + 0x10, 0xffff);            /* no config interrupts */
    wr16(common + 0x16, 0);
    wr16(common + 0x18, QSIZE);
    wr32(common + 0x20, (u32)&vq.d);
    wr32(common + 0x24, 0);
    wr32(common + 0x28, (u32)&vq.avail_flags);
    wr32(common + 0x2c, 0);
    wr32(common + 0x30, (u32)&vq.used_flags);
    wr32(common + 0x34, 0);
    wr16(common + 0x1a, 1);                 /* queue 0 -> MSI-X entry 1 */
    notify += (u32)(*(volatile u16 *)(common + 0x1e)) * notify_mult;
    wr16(common + 0x1c, 1);
    wr8(common + 0x14, 1 | 2 | 8 | 4);
    for (u32 i = 1; i <= count; i++) {
        int r = request((u16)i);
        if (r == -2) {
            puts("virtio-msix: no interrupt\n");
            debug_exit(6);
        }
        if (r != 0)
            debug_exit(4);
    }
    puts("virtio-msix: irqs ");
    putu(irqs);
    puts("\n");
    debug_exit(irqs == count ? 0 : 6);
}
