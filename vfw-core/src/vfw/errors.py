"""The vfw exception hierarchy.

Every error a user can cause derives from VfwError; the CLI prints it as one line and exits 1.
Anything else escaping to the top level is a bug and keeps its traceback.
"""

from __future__ import annotations


class VfwError(Exception):
    """Base of all errors vfw reports to a user as one line."""

    exit_code: int = 1


class OptionError(VfwError):
    """A command-line option or one of its parameters is invalid.

    ``option`` is the option as the user wrote it (``-m``) and ``value`` its argument; when set,
    ``str()`` prefixes the message the way QEMU does: ``-m foo=1: Invalid parameter 'foo'``.
    """

    def __init__(self, message: str, option: str | None = None, value: str | None = None):
        super().__init__(message)
        self.message = message
        self.option = option
        self.value = value

    def located(self, option: str, value: str | None) -> OptionError:
        """Return this error with the option it came from filled in, unless already set."""
        if self.option is None:
            self.option, self.value = option, value
        return self

    def __str__(self) -> str:
        if self.option is None:
            return self.message
        where = self.option if self.value is None else f"{self.option} {self.value}"
        return f"{where}: {self.message}"


class TypeLookupError(VfwError):
    """An unknown type, an abstract type instantiated, or a failed cast."""


class TypeRegistrationError(VfwError):
    """A type was registered twice, with a bad name, or with a missing or wrong parent."""


class PropertyError(VfwError):
    """A property is unknown, read-only, or was given a value it does not take."""


class PluginError(VfwError):
    """A plugin distribution failed to load or broke its declared contract."""


class MachineError(VfwError):
    """The machine cannot be built as configured (topology, memory, missing parts)."""


class AccelError(VfwError):
    """An accelerator could not be initialised or failed while running a vCPU."""


class GuestError(VfwError):
    """The guest did something the emulated hardware refuses (kept out of the host's way)."""


class GuestMemoryError(GuestError):
    """A guest-physical range is not backed by guest RAM."""


class BackendError(VfwError):
    """A host back end (chardev, block, net) could not be opened or used."""
