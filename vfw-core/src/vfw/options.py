"""QEMU's option syntax (QemuOpts) and the values parsed from it: sizes, numbers, -smp, -m, -cpu.

Options are written ``key=value,key=value`` with ``,,`` standing for a literal comma. A group may
name an *implied key* so that the first value can be written bare (``-m 512``, ``-device e1000``).
The rules, the parsers and the error texts follow QEMU 7.2 (util/qemu-option.c, util/cutils.c,
hw/core/machine-smp.c, hw/core/machine.c) so that command lines and error messages carry over.

This module is imported on every ``vfw run``: it needs nothing but ``typing``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from vfw.errors import MachineError, OptionError

__all__ = [
    "MEMORY_GROUP",
    "SMP_GROUP",
    "MemoryConfig",
    "OptDesc",
    "Opts",
    "OptsGroup",
    "OptsList",
    "SmpConfig",
    "check_id",
    "escape",
    "format_group_help",
    "parse_bool",
    "parse_cpu_model",
    "parse_memory",
    "parse_number",
    "parse_opts",
    "parse_size",
    "parse_smp",
]

KIND_NAMES = {"str": "str", "bool": "bool (on/off)", "number": "num", "size": "size"}
HELP_WORDS = ("help", "?")
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")
_U64 = 1 << 64
_C_SPACE = " \t\n\v\f\r"
_ID_PUNCT = "-._"


class OptDesc(NamedTuple):
    """One known parameter of a group; ``kind`` decides how its value is checked."""

    name: str
    kind: str  # "str" | "bool" | "number" | "size"
    help: str = ""


class OptsGroup:
    """A family of options (QEMU's QemuOptsList). Compared by identity: each group is a singleton.

    ``desc`` None accepts any key and leaves checking to the consumer (``-device`` checks the
    device's properties); ``merge_lists`` makes repeated options add up to one (``-m``, ``-smp``).
    """

    def __init__(self, name: str, implied_key: str | None = None,
                 desc: tuple[OptDesc, ...] | None = None, merge_lists: bool = False):
        for d in desc or ():
            if d.kind not in KIND_NAMES:
                raise ValueError(f"unknown option kind {d.kind!r} for {d.name!r}")
        self.name = name
        self.implied_key = implied_key
        self.desc = desc
        self.merge_lists = merge_lists

    def __repr__(self) -> str:
        return f"OptsGroup({self.name!r})"

    def find_desc(self, key: str) -> OptDesc | None:
        """The description of ``key``, or None when the group does not list it."""
        for desc in self.desc or ():
            if desc.name == key:
                return desc
        return None


class Opts:
    """One parsed option (QEMU's QemuOpts): its id and its ``key=value`` items in written order.

    Values stay the raw strings the user wrote (after ``,,`` unescaping); the typed getters parse
    them on demand, and a repeated key means the last occurrence wins, as in QEMU.
    """

    def __init__(self, group: OptsGroup, id: str | None = None,
                 items: list[tuple[str, str]] | None = None, help: bool = False,
                 text: str = ""):
        self.group = group
        self.id = id
        self.items: list[tuple[str, str]] = [] if items is None else items
        self.help = help
        #: The argument as the user wrote it, for error messages (QEMU quotes it).
        self.text = text

    def __repr__(self) -> str:
        return f"Opts({self.group.name!r}, id={self.id!r}, items={self.items!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opts) and (self.group, self.id, self.items, self.help) == (
            other.group, other.id, other.items, other.help)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value given for ``key``."""
        for name, value in reversed(self.items):
            if name == key:
                return value
        return default

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        return default if value is None else parse_bool(key, value)

    def get_number(self, key: str, default: int) -> int:
        value = self.get(key)
        return default if value is None else parse_number(key, value)

    def get_size(self, key: str, default: int) -> int:
        value = self.get(key)
        return default if value is None else parse_size(key, value)

    def has(self, key: str) -> bool:
        return any(name == key for name, _ in self.items)

    def as_dict(self) -> dict[str, str]:
        """All items as a dict; for a repeated key the last value wins."""
        return dict(self.items)

    def without(self, *keys: str) -> dict[str, str]:
        """``as_dict()`` minus ``keys``: what is left for a consumer after taking its own keys."""
        return {name: value for name, value in self.items if name not in keys}


def escape(value: str) -> str:
    """Write ``value`` so that QemuOpts reads it back unchanged: commas are doubled."""
    return value.replace(",", ",,")


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """Read a value up to the next single comma; ``,,`` is a literal comma (get_opt_value)."""
    parts: list[str] = []
    while True:
        comma = text.find(",", pos)
        if comma < 0:
            parts.append(text[pos:])
            return "".join(parts), len(text)
        if text.startswith(",,", comma):
            parts.append(text[pos : comma + 1])
            pos = comma + 2
        else:
            parts.append(text[pos:comma])
            return "".join(parts), comma


def _split(text: str, implied_key: str | None) -> list[tuple[str, str, str]]:
    """Split option text into (name, value, form) with form "pair", "flag" or "implied".

    Follows QEMU's get_opt_name_value: a name runs up to '=' or ','; an element without '=' is
    the implied key's value when it comes first, otherwise a flag meaning ``name=on``.
    """
    out: list[tuple[str, str, str]] = []
    pos, end, first = 0, len(text), True
    while pos < end:
        stop = pos
        while stop < end and text[stop] not in "=,":
            stop += 1
        if stop < end and text[stop] == "=":
            name = text[pos:stop]
            value, pos = _read_value(text, stop + 1)
            out.append((name, value, "pair"))
        elif first and implied_key is not None:
            value, pos = _read_value(text, pos)
            out.append((implied_key, value, "implied"))
        else:
            out.append((text[pos:stop], "on", "flag"))
            pos = stop
        if pos < end:
            pos += 1  # the separating comma
        first = False
    return out


def check_id(text: str) -> None:
    """Reject ids QEMU would not accept (id_wellformed): a letter, then letters, digits, - . _"""
    ok = bool(text) and text[0].isascii() and text[0].isalpha()
    ok = ok and all((c.isascii() and c.isalnum()) or c in _ID_PUNCT for c in text[1:])
    if not ok:
        raise OptionError("Parameter 'id' expects an identifier")


def parse_opts(group: OptsGroup, text: str) -> Opts:
    """Parse one option argument of ``group`` (QEMU's qemu_opts_parse with permit_abbrev).

    ``id=`` is taken out into ``Opts.id`` (the first one counts, as in QEMU) and checked before
    anything else. A bare ``help`` or ``?`` sets ``Opts.help`` and is not kept as an item; in a
    group that lists its keys it also ends parsing, as in QEMU. As the implied value
    (``-device help``, ``-machine ?``) it is kept as that key's value, unchecked, and sets
    ``Opts.help`` too. When the group lists its keys, unknown keys are rejected and known ones
    are checked by kind; the raw strings are kept either way.
    """
    elements = _split(text, group.implied_key)
    opts = Opts(group, text=text)
    for name, value, form in elements:
        if name == "id" and form != "implied":
            if group.merge_lists:
                raise OptionError("Invalid parameter 'id'")
            check_id(value)
            opts.id = value
            break
    for name, value, form in elements:
        if form == "flag" and name in HELP_WORDS:
            opts.help = True
            if group.desc is not None:
                break
            continue
        if form == "implied" and value in HELP_WORDS:
            opts.help = True
            opts.items.append((name, value))
            continue
        if name == "id" and form != "implied":
            continue
        if group.desc is not None:
            desc = group.find_desc(name)
            if desc is None:
                raise OptionError(f"Invalid parameter '{name}'")
            _check_kind(desc, value)
        opts.items.append((name, value))
    return opts


def _check_kind(desc: OptDesc, value: str) -> None:
    if desc.kind == "bool":
        parse_bool(desc.name, value)
    elif desc.kind == "number":
        parse_number(desc.name, value)
    elif desc.kind == "size":
        parse_size(desc.name, value)


def parse_bool(name: str, text: str) -> bool:
    """QEMU's boolean spellings (qapi_bool_parse): on/off, yes/no, true/false, y/n."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"Parameter '{name}' expects 'on' or 'off'")


def _is_digit(char: str, base: int) -> bool:
    """Whether ``char`` (one character, or "" past the end) is an ASCII digit of ``base``."""
    return char != "" and char in "0123456789abcdef"[:base] + "ABCDEF"[: max(base - 10, 0)]


def _strtoull(text: str, base: int) -> tuple[int, int, bool]:
    """C's strtoull: (value, end index, overflowed). End 0 means nothing was converted.

    Leading white space and a sign are accepted; base 0 picks 0x hex, 0 octal or decimal, and
    base 16 accepts a 0x prefix. A minus sign negates modulo 2**64, as C does.
    """
    i, end = 0, len(text)
    while i < end and text[i] in _C_SPACE:
        i += 1
    negative = i < end and text[i] == "-"
    if i < end and text[i] in "+-":
        i += 1
    if base in (0, 16) and text[i : i + 2] in ("0x", "0X") and _is_digit(text[i + 2 : i + 3], 16):
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i : i + 1] == "0" else 10
    start = i
    while i < end and _is_digit(text[i], base):
        i += 1
    if i == start:
        return 0, 0, False
    value = int(text[start:i], base)
    if value >= _U64:
        return _U64 - 1, i, True
    return (-value % _U64 if negative else value), i, False


def parse_number(name: str, text: str) -> int:
    """An unsigned 64-bit number as QEMU reads it: decimal, 0x hex or 0 octal.

    Unlike C's strtoull a minus sign is refused rather than wrapped to a huge value.
    """
    value, end, overflow = _strtoull(text, 0)
    if end == 0 or end != len(text) or "-" in text[:end]:
        raise OptionError(f"Parameter '{name}' expects a number")
    if overflow:
        raise OptionError(f"Value '{text}' is too large for parameter '{name}'")
    return value


def _suffix_mul(char: str) -> int:
    """The multiplier of a size suffix, or 0 when ``char`` is not one (case-insensitive)."""
    index = "BKMGTPE".find(char.upper()) if len(char) == 1 else -1
    return 1 << (10 * index) if index >= 0 else 0


def _strtosz(text: str, default_unit: int, allow_hex: bool = True) -> tuple[int, str | None]:
    """QEMU 7.2's do_strtosz: (bytes, None), or (0, "invalid"/"range") on error."""
    error: str | None = None
    val, end, overflow = _strtoull(text, 10)
    fraction = 0  # 64-bit fixed-point fraction, as QEMU keeps it
    if end == 0:
        return 0, "invalid"
    if overflow:
        error = "range"
    elif "-" in text[:end]:
        return 0, "invalid"
    elif val == 0 and text[end : end + 1] in ("x", "X"):
        val, end, overflow = _strtoull(text, 16)
        if not allow_hex:
            return 0, "invalid"
        if overflow:
            error = "range"
        elif text[end : end + 1] == "." or _suffix_mul(text[end : end + 1]):
            return 0, "invalid"
    elif text[end : end + 1] == ".":
        digits_end = end + 1
        while digits_end < len(text) and text[digits_end] in "0123456789":
            digits_end += 1
        if digits_end == end + 1:
            end += 1  # "1.k": a dot without digits is allowed
        else:
            exp = digits_end
            if text[exp : exp + 1] in ("e", "E"):
                exp += 1
                if text[exp : exp + 1] in ("+", "-"):
                    exp += 1
                if _is_digit(text[exp : exp + 1], 10):
                    return 0, "invalid"  # an exponent makes the whole input invalid
            fraction = min(int(float(text[end:digits_end]) * 2.0**64), _U64 - 1)
            end = digits_end
    if error is None:
        mul = _suffix_mul(text[end : end + 1])
        if mul:
            end += 1
        else:
            mul = default_unit
        if mul == 1:
            if fraction:
                return 0, "invalid"  # a fraction needs a scale
        else:
            product = fraction * mul
            val = val * mul + (product >> 64) + ((product >> 63) & 1)  # round 0.5 up
            if val >= _U64:
                error = "range"
    if end != len(text):
        return 0, "invalid"  # trailing junk beats everything else, as in QEMU
    return (0, error) if error else (val, None)


def parse_size(name: str, text: str, default_unit: int = 1) -> int:
    """A byte count as QEMU reads it (qemu_strtosz): ``4096``, ``64k``, ``1.5G``, ``0x1000``.

    Suffixes B K M G T P E are powers of 1024 in either case; a bare number is counted in
    ``default_unit`` (``-m`` uses MiB). A fraction needs a suffix (or unit) other than bytes.
    """
    value, error = _strtosz(text, default_unit)
    if error == "range":
        raise OptionError(f"Value '{text}' is out of range for parameter '{name}'")
    if error:
        raise OptionError(f"Parameter '{name}' expects a non-negative number below 2^64")
    return value


class OptsList:
    """All instances of one group on a command line, in order (QEMU keeps them the same way)."""

    def __init__(self, group: OptsGroup) -> None:
        self.group = group
        self._opts: list[Opts] = []

    def add(self, opts: Opts) -> None:
        """Append ``opts``; ids are unique within a group."""
        if opts.id is not None and self.find(opts.id) is not None:
            raise OptionError(f"Duplicate ID '{opts.id}' for {self.group.name}")
        self._opts.append(opts)

    def __iter__(self) -> Iterator[Opts]:
        return iter(self._opts)

    def __len__(self) -> int:
        return len(self._opts)

    def find(self, id: str) -> Opts | None:
        for opts in self._opts:
            if opts.id == id:
                return opts
        return None

    def merged(self) -> Opts:
        """All instances as one Opts, items in command-line order, so the last value wins.

        This is how merge_lists groups (-m, -smp, -machine) are meant to be read; an empty list
        gives an empty Opts.
        """
        merged = Opts(self.group)
        for opts in self._opts:
            merged.items.extend(opts.items)
            merged.help = merged.help or opts.help
        merged.text = ",".join(opts.text for opts in self._opts if opts.text)
        return merged


def format_group_help(group: OptsGroup) -> str:
    """The text QEMU prints for ``-<option> help`` (qemu_opts_print_help), newline-terminated."""
    lines = []
    for desc in group.desc or ():
        line = f"  {desc.name}=<{KIND_NAMES[desc.kind]}>"
        if desc.help:
            line = f"{line:<24} - {desc.help}"
        lines.append(line)
    if not lines:
        return f"There are no options for {group.name}.\n"
    return "".join(f"{line}\n" for line in [f"{group.name} options:", *sorted(lines)])


# --- -smp ----------------------------------------------------------------------------------

SMP_GROUP = OptsGroup(
    "smp-opts",
    implied_key="cpus",
    desc=(
        OptDesc("cpus", "number", "number of virtual CPUs present at start-up"),
        OptDesc("sockets", "number"),
        OptDesc("dies", "number"),
        OptDesc("clusters", "number"),
        OptDesc("cores", "number"),
        OptDesc("threads", "number"),
        OptDesc("maxcpus", "number", "maximum number of CPUs, including hot-pluggable ones"),
    ),
    merge_lists=True,
)


class SmpConfig(NamedTuple):
    """The CPU topology a machine is built with."""

    cpus: int
    sockets: int
    dies: int
    clusters: int
    cores: int
    threads: int
    max_cpus: int


def parse_smp(
    opts: Opts | None,
    *,
    machine_name: str,
    max_cpus: int,
    min_cpus: int = 1,
    dies_supported: bool = False,
    clusters_supported: bool = False,
    prefer_sockets: bool = False,
) -> SmpConfig:
    """Fill in an -smp topology the way QEMU 7.2 does (machine_parse_smp_config).

    Omitted values are inferred from the given ones: cores before sockets (sockets before cores
    for machines that ``prefer_sockets``, i.e. older than 6.2), threads last; maxcpus defaults to
    cpus and cpus to maxcpus. Explicit zeros are an error (QEMU 7.2 only warns), except cpus=0,
    which still means "not given".
    """
    opts = opts if opts is not None else Opts(SMP_GROUP)
    names = ("sockets", "dies", "clusters", "cores", "threads", "maxcpus")
    if any(opts.has(key) and opts.get_number(key, 0) == 0 for key in names):
        raise MachineError(
            "Invalid CPU topology: CPU topology parameters must be greater than zero"
        )
    cpus = opts.get_number("cpus", 0)
    sockets = opts.get_number("sockets", 0)
    dies = opts.get_number("dies", 0)
    clusters = opts.get_number("clusters", 0)
    cores = opts.get_number("cores", 0)
    threads = opts.get_number("threads", 0)
    maxcpus = opts.get_number("maxcpus", 0)

    if not dies_supported and dies > 1:
        raise MachineError("dies not supported by this machine's CPU topology")
    if not clusters_supported and clusters > 1:
        raise MachineError("clusters not supported by this machine's CPU topology")
    dies = dies or 1
    clusters = clusters or 1

    if cpus == 0 and maxcpus == 0:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        if prefer_sockets:
            if sockets == 0:
                cores, threads = cores or 1, threads or 1
                sockets = maxcpus // (dies * clusters * cores * threads)
            elif cores == 0:
                threads = threads or 1
                cores = maxcpus // (sockets * dies * clusters * threads)
        else:
            if cores == 0:
                sockets, threads = sockets or 1, threads or 1
                cores = maxcpus // (sockets * dies * clusters * threads)
            elif sockets == 0:
                threads = threads or 1
                sockets = maxcpus // (dies * clusters * cores * threads)
        if threads == 0:
            threads = maxcpus // (sockets * dies * clusters * cores)

    total = sockets * dies * clusters * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus

    hierarchy = f"sockets ({sockets})"
    if dies_supported:
        hierarchy += f" * dies ({dies})"
    if clusters_supported:
        hierarchy += f" * clusters ({clusters})"
    hierarchy += f" * cores ({cores}) * threads ({threads})"
    if total != maxcpus:
        raise MachineError(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: "
            f"{hierarchy} != maxcpus ({maxcpus})"
        )
    if maxcpus < cpus:
        raise MachineError(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: "
            f"{hierarchy} == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        )
    if cpus < min_cpus:
        raise MachineError(
            f"Invalid SMP CPUs {cpus}. "
            f"The min CPUs supported by machine '{machine_name}' is {min_cpus}"
        )
    if maxcpus > max_cpus:
        raise MachineError(
            f"Invalid SMP CPUs {maxcpus}. "
            f"The max CPUs supported by machine '{machine_name}' is {max_cpus}"
        )
    return SmpConfig(cpus, sockets, dies, clusters, cores, threads, maxcpus)


# --- -m ------------------------------------------------------------------------------------

MEMORY_GROUP = OptsGroup(
    "memory",
    implied_key="size",
    desc=(
        OptDesc("size", "size", "initial RAM size (a bare number means MiB)"),
        OptDesc("slots", "number", "number of hot-plug memory slots"),
        OptDesc("maxmem", "size", "maximum RAM size, including hot-pluggable memory"),
    ),
    merge_lists=True,
)

RAM_ALIGN = 8192
MiB = 1 << 20


class MemoryConfig(NamedTuple):
    """Guest RAM as configured by -m: initial size, hot-plug slots and the hot-plug ceiling."""

    size: int
    slots: int
    max_size: int


def parse_memory(opts: Opts | None, *, default_size: int) -> MemoryConfig:
    """Read -m as QEMU 7.2 does (vl.c parse_memory_options, then machine_set_mem).

    A size ending in a digit is in MiB (QEMU appends "M", so ``0x100`` is refused there); a size
    of 0 or none means ``default_size``; the size is rounded up to 8 KiB. ``maxmem`` is in bytes
    unless suffixed, exactly like QEMU.
    """
    opts = opts if opts is not None else Opts(MEMORY_GROUP)
    size = 0
    text = opts.get("size")
    if text is not None:
        size = parse_size("size", text)  # what QEMU checks when it parses the option
        if text and text[-1] in "0123456789":
            size, error = _strtosz(text, MiB, allow_hex=False)
            if error == "range":
                raise OptionError(f"Value '{text}' is out of range for parameter 'size'")
            if error:
                raise OptionError("Parameter 'size' expects a non-negative number below 2^64")
    if size == 0:
        size = default_size
    size = -(-size // RAM_ALIGN) * RAM_ALIGN
    if size >= _U64:
        raise MachineError("ram size too large")

    slots = opts.get_number("slots", 0)
    if opts.has("maxmem"):
        max_size = opts.get_size("maxmem", 0)
        if max_size < size:
            raise MachineError(
                f"invalid value of maxmem: maximum memory size (0x{max_size:x}) must be at least "
                f"the initial memory size (0x{size:x})"
            )
        if slots and max_size == size:
            raise MachineError(
                "invalid value of maxmem: memory slots were specified but maximum memory size "
                f"(0x{max_size:x}) is equal to the initial memory size (0x{size:x})"
            )
    elif opts.has("slots"):
        raise MachineError("slots specified but no max-size")
    else:
        max_size = size
    return MemoryConfig(size, slots, max_size)


# --- -cpu ----------------------------------------------------------------------------------


def parse_cpu_model(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``-cpu model,feat,...`` into the model and its features in the order they apply.

    ``key=value`` and bare ``key`` (meaning on) come first in written order, then every
    ``+feat`` (on), then every ``-feat`` (off), so ``-`` wins over ``+`` as in QEMU's x86
    feature parsing. Commas are plain separators here (no ``,,``) and empty pieces are skipped.
    """
    model, _, rest = text.partition(",")
    if not model:
        raise OptionError("-cpu option cannot be empty")
    props: list[tuple[str, str]] = []
    plus: list[tuple[str, str]] = []
    minus: list[tuple[str, str]] = []
    for piece in rest.split(","):
        if not piece:
            continue
        if piece[0] == "+":
            plus.append((piece[1:], "on"))
        elif piece[0] == "-":
            minus.append((piece[1:], "off"))
        else:
            key, eq, value = piece.partition("=")
            props.append((key, value if eq else "on"))
    return model, props + plus + minus
