"""The fast decoder agrees with capstone on everything it decodes."""

from __future__ import annotations

import random

import pytest
from capstone import x86_const as X

from vfw_accel_tcg.consts import MASK
from vfw_accel_tcg.decode import OP_IMM, OP_REG, Decoder, Insn
from vfw_accel_tcg.fastdecode import decode as fast_decode

_BRANCH = {X.X86_INS_CALL, X.X86_INS_JMP} | {
    getattr(X, n) for n in dir(X) if n.startswith("X86_INS_J")}
_COUNT = {X.X86_INS_SHL, X.X86_INS_SHR, X.X86_INS_SAR, X.X86_INS_ROL, X.X86_INS_ROR,
          X.X86_INS_RCL, X.X86_INS_RCR, X.X86_INS_SHLD, X.X86_INS_SHRD, X.X86_INS_BT,
          X.X86_INS_BTS, X.X86_INS_BTR, X.X86_INS_BTC}
# capstone names 98/99 by the wrong operand size in 16-bit code; the translator uses opsize.
_SAME = {X.X86_INS_CBW: 1, X.X86_INS_CWDE: 1, X.X86_INS_CDQE: 1, X.X86_INS_CWD: 2,
         X.X86_INS_CDQ: 2, X.X86_INS_CQO: 2}


def _norm(insn: Insn, bits: int) -> tuple[object, ...]:
    """What the translator relies on, with immediates masked as it masks them."""
    ops: list[tuple[object, ...]] = []
    sizes = [o.size for o in insn.ops if o.kind != OP_IMM]
    for o in insn.ops:
        if o.kind == OP_IMM:
            if insn.id in _BRANCH:
                m = MASK[8] if bits == 64 else MASK[insn.opsize]
            elif insn.id in _COUNT:
                m = 0xFF
            elif insn.id == X.X86_INS_RET:
                m = 0xFFFF
            elif sizes:
                m = MASK[sizes[0]]
            else:
                m = MASK[8 if bits == 64 and not insn.p66 else insn.opsize]
            ops.append(("imm", o.imm & m))
        elif o.kind == OP_REG:
            ops.append(("reg", o.rclass, o.reg, o.size, o.high))
        else:
            ops.append(("mem", o.size, o.seg, o.base, o.index,
                        o.scale if o.index >= 0 else 1, o.disp & MASK[insn.addrsize]))
    return (_SAME.get(insn.id, insn.id), insn.size, tuple(ops), insn.opsize, insn.addrsize,
            insn.next)


@pytest.mark.parametrize("bits", [64, 32, 16])
def test_fast_decoder_matches_capstone_on_random_bytes(bits):
    rnd = random.Random(bits)
    data = bytes(rnd.getrandbits(8) for _ in range(40000))
    dec = Decoder(bits)
    checked = 0
    for pos in range(len(data) - 16):
        code = data[pos:pos + 15]
        ours = fast_decode(code, 0x1000 + pos, bits)
        if ours is None:
            continue
        theirs = dec.decode_capstone(code, 0x1000 + pos)
        assert theirs is not None, f"capstone rejects {code.hex()} ({bits}-bit)"
        assert _norm(ours, bits) == _norm(theirs, bits), (code[:theirs.size].hex(), str(theirs))
        checked += 1
    assert checked > 15000


def test_fast_decoder_matches_capstone_on_compiled_code():
    """Instruction sequences as compilers emit them (tcg_gen's programs)."""
    import shutil

    from vfw.testing import need

    need(shutil.which("as") is not None, "GNU as assembles the programs")
    import difftest
    import tcg_gen

    for bits in (64, 32, 16):
        dec = Decoder(bits)
        for seed in range(40):
            text, _ = tcg_gen.program(random.Random(seed), bits, 30)
            try:
                code = difftest.assemble(text, bits)
            except ValueError:
                continue
            pos = 0
            while pos < len(code):
                theirs = dec.decode_capstone(code[pos:pos + 15], pos)
                if theirs is None:
                    break
                ours = fast_decode(code[pos:pos + 15], pos, bits)
                if ours is not None:
                    assert _norm(ours, bits) == _norm(theirs, bits), str(theirs)
                pos += theirs.size
