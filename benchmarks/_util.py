"""Helpers shared by the benchmark scripts: child-process environment, timing, tables."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env(cache_dir: Path, pycache_dir: Path | None = None,
              **extra: str) -> dict[str, str]:
    """The environment for timed children: no inherited ``VFW_*`` settings, a private plugin
    index cache, and bytecode caching ON (``PYTHONDONTWRITEBYTECODE`` removed; with
    ``pycache_dir`` the ``.pyc`` files go there instead of next to the sources)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VFW_") and k not in ("PYTHONDONTWRITEBYTECODE",
                                                      "PYTHONPYCACHEPREFIX",
                                                      "PYTHONPROFILEIMPORTTIME")}
    env["VFW_CACHE_DIR"] = str(cache_dir)
    if pycache_dir is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache_dir)
    env.update(extra)
    return env


def run_checked(argv: Sequence[str], env: Mapping[str, str],
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run once, untimed, and fail loudly if the command fails (a broken command times fast)."""
    proc = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr}")
    return proc


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_process(argv: Sequence[str], env: Mapping[str, str],
                 cwd: Path | None = None) -> tuple[float, float]:
    """(wall, user+system CPU) time of one whole process in milliseconds, output discarded.

    CPU time is the steadier number on a machine shared with other jobs: waiting for a core
    inflates the wall time but not the CPU time."""
    cpu = _children_cpu()
    start = time.perf_counter()
    # No timeout: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would quantise
    # the measurement; the untimed check run (run_checked) has the timeout.
    proc = subprocess.run(list(argv), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    elapsed = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(argv)}")
    return elapsed, (_children_cpu() - cpu) * 1e3


@dataclass
class Series:
    """Timings of one benchmark row, in milliseconds."""

    label: str
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def add(self, wall_and_cpu: tuple[float, float]) -> None:
        self.samples.append(wall_and_cpu[0])
        self.cpu.append(wall_and_cpu[1])


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def verdict(ratio: float, goal: float) -> str:
    return f"{ratio:.2f}x (goal <= {goal:g}x: {'MET' if ratio <= goal else 'MISSED'})"
