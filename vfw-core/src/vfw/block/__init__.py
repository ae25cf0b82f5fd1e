"""Block back ends: ``-drive`` → a :class:`BlockBackend` by id, over a format driver.

Format drivers are QOM types deriving from the abstract ``block-driver`` type, named
``block-driver-<format>`` (``block-driver-raw`` lives in :mod:`vfw.block.raw`); a plugin adds a
format by registering one under ``vfw.types``. The driver API is deliberately small:

* ``FORMAT`` (class attribute): the format name users give to ``format=``.
* ``probe(header: bytes, path: str) -> int`` (classmethod): how sure the driver is that the
  image whose first 2 KiB are ``header`` is its format (0 = not at all, raw answers 1, a
  format with a magic number answers 100).
* ``open(path, *, readonly: bool, cache: str) -> None``: open the image; raise
  :class:`~vfw.errors.BackendError` with a clear message on failure. ``cache`` is one of
  ``CACHE_MODES``.
* ``length`` (attribute or property): the guest-visible size in bytes.
* ``preadv(offset, buffers: list[memoryview]) -> int`` / ``pwritev(offset, buffers) -> int``:
  scatter/gather I/O straight into/out of the (guest RAM) buffers; the return is the byte
  count (reads past the end of the image fill with zeroes). OSError on a host I/O error.
* ``run_batch(jobs: list[(write: bool, offset, buffers)]) -> list[int | OSError]``: several
  independent reads/writes at once (the default runs them one by one; the raw driver runs
  them on the ``aio=threads`` pool when its I/O waits for the disk). ``set_aio(mode)`` is
  called after ``open`` with the ``aio=`` option.
* ``flush()``: make every completed write durable (fsync).
* ``discard(offset, length)`` / ``write_zeroes(offset, length)``: may raise
  ``NotImplementedError`` when the host cannot do it; class attributes ``CAN_DISCARD`` /
  ``CAN_WRITE_ZEROES`` say whether to advertise the features at all.
* ``close()``.

``open_image(path, format=None, ...)`` picks the driver, probing when no format is given with
QEMU's warning. vfw has no IDE controller, so ``-drive`` with ``if=ide`` (QEMU's default for the
pc machine) is refused with a hint to use ``if=virtio`` or ``if=none`` plus ``-device
virtio-blk-pci,drive=ID``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, ClassVar

from ..errors import BackendError, OptionError
from ..qom import TABLE, Object, register_type
from .aio import IOThreadPool

if TYPE_CHECKING:
    from ..cmdline import CommandLine
    from ..machine import Machine
    from ..options import Opts

__all__ = [
    "BlockBackend",
    "BlockDriver",
    "AIO_MODES",
    "BatchJob",
    "CACHE_MODES",
    "create_if_virtio_devices",
    "find_backend",
    "init_drives",
    "open_image",
]

#: QEMU's cache= modes: none/directsync open with O_DIRECT, writethrough/directsync with
#: O_DSYNC, unsafe makes flush a no-op (the raw driver implements them; see vfw.block.raw).
CACHE_MODES = ("writeback", "none", "writethrough", "directsync", "unsafe")
#: (cache.direct, cache.writeback, cache.no-flush) of each mode, QEMU's bdrv_parse_cache_mode.
_CACHE_FLAGS = {
    "writeback": (False, True, False), "none": (True, True, False),
    "writethrough": (False, False, False), "directsync": (True, False, False),
    "unsafe": (False, True, True),
}
#: aio= engines vfw has (QEMU's native and io_uring need libaio / liburing).
AIO_MODES = ("threads",)

#: One request of :meth:`BlockDriver.run_batch`: (is a write, byte offset, buffers).
BatchJob = tuple[bool, int, list[memoryview]]

#: -drive keys vfw understands (others are refused with a clear message).
_DRIVE_KEYS = {
    "file", "format", "if", "id", "readonly", "cache", "media", "index", "snapshot", "aio",
    "discard", "detect-zeroes", "serial", "werror", "rerror", "cache.direct", "cache.no-flush",
    "bus", "unit",
}
_IF_VALUES = ("none", "virtio", "ide", "scsi", "floppy", "pflash", "mtd", "sd")


@register_type
class BlockDriver(Object):
    """Abstract base of image format drivers (see the module docstring for the API)."""

    TYPE = "block-driver"
    ABSTRACT = True
    FORMAT: ClassVar[str] = ""
    CAN_DISCARD: ClassVar[bool] = False
    CAN_WRITE_ZEROES: ClassVar[bool] = False

    def instance_init(self) -> None:
        self.filename = ""
        self.readonly = False
        self.cache = "writeback"
        self.length = 0
        #: The aio=threads pool run_batch hands blocking I/O to (None: run inline).
        self.pool: IOThreadPool | None = None
        #: A host descriptor on which ``os.preadv``/``os.pwritev`` at the disk's byte offset
        #: do what :meth:`preadv`/:meth:`pwritev` do for any buffers (no format mapping, no
        #: alignment rule), except that a short transfer must be completed by those methods;
        #: -1 when there is none. A device's hot path may use it to save a call per request.
        self.plain_fd = -1

    @classmethod
    def probe(cls, header: bytes, path: str) -> int:
        return 0

    def open(self, path: str, *, readonly: bool, cache: str) -> None:
        raise NotImplementedError

    def preadv(self, offset: int, buffers: list[memoryview]) -> int:
        raise NotImplementedError

    def pwritev(self, offset: int, buffers: list[memoryview]) -> int:
        raise NotImplementedError

    #: Whether a request may wait for the disk (O_DIRECT / O_DSYNC), so that running several
    #: at once on a thread pool pays.
    io_can_block = False

    def set_aio(self, aio: str) -> None:
        """Use the ``aio=`` engine ``aio`` (one of AIO_MODES) for :meth:`run_batch`."""

    def run_batch(self, jobs: list[BatchJob]) -> list[int | OSError]:
        """Run independent reads/writes; results in order, an OSError for a failed one."""
        results: list[int | OSError] = []
        for write, offset, buffers in jobs:
            try:
                results.append(self.pwritev(offset, buffers) if write
                               else self.preadv(offset, buffers))
            except OSError as exc:
                results.append(exc)
        return results

    def flush(self) -> None:
        raise NotImplementedError

    def discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the image."""


def _driver_classes() -> list[type[BlockDriver]]:
    return [c for c in TABLE.get_list("block-driver") if issubclass(c, BlockDriver)]


def driver_class(fmt: str) -> type[BlockDriver]:
    """The driver for format ``fmt``, or a BackendError naming it."""
    impl = TABLE.find(f"block-driver-{fmt}")
    if impl is not None:
        cls = TABLE.initialize(impl)
        if issubclass(cls, BlockDriver) and not cls.is_abstract():
            return cls
    known = ", ".join(sorted(c.FORMAT for c in _driver_classes() if c.FORMAT)) or "none"
    raise BackendError(f"Unknown driver '{fmt}': vfw has no '{fmt}' block driver "
                       f"(formats vfw supports: {known})")


def probe_format(path: str) -> str:
    """The format whose driver is most confident about ``path`` (QEMU's bdrv_probe)."""
    try:
        with open(path, "rb") as f:
            header = f.read(2048)
    except OSError as exc:
        raise BackendError(f"Could not open '{path}': {exc.strerror}") from None
    best, score = "raw", 0
    for cls in _driver_classes():
        if cls.FORMAT:
            s = cls.probe(header, path)
            if s > score:
                best, score = cls.FORMAT, s
    if header[:4] == b"QFI\xfb" and best == "raw":
        raise BackendError(f"'{path}' is a qcow2 image, and vfw has no qcow2 block driver "
                           f"installed (use format=raw only for raw images)")
    return best


def open_image(path: str, format: str | None = None, *, readonly: bool = False,
               cache: str = "writeback") -> BlockDriver:
    """Open ``path`` with the driver for ``format`` (probed, with QEMU's warning, if None)."""
    if cache not in CACHE_MODES:
        raise BackendError(f"cache={cache}: invalid cache option (one of "
                           f"{', '.join(CACHE_MODES)})")
    if format is None:
        format = probe_format(path)
        if format == "raw":
            print(f"vfw: warning: Image format was not specified for '{path}' and probing "
                  f"guessed raw.\n         Automatically detecting the format is dangerous "
                  f"for raw images, write operations on block 0 will be restricted.\n"
                  f"         Specify the 'raw' format explicitly to remove the restrictions.",
                  file=sys.stderr)
    drv = driver_class(format)()
    drv.open(path, readonly=readonly, cache=cache)
    return drv


class BlockBackend:
    """A named, opened drive (QEMU's BlockBackend) that a device attaches to."""

    def __init__(self, id: str, driver: BlockDriver, *, serial: str | None = None,
                 interface: str = "none", discard: bool = False):
        self.id = id
        self.driver = driver
        self.serial = serial
        self.interface = interface
        self.discard_enabled = discard
        self.attached: object | None = None

    @property
    def readonly(self) -> bool:
        return self.driver.readonly

    @property
    def length(self) -> int:
        return int(self.driver.length)

    def close(self) -> None:
        self.driver.close()


_backends: dict[str, BlockBackend] = {}


def add_backend(backend: BlockBackend) -> None:
    if backend.id in _backends and _backends[backend.id] is not backend:
        raise OptionError(f"Duplicate ID '{backend.id}' for drive")
    _backends[backend.id] = backend


def remove_backend(id: str) -> None:
    _backends.pop(id, None)


def find_backend(id: str) -> BlockBackend | None:
    """The drive ``id`` (``-drive ...,id=ID``), if any."""
    return _backends.get(id)


def _bool(opts: Opts, key: str, default: bool) -> bool:
    try:
        return opts.get_bool(key, default)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(str(exc)) from None


def drive_cache_mode(opts: Opts) -> str:
    """The cache mode of a ``-drive``: ``cache=`` overridden by ``cache.direct=`` and
    ``cache.no-flush=`` (QEMU's order); OptionError naming the option for a bad value."""
    cache = opts.get("cache", "writeback") or "writeback"
    if cache not in _CACHE_FLAGS:
        raise OptionError(f"cache={cache}: invalid cache option (one of "
                          f"{', '.join(CACHE_MODES)})")
    direct, writeback, no_flush = _CACHE_FLAGS[cache]
    direct = _bool(opts, "cache.direct", direct)
    no_flush = _bool(opts, "cache.no-flush", no_flush)
    if no_flush:
        if direct:
            raise OptionError("cache.direct=on with cache.no-flush=on: vfw has no "
                              "unsafe O_DIRECT mode")
        return "unsafe"
    for mode, flags in _CACHE_FLAGS.items():
        if flags == (direct, writeback, False):
            return mode
    raise AssertionError("unreachable")


def drive_from_opts(opts: Opts, index: int) -> BlockBackend:
    """Open one ``-drive`` (QEMU's drive_new)."""
    unknown = sorted(k for k in opts.as_dict() if k not in _DRIVE_KEYS)
    if unknown:
        raise OptionError(f"Invalid parameter '{unknown[0]}'")
    interface = opts.get("if", "ide") or "ide"
    if interface not in _IF_VALUES:
        raise OptionError(f"unsupported bus type '{interface}'")
    if interface not in ("none", "virtio"):
        raise OptionError(f"if={interface}: vfw has no {interface.upper()} controller; use "
                          f"if=virtio, or if=none,id=ID with -device virtio-blk-pci,drive=ID")
    media = opts.get("media", "disk")
    if media != "disk":
        raise OptionError(f"media={media}: vfw's virtio-blk supports only media=disk")
    if _bool(opts, "snapshot", False):
        raise OptionError("snapshot=on is not supported by vfw (it needs a qcow2 overlay)")
    path = opts.get("file")
    if not path:
        raise OptionError("A block device must be specified for \"file\" (vfw has no "
                          "removable media)")
    cache = drive_cache_mode(opts)
    aio = opts.get("aio", "threads") or "threads"
    if aio not in AIO_MODES:
        raise OptionError(f"aio={aio}: vfw supports only aio=threads")
    readonly = _bool(opts, "readonly", False)
    discard = (opts.get("discard", "ignore") or "ignore") in ("unmap", "on")
    drv = open_image(path, opts.get("format"), readonly=readonly, cache=cache)
    drv.set_aio(aio)
    id = opts.id or f"{'virtio' if interface == 'virtio' else 'drive'}{index}"
    return BlockBackend(id, drv, serial=opts.get("serial"), interface=interface,
                        discard=discard)


def init_drives(machine: Machine, cl: CommandLine) -> None:
    """Open every ``-drive`` before the board is built (QEMU creates back ends first)."""
    for backend in list(_backends.values()):
        if backend.attached is None:
            backend.close()
    _backends.clear()
    drives: list[BlockBackend] = []
    for index, opts in enumerate(cl.opts("drive")):
        try:
            backend = drive_from_opts(opts, index)
            add_backend(backend)
        except OptionError as exc:
            raise exc.located("-drive", opts.text) from None
        except BackendError as exc:
            raise OptionError(str(exc), "-drive", opts.text) from None
        drives.append(backend)
    machine.block_backends = drives  # type: ignore[attr-defined]


def create_if_virtio_devices(machine: Machine, cl: CommandLine) -> None:
    """A ``virtio-blk-pci`` for every ``-drive if=virtio`` (after the board and -device)."""
    from ..options import Opts, OptsGroup
    from ..vl import create_device

    for backend in getattr(machine, "block_backends", []):
        if backend.interface != "virtio" or backend.attached is not None:
            continue
        opts = Opts(OptsGroup("device", implied_key="driver"),
                    items=[("driver", "virtio-blk-pci"), ("drive", backend.id)])
        create_device(machine, opts)


def open_fd_checked(path: str, flags: int) -> int:
    """``os.open`` with QEMU-style error messages."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"Could not open '{path}': {exc.strerror}") from None
