/* tcgbench: the 32-bit half of benchmarks/tcg.py's guest. Multiboot starts it in protected mode
 * without paging; it reads the command line, builds 4-level page tables (4 KiB pages, identity
 * map of the first 8 MiB) and enters long mode with paging on (tcgloops.S), where one of the
 * 64-bit loops runs.
 *
 * Command line: "loop=alu|sieve|fib n=NUMBER" (n < 2^32). The 64-bit side prints
 * "R=<16 hex digits>\n" (the loop's result) on COM1 and ends the VM through isa-debug-exit
 * with 0, i.e. status 1. Status 5 (code 2): unknown loop; 7 (code 3): not multiboot. */
#include "guest.h"

#define MAP_MIB 8
#define PT_PAGES (MAP_MIB / 2)

/* Page tables (tcgloops.S loads CR3 with pml4). Filled completely here, not trusted to a
 * zeroed .bss. */
u64 pml4[512] __attribute__((aligned(4096)));
u64 pdpt[512] __attribute__((aligned(4096)));
u64 pd[512] __attribute__((aligned(4096)));
u64 pt[PT_PAGES][512] __attribute__((aligned(4096)));

void enter_long_mode(u32 loop, u32 n) __attribute__((noreturn));   /* tcgloops.S */

static const char *word_value(const char *cmdline, const char *key)
{
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ')
            continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) {
            k++;
            q++;
        }
        if (!*k && *q == '=')
            return q + 1;
    }
    return 0;
}

static int value_is(const char *v, const char *want)
{
    if (!v)
        return 0;
    while (*want && *v == *want) {
        v++;
        want++;
    }
    return !*want && (*v == 0 || *v == ' ');
}

static void build_page_tables(void)
{
    enum { P = 1, RW = 2 };
    for (u32 i = 0; i < 512; i++) {
        pml4[i] = 0;
        pdpt[i] = 0;
        pd[i] = 0;
    }
    pml4[0] = (u32)pdpt | P | RW;
    pdpt[0] = (u32)pd | P | RW;
    for (u32 t = 0; t < PT_PAGES; t++) {
        pd[t] = (u32)pt[t] | P | RW;
        for (u32 i = 0; i < 512; i++)
            pt[t][i] = ((u64)(t * 512 + i) << 12) | P | RW;
    }
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    if (magic != 0x2BADB002)
        debug_exit(3);
    const char *cmdline = (info->flags & 4) ? (const char *)info->cmdline : "";
    const char *loop = word_value(cmdline, "loop");
    const char *nv = word_value(cmdline, "n");
    u32 n = 0;
    for (; nv && *nv >= '0' && *nv <= '9'; nv++)
        n = n * 10 + (u32)(*nv - '0');
    u32 id;
    if (value_is(loop, "alu"))
        id = 0;
    else if (value_is(loop, "sieve"))
        id = 1;
    else if (value_is(loop, "fib"))
        id = 2;
    else
        debug_exit(2);
    build_page_tables();
    enter_long_mode(id, n);
}
