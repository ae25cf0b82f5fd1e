"""Helpers for vfw's test suites (imported by tests only; needs pytest).

A test that needs something this machine may lack (/dev/kvm, a guest kernel) calls ``need``:
it skips with the reason where the thing is truly absent, and fails instead when
``VFW_TESTS_STRICT=1`` — CI sets that on machines that have everything, so a skip there can
only mean a broken set-up.
"""

from __future__ import annotations

import os

import pytest

from .timer import Clock

STRICT_ENV = "VFW_TESTS_STRICT"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def need(available: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) the calling test unless ``available``."""
    if available:
        return
    if strict():
        pytest.fail(f"{reason} ({STRICT_ENV}=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can be opened read-write here, and why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"/dev/kvm is not usable: {exc.strerror}"
    os.close(fd)
    return True, ""


def need_kvm() -> None:
    ok, why = kvm_usable()
    need(ok, why)


class ManualClock(Clock):
    """A virtual clock a test moves by hand, firing its timers on the way (device models take
    a ``clock``; give them this one to test timing without waiting)."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        super().__init__("manual", pausable=True)
        self.now = start_ns

    def now_ns(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns``, firing every timer that falls due, in order."""
        target = self.now + ns
        while True:
            deadline = self.timers.deadline_ns()
            if deadline is None or self.now + deadline > target:
                break
            self.now += deadline
            self.timers.run_expired()
        self.now = target
        self.timers.run_expired()
