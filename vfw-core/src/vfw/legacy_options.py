"""QEMU's short disk and network options, rewritten onto ``-drive``/``-netdev``/``-device``.

Tutorials say ``qemu-system-x86_64 -hda disk.qcow2 -net nic,model=virtio -net tap,...``.
vfw has no IDE controller, so ``-hda``..``-hdd`` (and a bare image argument, which QEMU treats as
``-hda``) become ``-drive file=X,index=N,media=disk,if=virtio`` with a one-line note on stderr:
the guest sees a virtio disk (``/dev/vda``) instead of an IDE one (``/dev/sda``).

The legacy ``-net`` syntax puts NICs and back ends on QEMU's hub 0. vfw has no hub: the back end
becomes ``-netdev TYPE,id=hub0port0,...`` and the NIC ``-device virtio-net-pci,netdev=hub0port0``
(one NIC and one back end; several need ``-netdev``/``-device``). Only virtio NICs exist in vfw,
so other models (QEMU's default e1000 included) are refused with the spelling to use.
"""

from __future__ import annotations

import sys

from .cmdline import DEVICE_GROUP, DRIVE_GROUP, NET_GROUP, NETDEV_GROUP, CommandLine
from .errors import OptionError
from .options import Opts, OptsGroup, OptsList, escape

__all__ = ["rewrite_legacy"]

_DISKS = ("hda", "hdb", "hdc", "hdd")
_VIRTIO_NIC_MODELS = ("virtio", "virtio-net-pci", "virtio-net")
_NET_BACKENDS = ("user", "tap", "bridge", "socket", "stream", "dgram", "vde", "l2tpv3",
                 "netmap", "vhost-user", "vhost-vdpa")


def _opts(group: OptsGroup, items: list[tuple[str, str]], id: str | None = None) -> Opts:
    text = ",".join(f"{k}={escape(v)}" for k, v in items)
    if id is not None:
        text = f"{text},id={id}" if text else f"id={id}"
    return Opts(group, id=id, items=list(items), text=text)


def rewrite_legacy(cl: CommandLine) -> None:
    """Replace the short options in ``cl`` by the ``-drive``/``-netdev``/``-device`` they mean.

    Idempotent: the short options are consumed. Raises OptionError for what vfw cannot honour.
    """
    _rewrite_disks(cl)
    _rewrite_net(cl)


def _rewrite_disks(cl: CommandLine) -> None:
    for index, name in enumerate(_DISKS):
        path = cl.values.pop(name, None)
        if path is None:
            continue
        items = [("file", path), ("index", str(index)), ("media", "disk"), ("if", "virtio")]
        opts = _opts(DRIVE_GROUP, items)
        cl.groups[DRIVE_GROUP.name].add(opts)
        cl.order.append(("drive", opts))
        print(f"vfw: -{name} {path}: vfw has no IDE controller; attaching it as a virtio disk "
              f"(-drive {opts.text})", file=sys.stderr)


def _rewrite_net(cl: CommandLine) -> None:
    legacy = list(cl.groups.get(NET_GROUP.name, ()))
    if not legacy:
        return
    cl.groups[NET_GROUP.name] = OptsList(NET_GROUP)
    nics: list[Opts] = []
    backends: list[Opts] = []
    for opts in legacy:
        kind = opts.get("type")
        if kind == "none":
            continue
        if kind == "nic":
            nics.append(opts)
        elif kind in _NET_BACKENDS:
            backends.append(opts)
        else:
            raise OptionError(f"Parameter 'type' does not accept value '{kind}'", "-net",
                              opts.text)
    if not nics and not backends:
        return
    if len(nics) > 1 or len(backends) > 1:
        raise OptionError("vfw has no network hub: the legacy -net syntax supports one nic and "
                          "one back end; use -netdev TYPE,id=ID and -device "
                          "virtio-net-pci,netdev=ID for more", "-net",
                          (nics or backends)[1].text)
    backend_id: str | None = None
    for port, opts in enumerate(backends):
        backend_id = f"hub{0}port{port}"
        items = [(k, v) for k, v in opts.items if k not in ("vlan", "name")]
        netdev = _opts(NETDEV_GROUP, items, id=backend_id)
        cl.groups[NETDEV_GROUP.name].add(netdev)
        cl.order.append(("netdev", netdev))
    for opts in nics:
        model = opts.get("model")
        if model not in _VIRTIO_NIC_MODELS:
            shown = "e1000 (QEMU's default)" if model is None else f"'{model}'"
            raise OptionError(f"NIC model {shown} is not available in vfw, which has only "
                              "virtio NICs: use -net nic,model=virtio", "-net", opts.text)
        items = [("driver", "virtio-net-pci")]
        peer = opts.get("netdev") or backend_id  # -net nic,netdev=ID names its back end
        if peer is not None:
            items.append(("netdev", peer))
        mac = opts.get("macaddr")
        if mac is not None:
            items.append(("mac", mac))
        device = _opts(DEVICE_GROUP, items, id=opts.id)
        cl.groups[DEVICE_GROUP.name].add(device)
        cl.order.append(("device", device))
