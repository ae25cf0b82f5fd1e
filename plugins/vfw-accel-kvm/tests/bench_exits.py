"""Measure the kvm accelerator's exit rate (not a test): ``python bench_exits.py [N]``.

Runs tight guest loops on the test machine of test_kvm_run.py: N port writes at CPL0 (where
this machine's nested KVM emulates every instruction) and at CPL3 (native), N MMIO writes at
CPL0, and 10*N iterations of a register-only loop at CPL0, and prints the rates.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import time
from pathlib import Path
from typing import Any

from vfw.memory import MemoryRegion

_spec = importlib.util.spec_from_file_location("kvm_guests", Path(__file__).with_name(
    "test_kvm_run.py"))
assert _spec is not None and _spec.loader is not None
guests: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(guests)

# 64-bit CPL0 at 0x4000: mov ecx,N; 1: out 0x80,al; dec ecx; jnz 1b; mov al,0; out 0xf4,al; hlt
PIO_CPL0 = bytes.fromhex("b9400d0300e680ffc975fab000e6f4f4ebfd")
# 64-bit at 0x5000: to CPL3 as in test_kvm_run.USER_MODE, then the same loop (ecx at 0x501a)
PIO_CPL3 = bytes.fromhex("66b828000f00d86a2368007f00006a026a1b681950000048cfb9400d0300e680ffc9"
                         "75fab000e6f4ebfe")
# 64-bit CPL0: mov ecx,N; mov ebx,0x10000000; 1: mov [rbx],eax; dec ecx; jnz 1b; out 0xf4,al
MMIO_CPL0 = bytes.fromhex("b940420f00bb000000108903ffc975fab000e6f4f4ebfd")
# 64-bit CPL0: mov ecx,N; 1: dec ecx; jnz 1b; mov al,0; out 0xf4,al; hlt
LOOP_CPL0 = bytes.fromhex("b940420f00ffc975fcb000e6f4f4ebfd")


def _with_count(code: bytes, offset: int, n: int) -> bytes:
    out = bytearray(code)
    struct.pack_into("<I", out, offset, n)
    return bytes(out)


def measure(code: bytes, addr: int, count_at: int, n: int) -> float:
    machine = guests.make_machine()
    machine.system_io.add_subregion(0x80, MemoryRegion.io("sink", 1, lambda o, s: 0,
                                                          lambda o, v, s: None))
    guests.enter_long_mode(machine, 0, addr)
    guests.load(machine, addr, _with_count(code, count_at, n))
    start = time.perf_counter()
    guests.run(machine, timeout=600)
    elapsed = time.perf_counter() - start
    machine.kvm.finalize()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    t = measure(PIO_CPL0, 0x4000, 1, n)
    print(f"port-I/O exits at CPL0: {n / t:10,.0f}/s  ({n} in {t:.2f} s)")
    t = measure(PIO_CPL3, 0x5000, 0x1A, n)
    print(f"port-I/O exits at CPL3: {n / t:10,.0f}/s  ({n} in {t:.2f} s)")
    t = measure(MMIO_CPL0, 0x4000, 1, n)
    print(f"MMIO exits at CPL0:     {n / t:10,.0f}/s  ({n} in {t:.2f} s)")
    t = measure(LOOP_CPL0, 0x4000, 1, 10 * n)
    print(f"dec/jnz at CPL0:        {20 * n / t:10,.0f} instructions/s (emulated)")


if __name__ == "__main__":
    main()
