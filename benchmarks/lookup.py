"""Cost of resolving one type name with 5 vs 200 installed plugin distributions.

Two fresh venvs (no system site-packages) get vfw-core from a wheel built once, then N fake
plugin distributions written straight into site-packages (``.dist-info`` + package, as pip
leaves them), each providing one device type ``benchdev-<i>`` from its own package
``benchplug_<i>``. Measured in that venv's python, interleaved between the two venvs:

(a) wall time of a whole process that resolves one type (warm plugin index cache);
(b) in-process time of the first ``TABLE.lookup`` in a fresh process, index load included, with
    the vfw-core modules any device plugin needs (vfw.modules, vfw.qdev) imported beforehand so
    that their constant import cost does not dilute the ratio;
(c) (a) and (b) with the index cache disabled (``VFW_NO_PLUGIN_CACHE=1``).

Every in-process run checks (``sys.modules``) that resolving one type imported exactly one
plugin package.

Usage (from the repo root): ``python benchmarks/lookup.py [-n 30] [--counts 5 200]``
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _util import REPO, Series, child_env, run_checked, table, time_process, verdict

GOAL_RATIO = 1.2
TYPE_INDEX = 3  # the type resolved: benchdev-3

WHOLE_PROCESS = f"from vfw.qom import TABLE; TABLE.lookup('benchdev-{TYPE_INDEX}')"

IN_PROCESS = f"""
import json, sys, time
import vfw.modules, vfw.qdev
from vfw.qom import TABLE

index_ms = []
def timed(fn):
    def wrapper(*args):
        t = time.perf_counter()
        result = fn(*args)
        index_ms.append((time.perf_counter() - t) * 1e3)
        return result
    return wrapper
vfw.modules.PluginIndex.lookup = timed(vfw.modules.PluginIndex.lookup)
vfw.modules.PluginIndex.all = timed(vfw.modules.PluginIndex.all)

t = time.perf_counter()
TABLE.lookup("benchdev-{TYPE_INDEX}")
lookup_ms = (time.perf_counter() - t) * 1e3
plugins = sorted({{m.split(".")[0] for m in sys.modules if m.startswith("benchplug_")}})
print(json.dumps({{"lookup_ms": lookup_ms, "index_ms": sum(index_ms), "plugins": plugins}}))
"""

PLUGIN_INIT = 'VFW_API = "1.0"\n'

DEVICE_MODULE = '''from vfw.qdev import Device
from vfw.qom import register_type


@register_type
class BenchDev{i}(Device):
    TYPE = "benchdev-{i}"
    CATEGORY = "misc"
    DESC = "benchmark device {i}"
'''

ROWS: list[tuple[str, str, dict[str, str]]] = [  # (label, code, extra environment)
    ("(a) process, warm cache", WHOLE_PROCESS, {}),
    ("(b) first lookup in-process, warm cache", IN_PROCESS, {}),
    ("(c) process, no cache", WHOLE_PROCESS, {"VFW_NO_PLUGIN_CACHE": "1"}),
    ("(c) first lookup in-process, no cache", IN_PROCESS, {"VFW_NO_PLUGIN_CACHE": "1"}),
]


def sh(argv: list[str]) -> None:
    """Run a setup step quietly; show its output only if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")


def write_plugin(site: Path, i: int) -> None:
    """Install fake distribution ``vfw-bench-plugin-<i>`` the way pip would leave it."""
    pkg = site / f"benchplug_{i}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN_INIT)
    (pkg / "dev.py").write_text(DEVICE_MODULE.format(i=i))
    info = site / f"vfw_bench_plugin_{i}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vfw-bench-plugin-{i}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[vfw.plugins]\nbench-plugin-{i} = benchplug_{i}\n\n"
        f"[vfw.types]\nbenchdev-{i} = benchplug_{i}.dev\n")
    (info / "INSTALLER").write_text("vfw-benchmark\n")
    (info / "top_level.txt").write_text(f"benchplug_{i}\n")
    files = [f"benchplug_{i}/__init__.py", f"benchplug_{i}/dev.py"] + [
        f"{info.name}/{n}" for n in ("METADATA", "entry_points.txt", "INSTALLER",
                                     "top_level.txt", "RECORD")]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))


def make_venv(root: Path, wheel: Path, count: int, base_python: str) -> Path:
    """A fresh venv with vfw-core and ``count`` fake plugins; returns its python."""
    venv = root / f"venv-{count}"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(root / f"cache-{count}", ignore_errors=True)
    sh([base_python, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    for i in range(count):
        write_plugin(Path(site.stdout.strip()), i)
    return python


def check_one_plugin_imported(count: int, info: dict[str, Any]) -> None:
    """Resolving one type must import exactly the one plugin package that provides it."""
    if info["plugins"] != [f"benchplug_{TYPE_INDEX}"]:
        raise SystemExit(f"with {count} plugins installed, resolving benchdev-{TYPE_INDEX} "
                         f"imported the plugin packages {info['plugins']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=30, help="timed runs per row")
    parser.add_argument("--counts", type=int, nargs=2, default=[5, 200], metavar=("FEW", "MANY"),
                        help="plugin distributions in the two venvs (default 5 200)")
    parser.add_argument("--core", default=str(REPO / "vfw-core"), help="vfw-core source tree")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venvs")
    parser.add_argument("--workdir", help="build (and keep) the venvs here, not in a temp dir")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    few, many = args.counts
    if few <= TYPE_INDEX:
        parser.error(f"--counts: need more than {TYPE_INDEX} plugins")

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vfw-bench-lk-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        print(f"setting up venvs in {tmp} ...", flush=True)
        shutil.rmtree(tmp / "wheels", ignore_errors=True)
        sh([args.python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
            "-w", str(tmp / "wheels"), args.core])
        wheel = next((tmp / "wheels").glob("vfw_core-*.whl"))
        pythons = {n: make_venv(tmp, wheel, n, args.python) for n in (few, many)}

        # Children run in an empty directory: for `python -c` the cwd is on sys.path, so its
        # mtime is part of the index cache's fingerprint (a file created there rebuilds it).
        cwd = tmp / "cwd"
        cwd.mkdir(exist_ok=True)
        jobs = [(label, n, [str(pythons[n]), "-c", code],
                 child_env(tmp / f"cache-{n}", None, **extra))
                for label, code, extra in ROWS for n in (few, many)]
        for _, _, argv, env in jobs:  # warm-up: index caches, .pyc files, exit status
            run_checked(argv, env, cwd)

        series = {(label, n): Series(label) for label, n, _, _ in jobs}
        index = {(label, n): Series(label) for label, n, _, _ in jobs}
        rng = random.Random(args.seed)
        order = list(jobs)
        for _ in range(args.runs):
            rng.shuffle(order)
            for label, n, argv, env in order:
                if argv[-1] is WHOLE_PROCESS:
                    series[label, n].add(time_process(argv, env, cwd))
                    continue
                info = json.loads(run_checked(argv, env, cwd).stdout)
                check_one_plugin_imported(n, info)
                series[label, n].samples.append(info["lookup_ms"])
                index[label, n].samples.append(info["index_ms"])
        print(f"check: in every in-process run, with {few} and with {many} plugins installed, "
              f"resolving benchdev-{TYPE_INDEX} imported exactly one plugin package "
              f"(benchplug_{TYPE_INDEX}): OK\n")

        print(f"python {sys.version.split()[0]}; {args.runs} interleaved runs per row; "
              f"vfw-core + N fake plugin distributions; resolving benchdev-{TYPE_INDEX}")
        rows, verdicts = [], []
        for label, code, _ in ROWS:
            a, b = series[label, few], series[label, many]
            index_part = (f"{index[label, few].median:.2f} / {index[label, many].median:.2f}"
                          if code is IN_PROCESS else "")
            rows.append([label, f"{a.median:.2f}", f"{a.min:.2f}", f"{b.median:.2f}",
                         f"{b.min:.2f}", f"{b.median / a.median:.2f}x", f"{b.min / a.min:.2f}x",
                         index_part])
            if "warm" in label:
                verdicts.append(f"{label}: {many}/{few} median = "
                                f"{verdict(b.median / a.median, GOAL_RATIO)}")
        print(table(["ms", f"{few} median", f"{few} min", f"{many} median", f"{many} min",
                     f"{many}/{few} median", f"{many}/{few} min",
                     f"load_index() part {few} / {many}"], rows))
        print("\n".join(verdicts))
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
