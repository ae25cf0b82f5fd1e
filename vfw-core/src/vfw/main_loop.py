"""The main loop (QEMU's main-loop.c) and the big lock.

One loop owns file-descriptor readiness (chardevs, monitor sockets, tap devices) and timers.
Every device callback runs holding ``BQL`` (QEMU's big QEMU lock): vCPU threads take it to
dispatch an exit, the loop takes it to run handlers. A KVM run loop runs this loop in the main
thread while vCPU threads sit in KVM_RUN; a single-threaded TCG loop calls ``poll`` between
translation blocks instead.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable

from . import timer

#: The big lock. Re-entrant so a handler may call code that takes it again.
BQL = threading.RLock()


class MainLoop:
    """fd readiness + timers, dispatched under the BQL."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._handlers: dict[int, Callable[[], None]] = {}
        #: fds epoll refuses (regular files, /dev/null): always readable, polled every time.
        self._always_ready: dict[int, Callable[[], None]] = {}
        for clock in timer.CLOCKS:
            clock.timers.on_earlier_deadline = self.notify

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` (under the BQL) whenever ``fd`` is readable."""
        self.remove_reader(fd)
        try:
            self._selector.register(fd, selectors.EVENT_READ, callback)
        except PermissionError:  # not pollable: reads never block, so it is always ready
            self._always_ready[fd] = callback
        else:
            self._handlers[fd] = callback
        self.notify()

    def remove_reader(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._selector.unregister(fd)
        self._always_ready.pop(fd, None)

    def notify(self) -> None:
        """Wake a ``poll`` that is waiting (from any thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already has a wake-up pending

    def poll(self, timeout_ns: int | None) -> None:
        """Wait up to ``timeout_ns`` (None: until something happens; 0: don't wait) for fds
        or the next timer, then run what is ready under the BQL."""
        deadline = timer.next_deadline_ns()
        if deadline is not None:
            timeout_ns = deadline if timeout_ns is None else min(timeout_ns, deadline)
        if self._always_ready:
            timeout_ns = 0
        events = self._selector.select(None if timeout_ns is None else timeout_ns / 1e9)
        with BQL:
            for callback in list(self._always_ready.values()):
                callback()
            for key, _ in events:
                if key.fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif key.data is not None:
                    key.data()
            timer.run_all_expired()

    def run_until(self, done: threading.Event) -> None:
        """Poll until ``done`` is set (set it, then ``notify``, to stop from another thread)."""
        while not done.is_set():
            self.poll(None)


_loop: MainLoop | None = None


def main_loop() -> MainLoop:
    global _loop
    if _loop is None:
        _loop = MainLoop()
    return _loop
