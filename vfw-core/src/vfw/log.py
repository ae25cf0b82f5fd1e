"""QEMU's ``-d item,...`` / ``-D file`` guest-debug logging.

Accelerators and devices ask ``log.enabled("int")`` on slow paths only and write through
``log.write``; the log goes to stderr or to the ``-D`` file. Device models report guest
mistakes on the standard ``logging`` logger ``vfw.guest_errors`` (cheap when nobody listens);
``-d guest_errors`` routes that logger here.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from .errors import OptionError

#: Log items as ``-d help`` lists them.
ITEMS: dict[str, str] = {
    "in_asm": "show target assembly code for each compiled TB",
    "op": "show micro ops for each compiled TB",
    "exec": "show trace before each executed TB (lots of logs)",
    "cpu": "show CPU registers before entering a TB (lots of logs)",
    "int": "show interrupts/exceptions in short format",
    "cpu_reset": "show CPU state before CPU resets",
    "unimp": "log unimplemented functionality",
    "guest_errors": "log when the guest OS does something invalid (eg accessing a\n"
                    "non-existent register)",
    "mmu": "log MMU-related activities",
    "pcall": "x86 only: show protected mode far calls/returns/exceptions",
    "ioport": "log all port I/O accesses",
}

_mask: set[str] = set()
_out: TextIO = sys.stderr


def help_text() -> str:
    lines = ["Log items (comma separated):"]
    lines += [f"{name:<15} {desc}" for name, desc in ITEMS.items()]  # QEMU: "%-15s %s"
    return "\n".join(lines)


def set_mask(spec: str) -> None:
    """Enable the comma-separated items of ``-d``; an unknown one is an OptionError."""
    items = {s.strip() for s in spec.split(",") if s.strip()}
    unknown = sorted(items - set(ITEMS))
    if unknown:
        raise OptionError(f"unknown log item '{unknown[0]}' (-d help lists them)")
    _mask.clear()
    _mask.update(items)
    guest_errors = logging.getLogger("vfw.guest_errors")
    guest_errors.removeHandler(_GUEST_ERRORS)
    if "guest_errors" in items:
        guest_errors.addHandler(_GUEST_ERRORS)
        guest_errors.setLevel(logging.DEBUG)
        guest_errors.propagate = False


def set_file(path: str) -> None:
    global _out
    try:
        _out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives all run
    except OSError as exc:
        raise OptionError(f"could not open log file '{path}': {exc.strerror}") from None


class _LogHandler(logging.Handler):
    """Writes ``logging`` records to the -d/-D output, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        write(self.format(record) + "\n")


_GUEST_ERRORS = _LogHandler()


def enabled(item: str) -> bool:
    return item in _mask


def write(text: str) -> None:
    _out.write(text)
