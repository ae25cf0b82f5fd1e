"""QEMU's short options (-hda.., a bare image, -net) rewritten onto -drive/-netdev/-device."""

from __future__ import annotations

import pytest

from vfw.cmdline import parse_command_line
from vfw.errors import OptionError
from vfw.legacy_options import rewrite_legacy


def _rewrite(argv: str):
    cl = parse_command_line(argv.split())
    rewrite_legacy(cl)
    return cl


def test_hda_becomes_virtio_drive_with_note(capsys):
    cl = _rewrite("-enable-kvm -m 2048 -hda ubuntutest.qcow2 -hdc other.img")
    drives = [o.as_dict() for o in cl.opts("drive")]
    assert drives == [
        {"file": "ubuntutest.qcow2", "index": "0", "media": "disk", "if": "virtio"},
        {"file": "other.img", "index": "2", "media": "disk", "if": "virtio"},
    ]
    err = capsys.readouterr().err
    assert err.count("\n") == 2
    assert "-hda ubuntutest.qcow2: vfw has no IDE controller" in err
    assert "virtio" in err
    assert "hda" not in cl.values and "hdc" not in cl.values
    assert [name for name, _ in cl.order].count("drive") == 2


def test_positional_image_is_hda(capsys):
    cl = _rewrite("disk.img -m 512")
    assert [o.as_dict()["file"] for o in cl.opts("drive")] == ["disk.img"]
    assert next(iter(cl.opts("drive"))).get("index") == "0"
    capsys.readouterr()


def test_commas_in_file_names_survive(capsys):
    cl = parse_command_line(["-hda", "a,b.img"])
    rewrite_legacy(cl)
    (opts,) = list(cl.opts("drive"))
    assert opts.get("file") == "a,b.img"
    assert "file=a,,b.img" in opts.text
    capsys.readouterr()


def test_idempotent(capsys):
    cl = parse_command_line(["-hda", "x.img", "-net", "nic,model=virtio", "-net", "user"])
    rewrite_legacy(cl)
    rewrite_legacy(cl)
    assert len(cl.opts("drive")) == 1
    assert len(cl.opts("netdev")) == 1
    assert len(cl.opts("device")) == 1
    capsys.readouterr()


def test_tutorial_net_tap():
    cl = _rewrite("-net nic,model=virtio -net tap,ifname=tap0,script=no,downscript=no")
    (netdev,) = list(cl.opts("netdev"))
    assert netdev.id == "hub0port0"
    assert netdev.as_dict() == {"type": "tap", "ifname": "tap0", "script": "no",
                                "downscript": "no"}
    (device,) = list(cl.opts("device"))
    assert device.as_dict() == {"driver": "virtio-net-pci", "netdev": "hub0port0"}
    assert len(cl.opts("net")) == 0
    names = [name for name, _ in cl.order]
    assert names.index("netdev") < names.index("device")


def test_nic_macaddr_and_id_carried():
    cl = _rewrite("-net nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56,id=n0 -net user")
    (device,) = list(cl.opts("device"))
    assert device.id == "n0"
    assert device.get("mac") == "52:54:00:12:34:56"


def test_nic_without_backend():
    cl = _rewrite("-net nic,model=virtio")
    (device,) = list(cl.opts("device"))
    assert device.as_dict() == {"driver": "virtio-net-pci"}
    assert len(cl.opts("netdev")) == 0


def test_net_none():
    cl = _rewrite("-net none")
    assert len(cl.opts("netdev")) == 0 and len(cl.opts("device")) == 0


@pytest.mark.parametrize("argv, text", [
    ("-net nic -net user", "e1000 (QEMU's default)"),
    ("-net nic,model=e1000 -net user", "'e1000'"),
    ("-net nic,model=rtl8139", "'rtl8139'"),
])
def test_other_nic_models_refused(argv, text):
    with pytest.raises(OptionError) as info:
        _rewrite(argv)
    message = str(info.value)
    assert message.startswith("-net nic")
    assert text in message and "model=virtio" in message


def test_several_nics_need_netdev():
    with pytest.raises(OptionError, match="no network hub"):
        _rewrite("-net nic,model=virtio -net nic,model=virtio -net user")


def test_unknown_net_type():
    with pytest.raises(OptionError, match="does not accept value 'bogus'"):
        _rewrite("-net bogus")


def test_nic_with_netdev():
    cl = _rewrite("-netdev tap,id=n1,ifname=tap1,script=no,downscript=no "
                  "-net nic,model=virtio,netdev=n1")
    assert [o.id for o in cl.opts("netdev")] == ["n1"]
    (device,) = list(cl.opts("device"))
    assert device.as_dict() == {"driver": "virtio-net-pci", "netdev": "n1"}
