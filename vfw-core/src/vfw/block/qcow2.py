"""The qcow2 format driver (versions 2 and 3), written from the published format specification.

Reads: L1 → L2 → data clusters, zero clusters (v3 flag; unallocated clusters read as zero or
from the backing file), compressed clusters (raw deflate), backing chains. Writes: allocation on
first write with copy-on-write of the rest of the cluster from the backing file (or from the
compressed/zero cluster it replaces), v3 zero clusters for ``write_zeroes``/``discard``.

Crash safety. Clusters are only ever allocated past the end of the file (freed clusters are not
reused), and every allocation is written in this order: the data, then the refcount (creating
refcount blocks, and growing the refcount table, before anything points at them), then the L2
entry, then the L1 entry. A crash (``kill -9``) at any point therefore leaves at worst leaked
clusters (refcount 1, nothing points at them), which ``qemu-img check`` accepts, never a
reference to a cluster whose refcount is 0. Refcounts are always kept exact, so the
``lazy_refcounts`` compatible feature is not used and the dirty bit is never set by vfw. An image
whose dirty bit is set (QEMU crashed with lazy refcounts) opens read-only only; writing needs
``qemu-img check -r all`` first (vfw does not rebuild refcounts).

Cache modes (no O_DIRECT; the page cache is always used):
``writeback`` (default) and ``none``: a guest flush is an fdatasync of the image;
``writethrough`` and ``directsync``: fdatasync after every write request as well;
``unsafe``: flush does nothing.

Not supported: writing images with internal snapshots (read-only is fine), encryption,
external data files, subclusters, zstd compression, refcounts narrower than 8 bits, writing
compressed clusters, and reusing freed clusters (discard zeroes whole v3 clusters but never
shrinks the file). Opened for writing, an image is locked the way QEMU locks it (OFD locks), so
QEMU and vfw refuse to write the same image at once.

Hostile images: every offset read from the image is checked (alignment, inside the file, not
overlapping the header, L1 table, refcount table or another metadata cluster) before it is used
to write; problems found while opening refuse the image, problems found later fail the request
with "qcow2: corrupt image: ..." and, for a writable v3 image, set the corrupt bit (QEMU then
refuses to open it read-write until ``qemu-img check -r`` repairs it).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from bisect import bisect_right
from collections import OrderedDict
from typing import Any, ClassVar, Protocol

from ..errors import BackendError
from ..qom import register_type
from . import BlockDriver, open_image

__all__ = ["Qcow2CorruptError", "Qcow2Driver", "probe_qcow2"]

log = logging.getLogger("vfw.block.qcow2")

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72-byte version 2 header
HEADER_V3 = struct.Struct(">QQQII")  # features, refcount_order, header_length (offset 72)
V3_HEADER_LENGTH = 104

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1_RESERVED = 0x7F000000000001FF
L2_RESERVED = 0x3F000000000001FE
REFT_RESERVED = 0x1FF

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_NAMES = {0: "dirty bit", 1: "corrupt bit", 2: "external data file",
                  3: "compression type", 4: "extended L2 entries"}

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_DATA_FILE = 0x44415441

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20  # QEMU's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # QEMU's QCOW_MAX_REFTABLE_SIZE
MAX_BACKING_NAME = 1023
MAX_BACKING_DEPTH = 64
L2_CACHE_TABLES = 512
REFBLOCK_CACHE = 256

CACHE_MODES = ("writeback", "none", "writethrough", "directsync", "unsafe")

_DATA, _ZERO, _UNALLOC, _COMPRESSED = range(4)


class Qcow2CorruptError(BackendError):
    """Opening refused: the image's metadata is inconsistent or points outside the image."""


class Qcow2IOError(OSError):
    """A request met corrupt metadata (an I/O error for the device, EIO)."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


#: How deep the backing chain being opened is (opening is single-threaded, at start-up).
_open_depth = 0


class _Backing(Protocol):
    def preadv(self, offset: int, buffers: list[memoryview]) -> int: ...

    def close(self) -> None: ...


def probe_qcow2(header: bytes) -> int:
    """Probe score: 100 for a qcow2 magic with version >= 2 (as QEMU's qcow2_probe)."""
    if len(header) >= 8 and header[:4] == MAGIC and struct.unpack(">I", header[4:8])[0] >= 2:
        return 100
    return 0


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class _Segments:
    """The guest buffers of one request, sliced by byte range of the whole request."""

    def __init__(self, buffers: list[memoryview]) -> None:
        self.views = [b if b.format == "B" and b.ndim == 1 else b.cast("B") for b in buffers]
        self.starts: list[int] = []
        pos = 0
        for view in self.views:
            self.starts.append(pos)
            pos += len(view)
        self.total = pos

    def slices(self, start: int, length: int) -> list[memoryview]:
        out = []
        i = bisect_right(self.starts, start) - 1
        end = start + length
        while start < end and i < len(self.views):
            base = self.starts[i]
            view = self.views[i]
            lo = start - base
            hi = min(len(view), end - base)
            if hi > lo:
                out.append(view[lo:hi])
                start = base + hi
            i += 1
        return out


def _fill_zero(views: list[memoryview]) -> None:
    for view in views:
        view[:] = bytes(len(view))


@register_type
class Qcow2Driver(BlockDriver):
    """qcow2 images (see the module docstring); ``open`` sets everything up."""

    TYPE = "block-driver-qcow2"
    FORMAT = "qcow2"
    CAN_DISCARD: ClassVar[bool] = True
    CAN_WRITE_ZEROES: ClassVar[bool] = True

    @classmethod
    def probe(cls, header: bytes, path: str) -> int:
        return probe_qcow2(header)

    # -- opening ----------------------------------------------------------------------------
    def open(self, path: str, *, readonly: bool = False, cache: str = "writeback") -> None:
        """Open ``path``; raises BackendError (or Qcow2CorruptError) with a user-facing reason."""
        if cache not in CACHE_MODES:
            raise BackendError("invalid cache option")
        self.filename = path
        self.readonly = readonly
        self.cache = cache
        self._lock = threading.RLock()
        self._backing: _Backing | None = None
        self._fd = -1
        global _open_depth
        if _open_depth >= MAX_BACKING_DEPTH:
            raise BackendError(f"qcow2: backing chain is deeper than {MAX_BACKING_DEPTH} images "
                               f"at '{path}' (a loop?)")
        try:
            self._fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendError(f"Could not open '{path}': {exc.strerror}") from None
        _open_depth += 1
        try:
            if not readonly:
                _lock_for_writing(self._fd, path)
            self._open_image()
        except BaseException:
            self.close()
            raise
        finally:
            _open_depth -= 1

    def _pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def _open_image(self) -> None:
        file_size = os.fstat(self._fd).st_size
        raw = self._pread(0, 4096)
        if len(raw) < HEADER.size or raw[:4] != MAGIC:
            raise BackendError(f"qcow2: '{self.filename}' is not a qcow2 image (bad magic)")
        (_, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_off,
         rt_off, rt_clusters, nb_snapshots, snapshots_off) = HEADER.unpack_from(raw)
        if version not in (2, 3):
            raise BackendError(f"qcow2: unsupported qcow2 version {version}")
        self.version = version
        incompat = compat = autoclear = 0
        refcount_order = 4
        header_length = HEADER.size
        compression_type = 0
        if version == 3:
            if len(raw) < V3_HEADER_LENGTH:
                raise Qcow2CorruptError("qcow2: corrupt image: header is truncated")
            incompat, compat, autoclear, refcount_order, header_length = (
                HEADER_V3.unpack_from(raw, HEADER.size))
            if header_length < V3_HEADER_LENGTH:
                raise Qcow2CorruptError(
                    f"qcow2: corrupt image: invalid header length {header_length}")
            if header_length > V3_HEADER_LENGTH and len(raw) > V3_HEADER_LENGTH:
                compression_type = raw[V3_HEADER_LENGTH]
        if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            raise Qcow2CorruptError(f"qcow2: corrupt image: cluster size 2^{cluster_bits} "
                                    "is out of range (512 bytes .. 2 MiB)")
        cs = 1 << cluster_bits
        self.cluster_bits = cluster_bits
        self.cluster_size = cs
        if header_length > cs:
            raise Qcow2CorruptError("qcow2: corrupt image: header is larger than a cluster")
        if cs > len(raw):
            raw = self._pread(0, cs)
        self.features = self._read_extensions(raw, header_length, backing_off)
        if crypt != 0:
            raise BackendError("qcow2 encryption is not supported")
        if incompat & INCOMPAT_DATA_FILE or EXT_DATA_FILE in self.features:
            raise BackendError("qcow2: images with an external data file (incompatible feature "
                               "bit 2) are not supported")
        if incompat & INCOMPAT_EXTL2:
            raise BackendError("qcow2: extended L2 entries (incompatible feature bit 4, "
                               "subclusters) are not supported")
        if incompat & INCOMPAT_COMPRESSION and compression_type != 0:
            raise BackendError(f"qcow2: compression type {compression_type} (zstd) is not "
                               "supported, only zlib")
        unknown = incompat & ~((1 << 5) - 1)
        if unknown:
            names = self.features.get(EXT_FEATURE_TABLE, {})
            bits = [b for b in range(64) if unknown >> b & 1]
            described = ", ".join(
                f"bit {b}" + (f" ({names[b]})" if isinstance(names, dict) and b in names else "")
                for b in bits)
            raise BackendError(f"qcow2: unsupported incompatible feature(s): {described}")
        if not 3 <= refcount_order <= 6:
            raise BackendError(f"qcow2: refcount_order {refcount_order} is not supported "
                               "(vfw handles 8, 16, 32 and 64-bit refcounts: 3..6)")
        if not self.readonly:
            if incompat & INCOMPAT_CORRUPT:
                raise BackendError(f"qcow2: image is corrupt; use qemu-img check -r "
                                   f"('{self.filename}' can only be opened read-only)")
            if incompat & INCOMPAT_DIRTY:
                raise BackendError(f"qcow2: image '{self.filename}' is dirty (not closed cleanly "
                                   "with lazy_refcounts=on); repair it with 'qemu-img check -r "
                                   "all' or open it read-only")
            if nb_snapshots:
                raise BackendError("qcow2: writing to images with internal snapshots is not "
                                   "supported; open it with readonly=on")
        self.incompat = incompat
        self.compat = compat
        self.size = size
        self.refcount_bits = 1 << refcount_order
        self.refcount_max = (1 << self.refcount_bits) - 1
        self._rb_entries = cs * 8 // self.refcount_bits
        self._rb_fmt = {8: "B", 16: "H", 32: "I", 64: "Q"}[self.refcount_bits]
        self._rb_width = self.refcount_bits // 8
        self._l2_entries = cs // 8
        self._l2_bits = cluster_bits - 3
        self._csize_shift = 62 - (cluster_bits - 8)
        self._csize_mask = (1 << (cluster_bits - 8)) - 1
        self._coffset_mask = (1 << self._csize_shift) - 1
        self._end = _round_up(file_size, cs)
        self._file_size = file_size

        # L1 table
        l2_cover = self._l2_entries * cs
        if size > (1 << 62):
            raise Qcow2CorruptError(f"qcow2: corrupt image: virtual size {size} is too large")
        needed_l1 = (size + l2_cover - 1) // l2_cover
        if l1_size * 8 > MAX_L1_BYTES:
            raise Qcow2CorruptError("qcow2: corrupt image: active L1 table too large")
        if l1_size < needed_l1:
            raise Qcow2CorruptError(f"qcow2: corrupt image: L1 table ({l1_size} entries) is too "
                                    f"small for the virtual size {size}")
        self._check_table("L1 table", l1_off, l1_size * 8, file_size)
        self.l1_offset = l1_off
        l1_raw = self._pread(l1_off, l1_size * 8) if l1_size else b""
        if len(l1_raw) != l1_size * 8:
            raise Qcow2CorruptError("qcow2: corrupt image: L1 table is beyond the end of the file")
        self._l1 = list(struct.unpack(f">{l1_size}Q", l1_raw))

        # refcount table
        if rt_clusters * cs > MAX_REFTABLE_BYTES or rt_clusters == 0:
            raise Qcow2CorruptError(f"qcow2: corrupt image: refcount table size "
                                    f"{rt_clusters} clusters is invalid")
        self._check_table("refcount table", rt_off, rt_clusters * cs, file_size)
        self.rt_offset = rt_off
        rt_raw = self._pread(rt_off, rt_clusters * cs)
        if len(rt_raw) != rt_clusters * cs:
            raise Qcow2CorruptError("qcow2: corrupt image: refcount table is beyond the end of "
                                    "the file")
        self._rt = list(struct.unpack(f">{len(rt_raw) // 8}Q", rt_raw))

        # Metadata clusters, for overlap checks.
        self._meta: set[int] = {0}
        self._meta_add(l1_off, l1_size * 8, "L1 table")
        self._meta_add(rt_off, rt_clusters * cs, "refcount table")
        for i, entry in enumerate(self._rt):
            if entry & REFT_RESERVED:
                raise Qcow2CorruptError(f"qcow2: corrupt image: refcount block {i} offset "
                                        f"{entry:#x} is not cluster-aligned")
            off = entry & ~REFT_RESERVED
            if off:
                self._check_cluster(off, f"refcount block {i}", file_size)
                self._meta_add(off, cs, f"refcount block {i}")
        for i, entry in enumerate(self._l1):
            off = entry & OFFSET_MASK
            if entry & L1_RESERVED or off & (cs - 1):
                raise Qcow2CorruptError(f"qcow2: corrupt image: L1 entry {i} ({entry:#x}) is "
                                        "invalid or not cluster-aligned")
            if off:
                self._check_cluster(off, f"L2 table {i}", file_size)
                self._meta_add(off, cs, f"L2 table {i}")
        if nb_snapshots and snapshots_off & (cs - 1):
            raise Qcow2CorruptError("qcow2: corrupt image: snapshot table is not aligned")

        self._l2_cache: OrderedDict[int, list[int]] = OrderedDict()
        self._rb_cache: OrderedDict[int, bytearray] = OrderedDict()
        self._zero_cluster = bytes(cs)

        # backing file
        self.backing_file: str | None = None
        self.backing_format: str | None = None
        if backing_off:
            if backing_len > MAX_BACKING_NAME:
                raise Qcow2CorruptError("qcow2: corrupt image: backing file name too long")
            if backing_off + backing_len > cs:
                raise Qcow2CorruptError("qcow2: corrupt image: invalid backing file offset")
            name = raw[backing_off:backing_off + backing_len].decode("utf-8", "replace")
            self.backing_file = name
            fmt = self.features.get(EXT_BACKING_FORMAT)
            self.backing_format = fmt if isinstance(fmt, str) else None
            if name:
                self._backing = self._open_backing(name, self.backing_format)
        self.backing_length = int(getattr(self._backing, "length", 0)) if self._backing else 0
        self.length = size

        self._opened = True
        if not self.readonly and version == 3 and autoclear:
            # Autoclear features (bitmaps, raw external data) become invalid once an
            # implementation that does not know them writes: clear them, as QEMU does.
            os.pwrite(self._fd, struct.pack(">Q", 0), 88)

    def _read_extensions(self, raw: bytes, start: int, backing_off: int) -> dict[int, Any]:
        """Header extensions: backing format name, feature names; others are only recorded."""
        found: dict[int, Any] = {}
        end = backing_off if backing_off and backing_off > start else len(raw)
        end = min(end, self.cluster_size, len(raw))
        pos = start
        while pos + 8 <= end:
            ext_type, ext_len = struct.unpack_from(">II", raw, pos)
            pos += 8
            if ext_type == EXT_END:
                break
            if pos + ext_len > end:
                raise Qcow2CorruptError("qcow2: corrupt image: header extension overflows the "
                                        "header cluster")
            data = raw[pos:pos + ext_len]
            if ext_type == EXT_BACKING_FORMAT:
                found[ext_type] = data.decode("utf-8", "replace").rstrip("\0")
            elif ext_type == EXT_FEATURE_TABLE:
                names: dict[int, str] = {}
                for i in range(0, len(data) - 47, 48):
                    kind, bit = data[i], data[i + 1]
                    if kind == 0:
                        names[bit] = data[i + 2:i + 48].split(b"\0")[0].decode("utf-8", "replace")
                found[ext_type] = names
            else:
                found[ext_type] = data
            pos += _round_up(ext_len, 8)
        return found

    def _check_table(self, what: str, offset: int, length: int, file_size: int) -> None:
        if offset & (self.cluster_size - 1) or (offset == 0 and length):
            raise Qcow2CorruptError(f"qcow2: corrupt image: {what} offset {offset:#x} is invalid")
        if offset + length > file_size:
            raise Qcow2CorruptError(f"qcow2: corrupt image: {what} is beyond the end of the file")

    def _check_cluster(self, offset: int, what: str, file_size: int) -> None:
        if offset & (self.cluster_size - 1):
            raise Qcow2CorruptError(f"qcow2: corrupt image: {what} offset {offset:#x} is not "
                                    "cluster-aligned")
        if offset + self.cluster_size > _round_up(file_size, self.cluster_size):
            raise Qcow2CorruptError(f"qcow2: corrupt image: {what} offset {offset:#x} is beyond "
                                    "the end of the file")

    def _meta_add(self, offset: int, length: int, what: str) -> None:
        cb = self.cluster_bits
        for c in range(offset >> cb, (offset + length + self.cluster_size - 1) >> cb):
            if c in self._meta:
                message = f"{what} at {offset:#x} overlaps other metadata"
                if getattr(self, "_opened", False):  # while running: an I/O error
                    raise self._corrupt(message)
                raise Qcow2CorruptError(f"qcow2: corrupt image: {message}")
            self._meta.add(c)

    def _open_backing(self, name: str, fmt: str | None) -> _Backing:
        if os.path.isabs(name) or ":" in name.split("/")[0]:
            path = name
        else:  # relative to the directory of the image that names it, as QEMU resolves it
            path = os.path.join(os.path.dirname(self.filename), name)
        try:
            return open_image(path, format=fmt, readonly=True, cache=self.cache)
        except BackendError as exc:
            if str(exc).startswith("Could not open backing file"):
                raise
            raise BackendError(f"Could not open backing file: {exc}") from None

    def close(self) -> None:
        """Flush (unless cache=unsafe) and close the image and its backing chain."""
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            try:
                if not getattr(self, "readonly", True) and self.cache != "unsafe":
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        backing, self._backing = getattr(self, "_backing", None), None
        if backing is not None:
            backing.close()

    # -- metadata access --------------------------------------------------------------------
    def _corrupt(self, message: str) -> Qcow2IOError:
        """Report corruption found while running: mark a writable v3 image corrupt."""
        text = f"qcow2: corrupt image: {message}"
        log.error("%s: %s", self.filename, text)
        if not self.readonly and self.version == 3 and not self.incompat & INCOMPAT_CORRUPT:
            self.incompat |= INCOMPAT_CORRUPT
            try:
                os.pwrite(self._fd, struct.pack(">Q", self.incompat), 72)
                os.fdatasync(self._fd)
            except OSError:
                pass
        return Qcow2IOError(text)

    def _l2_table(self, l1_index: int) -> list[int] | None:
        entry = self._l1[l1_index]
        off = entry & OFFSET_MASK
        if not off:
            return None
        table = self._l2_cache.get(off)
        if table is not None:
            self._l2_cache.move_to_end(off)
            return table
        raw = self._pread(off, self.cluster_size)
        if len(raw) != self.cluster_size:
            raise self._corrupt(f"L2 table at {off:#x} is beyond the end of the file")
        table = list(struct.unpack(f">{self._l2_entries}Q", raw))
        self._l2_cache[off] = table
        if len(self._l2_cache) > L2_CACHE_TABLES:
            self._l2_cache.popitem(last=False)
        return table

    def _classify(self, entry: int) -> tuple[int, int]:
        """(kind, host offset) of an L2 entry, checking what a hostile image could abuse."""
        if entry & OFLAG_COMPRESSED:
            return _COMPRESSED, entry & self._coffset_mask
        if entry & L2_RESERVED:
            raise self._corrupt(f"L2 entry {entry:#x} has reserved bits set")
        host = entry & OFFSET_MASK
        if host & (self.cluster_size - 1):
            raise self._corrupt(f"data cluster offset {host:#x} is not cluster-aligned")
        if entry & OFLAG_ZERO:
            return _ZERO, host
        if not host:
            return _UNALLOC, 0
        if host + self.cluster_size > self._end:
            raise self._corrupt(f"data cluster offset {host:#x} is beyond the end of the file")
        if host >> self.cluster_bits in self._meta:
            raise self._corrupt(f"data cluster at {host:#x} overlaps metadata")
        return _DATA, host

    def _map(self, offset: int, length: int) -> tuple[int, int, int]:
        """(kind, host offset, bytes) of the run of like clusters starting at ``offset``."""
        cb = self.cluster_bits
        cs = self.cluster_size
        ci = offset >> cb
        l1i = ci >> self._l2_bits
        l2i = ci & (self._l2_entries - 1)
        in_cluster = offset & (cs - 1)
        if l1i >= len(self._l1):
            raise self._corrupt("request beyond the L1 table")
        table = self._l2_table(l1i)
        room = (self._l2_entries - l2i) * cs - in_cluster
        if table is None:
            return _UNALLOC, 0, min(length, room)
        kind, host = self._classify(table[l2i])
        n = cs - in_cluster
        if kind == _COMPRESSED:
            return kind, table[l2i], min(length, n)
        i = l2i + 1
        if kind == _DATA:
            # fast path: the next entries are this one with the offset advanced, flags equal
            expect = table[l2i] + cs
            last = min(self._l2_entries, l2i + 1 + (length - n + cs - 1) // cs)
            while i < last and table[i] == expect:
                expect += cs
                i += 1
            n += (i - l2i - 1) * cs
            if host + (i - l2i) * cs > self._end:
                raise self._corrupt(f"data cluster run at {host:#x} is beyond the end of the "
                                    "file")
            return kind, host + in_cluster, min(length, n)
        while n < length and i < self._l2_entries:
            if self._classify(table[i])[0] != kind:
                break
            n += cs
            i += 1
        return kind, 0, min(length, n)

    def _read_compressed(self, entry: int) -> bytes:
        coffset = entry & self._coffset_mask
        nb_sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
        csize = nb_sectors * 512 - (coffset & 511)
        if coffset < self.cluster_size or coffset >= self._end:
            raise self._corrupt(f"compressed cluster offset {coffset:#x} is invalid")
        data = self._pread(coffset, csize)
        try:
            out = zlib.decompressobj(-15).decompress(data, self.cluster_size)
        except zlib.error as exc:
            raise self._corrupt(f"compressed cluster at {coffset:#x} does not inflate: "
                                f"{exc}") from None
        if len(out) != self.cluster_size:
            raise self._corrupt(f"compressed cluster at {coffset:#x} is truncated")
        return out

    def _read_backing(self, offset: int, views: list[memoryview]) -> None:
        if self._backing is None:
            _fill_zero(views)
            return
        total = sum(len(v) for v in views)
        have = max(0, min(total, self.backing_length - offset))
        if have:
            segs = _Segments(views)
            self._backing.preadv(offset, segs.slices(0, have))
        if have < total:
            _fill_zero(_Segments(views).slices(have, total - have))

    def _check_request(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Qcow2IOError(f"qcow2: request {offset:#x}+{length:#x} is beyond the end of "
                               f"the image ({self.size:#x})", errno.EINVAL)

    # -- reads ------------------------------------------------------------------------------
    def preadv(self, offset: int, buffers: list[memoryview]) -> int:
        """Read into ``buffers`` from guest ``offset``; returns the number of bytes read."""
        if len(buffers) == 1:
            done = self._fast_io(offset, buffers[0], False)
            if done >= 0:
                return done
        segs = _Segments(buffers)
        total = segs.total
        if offset < 0:
            raise Qcow2IOError(f"qcow2: negative offset {offset}", errno.EINVAL)
        inside = max(0, min(total, self.size - offset))
        if inside < total:  # past the end of the image: zeroes, as the driver API says
            _fill_zero(segs.slices(inside, total - inside))
        with self._lock:
            self._read_segs(offset, segs, 0, inside)
        return total

    def _fast_io(self, offset: int, buf: memoryview, write: bool) -> int:
        """One buffer inside one allocated data cluster (a guest's small random I/O): straight
        to the host offset from the cached L2 entry. -1 when the general path must do it."""
        cs = self.cluster_size
        n = buf.nbytes
        if offset < 0 or (offset & (cs - 1)) + n > cs or offset + n > self.size or n == 0:
            return -1
        if write and (self.readonly or self.incompat & INCOMPAT_CORRUPT):
            return -1
        ci = offset >> self.cluster_bits
        with self._lock:
            table = self._l2_cache.get(self._l1[ci >> self._l2_bits] & OFFSET_MASK)
            if table is None:
                return -1
            entry = table[ci & (self._l2_entries - 1)]
            host = entry & OFFSET_MASK
            if entry & (OFLAG_COMPRESSED | L2_RESERVED | OFLAG_ZERO) or not host or \
                    host & (cs - 1) or host + cs > self._end or \
                    host >> self.cluster_bits in self._meta:
                return -1
            if write:
                if not entry & OFLAG_COPIED:
                    return -1
                if buf.format != "B" or buf.ndim != 1:
                    buf = buf.cast("B")
                _pwritev(self._fd, [buf], host + (offset & (cs - 1)))
                return n
            got = os.preadv(self._fd, [buf], host + (offset & (cs - 1)))
        if got != n:
            return -1  # a short read: the general path fills the rest
        return n

    def _read_segs(self, offset: int, segs: _Segments, start: int, total: int) -> None:
        pos = 0
        while pos < total:
            kind, host, n = self._map(offset + pos, total - pos)
            # merge host-contiguous data runs across L2 tables into one preadv
            if kind == _DATA:
                while pos + n < total:
                    k2, h2, n2 = self._map(offset + pos + n, total - pos - n)
                    if k2 != _DATA or h2 != host + n:
                        break
                    n += n2
            views = segs.slices(start + pos, n)
            if kind == _DATA:
                got = _preadv(self._fd, views, host)
                if got < n:  # a short file (the last cluster): the rest reads as zeros
                    _fill_zero(_Segments(views).slices(got, n - got))
            elif kind == _ZERO:
                _fill_zero(views)
            elif kind == _UNALLOC:
                self._read_backing(offset + pos, views)
            else:
                data = self._read_compressed(host)
                at = (offset + pos) & (self.cluster_size - 1)
                k = 0
                for view in views:
                    view[:] = data[at + k:at + k + len(view)]
                    k += len(view)
            pos += n

    def _cluster_content(self, ci: int) -> bytearray:
        """The current guest-visible content of cluster ``ci`` (for copy-on-write)."""
        buf = bytearray(self.cluster_size)
        start = ci << self.cluster_bits
        n = min(self.cluster_size, self.size - start)
        self._read_segs(start, _Segments([memoryview(buf)]), 0, n)
        return buf

    # -- writes -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.readonly:
            raise Qcow2IOError("qcow2: the image is opened read-only", errno.EROFS)
        if self.incompat & INCOMPAT_CORRUPT:
            raise Qcow2IOError("qcow2: image is corrupt; use qemu-img check -r")

    def pwritev(self, offset: int, buffers: list[memoryview]) -> int:
        """Write ``buffers`` at guest ``offset``, allocating clusters; returns bytes written."""
        if len(buffers) == 1 and self.cache not in ("writethrough", "directsync"):
            done = self._fast_io(offset, buffers[0], True)
            if done >= 0:
                return done
        segs = _Segments(buffers)
        total = segs.total
        self._check_request(offset, total)
        with self._lock:
            self._check_writable()
            self._write_segs(offset, segs, total)
            if self.cache in ("writethrough", "directsync"):
                os.fdatasync(self._fd)
        return total

    def _write_segs(self, offset: int, segs: _Segments, total: int) -> None:
        cb = self.cluster_bits
        cs = self.cluster_size
        pos = 0
        while pos < total:
            voff = offset + pos
            kind, host, n = self._map(voff, total - pos)
            if kind == _DATA and self._copied(voff):
                # _map's data runs share the first entry's flags: all COPIED, written in place
                first = host >> cb
                for c in range(first, ((host + n - 1) >> cb) + 1):
                    if c in self._meta:
                        raise self._corrupt(f"data cluster at {c << cb:#x} overlaps metadata")
                _pwritev(self._fd, segs.slices(pos, n), host)
                pos += n
                continue
            # allocate a run of new clusters within this L2 table
            ci = voff >> cb
            last = (offset + total - 1) >> cb
            l2_end = ((ci >> self._l2_bits) + 1) << self._l2_bits
            count = 1
            while ci + count <= last and ci + count < l2_end and \
                    not self._in_place(ci + count):
                count += 1
            run_end = min(offset + total, (ci + count) << cb)
            host0 = self._bump(count)
            views: list[memoryview] = []
            for k in range(count):
                c_start = (ci + k) << cb
                lo = max(voff, c_start)
                hi = min(run_end, c_start + cs)
                if lo == c_start and hi == c_start + cs:
                    views.extend(segs.slices(lo - offset, cs))
                else:
                    content = self._cluster_content(ci + k)
                    mv = memoryview(content)
                    _copy_into(mv[lo - c_start:hi - c_start], segs.slices(lo - offset, hi - lo))
                    views.append(mv)
            _pwritev(self._fd, views, host0)
            self._set_new_refcounts(host0, count)
            self._set_l2_entries(ci, [(host0 + (k << cb)) | OFLAG_COPIED for k in range(count)])
            pos = run_end - offset

    def _copied(self, voff: int) -> bool:
        table = self._l2_table((voff >> self.cluster_bits) >> self._l2_bits)
        assert table is not None
        return bool(table[(voff >> self.cluster_bits) & (self._l2_entries - 1)] & OFLAG_COPIED)

    def _in_place(self, ci: int) -> bool:
        """Whether cluster ``ci`` is a data cluster a write may overwrite where it is."""
        table = self._l2_table(ci >> self._l2_bits)
        if table is None:
            return False
        entry = table[ci & (self._l2_entries - 1)]
        kind, _ = self._classify(entry)
        return kind == _DATA and bool(entry & OFLAG_COPIED)

    def _set_l2_entries(self, ci: int, entries: list[int]) -> None:
        """Point clusters ``ci``.. at ``entries`` (after their refcounts are on disk), then
        release whatever they pointed at before."""
        l1i = ci >> self._l2_bits
        l2i = ci & (self._l2_entries - 1)
        table = self._l2_table(l1i)
        old: list[int] = []
        if table is None:
            table = [0] * self._l2_entries
            table[l2i:l2i + len(entries)] = entries
            l2_off = self._bump(1)
            self._meta_add(l2_off, self.cluster_size, "new L2 table")
            os.pwrite(self._fd, struct.pack(f">{self._l2_entries}Q", *table), l2_off)
            self._set_new_refcounts(l2_off, 1)
            self._l2_cache[l2_off] = table
            self._l1[l1i] = l2_off | OFLAG_COPIED
            os.pwrite(self._fd, struct.pack(">Q", self._l1[l1i]), self.l1_offset + l1i * 8)
            return
        l2_off = self._l1[l1i] & OFFSET_MASK
        if not self._l1[l1i] & OFLAG_COPIED:
            raise self._corrupt(f"L2 table at {l2_off:#x} is shared (snapshot?); refusing to "
                                "modify it")
        old = table[l2i:l2i + len(entries)]
        table[l2i:l2i + len(entries)] = entries
        os.pwrite(self._fd, struct.pack(f">{len(entries)}Q", *entries), l2_off + l2i * 8)
        for before, after in zip(old, entries, strict=True):
            self._release(before, after)

    def _release(self, before: int, after: int) -> None:
        """Drop the reference ``before`` held, unless ``after`` keeps the same cluster."""
        cs = self.cluster_size
        if before & OFLAG_COMPRESSED:
            coffset = before & self._coffset_mask
            nb_sectors = ((before >> self._csize_shift) & self._csize_mask) + 1
            first = coffset & ~(cs - 1)
            last = (coffset + nb_sectors * 512 - 1) & ~(cs - 1)
            for c in range(first, last + 1, cs):
                self._add_refcount(c, -1)
            return
        host = before & OFFSET_MASK
        if host and host != after & OFFSET_MASK:
            self._add_refcount(host, -1)

    # -- refcounts --------------------------------------------------------------------------
    def _bump(self, count: int) -> int:
        """Reserve ``count`` clusters past the end of the file (freed clusters are not reused)."""
        off = self._end
        self._end += count << self.cluster_bits
        return off

    def _refblock(self, off: int) -> bytearray:
        block = self._rb_cache.get(off)
        if block is None:
            raw = self._pread(off, self.cluster_size)
            if len(raw) != self.cluster_size:
                raise self._corrupt(f"refcount block at {off:#x} is beyond the end of the file")
            block = bytearray(raw)
            self._rb_cache[off] = block
            if len(self._rb_cache) > REFBLOCK_CACHE:
                self._rb_cache.popitem(last=False)
        else:
            self._rb_cache.move_to_end(off)
        return block

    def _set_new_refcounts(self, host: int, count: int) -> None:
        """Give freshly allocated clusters refcount 1 (creating refcount blocks first)."""
        ci = host >> self.cluster_bits
        end = ci + count
        fmt = ">" + self._rb_fmt
        w = self._rb_width
        while ci < end:
            rb_idx = ci // self._rb_entries
            rb_off = self._ensure_refblock(rb_idx)
            block = self._refblock(rb_off)
            first = ci - rb_idx * self._rb_entries
            n = min(end - ci, self._rb_entries - first)
            for k in range(first, first + n):
                struct.pack_into(fmt, block, k * w, 1)
            os.pwrite(self._fd, block[first * w:(first + n) * w], rb_off + first * w)
            ci += n

    def _add_refcount(self, host: int, delta: int) -> None:
        ci = host >> self.cluster_bits
        rb_idx = ci // self._rb_entries
        if delta < 0 and (rb_idx >= len(self._rt) or not self._rt[rb_idx] & ~REFT_RESERVED):
            log.warning("%s: qcow2: freeing cluster %#x without a refcount block", self.filename,
                        host)
            return
        rb_off = self._ensure_refblock(rb_idx)
        block = self._refblock(rb_off)
        k = ci - rb_idx * self._rb_entries
        fmt = ">" + self._rb_fmt
        value = struct.unpack_from(fmt, block, k * self._rb_width)[0] + delta
        if value < 0 or value > self.refcount_max:
            log.warning("%s: qcow2: refcount of cluster %#x would become %d", self.filename, host,
                        value)
            return
        struct.pack_into(fmt, block, k * self._rb_width, value)
        os.pwrite(self._fd, block[k * self._rb_width:(k + 1) * self._rb_width],
                  rb_off + k * self._rb_width)

    def _ensure_refblock(self, rb_idx: int) -> int:
        """The offset of refcount block ``rb_idx``, allocating it (and the table) if needed."""
        if rb_idx >= len(self._rt):
            self._grow_reftable(rb_idx)
        off: int = self._rt[rb_idx] & ~REFT_RESERVED
        if off:
            return off
        cs = self.cluster_size
        new = self._bump(1)
        self_idx = (new >> self.cluster_bits) // self._rb_entries
        block = bytearray(cs)
        if self_idx == rb_idx:  # the block describes itself
            struct.pack_into(">" + self._rb_fmt, block,
                             ((new >> self.cluster_bits) % self._rb_entries) * self._rb_width, 1)
        os.pwrite(self._fd, bytes(block), new)
        if self_idx != rb_idx:
            self._set_new_refcounts(new, 1)
        self._meta_add(new, cs, "new refcount block")
        self._rb_cache[new] = block
        self._rt[rb_idx] = new
        os.pwrite(self._fd, struct.pack(">Q", new), self.rt_offset + rb_idx * 8)
        return new

    def _grow_reftable(self, rb_idx: int) -> None:
        """Move the refcount table to a bigger one past the end of the file.

        The new table, and new refcount blocks covering it, are written completely before the
        header switches to them; the old table's clusters are freed afterwards.
        """
        cs = self.cluster_size
        cb = self.cluster_bits
        per_cluster = cs // 8
        new_len = _round_up(max(rb_idx + 1, len(self._rt) * 2), per_cluster)
        while True:
            if new_len * 8 > MAX_REFTABLE_BYTES:
                raise Qcow2IOError("qcow2: the image is too large for its refcount table",
                                   errno.ENOSPC)
            start = self._end
            table_clusters = new_len // per_cluster
            alloc_end = start + table_clusters * cs
            new_blocks: dict[int, int] = {}
            changed = True
            while changed:
                changed = False
                for idx in range((start >> cb) // self._rb_entries,
                                 ((alloc_end - 1) >> cb) // self._rb_entries + 1):
                    have = idx < len(self._rt) and self._rt[idx] & ~REFT_RESERVED
                    if not have and idx not in new_blocks:
                        new_blocks[idx] = alloc_end
                        alloc_end += cs
                        changed = True
            if max(new_blocks, default=0) < new_len and rb_idx < new_len:
                break
            new_len *= 2
        table = self._rt + [0] * (new_len - len(self._rt))
        fmt = ">" + self._rb_fmt
        w = self._rb_width
        blocks = {idx: bytearray(cs) for idx in new_blocks}
        touched_old: set[int] = set()
        for c in range(start >> cb, alloc_end >> cb):
            idx = c // self._rb_entries
            k = c % self._rb_entries
            if idx in blocks:
                struct.pack_into(fmt, blocks[idx], k * w, 1)
            else:
                block = self._refblock(self._rt[idx] & ~REFT_RESERVED)
                struct.pack_into(fmt, block, k * w, 1)
                touched_old.add(idx)
        for idx, off in new_blocks.items():
            os.pwrite(self._fd, bytes(blocks[idx]), off)
            table[idx] = off
        for idx in touched_old:
            off = self._rt[idx] & ~REFT_RESERVED
            os.pwrite(self._fd, bytes(self._refblock(off)), off)
        os.pwrite(self._fd, struct.pack(f">{new_len}Q", *table), start)
        os.fdatasync(self._fd)
        os.pwrite(self._fd, struct.pack(">QI", start, table_clusters), 48)
        os.fdatasync(self._fd)
        old_off, old_clusters = self.rt_offset, _round_up(len(self._rt) * 8, cs) >> cb
        self._end = alloc_end
        self._rt = table
        self.rt_offset = start
        for c in range(old_off >> cb, (old_off >> cb) + old_clusters):
            self._meta.discard(c)
        self._meta_add(start, table_clusters * cs, "new refcount table")
        for idx, off in new_blocks.items():
            self._rb_cache[off] = blocks[idx]
            self._meta_add(off, cs, "new refcount block")
        for c in range(old_clusters):
            self._add_refcount(old_off + (c << cb), -1)

    # -- zeroes, discard, flush -------------------------------------------------------------
    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeroes: v3 zero clusters where whole, zeros written elsewhere."""
        self._check_request(offset, length)
        with self._lock:
            self._check_writable()
            self._zero_range(offset, length, discard=False)
            if self.cache in ("writethrough", "directsync"):
                os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        """Advisory: whole clusters become v3 zero clusters; v2 images and partial clusters keep
        their data (allowed: discarded data is unspecified)."""
        self._check_request(offset, length)
        with self._lock:
            self._check_writable()
            if self.version == 3:
                self._zero_range(offset, length, discard=True)

    def _zero_range(self, offset: int, length: int, discard: bool) -> None:
        cs = self.cluster_size
        cb = self.cluster_bits
        end = offset + length
        pos = offset
        while pos < end:
            c_start = pos & ~(cs - 1)
            hi = min(end, c_start + cs)
            whole = pos == c_start and (hi == c_start + cs or hi == self.size)
            if not whole:
                if not discard:
                    self._write_segs(pos, _Segments([memoryview(bytes(hi - pos))]), hi - pos)
                pos = hi
                continue
            # a run of whole clusters within one L2 table
            ci = pos >> cb
            l2_end = ((ci >> self._l2_bits) + 1) << self._l2_bits
            count = 1
            while ci + count < l2_end and ((ci + count + 1) << cb) <= end:
                count += 1
            run_end = min(end, (ci + count) << cb)
            if self.version == 3:
                self._zero_clusters(ci, count)
            else:
                self._write_zeros_v2(ci, count)
            pos = run_end

    def _zero_clusters(self, ci: int, count: int) -> None:
        table = self._l2_table(ci >> self._l2_bits)
        l2i = ci & (self._l2_entries - 1)
        if table is None and self._backing is None:
            return  # unallocated without a backing file already reads as zeroes
        entries = []
        for k in range(count):
            entry = table[l2i + k] if table is not None else 0
            kind, host = self._classify(entry)
            if kind == _DATA and entry & OFLAG_COPIED or kind == _ZERO and host and \
                    entry & OFLAG_COPIED:
                entries.append(host | OFLAG_COPIED | OFLAG_ZERO)  # keep it preallocated
            elif kind == _UNALLOC and self._backing is None:
                entries.append(0)
            else:
                entries.append(OFLAG_ZERO)
        if table is not None and entries == table[l2i:l2i + count]:
            return
        self._set_l2_entries(ci, entries)

    def _write_zeros_v2(self, ci: int, count: int) -> None:
        cb = self.cluster_bits
        for k in range(count):
            table = self._l2_table((ci + k) >> self._l2_bits)
            entry = table[(ci + k) & (self._l2_entries - 1)] if table is not None else 0
            if entry == 0 and self._backing is None:
                continue
            n = min(self.cluster_size, self.size - ((ci + k) << cb))
            self._write_segs((ci + k) << cb, _Segments([memoryview(self._zero_cluster[:n])]), n)

    def flush(self) -> None:
        """Make every completed write durable (fdatasync), except with cache=unsafe."""
        if self.readonly or self.cache == "unsafe":
            return
        with self._lock:
            os.fdatasync(self._fd)


def _copy_into(dest: memoryview, sources: list[memoryview]) -> None:
    pos = 0
    for src in sources:
        dest[pos:pos + len(src)] = src
        pos += len(src)



IOV_MAX = 1024


def _preadv(fd: int, views: list[memoryview], offset: int) -> int:
    """preadv of any number of buffers; stops early only at the end of the file."""
    done = 0
    for i in range(0, len(views), IOV_MAX):
        chunk = views[i:i + IOV_MAX]
        want = sum(len(v) for v in chunk)
        got = os.preadv(fd, chunk, offset + done)
        done += got
        if got < want:
            # a short read: retry the rest once by plain pread, then give up (end of file)
            rest = _Segments(chunk).slices(got, want - got)
            for view in rest:
                data = os.pread(fd, len(view), offset + done)
                view[:len(data)] = data
                done += len(data)
                if len(data) < len(view):
                    return done
    return done


def _pwritev(fd: int, views: list[memoryview], offset: int) -> None:
    """pwritev of any number of buffers, looping over short writes."""
    for i in range(0, len(views), IOV_MAX):
        chunk = views[i:i + IOV_MAX]
        want = sum(len(v) for v in chunk)
        done = os.pwritev(fd, chunk, offset)
        while done < want:
            rest = _Segments(chunk).slices(done, want - done)
            done += os.pwritev(fd, rest, offset + done)
        offset += want


# QEMU's image locking (file-posix.c): OFD read locks on byte 100 + perm bit for permissions
# held and byte 200 + perm bit for permissions not shared with others. vfw writing an image
# holds consistent-read, write and write-unchanged and does not share write or resize, as a
# QEMU guest disk does, so QEMU and vfw refuse to write the same image at the same time.
_LOCK_PERM_BASE = 100
_LOCK_SHARED_BASE = 200
_PERM_NAMES = {0: "consistent read", 1: "write", 2: "write unchanged", 3: "resize"}
_HELD = (0, 1, 2)
_UNSHARED = (1, 3)
_FLOCK = struct.Struct("hhxxxxqqixxxx")  # struct flock on 64-bit Linux


def _ofd_lock(fd: int, cmd: int, kind: int, byte: int) -> int:
    """One OFD lock call on ``byte``; returns the l_type the kernel reports back."""
    arg = fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    return int(_FLOCK.unpack(arg)[0])


def _lock_for_writing(fd: int, path: str) -> None:
    if not hasattr(fcntl, "F_OFD_SETLK"):
        return
    try:
        for bit in _HELD:
            _ofd_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, _LOCK_PERM_BASE + bit)
        for bit in _UNSHARED:
            _ofd_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, _LOCK_SHARED_BASE + bit)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise BackendError(f"Failed to lock '{path}': Is another process using the "
                               "image?") from None
        return  # a file system without OFD locks: go on unlocked, as QEMU does
    for bit in _HELD:
        if _ofd_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK,
                     _LOCK_SHARED_BASE + bit) != fcntl.F_UNLCK:
            raise BackendError(f'Failed to get "{_PERM_NAMES[bit]}" lock on \'{path}\': Is '
                               "another process using the image?")
    for bit in _UNSHARED:
        if _ofd_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK,
                     _LOCK_PERM_BASE + bit) != fcntl.F_UNLCK:
            raise BackendError(f'Failed to get shared "{_PERM_NAMES[bit]}" lock on '
                               f"'{path}': Is another process using the image?")
