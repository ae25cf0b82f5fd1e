"""Build the busybox initramfs the Linux-guest tests boot (a test fixture, not shipped).

It holds busybox-static, the virtio modules of the installed Debian kernel with their
dependencies (from modules.dep), and an /init that loads them, prints what the guest sees
(a marker, ``uname -r``, the CPU model, the CPU count, MemTotal) and then runs the shell
commands given on the kernel command line after ``vfw.run=`` (base64), before powering off.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
from pathlib import Path

MARKER = "VFW-INIT-REACHED"
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio-rng")
APPLETS = ("sh", "mount", "insmod", "uname", "cat", "grep", "md5sum", "dd", "sync", "poweroff",
           "reboot", "echo", "head", "sleep", "mkdir", "ls", "ip", "ping", "nc", "base64",
           "od", "hexdump", "tr", "wc", "seq", "sed", "true")

INIT = f"""#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo {MARKER}
echo "uname: $(uname -r)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "cpus: $(grep -c ^processor /proc/cpuinfo)"
grep MemTotal /proc/meminfo
for m in $(cat /etc/modules-order); do insmod /lib/modules/$m || echo "insmod $m failed"; done
for word in $(cat /proc/cmdline); do
    case "$word" in vfw.run=*) echo "${{word#vfw.run=}}" | base64 -d > /tmp/run.sh ;; esac
done
if [ -f /tmp/run.sh ]; then sh /tmp/run.sh; fi
echo VFW-INIT-DONE
case "$(cat /proc/cmdline)" in *vfw.reboot*) reboot -f ;; esac
poweroff -f
"""


def kernel_version(vmlinuz: str) -> str:
    """``/boot/vmlinuz-6.1.0-56-cloud-amd64`` → ``6.1.0-56-cloud-amd64``."""
    return os.path.basename(vmlinuz).removeprefix("vmlinuz-")


def module_closure(version: str, names: tuple[str, ...] = MODULES) -> list[str]:
    """Relative paths of the named modules and their dependencies, dependencies first."""
    base = Path("/lib/modules") / version
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko").replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in reversed(deps[path]):
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        visit(by_name[name.replace("-", "_")])
    return order


class _Cpio:
    """A minimal writer of the "newc" cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1

    def add(self, name: str, mode: int, content: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(content), 0, 0, 0, 0, len(encoded), 0)
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        self.data += b"\0" * (-len(self.data) % 4) + content
        self.data += b"\0" * (-len(self.data) % 4)
        self.ino += 1

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.data)


def build_initramfs(out: Path, vmlinuz: str) -> Path:
    """Write ``out`` (gzip-compressed cpio) for the kernel ``vmlinuz``."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox-static is not installed")
    version = kernel_version(vmlinuz)
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes())
    for applet in APPLETS:
        cpio.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    cpio.add("init", stat.S_IFREG | 0o755, INIT.encode())
    order = module_closure(version)
    for rel in order:
        data = (Path("/lib/modules") / version / rel).read_bytes()
        cpio.add(f"lib/modules/{Path(rel).name}", stat.S_IFREG | 0o644, data)
    cpio.add("etc/modules-order", stat.S_IFREG | 0o644,
             "\n".join(Path(rel).name for rel in order).encode() + b"\n")
    out.write_bytes(gzip.compress(cpio.finish(), mtime=0))
    return out


if __name__ == "__main__":
    import glob
    import sys

    kernel = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1]
    print(build_initramfs(Path(sys.argv[1] if len(sys.argv) > 1 else "initramfs.cpio.gz"),
                          kernel))
