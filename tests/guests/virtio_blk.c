/* virtio_blk: finds the first virtio-blk PCI function, assigns its BARs like firmware, drives it
 * through the virtio 1.x modern interface by polling, and checks sector I/O:
 *   read sector 0, write a pattern to sector `sector` (default 1), FLUSH, read it back,
 *   GET_ID. Prints what it did on COM1 and exits through isa-debug-exit: 0 all good, 2 no
 *   device, 3 setup refused, 4 a request failed, 5 read-back mismatch.
 * "hang=1" on the command line: after the flush completes print "flushed" and spin forever
 * (the durability test kills vfw at that point). */
#include "guest.h"

#define VENDOR_VIRTIO 0x1af4
#define DEVICE_BLK 0x1042
#define BAR_BASE 0xc0000000u

#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define QSIZE 8

static u32 cfg_addr(u32 bdf, u8 reg) { return 0x80000000u | (bdf << 8) | (reg & 0xfc); }
static u32 cfg_read32(u32 bdf, u8 reg) { outl(0xcf8, cfg_addr(bdf, reg)); return inl(0xcfc); }
static void cfg_write32(u32 bdf, u8 reg, u32 v) { outl(0xcf8, cfg_addr(bdf, reg)); outl(0xcfc, v); }
static u8 cfg_read8(u32 bdf, u8 reg) { return (u8)(cfg_read32(bdf, reg) >> (8 * (reg & 3))); }

static inline u8 rd8(u32 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u32 a) { return *(volatile u16 *)a; }
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
static u32 common, notify, device;

static void bzero(void *p, u32 n) { volatile u8 *b = p; while (n--) *b++ = 0; }

static int request(u32 type, u64 sector, int write_data, u32 data_len)
{
    static u16 idx;
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xff;
    vq.d[0] = (struct desc){ (u32)&hdr, 16, 1, 1 };
    int n = 1;
    if (data_len) {
        vq.d[1] = (struct desc){ (u32)data, data_len, (u16)(1 | (write_data ? 0 : 2)), 2 };
        n = 2;
    } else {
        vq.d[0].next = 2;
    }
    vq.d[2] = (struct desc){ (u32)&status, 1, 2, 0 };
    (void)n;
    vq.ring[idx % QSIZE] = 0;
    barrier();
    vq.avail_idx = ++idx;
    barrier();
    wr16(notify, 0);
    for (u32 spin = 0; vq.used_idx != idx; spin++)
        if (spin > 400000000u) {
            puts("virtio-blk: timeout\n");
            return -1;
        }
    barrier();
    return status;
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    uart_init();
    const char *cmdline = (magic == 0x2BADB002 && (info->flags & 4)) ? (const char *)info->cmdline : "";
    u32 sector = cmdline_number(cmdline, "sector", 1);
    u32 bdf = 0xffffffffu;
    for (u32 d = 0; d < 32 * 8; d += 8)
        if (cfg_read32(d, 0) == (DEVICE_BLK << 16 | VENDOR_VIRTIO)) {
            bdf = d;
            break;
        }
    if (bdf == 0xffffffffu) {
        puts("virtio-blk: no device\n");
        debug_exit(2);
    }
    /* BAR4 (64-bit, 16 KiB) and BAR1 (MSI-X): fixed addresses in the PCI hole. */
    cfg_write32(bdf, 0x10 + 4 * 4, BAR_BASE);
    cfg_write32(bdf, 0x10 + 4 * 5, 0);
    cfg_write32(bdf, 0x10 + 4 * 1, BAR_BASE + 0x10000);
    cfg_write32(bdf, 0x04, 0x6);    /* memory decoding + bus master */
    u32 notify_mult = 0;
    for (u8 pos = cfg_read8(bdf, 0x34), hops = 0; pos && hops < 48; hops++) {
        if (cfg_read8(bdf, pos) == 0x09) {
            u8 type = cfg_read8(bdf, (u8)(pos + 3));
            u32 bar = cfg_read8(bdf, (u8)(pos + 4));
            u32 addr = (cfg_read32(bdf, (u8)(0x10 + 4 * bar)) & ~0xfu) + cfg_read32(bdf, (u8)(pos + 8));
            if (type == 1 && !common)
                common = addr;
            else if (type == 2 && !notify) {
                notify = addr;
                notify_mult = cfg_read32(bdf, (u8)(pos + 16));
            } else if (type == 4 && !device)
                device = addr;
        }
        pos = cfg_read8(bdf, (u8)(pos + 1));
    }
    if (!common || !notify || !device) {
        puts("virtio-blk: capabilities missing\n");
        debug_exit(3);
    }
    wr8(common + 0x14, 0);
    wr8(common + 0x14, ST_ACK);
    wr8(common + 0x14, ST_ACK | ST_DRIVER);
    wr32(common + 0x00, 1);
    if (!(rd32(common + 0x04) & 1)) {
        puts("virtio-blk: no VERSION_1\n");
        debug_exit(3);
    }
    wr32(common + 0x08, 0);
    wr32(common + 0x0c, 1u << 9);           /* FLUSH */
    wr32(common + 0x08, 1);
    wr32(common + 0x0c, 1);                 /* VERSION_1 */
    wr8(common + 0x14, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(rd8(common + 0x14) & ST_FEATURES_OK)) {
        puts("virtio-blk: FEATURES_OK refused\n");
        debug_exit(3);
    }
    bzero(&vq, sizeof(vq));
    wr16(common + 0x16, 0);
    wr16(common + 0x18, QSIZE);
    wr32(common + 0x20, (u32)&vq.d);
    wr32(common + 0x24, 0);
    wr32(common + 0x28, (u32)&vq.avail_flags);
    wr32(common + 0x2c, 0);
    wr32(common + 0x30, (u32)&vq.used_flags);
    wr32(common + 0x34, 0);
    notify += rd16(common + 0x1e) * notify_mult;
    wr16(common + 0x1c, 1);
    wr8(common + 0x14, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    puts("virtio-blk: capacity ");
    putu(rd32(device));
    puts(" sectors\n");

    if (request(0, 0, 0, 512) != 0)
        debug_exit(4);
    puts("virtio-blk: sector 0 starts ");
    for (int i = 0; i < 8; i++) {
        puthex(data[i]);
        putc(' ');
    }
    puts("\n");
    for (int i = 0; i < 512; i++)
        data[i] = (u8)(i * 7 + sector);
    if (request(1, sector, 1, 512) != 0)
        debug_exit(4);
    if (request(4, 0, 0, 0) != 0)
        debug_exit(4);
    puts("virtio-blk: wrote and flushed sector ");
    putu(sector);
    puts("\n");
    if (cmdline_number(cmdline, "hang", 0)) {
        puts("flushed\n");
        for (;;)
            __asm__ volatile("pause");
    }
    bzero(data, sizeof(data));
    if (request(0, sector, 0, 512) != 0)
        debug_exit(4);
    for (int i = 0; i < 512; i++)
        if (data[i] != (u8)(i * 7 + sector)) {
            puts("virtio-blk: read-back mismatch\n");
            debug_exit(5);
        }
    puts("virtio-blk: read back ok\n");
    if (request(8, 0, 0, 20) != 0)
        debug_exit(4);
    data[20] = 0;
    puts("virtio-blk: serial ");
    puts((const char *)data);
    puts("\n");
    debug_exit(0);
}
