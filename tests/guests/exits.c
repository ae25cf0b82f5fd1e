/* exits: a tight loop of N VM exits for benchmarks/kvm_exits.py, then a debug exit with 0.
 *
 * Command line: "mode=pio|mmio|pio3|mmio3 n=NUMBER".
 *   pio   - outb to an unassigned port (EXIT_PORT) at CPL0
 *   mmio  - 32-bit writes to an unassigned address in the PCI hole (EXIT_MMIO) at CPL0
 *   pio3  - the port loop at CPL3 (flat ring-3 segments; the TSS I/O bitmap allows EXIT_PORT,
 *           COM1 and the debug-exit ports, because IOPL is not usable at CPL3 on every KVM)
 *   mmio3 - the MMIO loop at CPL3
 * Just before the loop the guest writes one byte, 'L', to COM1's THR (no UART set-up: both
 * VMMs pass a THR write straight to the chardev), so with -serial stdio the host can time the
 * loop from that byte to the process exit, without the VMM's start-up. Nothing else is printed.
 * An unknown mode exits with status 2. */
#include "guest.h"

#define EXIT_PORT 0x3e0            /* nothing decodes it on QEMU's pc or on vfw's */
#define EXIT_MMIO 0xfebf0000u      /* PCI hole, no BAR there with -nodefaults */

static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }

static volatile u32 loop_n;
static volatile u32 loop_mmio;

static void exit_loop(void)
{
    u32 n = loop_n;
    outb(COM1, 'L');   /* start marker for the host */
    if (loop_mmio) {
        for (; n; n--)
            mmio_write(EXIT_MMIO, n);
    } else {
        for (; n; n--)
            outb(EXIT_PORT, (u8)n);
    }
}

/* ---- ring 3: GDT, TSS with an I/O permission bitmap, sysexit ---- */

#define SEL_CODE0 0x08            /* sysexit needs code0, data0, code3, data3 in a row */
#define SEL_DATA0 0x10
#define SEL_CODE3 0x1b
#define SEL_DATA3 0x23
#define SEL_TSS 0x28
/* Ports past the end of the bitmap (the TSS limit) are denied; the bitmap covers 0-0x3ff,
 * which holds every port used here (the loop port, COM1 for the marker, the debug exit). */
#define IOMAP_BYTES (0x400 / 8)
_Static_assert(EXIT_PORT < 0x400 && COM1 < 0x400 && DEBUG_EXIT_PORT < 0x400, "bitmap");

struct tss {
    u32 link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    u32 eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u32 es, cs, ss, ds, fs, gs, ldt;
    u16 trap, iomap_base;
    u8 iomap[IOMAP_BYTES + 1];   /* + the all-ones terminator byte the CPU may read */
} __attribute__((packed, aligned(16)));

static struct tss tss;
static u64 gdt[6] __attribute__((aligned(16)));
static u8 kernel_stack[4096] __attribute__((aligned(16)));
static u8 user_stack[4096] __attribute__((aligned(16)));

static u64 segment(u32 base, u32 limit, u32 access, u32 flags)
{
    return (u64)(limit & 0xffff) | ((u64)(base & 0xffffff) << 16) | ((u64)access << 40)
        | ((u64)((limit >> 16) & 0xf) << 48) | ((u64)flags << 52) | ((u64)(base >> 24) << 56);
}

static void allow_port(u32 port) { tss.iomap[port / 8] &= (u8)~(1u << (port % 8)); }

static __attribute__((noreturn, used)) void user_main(void)
{
    exit_loop();
    outl(DEBUG_EXIT_PORT, 0);   /* allowed by the bitmap; the VMM exits here */
    for (;;)
        ;
}

static __attribute__((noreturn)) void enter_ring3(void)
{
    for (u32 i = 0; i < sizeof(tss.iomap); i++)
        tss.iomap[i] = 0xff;
    allow_port(EXIT_PORT);
    allow_port(COM1);
    for (u32 p = DEBUG_EXIT_PORT; p < DEBUG_EXIT_PORT + 4; p++)
        allow_port(p);
    tss.ss0 = SEL_DATA0;
    tss.esp0 = (u32)(kernel_stack + sizeof(kernel_stack));
    tss.iomap_base = (u16)__builtin_offsetof(struct tss, iomap);

    gdt[0] = 0;
    gdt[1] = segment(0, 0xfffff, 0x9a, 0xc);   /* ring-0 code, 4 GiB, 32-bit */
    gdt[2] = segment(0, 0xfffff, 0x92, 0xc);   /* ring-0 data */
    gdt[3] = segment(0, 0xfffff, 0xfa, 0xc);   /* ring-3 code */
    gdt[4] = segment(0, 0xfffff, 0xf2, 0xc);   /* ring-3 data */
    /* available 32-bit TSS; the limit ends at the terminator byte, not the padding after it */
    gdt[5] = segment((u32)&tss, __builtin_offsetof(struct tss, iomap) + IOMAP_BYTES, 0x89, 0x0);
    struct {
        u16 limit;
        u32 base;
    } __attribute__((packed)) gdtr = {sizeof(gdt) - 1, (u32)gdt};

    __asm__ volatile(
        "lgdt %0\n"
        "ljmp %1, $1f\n"
        "1: mov %2, %%ax\n"
        "mov %%ax, %%ds\n"
        "mov %%ax, %%es\n"
        "mov %%ax, %%ss\n"
        "mov %%ax, %%fs\n"
        "mov %%ax, %%gs\n"
        "mov %3, %%ax\n"
        "ltr %%ax\n"
        :: "m"(gdtr), "i"(SEL_CODE0), "i"(SEL_DATA0), "i"(SEL_TSS) : "eax", "memory");
    /* sysexit, not iret: KVM's instruction emulator (which runs CPL0 code on nested setups
     * like kvm_pvm) cannot iret or far-return to an outer privilege level in protected mode.
     * sysexit loads CS = SYSENTER_CS + 16 and SS = SYSENTER_CS + 24, both with RPL 3. */
    __asm__ volatile(
        "wrmsr\n"
        "mov %3, %%ax\n"
        "mov %%ax, %%ds\n"
        "mov %%ax, %%es\n"
        "mov %%ax, %%fs\n"
        "mov %%ax, %%gs\n"
        "mov %4, %%ecx\n"
        "mov $user_main, %%edx\n"
        "sysexit\n"
        :: "c"(0x174), "a"(SEL_CODE0), "d"(0), "i"(SEL_DATA3),
           "r"((u32)(user_stack + sizeof(user_stack)))
        : "memory");
    __builtin_unreachable();
}

/* ---- command line ---- */

static int cmdline_is(const char *cmdline, const char *key, const char *value)
{
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ')
            continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) {
            k++;
            q++;
        }
        if (*k || *q != '=')
            continue;
        q++;
        const char *v = value;
        while (*v && *q == *v) {
            v++;
            q++;
        }
        return !*v && (*q == 0 || *q == ' ');
    }
    return 0;
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    if (magic != 0x2BADB002)
        debug_exit(3);
    const char *cmdline = (info->flags & 4) ? (const char *)info->cmdline : "";
    loop_n = cmdline_number(cmdline, "n", 1000);
    if (cmdline_is(cmdline, "mode", "pio") || cmdline_is(cmdline, "mode", "mmio")) {
        loop_mmio = cmdline_is(cmdline, "mode", "mmio");
        exit_loop();
        debug_exit(0);
    }
    if (cmdline_is(cmdline, "mode", "pio3") || cmdline_is(cmdline, "mode", "mmio3")) {
        loop_mmio = cmdline_is(cmdline, "mode", "mmio3");
        enter_ring3();
    }
    debug_exit(2);
}
