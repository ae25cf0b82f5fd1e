"""Run instruction sequences at CPL3 under /dev/kvm: a second oracle for vfw's TCG.

The development machine's KVM is a nested software hypervisor (kvm_pvm): guest user mode runs
on the real CPU, guest kernel mode goes through KVM's instruction emulator, which lacks some
instructions. So nothing here runs at CPL0: the host writes the GDT, TSS and page tables into
guest memory and starts the vCPU directly at CPL3 with KVM_SET_SREGS / KVM_SET_REGS, in 64-bit
mode or with a 32- or 16-bit code segment (compatibility mode). A sequence ends with
``out 0xf4, al``, allowed at CPL3 by the TSS I/O permission bitmap (this KVM drops IOPL on entry
to CPL3): the port write is a KVM_EXIT_IO, then the vCPU state is read back. An exception (there
is no IDT) triple-faults: KVM_EXIT_SHUTDOWN, reported as the run's error.

Measured on kvm_pvm: 64-bit code runs natively (a 300k-iteration loop in 0.4 ms); compatibility
mode does not (the same loop takes 0.35 s: KVM's emulator runs it, PVM only enters hardware
with its own 64-bit user CS unless the guest goes through PVM's return-to-user protocol). The
emulator raises #UD for SSE, x87 and POPCNT and runs LZCNT as BSR there.

``run_vfw`` puts vfw's software CPU in the same state (same GDT, TSS, page tables, CPL3 and
terminator), so both sides execute identical bytes in identical modes. The memory layout is
difftest's (code at 0x1000, data+stack window 0x4000..0x9000, RBX at 0x4800, RSP = 0x8800),
mapped by one user-accessible 2 MiB page; the system tables sit at 0x10000. One VM and vCPU
serve every native run (0.1-0.5 ms each).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import random
import signal
import struct
import subprocess
import tempfile
import threading
from types import TracebackType
from typing import Any

import difftest

from vfw_accel_kvm import kvm_api as k

RAM_SIZE = 2 << 20
GDT, TSS, PML4 = 0x10000, 0x11000, 0x20000
SYS_END = 0x30000
EXIT_PORT = 0xF4
EXIT_INSN = b"\xe6\xf4"  # out 0xf4, al
TSS_LIMIT = 0x68 + 0x2000  # the I/O bitmap covers all 65536 ports (all allowed), then 0xff
CR0 = 0x80050033  # PG WP NE ET MP PE
CR4 = 0x620  # OSXMMEXCPT OSFXSR PAE
EFER = 0xD01  # NXE LMA LME SCE
REG_NAMES = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [
    f"r{i}" for i in range(8, 16)]


def _desc(base: int, limit: int, typ: int, dpl: int, *, s: int = 1, l64: int = 0,
          db: int = 0, g: int = 0) -> int:
    """An 8-byte segment descriptor (present)."""
    if g:
        limit >>= 12
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | (typ << 8) | (s << 12) | (dpl << 13) | (1 << 15)
          | (limit & 0xF0000) | (l64 << 21) | (db << 22) | (g << 23) | (base & 0xFF000000))
    return lo | (hi << 32)


_FLAT = 0xFFFFFFFF
#: The GDT (index -> descriptor); user selectors are index * 8 | 3. Indexes 4-6 are Linux's
#: (__USER32_CS 0x23, __USER_DS 0x2b, __USER_CS 0x33).
GDT_ENTRIES = [
    0,
    _desc(0, _FLAT, 0xB, 0, l64=1, g=1),   # 0x08 kernel code 64 (unused)
    _desc(0, _FLAT, 0x3, 0, db=1, g=1),    # 0x10 kernel data (unused)
    0,
    _desc(0, _FLAT, 0xB, 3, db=1, g=1),    # 0x23 user code 32
    _desc(0, _FLAT, 0x3, 3, db=1, g=1),    # 0x2b user data 32
    _desc(0, _FLAT, 0xB, 3, l64=1, g=1),   # 0x33 user code 64
    _desc(0, 0xFFFF, 0xB, 3),              # 0x3b user code 16
    _desc(0, _FLAT, 0x3, 3, g=1),          # 0x43 user data with a 16-bit stack (B = 0)
    _desc(TSS, TSS_LIMIT, 0xB, 0, s=0),    # 0x48 busy 64-bit TSS (two slots)
    0,
]
GDT_LIMIT = len(GDT_ENTRIES) * 8 - 1
SEL_TSS = 0x48
#: bits -> (CS selector, SS selector); DS/ES/FS/GS use the 32-bit user data segment.
MODE_SELECTORS = {64: (0x33, 0x2B), 32: (0x23, 0x2B), 16: (0x3B, 0x43)}
SEL_DATA = 0x2B


def system_area() -> bytes:
    """Guest memory [0, SYS_END): GDT, 64-bit TSS with an all-ports I/O bitmap, and identity
    page tables (one user-writable 2 MiB page)."""
    area = bytearray(SYS_END)
    struct.pack_into(f"<{len(GDT_ENTRIES)}Q", area, GDT, *GDT_ENTRIES)
    struct.pack_into("<Q", area, TSS + 4, SYS_END - 0x10)  # RSP0 (never used: no IDT)
    struct.pack_into("<H", area, TSS + 0x66, 0x68)         # I/O bitmap offset
    area[TSS + TSS_LIMIT] = 0xFF
    struct.pack_into("<Q", area, PML4, (PML4 + 0x1000) | 7)
    struct.pack_into("<Q", area, PML4 + 0x1000, (PML4 + 0x2000) | 7)
    struct.pack_into("<Q", area, PML4 + 0x2000, 0x87)  # 2 MiB page: P RW US PS
    return bytes(area)


def _seg_fields(sel: int) -> tuple[int, int, int]:
    """(base, byte-granular limit, QEMU-layout flags) of GDT selector ``sel``."""
    d = GDT_ENTRIES[sel >> 3]
    hi = d >> 32
    base = ((d >> 16) & 0xFFFFFF) | (hi & 0xFF000000)
    limit = (d & 0xFFFF) | (hi & 0xF0000)
    if hi & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return base, limit, hi & 0x00F0FF00


def _kvm_seg(sel: int) -> Any:
    base, limit, f = _seg_fields(sel)
    return k.kvm_segment(base=base, limit=limit, selector=sel, type=(f >> 8) & 0xF,
                         present=(f >> 15) & 1, dpl=(f >> 13) & 3, db=(f >> 22) & 1,
                         s=(f >> 12) & 1, l=(f >> 21) & 1, g=(f >> 23) & 1)


class NativeCpu:
    """A one-vCPU KVM VM that runs code at CPL3 from a given register/memory state."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.kvm = self._keep(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        self.vm = self._keep(k.ioctl(self.kvm, k.KVM_CREATE_VM, 0))
        self.ram = mmap.mmap(-1, RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._ram_ptr = ctypes.c_char.from_buffer(self.ram)
        region = k.kvm_userspace_memory_region(
            slot=0, flags=0, guest_phys_addr=0, memory_size=RAM_SIZE,
            userspace_addr=ctypes.addressof(self._ram_ptr))
        k.ioctl(self.vm, k.KVM_SET_USER_MEMORY_REGION, region)
        self.vcpu = self._keep(k.ioctl(self.vm, k.KVM_CREATE_VCPU, 0))
        size = k.ioctl(self.kvm, k.KVM_GET_VCPU_MMAP_SIZE, 0)
        self.run_page = mmap.mmap(self.vcpu, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        cpuid = k.kvm_cpuid2(128)
        cpuid.nent = 128
        k.ioctl(self.kvm, k.KVM_GET_SUPPORTED_CPUID, cpuid)
        k.ioctl(self.vcpu, k.KVM_SET_CPUID2, cpuid)
        self.system = system_area()
        self.sregs = k.kvm_sregs()
        k.ioctl(self.vcpu, k.KVM_GET_SREGS, self.sregs)
        self.runs = 0
        # The first KVM_RUN of a fresh vCPU here drops the FPU/SSE state set before it.
        self.run(64, b"", [0] * 16, 0x202, bytes(difftest.WIN_HI - difftest.WIN_LO))

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        """Release the vCPU, VM and memory."""
        self.run_page.close()
        del self._ram_ptr
        self.ram.close()
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> NativeCpu:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- one run ---------------------------------------------------------------------------
    def _set_state(self, bits: int, rip: int, regs: list[int], eflags: int,
                   xmm: list[int] | None) -> None:
        sr = self.sregs
        cs, ss = MODE_SELECTORS[bits]
        sr.cs, sr.ss = _kvm_seg(cs), _kvm_seg(ss)
        sr.ds = sr.es = sr.fs = sr.gs = _kvm_seg(SEL_DATA)
        sr.tr = k.kvm_segment(base=TSS, limit=TSS_LIMIT, selector=SEL_TSS, type=0xB,
                              present=1, s=0)
        sr.ldt = k.kvm_segment(unusable=1)
        sr.gdt.base, sr.gdt.limit = GDT, GDT_LIMIT
        sr.idt.base, sr.idt.limit = 0, 0
        sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer = CR0, 0, PML4, CR4, EFER
        for i in range(4):
            sr.interrupt_bitmap[i] = 0
        k.ioctl(self.vcpu, k.KVM_SET_SREGS, sr)
        r = k.kvm_regs()
        width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
        for name, value in zip(REG_NAMES, regs, strict=False):
            setattr(r, name, value & width)
        r.rip = rip
        r.rflags = eflags | 0x2
        k.ioctl(self.vcpu, k.KVM_SET_REGS, r)
        fpu = k.kvm_fpu()
        fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80
        for i, value in enumerate(xmm or []):
            ctypes.memmove(fpu.xmm[i], value.to_bytes(16, "little"), 16)
        k.ioctl(self.vcpu, k.KVM_SET_FPU, fpu)
        events = k.kvm_vcpu_events()  # drop anything left pending by a previous shutdown
        k.ioctl(self.vcpu, k.KVM_SET_VCPU_EVENTS, events)

    def _kvm_run(self, timeout: float) -> None:
        use_timer = threading.current_thread() is threading.main_thread()
        if not use_timer:
            k.ioctl(self.vcpu, k.KVM_RUN, 0)
            return

        def expire(signum: int, frame: Any) -> None:
            raise TimeoutError(f"the native run took over {timeout} s")

        old = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            k.ioctl(self.vcpu, k.KVM_RUN, 0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def run(self, bits: int, code: bytes, regs: list[int], eflags: int, mem: bytes,
            xmm: list[int] | None = None, timeout: float = 5.0) -> difftest.State:
        """Run ``code`` (followed by ``out 0xf4, al``) at CPL3; the final state, like
        ``difftest.run_vfw``'s (``rip`` is the address of the terminating instruction)."""
        if bits not in (16, 32, 64):
            raise ValueError(f"bits must be 16, 32 or 64, not {bits}")
        ram = self.ram
        ram[:SYS_END] = self.system
        end = difftest.CODE + len(code)
        if end + len(EXIT_INSN) > difftest.WIN_LO:
            raise ValueError(f"code too long ({len(code)} bytes)")
        ram[difftest.CODE:end + len(EXIT_INSN)] = code + EXIT_INSN
        ram[difftest.WIN_LO:difftest.WIN_HI] = mem
        self._set_state(bits, difftest.CODE, regs, eflags, xmm)
        self._kvm_run(timeout)
        self.runs += 1
        reason = struct.unpack_from("<I", self.run_page, k.RUN_EXIT_REASON)[0]
        r = k.kvm_regs()
        k.ioctl(self.vcpu, k.KVM_GET_REGS, r)
        fpu = k.kvm_fpu()
        k.ioctl(self.vcpu, k.KVM_GET_FPU, fpu)
        error: str | None = None
        rip = r.rip
        if reason == k.KVM_EXIT_IO:
            direction, _size, port = struct.unpack_from("<BBH", self.run_page, k.RUN_IO)
            if direction != k.KVM_EXIT_IO_OUT or port != EXIT_PORT or rip != end + 2:
                error = f"I/O exit: port {port:#x} dir {direction} rip {rip:#x}"
            rip -= len(EXIT_INSN)
        else:
            name = k.EXIT_REASON_NAMES.get(reason, str(reason))
            error = f"KVM exit {name} at rip {rip:#x}"
        n = 16 if bits == 64 else 8
        out = [getattr(r, name) for name in REG_NAMES[:n]]
        xo = [int.from_bytes(bytes(fpu.xmm[i]), "little") for i in range(n)] + [0] * (16 - n)
        return difftest.State(out, r.rflags, bytes(ram[difftest.WIN_LO:difftest.WIN_HI]), xo,
                              rip, error)


def run_vfw(bits: int, code: bytes, regs: list[int], eflags: int, mem: bytes,
            xmm: list[int] | None = None, *, bmi1: bool = True,
            max_blocks: int = 10000) -> difftest.State:
    """Run the same code from the same CPL3 state (GDT, TSS, page tables and terminator as
    ``NativeCpu.run``) in vfw's software CPU. ``bmi1`` advertises BMI1 in CPUID leaf 7, so
    F3 0F BC decodes as TZCNT as on the host rather than as BSF."""
    import tcg_harness as h

    from vfw_board_pc.cpu_state import DESC_P_MASK, SegmentCache

    m, cpu, v = h.new_machine(4 << 20)
    shutdown = m.request_shutdown

    def request_shutdown(*args: Any, **kwargs: Any) -> None:
        shutdown(*args, **kwargs)
        v.exit_req = True  # stop after the block of the terminating OUT

    m.request_shutdown = request_shutdown  # type: ignore[method-assign]
    if bmi1:
        plain = cpu.cpuid

        def cpuid(leaf: int, sub: int) -> tuple[int, int, int, int]:
            a, b, c, d = plain(leaf, sub)
            return (a, b | (1 << 3), c, d) if leaf == 7 and sub == 0 else (a, b, c, d)

        cpu.cpuid = cpuid  # type: ignore[method-assign]
    end = difftest.CODE + len(code)
    m.write(0, system_area())
    m.write(difftest.CODE, code + EXIT_INSN)
    m.write(difftest.WIN_LO, mem)
    env = cpu.env
    env.reset(True)
    env.cr[0], env.cr[3], env.cr[4], env.efer = CR0, PML4, CR4, EFER
    cs, ss = MODE_SELECTORS[bits]
    env.segs = [SegmentCache(SEL_DATA, *_seg_fields(SEL_DATA)) for _ in range(6)]
    env.segs[1] = SegmentCache(cs, *_seg_fields(cs))
    env.segs[2] = SegmentCache(ss, *_seg_fields(ss))
    env.gdt.base, env.gdt.limit = GDT, GDT_LIMIT
    env.idt.base, env.idt.limit = 0, 0
    env.tr = SegmentCache(SEL_TSS, TSS, TSS_LIMIT, DESC_P_MASK | (0xB << 8))
    width = (1 << 64) - 1 if bits == 64 else 0xFFFFFFFF
    for i, val in enumerate(regs):
        env.regs[i] = val & width
    env.rip = difftest.CODE
    env.eflags = eflags | 2
    if xmm is not None:
        env.xmm = list(xmm)
    h.run(v, max_blocks)
    error = None
    if not m.request_event.is_set() or env.rip != end + len(EXIT_INSN) or not m.io_log \
            or m.io_log[-1][:2] != ("out", EXIT_PORT):
        error = f"vfw stopped at rip {env.rip:#x} (halted={env.halted})"
    n = 16 if bits == 64 else 8
    xo = list(env.xmm[:n]) + [0] * (16 - n)
    return difftest.State(list(env.regs[:n]), env.eflags, m.read(difftest.WIN_LO,
                          difftest.WIN_HI - difftest.WIN_LO), xo,
                          env.rip - len(EXIT_INSN) if error is None else env.rip, error)


def assemble_many(texts: list[str], bits: int) -> list[bytes | None]:
    """Assemble several programs with one run of GNU as (saving ~8 ms of process start-up
    per program); ``None`` for a program as refuses. Each program assembles as if alone:
    their local labels are numeric and resolved within the program."""
    out: list[bytes | None] = [None] * len(texts)
    todo = list(range(len(texts)))
    for _attempt in range(3):
        if not todo:
            break
        starts: list[int] = []
        parts = [f".intel_syntax noprefix\n.code{bits}\n"]
        line = 3
        for n, i in enumerate(todo):
            starts.append(line)
            parts.append(f"__p{n}:\n{texts[i]}\n")
            line += 2 + texts[i].count("\n")
        parts.append(f"__p{len(todo)}:\n")
        with tempfile.TemporaryDirectory() as d:
            s, o, b = (os.path.join(d, n) for n in ("t.s", "t.o", "t.bin"))
            with open(s, "w") as f:
                f.write("".join(parts))
            r = subprocess.run(["as", "--64" if bits == 64 else "--32", "-o", o, s],
                               capture_output=True, text=True)
            if r.returncode:  # drop the programs with errors and try again
                bad = set()
                for msg in r.stderr.splitlines():
                    fields = msg.split(":")
                    if len(fields) > 2 and fields[1].isdigit():
                        bad.add(bisect.bisect_right(starts, int(fields[1])) - 1)
                if not bad:
                    break
                todo = [i for n, i in enumerate(todo) if n not in bad]
                continue
            subprocess.run(["objcopy", "-O", "binary", "-j", ".text", o, b], check=True)
            syms = subprocess.run(["nm", o], capture_output=True, text=True,
                                  check=True).stdout
            with open(b, "rb") as f:
                blob = f.read()
        offs: dict[int, int] = {}
        for entry in syms.splitlines():
            value, _kind, name = entry.split()
            if name.startswith("__p"):
                offs[int(name[3:])] = int(value, 16)
        for n, i in enumerate(todo):
            out[i] = blob[offs[n]:offs[n + 1]]
        break
    return out


def initial_state(bits: int, seed: int) -> tuple[list[int], int, bytes, list[int]]:
    """A random initial state for ``seed`` (difftest.random_state's recipe, with IF set as
    at CPL3 under KVM and faster random memory)."""
    rnd = random.Random(seed)
    width = 64 if bits == 64 else 32
    regs = [rnd.getrandbits(width) for _ in range(16 if bits == 64 else 8)]
    specials = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    for i in range(len(regs)):
        if rnd.random() < 0.3:
            regs[i] = rnd.choice(specials) & ((1 << width) - 1)
    regs[3] = difftest.DATA_BASE
    regs[4] = difftest.STACK_TOP
    eflags = 0x202 | (rnd.getrandbits(12) & difftest.ARITH)
    mem = rnd.randbytes(difftest.WIN_HI - difftest.WIN_LO)
    xmm = [rnd.getrandbits(128) for _ in range(16)]
    return regs, eflags, mem, xmm


def diff(cpu: NativeCpu, bits: int, code: bytes, mask: int, seed: int
         ) -> tuple[list[str], difftest.State, difftest.State]:
    """Run ``code`` from ``seed``'s state in vfw and natively; (differences, vfw, native)."""
    regs, eflags, mem, xmm = initial_state(bits, seed)
    ours = run_vfw(bits, code, regs, eflags, mem, xmm)
    theirs = cpu.run(bits, code, regs, eflags, mem, xmm)
    return difftest.compare(ours, theirs, mask, bits, check_xmm=bits == 64, other="kvm"), \
        ours, theirs


def check(cpu: NativeCpu, bits: int, text: str, mask: int = 0, seed: int = 0) -> None:
    """Assemble ``text``, run it in vfw and natively from ``seed``'s state, assert equality."""
    diffs, ours, theirs = diff(cpu, bits, difftest.assemble(text, bits), mask, seed)
    if diffs:
        raise AssertionError(
            f"{bits}-bit mismatch (seed {seed}, undefined flags {mask:#x}) for:\n{text}\n"
            + "\n".join(diffs) + f"\nvfw:    {ours.describe()}\nnative: {theirs.describe()}")
