/* vfw firmware: COM1 console, a small printf, mem* helpers and PM-timer timeouts. */
#include "fw.h"

void uart_init(void)
{
    outb(COM1 + 1, 0x00);   /* no interrupts */
    outb(COM1 + 3, 0x80);   /* DLAB */
    outb(COM1 + 0, 0x01);   /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);   /* 8N1 */
    outb(COM1 + 2, 0xc7);   /* FIFO on, cleared */
}

static void putc(char c)
{
    /* Wait for THR empty, but not forever: a missing UART reads 0xff, a stuck one must not hang. */
    for (u32 spins = 0; spins < 100000 && !(inb(COM1 + 5) & 0x20); spins++)
        ;
    outb(COM1, (u8)c);
}

static void put_str(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            putc('\r');
        putc(*s);
    }
}

static void put_number(u64 v, u32 base, int width, char pad)
{
    static const char digits[] = "0123456789abcdef";
    char buf[24];
    int i = 0;
    do {
        if (base == 16) {
            buf[i++] = digits[v & 0xf];
            v >>= 4;
        } else {            /* decimal: 32-bit only (no libgcc for 64-bit division) */
            u32 w = (u32)v;
            buf[i++] = digits[w % 10];
            v = w / 10;
        }
    } while (v && i < (int)sizeof(buf));
    while (i < width && i < (int)sizeof(buf))
        buf[i++] = pad;
    while (i)
        putc(buf[--i]);
}

/* %s %c %u %d %x %llx with an optional width and 0 flag; that is all the firmware needs. */
void print(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            if (*fmt == '\n')
                putc('\r');
            putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longs++;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            put_str(s ? s : "(null)");
            break;
        }
        case 'c':
            putc((char)__builtin_va_arg(ap, int));
            break;
        case 'd': {
            int v = __builtin_va_arg(ap, int);
            if (v < 0) {
                putc('-');
                v = -v;
            }
            put_number((u32)v, 10, width, pad);
            break;
        }
        case 'u':
            put_number(__builtin_va_arg(ap, u32), 10, width, pad);
            break;
        case 'x':
            if (longs >= 2)
                put_number(__builtin_va_arg(ap, u64), 16, width, pad);
            else
                put_number(__builtin_va_arg(ap, u32), 16, width, pad);
            break;
        case '%':
            putc('%');
            break;
        case 0:
            fmt--;
            break;
        default:
            putc('%');
            putc(*fmt);
        }
    }
    __builtin_va_end(ap);
}

void *memset(void *dst, int c, size_t n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

#define PM_TIMER_HZ 3579545u
#define PM_TIMER_MASK 0xffffffu
#define SPIN_LIMIT 2000000u

static u32 pm_timer(void) { return inl(ACPI_PM_TMR) & PM_TIMER_MASK; }

void timeout_start(struct timeout *t, u32 ms)
{
    t->last = pm_timer();
    t->ticks = 0;
    t->limit = ms * (PM_TIMER_HZ / 1000);
    t->spins = 0;
}

int timeout_expired(struct timeout *t)
{
    u32 now = pm_timer();
    t->ticks += (now - t->last) & PM_TIMER_MASK;
    t->last = now;
    return t->ticks >= t->limit || ++t->spins >= SPIN_LIMIT;
}
