"""Monitors: QMP (``-qmp``, ``-mon mode=control``) and the human monitor (``-monitor``,
``-mon``), made from the command line after the machine is built (QEMU's monitor_init).

``-qmp unix:PATH,server=on,wait=off`` / ``tcp:HOST:PORT,...`` / ``stdio``, ``-monitor SPEC``
and ``-mon chardev=ID[,mode=control|readline][,pretty=on]`` with ``-chardev``. UNIX sockets
of monitors are created with mode 0600 (only their owner may drive the VM).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import OptionError, VfwError

if TYPE_CHECKING:
    from ..chardev import Chardev
    from ..cmdline import CommandLine
    from ..machine import Machine


def _spec_chardev(spec: str, label: str) -> Chardev:
    """A chardev for a legacy ``-qmp``/``-monitor`` spec (``unix:``, ``tcp:``, ``stdio``...)."""
    from ..chardev import _backend_props, _parse_compat, chardev_class, chardev_new, find_chardev

    if spec.startswith("chardev:"):
        found = find_chardev(spec[len("chardev:"):])
        if found is None:
            raise OptionError(f"chardev '{spec[len('chardev:'):]}' not found")
        return found
    backend, items = _parse_compat(spec)
    props = _backend_props(chardev_class(backend), items)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        chardev = chardev_new(label, backend, **props)
    finally:
        os.umask(old)
    from .qmp import restrict_socket

    restrict_socket(chardev)
    return chardev


def _next_label() -> str:
    from ..chardev import find_chardev

    n = 0
    while find_chardev(f"compat_monitor{n}") is not None:
        n += 1
    return f"compat_monitor{n}"


def _is_stdio_tty(chardev: Any) -> bool:
    return chardev.type_name == "chardev-stdio" and os.isatty(0)


def create_monitors(machine: Machine, cl: CommandLine) -> list[Any]:
    """Every monitor the command line asks for, attached and listening."""
    from ..chardev import chardev_from_opts, find_chardev
    from . import commands  # noqa: F401 - registers the built-in QMP commands
    from .hmp import HumanMonitor
    from .qmp import QmpMonitor

    monitors: list[Any] = []
    try:
        for opts in cl.opts("chardev"):
            if opts.id is not None and find_chardev(opts.id) is None:
                try:
                    chardev_from_opts(opts)
                except VfwError as exc:
                    raise OptionError(str(exc), "-chardev", opts.text) from None
        for spec in cl.multi.get("qmp", []):
            try:
                chardev = _spec_chardev(spec, _next_label())
            except VfwError as exc:
                raise OptionError(str(exc), "-qmp", spec) from None
            monitors.append(QmpMonitor(machine, chardev))
        for spec in cl.multi.get("monitor", []):
            if spec == "none":
                continue
            try:
                chardev = _spec_chardev(spec, _next_label())
            except VfwError as exc:
                raise OptionError(str(exc), "-monitor", spec) from None
            monitors.append(HumanMonitor(machine, chardev, echo=_is_stdio_tty(chardev)))
        for opts in cl.opts("mon"):
            name = opts.get("chardev")
            found = find_chardev(name or "")
            if found is None:
                raise OptionError(f"chardev '{name}' not found", "-mon", opts.text)
            chardev = found
            mode = opts.get("mode") or "readline"
            if mode == "control":
                pretty = (opts.get("pretty") or "off") in ("on", "yes", "true", "y")
                monitors.append(QmpMonitor(machine, chardev, pretty=pretty))
            elif mode == "readline":
                monitors.append(HumanMonitor(machine, chardev, echo=_is_stdio_tty(chardev)))
            else:
                raise OptionError(f"Parameter 'mode' does not accept value '{mode}'", "-mon",
                                  opts.text)
    except BaseException:
        close_monitors(monitors)
        raise
    return monitors


def close_monitors(monitors: list[Any]) -> None:
    """Flush what the monitors still have to say (the reply to ``quit``, SHUTDOWN) and detach
    them."""
    for mon in monitors:
        try:
            mon.chardev.flush(1.0)
        except (OSError, VfwError):
            pass
        mon.close()
