"""Tests for vfw.options: QemuOpts syntax, value parsers, -smp, -m and -cpu, against QEMU 7.2."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfw.errors import MachineError, OptionError
from vfw.options import (
    MEMORY_GROUP,
    SMP_GROUP,
    MemoryConfig,
    OptDesc,
    Opts,
    OptsGroup,
    OptsList,
    SmpConfig,
    check_id,
    escape,
    format_group_help,
    parse_bool,
    parse_cpu_model,
    parse_memory,
    parse_number,
    parse_opts,
    parse_size,
    parse_smp,
)

ANY = OptsGroup("device", implied_key="driver")  # accepts any key, like -device
NO_IMPLIED = OptsGroup("drive")
TYPED = OptsGroup(
    "typed",
    implied_key="name",
    desc=(
        OptDesc("name", "str"),
        OptDesc("flag", "bool"),
        OptDesc("count", "number"),
        OptDesc("mem", "size"),
    ),
)
MERGED = OptsGroup("merged", implied_key="v", merge_lists=True)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
U64 = 1 << 64


def error_of(fn: object, *args: object, **kwargs: object) -> str:
    """The message of the VfwError ``fn`` raises."""
    with pytest.raises((OptionError, MachineError)) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return str(info.value)


# --- QemuOpts syntax ------------------------------------------------------------------------


def test_pairs_in_written_order() -> None:
    opts = parse_opts(NO_IMPLIED, "file=a.img,if=none,format=raw")
    assert opts.items == [("file", "a.img"), ("if", "none"), ("format", "raw")]
    assert opts.id is None and opts.help is False


def test_double_comma_is_a_literal_comma_in_values() -> None:
    opts = parse_opts(NO_IMPLIED, "file=a,,b,,,,c.img,if=none")
    assert opts.items == [("file", "a,b,,c.img"), ("if", "none")]


def test_double_comma_in_the_implied_value() -> None:
    assert parse_opts(ANY, "e1,,000,id=n").items == [("driver", "e1,000")]


def test_value_may_contain_equals_sign() -> None:
    assert parse_opts(NO_IMPLIED, "append=console=ttyS0").items == [("append", "console=ttyS0")]


def test_implied_key_applies_to_the_first_element_only() -> None:
    opts = parse_opts(ANY, "e1000,mac=52:54:00:12:34:56,romfile")
    assert opts.items == [("driver", "e1000"), ("mac", "52:54:00:12:34:56"), ("romfile", "on")]


def test_first_element_with_equals_is_not_implied() -> None:
    assert parse_opts(ANY, "driver=e1000,foo").items == [("driver", "e1000"), ("foo", "on")]


def test_bare_first_element_without_implied_key_is_a_flag() -> None:
    assert parse_opts(NO_IMPLIED, "readonly,file=x").items == [("readonly", "on"), ("file", "x")]


def test_no_prefix_is_not_negation() -> None:
    assert parse_opts(ANY, "e1000,noacpi").items == [("driver", "e1000"), ("noacpi", "on")]
    assert error_of(parse_opts, TYPED, "x,noflag") == "Invalid parameter 'noflag'"


def test_empty_text_and_empty_values() -> None:
    assert parse_opts(ANY, "").items == []
    assert parse_opts(NO_IMPLIED, "append=").items == [("append", "")]
    assert parse_opts(ANY, ",x=1").items == [("driver", ""), ("x", "1")]


def test_trailing_single_comma_is_ignored() -> None:
    assert parse_opts(NO_IMPLIED, "a=1,").items == [("a", "1")]
    assert parse_opts(NO_IMPLIED, "a=1,,").items == [("a", "1,")]


def test_id_is_taken_out_of_the_items() -> None:
    opts = parse_opts(ANY, "e1000,id=net0,mac=x")
    assert opts.id == "net0"
    assert opts.items == [("driver", "e1000"), ("mac", "x")]


def test_first_id_counts() -> None:
    opts = parse_opts(ANY, "e1000,id=a,id=b")
    assert opts.id == "a" and opts.items == [("driver", "e1000")]


def test_id_is_checked_before_other_parameters() -> None:
    assert error_of(parse_opts, TYPED, "bogus=1,id=9") == "Parameter 'id' expects an identifier"


def test_bad_id() -> None:
    assert error_of(parse_opts, ANY, "e1000,id=0abc") == "Parameter 'id' expects an identifier"
    assert error_of(parse_opts, ANY, "e1000,id=") == "Parameter 'id' expects an identifier"


def test_id_is_invalid_in_a_merged_group() -> None:
    assert error_of(parse_opts, MEMORY_GROUP, "512,id=m") == "Invalid parameter 'id'"


def test_id_accepted_even_when_desc_does_not_list_it() -> None:
    assert parse_opts(TYPED, "x,id=t1").id == "t1"


def test_help_flag() -> None:
    for word in ("help", "?"):
        opts = parse_opts(ANY, f"e1000,{word}")
        assert opts.help is True
        assert opts.items == [("driver", "e1000")]


def test_help_flag_in_accept_any_group_keeps_parsing() -> None:
    assert parse_opts(ANY, "e1000,help,x=1").items == [("driver", "e1000"), ("x", "1")]


def test_help_flag_in_described_group_stops_parsing() -> None:
    opts = parse_opts(TYPED, "x,help,bogus=1")
    assert opts.help is True and opts.items == [("name", "x")]


def test_help_as_implied_value_is_kept_and_sets_help() -> None:
    for word in ("help", "?"):
        opts = parse_opts(ANY, word)
        assert opts.help is True and opts.get("driver") == word
    # not checked against the key's kind either
    assert parse_opts(MEMORY_GROUP, "help").help is True


def test_help_as_a_value_is_just_a_value() -> None:
    opts = parse_opts(ANY, "e1000,romfile=help")
    assert opts.help is False and opts.get("romfile") == "help"


def test_unknown_key_in_described_group() -> None:
    assert error_of(parse_opts, TYPED, "x,foo=1") == "Invalid parameter 'foo'"
    assert error_of(parse_opts, SMP_GROUP, "2,sockets=1,bogus") == "Invalid parameter 'bogus'"


def test_known_keys_are_checked_by_kind() -> None:
    assert error_of(parse_opts, TYPED, "x,flag=maybe") == "Parameter 'flag' expects 'on' or 'off'"
    assert error_of(parse_opts, TYPED, "x,count=ten") == "Parameter 'count' expects a number"
    assert (
        error_of(parse_opts, TYPED, "x,mem=lots")
        == "Parameter 'mem' expects a non-negative number below 2^64"
    )
    opts = parse_opts(TYPED, "x,flag,count=0x10,mem=1.5k")
    assert opts.items == [("name", "x"), ("flag", "on"), ("count", "0x10"), ("mem", "1.5k")]


def test_accept_any_group_keeps_unknown_keys_unchecked() -> None:
    assert parse_opts(ANY, "e1000,flag=maybe").get("flag") == "maybe"


keys = st.text(st.characters(exclude_characters=",=", codec="utf-8"), min_size=1)
keys = keys.filter(lambda k: k not in ("id", "help", "?"))
values = st.text(st.characters(codec="utf-8"))


@given(st.lists(st.tuples(keys, values)))
def test_escape_round_trip(items: list[tuple[str, str]]) -> None:
    text = ",".join(f"{key}={escape(value)}" for key, value in items)
    assert parse_opts(NO_IMPLIED, text).items == items


implied_values = values.filter(lambda v: "=" not in v and v not in ("help", "?"))


@given(implied_values, st.lists(st.tuples(keys, values)))
def test_escape_round_trip_with_implied_value(first: str, items: list[tuple[str, str]]) -> None:
    text = ",".join([escape(first)] + [f"{key}={escape(value)}" for key, value in items])
    opts = parse_opts(ANY, text)
    expected = [("driver", first), *items] if text else []
    assert opts.items == expected


def test_escape() -> None:
    assert escape("a,b,,c") == "a,,b,,,,c"


# --- Opts accessors -------------------------------------------------------------------------


def test_get_last_occurrence_wins() -> None:
    opts = parse_opts(NO_IMPLIED, "a=1,b=2,a=3")
    assert opts.get("a") == "3"
    assert opts.get("zz") is None
    assert opts.get("zz", "d") == "d"
    assert opts.has("b") and not opts.has("zz")


def test_typed_getters() -> None:
    opts = parse_opts(NO_IMPLIED, "on=yes,off=n,num=010,sz=2M")
    assert opts.get_bool("on", False) is True
    assert opts.get_bool("off", True) is False
    assert opts.get_bool("missing", True) is True
    assert opts.get_number("num", 0) == 8
    assert opts.get_number("missing", 7) == 7
    assert opts.get_size("sz", 0) == 2 * MiB
    assert opts.get_size("missing", 5) == 5
    assert error_of(opts.get_bool, "num", False) == "Parameter 'num' expects 'on' or 'off'"


def test_as_dict_and_without() -> None:
    opts = parse_opts(ANY, "e1000,mac=1,netdev=n,mac=2")
    assert opts.as_dict() == {"driver": "e1000", "mac": "2", "netdev": "n"}
    assert opts.without("driver", "netdev") == {"mac": "2"}


# --- value parsers --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["on", "yes", "true", "y"])
def test_bool_true(text: str) -> None:
    assert parse_bool("usb", text) is True


@pytest.mark.parametrize("text", ["off", "no", "false", "n"])
def test_bool_false(text: str) -> None:
    assert parse_bool("usb", text) is False


@pytest.mark.parametrize("text", ["", "ON", "1", "0", "enable", "yes "])
def test_bool_invalid(text: str) -> None:
    assert error_of(parse_bool, "usb", text) == "Parameter 'usb' expects 'on' or 'off'"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("0x1f", 31), ("0X1F", 31), ("010", 8), (" 7", 7), ("+7", 7),
     ("18446744073709551615", U64 - 1)],
)
def test_number(text: str, value: int) -> None:
    assert parse_number("x", text) == value


@pytest.mark.parametrize("text", ["", "abc", "12a", "08", "0x", "1.5", "-1", "1 ", "1k"])
def test_number_invalid(text: str) -> None:
    assert error_of(parse_number, "x", text) == "Parameter 'x' expects a number"


def test_number_too_large() -> None:
    assert (
        error_of(parse_number, "x", "18446744073709551616")
        == "Value '18446744073709551616' is too large for parameter 'x'"
    )


@given(st.integers(0, U64 - 1))
def test_number_round_trip(n: int) -> None:
    assert parse_number("x", str(n)) == n
    assert parse_number("x", hex(n)) == n
    assert parse_number("x", "0" + oct(n)[2:]) == n


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1b", 1),
        ("1B", 1),
        ("1k", KiB),
        ("1K", KiB),
        ("2m", 2 * MiB),
        ("2M", 2 * MiB),
        ("3G", 3 * GiB),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("1E", 1 << 60),
        ("1.5G", 3 * GiB // 2),
        ("1.k", KiB),  # a dot without digits is allowed
        ("12.345M", 12944671),  # rounded to nearest, half up
        ("0.5k", 512),
        ("0x1000", 4096),
        ("0x1E", 30),  # E and B are hex digits here
        ("0x1B", 27),
        ("+1k", KiB),
        (" 1k", KiB),
        ("1.5e", 3 << 59),  # 'e' without exponent digits is the exabyte suffix
        ("18446744073709551615", U64 - 1),
        ("15.5E", 31 << 59),
    ],
)
def test_size(text: str, value: int) -> None:
    assert parse_size("sz", text) == value


@pytest.mark.parametrize(
    "text",
    ["", "k", "abc", "-1", "-0", "1.5", "0.5b", ".5G", "1.5e3G", "1e3", "1X", "1k ", "1kk",
     "0x10M", "0x1.8", "0x", "1,5G", "99999999999999999999G"],
)
def test_size_invalid(text: str) -> None:
    message = "Parameter 'sz' expects a non-negative number below 2^64"
    assert error_of(parse_size, "sz", text) == message


@pytest.mark.parametrize("text", ["16E", "18446744073709551616", "17179869184G"])
def test_size_out_of_range(text: str) -> None:
    assert error_of(parse_size, "sz", text) == f"Value '{text}' is out of range for parameter 'sz'"


def test_size_default_unit() -> None:
    assert parse_size("size", "512", MiB) == 512 * MiB
    assert parse_size("size", "1.5", MiB) == 3 * MiB // 2  # a unit makes a fraction fine
    assert parse_size("size", "512k", MiB) == 512 * KiB  # an explicit suffix overrides it
    assert parse_size("size", "0x10", MiB) == 16 * MiB


SUFFIXES = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}


@given(st.integers(0, U64), st.sampled_from(sorted(SUFFIXES)), st.booleans())
def test_size_suffix_property(n: int, suffix: str, lower: bool) -> None:
    text = f"{n}{suffix.lower() if lower else suffix}"
    expected = n * SUFFIXES[suffix]
    if expected < U64:
        assert parse_size("sz", text) == expected
    elif n >= U64 and suffix:
        # QEMU stops at the overflowing digits, so the suffix is trailing junk
        assert "expects a non-negative number" in error_of(parse_size, "sz", text)
    else:
        assert "out of range" in error_of(parse_size, "sz", text)


@given(st.integers(0, 1023), st.integers(0, 9999), st.sampled_from(["K", "M", "G"]))
def test_size_fraction_property(whole: int, frac: int, suffix: str) -> None:
    digits = f"{frac:04d}"
    mul = SUFFIXES[suffix]
    # exact rational result, rounded half up, compared with a tolerance of one for float rounding
    exact = whole * mul + (frac * mul) / 10**4
    assert abs(parse_size("sz", f"{whole}.{digits}{suffix}") - exact) <= 1


@pytest.mark.parametrize("text", ["a", "Z", "abc", "net0", "a-b.c_d", "drive-virtio-disk0"])
def test_id_valid(text: str) -> None:
    check_id(text)


@pytest.mark.parametrize("text", ["", "0a", "-a", "_a", ".a", "a b", "a,b", "a/b", "é", "aé"])
def test_id_invalid(text: str) -> None:
    assert error_of(check_id, text) == "Parameter 'id' expects an identifier"


# --- OptsList -------------------------------------------------------------------------------


def test_opts_list_keeps_order_and_finds_by_id() -> None:
    lst = OptsList(ANY)
    first, second, anon = (parse_opts(ANY, t) for t in ("e1000,id=a", "virtio,id=b", "e1000"))
    for opts in (first, second, anon, parse_opts(ANY, "rtl8139")):
        lst.add(opts)
    assert len(lst) == 4
    assert [o.get("driver") for o in lst] == ["e1000", "virtio", "e1000", "rtl8139"]
    assert lst.find("b") is second
    assert lst.find("zz") is None


@pytest.mark.parametrize("group", ["device", "drive", "netdev", "chardev"])
def test_duplicate_id(group: str) -> None:
    lst = OptsList(OptsGroup(group))
    lst.add(parse_opts(lst.group, "id=a"))
    assert error_of(lst.add, parse_opts(lst.group, "x=1,id=a")) == f"Duplicate ID 'a' for {group}"
    assert len(lst) == 1


def test_merged_last_value_wins() -> None:
    lst = OptsList(MEMORY_GROUP)
    lst.add(parse_opts(MEMORY_GROUP, "512"))
    lst.add(parse_opts(MEMORY_GROUP, "maxmem=4G,slots=2"))
    lst.add(parse_opts(MEMORY_GROUP, "1G"))
    merged = lst.merged()
    assert merged.items == [("size", "512"), ("maxmem", "4G"), ("slots", "2"), ("size", "1G")]
    assert merged.get("size") == "1G"
    assert merged.group is MEMORY_GROUP and merged.id is None and merged.help is False


def test_merged_of_empty_list_is_empty() -> None:
    merged = OptsList(MERGED).merged()
    assert merged.items == [] and merged.help is False


def test_merged_carries_help() -> None:
    lst = OptsList(MERGED)
    lst.add(parse_opts(MERGED, "a"))
    lst.add(parse_opts(MERGED, "help"))
    assert lst.merged().help is True


# --- help listing ---------------------------------------------------------------------------


def test_format_group_help_matches_qemu_layout() -> None:
    group = OptsGroup(
        "test",
        desc=(
            OptDesc("zeta", "str"),
            OptDesc("alpha", "bool", "turn it on"),
            OptDesc("count", "number"),
            OptDesc("a-very-long-option-name", "size", "long"),
        ),
    )
    assert format_group_help(group) == (
        "test options:\n"
        "  a-very-long-option-name=<size> - long\n"
        "  alpha=<bool (on/off)>  - turn it on\n"
        "  count=<num>\n"
        "  zeta=<str>\n"
    )


def test_format_group_help_without_options() -> None:
    assert format_group_help(OptsGroup("device")) == "There are no options for device.\n"
    assert format_group_help(OptsGroup("x", desc=())) == "There are no options for x.\n"


def test_opt_desc_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown option kind 'float' for 'x'"):
        OptsGroup("g", desc=(OptDesc("x", "float"),))


# --- -smp -----------------------------------------------------------------------------------


def smp(text: str | None, **kwargs: object) -> SmpConfig:
    args: dict[str, object] = {"machine_name": "pc-i440fx-7.2", "max_cpus": 255}
    args.update(kwargs)
    opts = None if text is None else parse_opts(SMP_GROUP, text)
    return parse_smp(opts, **args)  # type: ignore[arg-type]


def topo(cpus: int, sockets: int, cores: int, threads: int, max_cpus: int, dies: int = 1,
         clusters: int = 1) -> SmpConfig:
    return SmpConfig(cpus, sockets, dies, clusters, cores, threads, max_cpus)


def test_smp_group_shape() -> None:
    assert SMP_GROUP.name == "smp-opts" and SMP_GROUP.implied_key == "cpus"
    assert SMP_GROUP.merge_lists
    assert SMP_GROUP.desc is not None
    assert {d.name: d.kind for d in SMP_GROUP.desc} == dict.fromkeys(
        ["cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus"], "number"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, topo(1, 1, 1, 1, 1)),
        ("", topo(1, 1, 1, 1, 1)),
        ("4", topo(4, 1, 4, 1, 4)),  # cores preferred over sockets
        ("4,sockets=2", topo(4, 2, 2, 1, 4)),
        ("4,cores=2", topo(4, 2, 2, 1, 4)),
        ("4,threads=2", topo(4, 1, 2, 2, 4)),
        ("4,sockets=2,cores=2", topo(4, 2, 2, 1, 4)),  # threads inferred last
        ("sockets=2,cores=2,threads=2", topo(8, 2, 2, 2, 8)),  # cpus from the product
        ("maxcpus=8", topo(8, 1, 8, 1, 8)),
        ("2,maxcpus=8", topo(2, 1, 8, 1, 8)),
        ("0", topo(1, 1, 1, 1, 1)),  # cpus=0 still means "not given"
        ("0,sockets=2", topo(2, 2, 1, 1, 2)),
        ("cpus=4,cpus=6", topo(6, 1, 6, 1, 6)),  # last wins
    ],
)
def test_smp_inference(text: str | None, expected: SmpConfig) -> None:
    assert smp(text) == expected


def test_smp_prefer_sockets() -> None:
    assert smp("4", prefer_sockets=True) == topo(4, 4, 1, 1, 4)
    assert smp("4,sockets=2", prefer_sockets=True) == topo(4, 2, 2, 1, 4)
    assert smp("8,cores=2", prefer_sockets=True) == topo(8, 4, 2, 1, 8)


def test_smp_dies_and_clusters() -> None:
    assert smp("8,dies=2", dies_supported=True) == topo(8, 1, 4, 1, 8, dies=2)
    assert smp("8,clusters=2", clusters_supported=True) == topo(8, 1, 4, 1, 8, clusters=2)
    assert smp("4,dies=1") == topo(4, 1, 4, 1, 4)  # 1 is fine when unsupported
    assert error_of(smp, "4,dies=2") == "dies not supported by this machine's CPU topology"
    assert error_of(smp, "4,clusters=2") == "clusters not supported by this machine's CPU topology"


def test_smp_product_must_match_maxcpus() -> None:
    assert error_of(smp, "sockets=2,cores=3,threads=1,maxcpus=4", dies_supported=True) == (
        "Invalid CPU topology: product of the hierarchy must match maxcpus: "
        "sockets (2) * dies (1) * cores (3) * threads (1) != maxcpus (4)"
    )
    assert error_of(smp, "sockets=2,cores=3,threads=1,maxcpus=4") == (
        "Invalid CPU topology: product of the hierarchy must match maxcpus: "
        "sockets (2) * cores (3) * threads (1) != maxcpus (4)"
    )
    assert error_of(smp, "4,sockets=2,clusters=1,cores=3", clusters_supported=True) == (
        "Invalid CPU topology: product of the hierarchy must match maxcpus: "
        "sockets (2) * clusters (1) * cores (3) * threads (0) != maxcpus (4)"
    )
    assert error_of(smp, "2,sockets=4") == (
        "Invalid CPU topology: product of the hierarchy must match maxcpus: "
        "sockets (4) * cores (0) * threads (1) != maxcpus (2)"
    )


def test_smp_maxcpus_below_cpus() -> None:
    assert error_of(smp, "8,maxcpus=4", dies_supported=True) == (
        "Invalid CPU topology: maxcpus must be equal to or greater than smp: "
        "sockets (1) * dies (1) * cores (4) * threads (1) == maxcpus (4) < smp_cpus (8)"
    )


def test_smp_machine_limits() -> None:
    assert error_of(smp, "300") == (
        "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx-7.2' is 255"
    )
    assert error_of(smp, "2,maxcpus=300") == (
        "Invalid SMP CPUs 300. The max CPUs supported by machine 'pc-i440fx-7.2' is 255"
    )
    assert error_of(smp, "1", min_cpus=2, machine_name="big") == (
        "Invalid SMP CPUs 1. The min CPUs supported by machine 'big' is 2"
    )
    assert smp("255").cpus == 255


@pytest.mark.parametrize(
    "text", ["sockets=0", "4,dies=0", "4,clusters=0", "4,cores=0", "4,threads=0", "maxcpus=0"]
)
def test_smp_explicit_zero(text: str) -> None:
    assert error_of(smp, text, dies_supported=True, clusters_supported=True) == (
        "Invalid CPU topology: CPU topology parameters must be greater than zero"
    )


def test_smp_errors_are_machine_errors() -> None:
    with pytest.raises(MachineError):
        smp("300")


@given(
    st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
    st.booleans(), st.booleans(),
)
def test_smp_inference_property(
    sockets: int, cores: int, threads: int, give_s: bool, give_c: bool, give_t: bool,
    prefer_sockets: bool,
) -> None:
    """Given cpus and any subset of a consistent topology, inference keeps what was given, fills
    the rest so the product is cpus, and recovers the topology once threads and one of
    sockets/cores are known."""
    cpus = sockets * cores * threads
    parts = [str(cpus)]
    parts += [f"sockets={sockets}"] if give_s else []
    parts += [f"cores={cores}"] if give_c else []
    parts += [f"threads={threads}"] if give_t else []
    result = smp(",".join(parts), prefer_sockets=prefer_sockets)
    assert result.cpus == result.max_cpus == cpus
    assert result.sockets * result.cores * result.threads == cpus
    assert (result.dies, result.clusters) == (1, 1)
    assert not give_s or result.sockets == sockets
    assert not give_c or result.cores == cores
    assert not give_t or result.threads == threads
    if give_t and (give_s or give_c):
        assert result == topo(cpus, sockets, cores, threads, cpus)


# --- -m -------------------------------------------------------------------------------------


def mem(text: str | None, default_size: int = 128 * MiB) -> MemoryConfig:
    opts = None if text is None else parse_opts(MEMORY_GROUP, text)
    return parse_memory(opts, default_size=default_size)


def test_memory_group_shape() -> None:
    assert MEMORY_GROUP.name == "memory" and MEMORY_GROUP.implied_key == "size"
    assert MEMORY_GROUP.merge_lists
    assert MEMORY_GROUP.desc is not None
    assert {d.name: d.kind for d in MEMORY_GROUP.desc} == {
        "size": "size", "slots": "number", "maxmem": "size"
    }


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512 * MiB),  # bare number means MiB
        ("size=512", 512 * MiB),
        ("1G", GiB),
        ("1g", GiB),
        ("1.5G", 3 * GiB // 2),
        ("512M", 512 * MiB),
        ("2048k", 2 * MiB),
        ("1001k", 1032192),  # 1025024 rounded up to 8 KiB
        ("1B", 8192),
        ("0x1E", 8192),  # ends in a hex digit letter: bytes, rounded up
        ("0", 128 * MiB),  # zero means the default
        ("0G", 128 * MiB),
        ("", 128 * MiB),
    ],
)
def test_memory_size(text: str, size: int) -> None:
    config = mem(text)
    assert config == MemoryConfig(size, 0, size)


def test_memory_default() -> None:
    assert mem(None) == MemoryConfig(128 * MiB, 0, 128 * MiB)
    assert mem(None, default_size=1000) == MemoryConfig(8192, 0, 8192)


def test_memory_fraction_without_suffix_is_refused_when_parsed() -> None:
    assert (
        error_of(parse_opts, MEMORY_GROUP, "1.5")
        == "Parameter 'size' expects a non-negative number below 2^64"
    )


def test_memory_suffixless_hex_is_refused() -> None:
    # QEMU appends "M" to a size that ends in a digit, and refuses hex with a suffix
    assert error_of(mem, "0x100") == "Parameter 'size' expects a non-negative number below 2^64"


def test_memory_size_out_of_range() -> None:
    assert error_of(mem, "17592186044416") == (
        "Value '17592186044416' is out of range for parameter 'size'"
    )


def test_memory_maxmem_and_slots() -> None:
    assert mem("1G,slots=4,maxmem=4G") == MemoryConfig(GiB, 4, 4 * GiB)
    assert mem("1G,maxmem=4G") == MemoryConfig(GiB, 0, 4 * GiB)
    assert mem("1G,maxmem=1G,slots=0") == MemoryConfig(GiB, 0, GiB)


def test_memory_maxmem_is_in_bytes_unless_suffixed() -> None:
    assert error_of(mem, "1G,maxmem=4096,slots=1") == (
        "invalid value of maxmem: maximum memory size (0x1000) must be at least "
        "the initial memory size (0x40000000)"
    )


def test_memory_maxmem_equal_with_slots() -> None:
    assert error_of(mem, "1G,maxmem=1G,slots=2") == (
        "invalid value of maxmem: memory slots were specified but maximum memory size "
        "(0x40000000) is equal to the initial memory size (0x40000000)"
    )


def test_memory_slots_without_maxmem() -> None:
    assert error_of(mem, "1G,slots=2") == "slots specified but no max-size"


def test_memory_errors_are_machine_errors() -> None:
    with pytest.raises(MachineError):
        mem("1G,slots=2")


def test_memory_merged_last_wins() -> None:
    lst = OptsList(MEMORY_GROUP)
    for text in ("512", "maxmem=8G", "2G,slots=1"):
        lst.add(parse_opts(MEMORY_GROUP, text))
    assert parse_memory(lst.merged(), default_size=0) == MemoryConfig(2 * GiB, 1, 8 * GiB)


@given(st.integers(1, 1 << 30))
def test_memory_size_is_rounded_up_to_8k(n: int) -> None:
    size = mem(f"{n}b").size
    assert size % 8192 == 0 and n <= size < n + 8192


# --- -cpu -----------------------------------------------------------------------------------


def test_cpu_model_features_in_application_order() -> None:
    assert parse_cpu_model("SandyBridge,+erms,-vmx,pcid=on,level=13") == (
        "SandyBridge",
        [("pcid", "on"), ("level", "13"), ("erms", "on"), ("vmx", "off")],
    )


def test_cpu_minus_wins_over_plus() -> None:
    model, features = parse_cpu_model("host,-vmx,+vmx,vmx=on")
    assert model == "host"
    assert features == [("vmx", "on"), ("vmx", "on"), ("vmx", "off")]
    assert dict(features)["vmx"] == "off"  # applying in order, the last one stays


def test_cpu_bare_feature_and_model_only() -> None:
    assert parse_cpu_model("qemu64") == ("qemu64", [])
    assert parse_cpu_model("max,x2apic,,hv-time=off") == (
        "max",
        [("x2apic", "on"), ("hv-time", "off")],
    )


@pytest.mark.parametrize("text", ["", ",+vmx"])
def test_cpu_empty_model(text: str) -> None:
    assert error_of(parse_cpu_model, text) == "-cpu option cannot be empty"


def test_opts_dataclass_defaults() -> None:
    opts = Opts(ANY)
    assert opts.id is None and opts.items == [] and opts.help is False
