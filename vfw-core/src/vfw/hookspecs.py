"""pluggy hook specifications: the behaviour hooks plugins may implement.

Types are registered through the type table alone; these hooks carry behaviour only.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("vfw")
hookimpl = pluggy.HookimplMarker("vfw")


@hookspec
def vfw_add_commands(cli: Any) -> None:
    """Add click commands to the ``vfw`` command group (``cli.add_command``)."""


@hookspec
def vfw_qmp_commands() -> dict[str, Any]:  # type: ignore[empty-body]
    """Return extra QMP commands: name -> callable(monitor, **arguments) -> result."""


@hookspec
def vfw_machine_created(machine: Any) -> None:
    """The machine object exists and its properties are set; nothing is built yet."""


@hookspec
def vfw_machine_ready(machine: Any) -> None:
    """Board init and every -device are done; the guest is about to start (or wait, with -S)."""


@hookspec
def vfw_machine_shutdown(machine: Any, reason: str) -> None:
    """The machine stopped for good (``reason`` as QMP's SHUTDOWN event gives it)."""
