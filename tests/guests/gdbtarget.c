/* gdbtarget: a guest for the gdbstub tests. It calls gdb_target_step (a known symbol to break
 * at, with a few simple instructions to single-step through), then exits through
 * isa-debug-exit with status gdb_exit_code (a global a debugger may change). */
#include "guest.h"

volatile u32 gdb_counter;
volatile u32 gdb_exit_code = 3;

__attribute__((noinline)) void gdb_target_step(u32 value)
{
    gdb_counter += value;
    gdb_counter ^= 0x5a;
    gdb_counter += 7;
}

void guest_main(u32 magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    uart_init();
    puts("vfw-guest: gdbtarget\n");
    gdb_target_step(0x1234);
    puts("vfw-guest: gdbtarget done\n");
    debug_exit(gdb_exit_code);
}
