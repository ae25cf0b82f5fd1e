"""A small encoder for ACPI Machine Language (AML), the byte code of the DSDT.

Only what a static PC description needs: names, scopes, devices, methods returning constants,
packages, buffers and resource templates (ACPI 6.x, chapters 6.4 "Resource Data Types" and 20
"ACPI Machine Language Specification"). Every function returns the encoded ``bytes`` of one
term, so a table is built by nesting calls::

    scope("\\_SB", device("PCI0", name("_HID", eisaid("PNP0A03")), name("_UID", 0)))

Values given as ``int`` or ``str`` are encoded as AML integers and strings; ``bytes`` are
taken as already-encoded terms.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

__all__ = [
    "AmlValue",
    "buffer",
    "device",
    "dword_memory",
    "eisaid",
    "end_tag",
    "integer",
    "io",
    "irq_no_flags",
    "method",
    "name",
    "name_seg",
    "name_string",
    "package",
    "pkg_length",
    "qword_memory",
    "resource_template",
    "return_",
    "scope",
    "string",
    "word_bus_number",
    "word_io",
]

AmlValue: TypeAlias = "int | str | bytes"

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP, RETURN_OP = 0x08, 0x10, 0x11, 0x12, 0x14, 0xA4
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_PREFIX, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x5E, 0x2E, 0x2F

_LEAD = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _LEAD | set(b"0123456789")


def pkg_length(body_len: int) -> bytes:
    """The PkgLength encoding for a body of ``body_len`` bytes (the count includes itself)."""
    if body_len + 1 <= 0x3F:
        return bytes([body_len + 1])
    for n in (2, 3, 4):
        total = body_len + n
        if total < 1 << (4 + 8 * (n - 1)):
            out = [((n - 1) << 6) | (total & 0xF)]
            total >>= 4
            for _ in range(n - 1):
                out.append(total & 0xFF)
                total >>= 8
            return bytes(out)
    raise ValueError(f"AML package too large ({body_len} bytes)")


def _with_length(op: bytes, body: bytes) -> bytes:
    return op + pkg_length(len(body)) + body


def name_seg(seg: str) -> bytes:
    """One 4-character name segment, padded with '_' (``PCI`` → ``PCI_``)."""
    raw = seg.upper().encode("ascii")
    if not 1 <= len(raw) <= 4 or raw[0] not in _LEAD or any(c not in _NAME for c in raw):
        raise ValueError(f"invalid AML name segment {seg!r}")
    return raw.ljust(4, b"_")


def name_string(path: str) -> bytes:
    r"""A NameString: optional root (``\``) or parent (``^``) prefixes, then dotted segments."""
    prefix = b""
    rest = path
    if rest.startswith("\\"):
        prefix, rest = b"\\", rest[1:]
    else:
        while rest.startswith("^"):
            prefix += b"^"
            rest = rest[1:]
    segs = [name_seg(s) for s in rest.split(".")] if rest else []
    if not segs:
        return prefix + b"\x00"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + segs[0] + segs[1]
    if len(segs) > 255:
        raise ValueError(f"AML name path too long: {path!r}")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest integer encoding (Zero/One/Ones or a byte/word/dword/qword constant)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"AML integer out of range: {value}")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A null-terminated ASCII string constant."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def eisaid(pnp_id: str) -> bytes:
    """A compressed EISA id (``PNP0A03``) as AML's EisaId() macro encodes it: a dword."""
    if (len(pnp_id) != 7 or not pnp_id[:3].isalpha() or not pnp_id[:3].isupper()
            or any(c not in "0123456789ABCDEF" for c in pnp_id[3:])):
        raise ValueError(f"invalid EISA id {pnp_id!r}")
    value = ((ord(pnp_id[0]) - 0x40) << 26 | (ord(pnp_id[1]) - 0x40) << 21
             | (ord(pnp_id[2]) - 0x40) << 16 | int(pnp_id[3:], 16))
    swapped = int.from_bytes(value.to_bytes(4, "big"), "little")
    return bytes([DWORD_PREFIX]) + struct.pack("<I", swapped)


def _data(value: AmlValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        raise TypeError("AML values must be int, str or encoded bytes, not bool")
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, str):
        return string(value)
    raise TypeError(f"cannot encode {value!r} as AML")


def buffer(data: bytes) -> bytes:
    """A Buffer object holding ``data``."""
    return _with_length(bytes([BUFFER_OP]), integer(len(data)) + data)


def package(*elements: AmlValue) -> bytes:
    """A Package of up to 255 elements (ints, strings or encoded terms)."""
    if len(elements) > 255:
        raise ValueError("AML Package has more than 255 elements")
    body = bytes([len(elements)]) + b"".join(_data(e) for e in elements)
    return _with_length(bytes([PACKAGE_OP]), body)


def name(path: str, value: AmlValue) -> bytes:
    """``Name(path, value)``: a named data object."""
    return bytes([NAME_OP]) + name_string(path) + _data(value)


def scope(path: str, *terms: bytes) -> bytes:
    """``Scope(path) { terms }``."""
    return _with_length(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    """``Device(path) { terms }``."""
    return _with_length(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path) + b"".join(terms))


def method(path: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    """``Method(path, nargs, Serialized?) { terms }``."""
    if not 0 <= nargs <= 7:
        raise ValueError("AML methods take 0 to 7 arguments")
    flags = nargs | (0x08 if serialized else 0)
    return _with_length(bytes([METHOD_OP]), name_string(path) + bytes([flags]) + b"".join(terms))


def return_(value: AmlValue) -> bytes:
    """``Return(value)``."""
    return bytes([RETURN_OP]) + _data(value)


# --- resource descriptors (ACPI 6.4 section 6.4) ------------------------------------------

def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() { descriptors }``: a Buffer closed by an End Tag."""
    return buffer(b"".join(descriptors) + end_tag())


def end_tag() -> bytes:
    """The End Tag small descriptor (checksum 0: "treat as correct")."""
    return bytes([0x79, 0x00])


def io(minimum: int, maximum: int, alignment: int, length: int, decode16: bool = True) -> bytes:
    """``IO(Decode16, min, max, align, len)``: a fixed-or-relocatable I/O port range."""
    return struct.pack("<BBHHBB", 0x47, 1 if decode16 else 0, minimum, maximum, alignment,
                       length)


def irq_no_flags(*irqs: int) -> bytes:
    """``IRQNoFlags() {irqs}``: edge-triggered, active-high ISA interrupts."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq <= 15:
            raise ValueError(f"ISA IRQ out of range: {irq}")
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)


# Address space descriptor fields.
_RT_MEMORY, _RT_IO, _RT_BUS = 0, 1, 2
_GF_CONSUMER, _GF_SUBTRACTIVE, _GF_MIN_FIXED, _GF_MAX_FIXED = 1, 2, 4, 8
_IO_ENTIRE_RANGE = 3
_MEM_RW, _MEM_CACHEABLE_SHIFT = 1, 1
MEM_NON_CACHEABLE, MEM_CACHEABLE, MEM_WRITE_COMBINING, MEM_PREFETCHABLE = 0, 1, 2, 3


def _general_flags(producer: bool) -> int:
    return (0 if producer else _GF_CONSUMER) | _GF_MIN_FIXED | _GF_MAX_FIXED


def _check_range(minimum: int, maximum: int, limit: int) -> int:
    if not 0 <= minimum <= maximum < limit:
        raise ValueError(f"bad resource range 0x{minimum:x}-0x{maximum:x}")
    return maximum - minimum + 1


def word_bus_number(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """``WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len)``."""
    length = _check_range(minimum, maximum, 1 << 16)
    return struct.pack("<BHBBBHHHHH", 0x88, 13, _RT_BUS, _general_flags(producer), 0,
                       0, minimum, maximum, 0, length)


def word_io(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """``WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)``."""
    length = _check_range(minimum, maximum, 1 << 16)
    return struct.pack("<BHBBBHHHHH", 0x88, 13, _RT_IO, _general_flags(producer),
                       _IO_ENTIRE_RANGE, 0, minimum, maximum, 0, length)


def dword_memory(minimum: int, maximum: int, cacheable: int = MEM_NON_CACHEABLE,
                 producer: bool = True) -> bytes:
    """``DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, <cache>, ReadWrite, ...)``."""
    length = _check_range(minimum, maximum, 1 << 32)
    tflags = _MEM_RW | (cacheable << _MEM_CACHEABLE_SHIFT)
    return struct.pack("<BHBBBIIIII", 0x87, 23, _RT_MEMORY, _general_flags(producer), tflags,
                       0, minimum, maximum, 0, length)


def qword_memory(minimum: int, maximum: int, cacheable: int = MEM_NON_CACHEABLE,
                 producer: bool = True) -> bytes:
    """``QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, <cache>, ReadWrite, ...)``."""
    length = _check_range(minimum, maximum, 1 << 64)
    tflags = _MEM_RW | (cacheable << _MEM_CACHEABLE_SHIFT)
    return struct.pack("<BHBBBQQQQQ", 0x8A, 43, _RT_MEMORY, _general_flags(producer), tflags,
                       0, minimum, maximum, 0, length)
