"""The qcow2 driver against qemu-img (the oracle): reads, writes, features, hostile images, crashes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfw.block import open_image
from vfw.block.qcow2 import Qcow2Driver
from vfw.errors import BackendError
from vfw.testing import need

MiB = 1 << 20


def qemu_img(*args: str | Path, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    need(shutil.which("qemu-img") is not None, "qemu-img (qemu-utils) is not installed")
    proc = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode in ok_codes, proc.stdout + proc.stderr
    return proc


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    need(shutil.which("qemu-io") is not None, "qemu-io (qemu-utils) is not installed")
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    proc = subprocess.run([*args, str(image)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout + proc.stderr


def as_raw(image: Path, tmp: Path) -> bytes:
    out = tmp / (image.name + ".converted.raw")
    qemu_img("convert", "-O", "raw", image, out)
    return out.read_bytes()


def read_all(drv, chunk: int = 3 * MiB + 4096) -> bytes:
    out = bytearray(drv.length)
    view = memoryview(out)
    for pos in range(0, len(out), chunk):
        part = view[pos:pos + chunk]
        # several buffers per request, as a guest's descriptor chain gives them
        half = len(part) // 3
        assert drv.preadv(pos, [part[:half], part[half:]]) == len(part)
    return bytes(out)


def check_clean(image: Path) -> None:
    """qemu-img check: no corruption (exit 2); leaks (exit 3) are acceptable."""
    proc = qemu_img("check", image, ok_codes=(0, 3))
    assert "ERROR" not in proc.stdout, proc.stdout


def random_raw(path: Path, size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    data = bytearray(size)
    for pos in range(0, size, 65536):  # some zero stretches, some data
        if rnd.random() < 0.7:
            n = min(65536, size - pos)
            data[pos:pos + n] = rnd.randbytes(n)
    path.write_bytes(data)
    return bytes(data)


# -- reading what qemu-img wrote ------------------------------------------------------------

@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster_size", [512, 65536, 2 * MiB])
@pytest.mark.parametrize("compressed", [False, True])
def test_read_converted(tmp_path, compat, cluster_size, compressed):
    src = tmp_path / "src.raw"
    random_raw(src, 5 * MiB + 12345, seed=cluster_size)
    img = tmp_path / "img.qcow2"
    extra = ["-c"] if compressed else []
    qemu_img("convert", *extra, "-f", "raw", "-O", "qcow2", "-o",
             f"compat={compat},cluster_size={cluster_size}", src, img)
    drv = open_image(str(img), readonly=True)
    assert isinstance(drv, Qcow2Driver)
    assert read_all(drv) == as_raw(img, tmp_path)
    drv.close()


def test_read_zero_clusters_and_backing_chain(tmp_path):
    base = tmp_path / "base.raw"
    random_raw(base, 4 * MiB, seed=1)
    sub = tmp_path / "sub"
    sub.mkdir()
    mid = sub / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    # relative backing names: resolved against the directory of the image naming them
    qemu_img("create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", mid)
    qemu_io(mid, "write -P 0x11 100k 300k", "write -z 1M 256k", "write -P 0x22 3M 64k")
    qemu_img("create", "-f", "qcow2", "-b", "sub/mid.qcow2", "-F", "qcow2", "-o", "compat=1.1",
             top, "6M")
    qemu_io(top, "write -P 0x33 200k 70k", "write -z 2M 1M", "write -z 3000k 7k",
            "write -P 0x44 5M 64k")
    drv = open_image(str(top), format="qcow2", readonly=True)
    assert drv.length == 6 * MiB
    assert read_all(drv) == as_raw(top, tmp_path)
    drv.close()


def test_backing_without_format_is_probed(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0x5a 0 64k")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    # drop the backing format extension: vfw probes the backing file as QEMU does
    patch_backing_format_away(top)
    drv = open_image(str(top), readonly=True)
    assert read_all(drv)[:65536] == b"\x5a" * 65536


def patch_backing_format_away(path: Path) -> None:
    data = bytearray(path.read_bytes())
    pos = struct.unpack_from(">I", data, 100)[0]
    while True:
        kind, length = struct.unpack_from(">II", data, pos)
        if kind == 0:
            raise AssertionError("no backing format extension")
        if kind == 0xE2792ACA:
            struct.pack_into(">I", data, pos, 0x12345678)  # unknown extension: ignored
            break
        pos += 8 + (length + 7) // 8 * 8
    path.write_bytes(bytes(data))


def test_probe_and_raw_warning(tmp_path, capsys):
    img = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    assert isinstance(open_image(str(img)), Qcow2Driver)
    assert "guessed raw" not in capsys.readouterr().err
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(MiB))
    drv = open_image(str(raw))
    assert not isinstance(drv, Qcow2Driver)
    assert "probing guessed raw" in capsys.readouterr().err
    assert Qcow2Driver.probe(img.read_bytes()[:2048], str(img)) == 100
    assert Qcow2Driver.probe(bytes(2048), str(raw)) == 0


# -- writing ---------------------------------------------------------------------------------

def exercise(drv, ref: bytearray, seed: int, ops: int = 150, max_len: int = 300_000) -> None:
    """Random writes, zero writes, discards and reads, checked against ``ref``."""
    rnd = random.Random(seed)
    size = drv.length
    for i in range(ops):
        off = rnd.randrange(0, size - 1)
        n = min(rnd.randrange(1, rnd.choice((4096, max_len))), size - off)
        op = rnd.random()
        if op < 0.5:
            data = rnd.randbytes(n)
            cut = rnd.randrange(0, n + 1)
            bufs = [memoryview(data)] if rnd.random() < 0.5 else [memoryview(data[:cut]),
                                                                  memoryview(data[cut:])]
            assert drv.pwritev(off, bufs) == n
            ref[off:off + n] = data
        elif op < 0.65:
            drv.write_zeroes(off, n)
            ref[off:off + n] = bytes(n)
        elif op < 0.7:
            # discard leaves partial clusters alone; only check reads stay consistent below
            before = bytearray(n)
            drv.discard(off, n)
            drv.preadv(off, [memoryview(before)])
            ref[off:off + n] = before
        else:
            buf = bytearray(n)
            drv.preadv(off, [memoryview(buf)])
            assert buf == ref[off:off + n], f"op {i}: read {off:#x}+{n:#x} differs"
        if rnd.random() < 0.1:
            drv.flush()


@pytest.mark.parametrize("compat, cluster_size, refcount_bits", [
    ("0.10", 65536, 16), ("1.1", 65536, 16), ("1.1", 512, 8), ("1.1", 4096, 64),
    ("0.10", 512, 16), ("1.1", 2 * MiB, 32),
])
@pytest.mark.parametrize("backing", [False, True])
def test_writes_pass_qemu_img_check(tmp_path, compat, cluster_size, refcount_bits, backing):
    size = 7 * MiB + 3 * 512
    opts = f"compat={compat},cluster_size={cluster_size}"
    if compat == "1.1":
        opts += f",refcount_bits={refcount_bits}"
    img = tmp_path / "img.qcow2"
    if backing:
        base = tmp_path / "base.qcow2"
        src = tmp_path / "src.raw"
        random_raw(src, 5 * MiB, seed=7)
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", src, base)
        qemu_img("create", "-f", "qcow2", "-o", opts, "-b", "base.qcow2", "-F", "qcow2",
                 img, str(size))
    else:
        qemu_img("create", "-f", "qcow2", "-o", opts, img, str(size))
        qemu_io(img, "write -P 0x77 1M 3M", "write -z 5M 64k")
    ref = bytearray(as_raw(img, tmp_path))
    drv = open_image(str(img), format="qcow2")
    exercise(drv, ref, seed=cluster_size + backing)
    assert read_all(drv) == ref
    drv.close()
    check_clean(img)
    assert as_raw(img, tmp_path) == ref


@pytest.mark.parametrize("opts", ["preallocation=metadata", "preallocation=falloc",
                                  "lazy_refcounts=on", "compat=0.10,preallocation=metadata"])
def test_writes_on_other_layouts(tmp_path, opts):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size=4096,{opts}", img, "3M")
    ref = bytearray(as_raw(img, tmp_path))
    drv = open_image(str(img), format="qcow2")
    exercise(drv, ref, seed=21, ops=100, max_len=50000)
    drv.close()
    check_clean(img)
    assert as_raw(img, tmp_path) == ref


def test_overwrite_compressed_clusters(tmp_path):
    src = tmp_path / "src.raw"
    random_raw(src, 3 * MiB, seed=3)
    img = tmp_path / "img.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", src, img)
    ref = bytearray(as_raw(img, tmp_path))
    drv = open_image(str(img), format="qcow2")
    exercise(drv, ref, seed=11, ops=200, max_len=20000)
    drv.close()
    check_clean(img)
    assert as_raw(img, tmp_path) == ref


def test_refcount_table_grows(tmp_path):
    # 512-byte clusters, 8-bit refcounts: one refcount block covers 512 clusters (256 KiB) and
    # the one-cluster refcount table 64 blocks (16 MiB), so 40 MiB of writes must move it.
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=8", img, "48M")
    drv = open_image(str(img), format="qcow2")
    first_table = drv.rt_offset
    chunk = bytes(range(256)) * 1024
    for pos in range(0, 40 * MiB, len(chunk)):
        drv.pwritev(pos, [memoryview(chunk)])
    assert drv.rt_offset != first_table
    drv.close()
    check_clean(img)
    raw = as_raw(img, tmp_path)
    assert raw[:40 * MiB] == chunk * 160 and raw[40 * MiB:] == bytes(8 * MiB)


def test_readonly_refuses_writes(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    drv = open_image(str(img), format="qcow2", readonly=True)
    with pytest.raises(OSError, match="read-only"):  # an I/O error for the device
        drv.pwritev(0, [memoryview(b"x")])
    before = img.read_bytes()
    drv.flush()
    drv.close()
    assert img.read_bytes() == before


def test_image_locking_as_qemu(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    drv = open_image(str(img), format="qcow2")
    proc = subprocess.run(["qemu-io", "-c", "write 0 4k", str(img)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and 'Failed to get "write" lock' in proc.stderr
    with pytest.raises(BackendError, match="another process"):
        open_image(str(img), format="qcow2")  # a second writer, even in this process
    open_image(str(img), format="qcow2", readonly=True).close()
    drv.close()
    holder = subprocess.Popen(["qemu-io", str(img)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until qemu-io has the image open (and locked)
            try:
                open_image(str(img), format="qcow2").close()
            except BackendError as exc:
                assert 'Failed to get "write" lock' in str(exc)
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        holder.communicate("quit\n")
    open_image(str(img), format="qcow2").close()


def test_reads_past_the_end_are_zero(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    qemu_io(img, "write -P 0x66 960k 64k")
    drv = open_image(str(img), format="qcow2", readonly=True)
    buf = bytearray(8192)
    assert drv.preadv(MiB - 4096, [memoryview(buf)]) == 8192
    assert buf == b"\x66" * 4096 + bytes(4096)


@pytest.mark.parametrize("mode, syncs_per_write, syncs_per_flush", [
    ("writeback", 0, 1), ("none", 0, 1), ("writethrough", 1, 1), ("directsync", 1, 1),
    ("unsafe", 0, 0),
])
def test_cache_modes(tmp_path, monkeypatch, mode, syncs_per_write, syncs_per_flush):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "4M")
    drv = open_image(str(img), format="qcow2", cache=mode)
    drv.pwritev(0, [memoryview(b"a" * 65536)])  # allocate first: allocations may sync
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    drv.pwritev(0, [memoryview(b"b" * 512)])
    assert len(calls) == syncs_per_write
    calls.clear()
    drv.flush()
    assert len(calls) == syncs_per_flush
    monkeypatch.undo()
    drv.close()


# -- header features ------------------------------------------------------------------------

def patch_header(path: Path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


@pytest.fixture
def v3(tmp_path) -> Path:
    img = tmp_path / "v3.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=1.1", img, "4M")
    qemu_io(img, "write -P 0x99 0 64k")
    return img


def test_encryption_refused(v3):
    patch_header(v3, 32, ">I", 1)
    with pytest.raises(BackendError, match="qcow2 encryption is not supported"):
        open_image(str(v3), format="qcow2", readonly=True)


def test_unknown_incompatible_bit_named(v3):
    patch_header(v3, 72, ">Q", 1 << 9)
    with pytest.raises(BackendError, match="incompatible feature.*bit 9"):
        open_image(str(v3), format="qcow2", readonly=True)


def test_external_data_file_refused(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", img, "1M")
    with pytest.raises(BackendError, match="external data file"):
        open_image(str(img), format="qcow2")


def test_corrupt_bit(v3):
    patch_header(v3, 72, ">Q", 2)
    with pytest.raises(BackendError, match="image is corrupt; use qemu-img check -r"):
        open_image(str(v3), format="qcow2")
    drv = open_image(str(v3), format="qcow2", readonly=True)
    assert read_all(drv)[:65536] == b"\x99" * 65536


def test_dirty_bit(v3):
    patch_header(v3, 72, ">Q", 1)
    with pytest.raises(BackendError, match="dirty.*qemu-img check -r all"):
        open_image(str(v3), format="qcow2")
    assert read_all(open_image(str(v3), format="qcow2", readonly=True))[:4] == b"\x99" * 4


def test_internal_snapshots_read_only(v3):
    qemu_img("snapshot", "-c", "snap1", v3)
    with pytest.raises(BackendError, match="snapshots"):
        open_image(str(v3), format="qcow2")
    assert read_all(open_image(str(v3), format="qcow2", readonly=True))[:4] == b"\x99" * 4


def test_autoclear_bits_cleared_on_write_open(v3):
    patch_header(v3, 88, ">Q", 1)
    open_image(str(v3), format="qcow2").close()
    assert struct.unpack_from(">Q", v3.read_bytes(), 88)[0] == 0


def test_missing_backing_file(tmp_path):
    img = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "raw", img, "1M")
    with pytest.raises(BackendError, match="Could not open backing file: Could not open "
                       ".*gone.raw': No such file"):
        open_image(str(img), format="qcow2")


def test_backing_loop_refused(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    qemu_img("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b)
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a)
    with pytest.raises(BackendError, match="backing chain"):
        open_image(str(b), format="qcow2")


# -- hostile images -------------------------------------------------------------------------

_TEMPLATES: dict[str, bytes] = {}


def template(tmp_root: Path, version: str) -> bytes:
    """A small image with L2 tables, data, zero and compressed clusters to mutate."""
    if version not in _TEMPLATES:
        src = tmp_root / f"tpl{version}.raw"
        random_raw(src, 256 * 1024, seed=5)
        img = tmp_root / f"tpl{version}.qcow2"
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                 f"compat={version},cluster_size=4096", src, img)
        qemu_io(img, "write -P 0x42 200k 20k", "write -z 64k 8k")
        _TEMPLATES[version] = img.read_bytes()
    return _TEMPLATES[version]


_INTERESTING = [0, 1, 0x200, 0x1000, 0x1001, 0x10000, 1 << 40, (1 << 56) - 512, 1 << 62,
                1 << 63, (1 << 64) - 1, 0x8000000000001000, 0x4000000000000000 | 0x1000]


@settings(max_examples=int(os.environ.get("VFW_HYPOTHESIS_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from(["0.10", "1.1"]),
       mutations=st.lists(st.tuples(st.one_of(st.integers(0, 5 * 4096), st.integers(0, 60000)), st.one_of(
           st.integers(0, 255).map(lambda b: ("byte", b)),
           st.sampled_from(_INTERESTING).map(lambda v: ("u64", v)),
           st.integers(0, 1 << 64 - 1).map(lambda v: ("u64", v)))), min_size=1, max_size=6),
       aligned=st.booleans(), ops=st.integers(0, 2**32))
def test_hostile_images(tmp_path, version, mutations, aligned, ops):
    data = bytearray(template(tmp_path.parent, version))
    for pos, (kind, value) in mutations:
        pos %= len(data)
        if kind == "byte":
            data[pos] = value
        else:
            pos = pos // 8 * 8 if aligned else pos
            data[pos:pos + 8] = struct.pack(">Q", value)[:len(data) - pos]
    img = tmp_path / "hostile.qcow2"
    img.write_bytes(bytes(data))
    size_before = len(data)
    other = tmp_path / "other.bin"
    other.write_bytes(b"keep")
    rnd = random.Random(ops)
    for readonly in (True, False):
        try:
            drv = open_image(str(img), format="qcow2", readonly=readonly)
        except BackendError:
            continue
        try:
            for _ in range(12):
                length = min(drv.length, 1 << 40)
                off = rnd.randrange(0, max(1, length))
                n = max(0, min(rnd.randrange(1, 40000), length - off))
                try:
                    if readonly or rnd.random() < 0.5:
                        drv.preadv(off, [memoryview(bytearray(n))])
                    elif rnd.random() < 0.8:
                        drv.pwritev(off, [memoryview(b"\xab" * n)])
                    else:
                        drv.write_zeroes(off, n)
                except OSError:  # what a device turns into an I/O error status
                    pass
        finally:
            drv.close()
    # never written outside the image, and never grown without bound
    assert other.read_bytes() == b"keep"
    assert img.stat().st_size < size_before + 16 * MiB


def test_hostile_l2_overlapping_header(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", img, "1M")
    qemu_io(img, "write -P 0x11 0 4k")
    l1_offset = struct.unpack_from(">Q", img.read_bytes(), 40)[0]
    patch_header(img, l1_offset, ">Q", (1 << 63) | 0)  # L2 table at the header: unallocated
    patch_header(img, l1_offset, ">Q", (1 << 63) | 0x1000 * 0 + 0x200)  # misaligned
    with pytest.raises(BackendError, match="corrupt image"):
        open_image(str(img), format="qcow2")
    rt_offset = struct.unpack_from(">Q", img.read_bytes(), 48)[0]
    patch_header(img, l1_offset, ">Q", (1 << 63) | rt_offset)  # L2 table = refcount table
    with pytest.raises(BackendError, match="overlaps"):
        open_image(str(img), format="qcow2")


def test_hostile_refcount_block_pointing_at_metadata(v3):
    header = v3.read_bytes()
    l1_offset, rt_offset = (struct.unpack_from(">Q", header, 40)[0],
                            struct.unpack_from(">Q", header, 48)[0])
    for target in (l1_offset, rt_offset, 0x10, 1 << 50):
        patch_header(v3, rt_offset + 8, ">Q", target)  # a second refcount block
        with pytest.raises(BackendError, match="corrupt image"):
            open_image(str(v3), format="qcow2")


def test_hostile_huge_size(v3):
    patch_header(v3, 24, ">Q", 1 << 60)
    with pytest.raises(BackendError, match="L1 table .* too small"):
        open_image(str(v3), format="qcow2", readonly=True)


def test_data_cluster_overlapping_metadata_marks_corrupt(tmp_path):
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=1.1,cluster_size=4096", img, "1M")
    qemu_io(img, "write -P 0x11 0 4k")
    header = img.read_bytes()
    l1_offset, rt_offset = (struct.unpack_from(">Q", header, 40)[0],
                            struct.unpack_from(">Q", header, 48)[0])
    l2_offset = struct.unpack_from(">Q", header, l1_offset)[0] & 0x00FFFFFFFFFFFE00
    patch_header(img, l2_offset, ">Q", (1 << 63) | rt_offset)  # data cluster = refcount table
    drv = open_image(str(img), format="qcow2")
    with pytest.raises(OSError, match="corrupt image"):
        drv.pwritev(0, [memoryview(b"\xff" * 4096)])
    with pytest.raises(OSError, match="image is corrupt"):  # later writes: refused too
        drv.pwritev(8192, [memoryview(b"\xff" * 4096)])
    drv.close()
    assert struct.unpack_from(">Q", img.read_bytes(), 72)[0] & 2  # the corrupt bit
    assert img.read_bytes()[rt_offset:rt_offset + 8] == header[rt_offset:rt_offset + 8]


# -- crash safety ---------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import random, sys, time
    from vfw.block import open_image
    drv = open_image(sys.argv[1], format="qcow2", cache=sys.argv[2])
    i = 0
    while i * 96 * 1024 + 100_000 < drv.length:
        rnd = random.Random(i)
        off = i * 96 * 1024 + rnd.randrange(0, 30000)
        drv.pwritev(off, [memoryview(bytes([i % 251 + 1]) * rnd.randrange(1, 60000))])
        if i % 3 == 2:
            drv.flush()
            print(i, flush=True)
        i += 1
    time.sleep(60)
""")


def expected_region(i: int) -> tuple[int, int, int]:
    rnd = random.Random(i)
    off = i * 96 * 1024 + rnd.randrange(0, 30000)
    return off, rnd.randrange(1, 60000), i % 251 + 1


@pytest.mark.parametrize("cluster_size", [4096, 65536])
def test_kill_9_during_writes(tmp_path, cluster_size):
    img = tmp_path / "img.qcow2"
    base = tmp_path / "base.raw"
    random_raw(base, 8 * MiB, seed=9)
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", "-b", "base.raw",
             "-F", "raw", img, "192M")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(img), "writeback"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    last = -1
    deadline = time.monotonic() + 60  # a loaded machine may take long to start Python
    while time.monotonic() < deadline and last < 150:
        line = child.stdout.readline()
        if not line:
            break
        last = int(line)
    time.sleep(random.random() * 0.05)  # then kill it somewhere in the middle of a write
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout:  # flushes reported before the kill count too
        last = int(line)
    assert child.returncode == -signal.SIGKILL
    assert last > 10, "the writer made no progress"
    print(f"{last + 1} writes flushed before the kill")
    check_clean(img)
    raw = as_raw(img, tmp_path)
    for i in range(last + 1):
        off, n, value = expected_region(i)
        assert raw[off:off + n] == bytes([value]) * n, f"flushed write {i} is lost"
