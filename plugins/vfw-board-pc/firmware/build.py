"""Build vfw's firmware ROM (vfw-bios.bin) from the sources beside this file.

The build is reproducible: the same sources and the same gcc/binutils give identical bytes (no
debug info, no build id, prefix-mapped paths, a fixed object order and section layout, gaps and
padding filled with 0xFF). With no arguments the shipped binary in the vfw_board_pc package is
rewritten; ``--output PATH`` writes elsewhere; ``--check`` rebuilds into a temporary directory
and exits non-zero if the result differs from the shipped binary.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "src" / "vfw_board_pc" / "firmware" / "vfw-bios.bin"
ROM_SIZE = 64 * 1024
SOURCES = ("entry.S", "main.c", "print.c", "pci.c", "virtio.c")   # link order
CFLAGS = ("-m32", "-march=i686", "-Os", "-std=gnu11", "-ffreestanding", "-fno-pic",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
          "-fcf-protection=none", "-mgeneral-regs-only", "-mno-red-zone",
          "-fno-tree-loop-distribute-patterns", "-fno-common", "-g0", "-nostdinc",
          "-Wall", "-Wextra", "-Werror", f"-ffile-prefix-map={HERE}=.")
LDFLAGS = ("-m32", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-z,noexecstack",
           "-Wl,--no-warn-rwx-segments")


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}")
        raise SystemExit(f"firmware build failed: {cmd[0]} exited with {result.returncode}")


def build(output: Path) -> bytes:
    """Compile, link and flatten the ROM into ``output``; returns its bytes."""
    for tool in ("gcc", "objcopy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"firmware build needs {tool}")
    with tempfile.TemporaryDirectory(prefix="vfw-bios-") as tmp:
        objects = []
        for source in SOURCES:
            obj = Path(tmp) / (Path(source).stem + ".o")
            _run(["gcc", *CFLAGS, "-c", source, "-o", str(obj)])
            objects.append(str(obj))
        elf = Path(tmp) / "vfw-bios.elf"
        _run(["gcc", *LDFLAGS, "-T", "link.ld", "-o", str(elf), *objects])
        flat = Path(tmp) / "vfw-bios.bin"
        _run(["objcopy", "-O", "binary", "--gap-fill=0xff", str(elf), str(flat)])
        image = flat.read_bytes()
    if len(image) != ROM_SIZE:
        raise SystemExit(f"firmware image is {len(image)} bytes, expected {ROM_SIZE}")
    if image[-16] not in (0xE9, 0xEB):
        raise SystemExit("firmware image has no jump at the reset vector")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(image)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild and compare with the shipped binary")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write the ROM (default {SHIPPED})")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory(prefix="vfw-bios-check-") as tmp:
            image = build(Path(tmp) / "vfw-bios.bin")
        shipped = SHIPPED.read_bytes() if SHIPPED.exists() else b""
        if image != shipped:
            diff = sum(a != b for a, b in zip(image, shipped, strict=False))
            diff += abs(len(image) - len(shipped))
            print(f"{SHIPPED}: differs from a rebuild of the sources ({diff} bytes);"
                  f" run {Path(__file__).name} to refresh it", file=sys.stderr)
            return 1
        print(f"{SHIPPED}: matches the sources")
        return 0
    output = args.output or SHIPPED
    build(output)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
