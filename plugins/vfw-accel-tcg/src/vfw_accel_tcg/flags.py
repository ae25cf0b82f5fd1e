"""Lazy EFLAGS: the last flag-setting operation and its operands, materialised on demand.

The arithmetic flags (CF PF AF ZF SF OF) are described by ``fop`` (kind * 4 + log2 size) and
up to four values ``fa`` (first operand), ``fb`` (second operand), ``fr`` (result, masked to
the operation size; ADD and SUB recompute it from the operands) and ``fc`` (a carry:
carry-in for ADC/SBB, the preserved CF for INC/DEC, CF out for shifts and multiplies).
Kind EFLAGS keeps the six bits themselves in ``fr``.

Translated code evaluates conditions straight from these values (``cond_expr``: ``cmp`` +
``jb`` becomes ``fa < fb``) and only helpers that need the whole register call
``FLAGFN[fop](fa, fb, fr, fc)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .consts import ARITH, PARITY, SIGN

# Kinds (multiply by 4 and add the size index to get an fop).
# INC_ADD .. DEC_SUB: INC/DEC right after an ADD/SUB of the same size, whose operands stay in
# fa/fb: CF (which INC/DEC keep) is computed from them only when it is read.
EFLAGS, ADD, ADC, SUB, SBB, LOGIC, INC, DEC, SHL, SHR, SAR, MUL, INC_ADD, DEC_ADD, INC_SUB, \
    DEC_SUB = range(16)
KIND_NAMES = ("EFLAGS", "ADD", "ADC", "SUB", "SBB", "LOGIC", "INC", "DEC", "SHL", "SHR", "SAR",
              "MUL", "INC_ADD", "DEC_ADD", "INC_SUB", "DEC_SUB")
SIZE_INDEX = {1: 0, 2: 1, 4: 2, 8: 3}
SIZES = (1, 2, 4, 8)

#: The lazy fields each kind uses.
FIELDS: dict[int, tuple[str, ...]] = {
    EFLAGS: ("fr",), ADD: ("fa", "fb"), ADC: ("fa", "fb", "fr", "fc"),
    SUB: ("fa", "fb"), SBB: ("fa", "fb", "fr", "fc"), LOGIC: ("fr",),
    INC: ("fr", "fc"), DEC: ("fr", "fc"), SHL: ("fr", "fc"), SHR: ("fa", "fr", "fc"),
    SAR: ("fr", "fc"), MUL: ("fr", "fc"), INC_ADD: ("fa", "fb", "fr"),
    DEC_ADD: ("fa", "fb", "fr"), INC_SUB: ("fa", "fb", "fr"), DEC_SUB: ("fa", "fb", "fr"),
}
#: The fused kind of an INC (False) / DEC (True) after an ADD or SUB.
FUSED = {(ADD, False): INC_ADD, (ADD, True): DEC_ADD, (SUB, False): INC_SUB,
         (SUB, True): DEC_SUB}

#: Condition codes in encoding order (jo, jno, jb, jae, je, jne, jbe, ja, js, jns, jp, jnp,
#: jl, jge, jle, jg).
CC_NAMES = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le",
            "g")


def fop_of(kind: int, size: int) -> int:
    return kind * 4 + SIZE_INDEX[size]


def kind_of(fop: int) -> int:
    return fop >> 2


def size_of(fop: int) -> int:
    return SIZES[fop & 3]


FOP_EFLAGS = fop_of(EFLAGS, 4)


def _prims(kind: int, size: int, a: str, b: str, r: str, c: str) -> dict[str, str]:
    """Python expressions (bool-valued) of the flags for one kind."""
    s = SIGN[size]
    if kind in (ADD, SUB):
        r = f"(({a} {'+' if kind == ADD else '-'} {b}) & {(s << 1) - 1})"
    if kind == EFLAGS:
        return {"cf": f"({r} & 1 != 0)", "pf": f"({r} & 4 != 0)", "af": f"({r} & 16 != 0)",
                "zf": f"({r} & 64 != 0)", "sf": f"({r} & 128 != 0)",
                "of": f"({r} & 2048 != 0)"}
    p = {"zf": f"({r} == 0)", "sf": f"({r} >= {s})", "pf": f"(PARITY[{r} & 255] != 0)"}
    if kind == ADD:
        p.update(cf=f"({a} + {b} > {(s << 1) - 1})",
                 of=f"((({a} ^ {r}) & ({b} ^ {r}) & {s}) != 0)",
                 af=f"((({a} ^ {b} ^ {r}) & 16) != 0)")
    elif kind == ADC:
        p.update(cf=f"({r} < {a} or ({c} != 0 and {r} == {a}))",
                 of=f"((({a} ^ {r}) & ({b} ^ {r}) & {s}) != 0)",
                 af=f"((({a} ^ {b} ^ {r}) & 16) != 0)")
    elif kind == SUB:
        p.update(cf=f"({a} < {b})", of=f"((({a} ^ {b}) & ({a} ^ {r}) & {s}) != 0)",
                 af=f"((({a} ^ {b} ^ {r}) & 16) != 0)", zf=f"({a} == {b})")
    elif kind == SBB:
        p.update(cf=f"({a} < {b} or ({c} != 0 and {a} == {b}))",
                 of=f"((({a} ^ {b}) & ({a} ^ {r}) & {s}) != 0)",
                 af=f"((({a} ^ {b} ^ {r}) & 16) != 0)")
    elif kind == LOGIC:
        p.update(cf="False", of="False", af="False")
    elif kind == INC:
        p.update(cf=f"({c} != 0)", of=f"({r} == {s})", af=f"(({r} & 15) == 0)")
    elif kind == DEC:
        p.update(cf=f"({c} != 0)", of=f"({r} == {s - 1})", af=f"(({r} & 15) == 15)")
    elif kind == SHL:
        p.update(cf=f"({c} != 0)", of=f"(({r} >= {s}) != ({c} != 0))", af="False")
    elif kind == SHR:
        p.update(cf=f"({c} != 0)", of=f"((({a} ^ {r}) & {s}) != 0)", af="False")
    elif kind == SAR:
        p.update(cf=f"({c} != 0)", of="False", af="False")
    elif kind == MUL:
        p.update(cf=f"({c} != 0)", of=f"({c} != 0)", af="False")
    elif kind in (INC_ADD, DEC_ADD, INC_SUB, DEC_SUB):
        p.update(cf=f"({a} + {b} > {(s << 1) - 1})" if kind in (INC_ADD, DEC_ADD)
                 else f"({a} < {b})")
        if kind in (INC_ADD, INC_SUB):
            p.update(of=f"({r} == {s})", af=f"(({r} & 15) == 0)")
        else:
            p.update(of=f"({r} == {s - 1})", af=f"(({r} & 15) == 15)")
    else:
        raise ValueError(f"bad flag kind {kind}")
    return p


def cond_expr(kind: int, size: int, cc: int, a: str = "fa", b: str = "fb", r: str = "fr",
              c: str = "fc") -> str:
    """A Python expression that is true when condition ``cc`` holds after a ``kind`` op."""
    neg = cc & 1
    base = cc & ~1
    s = SIGN[size]
    e: str | None = None
    if kind == SUB:
        e = {2: f"{a} < {b}", 4: f"{a} == {b}", 6: f"{a} <= {b}",
             12: f"({a} ^ {s}) < ({b} ^ {s})", 14: f"({a} ^ {s}) <= ({b} ^ {s})"}.get(base)
        if e is not None and neg:
            e = {2: f"{a} >= {b}", 4: f"{a} != {b}", 6: f"{a} > {b}",
                 12: f"({a} ^ {s}) >= ({b} ^ {s})", 14: f"({a} ^ {s}) > ({b} ^ {s})"}[base]
            return f"({e})"
    elif kind == LOGIC:
        e = {0: "False", 2: "False", 4: f"{r} == 0", 6: f"{r} == 0", 8: f"{r} >= {s}",
             12: f"{r} >= {s}", 14: f"({r} == 0 or {r} >= {s})"}.get(base)
        if e is not None and neg:
            e = {0: "True", 2: "True", 4: f"{r} != 0", 6: f"{r} != 0", 8: f"{r} < {s}",
                 12: f"{r} < {s}", 14: f"0 < {r} < {s}"}[base]
            return f"({e})"
    if e is None:
        p = _prims(kind, size, a, b, r, c)
        e = {0: p["of"], 2: p["cf"], 4: p["zf"], 6: f"({p['cf']} or {p['zf']})", 8: p["sf"],
             10: p["pf"], 12: f"({p['sf']} != {p['of']})",
             14: f"({p['zf']} or {p['sf']} != {p['of']})"}[base]
    if neg:
        m = _SIMPLE_EQ.match(e)
        return f"({m[1]} != {m[2]})" if m else f"(not {e})"
    return f"({e})"


_SIMPLE_EQ = re.compile(r"^\((\w+) == (\w+)\)$")


def flags_expr(kind: int, size: int, a: str = "fa", b: str = "fb", r: str = "fr",
               c: str = "fc") -> str:
    """A Python expression of the six arithmetic flag bits after a ``kind`` op."""
    if kind == EFLAGS:
        return f"({r} & {ARITH})"
    if kind in (ADD, SUB):
        r = f"(({a} {'+' if kind == ADD else '-'} {b}) & {(SIGN[size] << 1) - 1})"
    p = _prims(kind, size, a, b, r, c)
    bits = size * 8
    parts = [f"(1 if {p['cf']} else 0)", f"PARITY[{r} & 255]", f"(64 if {r} == 0 else 0)",
             f"(({r} >> {bits - 8}) & 128)" if bits >= 8 else "0"]
    if kind in (ADD, ADC, SUB, SBB):
        parts.append(f"(({a} ^ {b} ^ {r}) & 16)")
    elif p["af"] != "False":
        parts.append(f"(16 if {p['af']} else 0)")
    if p["of"] != "False":
        parts.append(f"(2048 if {p['of']} else 0)")
    return "(" + " | ".join(parts) + ")"


_NS: dict[str, Any] = {"PARITY": PARITY}


def _build_flagfns() -> list[Callable[[int, int, int, int], int]]:
    src = []
    for kind in range(len(KIND_NAMES)):
        for size in SIZES:
            fop = fop_of(kind, size)
            src.append(f"def f{fop}(fa, fb, fr, fc):\n    return {flags_expr(kind, size)}\n")
    exec(compile("".join(src), "<vfw-tcg-flags>", "exec"), _NS)
    return [_NS[f"f{i}"] for i in range(len(KIND_NAMES) * 4)]


#: FLAGFN[fop](fa, fb, fr, fc) -> the six arithmetic flag bits.
FLAGFN = _build_flagfns()

_condfns: dict[int, Callable[[int, int, int, int], bool]] = {}


def condfn(fop: int, cc: int) -> Callable[[int, int, int, int], bool]:
    """A compiled test of condition ``cc`` for lazy state of kind ``fop``."""
    key = fop * 16 + cc
    fn = _condfns.get(key)
    if fn is None:
        expr = cond_expr(kind_of(fop), size_of(fop), cc)
        ns = dict(_NS)
        exec(compile(f"def c(fa, fb, fr, fc):\n    return {expr}\n", "<vfw-tcg-cond>", "exec"),
             ns)
        fn = _condfns[key] = ns["c"]
    return fn


def cf_expr(kind: int, size: int, a: str = "fa", b: str = "fb", r: str = "fr",
            c: str = "fc") -> str:
    """A Python int expression (0 or 1) of CF after a ``kind`` op."""
    if kind in (INC, DEC, SHL, SHR, SAR, MUL):
        return c
    if kind == EFLAGS:
        return f"({r} & 1)"
    if kind == LOGIC:
        return "0"
    return f"(1 if {_prims(kind, size, a, b, r, c)['cf']} else 0)"
