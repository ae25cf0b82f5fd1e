"""vfw.block: -drive parsing, format drivers by name and by probing, the raw driver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfw import block
from vfw.block.raw import RawDriver
from vfw.errors import BackendError, OptionError
from vfw.options import Opts, OptsGroup


def _opts(**items: str) -> Opts:
    return Opts(OptsGroup("drive"), id=items.pop("id", None),
                items=[(k.replace("_", "-"), v) for k, v in items.items()])


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(64 * 1024))
    return str(path)


def test_raw_preadv_pwritev_on_memoryviews(image: str) -> None:
    drv = block.open_image(image, "raw")
    assert isinstance(drv, RawDriver) and drv.length == 64 * 1024
    a, b = bytearray(100), bytearray(412)
    assert drv.preadv(512, [memoryview(a), memoryview(b)]) == 512
    data = Path(image).read_bytes()
    assert bytes(a + b) == data[512:1024]
    assert drv.pwritev(0, [memoryview(b"x" * 300), memoryview(b"y" * 212)]) == 512
    drv.flush()
    assert Path(image).read_bytes()[:512] == b"x" * 300 + b"y" * 212
    tail = bytearray(1024)
    assert drv.preadv(64 * 1024 - 512, [memoryview(tail)]) == 1024  # past EOF: zeroes
    assert bytes(tail[512:]) == bytes(512)
    drv.close()


def test_raw_discard_and_write_zeroes(image: str) -> None:
    drv = block.open_image(image, "raw")
    drv.write_zeroes(4096, 8192)
    drv.discard(16384, 4096)
    data = Path(image).read_bytes()
    assert data[4096:12288] == bytes(8192) and data[16384:20480] == bytes(4096)
    assert len(data) == 64 * 1024
    drv.close()


def test_probe_warns_and_unknown_format_is_named(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    drv = block.open_image(image)
    assert drv.FORMAT == "raw"
    assert "Image format was not specified for" in capsys.readouterr().err
    drv.close()
    with pytest.raises(BackendError, match="no 'vmdk' block driver"):
        block.open_image(image, "vmdk")
    with pytest.raises(BackendError, match="Could not open"):
        block.open_image(image + ".missing", "raw")
    with pytest.raises(BackendError, match="cache"):
        block.open_image(image, "raw", cache="bogus")


def test_drive_options(image: str) -> None:
    b = block.drive_from_opts(_opts(file=image, format="raw", id="d0", readonly="on",
                                    serial="S1", **{"if": "none"}), 0)
    assert b.id == "d0" and b.readonly and b.serial == "S1" and b.length == 64 * 1024
    b.close()
    with pytest.raises(OptionError, match="no IDE controller"):
        block.drive_from_opts(_opts(file=image, format="raw"), 0)
    with pytest.raises(OptionError, match="Invalid parameter 'bogus'"):
        block.drive_from_opts(_opts(file=image, bogus="1", **{"if": "none"}), 0)
    with pytest.raises(OptionError, match="snapshot"):
        block.drive_from_opts(_opts(file=image, snapshot="on", **{"if": "none"}), 0)
    with pytest.raises(OptionError, match="file"):
        block.drive_from_opts(_opts(**{"if": "none"}), 0)
    v = block.drive_from_opts(_opts(file=image, format="raw", **{"if": "virtio"}), 3)
    assert v.id == "virtio3" and v.interface == "virtio"
    v.close()


def test_readonly_open_refuses_writes(image: str) -> None:
    drv = block.open_image(image, "raw", readonly=True)
    with pytest.raises(OSError):
        drv.pwritev(0, [memoryview(b"z" * 512)])
    drv.close()
