/* Shared helpers for vfw's multiboot test guests: port I/O, COM1, fw_cfg, debug exit. */
#ifndef VFW_GUEST_H
#define VFW_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct multiboot_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr;
};

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

static void putc(char c)
{
    while (!(inb(COM1 + 5) & 0x20))
        ;   /* wait for THR empty */
    outb(COM1, (u8)c);
}

static void puts(const char *s)
{
    while (*s) {
        if (*s == '\n')
            putc('\r');
        putc(*s++);
    }
}

static void putu(u32 v)
{
    char buf[11];
    int i = 10;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

static void puthex(u32 v)
{
    static const char digits[] = "0123456789abcdef";
    puts("0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        putc(digits[(v >> shift) & 0xf]);
}

static void uart_init(void)
{
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xc7);   /* FIFO on, cleared */
}

static __attribute__((noreturn)) void debug_exit(u32 code)
{
    outl(DEBUG_EXIT_PORT, code);   /* vfw and QEMU exit with (code << 1) | 1 */
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* fw_cfg, traditional interface: select a key, then read bytes from the data port. */
#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511

static void fw_cfg_read(u16 key, void *buf, u32 len)
{
    u8 *p = buf;
    outw(FW_CFG_SELECTOR, key);
    for (u32 i = 0; i < len; i++)
        p[i] = inb(FW_CFG_DATA);
}

/* "key=NUMBER" in a command line, or the default. */
static u32 cmdline_number(const char *cmdline, const char *key, u32 fallback)
{
    for (const char *p = cmdline; p && *p; p++) {
        const char *k = key, *q = p;
        while (*k && *q == *k) {
            k++;
            q++;
        }
        if (!*k && *q == '=') {
            u32 v = 0;
            for (q++; *q >= '0' && *q <= '9'; q++)
                v = v * 10 + (u32)(*q - '0');
            return v;
        }
    }
    return fallback;
}

#endif
