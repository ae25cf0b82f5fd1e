/* Multiboot v1 entry for vfw's test guests: header, a stack, then guest_main(magic, info). */
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002            /* magic */
    .long 0x00000003            /* flags: page-align modules, want memory info */
    .long -(0x1BADB002 + 0x00000003)

    .section .text
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    push %ebx                   /* multiboot info */
    push %eax                   /* magic */
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:
