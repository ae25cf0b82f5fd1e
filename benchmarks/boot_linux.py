"""Boot Debian's cloud kernel to a busybox /init: vfw's TCG against QEMU's TCG (issue 6).

Both get the same kernel (/boot/vmlinuz-*-cloud-amd64), the same initramfs (built by
tests/linux/initramfs.py: /init prints VFW-INIT-REACHED, loads the virtio modules, then runs
``poweroff -f``) and the same command line, ``-m 512 -smp 1 -nographic``. For each run it
reports the wall time to the marker and to the exit of the process, and the peak RSS of the
process and its CPU time (``os.wait4``'s ``ru_maxrss``, ``ru_utime + ru_stime``: steadier than the
wall time when other jobs share the machine)::

    python benchmarks/boot_linux.py                  # 1 vfw run, 3 QEMU runs (~2.5 min)
    python benchmarks/boot_linux.py --count          # + a run counting guest instructions
    python benchmarks/boot_linux.py --calls          # + a run counting block calls
    python benchmarks/boot_linux.py --profile P.out  # + a cProfile run, grouped by area

vfw runs through this script's ``--child`` mode, which calls ``vfw.vl.run_cli`` in-process
(as ``python -m vfw run`` does) and records the number of translated blocks at exit (free).
``--count`` adds a run that also counts executed guest instructions: it translates blocks
without loop specialisation (so each call of a block runs its instructions at most once) and
adds a block's instruction count at each call. That run is slower, so the guest's
time-dependent loops (delay calibration, idle) differ a little from the timed run; a block
left early by an exception still counts whole. ``--profile`` runs one boot under cProfile
and splits the self time: translation, executing generated code, CPU helpers called by
it, the block dispatch loop, device emulation, interrupts and timers, the rest.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from _util import child_env  # noqa: E402

MARKER = "VFW-INIT-REACHED"
APPEND = "console=ttyS0 quiet cryptomgr.notests"


# -- the child: vfw in-process, with statistics --------------------------------------------------
def child(stats_path: str, mode: str, vfw_args: list[str]) -> int:
    """Run ``vfw run VFW_ARGS`` in this process; write statistics as JSON to ``stats_path``.

    ``mode``: ``stats`` (translated blocks only), ``calls`` (also block calls), ``count``
    (also executed instructions, loop blocks off),
    ``profile:FILE`` (under cProfile, the profile written to FILE)."""
    from vfw_accel_tcg import tbcache, translate, vcpu

    caches: list[tbcache.TBCache] = []
    orig_init = tbcache.TBCache.__init__

    def init(self: tbcache.TBCache, *args: object, **kwargs: object) -> None:
        orig_init(self, *args, **kwargs)  # type: ignore[arg-type]
        caches.append(self)

    tbcache.TBCache.__init__ = init  # type: ignore[method-assign]
    # Time spent translating (decode + code generation + compile), two clock reads per block.
    translating = [0.0]
    orig_tr = vcpu.TcgCPU._translate

    def timed_translate(self: vcpu.TcgCPU, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_tr(self, *args)
        finally:
            translating[0] += time.perf_counter() - t0

    vcpu.TcgCPU._translate = timed_translate  # type: ignore[method-assign]
    # Counting runs: calls per block function (and its instruction count, taken when first
    # seen), one-instruction runs outside blocks apart.
    per_block: dict[Any, int] = {}
    sizes: dict[Any, int] = {}
    singles = [0]
    if mode in ("count", "calls"):
        def run_blocks_counted(self: vcpu.TcgCPU, n: int) -> int:
            s, R, get, lookup = self, self.R, self.jc.get, self.lookup
            code2tb = self.tbc.code2tb
            rip = self.env.rip
            while n > 0:
                fn = get(rip)
                if fn is None:
                    fn = lookup(rip)
                c = per_block.get(fn)
                if c is None:
                    tb = code2tb.get(fn.__code__)
                    sizes[fn] = tb.ninsns if tb is not None else 1
                    c = 0
                per_block[fn] = c + 1
                rip = fn(s, R)
                n -= 1
                if s.exit_req:
                    break
            self.env.rip = rip
            return n

        orig_run_one = vcpu.TcgCPU.run_one

        def run_one(self: vcpu.TcgCPU) -> None:
            singles[0] += 1
            orig_run_one(self)

        vcpu.TcgCPU.run_blocks = run_blocks_counted  # type: ignore[method-assign]
        vcpu.TcgCPU.run_one = run_one  # type: ignore[method-assign]
    if mode == "count":
        # Blocks without loop specialisation, so a block call runs each of its instructions
        # at most once and calls x instructions counts what ran.
        orig_translate = translate.Translator.translate

        def translate_no_loops(self: translate.Translator, *args: object,
                               **kwargs: object) -> object:
            kwargs["allow_loop"] = False
            return orig_translate(self, *args, **kwargs)  # type: ignore[arg-type]

        translate.Translator.translate = translate_no_loops  # type: ignore[method-assign]

    from vfw.vl import run_cli

    start = time.monotonic()
    if mode.startswith("sample:"):
        samples = _start_sampling()
        try:
            status = run_cli(vfw_args)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            Path(mode.split(":", 1)[1]).write_text(json.dumps(
                [[f, n, c] for (f, n), c in samples.items()]))
    elif mode.startswith("profile:"):
        import cProfile

        prof = cProfile.Profile()
        status = prof.runcall(run_cli, vfw_args)
        prof.dump_stats(mode.split(":", 1)[1])
    else:
        status = run_cli(vfw_args)
    stats = {"status": status, "seconds": time.monotonic() - start,
             "translated_blocks": sum(c.translations for c in caches),
             "translate_seconds": round(translating[0], 2),
             "instructions": None, "block_calls": None}
    if mode in ("count", "calls"):
        stats["block_calls"] = sum(per_block.values()) + singles[0]
        stats["blocks_called"] = len(per_block)
        stats["blocks_called_at_most_twice"] = sum(1 for c in per_block.values() if c <= 2)
    if mode == "count":
        stats["instructions"] = sum(c * sizes[fn] for fn, c in per_block.items()) + singles[0]
    Path(stats_path).write_text(json.dumps(stats))
    return status


def _start_sampling(interval: float = 0.001) -> dict[tuple[str, str], int]:
    """Sample the running Python frame every ``interval`` s of CPU time (SIGPROF): a cheap
    profile (a few % overhead) that charges built-ins to the Python function calling them."""
    samples: dict[tuple[str, str], int] = {}

    def on_prof(signum: int, frame: Any) -> None:
        if frame is not None:
            key = (frame.f_code.co_filename, frame.f_code.co_name)
            samples[key] = samples.get(key, 0) + 1

    signal.signal(signal.SIGPROF, on_prof)
    signal.setitimer(signal.ITIMER_PROF, interval, interval)
    return samples


def sample_summary(path: Path, top: int = 20) -> str:
    """Samples by area and the functions with the most samples (self time)."""
    rows = json.loads(path.read_text())
    total = sum(c for _, _, c in rows) or 1
    groups: dict[str, int] = {}
    merged: dict[tuple[str, str], int] = {}
    for filename, name, count in rows:
        gen = filename.startswith("<tcg ")
        group = "generated code" if gen else group_of((filename, 0, name))
        groups[group] = groups.get(group, 0) + count
        key = ("<tcg blocks, all>", "tb") if gen else (filename, name)
        merged[key] = merged.get(key, 0) + count
    lines = [f"{total} samples (1 per ms of CPU time)", "", "| area | share |", "|---|---:|"]
    for group, count in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {100 * count / total:.1f}% |")
    lines += ["", "| function (self) | share | area |", "|---|---:|---|"]
    for (filename, name), count in sorted(merged.items(), key=lambda kv: -kv[1])[:top]:
        where = filename.split("/src/")[-1] if "/src/" in filename else Path(filename).name
        area = "generated code" if filename.startswith("<tcg") else group_of(
            (filename, 0, name))
        lines.append(f"| `{where}:{name}` | {100 * count / total:.1f}% | {area} |")
    return "\n".join(lines)


# -- the parent: timing -------------------------------------------------------------------------
class Result:
    """One boot: times from the start of the process, peak RSS, status, output."""

    def __init__(self, label: str, marker: float | None, exit: float, rss_kib: int,
                 status: int, output: str, stats: dict[str, object] | None = None,
                 cpu: float = 0.0):
        self.label, self.marker, self.exit, self.rss_kib = label, marker, exit, rss_kib
        self.cpu = cpu
        self.status, self.output, self.stats = status, output, stats or {}


def boot(label: str, argv: Sequence[str], env: dict[str, str], timeout: float,
         stats_path: Path | None = None) -> Result:
    """Run ``argv`` once: wall time to the marker line and to the exit, peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    marker: list[float] = []
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            if not marker and MARKER in line:
                marker.append(time.perf_counter() - start)
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, wstatus, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(wstatus)
    reader.join(10)
    stats = None
    if stats_path is not None and stats_path.exists():
        stats = json.loads(stats_path.read_text())
    return Result(label, marker[0] if marker else None, elapsed, usage.ru_maxrss,
                  proc.returncode, "".join(lines), stats, usage.ru_utime + usage.ru_stime)


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


# -- profile grouping -----------------------------------------------------------------------------
TCG = "vfw_accel_tcg/"
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("translation", (TCG + "translate.py", TCG + "codegen.py", TCG + "decode.py",
                     TCG + "fastdecode.py", TCG + "tbcache.py", "capstone/",
                     "vcpu.py:_translate",
                     "vcpu.py:_verify", "vcpu.py:fetch")),
    ("generated code", ("<tcg ",)),
    ("block dispatch", ("vcpu.py:run_blocks", "vcpu.py:lookup", "vcpu.py:_lookup",
                        "vcpu.py:step", "accel.py:run")),
    ("interrupts/timers", ("vfw_board_pc/apic.py", "vfw_board_pc/ioapic.py",
                           "vfw_board_pc/i8254.py", "vfw_board_pc/i8259.py",
                           "vfw_board_pc/rtc.py", "vfw_board_pc/acpi_pm.py", "vfw/timer.py",
                           "vfw/irq.py", "vfw/main_loop.py", "vcpu.py:interrupt",
                           "vcpu.py:handle_exit_req", "vcpu.py:runnable", "time.monotonic",
                           "select.epoll", "select.poll")),
    ("CPU helpers", (TCG,)),
    ("device emulation", ("vfw_board_pc/", "vfw_dev_virtio/", "vfw/memory.py", "vfw/pci",
                          "vfw/chardev.py", "vfw/block", "vfw/net.py")),
]


def group_of(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    key = f"{filename}:{name}"
    short = f"{Path(filename).name}:{name}"
    for group, needles in GROUPS:
        for needle in needles:
            if needle in key or needle == short or (needle.startswith("<") and needle in name):
                return group
    return "other"


def profile_summary(path: Path, top: int = 25) -> str:
    """Self time by group (built-ins charged to their callers' groups) and the top functions."""
    import pstats

    st = pstats.Stats(str(path))
    raw = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups: dict[str, float] = {}
    for func, (_cc, _nc, tt, _ct, callers) in raw.items():
        group = group_of(func)
        if func[0] == "~" and group == "other" and callers:
            # A built-in (dict.get, int.from_bytes, ...): charge it to its callers' groups.
            weight = sum(c[2] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                g = group_of(caller)
                groups[g] = groups.get(g, 0.0) + tt * (c[2] / weight if weight else 0)
            continue
        groups[group] = groups.get(group, 0.0) + tt
    gen = sum(v[2] for f, v in raw.items() if f[0].startswith("<tcg "))
    ngen = sum(1 for f in raw if f[0].startswith("<tcg "))
    lines = [f"profile total self time {total:.1f} s (profiled; slower than a plain run)", "",
             "| area | self s | share |", "|---|---:|---:|"]
    for group, secs in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {secs:.1f} | {100 * secs / total:.1f}% |")
    lines += ["", f"generated blocks in the profile: {ngen}, their self time {gen:.1f} s", "",
              "| function | calls | self s | cumulative s | area |",
              "|---|---:|---:|---:|---|"]
    merged: dict[tuple[str, int, str], list[float]] = {}
    for func, (_cc, nc, tt, ct, _callers) in raw.items():
        key = ("<tcg blocks, all>", 0, "tb") if func[0].startswith("<tcg ") else func
        m = merged.setdefault(key, [0, 0.0, 0.0])
        m[0] += nc
        m[1] += tt
        m[2] += ct
    for func, (nc, tt, ct) in sorted(merged.items(), key=lambda kv: -kv[1][1])[:top]:
        filename, line, name = func
        where = filename.split("/src/")[-1] if "/src/" in filename else Path(filename).name
        label = f"{where}:{line}({name})" if line else f"{where} {name}"
        area = "generated code" if func[0].startswith("<tcg") else group_of(func)
        lines.append(f"| `{label}` | {int(nc)} | {tt:.1f} | {ct:.1f} | {area} |")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--child"]:
        return child(args_list[1], args_list[2], args_list[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--vfw-runs", type=int, default=1)
    ap.add_argument("--qemu-runs", type=int, default=3)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--count", action="store_true", help="add an instruction-counting run")
    ap.add_argument("--calls", action="store_true",
                    help="add a run counting block calls (translation as in a normal run)")
    ap.add_argument("--profile", metavar="FILE", help="add a cProfile run, stats to FILE")
    ap.add_argument("--sample", metavar="FILE",
                    help="add a run sampled every ms of CPU (SIGPROF), samples to FILE")
    ap.add_argument("--only-analysis", action="store_true",
                    help="skip the timed runs (with --count / --calls / --profile)")
    ap.add_argument("--kernel", default=(sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
                                         or [""])[-1])
    args = ap.parse_args(args_list)
    if not args.kernel:
        raise SystemExit("no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64")
    sys.path.insert(0, str(REPO / "tests" / "linux"))
    from initramfs import build_initramfs

    work = Path(tempfile.mkdtemp(prefix="vfw-boot-linux-"))
    initrd = build_initramfs(work / "initramfs.cpio.gz", args.kernel)
    common = ["-m", "512", "-smp", str(args.smp), "-kernel", args.kernel, "-initrd",
              str(initrd), "-append", APPEND, "-nographic"]
    env = child_env(work / "cache", work / "pycache")
    vfw = [sys.executable, str(Path(__file__).resolve()), "--child"]
    vfw_args = ["-accel", "tcg", *common]
    qemu = [args.qemu, "-accel", "tcg", "-M", "pc", *common]
    # Warm the plugin index and the .pyc files (untimed).
    subprocess.run([sys.executable, "-m", "vfw", "run", "-machine", "help"], env=env,
                   capture_output=True, timeout=120)
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {args.kernel}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
    print(f"# vfw: python -m vfw run {' '.join(vfw_args)}")
    print(f"# qemu: {' '.join(qemu)}")
    results: list[Result] = []
    if not args.only_analysis:
        for i in range(max(args.qemu_runs, args.vfw_runs)):
            if i < args.qemu_runs:
                results.append(boot("QEMU TCG", qemu, env, args.timeout))
            if i < args.vfw_runs:
                sp = work / f"stats{i}.json"
                results.append(boot("vfw TCG", [*vfw, str(sp), "stats", *vfw_args],
                                    env, args.timeout, sp))
        print("\n| run | to marker s | to exit s | CPU s (user+sys) | peak RSS MiB | status "
              "| translated blocks | translating s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r.label} | {fmt(r.marker)} | {r.exit:.2f} | {r.cpu:.2f} | "
                  f"{r.rss_kib / 1024:.0f} | {r.status} | "
                  f"{r.stats.get('translated_blocks', '-')} | "
                  f"{r.stats.get('translate_seconds', '-')} |")
        vfw_marks = [r.marker for r in results if r.label == "vfw TCG" and r.marker]
        q_marks = [r.marker for r in results if r.label == "QEMU TCG" and r.marker]
        if vfw_marks and q_marks:
            best = min(vfw_marks)
            print(f"\nvfw/QEMU to the marker: {best / min(q_marks):.0f}x; goal < 120 s: "
                  f"{'MET' if best < 120 else 'NOT MET'} ({best:.1f} s); moonshot < 60 s: "
                  f"{'MET' if best < 60 else 'NOT MET'}")
        for r in results:
            if r.marker is None or r.status != 0:
                print(f"\n{r.label} failed (status {r.status}); output tail:\n{r.output[-2000:]}")
    def extra_run(label: str, mode: str) -> Result:
        sp = work / f"{mode}.json"
        r = boot(label, [*vfw, str(sp), mode, *vfw_args], env, args.timeout * 2, sp)
        print(f"\n{label}: marker {fmt(r.marker)} s, exit {r.exit:.1f} s, CPU {r.cpu:.1f} s, "
              f"status {r.status}, {r.stats.get('translated_blocks')} blocks translated")
        return r

    if args.count:
        r = extra_run("vfw TCG, counting instructions (loop blocks off)", "count")
        print(f"{r.stats.get('instructions')} guest instructions in "
              f"{r.stats.get('block_calls')} block calls")
    if args.calls:
        r = extra_run("vfw TCG, counting block calls", "calls")
        print(f"{r.stats.get('block_calls')} block calls of {r.stats.get('blocks_called')} "
              f"blocks ({r.stats.get('blocks_called_at_most_twice')} of them called at most "
              f"twice)")
    if args.profile:
        sp = work / "profile.json"
        prof = Path(args.profile).resolve()
        r = boot("vfw TCG, cProfile", [*vfw, str(sp), f"profile:{prof}", *vfw_args],
                 env, args.timeout * 4, sp)
        print(f"\ncProfile run: marker {fmt(r.marker)} s, exit {r.exit:.1f} s, CPU {r.cpu:.1f} s, "
              f"status "
              f"{r.status}, {r.stats.get('translated_blocks')} blocks translated\n")
        if prof.exists():
            print(profile_summary(prof))
    if args.sample:
        sp = work / "sample.json"
        out = Path(args.sample).resolve()
        r = boot("vfw TCG, sampled", [*vfw, str(sp), f"sample:{out}", *vfw_args], env,
                 args.timeout * 2, sp)
        print(f"\nsampled run: marker {fmt(r.marker)} s, exit {r.exit:.1f} s, CPU {r.cpu:.1f} s, "
              f"status {r.status}, {r.stats.get('translated_blocks')} blocks translated\n")
        if out.exists():
            print(sample_summary(out))
    load = os.getloadavg()
    print(f"\n# load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
