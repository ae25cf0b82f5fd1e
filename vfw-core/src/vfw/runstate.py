"""Run states and the requests that change them (QEMU's runstate.c, in short)."""

from __future__ import annotations

import enum


class RunState(str, enum.Enum):
    """As QMP's query-status reports them."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal-error"
    GUEST_PANICKED = "guest-panicked"


class ShutdownCause(str, enum.Enum):
    """QMP's SHUTDOWN/RESET ``reason`` values."""

    HOST_ERROR = "host-error"
    HOST_QMP_QUIT = "host-qmp-quit"
    HOST_QMP_SYSTEM_RESET = "host-qmp-system-reset"
    HOST_SIGNAL = "host-signal"
    HOST_UI = "host-ui"
    GUEST_SHUTDOWN = "guest-shutdown"
    GUEST_RESET = "guest-reset"
    GUEST_PANIC = "guest-panic"
    SUBSYSTEM_RESET = "subsystem-reset"

    @property
    def from_guest(self) -> bool:
        return self.value.startswith("guest")


class Request(enum.Enum):
    """What a running machine was asked to do; accelerators stop their vCPUs when one is set."""

    SHUTDOWN = "shutdown"
    RESET = "reset"
    STOP = "stop"
    #: Leave prelaunch (-S) or paused: a monitor's ``cont``.
    CONT = "cont"
