"""vfw.net: -netdev parsing and the tap back end."""

from __future__ import annotations

import os
import shutil

import pytest

from vfw import net
from vfw.errors import OptionError
from vfw.options import Opts, OptsGroup
from vfw.testing import need


def _opts(kind: str, id: str | None = "n0", **items: str) -> Opts:
    return Opts(OptsGroup("netdev", implied_key="type"), id=id,
                items=[("type", kind)] + list(items.items()))


@pytest.mark.parametrize("kind", ["user", "socket", "bridge", "vhost-user", "nonsense"])
def test_unsupported_types_are_named(kind: str) -> None:
    with pytest.raises(OptionError, match=f"Parameter 'type' does not accept value '{kind}'"
                                          r".*vfw supports: tap"):
        net.netdev_from_opts(_opts(kind))


@pytest.mark.parametrize("items,match", [
    ({"fd": "3"}, "fd="), ({"fds": "3:4"}, "fds="), ({"vhost": "on"}, "vhost"),
    ({"script": "/etc/qemu-ifup"}, "does not run interface scripts"),
    ({"queues": "4"}, "multiqueue"), ({"helper": "/x"}, "helper"), ({"bogus": "1"}, "bogus"),
])
def test_tap_options_refused_clearly(items: dict[str, str], match: str) -> None:
    with pytest.raises(OptionError, match=match):
        net.netdev_from_opts(_opts("tap", **items))


def test_id_required() -> None:
    with pytest.raises(OptionError, match="Parameter 'id' is missing"):
        net.netdev_from_opts(_opts("tap", id=None))


def test_tap_opens_with_vnet_header_and_offloads() -> None:
    need(os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None,
         "needs root, /dev/net/tun and iproute2 to create a tap")
    name = f"vfwt{os.getpid() % 100000}"
    b = net.netdev_from_opts(_opts("tap", ifname=name, script="no", downscript="no"))
    try:
        assert isinstance(b, net.TapBackend) and b.ifname == name
        b.set_offload(net.TUN_F_CSUM | net.TUN_F_TSO4)
        assert b.offload == 3
        assert os.path.exists(f"/sys/class/net/{name}")
    finally:
        b.close()
