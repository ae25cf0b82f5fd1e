/* hello: prints through COM1 what it learns from the multiboot info and fw_cfg, then exits
 * through isa-debug-exit with the status given as "exit=N" on its command line. */
#include "guest.h"

void guest_main(u32 magic, struct multiboot_info *info)
{
    uart_init();
    puts("vfw-guest: hello\n");
    if (magic != 0x2BADB002) {
        puts("bad multiboot magic ");
        puthex(magic);
        puts("\n");
        debug_exit(2);
    }
    const char *cmdline = (info->flags & 4) ? (const char *)info->cmdline : "";
    puts("cmdline: ");
    puts(cmdline);
    puts("\n");
    if (info->flags & 1) {
        puts("mem_lower: ");
        putu(info->mem_lower);
        puts(" KiB, mem_upper: ");
        putu(info->mem_upper);
        puts(" KiB\n");
    }
    char sig[5] = {0};
    fw_cfg_read(0x0000, sig, 4);
    puts("fw_cfg signature: ");
    puts(sig);
    puts("\n");
    u16 cpus = 0;
    fw_cfg_read(0x0005, &cpus, 2);
    puts("fw_cfg cpus: ");
    putu(cpus);
    puts("\n");
    /* action=1: reset through the i8042; 2: ACPI S5 power-off; 3: triple fault. */
    switch (cmdline_number(cmdline, "action", 0)) {
    case 1:
        puts("resetting\n");
        outb(0x64, 0xfe);
        break;
    case 2:
        puts("powering off\n");
        outw(0x604, (5 << 10) | (1 << 13));
        break;
    case 3: {
        puts("triple fault\n");
        static const struct { u16 limit; u32 base; } __attribute__((packed)) empty = {0, 0};
        __asm__ volatile("lidt %0; ud2" :: "m"(empty));
        break;
    }
    }
    debug_exit(cmdline_number(cmdline, "exit", 0));
}
