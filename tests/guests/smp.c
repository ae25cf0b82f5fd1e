/* smp: the BSP wakes every AP with INIT-SIPI-SIPI through the local APIC; each AP runs a
 * real-mode trampoline that counts itself in; the BSP prints the count and exits with it. */
#include "guest.h"

#define LAPIC 0xfee00000u
#define ICR_LOW (LAPIC + 0x300)
#define ICR_HIGH (LAPIC + 0x310)
#define TRAMPOLINE 0x8000u
#define COUNTER 0x7000u   /* the trampoline increments this dword */

static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read(u32 addr) { return *(volatile u32 *)addr; }

/* 16-bit code: lock inc [COUNTER]; cli; hlt loop. Position-independent, copied to 0x8000. */
extern const u8 trampoline_start[], trampoline_end[];
__asm__(
    ".code16\n"
    ".globl trampoline_start\n"
    "trampoline_start:\n"
    "  cli\n"
    "  xor %ax, %ax\n"
    "  mov %ax, %ds\n"
    "  lock incl 0x7000\n"
    "1: hlt\n"
    "  jmp 1b\n"
    ".globl trampoline_end\n"
    "trampoline_end:\n"
    ".code32\n");

static void delay(u32 loops)
{
    for (volatile u32 i = 0; i < loops; i++)
        ;
}

static void send_ipi(u32 low)
{
    mmio_write(ICR_HIGH, 0);
    mmio_write(ICR_LOW, low);
    while (mmio_read(ICR_LOW) & (1u << 12))
        ;   /* delivery status */
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    (void)magic;
    uart_init();
    const char *cmdline = (info->flags & 4) ? (const char *)info->cmdline : "";
    u32 expected = cmdline_number(cmdline, "cpus", 1);
    volatile u32 *counter = (volatile u32 *)COUNTER;
    *counter = 1;   /* the BSP */
    u8 *dst = (u8 *)TRAMPOLINE;
    for (const u8 *p = trampoline_start; p < trampoline_end; p++)
        *dst++ = *p;
    mmio_write(LAPIC + 0xf0, mmio_read(LAPIC + 0xf0) | 0x100);   /* software-enable */
    send_ipi(0x000c4500);   /* INIT, all excluding self */
    delay(100000);
    send_ipi(0x000c4600 | (TRAMPOLINE >> 12));   /* SIPI */
    delay(10000);
    send_ipi(0x000c4600 | (TRAMPOLINE >> 12));
    for (u32 spin = 0; spin < 200000000u && *counter < expected; spin++)
        delay(10);
    puts("vfw-guest: smp cpus=");
    putu(*counter);
    puts("\n");
    debug_exit(*counter);
}
