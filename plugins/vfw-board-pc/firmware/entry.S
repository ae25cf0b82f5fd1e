/* vfw firmware entry: the reset vector, real mode -> 32-bit flat protected mode, then C.
 *
 * The CPU starts at 0xFFFFFFF0 in real mode with CS base 0xFFFF0000, IP 0xFFF0. The 16-bit code
 * and its GDT live in .reset16, which the linker script places at 0xFFFFFF00 (offset 0xFF00 in
 * that segment) so that every 16-bit address here is an assembly-time constant.
 */
#define CODE_SEL 0x08
#define DATA_SEL 0x10
#define RESET16_OFFSET 0xff00           /* .reset16's offset from CS base 0xFFFF0000 */

    .section .reset16, "ax"
    .code16
reset16_start:
entry16:
    cli
    cld
    lgdtl %cs:(RESET16_OFFSET + gdt_desc - reset16_start)
    movl %cr0, %eax
    andl $0x9fffffff, %eax              /* caches on: clear CD and NW */
    orl $1, %eax                        /* PE */
    movl %eax, %cr0
    ljmpl $CODE_SEL, $entry32

    /* Flat 4 GiB segments, accessed bit preset so the CPU never writes to this (ROM) table. */
    .balign 8, 0
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff            /* 0x08: code, base 0, limit 4 GiB, 32-bit */
    .quad 0x00cf93000000ffff            /* 0x10: data, base 0, limit 4 GiB */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .org 0xf0, 0xff
reset_vector:                           /* 0xFFFFFFF0 */
    jmp entry16
    .org 0x100, 0xff

    .section .text.entry32, "ax"
    .code32
    .globl entry32
entry32:
    movw $DATA_SEL, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $__stack_top, %esp
    movl $__data_load, %esi             /* .data: ROM image -> RAM */
    movl $__data_start, %edi
    movl $__data_words, %ecx
    rep movsl
    movl $__bss_start, %edi             /* .bss: zero */
    movl $__bss_words, %ecx
    xorl %eax, %eax
    rep stosl
    call fw_main
1:  cli
    hlt
    jmp 1b
