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
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _util import REPO, Series, child_env, run_checked, table, time_process, verdict

GOAL_VS_QEMU = 3.0
IMPORTTIME_RE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass
class Command:
    label: str
    argv: list[str]
    env: dict[str, str]


PROBE = """
import contextlib, io, sys
from vfw.__main__ import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["run", "-machine", "help"])
print(",".join(sorted(m for m in sys.modules if m == "vfw" or m.startswith("vfw."))))
"""


def core_modules(python: str, env: dict[str, str]) -> str:
    """The vfw-core modules that ``vfw run -machine help`` imports, comma-separated."""
    return run_checked([python, "-c", PROBE], env).stdout.strip()


def build_commands(vfw: str, qemu: str, work: Path) -> list[Command]:
    """The rows of the benchmark, each with its own environment."""
    python = str(Path(vfw).parent / "python")
    warm = child_env(work / "cache", work / "pyc")
    imports = core_modules(python, warm)
    cold_index = child_env(work / "cache", work / "pyc", VFW_NO_PLUGIN_CACHE="1")
    no_pyc = child_env(work / "cache", None, PYTHONDONTWRITEBYTECODE="1")
    return [
        Command("qemu-system-x86_64 -machine help", [qemu, "-machine", "help"], warm),
        Command("python -c pass (venv interpreter floor)", [python, "-c", "pass"], warm),
        Command("python -c 'import <vfw-core modules of run>'",
                [python, "-c", f"import {imports}"], warm),
        Command("vfw --version", [vfw, "--version"], warm),
        Command("vfw run -machine help", [vfw, "run", "-machine", "help"], warm),
        Command("vfw run -device help", [vfw, "run", "-device", "help"], warm),
        Command("vfw run -machine help [cold index]", [vfw, "run", "-machine", "help"],
                cold_index),
        Command("vfw run -machine help [PYTHONDONTWRITEBYTECODE]", [vfw, "run", "-machine", "help"], no_pyc),
    ]


def time_commands(commands: list[Command], runs: int, seed: int) -> list[Series]:
    """``runs`` rounds; each round runs every command once, in a shuffled order."""
    for cmd in commands:  # warm-up: fills the plugin index and bytecode caches, checks status
        run_checked(cmd.argv, cmd.env)
    series = {cmd.label: Series(cmd.label) for cmd in commands}
    rng = random.Random(seed)
    order = list(commands)
    for _ in range(runs):
        rng.shuffle(order)
        for cmd in order:
            series[cmd.label].add(time_process(cmd.argv, cmd.env))
    return [series[cmd.label] for cmd in commands]


def importtime(vfw: str, env: dict[str, str], runs: int) -> list[tuple[str, int, float, float]]:
    """(module, nesting depth, median self ms, median cumulative ms) for every import of
    ``vfw run -machine help``, largest cumulative first."""
    per_module: dict[str, tuple[int, list[int], list[int]]] = {}
    for _ in range(runs):
        proc = subprocess.run([vfw, "run", "-machine", "help"], capture_output=True, text=True,
                              env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
        for line in proc.stderr.splitlines():
            m = IMPORTTIME_RE.match(line)
            if not m:
                continue
            self_us, cum_us, depth, name = int(m[1]), int(m[2]), len(m[3]) // 2, m[4]
            entry = per_module.setdefault(name, (depth, [], []))
            entry[1].append(self_us)
            entry[2].append(cum_us)
    rows = [(name, depth, statistics.median(s) / 1e3, statistics.median(c) / 1e3)
            for name, (depth, s, c) in per_module.items()]
    rows.sort(key=lambda r: r[3], reverse=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vfw", default=str(REPO / ".venv" / "bin" / "vfw"),
                        help="the vfw console script to time (default: .venv/bin/vfw)")
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or
                        "/usr/bin/qemu-system-x86_64", help="the QEMU binary (yardstick)")
    parser.add_argument("-n", "--runs", type=int, default=30, help="timed runs per command")
    parser.add_argument("--importtime-runs", type=int, default=7)
    parser.add_argument("--top", type=int, default=15, help="importtime rows to print")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vfw-bench-startup-") as tmp:
        work = Path(tmp)
        commands = build_commands(args.vfw, args.qemu, work)
        print(f"vfw: {args.vfw}\nqemu: {args.qemu}\npython: {sys.version.split()[0]}, "
              f"{args.runs} interleaved runs per row; one untimed warm-up run of each row "
              "first (plugin index cache and .pyc cache warm unless the row says otherwise)\n")
        results = time_commands(commands, args.runs, args.seed)
        qemu = results[0]
        rows = []
        for s in results:
            rows.append([s.label, f"{s.median:.1f}", f"{s.mean:.1f}", f"{s.min:.1f}",
                         f"{s.median / qemu.median:.2f}x", f"{s.min / qemu.min:.2f}x",
                         f"{s.cpu_median:.1f}", f"{s.cpu_median / qemu.cpu_median:.2f}x"])
        print(table(["command", "median ms", "mean ms", "min ms", "/QEMU median", "/QEMU min",
                     "CPU ms (median)", "/QEMU CPU"], rows))
        machine = next(s for s in results if s.label == "vfw run -machine help")
        print(f"\nvfw run -machine help / QEMU -machine help: "
              f"median {verdict(machine.median / qemu.median, GOAL_VS_QEMU)}, "
              f"min {machine.min / qemu.min:.2f}x, CPU time "
              f"{machine.cpu_median / qemu.cpu_median:.2f}x")

        floor, core = results[1].median, results[2].median
        print(f"\nsplit of the median: interpreter + site {floor:.1f} ms, importing the vfw-core"
              f" modules it uses {core - floor:.1f} ms, the command's own work (index load,"
              f" plugin imports, class init, help text) {machine.median - core:.1f} ms")

        imports = importtime(args.vfw, commands[0].env, args.importtime_runs)
        print(f"\nWhere `vfw run -machine help` spends its import time "
              f"(PYTHONPROFILEIMPORTTIME, median of {args.importtime_runs} runs, warm .pyc):")
        print(table(["module (indent = nesting)", "cumulative ms", "self ms"],
                    [["  " * depth + name, f"{cum:.2f}", f"{self_:.2f}"]
                     for name, depth, self_, cum in imports[:args.top]]))
        print("(importtime adds its own overhead, and cannot see plugin modules imported with"
              " importlib.import_module)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
