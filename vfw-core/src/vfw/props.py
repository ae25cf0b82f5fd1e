"""Typed properties: QEMU's qdev/QOM properties as Python descriptors.

A property has a kind (bool, uint32, size, str, enum, link<T>, ...) that knows how to parse the
string a user typed, check a Python value, and show a value back. Properties declared in a class
body are collected into the type's class properties when the type is first initialised; objects
can also carry properties of their own (children and links of the composition tree).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import OptionError, PropertyError

if TYPE_CHECKING:
    from .qom import Object


def _value_error(prop: str, message: str) -> PropertyError:
    return PropertyError(f"Parameter '{prop}' {message}")


def _options() -> Any:
    """vfw.options, imported on first parse (it is not needed to list types)."""
    from . import options

    return options


def _parsed(parse: Callable[[str, str], Any], prop: str, text: str) -> Any:
    """Parse with vfw.options (QEMU's value syntax), reporting as a property error."""
    try:
        return parse(prop, text)
    except OptionError as exc:
        raise PropertyError(exc.message) from None


class PropertyType:
    """A property kind: parses user text, checks Python values, formats values for display."""

    name: ClassVar[str] = "any"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> Any:
        return text

    def check(self, value: Any, prop: str, owner: Object | None = None) -> Any:
        return value

    def format(self, value: Any) -> str:
        return "" if value is None else str(value)

    def to_json(self, value: Any) -> Any:
        return value

    @property
    def type_name(self) -> str:
        return self.name


class BoolType(PropertyType):
    name = "bool"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> bool:
        return bool(_parsed(_options().parse_bool, prop, text))

    def check(self, value: Any, prop: str, owner: Object | None = None) -> bool:
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        if not isinstance(value, bool):
            raise _value_error(prop, "expects 'on' or 'off'")
        return value

    def format(self, value: Any) -> str:
        return "on" if value else "off"


class IntType(PropertyType):
    """Fixed-width integers; QEMU's uint8..uint64 and int8..int64."""

    def __init__(self, bits: int, signed: bool):
        self.bits, self.signed = bits, signed
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1

    @property
    def type_name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> int:
        text = text.strip()
        negative = self.signed and text.startswith("-")
        value = int(_parsed(_options().parse_number, prop, text[1:] if negative else text))
        return self.check(-value if negative else value, prop, owner)

    def check(self, value: Any, prop: str, owner: Object | None = None) -> int:
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _value_error(prop, "expects a number")
        if not self.lo <= value <= self.hi:
            raise PropertyError(
                f"Parameter '{prop}' expects an integer between {self.lo} and {self.hi},"
                f" got {value}")
        return value


class SizeType(PropertyType):
    """A byte count with QEMU's k/M/G/T/P/E suffixes (binary) and fractions."""

    name = "size"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> int:
        return int(_parsed(_options().parse_size, prop, text))

    def check(self, value: Any, prop: str, owner: Object | None = None) -> int:
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise _value_error(prop, "expects a non-negative number below 2^64")
        return value


class StrType(PropertyType):
    name = "str"

    def check(self, value: Any, prop: str, owner: Object | None = None) -> str:
        if not isinstance(value, str):
            raise _value_error(prop, "expects a string")
        return value


class EnumType(PropertyType):
    """One of a fixed set of strings (QEMU's QAPI enums, e.g. OnOffAuto)."""

    def __init__(self, name: str, values: tuple[str, ...]):
        self._name, self.values = name, values

    @property
    def type_name(self) -> str:
        return self._name

    def check(self, value: Any, prop: str, owner: Object | None = None) -> str:
        if value not in self.values:
            raise PropertyError(
                f"Parameter '{prop}' does not accept value '{value}'"
                f" (expected one of: {', '.join(self.values)})")
        return str(value)

    parse = check  # type: ignore[assignment]


class LinkType(PropertyType):
    """A reference to another object of a given type, set by path (``link<T>``)."""

    def __init__(self, target_type: str):
        self.target_type = target_type

    @property
    def type_name(self) -> str:
        return f"link<{self.target_type}>"

    def parse(self, text: str, prop: str, owner: Object | None = None) -> Object | None:
        if text == "":
            return None
        from .qom import resolve_path

        target = resolve_path(text)
        if target is None:
            raise PropertyError(f"Device '{text}' not found")
        return self.check(target, prop, owner)

    def check(self, value: Any, prop: str, owner: Object | None = None) -> Object | None:
        from .qom import Object

        if value is None:
            return None
        if isinstance(value, str):
            return self.parse(value, prop, owner)
        if not isinstance(value, Object) or not value.implements(self.target_type):
            raise PropertyError(
                f"Invalid link: property '{prop}' expects an object of type '{self.target_type}'")
        return value

    def format(self, value: Any) -> str:
        return "" if value is None else value.path

    def to_json(self, value: Any) -> Any:
        return self.format(value)


class ChildType(PropertyType):
    """The composition edge to a child object (``child<T>``); read-only, reads as its path."""

    def __init__(self, target_type: str):
        self.target_type = target_type

    @property
    def type_name(self) -> str:
        return f"child<{self.target_type}>"

    def format(self, value: Any) -> str:
        return str(value.path)

    def to_json(self, value: Any) -> Any:
        return self.format(value)


class MacAddrType(PropertyType):
    name = "str"
    _RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

    def check(self, value: Any, prop: str, owner: Object | None = None) -> bytes:
        if isinstance(value, bytes) and len(value) == 6:
            return value
        if isinstance(value, str) and self._RE.match(value):
            return bytes(int(b, 16) for b in value.split(":"))
        raise PropertyError(f"Property '{_owner_type(owner)}.{prop}' doesn't take value '{value}'")

    parse = check  # type: ignore[assignment]

    def format(self, value: Any) -> str:
        return "" if value is None else ":".join(f"{b:02x}" for b in value)

    to_json = format

    @property
    def type_name(self) -> str:
        return "macaddr"


def _owner_type(owner: Object | None) -> str:
    return owner.type_name if owner is not None else "?"


BOOL = BoolType()
SIZE = SIZE_T = SizeType()
STR = StrType()
UINT8, UINT16, UINT32, UINT64 = (IntType(b, False) for b in (8, 16, 32, 64))
INT8, INT16, INT32, INT64 = (IntType(b, True) for b in (8, 16, 32, 64))
MACADDR = MacAddrType()
ON_OFF_AUTO = EnumType("OnOffAuto", ("on", "off", "auto"))

_MISSING: Any = object()


class Property:
    """A declared property. In a class body it is a descriptor; values live on the instance.

    ``setter``/``getter`` make a computed property (QEMU's object_property_add with accessors);
    ``readonly`` refuses writes from users; ``static`` properties (qdev's) refuse writes once
    the device is realized.
    """

    def __init__(self, kind: PropertyType, default: Any = None, description: str = "", *,
                 name: str = "", readonly: bool = False, static: bool = True,
                 getter: Callable[[Any], Any] | None = None,
                 setter: Callable[[Any, Any], None] | None = None):
        self.kind = kind
        self.default = default
        self.description = description
        self.name = name
        self.readonly = readonly
        self.static = static
        self.getter = getter
        self.setter = setter

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name.replace("_", "-")
        self.attr = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return self.get(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        self.set(obj, value)

    # Access used both by the descriptor and for object-level properties.
    def get(self, obj: Object) -> Any:
        if self.getter is not None:
            return self.getter(obj)
        value = obj.__dict__.get(self._slot, _MISSING)
        return self.default if value is _MISSING else value

    def set(self, obj: Object, value: Any) -> None:
        value = self.kind.check(value, self.name, obj)
        if self.setter is not None:
            self.setter(obj, value)
        else:
            obj.__dict__[self._slot] = value

    def parse(self, obj: Object, text: str) -> Any:
        return self.kind.parse(text, self.name, obj)

    @property
    def _slot(self) -> str:
        return "_prop_" + getattr(self, "attr", self.name)

    @property
    def type_name(self) -> str:
        return self.kind.type_name

    def describe(self) -> str:
        """One line as ``-device X,help`` prints it: ``name=<type> - desc (default: v)``."""
        text = f"{self.name}=<{self.type_name}>"
        if self.description:
            text += f" - {self.description}"
        if self.default is not None and not isinstance(self.kind, (LinkType, ChildType)):
            text += f" (default: {self.kind.format(self.default)})"
        return text


def prop(kind: PropertyType, default: Any = None, description: str = "", **kw: Any) -> Any:
    """Declare a class property: ``num_queues = prop(UINT16, 1, "number of virtqueues")``.

    Typed as Any so that ``self.num_queues`` reads as the value's type to a checker.
    """
    return Property(kind, default, description, **kw)
