/* tcgloops: the 64-bit half of benchmarks/tcg.py's guest.
 *
 * enter_long_mode(loop, n) (cdecl, called from tcgbench.c in 32-bit protected mode) turns on
 * PAE, loads CR3 with the page tables tcgbench.c built, sets EFER.LME, turns on paging and
 * jumps to a 64-bit code segment. There it runs loop 0 (alu), 1 (sieve) or 2 (fib) with
 * rdi = n, prints "R=<rax in 16 hex digits>\n" on COM1 and writes 0 to isa-debug-exit (0xf4).
 *
 * The loops between bench_code_start and bench_code_end are position independent and use no
 * memory but the stack and the buffer in rsi: benchmarks/tcg.py also runs these same bytes in
 * unicorn. They are System V functions: rdi = n (iterations), rsi = sieve buffer, result in rax.
 */
#define SIEVE_SIZE 8192
#define FIB_K 20

    .section .text
    .code32
    .globl enter_long_mode
enter_long_mode:
    mov 4(%esp), %esi           /* loop */
    mov 8(%esp), %edi           /* n */
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt gdt64_ptr
    ljmp $0x08, $long_entry

    .code64
long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea stack64_top(%rip), %rsp
    mov %edi, %edi              /* zero-extend n and the loop number */
    mov %esi, %esi
    cmp $0, %esi
    je 1f
    cmp $1, %esi
    je 2f
    call bench_fib
    jmp 3f
1:  call bench_alu
    jmp 3f
2:  lea sieve_buf(%rip), %rsi
    call bench_sieve
3:  mov %rax, %rbx
    mov $'R', %edi
    call putc64
    mov $'=', %edi
    call putc64
    mov $16, %r12d
4:  rol $4, %rbx
    mov %ebx, %edi
    and $15, %edi
    lea hexdigits(%rip), %rax
    movzbl (%rax,%rdi), %edi
    call putc64
    dec %r12d
    jnz 4b
    mov $'\n', %edi
    call putc64
    mov $0xf4, %edx
    xor %eax, %eax
    out %eax, (%dx)             /* isa-debug-exit: status (0 << 1) | 1 */
5:  cli
    hlt
    jmp 5b

putc64:                         /* dil: the byte; waits for THR empty */
    mov $0x3fd, %edx
1:  in (%dx), %al
    test $0x20, %al
    jz 1b
    mov $0x3f8, %edx
    mov %edi, %eax
    out %al, (%dx)
    ret

/* ---- the measured loops ---- */
    .balign 64
    .globl bench_code_start, bench_code_end, bench_alu, bench_sieve, bench_fib
bench_code_start:

/* alu: 10 register instructions per iteration (add, xor, mov, shr, sub, lea, and, add, dec,
 * jnz), 64-bit operands, flags consumed only by the loop branch. */
bench_alu:
    xor %eax, %eax
    movabs $0x9e3779b97f4a7c15, %rdx
    mov %rdi, %rcx
    test %rcx, %rcx
    jz 2f
1:  add %rcx, %rax
    xor %rdx, %rax
    mov %rax, %r8
    shr $3, %r8
    sub %r8, %rdx
    lea 7(%rdx,%rax,2), %rdx
    and %rcx, %r8
    add %r8, %rax
    dec %rcx
    jnz 1b
2:  ret

/* sieve: n passes of Eratosthenes over SIEVE_SIZE byte flags at rsi (fill with 1, then for
 * every i >= 2 still set: count it and clear 2i, 3i, ...). Returns the count of the last
 * pass (1028 primes below 8192), or 0 for n = 0. */
bench_sieve:
    xor %eax, %eax
    mov %rdi, %r9
    test %r9, %r9
    jz 9f
1:  xor %ecx, %ecx
2:  movb $1, (%rsi,%rcx)
    inc %rcx
    cmp $SIEVE_SIZE, %rcx
    jb 2b
    xor %eax, %eax
    mov $2, %ecx
3:  movzbl (%rsi,%rcx), %edx
    test %edx, %edx
    jz 5f
    inc %eax
    lea (%rcx,%rcx), %rdx
    cmp $SIEVE_SIZE, %rdx
    jae 5f
4:  movb $0, (%rsi,%rdx)
    add %rcx, %rdx
    cmp $SIEVE_SIZE, %rdx
    jb 4b
5:  inc %rcx
    cmp $SIEVE_SIZE, %rcx
    jb 3b
    dec %r9
    jnz 1b
9:  ret

/* fib: n times the doubly recursive fib(FIB_K) (21891 calls each); returns the sum. */
fib:
    cmp $2, %rdi
    jb 1f
    push %rbx
    push %rbp
    mov %rdi, %rbx
    lea -1(%rdi), %rdi
    call fib
    mov %rax, %rbp
    lea -2(%rbx), %rdi
    call fib
    add %rbp, %rax
    pop %rbp
    pop %rbx
    ret
1:  mov %rdi, %rax
    ret

bench_fib:
    push %rbx
    push %r12
    mov %rdi, %r12
    xor %ebx, %ebx
    test %r12, %r12
    jz 2f
1:  mov $FIB_K, %edi
    call fib
    add %rax, %rbx
    dec %r12
    jnz 1b
2:  mov %rbx, %rax
    pop %r12
    pop %rbx
    ret
bench_code_end:

    .section .rodata
    .balign 16
gdt64:
    .quad 0
    .quad 0x00af9a000000ffff    /* 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* data */
gdt64_ptr:
    .word gdt64_ptr - gdt64 - 1
    .long gdt64
hexdigits:
    .ascii "0123456789abcdef"

    .section .bss
    .balign 4096
    .globl sieve_buf
sieve_buf:
    .skip SIEVE_SIZE
    .balign 16
    .skip 65536
stack64_top:

    .section .note.GNU-stack, "", @progbits
