"""Build vfw's multiboot test guests from the sources beside this file.

The guests are vfw's own code (never fetched, never committed as binaries): each is an ELF32
multiboot kernel built with the host's gcc and GNU ld. Builds are cached by a hash of the
sources and the compiler version, in $VFW_GUEST_BUILD_DIR or a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUESTS = ("hello", "smp", "exits", "spin", "gdbtarget", "edu", "virtio_blk")
CFLAGS = ("-m32", "-march=i686", "-O2", "-ffreestanding", "-fno-pic", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-nostdlib", "-nostdinc", "-static", "-no-pie",
          "-Wall", "-Werror", "-Wno-unused-function")


def toolchain_available() -> bool:
    return shutil.which("gcc") is not None and shutil.which("ld") is not None


def _fingerprint(name: str) -> str:
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*")):
        if path.suffix in (".c", ".h", ".S", ".ld", ".py"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(name.encode())
    h.update(subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    base = os.environ.get("VFW_GUEST_BUILD_DIR")
    path = Path(base) if base else Path(tempfile.gettempdir()) / "vfw-guests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(name: str) -> Path:
    """The path of guest ``name`` (an ELF32 multiboot kernel), built if needed."""
    if name not in GUESTS:
        raise ValueError(f"unknown guest {name!r}; known: {', '.join(GUESTS)}")
    out = build_dir() / f"{name}-{_fingerprint(name)}.elf"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(["gcc", *CFLAGS, "-T", str(HERE / "link.ld"), "-o", str(tmp),
                    str(HERE / "multiboot.S"), str(HERE / f"{name}.c")],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    for guest in GUESTS:
        print(build(guest))
