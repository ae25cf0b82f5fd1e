"""Wall time of a whole boot: ``vfw run`` (the built-in firmware guest, from process start to
exit 0 after the guest powers off) against QEMU booting the same firmware.

The yardstick is ``qemu-system-x86_64 -M pc -accel kvm -bios vfw-bios.bin -nographic``: the
ROM vfw's pc board loads by default, under QEMU's own pc machine. QEMU's default machine adds a
VGA card and a NIC, so a ``-nodefaults`` row gives the machine closest to vfw's. TCG rows run
both under their software CPUs. Rows run interleaved (one of each per round, shuffled) after
one untimed check run each, which also warms the plugin index and bytecode caches.

Usage (from the repo root): ``python benchmarks/startup_guest.py [--vfw .venv/bin/vfw] [-n 20]``
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from _util import REPO, Series, child_env, run_checked, table, time_process

FIRMWARE = REPO / "plugins" / "vfw-board-pc" / "src" / "vfw_board_pc" / "firmware" / "vfw-bios.bin"
POWER_OFF = "vfw firmware: powering off"


class Command(NamedTuple):
    label: str
    argv: list[str]
    yardstick: str | None  # label of the QEMU row this one is compared with


def build_commands(vfw: str, qemu: str, with_kvm: bool) -> list[Command]:
    bios = ["-bios", str(FIRMWARE)]
    q_kvm = "qemu -M pc -accel kvm -bios vfw-bios.bin -nographic"
    q_tcg = "qemu -M pc -accel tcg -bios vfw-bios.bin -nographic"
    rows = []
    if with_kvm:
        rows += [
            Command(q_kvm, [qemu, "-M", "pc", "-accel", "kvm", *bios, "-nographic"], None),
            Command("qemu ... -accel kvm -nodefaults -serial stdio",
                    [qemu, "-M", "pc", "-accel", "kvm", *bios, "-nodefaults", "-display", "none",
                     "-serial", "stdio"], None),
            Command("vfw run (default: kvm)", [vfw, "run"], q_kvm),
            Command("vfw run -accel kvm", [vfw, "run", "-accel", "kvm"], q_kvm),
        ]
    rows += [
        Command(q_tcg, [qemu, "-M", "pc", "-accel", "tcg", *bios, "-nographic"], None),
        Command("vfw run -accel tcg", [vfw, "run", "-accel", "tcg"], q_tcg),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vfw", default=str(REPO / ".venv" / "bin" / "vfw"))
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    parser.add_argument("-n", type=int, default=20, help="timed runs per row")
    parser.add_argument("--no-kvm", action="store_true", help="TCG rows only")
    args = parser.parse_args()
    if not args.qemu:
        raise SystemExit("qemu-system-x86_64 not found (--qemu PATH)")
    with tempfile.TemporaryDirectory(prefix="vfw-bench-guest-") as tmp:
        work = Path(tmp)
        env = child_env(work / "cache", work / "pyc")
        commands = build_commands(args.vfw, args.qemu, not args.no_kvm)
        for cmd in commands:  # untimed: checks the boot and warms the caches
            out = run_checked(cmd.argv, env, cwd=work).stdout
            if POWER_OFF not in out:
                raise SystemExit(f"{cmd.label}: the firmware did not power off:\n{out}")
        series = {cmd.label: Series(cmd.label) for cmd in commands}
        order = list(commands)
        for _ in range(args.n):
            random.shuffle(order)
            for cmd in order:
                series[cmd.label].add(time_process(cmd.argv, env, cwd=work))
    rows = []
    for cmd in commands:
        s = series[cmd.label]
        ratio = ""
        if cmd.yardstick is not None:
            base = series[cmd.yardstick]
            ratio = f"{s.median / base.median:.2f}x"
        rows.append([cmd.label, f"{s.median:.1f}", f"{s.mean:.1f}", f"{s.min:.1f}",
                     f"{s.cpu_median:.1f}", ratio])
    print(f"{args.n} interleaved runs per row; times in ms; ratio = median / QEMU's (same accel)")
    print(table(["command", "median", "mean", "min", "CPU median", "vs QEMU"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
