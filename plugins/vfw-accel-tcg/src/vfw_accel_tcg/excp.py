"""Python exceptions the software CPU uses to unwind out of translated code."""

from __future__ import annotations


class CpuException(Exception):
    """A guest exception (fault) raised while executing an instruction.

    Translated code lets it propagate; the block's handler commits the architectural state of
    the faulting instruction's boundary and the dispatcher delivers ``vector``.
    """

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                 trap: bool = False):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        #: True for traps (INTO, INT3 raised as exceptions): RIP already points past it.
        self.trap = trap

    def __str__(self) -> str:
        err = "" if self.error_code is None else f" err=0x{self.error_code:x}"
        return f"exception {self.vector}{err}"


class SmcRestart(Exception):
    """A store hit the bytes of the translated block that is executing: re-run the storing
    instruction alone after the block is invalidated."""


class TripleFault(Exception):
    """Exception delivery failed while delivering a double fault."""
