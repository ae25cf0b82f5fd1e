"""SSE/SSE2 floating point (issue #4): arithmetic, NaN rules, compares, conversions.

The runtime helpers are checked against the Intel SDM's rules directly (unicorn, the
differential oracle, uses x87 NaN propagation for SSE); a few programs run end to end.
"""

from __future__ import annotations

import struct

import pytest

pytestmark = pytest.mark.requires("vfw-board-pc")

DNAN64, DNAN32 = 0xFFF8000000000000, 0xFFC00000
INF64, INF32 = 0x7FF0000000000000, 0x7F800000


def d(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def f(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


@pytest.fixture
def sse():
    from vfw_accel_tcg import sse

    return sse


def test_scalar_arithmetic_double(sse):
    assert sse.fop1("add", d(1.5), d(2.25), 8) == d(3.75)
    assert sse.fop1("sub", d(1.0), d(3.0), 8) == d(-2.0)
    assert sse.fop1("mul", d(1e308), d(10.0), 8) == INF64
    assert sse.fop1("div", d(1.0), d(3.0), 8) == d(1 / 3)
    assert sse.fop1("sqrt", d(123.0), d(2.0), 8) == d(2.0 ** 0.5)
    assert sse.fop1("sqrt", 0, d(-0.0), 8) == d(-0.0)
    # denormals are neither flushed nor treated as zero
    assert sse.fop1("mul", 1, d(2.0), 8) == 2


def test_scalar_form_keeps_the_upper_lanes(sse):
    a = (0x1234 << 64) | d(1.0)
    assert sse.fop_s("add", a, d(2.0) | (77 << 64), 8) == (0x1234 << 64) | d(3.0)
    a = (0xAABBCCDD << 96) | (5 << 32) | f(1.0)
    assert sse.fop_s("mul", a, f(3.0), 4) == (0xAABBCCDD << 96) | (5 << 32) | f(3.0)


def test_packed_forms(sse):
    a = f(1.0) | (f(2.0) << 32) | (f(-3.0) << 64) | (f(0.5) << 96)
    b = f(4.0) | (f(4.0) << 32) | (f(4.0) << 64) | (f(4.0) << 96)
    assert sse.fop_p("mul", a, b, 4) == f(4.0) | (f(8.0) << 32) | (f(-12.0) << 64) | (
        f(2.0) << 96)
    assert sse.fop_p("sub", d(1.0) | (d(5.0) << 64), d(0.5) | (d(0.5) << 64), 8) == (
        d(0.5) | (d(4.5) << 64))


def test_division_by_zero_and_invalid_operations(sse):
    assert sse.fop1("div", d(1.0), d(-0.0), 8) == d(float("-inf"))
    assert sse.fop1("div", d(-2.0), d(0.0), 8) == d(float("-inf"))
    assert sse.fop1("div", f(1.0), f(0.0), 4) == INF32
    assert sse.fop1("div", d(0.0), d(0.0), 8) == DNAN64
    assert sse.fop1("div", f(0.0), f(-0.0), 4) == DNAN32
    assert sse.fop1("sub", INF64, INF64, 8) == DNAN64
    assert sse.fop1("mul", INF32, 0, 4) == DNAN32
    assert sse.fop1("sqrt", 0, d(-1.0), 8) == DNAN64
    assert sse.fop1("sqrt", 0, f(-1.0), 4) == DNAN32
    assert sse.fop1("div", d(float("inf")), d(float("inf")), 8) == DNAN64


def test_nan_propagation_first_source_wins(sse):
    qa, qb = 0x7FF8000000000001, 0xFFF8000000000002
    assert sse.fop1("add", qa, qb, 8) == qa
    assert sse.fop1("add", qb, qa, 8) == qb
    assert sse.fop1("mul", d(1.0), qb, 8) == qb
    snan = 0x7FF0000000000005
    assert sse.fop1("sub", snan, qb, 8) == 0x7FF8000000000005  # quieted, still first
    assert sse.fop1("div", d(2.0), snan, 8) == 0x7FF8000000000005
    assert sse.fop1("sqrt", d(2.0), 0xFF800001, 4) == 0xFFC00001
    assert sse.fop1("add", 0x7F800001, 0x7FC00000, 4) == 0x7FC00001


def test_min_max_return_the_second_operand_on_nan_or_zeros(sse):
    assert sse.fop1("min", d(1.0), d(2.0), 8) == d(1.0)
    assert sse.fop1("max", d(1.0), d(2.0), 8) == d(2.0)
    assert sse.fop1("min", d(0.0), d(-0.0), 8) == d(-0.0)
    assert sse.fop1("min", d(-0.0), d(0.0), 8) == d(0.0)
    assert sse.fop1("max", d(-0.0), d(0.0), 8) == d(0.0)
    assert sse.fop1("max", d(0.0), d(-0.0), 8) == d(-0.0)
    snan = 0x7FF0000000000005
    assert sse.fop1("min", snan, d(1.0), 8) == d(1.0)
    assert sse.fop1("min", d(1.0), snan, 8) == snan  # returned as is, not quieted
    assert sse.fop1("max", 0x7FC00000, f(3.0), 4) == f(3.0)


def test_single_precision_rounding_and_overflow(sse):
    flt_max = 0x7F7FFFFF
    assert sse.fop1("mul", flt_max, f(2.0), 4) == INF32
    assert sse.fop1("mul", flt_max | 1 << 31, f(2.0), 4) == 0xFF800000
    assert sse.fop1("add", flt_max, f(1.0), 4) == flt_max  # rounds back to FLT_MAX
    assert sse.fop1("add", f(1.0), f(2.0 ** -24), 4) == f(1.0)  # tie to even
    assert sse.fop1("add", f(1.0), f(3 * 2.0 ** -25), 4) == f(1.0) + 1
    assert sse.fop1("mul", 0x00800000, f(0.5), 4) == 0x00400000  # a denormal result


def test_compares(sse):
    nan = 0x7FF8000000000000
    one, two = d(1.0), d(2.0)
    expect = {  # predicate -> (1<2, 1==1, 1 vs NaN)
        0: (0, 1, 0), 1: (1, 0, 0), 2: (1, 1, 0), 3: (0, 0, 1),
        4: (1, 0, 1), 5: (0, 1, 1), 6: (0, 0, 1), 7: (1, 1, 0),
    }
    m = (1 << 64) - 1
    for pred, (lt, eq, un) in expect.items():
        assert sse.fcmp1(pred, one, two, 8) == (m if lt else 0), pred
        assert sse.fcmp1(pred, one, one, 8) == (m if eq else 0), pred
        assert sse.fcmp1(pred, one, nan, 8) == (m if un else 0), pred
    assert sse.fcmp_s(1, (9 << 64) | one, two, 8) == (9 << 64) | m
    # lanes 2 and 3 are +0 == +0
    assert sse.fcmp_p(0, f(1.0) | (f(2.0) << 32), f(1.0) | (f(3.0) << 32), 4) == (
        0xFFFFFFFF | (((1 << 64) - 1) << 64))
    assert sse.fcmp1(0, d(0.0), d(-0.0), 8) == m


def test_comi_flags(sse):
    assert sse.comi(d(1.0), d(2.0), 8) == 1  # CF
    assert sse.comi(d(2.0), d(1.0), 8) == 0
    assert sse.comi(d(0.0), d(-0.0), 8) == 0x40  # ZF
    assert sse.comi(d(1.0), 0xFFF8000000000000, 8) == 0x45  # unordered: ZF PF CF
    assert sse.comi(0x7F800001, f(1.0), 4) == 0x45
    assert sse.comi((5 << 32) | f(-1.0), f(1.0), 4) == 1


def test_int_to_float(sse):
    assert sse.int2f(0xFFFFFFFD, 4, 8) == d(-3.0)
    assert sse.int2f(1 << 63, 8, 8) == d(-(2.0 ** 63))
    assert sse.int2f((1 << 64) - 1, 8, 8) == d(-1.0)
    assert sse.int2f(0x7FFFFFFFFFFFFFFF, 8, 8) == d(2.0 ** 63)
    assert sse.int2f(0x7FFFFFFF, 4, 4) == f(2.0 ** 31)
    # int -> binary64 -> binary32 would round twice (to the tie, then to even)
    n = (0x800000 << 39) + (1 << 38) + 1
    assert sse.int2f(n, 8, 4) == 0x5E800001
    assert sse.int2f((0x800000 << 39) + (1 << 38), 8, 4) == 0x5E800000
    assert sse.int2f(-n & ((1 << 64) - 1), 8, 4) == 0xDE800001


def test_float_to_int_indefinite_and_rounding(sse):
    ind32, ind64 = 0x80000000, 1 << 63
    assert sse.f2int(d(2.5), 8, 4, False) == 2  # round half to even
    assert sse.f2int(d(3.5), 8, 4, False) == 4
    assert sse.f2int(d(-2.5), 8, 4, False) == 0xFFFFFFFE
    assert sse.f2int(d(-2.7), 8, 4, True) == 0xFFFFFFFE
    assert sse.f2int(d(2147483647.9), 8, 4, True) == 0x7FFFFFFF
    assert sse.f2int(d(2147483647.9), 8, 4, False) == ind32
    assert sse.f2int(d(-2147483648.9), 8, 4, True) == 0x80000000
    assert sse.f2int(d(2.0 ** 63), 8, 8, True) == ind64
    assert sse.f2int(d(-(2.0 ** 63)), 8, 8, True) == ind64  # in range: the same bits
    assert sse.f2int(d(1e300), 8, 8, False) == ind64
    for bad in (DNAN64, INF64, 0xFFF0000000000000, 0x7FF0000000000001):
        assert sse.f2int(bad, 8, 4, True) == ind32
        assert sse.f2int(bad, 8, 8, False) == ind64
    assert sse.f2int(0xFF800000, 4, 4, True) == ind32
    assert sse.f2int(f(-1.5), 4, 8, False) == (1 << 64) - 2


def test_float_width_conversions(sse):
    assert sse.f2f(f(1.5), 4) == d(1.5)
    assert sse.f2f(0x7F800001, 4) == 0x7FF8000020000000  # SNaN quieted, payload kept
    assert sse.f2f(0xFFC00000, 4) == DNAN64
    assert sse.f2f(d(1e300), 8) == INF32
    assert sse.f2f(d(-1e300), 8) == 0xFF800000
    assert sse.f2f(0x7FF0000020000001, 8) == 0x7FC00001
    assert sse.f2f(d(1e-50), 8) == 0  # underflow to zero
    assert sse.f2f(1, 4) == d(2.0 ** -149)  # a denormal single is a normal double
    assert sse.cvt_s("sd", 0xAB << 64, f(2.0)) == (0xAB << 64) | d(2.0)
    assert sse.cvt_s("ss", (0xAB << 64) | (7 << 32), d(2.0)) == (0xAB << 64) | (7 << 32) | f(
        2.0)


def test_packed_conversions(sse):
    dq = 5 | (0xFFFFFFFF << 32) | (123 << 64)
    assert sse.cvt_p("dq2pd", dq) == d(5.0) | (d(-1.0) << 64)
    assert sse.cvt_p("dq2ps", dq) == f(5.0) | (f(-1.0) << 32) | (f(123.0) << 64)
    pd = d(1.5) | (d(float("inf")) << 64)
    assert sse.cvt_p("tpd2dq", pd) == 1 | (0x80000000 << 32)  # upper half zeroed
    assert sse.cvt_p("pd2dq", pd) == 2 | (0x80000000 << 32)
    assert sse.cvt_p("pd2ps", pd) == f(1.5) | (INF32 << 32)
    ps = f(-2.5) | (f(7.75) << 32) | (0x7FC00000 << 64) | (f(1e9) << 96)
    assert sse.cvt_p("ps2pd", ps) == d(-2.5) | (d(7.75) << 64)
    assert sse.cvt_p("tps2dq", ps) == 0xFFFFFFFE | (7 << 32) | (0x80000000 << 64) | (
        1000000000 << 96)
    assert sse.cvt_p("ps2dq", ps) == 0xFFFFFFFE | (8 << 32) | (0x80000000 << 64) | (
        1000000000 << 96)


def test_cmpxx_decodes_with_prefix_and_predicate():
    from vfw_accel_tcg import decode

    dec = decode.Decoder(64)
    for hexcode, ident, pred in (("f20fc2c101", decode.CMPSD_ID, 1),
                                 ("f30fc2c106", decode.CMPSS_ID, 6),
                                 ("660fc2c107", decode.CMPPD_ID, 7),
                                 ("0fc2c10f", decode.CMPPS_ID, 7),
                                 ("f2410fc20c2405", decode.CMPSD_ID, 5)):
        insn = dec.decode(bytes.fromhex(hexcode), 0x1000)
        assert insn is not None
        assert insn.id == ident, hexcode
        assert insn.ops[2].imm == pred, hexcode


def _run(text: str, regs: dict[int, int], xmm: dict[int, int], eflags: int = 0x2):
    import difftest

    from vfw.testing import need

    need(difftest.have_tools(), "GNU as is needed to assemble the test code")
    r = [0] * 16
    r[3], r[4] = difftest.DATA_BASE, difftest.STACK_TOP
    for k, val in regs.items():
        r[k] = val
    x = [0] * 16
    for k, val in xmm.items():
        x[k] = val
    mem = bytes(difftest.WIN_HI - difftest.WIN_LO)
    st = difftest.run_vfw(64, difftest.assemble(text, 64), r, eflags, mem, x)
    assert st.error is None
    return st


def test_end_to_end_glibc_style_sequence():
    # what busybox's sleep/timeout do with their argument, then back to integers
    st = _run("cvtsi2sd xmm0, rax\nmulsd xmm0, xmm1\ncvttsd2si rcx, xmm0\n"
              "cvtsi2ss xmm2, edx\nsqrtss xmm2, xmm2\ncvtss2si esi, xmm2\n"
              "ucomisd xmm0, xmm1\nsetb dil\nsetp r8b\nsete r9b\n"
              "movsd qword ptr [rbx], xmm1\naddsd xmm1, qword ptr [rbx]\n"
              "cmpltsd xmm3, xmm1\nmovmskpd r10d, xmm3",
              {0: 7, 2: 16}, {1: (0x55 << 64) | d(1e9), 3: d(0.5)})
    assert st.regs[1] == 7_000_000_000
    assert st.regs[6] == 4
    assert st.regs[7] & 0xFF == 0 and st.regs[8] & 0xFF == 0 and st.regs[9] & 0xFF == 0
    assert st.xmm[0] == d(7e9)
    assert st.xmm[1] == (0x55 << 64) | d(2e9)
    assert st.xmm[3] & ((1 << 64) - 1) == (1 << 64) - 1
    assert st.regs[10] == 1


def test_end_to_end_comisd_clears_of_sf_af_and_reports_unordered():
    st = _run("comisd xmm0, xmm1", {}, {0: d(1.0), 1: DNAN64}, eflags=0x8D4 | 2)
    assert st.eflags & 0x8D5 == 0x45
    st = _run("ucomiss xmm0, dword ptr [rbx]", {}, {0: f(-1.0)}, eflags=0x8D4 | 2)
    assert st.eflags & 0x8D5 == 0x01  # -1 < +0


def test_end_to_end_conversions_to_32bit_registers_zero_extend():
    st = _run("cvttsd2si eax, xmm0\ncvtsd2si rcx, xmm1", {0: (1 << 64) - 1},
              {0: d(-1.9), 1: DNAN64})
    assert st.regs[0] == 0xFFFFFFFF
    assert st.regs[1] == 1 << 63


@pytest.mark.parametrize("a,b,expect", [(1.0, float("nan"), (1, 1, 1, 0)),
                                        (2.0, 1.0, (0, 0, 0, 1)),
                                        (1.0, 2.0, (0, 1, 0, 0)),
                                        (-0.0, 0.0, (0, 0, 1, 0))])
def test_end_to_end_ucomisd_feeds_following_conditions(a, b, expect):
    # the lazy flags of an earlier CMP must be replaced, also when read in the same block
    st = _run("cmp eax, ecx\nucomisd xmm0, xmm1\nsetp al\nsetb cl\nsete dl\nseta sil",
              {0: 5, 1: 9}, {0: d(a), 1: d(b)})
    assert tuple(st.regs[i] & 0xFF for i in (0, 1, 2, 6)) == expect
