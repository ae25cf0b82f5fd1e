"""The type table: QEMU's QOM in idiomatic Python.

Types are Python classes. ``@register_type`` records a class in the table under its ``TYPE``
name; nothing else happens until the type is first used (looked up, listed or instantiated):
then its class is initialised, parents first, exactly once, the way QEMU's type_initialize
does — properties collected, interfaces inherited, each ancestor's ``class_base_init`` run
(nearest first), then the type's own ``class_init``. Instances run ``instance_init`` root to
leaf, ``instance_post_init`` root to leaf, and ``instance_finalize`` leaf to root.

A type name the table does not hold yet is handed to the module loader (``vfw.modules``), which
imports only the plugin distribution whose entry points declare it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple, TypeVar

from .errors import PropertyError, TypeLookupError, TypeRegistrationError
from .props import STR, ChildType, LinkType, Property, PropertyType

TYPE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

T = TypeVar("T", bound="Object")


class Provider(NamedTuple):
    """Where a type came from: its distribution (if known) and module."""

    distribution: str | None
    version: str | None
    module: str

    def __str__(self) -> str:
        if self.distribution is None:
            return f"module {self.module}"
        return f"{self.distribution} {self.version} (module {self.module})"


class TypeImpl:
    """One entry of the table (QEMU's TypeImpl). A plain class: vfw imports this module on
    every start, and ``dataclasses`` alone costs more than QEMU's whole ``-machine help``."""

    __slots__ = ("name", "parent", "cls", "abstract", "interfaces", "provider", "initialized",
                 "info")

    def __init__(self, name: str, parent: str | None, cls: type[Object] | None, abstract: bool,
                 interfaces: tuple[str, ...], provider: Provider, initialized: bool = False,
                 info: TypeInfo | None = None):
        self.name, self.parent, self.cls, self.abstract = name, parent, cls, abstract
        self.interfaces, self.provider, self.initialized, self.info = (
            interfaces, provider, initialized, info)


class TypeInfo:
    """Registration by name, QEMU style, for a type whose parent lives in another plugin.

    The class is built when the type is first initialised, so the parent may be provided by a
    distribution that is imported only then. Hooks receive the class (class hooks) or the
    object (instance hooks).
    """

    def __init__(self, name: str, parent: str, abstract: bool = False,
                 interfaces: tuple[str, ...] = (),
                 class_init: Callable[[Any], None] | None = None,
                 class_base_init: Callable[[Any], None] | None = None,
                 instance_init: Callable[[Any], None] | None = None,
                 instance_post_init: Callable[[Any], None] | None = None,
                 instance_finalize: Callable[[Any], None] | None = None,
                 namespace: dict[str, Any] | None = None):
        self.name, self.parent, self.abstract, self.interfaces = name, parent, abstract, interfaces
        self.class_init, self.class_base_init = class_init, class_base_init
        self.instance_init, self.instance_post_init = instance_init, instance_post_init
        self.instance_finalize = instance_finalize
        self.namespace = dict(namespace or {})


class TypeTable:
    """Maps type names to their registrations; one global instance serves the process."""

    def __init__(self) -> None:
        self._types: dict[str, TypeImpl] = {}
        #: Called with a type name the table does not hold; returns True if it loaded a module
        #: that may have registered it. Set by vfw.modules.
        self.loader: Callable[[str], bool] | None = None
        #: Called before a full listing so every installed plugin gets registered.
        self.load_all: Callable[[], object] | None = None
        #: Maps a module name to its Provider; set by vfw.modules.
        self.provider_for_module: Callable[[str], Provider] = _default_provider
        #: Types a plugin registered without declaring them, with the error to report.
        self.rejected: dict[str, str] = {}
        #: Checks run on each registration; one returning a message refuses the type (the module
        #: loader refuses types a plugin registers without declaring them).
        self.on_register: list[Callable[[TypeImpl], str | None]] = []

    # -- registration ------------------------------------------------------------------------
    def register(self, impl: TypeImpl) -> TypeImpl:
        if not TYPE_NAME_RE.match(impl.name):
            raise TypeRegistrationError(f"Invalid type name '{impl.name}'")
        old = self._types.get(impl.name)
        if old is not None:
            raise TypeRegistrationError(
                f"Registering `{impl.name}' which already exists: provided by {old.provider}"
                f" and by {impl.provider}")
        for check in self.on_register:
            refusal = check(impl)
            if refusal is not None:
                self.rejected[impl.name] = refusal
                return impl
        self._types[impl.name] = impl
        return impl

    def unregister(self, name: str) -> None:
        self._types.pop(name, None)

    # -- lookup ------------------------------------------------------------------------------
    def find(self, name: str) -> TypeImpl | None:
        """The registration for ``name``, loading its plugin if needed; None if nobody has it."""
        impl = self._types.get(name)
        if impl is None:
            if self.loader is None and self is TABLE:
                from .modules import loader

                loader()  # installs itself as this table's loader
            if self.loader is not None and self.loader(name):
                impl = self._types.get(name)
        return impl

    def lookup(self, name: str) -> type[Object]:
        """The initialised class of ``name``; TypeLookupError if unknown."""
        impl = self.find(name)
        if impl is None:
            if name in self.rejected:
                raise TypeLookupError(self.rejected[name])
            raise TypeLookupError(f"invalid object type: {name}")
        return self.initialize(impl)

    def registered_names(self) -> list[str]:
        return list(self._types)

    def all(self) -> list[TypeImpl]:
        """Every registered type after loading every enabled plugin."""
        if self.load_all is None and self is TABLE:
            from .modules import loader

            loader()
        if self.load_all is not None:
            self.load_all()
        return list(self._types.values())

    # -- class initialisation ----------------------------------------------------------------
    def initialize(self, impl: TypeImpl) -> type[Object]:
        if impl.initialized:
            assert impl.cls is not None
            return impl.cls
        parent_cls: type[Object] | None = None
        if impl.parent is not None:
            parent = self.find(impl.parent)
            if parent is None:
                raise TypeRegistrationError(
                    f"Type '{impl.name}' is missing its parent '{impl.parent}'")
            parent_cls = self.initialize(parent)
        if impl.cls is None:
            assert impl.info is not None and parent_cls is not None
            impl.cls = _class_from_info(impl.info, parent_cls)
            impl.cls._qom_type = impl
        cls = impl.cls
        _collect_class(cls, parent_cls, impl)
        # class_base_init of every ancestor, nearest first, then the type's own class_init.
        for ancestor in cls.__mro__[1:]:
            hook = ancestor.__dict__.get("class_base_init")
            if hook is not None and "_qom_type" in ancestor.__dict__:
                hook.__func__(cls)
        own = cls.__dict__.get("class_init")
        if own is not None:
            own.__func__(cls)
        impl.initialized = True
        return cls

    # -- queries -----------------------------------------------------------------------------
    def get_list(self, implements: str | None = None, include_abstract: bool = False
                 ) -> list[type[Object]]:
        """QEMU's object_class_get_list: every class implementing ``implements``."""
        result = []
        for impl in self.all():
            cls = self.initialize(impl)
            if impl.abstract and not include_abstract:
                continue
            if implements is None or cls.class_implements(implements):
                result.append(cls)
        return result

    def get_list_sorted(self, implements: str | None = None, include_abstract: bool = False
                        ) -> list[type[Object]]:
        return sorted(self.get_list(implements, include_abstract), key=lambda c: c.TYPE)


def _default_provider(module: str) -> Provider:
    """Before the module loader is installed: the core names itself, others ask the loader."""
    if module == "vfw" or module.startswith("vfw."):
        from . import __version__

        return Provider("vfw-core", __version__, module)
    from .modules import loader

    return loader().provider_for_module(module)


def _class_from_info(info: TypeInfo, parent_cls: type[Object]) -> type[Object]:
    ns: dict[str, Any] = dict(info.namespace)
    ns["TYPE"] = info.name
    ns["ABSTRACT"] = info.abstract
    ns["INTERFACES"] = info.interfaces
    for hook in ("class_init", "class_base_init"):
        fn = getattr(info, hook)
        if fn is not None:
            ns[hook] = classmethod(fn)
    for hook in ("instance_init", "instance_post_init", "instance_finalize"):
        fn = getattr(info, hook)
        if fn is not None:
            ns[hook] = fn
    pyname = "".join(part.capitalize() for part in re.split(r"[-_.]", info.name)) or "Type"
    return type(pyname, (parent_cls,), ns)


def _collect_class(cls: type[Object], parent_cls: type[Object] | None, impl: TypeImpl) -> None:
    """Give ``cls`` its own copy of the parent's class state plus what its body declares."""
    props: dict[str, Property] = dict(parent_cls._class_props) if parent_cls else {}
    for value in cls.__dict__.values():
        if isinstance(value, Property):
            props[value.name] = value  # a subclass may redeclare a property to change its default
    cls._class_props = props
    interfaces = set(parent_cls._interfaces) if parent_cls else set()
    table = cls._table
    for iface in impl.interfaces:
        iface_impl = table.find(iface)
        if iface_impl is None:
            raise TypeRegistrationError(f"Type '{impl.name}' is missing its interface '{iface}'")
        iface_cls = table.initialize(iface_impl)
        interfaces |= set(iface_cls.ancestors())
    cls._interfaces = frozenset(interfaces)


#: The process-wide table.
TABLE = TypeTable()


def register_type(cls: type[T]) -> type[T]:
    """Class decorator: record ``cls`` in the type table under ``cls.TYPE`` (QEMU's type_init).

    The parent is the nearest registered base class. Registration does not initialise the class.
    """
    table = cls._table
    name = cls.__dict__.get("TYPE")
    if not isinstance(name, str):
        raise TypeRegistrationError(f"class {cls.__qualname__} has no TYPE name of its own")
    parent = None
    for base in cls.__mro__[1:]:
        base_impl: TypeImpl | None = base.__dict__.get("_qom_type")
        if base_impl is not None and table._types.get(base_impl.name) is base_impl:
            parent = base_impl.name
            break
    if parent is None and name != "object":
        raise TypeRegistrationError(f"Type '{name}' does not derive from a registered type")
    impl = TypeImpl(name=name, parent=parent, cls=cls,
                    abstract=bool(cls.__dict__.get("ABSTRACT", False)),
                    interfaces=tuple(cls.__dict__.get("INTERFACES", ())),
                    provider=table.provider_for_module(cls.__module__))
    table.register(impl)
    cls._qom_type = impl
    return cls


def type_register(info: TypeInfo, table: TypeTable | None = None) -> TypeImpl:
    """Register a type by name with a parent name (QEMU's type_register_static)."""
    table = table or TABLE
    module = sys._getframe(1).f_globals.get("__name__", "?")
    return table.register(TypeImpl(name=info.name, parent=info.parent, cls=None,
                                   abstract=info.abstract, interfaces=info.interfaces,
                                   provider=table.provider_for_module(module), info=info))


class Object:
    """The root type (QEMU's TYPE_OBJECT).

    Subclasses set ``TYPE`` (and optionally ``ABSTRACT``, ``INTERFACES``), declare properties
    with ``vfw.props.prop``, and override the hooks below; they do not override ``__init__``.
    """

    TYPE: ClassVar[str] = "object"
    ABSTRACT: ClassVar[bool] = True
    INTERFACES: ClassVar[tuple[str, ...]] = ()

    _table: ClassVar[TypeTable] = TABLE
    _qom_type: ClassVar[TypeImpl]
    _class_props: ClassVar[dict[str, Property]] = {}
    _interfaces: ClassVar[frozenset[str]] = frozenset()

    # -- hooks (each runs only where a class defines it itself) ---------------------------------
    @classmethod
    def class_base_init(cls) -> None:
        """Runs for every subclass of the class that defines it, before their class_init."""

    @classmethod
    def class_init(cls) -> None:
        """Runs once, when the type is first used."""

    def instance_init(self) -> None:
        """Runs for each new object, root type first."""

    def instance_post_init(self) -> None:
        """Runs after every instance_init, root type first."""

    def instance_finalize(self) -> None:
        """Runs when the object is finalised, leaf type first."""

    # -- construction ------------------------------------------------------------------------
    def __init__(self, **props: Any):
        cls = type(self)
        impl = cls.__dict__.get("_qom_type")
        if impl is None:
            raise TypeLookupError(f"class {cls.__qualname__} is not a registered type")
        cls._table.initialize(impl)
        if impl.abstract:
            raise TypeLookupError(f"object type '{impl.name}' is abstract")
        self._parent: Object | None = None
        self._name: str | None = None
        self._obj_props: dict[str, Property] = {}
        self._children: dict[str, Object] = {}
        self._finalized = False
        chain = [k for k in reversed(cls.__mro__) if "_qom_type" in k.__dict__]
        for klass in chain:
            hook = klass.__dict__.get("instance_init")
            if hook is not None:
                hook(self)
        for klass in chain:
            hook = klass.__dict__.get("instance_post_init")
            if hook is not None:
                hook(self)
        for name, value in props.items():
            self.set_property(name.replace("_", "-"), value)

    def finalize(self) -> None:
        """Finalise this object and its children (QEMU's last unref)."""
        if self._finalized:
            return
        self._finalized = True
        for child in list(self._children.values()):
            child.unparent()
        for klass in type(self).__mro__:
            if "_qom_type" in klass.__dict__:
                hook = klass.__dict__.get("instance_finalize")
                if hook is not None:
                    hook(self)

    # -- type queries -----------------------------------------------------------------------
    @classmethod
    def ancestors(cls) -> list[str]:
        """This type's name and its parents' names, leaf first."""
        return [k.__dict__["_qom_type"].name for k in cls.__mro__ if "_qom_type" in k.__dict__]

    @classmethod
    def class_implements(cls, name: str) -> bool:
        return name in cls.ancestors() or name in cls._interfaces

    def implements(self, name: str) -> bool:
        return type(self).class_implements(name)

    @property
    def type_name(self) -> str:
        return type(self).TYPE

    @classmethod
    def is_abstract(cls) -> bool:
        return cls._qom_type.abstract

    @classmethod
    def provider(cls) -> Provider:
        return cls._qom_type.provider

    @classmethod
    def parent_type(cls) -> str | None:
        return cls._qom_type.parent

    @classmethod
    def class_properties(cls) -> dict[str, Property]:
        cls._table.initialize(cls._qom_type)
        return cls._class_props

    # -- properties ---------------------------------------------------------------------------
    def find_property(self, name: str) -> Property | None:
        return self._obj_props.get(name) or type(self)._class_props.get(name)

    def _property(self, name: str) -> Property:
        p = self.find_property(name)
        if p is None:
            raise PropertyError(f"Property '{self.type_name}.{name}' not found")
        return p

    def add_property(self, name: str, kind: PropertyType, value: Any = None,
                     description: str = "", **kw: Any) -> Property:
        """Add an object-level property (QEMU's object_property_add)."""
        if name in self._obj_props or name in type(self)._class_props or name == "type":
            raise PropertyError(
                f"attempt to add duplicate property '{name}' to object (type '{self.type_name}')")
        p = Property(kind, None, description, name=name, **kw)
        p.attr = "obj_" + name
        self._obj_props[name] = p
        if value is not None:
            p.set(self, value)
        return p

    def properties(self) -> list[tuple[str, str]]:
        """(name, type) of every property, as qom-list reports them."""
        out = [("type", "string")]
        for name, p in type(self)._class_props.items():
            out.append((name, p.type_name))
        for name, p in self._obj_props.items():
            out.append((name, p.type_name))
        return out

    def get_property(self, name: str) -> Any:
        if name == "type":
            return self.type_name
        return self._property(name).get(self)

    def get_property_json(self, name: str) -> Any:
        """The value as QMP's qom-get returns it."""
        if name == "type":
            return self.type_name
        p = self._property(name)
        return p.kind.to_json(p.get(self))

    def set_property(self, name: str, value: Any) -> None:
        """Set a property from a typed value or from the text a user wrote."""
        if name == "type":
            raise PropertyError(f"Property '{self.type_name}.type' is not writable")
        p = self._property(name)
        if p.readonly or isinstance(p.kind, ChildType):
            raise PropertyError(f"Property '{self.type_name}.{name}' is not writable")
        self.check_property_writable(p)
        if isinstance(value, str) and not isinstance(p.kind, type(STR)):
            value = p.parse(self, value)
        p.set(self, value)

    def check_property_writable(self, p: Property) -> None:
        """Devices refuse static property writes once realized."""

    # -- composition tree ---------------------------------------------------------------------
    def add_child(self, name: str, child: Object) -> Object:
        """Make ``child`` this object's child ``name`` (QEMU's object_property_add_child)."""
        if child._parent is not None:
            raise PropertyError(f"object '{child.type_name}' already has a parent")
        self.add_property(name, ChildType(child.type_name), None)
        self._obj_props[name].getter = lambda obj, c=child: c
        self._children[name] = child
        child._parent, child._name = self, name
        return child

    def add_link(self, name: str, target_type: str, value: Object | None = None,
                 description: str = "") -> Property:
        return self.add_property(name, LinkType(target_type), value, description)

    def unparent(self) -> None:
        """Detach from the tree and finalise (QEMU's object_unparent)."""
        parent = self._parent
        if parent is not None and self._name is not None:
            parent._children.pop(self._name, None)
            parent._obj_props.pop(self._name, None)
        self._parent, self._name = None, None
        self.finalize()

    @property
    def parent(self) -> Object | None:
        return self._parent

    @property
    def children(self) -> dict[str, Object]:
        return dict(self._children)

    @property
    def path(self) -> str:
        parts = []
        obj: Object | None = self
        while obj is not None and obj._parent is not None:
            parts.append(obj._name or "")
            obj = obj._parent
        if obj is not get_root():
            return ""
        return "/" + "/".join(reversed(parts))

    def walk(self) -> Iterator[Object]:
        yield self
        for child in list(self._children.values()):
            yield from child.walk()

    def new_child_name(self, prefix: str) -> str:
        """``prefix[N]`` with the first free N (QEMU names anonymous children this way)."""
        n = 0
        while f"{prefix}[{n}]" in self._children:
            n += 1
        return f"{prefix}[{n}]"

    def cast(self, cls_or_name: type[T] | str) -> T:
        """QEMU's OBJECT_CHECK: this object as a ``name``, or a TypeLookupError."""
        name = cls_or_name if isinstance(cls_or_name, str) else cls_or_name.TYPE
        if not self.implements(name):
            raise TypeLookupError(
                f"Object {self.path or hex(id(self))} is not an instance of type {name}")
        return self  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.path or hex(id(self))}>"


register_type(Object)


@register_type
class Interface(Object):
    """Base of interface types (QEMU's TYPE_INTERFACE); a type lists them in INTERFACES."""

    TYPE = "interface"
    ABSTRACT = True


@register_type
class Container(Object):
    """A plain node of the composition tree (QEMU's TYPE_CONTAINER)."""

    TYPE = "container"


def object_new(name: str, **props: Any) -> Object:
    """Create an object of the named type (QEMU's object_new_with_props)."""
    return TABLE.lookup(name)(**props)


def object_dynamic_cast(obj: Object, name: str) -> Object | None:
    return obj if obj.implements(name) else None


def object_class_get_list(implements: str | None = None, include_abstract: bool = False
                          ) -> list[type[Object]]:
    return TABLE.get_list(implements, include_abstract)


_root: Object | None = None


def get_root() -> Object:
    """The root of the composition tree: ``/`` with ``/objects`` (and ``/machine`` once made)."""
    global _root
    if _root is None:
        _root = Container()
        _root.add_child("objects", Container())
    return _root


def reset_root() -> None:
    """Drop the whole tree (tests and system reset of the process state)."""
    global _root
    if _root is not None:
        _root.finalize()
    _root = None


def container_get(path: str) -> Object:
    """The container at ``path``, creating missing containers (QEMU's container_get)."""
    obj = get_root()
    for part in [p for p in path.split("/") if p]:
        child = obj._children.get(part)
        if child is None:
            child = obj.add_child(part, Container())
        obj = child
    return obj


def resolve_path(path: str, root: Object | None = None) -> Object | None:
    """Resolve an absolute path, or a partial path that matches exactly one object."""
    root = root or get_root()
    parts = [p for p in path.split("/") if p]
    if not parts:
        return root if path.startswith("/") else None
    if path.startswith("/"):
        obj: Object | None = root
        for part in parts:
            if obj is None:
                return None
            nxt = obj._children.get(part)
            if nxt is None:
                p = obj.find_property(part)
                if p is not None and isinstance(p.kind, LinkType):
                    nxt = p.get(obj)
            obj = nxt
        return obj
    matches = []
    for obj in root.walk():
        node: Object | None = obj
        for part in reversed(parts):
            if node is None or node._name != part:
                node = None
                break
            node = node._parent
        if node is not None:
            matches.append(obj)
            if len(matches) > 1:
                return None
    return matches[0] if matches else None
