"""Targeted tests of system behaviour: mode switches, paging faults, interrupts, exceptions,
fast system calls, self-modifying code, triple faults, the accelerator's run loop."""

from __future__ import annotations

import shutil
import struct

import pytest

from vfw.testing import need

pytestmark = pytest.mark.requires("vfw-board-pc")


@pytest.fixture(autouse=True)
def _tools():
    need(shutil.which("as") is not None and shutil.which("ld") is not None,
         "GNU as and ld assemble the test programs")


def _h():
    import tcg_harness

    return tcg_harness


def _asm(text: str, base: int) -> bytes:
    import difftest

    return difftest.assemble_at(text, base)


def _run(v, blocks: int = 200000) -> None:
    _h().run(v, blocks)


def test_real_to_protected_to_long_mode_boot():
    h = _h()
    m, cpu, v = h.new_machine()
    pml4 = h.identity_map_64(m, 0x3F0000)
    gdt_limit = h.build_gdt(m, 0x500, tss_base=0x700, tss64=True)
    m.write(0x600, struct.pack("<HI", gdt_limit, 0x500))
    code = _asm(f"""
    .code16
        cli
        lgdt [0x600]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        ljmp 0x08, offset pm32
    .code32
    pm32:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x90000
        push 0x11223344
        pop ebx
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, {pml4}
        mov cr3, eax
        mov ecx, 0xC0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        ljmp 0x18, offset lm64
    .code64
    lm64:
        movabs rax, 0x123456789abcdef0
        mov rcx, rax
        shr rcx, 60
        add rcx, rbx
        mov qword ptr [0x3000], rcx
        lea rdx, [rip + lm64]
        mov qword ptr [0x3008], rdx
        mov al, 21
        out 0xf4, al
        hlt
    """, 0x7C00)
    m.write(0x7C00, code)
    h.setup_real(cpu, ip=0x7C00)
    _run(v)
    assert m.exit_code == (21 << 1) | 1
    env = cpu.env
    assert env.efer & 0x400  # LMA
    assert v.mode.bits == 64
    assert struct.unpack("<Q", m.read(0x3000, 8))[0] == 0x11223344 + 1
    assert struct.unpack("<Q", m.read(0x3008, 8))[0] == code.index(bytes.fromhex("48b8")) \
        + 0x7C00


def _long_with_idt(handlers: str, main: str, vectors: dict[int, str], base: int = 0x10000,
                   user: bool = False):
    """A 64-bit machine with an IDT whose gates point at labels of ``handlers``."""
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=base)
    code = _asm(f".code64\n{main}\n{handlers}\n", base)
    m.write(base, code)
    syms = _labels(f".code64\n{main}\n{handlers}\n", base, list(vectors.values()))
    gates = {vec: h.gate64(syms[label], dpl=3 if user else 0) for vec, label in vectors.items()}
    h.set_idt(m, cpu, 0x20000, gates, 16)
    h.tss64(m, 0x700, rsp0=0x70000, ist={1: 0x60000})
    return m, cpu, v, syms


def _labels(text: str, base: int, names: list[str]) -> dict[str, int]:
    """Addresses of labels: assemble with a trailing table of their addresses."""
    table = "\n".join(f".quad {n}" for n in names)
    full = _asm(f"{text}\n.p2align 3\n__table:\n{table}\n", base)
    n = len(names)
    vals = struct.unpack(f"<{n}Q", full[len(full) - 8 * n:])
    return dict(zip(names, vals, strict=True))


def test_page_faults_set_cr2_and_error_codes():
    _h()
    handlers = """
    pf_handler:
        pop rax                      # error code
        mov qword ptr [0x3000], rax
        mov rax, cr2
        mov qword ptr [0x3008], rax
        add qword ptr [rsp], 3       # skip the 3-byte faulting instruction
        inc qword ptr [0x3010]
        iretq
    """
    main = """
        mov rbx, 0x40000000          # not mapped (beyond the first GiB)
        mov rax, qword ptr [rbx]     # 3 bytes: 48 8b 03
        mov rcx, qword ptr [0x3000]
        mov rdx, qword ptr [0x3008]
        mov r8, qword ptr [0x3010]
        hlt
    """
    m, cpu, v, syms = _long_with_idt(handlers, main, {14: "pf_handler"})
    _run(v)
    r = cpu.env.regs
    assert r[1] == 0  # not present, read, supervisor
    assert r[2] == 0x40000000
    assert r[8] == 1
    assert cpu.env.cr[2] == 0x40000000

    # A write to a read-only 2 MiB page: error code P|W.
    m, cpu, v, syms = _long_with_idt(handlers, main.replace("mov rax, qword ptr [rbx]",
                                                             "mov qword ptr [rbx], rax")
                                     .replace("0x40000000", "0x200000"), {14: "pf_handler"})
    pd = 0x3F2000
    m.write(pd + 8, struct.pack("<Q", 0x200000 | 0x85))  # present, user, PS; read-only
    cpu.env.cr[0] |= 1 << 16  # WP
    _run(v)
    assert cpu.env.regs[1] == 3
    assert cpu.env.regs[2] == 0x200000


def test_nx_fault_and_accessed_dirty_bits():
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    # 4 KiB pages for the second 2 MiB: a page table at 0x3F8000.
    pt = 0x3F8000
    m.write(0x3F2000 + 8, struct.pack("<Q", pt | 7))
    m.write(pt, b"".join(struct.pack("<Q", (0x200000 + (i << 12)) | 7) for i in range(512)))
    m.write(pt + 8 * 5, struct.pack("<Q", (0x205000) | 7 | (1 << 63)))  # NX page
    handlers = """
    pf:
        pop rax
        mov qword ptr [0x3000], rax
        mov rax, cr2
        mov qword ptr [0x3008], rax
        hlt
    """
    main = """
        mov dword ptr [0x201000], 5       # sets A and D of that PTE
        mov eax, dword ptr [0x202000]     # sets A only
        mov rax, 0x205000
        jmp rax
    """
    code = _asm(f".code64\n{main}\n{handlers}", 0x10000)
    m.write(0x10000, code)
    syms = _labels(f".code64\n{main}\n{handlers}", 0x10000, ["pf"])
    h.set_idt(m, cpu, 0x20000, {14: h.gate64(syms["pf"])}, 16)
    _run(v)
    pte1 = struct.unpack("<Q", m.read(pt + 8, 8))[0]
    pte2 = struct.unpack("<Q", m.read(pt + 16, 8))[0]
    assert pte1 & 0x60 == 0x60
    assert pte2 & 0x60 == 0x20
    err = struct.unpack("<Q", m.read(0x3000, 8))[0]
    assert err == 0x11  # present, instruction fetch
    assert struct.unpack("<Q", m.read(0x3008, 8))[0] == 0x205000


def test_exceptions_ud_de_and_user_mode_gp():
    handlers = """
    ud:
        add qword ptr [rsp], 2
        inc qword ptr [0x3000]
        iretq
    de:
        add qword ptr [rsp], 3
        inc qword ptr [0x3008]
        iretq
    gp:
        pop rax
        mov qword ptr [0x3010], rax
        mov rax, qword ptr [rsp + 8]      # CS of the interrupted code
        mov qword ptr [0x3018], rax
        mov al, 7
        out 0xf4, al
        hlt
    """
    main = """
        ud2
        xor ecx, ecx
        div ecx                            # 2 bytes f7 f1 + padding below
        nop
        mov rax, qword ptr [0x3000]
        mov rbx, qword ptr [0x3008]
        # to user mode: iretq with CS=0x43 SS=0x3b
        lea rcx, [rip + user]
        push 0x3b
        push 0x8000
        push 0x202
        push 0x43
        push rcx
        iretq
    user:
        cli                                # #GP(0) at CPL3 with IOPL 0
        hlt
    """
    m, cpu, v, syms = _long_with_idt(handlers, main, {6: "ud", 0: "de", 13: "gp"})
    _run(v)
    assert m.exit_code == (7 << 1) | 1
    assert struct.unpack("<QQ", m.read(0x3000, 16)) == (1, 1)
    assert struct.unpack("<Q", m.read(0x3010, 8))[0] == 0
    assert struct.unpack("<Q", m.read(0x3018, 8))[0] == 0x43
    assert v.cpl == 0
    assert cpu.env.regs[4] == 0x70000 - 48 + 8  # RSP0 frame (5 words + error code), one popped


def test_syscall_sysret_and_swapgs():
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    main = """
        mov ecx, 0xC0000081              # STAR: kernel CS 0x18, user base 0x30 (CS 0x43)
        xor eax, eax
        mov edx, 0x00330018
        wrmsr
        mov ecx, 0xC0000082              # LSTAR
        lea rax, [rip + entry]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, 0xC0000084              # FMASK: clear IF, DF
        mov eax, 0x600
        xor edx, edx
        wrmsr
        mov ecx, 0xC0000102              # KERNEL_GS_BASE
        mov eax, 0x5000
        xor edx, edx
        wrmsr
        lea rcx, [rip + user]
        mov r11, 0x202
        sysretq
    user:
        mov rax, 41
        syscall
        mov rbx, rax
        mov al, 9
        cli
    entry:
        swapgs
        mov rdx, qword ptr gs:[8]
        swapgs
        add rax, 1
        mov qword ptr [0x3000], rcx
        mov qword ptr [0x3008], r11
        mov qword ptr [0x3010], rdx
        mov bx, cs
        mov word ptr [0x3018], bx
        mov qword ptr [0x3020], rax
        mov al, 3
        out 0xf4, al
        hlt
    """
    code = _asm(f".code64\n{main}", 0x10000)
    m.write(0x10000, code)
    m.write(0x5008, struct.pack("<Q", 0xABCDEF))
    _run(v)
    assert m.exit_code == 7
    rcx, r11, rdx = struct.unpack("<QQQ", m.read(0x3000, 24))
    syms = _labels(f".code64\n{main}", 0x10000, ["user"])
    assert rcx == syms["user"] + 7 + 2  # after "mov rax, 41; syscall"
    assert r11 & 0x200
    assert rdx == 0xABCDEF
    assert struct.unpack("<H", m.read(0x3018, 2))[0] == 0x18
    assert struct.unpack("<Q", m.read(0x3020, 8))[0] == 42


def test_self_modifying_code_in_the_same_and_later_blocks():
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    main = """
        mov ecx, 3
    again:
        mov byte ptr [rip + patch + 1], 42    # same block: patch the next instruction
    patch:
        mov al, 0
        add bl, al
        mov byte ptr [rip + later + 1], cl    # patched in a block run later
        dec ecx
        jnz again
    later:
        mov dl, 0
        mov al, bl
        add al, dl
        out 0xf4, al
        hlt
    """
    m.write(0x10000, _asm(f".code64\n{main}", 0x10000))
    cpu.env.regs[3] = 0
    _run(v)
    # bl = 3 * 42 = 126; dl = last cl written = 1 -> 127
    assert m.exit_code == (127 << 1) | 1


def test_self_modifying_code_through_another_mapping():
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    # The same physical page also mapped at +1 GiB (the second PDPT entry).
    m.write(0x3F1000 + 8, struct.pack("<Q", 0x3F2000 | 7))
    main = """
        xor ebx, ebx
        mov ecx, 2
    top:
        call func
        add ebx, eax
        mov byte ptr [func + 1 + 0x40000000], 10
        dec ecx
        jnz top
        mov eax, ebx
        out 0xf4, al
        hlt
    func:
        mov al, 1
        ret
    """
    m.write(0x10000, _asm(f".code64\n{main}", 0x10000))
    _run(v)
    assert m.exit_code == (11 << 1) | 1


def test_triple_fault_requests_a_reset():
    from vfw.runstate import Request, ShutdownCause

    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    m.write(0x10000, bytes.fromhex("0f0b"))  # ud2 with an empty IDT
    _run(v)
    assert m.take_request() == (Request.RESET, ShutdownCause.GUEST_RESET)


def test_hardware_interrupts_real_protected_long():
    h = _h()
    # Real mode: IVT entry 0x20 -> handler.
    m, cpu, v = h.new_machine()
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic
    code = _asm("""
    .code16
        sti
    wait:
        cmp word ptr [0x3000], 3
        jb wait
        mov al, 1
        out 0xf4, al
        hlt
    handler:
        inc word ptr [0x3000]
        iret
    """, 0x1000)
    m.write(0x1000, code)
    handler = 0x1000 + code.rindex(bytes.fromhex("ff06"))
    m.write(0x20 * 4, struct.pack("<HH", handler, 0))
    h.setup_real(cpu, ip=0x1000)
    v.sync_in()
    for _ in range(3):
        v.step(50)
        pic.raise_vector(0x20)
    v.step(1000)
    v.sync_out()
    assert m.exit_code == 3
    assert pic.acked == [0x20] * 3

    # 32-bit protected mode with an interrupt gate and a privilege change from CPL3.
    m, cpu, v = h.new_machine()
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic
    h.setup_prot32(cpu, m, eip=0x10000)
    h.tss32(m, 0x700, esp0=0x70000)
    text = """
    .code32
        push 0x3b
        push 0x9000
        push 0x202
        push 0x33
        push offset user
        iretd
    user:
        cmp dword ptr [0x3000], 2
        jb user
        int 0x80
    handler:
        mov eax, dword ptr [esp + 4]
        mov dword ptr [0x3004], eax
        mov eax, dword ptr [esp + 16]
        mov dword ptr [0x3008], eax
        inc dword ptr [0x3000]
        iretd
    syscall:
        mov al, 5
        out 0xf4, al
        hlt
    """
    m.write(0x10000, _asm(text, 0x10000))
    syms = _labels(text, 0x10000, ["handler", "syscall"])
    h.set_idt(m, cpu, 0x20000, {0x20: h.gate32(syms["handler"]),
                                 0x80: h.gate32(syms["syscall"], dpl=3)}, 8)
    v.sync_in()
    for _ in range(2):
        v.step(30)
        pic.raise_vector(0x20)
    v.step(1000)
    v.sync_out()
    assert m.exit_code == 11
    assert struct.unpack("<II", m.read(0x3004, 8)) == (0x33, 0x3B)


def test_sti_hlt_takes_the_pending_interrupt_after_hlt():
    h = _h()
    handlers = """
    irq:
        mov rax, qword ptr [rsp]
        mov qword ptr [0x3000], rax
        iretq
    """
    main = """
        sti
        hlt
    after:
        mov al, 1
        out 0xf4, al
        hlt
    """
    m, cpu, v, syms = _long_with_idt(handlers, main, {0x30: "irq"})
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic
    pic.pending.append(0x30)
    cpu.env.interrupt_request = True
    _run(v)
    assert m.exit_code == 3
    after = _labels(f".code64\n{main}\n{handlers}", 0x10000, ["after"])["after"]
    assert struct.unpack("<Q", m.read(0x3000, 8))[0] == after


def test_accel_run_wakes_a_halted_cpu_from_a_timer():
    from vfw.main_loop import BQL
    from vfw.timer import CLOCK_VIRTUAL, Timer

    h = _h()
    handlers = """
    irq:
        inc qword ptr [0x3000]
        cmp qword ptr [0x3000], 2
        jb 1f
        mov al, 2
        out 0xf4, al
    1:  iretq
    """
    main = """
        sti
    idle:
        hlt
        jmp idle
    """
    m, cpu, v, syms = _long_with_idt(handlers, main, {0x40: "irq"})
    pic = h.SimplePIC(cpu)
    cpu.interrupt_controller = pic

    def fire() -> None:
        pic.raise_vector(0x40)
        timer.mod_in(2_000_000)

    timer = Timer(CLOCK_VIRTUAL, fire)
    with BQL:
        timer.mod_in(2_000_000)
    m.accel.run(m)
    timer.delete()
    assert m.exit_code == 5
    assert pic.acked == [0x40, 0x40]


def test_sipi_starts_an_application_processor():
    from vfw_board_pc.cpu_state import MP_STATE_SIPI_RECEIVED

    h = _h()
    m, cpu, v = h.new_machine()
    ap = h.TestCPU()
    ap.is_bsp = False
    ap.env.reset(False)
    m.cpus.append(ap)
    # BSP: spin until the AP writes its flag, then exit with it.
    bsp = _asm("""
    .code16
    1:  cmp byte ptr [0x3000], 0
        je 1b
        mov al, byte ptr [0x3000]
        out 0xf4, al
        hlt
    """, 0x1000)
    m.write(0x1000, bsp)
    ap_code = _asm("""
    .code16
        mov ax, cs
        mov byte ptr [0x3000], ah
        hlt
    """, 0)
    m.write(0x9000, ap_code)
    h.setup_real(cpu, ip=0x1000)
    ap.env.sipi_vector = 0x09
    ap.env.mp_state = MP_STATE_SIPI_RECEIVED
    m.accel.run(m)
    assert m.exit_code == (0x09 << 1) | 1
    assert ap.env.segs[1].selector == 0x900


def test_fetch_fault_of_a_straddling_instruction_reports_its_rip():
    """The first instruction of a block runs into a not-present page: #PF with CR2 at that
    page and RIP at the instruction (found booting Linux: glibc's code jumped back to a
    stale RIP after the kernel mapped the page)."""
    h = _h()
    m, cpu, v = h.new_machine()
    h.setup_long64(cpu, m, rip=0x10000)
    pt = 0x3F8000
    m.write(0x3F2000 + 8, struct.pack("<Q", pt | 7))
    m.write(pt, b"".join(struct.pack("<Q", (0x200000 + (i << 12)) | 7) for i in range(512)))
    m.write(pt + 8 * 6, struct.pack("<Q", 0x206000 | 6))  # 0x206000 not present
    m.write(0x205FF0, bytes.fromhex("bf01000000" "4989c5"))  # mov edi, 1; mov r13, rax
    m.write(0x205FF8, bytes.fromhex("48b8") + b"\x11" * 6)  # movabs straddles the pages
    m.write(0x206000, b"\x22\x22\xf4")
    text = """
    .code64
        mov rax, 0x205ff0
        jmp rax
    pf:
        mov rax, 0x3F8030
        or qword ptr [rax], 1
        mov rbx, cr2
        mov rcx, qword ptr [rsp + 8]
        invlpg [rbx]
        add rsp, 8
        iretq
    """
    m.write(0x10000, _asm(text, 0x10000))
    h.set_idt(m, cpu, 0x20000, {14: h.gate64(_labels(text, 0x10000, ["pf"])["pf"])}, 16)
    _run(v)
    r = cpu.env.regs
    assert (r[0], r[3], r[1]) == (0x2222111111111111, 0x206000, 0x205FF8)
