"""Startup wall time of the ``vfw`` console script against ``qemu-system-x86_64 -machine help``.

All commands run interleaved (one of each per round, in a shuffled order) so that load changes
on the machine hit every row alike. The plugin index cache (a private ``VFW_CACHE_DIR``) and
Python's bytecode cache (a private ``PYTHONPYCACHEPREFIX``) are warmed by one untimed run of each
command first. Two extra rows show the cold paths: the plugin index rebuilt on every run
(``VFW_NO_PLUGIN_CACHE=1``) and ``PYTHONDONTWRITEBYTECODE=1`` without the private prefix, as in
a sandbox that sets that variable: the stdlib has its ``.pyc`` files, the editable vfw sources
none, so every run compiles them.

Then ``PYTHONPROFILEIMPORTTIME=1 vfw run -machine help`` is run a few times and the imports are
listed by median cumulative time.

Usage (from the repo root): ``python benchmarks/startup.py [--vfw .venv/bin/vfw] [-n 30]``
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from _util import REPO, Series, child_env, run_checked, table, time_process, verdict

GOAL_VS_QEMU = 3.0
MACHINE_HELP = ["run", "-machine", "help"]
IMPORTTIME_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")

#: Prints the vfw-core modules that ``vfw run -machine help`` imports, comma-separated.
PROBE = """
import contextlib, io, sys
from vfw.__main__ import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["run", "-machine", "help"])
print(",".join(sorted(m for m in sys.modules if m == "vfw" or m.startswith("vfw."))))
"""

#: Times, in-process, importing those modules and then running the command (nothing else is
#: imported before ``t0`` so that vfw pays for every stdlib module it needs).
SPLIT = """
import sys, time
t0 = time.perf_counter()
import {modules}
t1 = time.perf_counter()
from vfw.__main__ import main
stdout, sys.stdout = sys.stdout, open("/dev/null", "w")
main(["run", "-machine", "help"])
sys.stdout = stdout
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


class Command(NamedTuple):
    label: str
    argv: list[str]
    env: dict[str, str]


def build_commands(vfw: str, qemu: str, work: Path) -> list[Command]:
    """The rows of the benchmark, each with its own environment. Row 0 is the yardstick."""
    python = str(Path(vfw).parent / "python")
    warm = child_env(work / "cache", work / "pyc")
    cold_index = child_env(work / "cache", work / "pyc", VFW_NO_PLUGIN_CACHE="1")
    no_pyc = child_env(work / "cache", None, PYTHONDONTWRITEBYTECODE="1")
    return [
        Command("qemu-system-x86_64 -machine help", [qemu, "-machine", "help"], warm),
        Command("python -c pass (venv interpreter)", [python, "-c", "pass"], warm),
        Command("vfw --version", [vfw, "--version"], warm),
        Command("vfw run -machine help", [vfw, *MACHINE_HELP], warm),
        Command("vfw run -device help", [vfw, "run", "-device", "help"], warm),
        Command("vfw run -machine help [cold index]", [vfw, *MACHINE_HELP], cold_index),
        Command("vfw run -machine help [DONTWRITEBYTECODE]", [vfw, *MACHINE_HELP], no_pyc),
    ]


def split(python: str, env: dict[str, str], runs: int, cwd: Path) -> tuple[float, float]:
    """Median in-process ms of (importing the vfw-core modules ``vfw run -machine help`` uses,
    the rest of the command: index load, plugin imports, help text)."""
    modules = run_checked([python, "-c", PROBE], env, cwd).stdout.strip()
    samples = [run_checked([python, "-c", SPLIT.format(modules=modules)], env, cwd).stdout.split()
               for _ in range(runs)]
    return (statistics.median(float(s[0]) for s in samples),
            statistics.median(float(s[1]) for s in samples))


def time_commands(commands: list[Command], runs: int, seed: int, cwd: Path) -> list[Series]:
    """``runs`` rounds; each round runs every command once, in a shuffled order."""
    for cmd in commands:  # warm-up: fills the plugin index and bytecode caches, checks status
        run_checked(cmd.argv, cmd.env, cwd)
    series = {cmd.label: Series(cmd.label) for cmd in commands}
    rng = random.Random(seed)
    order = list(commands)
    for _ in range(runs):
        rng.shuffle(order)
        for cmd in order:
            series[cmd.label].add(time_process(cmd.argv, cmd.env, cwd))
    return [series[cmd.label] for cmd in commands]


def importtime(vfw: str, env: dict[str, str], runs: int,
               cwd: Path) -> list[tuple[str, int, float, float]]:
    """(module, nesting depth, median self ms, median cumulative ms) for every import of
    ``vfw run -machine help``, largest cumulative first."""
    per_module: dict[str, tuple[int, list[int], list[int]]] = {}
    for _ in range(runs):
        stderr = run_checked([vfw, *MACHINE_HELP], {**env, "PYTHONPROFILEIMPORTTIME": "1"},
                             cwd).stderr
        for line in stderr.splitlines():
            m = IMPORTTIME_RE.match(line)
            if m:
                entry = per_module.setdefault(m[4], (len(m[3]) // 2, [], []))
                entry[1].append(int(m[1]))
                entry[2].append(int(m[2]))
    rows = [(name, depth, statistics.median(s) / 1e3, statistics.median(c) / 1e3)
            for name, (depth, s, c) in per_module.items()]
    return sorted(rows, key=lambda r: r[3], reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vfw", default=str(REPO / ".venv" / "bin" / "vfw"),
                        help="the vfw console script to time (default: .venv/bin/vfw)")
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or
                        "/usr/bin/qemu-system-x86_64", help="the QEMU binary (yardstick)")
    parser.add_argument("-n", "--runs", type=int, default=30, help="timed runs per command")
    parser.add_argument("--importtime-runs", type=int, default=7,
                        help="runs for the import-time table and the in-process split")
    parser.add_argument("--top", type=int, default=15, help="importtime rows to print")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    vfw = str(Path(args.vfw).absolute())

    with tempfile.TemporaryDirectory(prefix="vfw-bench-startup-") as tmp:
        work = Path(tmp)  # also the children's cwd: nobody else writes there
        commands = build_commands(vfw, args.qemu, work)
        print(f"vfw: {vfw}\nqemu: {args.qemu}\npython {sys.version.split()[0]}; {args.runs} "
              "interleaved runs per row after one untimed warm-up run of each row\n(plugin "
              "index cache and .pyc files warm unless the row says otherwise)\n")
        results = time_commands(commands, args.runs, args.seed, work)
        qemu = results[0]
        rows = [[s.label, f"{s.median:.1f}", f"{s.mean:.1f}", f"{s.min:.1f}",
                 f"{s.median / qemu.median:.2f}x", f"{s.min / qemu.min:.2f}x",
                 f"{s.cpu_median:.1f}", f"{s.cpu_median / qemu.cpu_median:.2f}x"]
                for s in results]
        print(table(["command", "median ms", "mean ms", "min ms", "/QEMU median", "/QEMU min",
                     "CPU ms median", "/QEMU CPU"], rows))
        floor, machine = results[1], results[3]
        print(f"\nvfw run -machine help vs QEMU -machine help: median "
              f"{verdict(machine.median / qemu.median, GOAL_VS_QEMU)}; min "
              f"{machine.min / qemu.min:.2f}x; CPU {machine.cpu_median / qemu.cpu_median:.2f}x")
        python = str(Path(vfw).parent / "python")
        imports_ms, rest_ms = split(python, commands[3].env, args.importtime_runs, work)
        print(f"split of its {machine.median:.1f} ms: interpreter + site {floor.median:.1f} ms "
              f"(python -c pass), importing the vfw-core modules it uses {imports_ms:.1f} ms, "
              f"the rest (index load, plugin imports, help text) {rest_ms:.1f} ms (in-process, "
              f"median of {args.importtime_runs})")

        imports = importtime(vfw, commands[3].env, args.importtime_runs, work)
        print(f"\nimports of `vfw run -machine help` by cumulative time (PYTHONPROFILEIMPORTTIME,"
              f" median of {args.importtime_runs} runs, warm .pyc; importtime adds overhead\n"
              "and does not see modules imported with importlib.import_module, i.e. plugins):")
        print(table(["module (indent = nesting depth)", "cumulative ms", "self ms"],
                    [["  " * depth + name, f"{cum:.2f}", f"{self_:.2f}"]
                     for name, depth, self_, cum in imports[:args.top]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
