/* spin: prints a line through COM1, then halts forever, so a monitor has a live guest to
 * drive (stop, cont, queries) without it ever exiting. Interrupts stay off: there is no IDT,
 * and the PIC of a software accelerator would deliver the timer's. */
#include "guest.h"

volatile u32 spin_count;

void guest_main(u32 magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    uart_init();
    puts("vfw-guest: spin\n");
    for (;;) {
        spin_count++;
        __asm__ volatile("cli; hlt");
    }
}
