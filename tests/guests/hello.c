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
    debug_exit(cmdline_number(cmdline, "exit", 0));
}
