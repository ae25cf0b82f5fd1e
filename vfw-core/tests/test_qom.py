"""The type table: registration, lazy class init order, instances, casts, properties, tree."""

from __future__ import annotations

import itertools

import pytest

from vfw import props as P
from vfw.errors import PropertyError, TypeLookupError, TypeRegistrationError
from vfw.qom import (
    Object,
    TypeInfo,
    TypeTable,
    container_get,
    get_root,
    object_class_get_list,
    object_new,
    register_type,
    reset_root,
    resolve_path,
    type_register,
)

_n = itertools.count()


def uniq(prefix: str) -> str:
    """Type names are global to the process: each test makes its own."""
    return f"{prefix}-{next(_n)}"


@pytest.fixture(autouse=True)
def fresh_tree():
    reset_root()
    yield
    reset_root()


def make_hierarchy(log: list[str]):
    base_name, mid_name, leaf_name = uniq("base"), uniq("mid"), uniq("leaf")

    @register_type
    class Base(Object):
        TYPE = base_name

        @classmethod
        def class_base_init(cls) -> None:
            log.append(f"base_init({cls.TYPE}) by base")

        @classmethod
        def class_init(cls) -> None:
            log.append(f"class_init({cls.TYPE})")
            cls.greeting = "base"

        def instance_init(self) -> None:
            log.append("ii base")

        def instance_post_init(self) -> None:
            log.append("post base")

        def instance_finalize(self) -> None:
            log.append("fin base")

    @register_type
    class Mid(Base):
        TYPE = mid_name

        @classmethod
        def class_base_init(cls) -> None:
            log.append(f"base_init({cls.TYPE}) by mid")

        def instance_init(self) -> None:
            log.append("ii mid")

        def instance_post_init(self) -> None:
            log.append("post mid")

        def instance_finalize(self) -> None:
            log.append("fin mid")

    @register_type
    class Leaf(Mid):
        TYPE = leaf_name

        @classmethod
        def class_init(cls) -> None:
            log.append(f"class_init({cls.TYPE})")

        def instance_init(self) -> None:
            log.append("ii leaf")

    return Base, Mid, Leaf


def test_registration_does_not_initialise_and_first_use_initialises_parents_first_once():
    log: list[str] = []
    Base, Mid, Leaf = make_hierarchy(log)
    assert log == []
    obj = object_new(Leaf.TYPE)
    # Exact order: Base class_init; Mid: base_init by base (no own class_init);
    # Leaf: base_init by mid (nearest first), by base, then its own class_init.
    assert log[:5] == [
        f"class_init({Base.TYPE})",
        f"base_init({Mid.TYPE}) by base",
        f"base_init({Leaf.TYPE}) by mid",
        f"base_init({Leaf.TYPE}) by base",
        f"class_init({Leaf.TYPE})",
    ]
    assert log[5:] == ["ii base", "ii mid", "ii leaf", "post base", "post mid"]
    log.clear()
    object_new(Leaf.TYPE)
    assert log == ["ii base", "ii mid", "ii leaf", "post base", "post mid"]  # class init once
    log.clear()
    obj.finalize()
    assert log == ["fin mid", "fin base"]  # leaf first
    assert Leaf.greeting == "base"  # child class starts from the parent's class state


def test_duplicate_registration_names_both_providers():
    name = uniq("dup")

    @register_type
    class A(Object):
        TYPE = name

    with pytest.raises(TypeRegistrationError) as err:
        @register_type
        class B(Object):
            TYPE = name
    text = str(err.value)
    assert f"Registering `{name}' which already exists" in text
    assert text.count(f"module {__name__}") == 2


def test_bad_type_name_is_refused():
    with pytest.raises(TypeRegistrationError, match="Invalid type name"):
        @register_type
        class Bad(Object):
            TYPE = "-starts-with-dash"


def test_abstract_unknown_and_bad_cast_errors_use_qemu_wording():
    abstract_name = uniq("abs")

    @register_type
    class Abs(Object):
        TYPE = abstract_name
        ABSTRACT = True

    with pytest.raises(TypeLookupError, match=f"object type '{abstract_name}' is abstract"):
        object_new(abstract_name)
    with pytest.raises(TypeLookupError, match="invalid object type: no-such-type-xyz"):
        object_new("no-such-type-xyz")
    obj = object_new("container")
    with pytest.raises(TypeLookupError, match=f"is not an instance of type {abstract_name}"):
        obj.cast(abstract_name)
    assert obj.cast("object") is obj


def test_typeinfo_registration_resolves_parent_lazily():
    parent_name, child_name = uniq("late-parent"), uniq("early-child")
    seen: list[str] = []
    type_register(TypeInfo(name=child_name, parent=parent_name,
                           class_init=lambda cls: seen.append("child class_init"),
                           instance_init=lambda obj: seen.append("child ii")))
    # The parent does not exist yet: using the child says so.
    with pytest.raises(TypeRegistrationError, match=f"is missing its parent '{parent_name}'"):
        object_new(child_name)

    @register_type
    class Parent(Object):
        TYPE = parent_name

        def instance_init(self) -> None:
            seen.append("parent ii")

    obj = object_new(child_name)
    assert isinstance(obj, Parent)
    assert seen == ["child class_init", "parent ii", "child ii"]


def test_interfaces_and_class_list_queries():
    iface, impl_name, other = uniq("iface"), uniq("impl"), uniq("other")
    type_register(TypeInfo(name=iface, parent="interface", abstract=True))

    @register_type
    class Impl(Object):
        TYPE = impl_name
        INTERFACES = (iface,)

    @register_type
    class Other(Object):
        TYPE = other
        ABSTRACT = True

    names = {c.TYPE for c in object_class_get_list(iface)}
    assert names == {impl_name}
    assert other not in {c.TYPE for c in object_class_get_list("object")}
    assert other in {c.TYPE for c in object_class_get_list("object", include_abstract=True)}
    assert object_new(impl_name).implements(iface)


def test_private_table_class_init_is_lazy_for_get_list():
    table = TypeTable()
    calls: list[str] = []

    class Root(Object):
        TYPE = "object"
        _table = table

    register_type(Root)

    class Thing(Root):
        TYPE = "thing"

        @classmethod
        def class_init(cls) -> None:
            calls.append("thing")

    register_type(Thing)
    assert calls == []
    assert [c.TYPE for c in table.get_list("thing")] == ["thing"]
    assert calls == ["thing"]


def make_props_type():
    name = uniq("propdev")

    @register_type
    class WithProps(Object):
        TYPE = name
        flag = P.prop(P.BOOL, False, "a switch")
        count = P.prop(P.UINT16, 4, "how many")
        mem = P.prop(P.SIZE, 1 << 20, "a size")
        label = P.prop(P.STR, None, "a name")
        mode = P.prop(P.ON_OFF_AUTO, "auto", "tri-state")
        peer = P.prop(P.LinkType("container"), None, "a link")

    return WithProps


@pytest.mark.parametrize("text,value", [("on", True), ("yes", True), ("true", True), ("y", True),
                                        ("off", False), ("no", False), ("false", False),
                                        ("n", False)])
def test_bool_property_spellings(text, value):
    obj = make_props_type()()
    obj.set_property("flag", text)
    assert obj.flag is value


def test_typed_properties_parse_check_and_report():
    cls = make_props_type()
    obj = cls(count="0x10", mem="1.5G", label="x,y", mode="off")
    assert (obj.count, obj.mem, obj.label, obj.mode) == (16, 3 << 29, "x,y", "off")
    obj.set_property("mem", "64k")
    assert obj.mem == 65536
    with pytest.raises(PropertyError, match="Parameter 'flag' expects 'on' or 'off'"):
        obj.set_property("flag", "maybe")
    with pytest.raises(PropertyError, match="Parameter 'count' expects a number"):
        obj.set_property("count", "many")
    with pytest.raises(PropertyError, match="between 0 and 65535"):
        obj.set_property("count", "65536")
    with pytest.raises(PropertyError, match="does not accept value 'sometimes'"):
        obj.set_property("mode", "sometimes")
    with pytest.raises(PropertyError, match=f"Property '{cls.TYPE}.bogus' not found"):
        obj.set_property("bogus", "1")
    with pytest.raises(PropertyError, match="is not writable"):
        obj.set_property("type", "x")
    assert obj.get_property("type") == cls.TYPE
    listed = dict(obj.properties())
    assert listed["count"] == "uint16" and listed["mem"] == "size"
    assert listed["peer"] == "link<container>" and listed["type"] == "string"
    desc = cls.class_properties()["count"].describe()
    assert desc == "count=<uint16> - how many (default: 4)"


def test_composition_tree_paths_links_and_object_properties():
    root = get_root()
    peripheral = container_get("/machine/peripheral")
    cls = make_props_type()
    dev = cls()
    peripheral.add_child("disk0", dev)
    assert dev.path == "/machine/peripheral/disk0"
    assert resolve_path("/machine/peripheral/disk0") is dev
    assert resolve_path("peripheral/disk0") is dev  # partial path, unique
    assert resolve_path("disk0") is dev
    assert resolve_path("/machine/nope") is None
    assert dict(root.properties())["machine"] == "child<container>"
    assert peripheral.get_property_json("disk0") == "/machine/peripheral/disk0"
    # links are set by path and read back as the path
    dev.set_property("peer", "/machine/peripheral")
    assert dev.peer is peripheral
    assert dev.get_property_json("peer") == "/machine/peripheral"
    with pytest.raises(PropertyError, match="not found"):
        dev.set_property("peer", "/no/such/path")
    # object-level properties and duplicates
    dev.add_property("extra", P.UINT8, 7)
    assert dev.get_property("extra") == 7
    with pytest.raises(PropertyError, match="attempt to add duplicate property 'extra'"):
        dev.add_property("extra", P.UINT8)
    # child properties are read-only; unparent removes the edge and finalises
    with pytest.raises(PropertyError, match="not writable"):
        peripheral.set_property("disk0", "x")
    dev.unparent()
    assert resolve_path("/machine/peripheral/disk0") is None
    assert dev.path == ""


def test_ambiguous_partial_path_resolves_to_nothing():
    container_get("/a/same")
    container_get("/b/same")
    assert resolve_path("same") is None
    assert resolve_path("a/same") is not None
