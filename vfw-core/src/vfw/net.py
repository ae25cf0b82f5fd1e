"""Network back ends: ``-netdev TYPE,id=ID,...`` → a :class:`NetBackend` by id.

vfw supports one type, ``tap``: an existing or new tap interface opened through
/dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte virtio-net header
(TUNSETVNETHDRSZ), so frames cross between the guest's rings and the tap without conversion.
The offloads the tap may deliver (TUNSETOFFLOAD) follow what the guest driver negotiated.
vfw never runs ifup/ifdown scripts: ``script=``/``downscript=`` must be ``no`` (or left
out); set the interface up yourself. ``fd=``/``fds=`` (file descriptors passed by a
management layer) and ``vhost=on`` are refused with a clear message, as are QEMU's other
netdev types (user, socket, bridge, vhost-user, ...).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import BackendError, OptionError
from .main_loop import main_loop

if TYPE_CHECKING:
    from .cmdline import CommandLine
    from .machine import Machine
    from .options import Opts

__all__ = ["NetBackend", "TapBackend", "find_netdev", "init_netdevs", "open_tap"]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

VNET_HDR_LEN = 12
SUPPORTED_TYPES = ("tap",)
_QEMU_TYPES = ("user", "socket", "stream", "dgram", "bridge", "l2tpv3", "vde", "netmap",
               "vhost-user", "vhost-vdpa", "hubport", "af-xdp", "vmnet-host", "vmnet-shared",
               "vmnet-bridged")
_TAP_KEYS = {"type", "id", "ifname", "script", "downscript", "fd", "fds", "vhost",
             "vhostforce", "vhostfd", "vhostfds", "queues", "vnet_hdr", "sndbuf", "br",
             "helper", "poll-us"}


class NetBackend:
    """A host side of a NIC: frames with a 12-byte virtio-net header in front."""

    def __init__(self, id: str, fd: int):
        self.id = id
        self.fd = fd
        self.attached: object | None = None
        self._reader: Callable[[], None] | None = None

    def set_offload(self, flags: int) -> None:
        """What offloaded frames the back end may deliver (TUN_F_* bits)."""

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the main loop while frames wait (None: stop polling)."""
        if callback is self._reader:
            return
        self._reader = callback
        if callback is None:
            main_loop().remove_reader(self.fd)
        else:
            main_loop().add_reader(self.fd, callback)

    def close(self) -> None:
        self.set_reader(None)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TapBackend(NetBackend):
    """A tap interface with a virtio-net header (the caller reads/writes ``fd`` with
    readv/writev on guest memory)."""

    def __init__(self, id: str, fd: int, ifname: str):
        super().__init__(id, fd)
        self.ifname = ifname
        self.offload = -1

    def set_offload(self, flags: int) -> None:
        if flags == self.offload:
            return
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise BackendError(f"tap {self.ifname}: TUNSETOFFLOAD 0x{flags:x}: "
                               f"{exc.strerror}") from None
        self.offload = flags


def open_tap(ifname: str = "") -> tuple[int, str]:
    """Open (creating if needed) tap ``ifname`` with a 12-byte vnet header: (fd, name)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"could not open /dev/net/tun: {exc.strerror}") from None
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            raise BackendError(f"could not configure /dev/net/tun ({ifname or 'tap%d'}): "
                               f"{exc.strerror}") from None
        name = res[:16].split(b"\0", 1)[0].decode()
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        except OSError as exc:
            raise BackendError(f"tap {name}: TUNSETVNETHDRSZ: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, name


_netdevs: dict[str, NetBackend] = {}


def find_netdev(id: str) -> NetBackend | None:
    """The back end ``-netdev ...,id=ID``, if any."""
    return _netdevs.get(id)


def add_netdev(backend: NetBackend) -> None:
    if backend.id in _netdevs and _netdevs[backend.id] is not backend:
        raise OptionError(f"Duplicate ID '{backend.id}' for netdev")
    _netdevs[backend.id] = backend


def remove_netdev(id: str) -> None:
    _netdevs.pop(id, None)


def netdev_from_opts(opts: Opts) -> NetBackend:
    """Open one ``-netdev`` (QEMU's net_client_init)."""
    kind = opts.get("type")
    if not kind:
        raise OptionError("Parameter 'type' is missing")
    if kind not in SUPPORTED_TYPES:
        what = "a netdev backend type" if kind not in _QEMU_TYPES else "a type vfw supports"
        raise OptionError(f"Parameter 'type' does not accept value '{kind}' (expected {what}; "
                          f"vfw supports: {', '.join(SUPPORTED_TYPES)})")
    if not opts.id:
        raise OptionError("Parameter 'id' is missing")
    unknown = sorted(k for k in opts.as_dict() if k not in _TAP_KEYS)
    if unknown:
        raise OptionError(f"Invalid parameter '{unknown[0]}'")
    for key in ("fd", "fds", "vhostfd", "vhostfds"):
        if opts.has(key):
            raise OptionError(f"tap: {key}= (descriptors passed by a management layer) is not "
                              f"supported by vfw; use ifname= with an existing tap")
    for key in ("vhost", "vhostforce"):
        if opts.get_bool(key, False):
            raise OptionError(f"tap: {key}=on: vfw has no vhost-net support; use vhost=off")
    for key in ("br", "helper"):
        if opts.has(key):
            raise OptionError(f"tap: {key}= (the bridge helper) is not supported by vfw")
    for key in ("script", "downscript"):
        value = opts.get(key)
        if value not in (None, "", "no"):
            raise OptionError(f"tap: {key}={value}: vfw does not run interface scripts; use "
                              f"{key}=no and configure the interface yourself")
    if opts.get("queues", "1") not in ("1",):
        raise OptionError("tap: queues > 1 (multiqueue) is not supported by vfw")
    if not opts.get_bool("vnet_hdr", True):
        raise OptionError("tap: vnet_hdr=off is not supported by vfw (virtio-net needs it)")
    fd, name = open_tap(opts.get("ifname", "") or "")
    return TapBackend(opts.id, fd, name)


def init_netdevs(machine: Machine, cl: CommandLine) -> None:
    """Open every ``-netdev`` before the board is built (QEMU creates back ends first)."""
    for backend in list(_netdevs.values()):
        if backend.attached is None:
            backend.close()
    _netdevs.clear()
    for opts in cl.opts("netdev"):
        try:
            add_netdev(netdev_from_opts(opts))
        except OptionError as exc:
            raise exc.located("-netdev", opts.text) from None
        except BackendError as exc:
            raise OptionError(str(exc), "-netdev", opts.text) from None
    if any(True for _ in cl.opts("net")):
        raise OptionError("-net is not supported by vfw; use -netdev tap,id=ID,... with "
                          "-device virtio-net-pci,netdev=ID")
