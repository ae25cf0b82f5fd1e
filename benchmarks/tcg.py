"""Guest MIPS of vfw's TCG against unicorn and QEMU's TCG, same guest code, same run.

The guest (``benchmarks/guests/``: ``tcgbench.c`` + ``tcgloops.S``, linked with the test
guests' ``multiboot.S``, ``guest.h`` and ``link.ld``) is a 32-bit multiboot kernel that builds
4-level page tables (4 KiB pages, identity map of the first 8 MiB), enters 64-bit long mode
with paging on, runs one loop ``n`` times, prints ``R=<result>`` on COM1 and ends the VM
through isa-debug-exit (status 1). Command line: ``loop=alu|sieve|fib n=N``. The loops:

* ``alu``: 10 register instructions per iteration (add, xor, mov, shr, sub, lea, and, add,
  dec, jnz), 64-bit operands;
* ``sieve``: one pass of Eratosthenes over 8192 byte flags (byte stores to fill, byte loads
  to scan, byte stores to strike out), 160,781 instructions per pass;
* ``fib``: recursive fib(20), 21891 calls and returns (push/pop), 197,019 instructions per
  iteration.

Engines, each on the same loop bytes:

* ``vfw``: ``vfw run -accel tcg -kernel <guest>`` (whole process);
* ``qemu``: ``qemu-system-x86_64 -M pc -accel tcg -kernel <guest>`` (SeaBIOS boots the
  multiboot kernel through its option ROM), skipped with a message if QEMU is absent;
* ``unicorn``: the loop functions' bytes loaded at the same addresses in unicorn (x86-64),
  with the same page tables and CR0.PG/CR4.PAE/EFER.LME set, run in this process from the
  function to a sentinel return address. Unicorn is also the reference for the results.

Instructions per iteration come from unicorn with an instruction hook (n=2 minus n=1).
MIPS = (n_large - n_small) * insns_per_iteration / (median time at n_large - median time at
n_small): the start-up (and the translation of the loop, which both runs do) cancels. Every
engine gets its own n (QEMU is 100-230x faster than vfw), runs interleaved in a shuffled order per
round. Every guest run must end with status 1 and print the result unicorn computes for the
same n (or its closed form: sieve 1028, fib n * 6765); otherwise the script exits non-zero.

Then, per loop, in-process vfw runs (``--probe``, children of this script): three small-n runs
time vfw's translator (``TcgCPU._translate`` wrapped, thread CPU time; ``compile``/``exec`` in
it and ``Translator.__init__`` timed apart) and count translated blocks and guest instructions
(the median run is shown); one run under cProfile gives the top functions by own time
(translated blocks are summed into one ``<translated blocks>`` row).

Usage (from the repo root): ``.venv/bin/python benchmarks/tcg.py [-r ROUNDS] [--scale X]``
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import Any

from _util import REPO, child_env, table

HERE = Path(__file__).resolve().parent

LOOPS = ("alu", "sieve", "fib")
ENGINES = ("vfw", "unicorn", "qemu")
#: The issue's goals for vfw, guest MIPS.
GOALS = {"alu": 20.0, "sieve": 12.0, "fib": 7.0}
#: Large iteration counts per engine (the small count is a tenth); each large run spends
#: roughly 1.2-2 s (vfw) or ~1 s (QEMU, unicorn) in the loop on this 2-core box (the guest
#: reads n as a 32-bit number).
LARGE_N = {
    "vfw": {"alu": 2_500_000, "sieve": 100, "fib": 60},
    "qemu": {"alu": 400_000_000, "sieve": 15_000, "fib": 4_000},
    "unicorn": {"alu": 250_000_000, "sieve": 600, "fib": 400},
}
SIEVE_PRIMES = 1028           # primes below 8192
FIB_K_VALUE = 6765            # fib(20)
GUEST_SOURCES = [HERE / "guests" / "tcgbench.c", HERE / "guests" / "tcgloops.S",
                 REPO / "tests" / "guests" / "multiboot.S", REPO / "tests" / "guests" / "guest.h",
                 REPO / "tests" / "guests" / "link.ld"]
DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
RUN_TIMEOUT = 300.0
MAP_BYTES = 8 << 20           # what the guest's page tables map (tcgbench.c MAP_MIB)
SENTINEL = MAP_BYTES - 0x1000  # unicorn: the loop functions return here


# ---- building and reading the guest --------------------------------------------------------

def _test_guest_build() -> Any:
    spec = importlib.util.spec_from_file_location("vfw_guest_build",
                                                  REPO / "tests" / "guests" / "build.py")
    assert spec is not None and spec.loader is not None
    build: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def build_guest() -> Path:
    """The tcgbench multiboot ELF, built with the test guests' flags and cached the same way."""
    build = _test_guest_build()
    if not build.toolchain_available():
        raise SystemExit("gcc and ld are needed to build the benchmark guest")
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(gcc.encode())
    for path in GUEST_SOURCES:
        h.update(path.name.encode() + path.read_bytes())
    out: Path = build.build_dir() / f"tcgbench-{h.hexdigest()[:16]}.elf"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run(["gcc", *build.CFLAGS, "-I", str(REPO / "tests" / "guests"),
                               "-T", str(REPO / "tests" / "guests" / "link.ld"), "-o", str(tmp),
                               *(str(p) for p in GUEST_SOURCES[:3])],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"building the benchmark guest failed:\n{proc.stderr}")
        os.replace(tmp, out)
    return out


class Elf32:
    """Just enough of an ELF32 reader: loadable segments and the symbol table."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 1:
            raise SystemExit(f"{path}: not an ELF32 file")
        (phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
         _shstrndx) = struct.unpack_from("<IIIHHHHHH", data, 28)
        self.segments: list[tuple[int, bytes]] = []
        for i in range(phnum):
            p_type, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from(
                "<IIIII", data, phoff + i * phentsize)
            if p_type == 1 and p_filesz:
                self.segments.append((p_vaddr, data[p_offset:p_offset + p_filesz]))
        sections = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize)
                    for i in range(shnum)]
        self.symbols: dict[str, int] = {}
        for sh in sections:
            if sh[1] != 2:    # SHT_SYMTAB
                continue
            strtab = sections[sh[6]]
            for off in range(sh[4], sh[4] + sh[5], 16):
                name, value = struct.unpack_from("<II", data, off)
                end = data.index(b"\0", strtab[4] + name)
                self.symbols[data[strtab[4] + name:end].decode()] = value


# ---- unicorn ---------------------------------------------------------------------------------

class Unicorn:
    """The loop functions in unicorn, 64-bit long mode with the guest's page tables."""

    def __init__(self, elf: Elf32):
        self.uc = importlib.import_module("unicorn")   # ImportError: handled by the caller
        self.X = importlib.import_module("unicorn.x86_const")
        self.elf = elf
        self.version = str(self.uc.__version__)

    def _machine(self) -> Any:
        X = self.X
        sym = self.elf.symbols
        uc = self.uc.Uc(self.uc.UC_ARCH_X86, self.uc.UC_MODE_64)
        uc.mem_map(0, MAP_BYTES)
        for vaddr, data in self.elf.segments:
            uc.mem_write(vaddr, data)
        # The same tables as tcgbench.c's build_page_tables: 4 KiB pages, 8 MiB identity map.
        q = struct.Struct("<Q").pack
        uc.mem_write(sym["pml4"], q(sym["pdpt"] | 3))
        uc.mem_write(sym["pdpt"], q(sym["pd"] | 3))
        tables = MAP_BYTES >> 21
        uc.mem_write(sym["pd"], b"".join(q(sym["pt"] + 4096 * t | 3) for t in range(tables)))
        uc.mem_write(sym["pt"], b"".join(q(i << 12 | 3) for i in range(tables * 512)))
        uc.reg_write(X.UC_X86_REG_CR3, sym["pml4"])
        uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | 0x20)
        uc.msr_write(0xC0000080, uc.msr_read(0xC0000080) | 0x500)   # EFER.LME | LMA
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 0x80000001)
        return uc

    def check_paging(self) -> None:
        """Unicorn really walks the page tables: alias a free linear page to the sieve buffer's
        physical page and store through it (mem_read/mem_write take physical addresses)."""
        sym = self.elf.symbols
        uc = self._machine()
        alias = MAP_BYTES - 0x3000   # not the page of the code below
        uc.mem_write(sym["pt"] + 8 * (alias >> 12), struct.pack("<Q", sym["sieve_buf"] | 3))
        code = SENTINEL - 0x100
        uc.mem_write(code, bytes([0xC6, 0x00, 0x5A]))   # movb $0x5a, (%rax)
        uc.reg_write(self.X.UC_X86_REG_RAX, alias)
        uc.emu_start(code, code + 3)
        if uc.mem_read(sym["sieve_buf"], 1) != b"\x5a" or uc.mem_read(alias, 1) != b"\0":
            raise SystemExit("unicorn: paging is not in effect (CR0.PG/CR4.PAE/EFER.LME)")

    def run(self, loop: str, n: int, count: bool = False) -> tuple[float, int, int]:
        """(seconds in emu_start, rax, instructions executed if ``count`` else 0), on a fresh
        unicorn instance (so its translation cache starts empty, like a fresh process)."""
        X = self.X
        sym = self.elf.symbols
        uc = self._machine()
        rsp = sym["stack64_top"] - 8
        uc.mem_write(rsp, struct.pack("<Q", SENTINEL))
        uc.reg_write(X.UC_X86_REG_RSP, rsp)
        uc.reg_write(X.UC_X86_REG_RDI, n)
        uc.reg_write(X.UC_X86_REG_RSI, sym["sieve_buf"])
        executed = [0]
        if count:
            def hook(_uc: Any, _addr: int, _size: int, _data: Any) -> None:
                executed[0] += 1
            uc.hook_add(self.uc.UC_HOOK_CODE, hook)
        start = time.perf_counter()
        uc.emu_start(sym[f"bench_{loop}"], SENTINEL)
        elapsed = time.perf_counter() - start
        if uc.reg_read(X.UC_X86_REG_RIP) != SENTINEL:
            raise SystemExit(f"unicorn: loop {loop} n={n} stopped at "
                             f"{uc.reg_read(X.UC_X86_REG_RIP):#x}, not at the sentinel")
        return elapsed, uc.reg_read(X.UC_X86_REG_RAX), executed[0]

    def insns_per_iteration(self, loop: str) -> int:
        counts = [self.run(loop, n, count=True)[2] for n in (1, 2, 3)]
        if counts[2] - counts[1] != counts[1] - counts[0]:
            raise SystemExit(f"unicorn: {loop} does not run a fixed count per iteration: "
                             f"{counts}")
        return counts[1] - counts[0]


def closed_form(loop: str, n: int) -> int | None:
    if loop == "sieve":
        return SIEVE_PRIMES if n else 0
    if loop == "fib":
        return n * FIB_K_VALUE
    return None


# ---- vfw and QEMU runs -----------------------------------------------------------------------

def vmm_argv(engine: str, exe: str, kernel: Path, loop: str, n: int) -> list[str]:
    common = ["-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-serial",
              "stdio", "-kernel", str(kernel), "-append", f"loop={loop} n={n}", *DEBUG_EXIT]
    if engine == "vfw":
        return [exe, "run", *common]
    return [exe, "-M", "pc", *common]


def check_output(what: str, argv: list[str], status: int, out: str, err: str,
                 expected: int) -> None:
    want = f"R={expected:016x}"
    problems = []
    if status != 1:
        problems.append(f"exit status {status}, expected 1 (isa-debug-exit with 0)")
    if want not in out:
        got = [w for w in out.split() if w.startswith("R=")]
        problems.append(f"expected {want} in the output, got {got[-1] if got else 'no result'}")
    if problems:
        raise SystemExit(f"{what}: guest run failed: {'; '.join(problems)}\n"
                         f"command: {' '.join(argv)}\n"
                         f"stdout: {out[-500:]!r}\nstderr: {err[-2000:]}")


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """(wall s, user+system CPU s, status, stdout, stderr) of one process."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return wall, cpu, proc.returncode, out, err


# ---- in-process probes (run as children: --probe) --------------------------------------------

def probe_main(kind: str, out_path: str, loop_lo: int, loop_hi: int, argv: list[str]) -> int:
    """Run ``vfw run ARGV`` in this process with the translator timed or under cProfile."""
    import builtins
    import cProfile
    import pstats

    from vfw.vl import main as vfw_main

    importlib.import_module("vfw_accel_tcg.runtime")   # imported outside the timing
    T: Any = importlib.import_module("vfw_accel_tcg.translate")
    V: Any = importlib.import_module("vfw_accel_tcg.vcpu")

    result: dict[str, Any] = {"kind": kind}
    if kind == "translate":
        st = {"blocks": 0, "insns": 0, "loop_blocks": 0, "loop_insns": 0, "seconds": 0.0,
              "compile_exec": 0.0, "setup": 0.0, "loop_seconds": 0.0}
        orig = V.TcgCPU._translate
        orig_init = T.Translator.__init__
        # CPU time of this thread: steadier than wall time while other jobs load the machine.
        clock = time.thread_time

        def translator_init(self: Any, *a: Any, **k: Any) -> None:
            t = clock()
            orig_init(self, *a, **k)
            st["setup"] += clock() - t   # one Translator per CPU mode, made on first use

        def timed(fn: Any) -> Any:
            def wrapper(*a: Any, **k: Any) -> Any:
                t = clock()
                try:
                    return fn(*a, **k)
                finally:
                    st["compile_exec"] += clock() - t
            return wrapper

        def translate(self: Any, rip: int, *a: Any, **k: Any) -> Any:
            t = clock()
            tb = orig(self, rip, *a, **k)
            dt = clock() - t
            st["seconds"] += dt
            st["blocks"] += 1
            st["insns"] += tb.ninsns
            if loop_lo <= rip < loop_hi:
                st["loop_blocks"] += 1
                st["loop_insns"] += tb.ninsns
                st["loop_seconds"] += dt
            return tb

        V.TcgCPU._translate = translate
        T.Translator.__init__ = translator_init
        # _translate looks compile and exec up in its module's globals, then builtins.
        V.compile = timed(builtins.compile)
        V.exec = timed(builtins.exec)
        t0 = time.perf_counter()
        status = vfw_main(argv)
        st["run_seconds"] = time.perf_counter() - t0
        result.update(st)
    else:
        prof = cProfile.Profile()
        prof.enable()
        status = vfw_main(argv)
        prof.disable()
        stats: Any = pstats.Stats(prof)
        total = sum(v[2] for v in stats.stats.values())
        rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0])
        for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
            if filename.startswith("<tcg"):
                name = "<translated blocks>"
            elif filename == "~":
                name = func
            else:
                parts = Path(filename).parts
                name = f"{'/'.join(parts[-2:])}:{line}({func})"
            row = rows[name]
            row[0] += nc
            row[1] += tt
            row[2] += ct
            row[3] += 1
        top = sorted(rows.items(), key=lambda kv: -kv[1][1])[:12]
        result["total"] = total
        result["top"] = [[name, int(r[0]), r[1], r[2], int(r[3])] for name, r in top]
    result["status"] = status
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_probe(python: str, kind: str, kernel: Path, loop: str, n: int, env: dict[str, str],
              lo_hi: tuple[int, int], expected: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    try:
        vfw_args = vmm_argv("vfw", "vfw", kernel, loop, n)[2:]
        argv = [python, str(Path(__file__).resolve()), "--probe", kind, "--probe-out", out_path,
                "--probe-range", str(lo_hi[0]), str(lo_hi[1]), "--", *vfw_args]
        _, _, status, out, err = timed_process(argv, env)
        if status != 0:
            raise SystemExit(f"probe {kind} {loop} failed ({status}):\n{err[-3000:]}")
        res: dict[str, Any] = json.loads(Path(out_path).read_text())
    finally:
        os.unlink(out_path)
    check_output(f"vfw probe {kind} {loop}", argv, res["status"], out, err, expected)
    return res


# ---- main ------------------------------------------------------------------------------------

def mips(n: tuple[int, int], per_iter: int, low: list[float], high: list[float]) -> float:
    dt = statistics.median(high) - statistics.median(low)
    return (n[1] - n[0]) * per_iter / dt / 1e6 if dt > 0 else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    """A number, or n/a for nan (a time difference that was not positive: raise --scale)."""
    return "n/a" if x != x else f"{x:,.{digits}f}"


def fmt_ratio(x: float, digits: int) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vfw", default=str(REPO / ".venv" / "bin" / "vfw"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every iteration count (default 1)")
    ap.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    ap.add_argument("--no-probes", action="store_true",
                    help="skip the translation-cost and cProfile runs")
    ap.add_argument("--profile-top", type=int, default=10)
    ap.add_argument("--translate-runs", type=int, default=3,
                    help="translation-cost runs per loop (the median is shown)")
    ap.add_argument("--probe", choices=("translate", "profile"), help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-range", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("vfw_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        lo, hi = args.probe_range
        sys.exit(probe_main(args.probe, args.probe_out, lo, hi, args.vfw_args))

    if not Path(args.vfw).exists():
        raise SystemExit(f"vfw not found at {args.vfw} (--vfw PATH)")
    engines = ["vfw", "unicorn"]
    if args.qemu:
        engines.append("qemu")
    else:
        print("qemu-system-x86_64 not found: skipping QEMU (--qemu PATH)", file=sys.stderr)
    kernel = build_guest()
    elf = Elf32(kernel)
    try:
        uni = Unicorn(elf)
    except ImportError:
        raise SystemExit("unicorn is needed (the reference results and the unicorn column): "
                         "pip install unicorn") from None
    uni.check_paging()
    lo_hi = (elf.symbols["bench_code_start"], elf.symbols["bench_code_end"])
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    per_iter = {loop: uni.insns_per_iteration(loop) for loop in args.loops}

    @cache
    def expected(loop: str, n: int) -> int:
        value = closed_form(loop, n)
        return value if value is not None else uni.run(loop, n)[1]

    for loop in args.loops:   # the closed forms against unicorn
        for n in (0, 1, 3):
            got = uni.run(loop, n)[1]
            want = closed_form(loop, n)
            if want is not None and got != want:
                raise SystemExit(f"unicorn: {loop} n={n} gave {got}, expected {want}")

    counts = {(e, loop): (max(1, round(LARGE_N[e][loop] * args.scale / 10)),
                          max(2, round(LARGE_N[e][loop] * args.scale)))
              for e in engines for loop in args.loops}
    exes = {"vfw": args.vfw, "qemu": args.qemu}
    wall: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="vfw-bench-") as tmp:
        env = child_env(Path(tmp) / "cache", Path(tmp) / "pyc")
        # Warm-up (plugin index, .pyc files, page cache), untimed but checked.
        for e in ("vfw", "qemu"):
            if e in engines:
                argv = vmm_argv(e, exes[e], kernel, "alu", 1)
                _, _, status, out, err = timed_process(argv, env)
                check_output(e, argv, status, out, err, expected("alu", 1))
        for r in range(args.rounds):
            jobs = [(e, loop, n) for e in engines for loop in args.loops for n in counts[e, loop]]
            random.shuffle(jobs)
            for e, loop, n in jobs:
                if e == "unicorn":
                    elapsed, rax, _ = uni.run(loop, n)
                    if rax != expected(loop, n):
                        raise SystemExit(f"unicorn: {loop} n={n} gave {rax:#x}, expected "
                                         f"{expected(loop, n):#x}")
                    wall[e, loop, n].append(elapsed)
                    cpu[e, loop, n].append(elapsed)
                    continue
                argv = vmm_argv(e, exes[e], kernel, loop, n)
                w, c, status, out, err = timed_process(argv, env)
                check_output(e, argv, status, out, err, expected(loop, n))
                wall[e, loop, n].append(w)
                cpu[e, loop, n].append(c)
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)",
                  file=sys.stderr)

        probes: dict[tuple[str, str], dict[str, Any]] = {}
        if not args.no_probes:
            python = str(Path(args.vfw).parent / "python")
            if not Path(python).exists():
                python = sys.executable
            for loop in args.loops:
                small, large = counts["vfw", loop]
                runs = [run_probe(python, "translate", kernel, loop, small, env, lo_hi,
                                  expected(loop, small)) for _ in range(args.translate_runs)]
                runs.sort(key=lambda p: p["seconds"] / max(1, p["insns"]))
                probes["translate", loop] = runs[len(runs) // 2]
                n_prof = max(1, large // 3)
                probes["profile", loop] = run_probe(python, "profile", kernel, loop, n_prof,
                                                    env, lo_hi, expected(loop, n_prof))
    load1 = os.getloadavg()

    print(f"\nGuest MIPS, 64-bit long mode with 4-level paging; MIPS = (large - small n) x "
          f"insns/iteration / (median time at large n - at small n), {args.rounds} rounds")
    headers = ["loop", "insns/iter"]
    for e in engines:
        headers += [f"{e} n", f"{e} MIPS"]
    headers += ["vfw CPU MIPS"]
    if "qemu" in engines:
        headers += ["vfw/QEMU"]
    headers += ["vfw/unicorn", "goal", "met"]
    rows = []
    verdicts = []
    for loop in args.loops:
        row = [loop, f"{per_iter[loop]:,}"]
        m = {}
        for e in engines:
            small, large = counts[e, loop]
            m[e] = mips((small, large), per_iter[loop], wall[e, loop, small], wall[e, loop, large])
            row += [f"{small:,}/{large:,}", fmt(m[e])]
        small, large = counts["vfw", loop]
        vfw_cpu = mips((small, large), per_iter[loop], cpu["vfw", loop, small],
                       cpu["vfw", loop, large])
        row.append(fmt(vfw_cpu))
        if "qemu" in engines:
            row.append(fmt_ratio(m["vfw"] / m["qemu"], 4))
        row.append(fmt_ratio(m["vfw"] / m["unicorn"], 3))
        met = "n/a" if m["vfw"] != m["vfw"] else "MET" if m["vfw"] >= GOALS[loop] else "NOT MET"
        row += [f">= {GOALS[loop]:g}", met]
        rows.append(row)
        verdicts.append(f"  {loop}: vfw {fmt(m['vfw'])} MIPS, goal >= {GOALS[loop]:g}: {met}")
    print(table(headers, rows))
    print("Goals (vfw, wall-time MIPS):")
    print("\n".join(verdicts))

    if probes:
        print(f"\nvfw translation: in-process small-n runs (median of {args.translate_runs}), "
              "every block of the run incl. the 32-bit start-up code; times are CPU time of "
              "the vCPU thread, run ms is wall time")
        trows = []
        for loop in args.loops:
            p = probes["translate", loop]
            steady = p["seconds"] - p["setup"]
            trows.append([loop, str(p["blocks"]), str(p["insns"]),
                          f"{p['seconds'] * 1e3:.1f}", f"{p['setup'] * 1e3:.1f}",
                          f"{p['compile_exec'] * 1e3:.1f}",
                          f"{p['seconds'] / max(1, p['insns']) * 1e6:.0f}",
                          f"{steady / max(1, p['insns']) * 1e6:.0f}",
                          f"{p['loop_blocks']}/{p['loop_insns']}",
                          f"{p['loop_seconds'] / max(1, p['loop_insns']) * 1e6:.0f}",
                          f"{p['run_seconds'] * 1e3:.0f}"])
        print(table(["loop", "blocks", "guest insns", "translate ms", "translator set-up ms",
                     "compile+exec ms", "us/insn", "us/insn w/o set-up",
                     "loop-code blocks/insns", "loop-code us/insn", "run ms"], trows))
        print("(set-up: creating the per-mode Translator objects; compile+exec: Python's "
              "compile() and exec() of the generated source, part of the translate time)")
        for loop in args.loops:
            p = probes["profile", loop]
            small, large = counts["vfw", loop]
            print(f"\ncProfile, vfw, loop {loop}, n={max(1, large // 3):,}: top "
                  f"{args.profile_top} by own time (total {p['total']:.2f} s profiled)")
            prow = [[name, f"{nc:,}", f"{tt:.3f}", f"{100 * tt / p['total']:.1f}",
                     f"{ct:.3f}"]
                    for name, nc, tt, ct, _nfun in p["top"][:args.profile_top]]
            print(table(["function", "calls", "own s", "own %", "cumulative s"], prow))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: load average "
          f"{load0[0]:.2f} at start, {load1[0]:.2f} at end; {time.perf_counter() - t_start:.0f} s; "
          f"unicorn {uni.version}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
